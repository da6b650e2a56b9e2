"""One ASGI middleware for every route, HTTP and WebSocket alike:

- Host check (loopback servers only): refuse Host names other than localhost/127.x/[::1], so a page on
  another site cannot reach the server through DNS rebinding.
- Origin check: a browser request whose Origin differs from Host is refused (ComfyUI
  create_origin_only_middleware, applied to every host).
- Token (optional): `Authorization: Bearer TOKEN`, a `token` query parameter or the `sd35_token` cookie.
  A request authenticated by the query parameter gets the cookie, so the page, its WebSocket and
  <img src> work after opening `/?token=TOKEN` once.
- Body size: Content-Length above the limit, or a streamed body that grows past it, gets 413.
Refusals are JSON {"error": {"type", "message"}}; a refused WebSocket is closed before it is accepted."""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE_NAME = "sd35_token"


def error_body(kind: str, message: str) -> dict[str, Any]:
    """The JSON error shape every refusal uses (ComfyUI's {"error": {type, message, details, extra_info}})."""
    return {"error": {"type": kind, "message": message, "details": "", "extra_info": {}}}


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in scope.get("headers") or []:
        out.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return out


def is_loopback_host(host: str) -> bool:
    """True for "localhost", 127.0.0.0/8 and ::1 (Host header value, port allowed)."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SecurityMiddleware:
    """See the module docstring. `token=None` turns authentication off."""

    def __init__(self, app: ASGIApp, *, token: str | None, loopback_only: bool, max_body_bytes: int) -> None:
        self.app = app
        self.token = token
        self.loopback_only = loopback_only
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await self._refuse(scope, send, *refusal)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            status = 413 if length.isdigit() else 400
            await self._refuse(scope, send, status, "body_too_large", "request body is too large")
            return
        if length is None and "chunked" in headers.get("transfer-encoding", "").lower():
            buffered = await self._read_limited(receive)
            if buffered is None:
                await self._refuse(scope, send, 413, "body_too_large", "request body is too large")
                return
            receive = _replay(buffered, receive)
        if self.token and self._query_token(scope) == self.token:
            send = _with_cookie(send, self.token)
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        host = headers.get("host", "")
        if self.loopback_only and not is_loopback_host(host):
            return 403, "forbidden_host", "this server only answers to localhost names (start it with --listen)"
        origin = headers.get("origin")
        if origin is not None:
            origin_host = urlsplit(origin).netloc.lower() if origin != "null" else "null"
            if origin_host != host.lower():
                return 403, "forbidden_origin", "cross-origin request refused"
        if self.token and not self._authorized(scope, headers):
            return 401, "unauthorized", "this server needs a token: Authorization: Bearer TOKEN or ?token=TOKEN"
        return None

    def _query_token(self, scope: Scope) -> str | None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        values = query.get("token")
        return values[0] if values else None

    def _authorized(self, scope: Scope, headers: dict[str, str]) -> bool:
        assert self.token is not None
        candidates: list[str] = []
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            candidates.append(auth[7:].strip())
        query_token = self._query_token(scope)
        if query_token is not None:
            candidates.append(query_token)
        if "cookie" in headers:
            cookie: SimpleCookie = SimpleCookie()
            try:
                cookie.load(headers["cookie"])
            except Exception:  # malformed cookie header: ignore it
                cookie = SimpleCookie()
            if COOKIE_NAME in cookie:
                candidates.append(cookie[COOKIE_NAME].value)
        expected = self.token.encode()
        return any(hmac.compare_digest(c.encode("utf-8", "replace"), expected) for c in candidates)

    async def _read_limited(self, receive: Receive) -> list[Message] | None:
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            total += len(message.get("body", b""))
            if total > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                return messages

    async def _refuse(self, scope: Scope, send: Send, status: int, kind: str, message: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body = json.dumps(error_body(kind, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="sd35"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def _with_cookie(send: Send, token: str) -> Send:
    cookie = f"{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1", "replace")

    async def send_with_cookie(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
        await send(message)

    return send_with_cookie
