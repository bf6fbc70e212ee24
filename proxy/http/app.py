"""The FastAPI application: wiring only. Handlers live in :mod:`proxy.http.routes`.

``create_app(settings, api_key=..., http_client=None)`` builds every shared object once
(:func:`proxy.http.services.build_services`) and stores it on ``app.state.services``; the
lifespan attests the ``attestation.warm_up`` models in the background and closes everything at
the end. Errors become OpenAI envelopes (:mod:`proxy.http.errors`); the listener guards
(:mod:`proxy.http.guard`) wrap the app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import SecretStr
from starlette.middleware.cors import CORSMiddleware

from proxy.http.errors import install_error_handlers
from proxy.http.guard import (
    DrainMiddleware,
    HostGuardMiddleware,
    InFlightLimitMiddleware,
    LocalAuthMiddleware,
)
from proxy.http.metrics_middleware import RequestMetricsMiddleware
from proxy.http.routes import router
from proxy.http.services import Services, build_services, warm_up
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
            services.spawn(warm_up(services, model))
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
    )
    app.state.services = services
    app.include_router(router)
    app.include_router(status_router)
    services.metrics.set_routes(
        route.path
        for route in [*router.routes, *status_router.routes]
        if isinstance(route, APIRoute)
    )
    install_error_handlers(app)
    _add_guards(app, settings, services)
    return app


def _add_guards(app: FastAPI, settings: Settings, services: Services) -> None:
    """Listener guards, outermost first: metrics, Host, drain, CORS, local auth, in-flight.

    Starlette wraps each added middleware around the ones added before it, so they are added
    innermost first.
    """
    server = settings.server
    app.add_middleware(InFlightLimitMiddleware, max_in_flight=server.max_in_flight)
    app.add_middleware(
        LocalAuthMiddleware, api_keys=[key.get_secret_value() for key in server.api_keys]
    )
    if server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=server.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type", "x-request-id"],
            expose_headers=[
                "x-request-id",
                "x-venice-proxy-e2ee",
                "x-venice-proxy-signing-address",
                "x-venice-proxy-trust",
            ],
        )
    app.add_middleware(DrainMiddleware, controller=services.drain)
    hosts = [*server.allowed_hosts]
    if server.host not in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
        hosts.append(server.host)
    app.add_middleware(HostGuardMiddleware, allowed_hosts=hosts)
    app.add_middleware(RequestMetricsMiddleware, metrics=services.metrics)
    services.metrics.bind_in_flight(lambda: services.drain.in_flight)
