"""The FastAPI application: wiring only. Handlers live in :mod:`proxy.http.routes`.

``create_app(settings, api_key=..., http_client=None)`` builds every shared object once
(:func:`proxy.http.services.build_services`) and stores it on ``app.state.services``; the
lifespan keeps the ``attestation.warm_up`` models attested in the background
(:func:`proxy.http.services.keep_warm`) and closes everything at the end. Errors become OpenAI
envelopes (:mod:`proxy.http.errors`); the listener guards (:mod:`proxy.http.guard`) wrap the app.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import SecretStr

from proxy.http.cors import BrowserOriginMiddleware
from proxy.http.errors import install_error_handlers
from proxy.http.guard import (
    DrainMiddleware,
    HostGuardMiddleware,
    InFlightCounter,
    InFlightLimitMiddleware,
    LocalAuthMiddleware,
)
from proxy.http.hot_routes import HotRoutes, hot_endpoints
from proxy.http.metrics_middleware import RequestMetricsMiddleware
from proxy.http.request_id import RequestIdMiddleware
from proxy.http.responses_route import router as responses_router
from proxy.http.routes import router
from proxy.http.services import Services, build_services, keep_warm
from proxy.http.status_page import router as status_router
from proxy.settings import Settings

if TYPE_CHECKING:
    import httpx


def create_app(
    settings: Settings,
    *,
    api_key: SecretStr | None = None,
    http_client: httpx.AsyncClient | None = None,
    demo: bool = False,
) -> FastAPI:
    """The proxy as an ASGI app."""
    services = build_services(settings, api_key=api_key, http_client=http_client, demo=demo)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for model in settings.attestation.warm_up:
            services.spawn(keep_warm(services, model))
        try:
            yield
        finally:
            await services.aclose()

    app = FastAPI(
        title="venice-e2ee-proxy",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        **_framework_telemetry_off(),
    )
    app.state.services = services
    app.include_router(router)
    app.include_router(responses_router)
    app.include_router(status_router)
    services.metrics.set_routes(
        route.path
        for routes in (router.routes, responses_router.routes, status_router.routes)
        for route in routes
        if isinstance(route, APIRoute)
    )
    install_error_handlers(app)
    # Innermost, inside every guard: the chat endpoints without the router's matching.
    app.add_middleware(
        HotRoutes, endpoints=hot_endpoints([*router.routes, *responses_router.routes])
    )
    _add_guards(app, settings, services)
    return app


def _add_guards(app: FastAPI, settings: Settings, services: Services) -> None:
    """Listener guards, outermost first: request id, metrics, Host, browser origin (CORS and
    the 403 for other origins), drain, local auth, in-flight.

    Starlette wraps each added middleware around the ones added before it, so they are added
    innermost first. The request id is outermost so every answer carries ``X-Request-ID``; the
    origin guard sits outside drain and auth so preflights are answered without a key and
    refusals from inside carry CORS headers for allowed origins.
    """
    server = settings.server
    # The chat requests in progress: the limit's count, and the in-flight gauge's (the drain
    # controller counts every request but /healthz, a scrape of /metrics among them).
    chat_in_flight = InFlightCounter()
    app.add_middleware(
        InFlightLimitMiddleware, max_in_flight=server.max_in_flight, counter=chat_in_flight
    )
    app.add_middleware(
        LocalAuthMiddleware, api_keys=[key.get_secret_value() for key in server.api_keys]
    )
    app.add_middleware(DrainMiddleware, controller=services.drain)
    app.add_middleware(BrowserOriginMiddleware, allowed_origins=server.cors_origins)
    hosts = [*server.allowed_hosts]
    if server.host not in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
        hosts.append(server.host)
    app.add_middleware(HostGuardMiddleware, allowed_hosts=hosts)
    app.add_middleware(RequestMetricsMiddleware, metrics=services.metrics)
    app.add_middleware(RequestIdMiddleware)
    services.metrics.bind_in_flight(lambda: chat_in_flight.in_flight)


# FastAPI's own telemetry (native since the 0.16x releases): request spans, request metrics, and
# logs of validation failures and unhandled exceptions with their messages, sent wherever a
# global OpenTelemetry provider points (an SDK in the environment, ``OTEL_*`` variables,
# ``FASTAPI_OTEL_AUTO_CONFIGURE=true``). None of it is on the proxy's allowlist, so it is off;
# off, it also costs nothing per request (on, it asks three providers on every one).
_TELEMETRY_OFF = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}


def _framework_telemetry_off() -> dict[str, Any]:
    """``FastAPI(**…)`` keywords that turn its telemetry off; none for a FastAPI without it."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": dict(_TELEMETRY_OFF)}
    return {}
