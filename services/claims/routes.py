"""HTTP: claim commands (validated, authenticated, published to ``webapp.claims``) and reads.

Writes answer 202 with the claim id: the consumer decides and publishes the outcome on
``claims.events``. For anyone but a reviewer, a claim that does not exist and a claim of
someone else answer the same 403, so ids cannot be probed.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, Field

from contracts.events.claims import ClaimEvidenceSubmitted, ClaimRequested, ClaimReviewed, ClaimWithdrawn, Evidence
from contracts.events.common import ID_PATTERN, Id
from service_runtime.auth import REVIEWER, CurrentUser, Principal, require_role
from service_runtime.problems import problem_responses
from service_runtime.publishing import EventPublisher
from service_runtime.requests import RequestBody
from services.claims.rules import Claim
from services.claims.store import ClaimsStore

PathId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
_NOT_YOURS = HTTPException(
    status.HTTP_403_FORBIDDEN, "not allowed: only the claimant or a reviewer may access this claim"
)


class ClaimRequestBody(RequestBody):
    author_id: Id
    evidence: Evidence = Evidence()
    show_owner: bool = Field(default=False, description="name me on the record's public claim status")


class EvidenceBody(RequestBody):
    evidence: Evidence


class ReviewBody(RequestBody):
    decision: Literal["approve", "reject", "revoke"]
    reason: str = Field(min_length=1, max_length=1000)


class Accepted(BaseModel):
    claim_id: str
    author_id: str
    status: Literal["accepted"] = "accepted"


class ClaimView(BaseModel):
    claim_id: str
    author_id: str
    user_id: str
    status: str
    verification_level: str | None
    reason: str | None
    detail: str | None
    show_owner: bool
    evidence: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    history: list[dict[str, Any]]


class AuthorClaimView(BaseModel):
    author_id: str
    claimed: bool
    verification_level: str | None = None
    since: datetime | None = None
    owner_user_id: str | None = Field(default=None, description="only when the owner chose to be shown")


def build_router(store: ClaimsStore, publisher: EventPublisher) -> APIRouter:
    router = APIRouter(tags=["claims"])

    async def publish(command: Any) -> None:
        await publisher.publish([publisher.outgoing(command)])

    async def visible_claim(claim_id: str, user: Principal, *, owner_only: bool = False) -> Claim:
        claim = await store.get_claim(claim_id)
        if claim is not None and claim.user_id == user.user_id:
            return claim
        if user.has(REVIEWER) and not owner_only:
            if claim is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "no such claim")
            return claim
        raise _NOT_YOURS

    @router.post("/claims", status_code=202, response_model=Accepted, summary="Claim an author record")
    async def request_claim(body: ClaimRequestBody, user: CurrentUser) -> Accepted:
        claim_id = f"claim-{uuid.uuid4().hex}"
        await publish(
            ClaimRequested(
                claim_id=claim_id,
                author_id=body.author_id,
                user_id=user.user_id,
                evidence=body.evidence,
                show_owner=body.show_owner,
            )
        )
        return Accepted(claim_id=claim_id, author_id=body.author_id)

    @router.post(
        "/claims/{claim_id}/evidence",
        status_code=202,
        response_model=Accepted,
        summary="Add evidence to my claim",
        responses=problem_responses(403),
    )
    async def submit_evidence(claim_id: PathId, body: EvidenceBody, user: CurrentUser) -> Accepted:
        claim = await visible_claim(claim_id, user, owner_only=True)
        await publish(
            ClaimEvidenceSubmitted(
                claim_id=claim_id, author_id=claim.author_id, user_id=user.user_id, evidence=body.evidence
            )
        )
        return Accepted(claim_id=claim_id, author_id=claim.author_id)

    @router.post(
        "/claims/{claim_id}/withdraw",
        status_code=202,
        response_model=Accepted,
        summary="Withdraw my claim",
        responses=problem_responses(403),
    )
    async def withdraw(claim_id: PathId, user: CurrentUser) -> Accepted:
        claim = await visible_claim(claim_id, user, owner_only=True)
        await publish(ClaimWithdrawn(claim_id=claim_id, author_id=claim.author_id, user_id=user.user_id))
        return Accepted(claim_id=claim_id, author_id=claim.author_id)

    @router.post(
        "/claims/{claim_id}/review",
        status_code=202,
        response_model=Accepted,
        summary="Approve, reject or revoke a claim (reviewers)",
        responses=problem_responses(403, 404),
    )
    async def review(claim_id: PathId, body: ReviewBody, user: CurrentUser) -> Accepted:
        require_role(user, REVIEWER)
        claim = await store.get_claim(claim_id)
        if claim is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such claim")
        await publish(
            ClaimReviewed(
                claim_id=claim_id,
                author_id=claim.author_id,
                reviewer_id=user.user_id,
                decision=body.decision,
                reason=body.reason,
            )
        )
        return Accepted(claim_id=claim_id, author_id=claim.author_id)

    @router.get(
        "/claims/{claim_id}",
        response_model=ClaimView,
        summary="A claim (its claimant or a reviewer)",
        responses=problem_responses(403, 404),
    )
    async def get_claim(claim_id: PathId, user: CurrentUser) -> ClaimView:
        c = await visible_claim(claim_id, user)
        return ClaimView(
            claim_id=c.claim_id,
            author_id=c.author_id,
            user_id=c.user_id,
            status=c.status,
            verification_level=c.level,
            reason=c.reason,
            detail=c.detail,
            show_owner=c.show_owner,
            evidence=c.evidence.model_dump(mode="json"),
            created_at=c.created_at,
            updated_at=c.updated_at,
            history=[h.model_dump(mode="json", exclude_none=True) for h in c.history],
        )

    @router.get("/authors/{author_id}/claim", response_model=AuthorClaimView, summary="Public claim status of a record")
    async def author_claim(author_id: PathId) -> AuthorClaimView:
        author = await store.get_author(author_id)
        if author is None or not author.claim.claimed:
            return AuthorClaimView(author_id=author_id, claimed=False)
        state = author.claim
        owner = None
        if state.claim_id and (claim := await store.get_claim(state.claim_id)) and claim.show_owner:
            owner = state.owner_user_id
        return AuthorClaimView(
            author_id=author_id,
            claimed=True,
            verification_level=state.verification_level,
            since=state.since,
            owner_user_id=owner,
        )

    return router
