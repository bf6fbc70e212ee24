"""Browser origins: CORS for the allowed ones, a 403 for every other (pure ASGI, no I/O, no logs).

A request that carries an ``Origin`` header comes from a web page. A page the user merely visits
can send a cross-site POST (a ``no-cors`` ``fetch`` with a Blob body needs no preflight), and the
proxy would spend the user's Venice credits on it; so an origin is allowed only when

- it is listed in ``server.cors_origins`` (compared as ``scheme://host[:port]``, case-insensitive,
  default ports and a trailing ``/`` ignored; the entry ``"*"`` allows every origin), or
- it is the proxy's own origin (``Origin`` equal to the request's scheme and ``Host``: a page
  the proxy served itself; the Host guard outside this middleware already vouched for the host).

Wire behaviour, for ``http`` scopes with an ``Origin`` header (requests without one, such as
curl and the SDKs outside a browser, pass untouched and get no CORS headers):

- **Not allowed** (any method, preflight included): **403** before any work, an OpenAI envelope
  (``permission_error``, code ``origin_not_allowed``) naming ``server.cors_origins``. Websocket
  handshakes from such an origin are closed with 1008.
- **Preflight** (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin:
  **204** with ``Access-Control-Allow-Origin: <origin>``, ``Access-Control-Allow-Methods: GET,
  HEAD, POST, OPTIONS``, ``Access-Control-Allow-Headers`` reflecting the requested header names
  (openai-node sends ``x-stainless-*``, the AI SDK and others ``openai-*``, ``user-agent``...;
  anything not a header-name token is left out), ``Access-Control-Max-Age: 600``, and
  ``Access-Control-Allow-Private-Network: true`` when Chrome asks for it (a public site calling
  a proxy on localhost). It never reaches the app, so local auth does not apply to it.
- **Other requests** from an allowed origin: the app's answer plus
  ``Access-Control-Allow-Origin: <origin>``, ``Vary: Origin`` and ``Access-Control-Expose-Headers``
  (``x-request-id``, the ``x-venice-proxy-*`` headers, ``retry-after``).

Deliberately not supported: credentialed CORS (``Access-Control-Allow-Credentials``; the SDKs
send a bearer header, not cookies), per-origin method or header lists, and ``Origin: null``
unless ``"null"`` is listed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.core.errors import error_body

ALLOW_METHODS = "GET, HEAD, POST, OPTIONS"
EXPOSE_HEADERS = (
    "x-request-id",
    "x-venice-proxy-e2ee",
    "x-venice-proxy-signing-address",
    "x-venice-proxy-tcb-status",
    "x-venice-proxy-trust",
    "retry-after",
)
PREFLIGHT_MAX_AGE_S = 600

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_POLICY_VIOLATION = 1008


def normalize_origin(value: str) -> str:
    """``scheme://host[:port]`` lower-cased, without a trailing ``/`` or a default port."""
    text = value.strip().rstrip("/").lower()
    scheme, sep, _ = text.partition("://")
    default = _DEFAULT_PORTS.get(scheme)
    if sep and default and text.endswith(default):
        text = text[: -len(default)]
    return text


def _headers(scope: Scope, name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope.get("headers", ()) if key == name]


def reflected_headers(requested: Iterable[str]) -> str:
    """The requested header names that are valid tokens, lower-cased, in order, once each."""
    seen: list[str] = []
    for value in requested:
        for part in value.split(","):
            name = part.strip().lower()
            if name and _TOKEN.fullmatch(name) and name not in seen:
                seen.append(name)
    return ", ".join(seen)


class BrowserOriginMiddleware:
    """Answer CORS for allowed origins; refuse requests from every other browser origin."""

    def __init__(self, app: ASGIApp, allowed_origins: Sequence[str] = ()) -> None:
        self.app = app
        entries = [entry for entry in allowed_origins if entry.strip()]
        self.allow_all = any(entry.strip() == "*" for entry in entries)
        self.allowed = frozenset(normalize_origin(entry) for entry in entries)

    def allows(self, origin: str, scope: Scope) -> bool:
        """Whether a request from ``origin`` may proceed."""
        if self.allow_all:
            return True
        normalized = normalize_origin(origin)
        if normalized in self.allowed:
            return True
        hosts = _headers(scope, b"host")
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        return len(hosts) == 1 and normalized == normalize_origin(f"{scheme}://{hosts[0]}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        origins = _headers(scope, b"origin")
        if not origins:
            await self.app(scope, receive, send)
            return
        origin = origins[0]
        if len(origins) != 1 or not self.allows(origin, scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": _POLICY_VIOLATION})
                return
            await _send_refusal(origin, send)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and _headers(scope, b"access-control-request-method"):
            await self._preflight(origin, scope, send)
            return
        await self.app(scope, receive, self._decorating(origin, send))

    async def _preflight(self, origin: str, scope: Scope, send: Send) -> None:
        headers = [
            ("access-control-allow-origin", origin),
            ("access-control-allow-methods", ALLOW_METHODS),
            ("access-control-max-age", str(PREFLIGHT_MAX_AGE_S)),
            ("vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
            ("content-length", "0"),
        ]
        allowed = reflected_headers(_headers(scope, b"access-control-request-headers"))
        if allowed:
            headers.append(("access-control-allow-headers", allowed))
        private = _headers(scope, b"access-control-request-private-network")
        if private and private[0].strip().lower() == "true":
            headers.append(("access-control-allow-private-network", "true"))
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    def _decorating(origin: str, send: Send) -> Send:
        added = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", ", ".join(EXPOSE_HEADERS).encode("latin-1")),
        ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (key, value)
                    for key, value in message.get("headers", ())
                    if not key.lower().startswith(b"access-control-")
                ]
                vary = [value for key, value in headers if key.lower() == b"vary"]
                headers = [(key, value) for key, value in headers if key.lower() != b"vary"]
                if b"origin" not in b",".join(vary).lower():
                    vary.append(b"Origin")
                headers += [*added, (b"vary", b", ".join(vary))]
                message = {**message, "headers": headers}
            await send(message)

        return send_with_cors


async def _send_refusal(origin: str, send: Send) -> None:
    shown = "".join(char if char.isprintable() else "?" for char in origin[:200])
    body = error_body(
        f"requests from the browser origin '{shown}' are not allowed: add it to "
        "server.cors_origins in the proxy's configuration to let that web app use the proxy",
        "permission_error",
        code="origin_not_allowed",
    )
    payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode("ascii")),
                (b"vary", b"Origin"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})
