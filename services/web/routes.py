"""The web app's pages and form actions.

Pages are rendered on the server from the services' HTTP reads; every form works without
JavaScript (it answers with a redirect), and the page's script sends the same forms with
``Accept: application/json`` to stay on the page. Commands go to the services' HTTP writes
with the signed-in user's token; what they cause comes back through the live updates.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import TypeAdapter, ValidationError

from contracts.events.common import ID_PATTERN, Id, OrcidId
from service_runtime.auth import mint_token
from services.web.backends import Backends, Reply, Unavailable
from services.web.live import LIVE_SECTIONS, ChangeFeed, Hub, page_changes
from services.web.session import COOKIE, SignedIn, current_user, local_next
from services.web.settings import WebSettings
from services.web.view import AuthorView, author_view, fallback_graph

router = APIRouter()
User = Annotated[SignedIn | None, Depends(current_user)]
AuthorPath = Annotated[str, Path(pattern=ID_PATTERN, description="the author record's id, e.g. seed:quoc-v-le")]
_ORCID: TypeAdapter[str] = TypeAdapter(OrcidId)
_ID: TypeAdapter[str] = TypeAdapter(Id)

# Fixed messages a redirect may ask a page to show (never text taken from the request).
NOTICES = {
    "follow_sent": "Follow sent. The count moves as soon as it is recorded.",
    "unfollow_sent": "Unfollow sent. The count moves as soon as it is recorded.",
    "claim_sent": "Claim sent. The decision shows here as soon as it is taken.",
    "invitation_sent": "Invitation sent.",
    "profile_edit_sent": "Saved. The page shows it as soon as it is recorded.",
    "marked_read": "Marked as read. The inbox shows it in a moment.",
    "signed_out": "You are signed out.",
}
COLLAB_UNAVAILABLE = (
    "Direct invitations are not available right now: the collaboration service could not be reached. Nothing was sent."
)


def _state(request: Request) -> tuple[WebSettings, Backends, Jinja2Templates]:
    app = request.app
    return app.state.settings, app.state.backends, app.state.templates


def _ctx(request: Request, user: SignedIn | None, **extra: Any) -> dict[str, Any]:
    settings, _, _ = _state(request)
    return {"user": user, "dev_sign_in": settings.dev_sign_in_enabled, "path": request.url.path, **extra}


def render(request: Request, name: str, user: SignedIn | None, status_code: int = 200, **extra: Any) -> HTMLResponse:
    _, _, templates = _state(request)
    return templates.TemplateResponse(request, name, _ctx(request, user, **extra), status_code=status_code)


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _detail(reply: Reply) -> str:
    body = reply.body
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return f"the service answered {reply.status}"


def _sign_in_url(next_path: str) -> str:
    from urllib.parse import quote

    return f"/sign-in?next={quote(next_path, safe='/:')}"


def action_result(
    request: Request, reply: Reply, *, back: str, notice: str, extra: dict[str, Any] | None = None
) -> Response:
    """The answer to a form action: JSON for the page's script, else a redirect back."""
    if reply.ok:
        if wants_json(request):
            return JSONResponse({"status": "accepted", "message": NOTICES[notice], **(extra or {})}, status_code=202)
        sep = "&" if "?" in back else "?"
        return RedirectResponse(f"{back}{sep}notice={notice}", status_code=303)
    message = _detail(reply)
    if wants_json(request):
        return JSONResponse({"status": "refused", "message": message}, status_code=reply.status)
    raise HTTPException(reply.status, message)


def unavailable_result(request: Request, exc: Unavailable, message: str | None = None) -> Response:
    text = message or f"The {exc.service} service could not be reached. Nothing was sent; try again in a moment."
    if wants_json(request):
        return JSONResponse({"status": "unavailable", "message": text}, status_code=503)
    raise HTTPException(503, text)


def need_user(request: Request, user: SignedIn | None, back: str) -> SignedIn | Response:
    if user is not None:
        return user
    if wants_json(request):
        return JSONResponse({"status": "signed_out", "sign_in": _sign_in_url(back)}, status_code=401)
    return RedirectResponse(_sign_in_url(back), status_code=303)


# --- search ---------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse, summary="Search authors by name")
async def home(
    request: Request,
    user: User,
    q: Annotated[str | None, Query(max_length=100)] = None,
    notice: Annotated[str | None, Query(max_length=40)] = None,
) -> HTMLResponse:
    _, backends, _ = _state(request)
    results: list[dict[str, Any]] | None = None
    problem = None
    if q and q.strip():
        reply = await backends.search(q.strip())
        if reply.ok:
            results = reply.body["items"]
        else:
            problem = "Type at least one letter or digit of a name."
    return render(
        request, "index.html", user, q=q or "", results=results, problem=problem, notice=NOTICES.get(notice or "")
    )


# --- the profile page -------------------------------------------------------------------


async def _own_claim(request: Request, user: SignedIn | None, claim_id: str | None) -> dict[str, Any] | None:
    """The signed-in user's own claim the page was asked to follow (after claiming)."""
    if user is None or not claim_id:
        return None
    try:
        _ID.validate_python(claim_id)
    except ValidationError:
        return None
    _, backends, _ = _state(request)
    try:
        return await backends.own_claim(user.token, claim_id)
    except Unavailable:
        return None


async def _view(request: Request, author_id: str, user: SignedIn | None) -> AuthorView:
    _, backends, _ = _state(request)
    view = await author_view(backends, author_id, user.user_id if user else None)
    if view is None:
        raise HTTPException(404, f"There is no author record {author_id}.")
    return view


@router.get("/authors/{author_id}", response_class=HTMLResponse, summary="The profile page")
async def author(
    request: Request,
    author_id: AuthorPath,
    user: User,
    claim: Annotated[str | None, Query(max_length=128)] = None,
    notice: Annotated[str | None, Query(max_length=40)] = None,
) -> HTMLResponse:
    rendered_at = time.time()  # before the reads: the live stream catches up from here
    view = await _view(request, author_id, user)
    editable = await _editable(request, user, view)
    return render(
        request,
        "author.html",
        user,
        v=view,
        s=view.snapshot,
        rendered_at=rendered_at,
        my_claim=await _own_claim(request, user, claim),
        claim_id=claim,
        notice=NOTICES.get(notice or ""),
        graph=fallback_graph(view.page),
        editable=editable,
    )


async def _editable(request: Request, user: SignedIn | None, view: AuthorView) -> bool:
    """Whether to show the owner's own form: only to the user who owns the record."""
    if user is None or not view.snapshot.claimed:
        return False
    _, backends, _ = _state(request)
    try:
        return await backends.editable(user.token, view.author_id)
    except Unavailable:
        return False


@router.get("/authors/{author_id}/sections", summary="Sections of the profile page, rendered again")
async def sections(
    request: Request,
    author_id: AuthorPath,
    user: User,
    names: Annotated[str, Query(max_length=200)],
    claim: Annotated[str | None, Query(max_length=128)] = None,
) -> JSONResponse:
    _, _, templates = _state(request)
    wanted = [n for n in dict.fromkeys(names.split(",")) if n in LIVE_SECTIONS]
    view = await _view(request, author_id, user)
    ctx = _ctx(request, user, v=view, s=view.snapshot, my_claim=await _own_claim(request, user, claim), claim_id=claim)
    return JSONResponse(
        {"sections": {n: templates.get_template(f"sections/{n}.html").render(ctx) for n in wanted}},
        headers={"Cache-Control": "no-store"},
    )


@router.get("/authors/{author_id}/events", summary="Live changes of the page (server-sent events)")
async def events(
    request: Request, author_id: AuthorPath, since: Annotated[float | None, Query(ge=0)] = None
) -> StreamingResponse:
    settings: WebSettings = request.app.state.settings
    hub: Hub = request.app.state.hub
    feed: ChangeFeed | None = request.app.state.feed
    if feed is None:
        raise HTTPException(404, "live updates are turned off")
    last = request.headers.get("last-event-id")
    try:
        start = float(last) if last else (since if since is not None else 0.0)
    except ValueError:
        start = 0.0
    return StreamingResponse(
        page_changes(hub, settings, author_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/authors/{author_id}/works", response_class=HTMLResponse, summary="Published work, by page")
async def works(
    request: Request,
    author_id: AuthorPath,
    user: User,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    fragment: bool = False,
) -> Response:
    _, backends, templates = _state(request)
    reply = await backends.works(author_id, cursor, 20)
    if reply.status == 404:
        raise HTTPException(404, f"There is no author record {author_id}.")
    if not reply.ok:
        raise HTTPException(400, "That page of works does not exist: start again from the profile page.")
    body = reply.body
    if fragment:
        items = templates.get_template("sections/work_items.html").render({"items": body["items"]})
        return JSONResponse({"items_html": items, "next_cursor": body["next_cursor"]})
    page = await backends.author_page(author_id)
    return render(request, "works.html", user, author=page, items=body["items"], next_cursor=body["next_cursor"])


# --- research graph ------------------------------------------------------------------


@router.get("/authors/{author_id}/graph.json", summary="The research graph's first slice")
async def graph(request: Request, author_id: AuthorPath) -> JSONResponse:
    settings, backends, _ = _state(request)
    reply = await backends.graph(author_id, settings.graph_limit)
    if reply.ok and isinstance(reply.body, dict) and "nodes" in reply.body:
        return JSONResponse({"explorer": True, **reply.body})
    # The graph API is not there (or knows no such author): what the page holds.
    page = await backends.author_page(author_id)
    if page is None:
        raise HTTPException(404, f"There is no author record {author_id}.")
    return JSONResponse({"explorer": False, **fallback_graph(page)})


@router.get("/graph/neighbours", summary="Neighbours of a node of the research graph")
async def neighbours(
    request: Request,
    node: Annotated[str, Query(min_length=1, max_length=400)],
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> JSONResponse:
    settings, backends, _ = _state(request)
    reply = await backends.neighbours(node, cursor, settings.graph_limit)
    if reply.ok and isinstance(reply.body, dict) and "nodes" in reply.body:
        return JSONResponse(reply.body)
    # The node is not in the graph (404), or the cursor is not one of its pages (422).
    message = "There is no such node in the research graph."
    if reply.status != 404:
        message = "That page of neighbours does not exist: expand the node again."
    return JSONResponse({"status": "not_found", "message": message}, status_code=404 if reply.status == 404 else 400)


@router.get("/authors/{author_id}/graph", response_class=HTMLResponse, summary="The full graph explorer")
async def graph_page(request: Request, author_id: AuthorPath, user: User) -> HTMLResponse:
    _, backends, _ = _state(request)
    page = await backends.author_page(author_id)
    if page is None:
        raise HTTPException(404, f"There is no author record {author_id}.")
    return render(request, "graph.html", user, author=page, graph=fallback_graph(page))


# --- actions ---------------------------------------------------------------------------


@router.post("/authors/{author_id}/follow", summary="Follow (as the signed-in user)")
async def follow(request: Request, author_id: AuthorPath, user: User) -> Response:
    back = f"/authors/{author_id}"
    signed = need_user(request, user, back)
    if isinstance(signed, Response):
        return signed
    _, backends, _ = _state(request)
    try:
        reply = await backends.follow(signed.token, author_id)
    except Unavailable as exc:
        return unavailable_result(request, exc)
    return action_result(request, reply, back=back, notice="follow_sent")


@router.post("/authors/{author_id}/unfollow", summary="Unfollow (as the signed-in user)")
async def unfollow(request: Request, author_id: AuthorPath, user: User) -> Response:
    back = f"/authors/{author_id}"
    signed = need_user(request, user, back)
    if isinstance(signed, Response):
        return signed
    _, backends, _ = _state(request)
    try:
        reply = await backends.unfollow(signed.token, author_id)
    except Unavailable as exc:
        return unavailable_result(request, exc)
    return action_result(request, reply, back=back, notice="unfollow_sent")


@router.post("/authors/{author_id}/claim", summary="Claim the record (as the signed-in user)")
async def claim(
    request: Request,
    author_id: AuthorPath,
    user: User,
    statement: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    back = f"/authors/{author_id}"
    signed = need_user(request, user, back)
    if isinstance(signed, Response):
        return signed
    _, backends, _ = _state(request)
    # What the identity provider vouches for: the ORCID iD the user signed in with.
    evidence: dict[str, Any] = {"orcid": signed.orcid, "orcid_authenticated": True} if signed.orcid else {}
    if statement.strip():
        evidence["statement"] = statement.strip()
    try:
        reply = await backends.request_claim(signed.token, author_id, evidence)
    except Unavailable as exc:
        return unavailable_result(request, exc)
    claim_id = reply.body.get("claim_id") if reply.ok and isinstance(reply.body, dict) else None
    return action_result(
        request,
        reply,
        back=f"{back}?claim={claim_id}" if claim_id else back,
        notice="claim_sent",
        extra={"claim_id": claim_id},
    )


@router.post("/authors/{author_id}/invitations", summary="Invite the researcher to collaborate")
async def invite(
    request: Request,
    author_id: AuthorPath,
    user: User,
    message: Annotated[str, Form(min_length=1, max_length=2000)],
) -> Response:
    back = f"/authors/{author_id}"
    signed = need_user(request, user, back)
    if isinstance(signed, Response):
        return signed
    _, backends, _ = _state(request)
    try:
        reply = await backends.invite(signed.token, author_id, message)
    except Unavailable as exc:
        return unavailable_result(request, exc, COLLAB_UNAVAILABLE)
    if reply.status in (404, 405):  # no invitations API behind that address
        return unavailable_result(request, Unavailable("collab", "no invitations API"), COLLAB_UNAVAILABLE)
    invitation = reply.body.get("invitation_id") if reply.ok and isinstance(reply.body, dict) else None
    return action_result(request, reply, back=back, notice="invitation_sent", extra={"invitation_id": invitation})


@router.post("/authors/{author_id}/profile", summary="The owner's own edit of their record")
async def edit_profile(
    request: Request,
    author_id: AuthorPath,
    user: User,
    affiliation: Annotated[str, Form(max_length=300)] = "",
    domains: Annotated[str, Form(max_length=1000)] = "",
    description: Annotated[str, Form(max_length=2000)] = "",
    open_to_collaborate: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    back = f"/authors/{author_id}"
    signed = need_user(request, user, back)
    if isinstance(signed, Response):
        return signed
    _, backends, _ = _state(request)
    # The form shows every field, so it sets every field: an empty one clears it.
    names = [d.strip().lower() for d in domains.replace(",", " ").split() if d.strip()]
    edit = {
        "affiliation": {"name": affiliation.strip(), "domains": names} if affiliation.strip() else None,
        "description": description.strip() or None,
        "open_to_collaborate": bool(open_to_collaborate),
    }
    try:
        reply = await backends.edit_profile(signed.token, author_id, edit)
    except Unavailable as exc:
        return unavailable_result(request, exc)
    if reply.status == 422:
        reply = Reply(422, {"detail": "Check the email domains (like example.org) and the lengths of the fields."})
    return action_result(request, reply, back=back, notice="profile_edit_sent")


# --- the signed-in user's own page --------------------------------------------------------


UNREAD_COUNTED = 1000  # past this many unread notifications the inbox says "1000+"


@router.get("/me", response_class=HTMLResponse, summary="Inbox and invitations")
async def me(
    request: Request,
    user: User,
    cursor: Annotated[str | None, Query(max_length=300)] = None,
    notice: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    signed = need_user(request, user, "/me")
    if isinstance(signed, Response):
        return signed
    _, backends, _ = _state(request)
    page: dict[str, Any] | None = None
    unread: str | None = None
    invitations: list[dict[str, Any]] | None = None
    try:
        listed, counted = await asyncio.gather(
            backends.notifications(signed.token, signed.user_id, cursor),
            backends.notifications(signed.token, signed.user_id, unread=True, limit=UNREAD_COUNTED),
        )
        page = listed.body if listed.ok else None
        if counted.ok:
            n = len(counted.body["notifications"])
            unread = f"{n}+" if counted.body["next_cursor"] else str(n)
    except Unavailable:
        pass
    try:
        reply = await backends.invitations(signed.token, signed.user_id)
        if reply.ok and isinstance(reply.body, dict):
            invitations = list(reply.body.get("invitations") or reply.body.get("items") or [])
    except Unavailable:
        pass
    return render(
        request,
        "me.html",
        signed,
        notifications=page["notifications"] if page else None,
        next_cursor=page["next_cursor"] if page else None,
        unread=unread,
        invitations=invitations,
        notice=NOTICES.get(notice or ""),
    )


@router.post("/me/notifications/read", summary="Mark notifications read")
async def mark_read(
    request: Request, user: User, notification_id: Annotated[str | None, Form(max_length=64)] = None
) -> Response:
    signed = need_user(request, user, "/me")
    if isinstance(signed, Response):
        return signed
    _, backends, _ = _state(request)
    try:
        reply = await backends.mark_read(signed.token, signed.user_id, [notification_id] if notification_id else None)
    except Unavailable as exc:
        return unavailable_result(request, exc)
    return action_result(request, reply, back="/me", notice="marked_read")


# --- sign-in ---------------------------------------------------------------------------

dev_identity = APIRouter()


@dev_identity.get("/sign-in", response_class=HTMLResponse, summary="Development sign-in")
async def sign_in_form(
    request: Request, user: User, next: Annotated[str | None, Query(max_length=500)] = None
) -> HTMLResponse:
    return render(request, "sign_in.html", user, next=local_next(next), problem=None, user_id="", orcid="")


@dev_identity.post("/sign-in", summary="Development sign-in: mint a token for this user")
async def sign_in(
    request: Request,
    user_id: Annotated[str, Form(max_length=128)] = "",
    orcid: Annotated[str, Form(max_length=40)] = "",
    next: Annotated[str, Form(max_length=500)] = "/",
) -> Response:
    settings: WebSettings = request.app.state.settings
    if not settings.dev_sign_in_enabled:  # not mounted then; never mint in production
        raise HTTPException(404)
    user_id, orcid = user_id.strip(), orcid.strip()
    problem = None
    try:
        _ID.validate_python(user_id)
    except ValidationError:
        problem = "A user id is 1 to 128 letters, digits, dots, colons, dashes or underscores."
    orcid_id: str | None = None
    if orcid and problem is None:
        try:
            orcid_id = _ORCID.validate_python(orcid)
        except ValidationError:
            problem = "That is not a valid ORCID iD (like 0000-0002-1825-0097)."
    if problem:
        return render(
            request, "sign_in.html", None, 422, next=local_next(next), problem=problem, user_id=user_id, orcid=orcid
        )
    token = mint_token(settings, user_id, ttl_s=settings.session_ttl_s, orcid=orcid_id)
    response = RedirectResponse(local_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=settings.session_ttl_s,
        httponly=True,
        samesite="lax",
        secure=settings.environment == "production",
        path="/",
    )
    return response


@router.post("/sign-out", summary="Sign out")
async def sign_out() -> Response:
    response = RedirectResponse("/?notice=signed_out", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
