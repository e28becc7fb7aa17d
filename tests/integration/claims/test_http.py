"""The HTTP API against the real broker and store: authentication, authorisation without
leaking which claims exist, validation of bad input, and the reads."""

from __future__ import annotations

import base64
import json
import time

import jwt
from aiokafka import AIOKafkaProducer

from contracts.topics import Topic
from service_runtime.auth import mint_token
from service_runtime.topic_reader import read_topic
from tests.conftest import Namespace, eventually
from tests.integration.claims.helpers import ORCID, author_registered, authors_known, claims_service, http, send

EMAIL_OK = {"email": "qvl@stanford.edu", "email_verified": True}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def alg_none_token(settings, user: str) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "sub": user,
        "roles": ["reviewer"],
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + 60,
    }
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


async def test_authentication_authorisation_and_reads(ns: Namespace) -> None:
    service = claims_service(ns)
    settings = service.settings
    alice, bob = bearer(mint_token(settings, "alice")), bearer(mint_token(settings, "bob"))
    reviewer = bearer(mint_token(settings, "rita", ["reviewer"]))
    producer = AIOKafkaProducer(bootstrap_servers=ns.infra["kafka"])
    await producer.start()
    try:
        async with service.running(), http(service) as client:
            await send(producer, ns, author_registered("a1"))
            await authors_known(service, "a1")

            body = {"author_id": "a1", "evidence": EMAIL_OK, "show_owner": True}
            now = int(time.time())
            refused = {
                "missing": {},
                "other key": bearer(
                    jwt.encode(
                        {
                            "sub": "alice",
                            "iss": settings.jwt_issuer,
                            "aud": settings.jwt_audience,
                            "iat": now,
                            "exp": now + 60,
                        },
                        "another-key-entirely-another-key!",
                    )
                ),
                "expired": bearer(mint_token(settings, "alice", ttl_s=-60)),
                "alg none": bearer(alg_none_token(settings, "alice")),
                "not bearer": {"Authorization": "Basic YWxpY2U6cHc="},
            }
            for what, headers in refused.items():
                r = await client.post("/claims", json=body, headers=headers)
                assert r.status_code == 401, what

            r = await client.post("/claims", json=body, headers=alice)
            assert r.status_code == 202
            claim_id = r.json()["claim_id"]
            assert r.json() == {"claim_id": claim_id, "author_id": "a1", "status": "accepted"}

            async def alice_sees() -> dict:
                resp = await client.get(f"/claims/{claim_id}", headers=alice)
                return resp.json() if resp.status_code == 200 else {}

            claim = await eventually(alice_sees, until=lambda c: c.get("status") == "approved", what="approved")
            assert claim["user_id"] == "alice" and claim["verification_level"] == "L2"
            assert set(claim["evidence"]) == {
                "email",
                "email_verified",
                "orcid",
                "orcid_authenticated",
                "statement",
                "links",
            }

            # Someone else's claim and a claim that does not exist look the same to a non-reviewer.
            for path in (f"/claims/{claim_id}", "/claims/claim-does-not-exist"):
                r = await client.get(path, headers=bob)
                assert (r.status_code, r.json()) == (
                    403,
                    {
                        "type": "about:blank",
                        "title": "Forbidden",
                        "status": 403,
                        "detail": "not allowed: only the claimant or a reviewer may access this claim",
                        "instance": path,
                    },
                )
                r = await client.post(f"{path}/withdraw", headers=bob)
                assert r.status_code == 403
                r = await client.post(f"{path}/evidence", json={"evidence": EMAIL_OK}, headers=bob)
                assert r.status_code == 403
                r = await client.post(f"{path}/review", json={"decision": "revoke", "reason": "x"}, headers=bob)
                assert r.status_code == 403  # the role is checked before the claim is looked up
            r = await client.get(f"/claims/{claim_id}", headers=reviewer)
            assert r.status_code == 200 and r.json()["claim_id"] == claim_id
            r = await client.get("/claims/claim-does-not-exist", headers=reviewer)
            assert r.status_code == 404
            r = await client.post(
                "/claims/claim-does-not-exist/review", json={"decision": "approve", "reason": "ok"}, headers=reviewer
            )
            assert r.status_code == 404

            public = (await client.get("/authors/a1/claim")).json()
            assert public["claimed"] is True and public["verification_level"] == "L2" and public["since"]
            assert public["owner_user_id"] == "alice"  # she chose to be shown
            assert (await client.get("/authors/nobody/claim")).json() == {
                "author_id": "nobody",
                "claimed": False,
                "verification_level": None,
                "since": None,
                "owner_user_id": None,
            }

            r = await client.post(
                f"/claims/{claim_id}/review", json={"decision": "revoke", "reason": "impostor"}, headers=reviewer
            )
            assert r.status_code == 202
            await eventually(
                lambda: client.get("/authors/a1/claim"),
                until=lambda resp: resp.json()["claimed"] is False,
                what="record unclaimed after revocation",
            )

            r = await client.post("/claims", json={"author_id": "a1"}, headers=bob)
            bob_claim = r.json()["claim_id"]
            await eventually(
                lambda: client.get(f"/claims/{bob_claim}", headers=bob),
                until=lambda resp: resp.status_code == 200 and resp.json()["status"] == "needs_review",
            )
            public = (await client.get("/authors/a1/claim")).json()
            assert public["claimed"] is False
            r = await client.post(
                f"/claims/{bob_claim}/review", json={"decision": "approve", "reason": "ok"}, headers=reviewer
            )
            assert r.status_code == 202
            public = (
                await eventually(lambda: client.get("/authors/a1/claim"), until=lambda resp: resp.json()["claimed"])
            ).json()
            assert public["verification_level"] == "L3" and public["owner_user_id"] is None  # bob did not opt in
    finally:
        await producer.stop()
    commands = [json.loads(r.value) for r in await read_topic(ns.infra["kafka"], ns.topic(Topic.WEBAPP_CLAIMS))]
    assert {c["data"].get("user_id") or c["data"].get("reviewer_id") for c in commands} == {"alice", "bob", "rita"}


async def test_bad_input_is_refused_with_a_clear_422(ns: Namespace) -> None:
    service = claims_service(ns)
    alice = bearer(mint_token(service.settings, "alice"))
    async with service.running(), http(service) as client:
        cases = {
            "user id in the body": {"author_id": "a1", "user_id": "mallory"},
            "a secret sent by mistake": {
                "author_id": "a1",
                "evidence": {"orcid": ORCID, "orcid_access_token": "s3cr3t"},
            },
            "ORCID check digit": {
                "author_id": "a1",
                "evidence": {"orcid": "0000-0002-1825-0098", "orcid_authenticated": True},
            },
            "email that is not one": {"author_id": "a1", "evidence": {"email": "not-an-email", "email_verified": True}},
            "malformed author id": {"author_id": "a1/../../admin"},
            "missing author id": {"evidence": EMAIL_OK},
        }
        for what, body in cases.items():
            r = await client.post("/claims", json=body, headers=alice)
            assert r.status_code == 422, what
            assert "s3cr3t" not in r.text, "a refused secret is not echoed back"
        r = await client.post("/claims", json=cases["ORCID check digit"], headers=alice)
        assert "check digit" in r.text
        r = await client.get("/claims/bad%20id", headers=alice)
        assert r.status_code == 422
        r = await client.post(
            "/claims/c1/review",
            json={"decision": "maybe", "reason": "x"},
            headers=bearer(mint_token(service.settings, "rita", ["reviewer"])),
        )
        assert r.status_code == 422
    assert await read_topic(ns.infra["kafka"], ns.topic(Topic.WEBAPP_CLAIMS)) == []  # nothing was published
