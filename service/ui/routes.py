"""The pages: ``/`` (models), ``/ui/models/{name}`` (one model), ``/ui/bases`` and ``/ui/bases/{digest}``,
the token form (``POST /ui/token``, ``POST /ui/logout``) and ``/ui/static/*``.

Pages live under ``/ui/`` so that they never shadow the Hub routes (``/{repo}/resolve/...``,
``/api/...``) or the API; only ``/`` itself is a page. Plain ``def`` routes: the database reads
run in FastAPI's threadpool. No page writes anything but the token cookie.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from service.errors import BundleNotFoundError, InvalidRequestError
from service.storage import Store, parse_ref, validate_name
from service.ui import queries, security
from service.ui.bundle_info import bundle_summary
from service.ui.cards import CARD_FILENAME, MAX_CARD_BYTES, render_card
from service.ui.present import duration, human_bytes, saving, timestamp, transfer_chart
from service.ui.snippets import model_snippets

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
_ENV = Environment(loader=PackageLoader("service.ui", "templates"), autoescape=select_autoescape(default=True))
_ENV.filters.update(bytes=human_bytes, when=timestamp, duration=duration, q=lambda s: quote(s, safe="/"))
_ENV.globals.update(saving=saving)
_STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8", "icon.svg": "image/svg+xml"}
_STATIC_BYTES = {n: (resources.files("service.ui") / "static" / n).read_bytes() for n in _STATIC}
_TAGS_SHOWN, _USERS_SHOWN, _BASES_SHOWN = 100, 200, 500
_MAX_FORM = 8192


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.update(request=request, tokens=security.tokens_required(request))
    html = _ENV.get_template(template).render(**context)
    return security.page_headers(HTMLResponse(html, status_code=status))  # type: ignore[return-value]


def _login(
    request: Request, *, status: int = 401, problem: str | None = None, target: str | None = None
) -> HTMLResponse:
    """The token form (the page asked for, or ``target``, stays the form's ``next``), with its CSRF cookie."""
    csrf = security.new_csrf()
    nxt = security.safe_next(target or _here(request))
    response = _page(request, "token.html", status=status, problem=problem, next=nxt, csrf=csrf)
    security.set_csrf(response, request, csrf)
    return response


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _endpoint(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


@router.get("/", response_class=HTMLResponse)
def models_page(
    request: Request,
    q: Annotated[str | None, Query(max_length=128)] = None,
    org: Annotated[str | None, Query(max_length=128)] = None,
    sort: queries.Sort = "push",
    limit: Annotated[int, Query(ge=1, le=1000)] = 25,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    """The models: one row per name."""
    if not security.viewer(request):
        return _login(request)
    meta = _store(request).meta
    rows, total = queries.list_models(meta, q=q or None, org=org or None, sort=sort, limit=limit, offset=offset)
    totals = queries.totals(meta)

    def link(new_offset: int) -> str:
        params = {k: v for k, v in {"q": q, "org": org, "sort": sort, "limit": limit}.items() if v}
        return "/?" + urlencode({**params, "offset": new_offset})

    return _page(
        request,
        "models.html",
        rows=rows,
        total=total,
        q=q or "",
        org=org or "",
        orgs=queries.list_orgs(meta),
        sort=sort,
        sorts=queries.SORTS,
        limit=limit,
        offset=offset,
        prev=link(max(offset - limit, 0)) if offset > 0 else None,
        next_=link(offset + limit) if offset + limit < total else None,
        totals=totals,
        chart=transfer_chart(
            totals.stored_bytes, totals.full_bytes, stored_label="stored", full_label="as full weights"
        ),
    )


def find_card(store: Store, name: str, tag: str) -> tuple[str | None, list[Any]]:
    """``(README.md text or None, the tag's sidecar files)``: the one place pages look cards up.

    Sidecar files are the tag's attached files (``POST /files`` + ``file=README.md:<sha256>`` on the
    push, docs/service.md); a card over ``MAX_CARD_BYTES`` is listed as a file but not rendered.
    """
    files: list[Any] = list(store.meta.tag_files(name, tag))
    card = next((f for f in files if f.name == CARD_FILENAME), None)
    if card is None or card.size > MAX_CARD_BYTES:
        return None, files
    reader = store.open_file(card.sha256)
    try:
        text = b"".join(reader).decode("utf-8", errors="replace")
    finally:
        reader.close()
    return text, files


def _file_href(ref: str, filename: str) -> str:
    """Where a sidecar file's bytes are served: ``GET /models/{ref}/files/{filename}``."""
    return f"/models/{quote(ref)}/files/{quote(filename)}"


@router.get("/ui/models/{name:path}", response_class=HTMLResponse)
def model_page(request: Request, name: str, tag: Annotated[str | None, Query(max_length=128)] = None) -> Response:
    """One model: card, tags, files, config, lineage, metadata, snippets."""
    if not security.viewer(request):
        return _login(request)
    store = _store(request)
    try:
        validate_name(name)
    except InvalidRequestError as exc:
        return _page(request, "missing.html", status=404, what=f"model {name!r}", why=exc.message)
    shown = tag or queries.head_tag(store.meta, name)
    found = store.meta.get_tag(name, shown) if shown else None
    rec = store.meta.get_bundle(found.digest) if found else None
    if found is None or rec is None or shown is None:
        why = f"no tag {tag!r}" if tag and shown else "no bundle was pushed under this name"
        return _page(request, "missing.html", status=404, what=f"model {name!r}", why=why)
    try:
        summary = bundle_summary(store, rec.digest, rec.size)
    except BundleNotFoundError:
        summary = None
    base = store.meta.get_base(rec.base_sha256) if rec.base_sha256 else None
    ref = f"{name}:{shown}"
    text, sidecars = find_card(store, name, shown)
    card = None
    if text is not None:
        served = {f.name for f in sidecars}
        card = render_card(text, file_url=lambda n: _file_href(ref, n) if n in served else None)
    delta = rec.mode == "delta"
    adapter = delta and bool(summary and summary.rank)
    files: list[dict[str, Any]] = [
        {"name": f"{name.replace('/', '-')}-{shown}.mcnc", "size": rec.size, "href": f"/bundles/sha256:{rec.digest}",
         "what": "the bundle"},
    ]  # fmt: skip
    if not delta or base is not None:
        what = "full weights, reconstructed by the server"
        files.append({"name": "model.safetensors", "size": rec.reconstructed_nbytes, "approx": True,
                      "href": f"/models/{quote(ref)}/weights", "what": what})  # fmt: skip
    if adapter:
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            files.append({"name": f, "size": None, "href": f"/{quote(name)}/resolve/{quote(shown)}/{f}",
                          "what": "PEFT adapter (exported on first request)"})  # fmt: skip
    for f in sidecars:
        files.append({"name": f.name, "size": f.size, "href": _file_href(ref, f.name),
                      "what": "sidecar file"})  # fmt: skip
    tag_rows, tag_total = queries.name_tags(store.meta, name, limit=_TAGS_SHOWN)
    snippets = model_snippets(
        endpoint=_endpoint(request),
        name=name,
        tag=shown,
        mode=rec.mode,
        base_registered=base is not None,
        base_name=rec.base_name,
        rank=summary.rank if summary else None,
        main_tag=queries.head_tag(store.meta, name),
    )
    if delta and not adapter:
        snippets = [s for s in snippets if s.key in ("pull", "load")]
    return _page(
        request,
        "model.html",
        name=name,
        tag=shown,
        rec=rec,
        summary=summary,
        base=base,
        card=card,
        files=files,
        tags=tag_rows,
        tag_total=tag_total,
        metadata=sorted((rec.metadata or {}).items()),
        snippets=snippets,
        chart=transfer_chart(rec.size, rec.reconstructed_nbytes),
    )


@router.get("/ui/bases", response_class=HTMLResponse)
def bases_page(request: Request) -> Response:
    """Registered bases and the bases deltas name."""
    if not security.viewer(request):
        return _login(request)
    return _page(request, "bases.html", bases=queries.base_rows(_store(request).meta, limit=_BASES_SHOWN))


@router.get("/ui/bases/{digest}", response_class=HTMLResponse)
def base_page(request: Request, digest: str) -> Response:
    """One base and the deltas that use it."""
    if not security.viewer(request):
        return _login(request)
    store = _store(request)
    try:
        parsed = parse_ref(digest).digest
    except InvalidRequestError:
        parsed = None
    if parsed is None:
        return _page(request, "missing.html", status=404, what=f"base {digest!r}", why="not a base digest")
    base = store.meta.get_base(parsed)
    users, total = queries.base_users(store.meta, parsed, limit=_USERS_SHOWN)
    if base is None and not users:
        return _page(request, "missing.html", status=404, what=f"base sha256:{parsed}", why="no such base")
    return _page(request, "base.html", digest=parsed, base=base, users=users, total=total)


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise InvalidRequestError(f"form body over {_MAX_FORM} bytes")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace")).items()}


@router.post("/ui/token", response_class=HTMLResponse)
async def give_token(request: Request) -> Response:
    """The token form: a read token becomes an HttpOnly, SameSite=Strict cookie."""
    form = await _form(request)
    target = security.safe_next(form.get("next"))
    if not security.csrf_matches(request, form.get("csrf")):
        problem = "the form expired or came from another page: try again"
        return _login(request, status=403, problem=problem, target=target)
    token = form.get("token", "").strip()
    scopes = security.scopes_of(request, token) if token else None
    if scopes is None:
        return _login(request, problem="unknown token", target=target)
    if not scopes & {"read", "write", "admin"}:
        return _login(request, status=403, problem="this token has no read scope", target=target)
    response = RedirectResponse(target, status_code=303)
    security.keep_token(response, request, token)
    return security.page_headers(response)


@router.post("/ui/logout", response_class=HTMLResponse)
async def forget(request: Request) -> Response:
    """Forget the page token (the cookie); same-origin POSTs only (``service.http_guard``)."""
    response = RedirectResponse("/", status_code=303)
    security.forget_token(response)
    return security.page_headers(response)


@router.get("/ui/static/{filename}")
def static(filename: str, request: Request) -> Response:
    """The pages' stylesheet, script and icon (the only files they load)."""
    data = _STATIC_BYTES.get(filename)
    if data is None:
        return Response(status_code=404)
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=_STATIC[filename], headers=headers)
