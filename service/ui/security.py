"""What keeps the pages safe: response headers (a strict Content-Security-Policy), who may see them
(the API's read tokens, given once in a form and kept in a cookie), and the CSRF check of that form.

* Every page is sent with ``Content-Security-Policy: default-src 'none'; script-src 'self';
  style-src 'self'; img-src 'self'; ...``: no inline script, no inline style, nothing from another
  origin, no framing. A script that reached the HTML anyway (it cannot: templates escape every
  value and cards go through nh3) would not run.
* On a server with ``MCNC_API_TOKENS`` (and not ``MCNC_PUBLIC_READ``) a page asks for a token with
  the ``read`` scope once; the token is checked like a bearer token (constant-time against every
  known token) and kept in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over https).
  The cookie opens the pages only: the API routes still take ``Authorization: Bearer`` alone, so
  a cookie never authorises a write.
* The token form is CSRF-safe twice over: the server refuses a POST whose ``Origin`` is another
  site (``service.http_guard``), and the form carries a random value that must equal the one in a
  ``SameSite=Strict`` cookie set with the form (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from fastapi import Request, Response

__all__ = [
    "CSP",
    "CSRF_COOKIE",
    "TOKEN_COOKIE",
    "csrf_matches",
    "forget_token",
    "keep_token",
    "new_csrf",
    "page_headers",
    "safe_next",
    "scopes_of",
    "set_csrf",
    "tokens_required",
    "viewer",
]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
TOKEN_COOKIE = "mcnc_ui_token"
CSRF_COOKIE = "mcnc_ui_csrf"
_READ = frozenset({"read", "write", "admin"})  # scopes that imply read (service.deps)
_NEXT = re.compile(r"/(?![/\\])[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,2000}")


def page_headers(response: Response) -> Response:
    """Put the page security headers on ``response`` (and return it)."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"  # pages may show what only a token holder sees
    return response


def tokens_required(request: Request) -> bool:
    """True when reads need a token on this server (``MCNC_API_TOKENS`` set, ``MCNC_PUBLIC_READ`` off)."""
    return bool(request.app.state.tokens) and not request.app.state.settings.public_read


def scopes_of(request: Request, token: str) -> frozenset[str] | None:
    """The scopes of ``token``, or None when it is unknown (compared with every token: constant time)."""
    found = None
    for known, scopes in request.app.state.tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            found = scopes
    return found


def viewer(request: Request) -> bool:
    """Whether this request may see the pages; counts it against the rate limit as the API does
    (keyed on the token it proved, else on its address)."""
    state = request.app.state
    token = request.cookies.get(TOKEN_COOKIE)
    scopes = scopes_of(request, token) if token and state.tokens else None
    if scopes is not None and token is not None:
        identity = "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    else:
        identity = f"ip:{request.client.host if request.client else 'unknown'}"
    state.rate_limiter.check(identity)
    return not tokens_required(request) or bool(scopes and scopes & _READ)


def new_csrf() -> str:
    """A fresh double-submit value: the form carries it, ``set_csrf`` puts it in a cookie."""
    return secrets.token_urlsafe(32)


def set_csrf(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        CSRF_COOKIE, value, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/ui/"
    )


def csrf_matches(request: Request, submitted: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    return bool(cookie and submitted) and hmac.compare_digest(cookie.encode(), (submitted or "").encode())


def keep_token(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        TOKEN_COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/"
    )
    response.delete_cookie(CSRF_COOKIE, path="/ui/")


def forget_token(response: Response) -> None:
    response.delete_cookie(TOKEN_COOKIE, path="/")


def safe_next(value: str | None) -> str:
    """``value`` when it is a path on this server (``/...``, never ``//host`` or a scheme), else ``/``."""
    return value if value and _NEXT.fullmatch(value) else "/"
