"""Who may use the console: a person logged in with the token (a session cookie), or a script that sends
the token as `Authorization: Bearer`. Forms carry a CSRF token tied to the session.

Sessions are stateless: the cookie is `<nonce>.<HMAC(token, nonce)>`, so a restart keeps people logged in
and changing the token logs everyone out. The CSRF token is another HMAC of the nonce; neither reveals the
token. A bearer request needs no CSRF token (a browser never adds that header on its own).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse

COOKIE = "baton_console"
LOGIN_COOKIE = "baton_login"  # the login form's own CSRF token (double submit)
PUBLIC = ("/login", "/health", "/static/")


def _mac(token: str, purpose: str, nonce: str) -> str:
    return hmac.new(token.encode(), f"{purpose}:{nonce}".encode(), hashlib.sha256).hexdigest()


def new_session(token: str) -> str:
    nonce = secrets.token_urlsafe(18)
    return f"{nonce}.{_mac(token, 'session', nonce)}"


def session_nonce(token: str, cookie: str | None) -> str | None:
    """The session's nonce if the cookie was made with this token."""
    nonce, _, mac = (cookie or "").partition(".")
    if nonce and mac and hmac.compare_digest(mac, _mac(token, "session", nonce)):
        return nonce
    return None


def csrf_token(token: str, nonce: str) -> str:
    return _mac(token, "csrf", nonce)[:40]


def bearer(scope) -> bytes:
    header = dict(scope.get("headers") or []).get(b"authorization", b"")
    return header[7:].strip() if header[:7].lower() == b"bearer " else b""


class ConsoleAuth:
    """ASGI middleware: everything but the login page, `/health` and the static files needs the token,
    as a session cookie or a bearer header. A person without one is sent to the login page; a script,
    an event stream or a POST gets 401. Sets `scope["state"]["csrf"]` for a session (None for bearer)."""

    def __init__(self, app, token: str, log) -> None:
        self.app, self.token, self.log = app, token, log

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or (scope.get("path") or "/").startswith(PUBLIC):
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        given = bearer(scope)
        if given:
            if hmac.compare_digest(given, self.token.encode()):
                state["csrf"], state["via"] = None, "bearer"
                return await self.app(scope, receive, send)
        else:
            nonce = session_nonce(self.token, Request(scope).cookies.get(COOKIE))
            if nonce is not None:
                state["csrf"], state["via"] = csrf_token(self.token, nonce), "session"
                return await self.app(scope, receive, send)
        request = Request(scope)
        self.log.warning("console_unauthorized", client=str(scope.get("client")), path=scope.get("path"))
        wants_page = (
            request.method == "GET" and not given and "text/html" in request.headers.get("accept", "")
        )
        if wants_page:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            response = RedirectResponse(f"/login?next={quote(target, safe='')}", 303)
        else:
            response = PlainTextResponse("unauthorized", 401, headers={"www-authenticate": "Bearer"})
        await response(scope, receive, send)


def csrf_ok(request: Request, form) -> bool:
    """A POST's CSRF check: a session must send its token (form field `csrf` or `X-CSRF-Token`)."""
    expected = request.state.csrf
    if expected is None:  # bearer
        return True
    given = (form.get("csrf") if form is not None else None) or request.headers.get("x-csrf-token", "")
    return hmac.compare_digest(str(given), expected)


SECURITY_HEADERS = [
    # the pages' own scripts and styles only: an output that slipped through could not run anything
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send=sending)
