"""Local listener security and load shedding: pure ASGI middlewares (no FastAPI, no I/O, no logs).

Each middleware guards ``http`` scopes; ``lifespan`` passes through untouched. Host and auth also
guard ``websocket`` scopes (refused with close code 1008), so a future websocket route cannot
bypass them. Every refusal is an OpenAI error envelope built by
:func:`proxy.core.errors.error_body`.

Wire behaviour:

- :class:`HostGuardMiddleware`: the ``Host`` header's host part (port stripped, IPv6 brackets
  removed, lower-cased, trailing dot dropped, IP literals compared as addresses) must be in the
  allowlist: ``localhost``, ``127.0.0.1``, ``::1`` plus what the caller passes (the bind
  address, configured names). ``"*"`` allows every host; ``"*.example.com"`` allows its
  subdomains. A missing, empty or repeated ``Host`` is refused unless ``"*"``. Refusals are **421
  Misdirected Request** (``invalid_request_error``, code ``host_not_allowed``): the request is
  well formed but names a server this is not, which is exactly what a DNS-rebinding page does;
  400 would suggest the body is wrong. OpenAI SDKs do not retry 421.
- :class:`LocalAuthMiddleware`: with keys configured, ``Authorization: Bearer <key>`` must match
  one of them; the token is compared with :func:`hmac.compare_digest` against *every* key (no
  early exit, so timing does not tell which key nearly matched). Refusal: 401 with
  ``WWW-Authenticate: Bearer`` and code ``invalid_api_key``. Without keys every request passes
  and any client bearer is ignored (Open WebUI always sends one). ``/healthz`` and ``/readyz``
  are exempt by default so container and orchestrator probes need no secret.
- :class:`InFlightLimitMiddleware`: counts chat requests from the start of the call until the
  final response body message (``more_body`` false) has been sent, or the call ends or raises,
  so a long streaming answer holds its slot. Over the limit: 503 at once with ``Retry-After``
  (``server_error``, code ``overloaded``); requests are never queued.
- :class:`DrainMiddleware`: after :meth:`DrainController.start_draining`, new requests (except
  ``/healthz``: the process is still alive) get 503 with ``Retry-After`` (code
  ``shutting_down``), so ``/readyz`` also turns 503 and a load balancer stops routing here;
  requests already in flight finish. :meth:`DrainController.wait_idle` awaits the end of them.

The counters live in small shared objects (:class:`InFlightCounter`, :class:`DrainController`)
so the app can hold them even when Starlette instantiates the middleware lazily
(``app.add_middleware(DrainMiddleware, controller=drain)``).

Browser origins (CORS, and the 403 for origins not in ``server.cors_origins``) are in
:mod:`proxy.http.cors`. That middleware sits *outside* :class:`LocalAuthMiddleware` so browser
preflights (which carry no ``Authorization``) are answered and 401s carry CORS headers. Order,
outermost first: request id, metrics, host guard, browser origin, drain, auth, in-flight limit,
app.

Deliberately not checked here: ``X-Forwarded-Host`` (nothing here trusts a proxy in front),
``Origin`` (:mod:`proxy.http.cors`; the Host check is what stops rebinding), the
``http.response.pathsend`` / zero-copy extensions (the proxy never sends files), and DNS: a
configured host name is compared as text, never resolved.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.core.errors import error_body

DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]", "::1")
DEFAULT_AUTH_EXEMPT: tuple[str, ...] = ("/healthz", "/readyz")
DEFAULT_DRAIN_EXEMPT: tuple[str, ...] = ("/healthz",)
CHAT_PATHS: tuple[str, ...] = (
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/responses",
    "/responses",
)

_POLICY_VIOLATION = 1008


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts local connections (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _host_part(value: str) -> str | None:
    """The canonical host of a ``Host`` header value or allowlist entry, or None if malformed.

    ``Example.COM.:8000`` -> ``example.com``; ``[::1]:8000`` and ``::1`` -> ``::1``.
    """
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        name = text[1:end]
    elif text.count(":") == 1:
        name, port = text.split(":")
        if port and not port.isdigit():
            return None
    else:
        # No colon: a name or IPv4. Several colons: a bare IPv6 literal (only in allowlists).
        name = text
    name = name.lower().rstrip(".")
    if not name:
        return None
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name


# Remembered for the last 256 values: a client sends the same ``Host`` on every request, and
# parsing an IP literal costs more than the rest of the guard. (Wrapped here rather than
# decorated, so mutation testing reaches the function; its tests clear the cache.)
host_part = functools.lru_cache(maxsize=256)(_host_part)


async def _send_error(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode("ascii")),
        *((name.encode("latin-1"), value.encode("latin-1")) for name, value in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _refuse_websocket(send: Send) -> None:
    await send({"type": "websocket.close", "code": _POLICY_VIOLATION})


def _header(scope: Scope, name: bytes) -> str | None:
    """The header's value; None when absent or repeated (a repeated Host or Authorization is
    ambiguous: different components could read different copies)."""
    values = [value for key, value in scope.get("headers", ()) if key.lower() == name]
    if len(values) != 1:
        return None
    text: str = values[0].decode("latin-1")
    return text


def _matches(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


async def _call_tracked(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, release: Callable[[], None]
) -> None:
    """Run ``app``; call ``release`` once, after the final body message or when the call ends."""
    released = False

    def finish() -> None:
        nonlocal released
        if not released:
            released = True
            release()

    async def tracked_send(message: Message) -> None:
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finish()

    try:
        await app(scope, receive, tracked_send)
    finally:
        finish()


class HostGuardMiddleware:
    """Refuse requests whose ``Host`` is not an allowed name (DNS-rebinding guard)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] = ()) -> None:
        self.app = app
        entries = [*DEFAULT_ALLOWED_HOSTS, *allowed_hosts]
        self.allow_all = any(entry.strip() == "*" for entry in entries)
        self._suffixes = tuple(
            "." + suffix
            for entry in entries
            if entry.strip().startswith("*.")
            and (suffix := host_part(entry.strip()[2:])) is not None
        )
        self._exact = frozenset(
            name
            for entry in entries
            if not entry.strip().startswith("*") and (name := host_part(entry)) is not None
        )

    def allows(self, host_header: str | None) -> bool:
        """Whether a request with this ``Host`` header value may proceed."""
        if self.allow_all:
            return True
        if host_header is None:
            return False
        name = host_part(host_header)
        if name is None:
            return False
        return name in self._exact or name.endswith(self._suffixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(_header(scope, b"host")):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await _refuse_websocket(send)
            return
        await _send_error(
            send,
            421,
            error_body(
                "this server does not answer for the requested Host; "
                "add the name to server.allowed_hosts",
                "invalid_request_error",
                code="host_not_allowed",
            ),
        )


class LocalAuthMiddleware:
    """Require one of the local bearer keys, when any are configured."""

    def __init__(
        self,
        app: ASGIApp,
        api_keys: Sequence[str],
        exempt_paths: Sequence[str] = DEFAULT_AUTH_EXEMPT,
    ) -> None:
        self.app = app
        self._keys = tuple(key.encode("utf-8") for key in api_keys if key)
        self.exempt_paths = frozenset(exempt_paths)

    def __repr__(self) -> str:
        return f"LocalAuthMiddleware(keys={len(self._keys)}, exempt={sorted(self.exempt_paths)})"

    @property
    def enabled(self) -> bool:
        """Whether keys are configured (otherwise every request passes)."""
        return bool(self._keys)

    def authorized(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries one of the keys."""
        if not self._keys:
            return True
        scheme, _, token = (authorization or "").strip().partition(" ")
        presented = token.strip().encode("utf-8")
        ok = False
        # Every key is compared, whatever the earlier results, so timing does not single one out.
        for key in self._keys:
            ok |= hmac.compare_digest(presented, key)
        return ok and scheme.lower() == "bearer" and bool(presented)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or scope["path"] in self.exempt_paths
            or self.authorized(_header(scope, b"authorization"))
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await _refuse_websocket(send)
            return
        await _send_error(
            send,
            401,
            error_body(
                "invalid or missing local API key: send Authorization: Bearer <server.api_keys>",
                "authentication_error",
                code="invalid_api_key",
            ),
            headers=[("www-authenticate", "Bearer")],
        )


class InFlightCounter:
    """How many requests are in progress; shared between a middleware and its observers.

    Single event loop only (the server's): it is updated without locks.
    """

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Requests currently counted."""
        return self._count

    def enter(self) -> None:
        """Count one more request."""
        self._count += 1
        self._idle.clear()

    def leave(self) -> None:
        """Count one request fewer."""
        self._count -= 1
        if self._count <= 0:
            self._count = 0
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            return self._count == 0
        return True


class DrainController(InFlightCounter):
    """An :class:`InFlightCounter` with a one-way switch to refuse new requests."""

    def __init__(self) -> None:
        super().__init__()
        self._draining = False

    @property
    def draining(self) -> bool:
        """Whether new requests are being refused."""
        return self._draining

    def start_draining(self) -> None:
        """Refuse new requests from now on; requests in flight carry on."""
        self._draining = True


class InFlightLimitMiddleware:
    """Answer 503 at once, never queue, when too many chat requests are in progress."""

    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        *,
        retry_after_s: int = 1,
        path_prefixes: Sequence[str] = CHAT_PATHS,
        counter: InFlightCounter | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after_s = max(retry_after_s, 0)
        self.path_prefixes = tuple(path_prefixes)
        self.counter = counter if counter is not None else InFlightCounter()

    @property
    def in_flight(self) -> int:
        """Chat requests in progress (streaming bodies included)."""
        return self.counter.in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _matches(scope["path"], self.path_prefixes):
            await self.app(scope, receive, send)
            return
        if self.counter.in_flight >= self.max_in_flight:
            await _send_error(
                send,
                503,
                error_body(
                    "the proxy is at its limit of concurrent requests "
                    "(server.max_in_flight); retry shortly",
                    "server_error",
                    code="overloaded",
                ),
                headers=[("retry-after", str(self.retry_after_s))],
            )
            return
        self.counter.enter()
        await _call_tracked(self.app, scope, receive, send, self.counter.leave)


class DrainMiddleware:
    """Refuse new requests once draining started; let the ones in flight finish."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        controller: DrainController | None = None,
        exempt_paths: Sequence[str] = DEFAULT_DRAIN_EXEMPT,
        retry_after_s: int = 1,
    ) -> None:
        self.app = app
        self.controller = controller if controller is not None else DrainController()
        self.exempt_paths = frozenset(exempt_paths)
        self.retry_after_s = max(retry_after_s, 0)

    @property
    def in_flight(self) -> int:
        """Requests in progress (streaming bodies included)."""
        return self.controller.in_flight

    @property
    def draining(self) -> bool:
        """Whether new requests are being refused."""
        return self.controller.draining

    def start_draining(self) -> None:
        """Refuse new requests from now on."""
        self.controller.start_draining()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait for requests in flight to finish; False on timeout."""
        return await self.controller.wait_idle(timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        if self.controller.draining:
            await _send_error(
                send,
                503,
                error_body(
                    "the proxy is shutting down; retry shortly",
                    "server_error",
                    code="shutting_down",
                ),
                headers=[("retry-after", str(self.retry_after_s)), ("connection", "close")],
            )
            return
        self.controller.enter()
        await _call_tracked(self.app, scope, receive, send, self.controller.leave)
