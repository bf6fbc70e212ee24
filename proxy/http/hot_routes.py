"""The chat endpoints called straight from the ASGI scope, inside the guards.

Starlette's router tries each route's path pattern in turn, and FastAPI's route wrapper then
solves the endpoint's (empty) dependencies and wraps it in two exception layers: together about
a fifth of a millisecond per request on this machine, on the path every prompt takes
(benchmarks/README.md, "Where the time goes"). :class:`HotRoutes` sits innermost among the
guards and answers ``POST`` to the chat paths (:data:`proxy.http.guard.CHAT_PATHS`) by calling
their FastAPI endpoint directly with a Starlette :class:`~starlette.requests.Request`; every
other request goes on to the router unchanged.

Only endpoints that take the request alone (no path, query, header, cookie or body
parameters, no dependencies) are called this way, so the router would do nothing more for them
than find them; :func:`hot_endpoints` picks them from the app's routes, so the paths are
declared once, on the routers. A :class:`~proxy.core.errors.ProxyError` that escapes the endpoint
gets the same envelope the app's error handler gives it; anything else propagates to the
app's crash handler as before. Deliberately not handled here: trailing-slash redirects, other
methods, a mounted ``root_path`` (all go on to the router, which answers them as before).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.core.errors import ProxyError
from proxy.http.errors import proxy_error_response
from proxy.http.guard import CHAT_PATHS

Endpoint = Callable[[Request], Awaitable[Response]]


def hot_endpoints(routes: Iterable[BaseRoute]) -> dict[tuple[str, str], Endpoint]:
    """``(method, path) -> endpoint`` for the chat paths' ``POST`` routes that take the request
    alone."""
    found: dict[tuple[str, str], Endpoint] = {}
    for route in routes:
        if not isinstance(route, APIRoute) or route.path not in CHAT_PATHS:
            continue
        if "POST" not in (route.methods or ()) or not _takes_request_alone(route):
            continue
        found[("POST", route.path)] = route.endpoint
    return found


def _takes_request_alone(route: APIRoute) -> bool:
    dependant = route.dependant
    return dependant.request_param_name is not None and not (
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.dependencies
    )


class HotRoutes:
    """Pure ASGI: ``POST`` to a chat path calls its endpoint; the rest goes to ``app``."""

    def __init__(self, app: ASGIApp, endpoints: Mapping[tuple[str, str], Endpoint]) -> None:
        self.app = app
        self._endpoints = dict(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and not scope.get("root_path"):
            endpoint = self._endpoints.get((scope["method"], scope["path"]))
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await endpoint(Request(scope, receive, send))
        except ProxyError as exc:
            response = proxy_error_response(exc)
        await response(scope, receive, send)
