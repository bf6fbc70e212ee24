"""The FastAPI application: wiring and error translation. Handlers live in :mod:`proxy.routes`.

``create_app(settings, api_key=..., http_client=None)`` builds every shared object once (upstream
client, model catalogue, attested-key cache, chat service) and stores them on ``app.state``; the
lifespan closes them. Every error a client sees is an OpenAI envelope
``{"error": {"message", "type", "param", "code"}}``, including unknown routes and crashes (a
crash says nothing about its cause: its traceback could hold data).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.attestation import AttestationPolicy
from proxy.chat import ChatService
from proxy.errors import ProxyError, UpstreamStatusError, error_body
from proxy.keys import AttestedKeyCache, Attester
from proxy.logs import get_logger
from proxy.models import ModelCatalogue
from proxy.retry import RetryPolicy
from proxy.settings import Settings
from proxy.upstream import UpstreamClient, UpstreamTimeouts

if TYPE_CHECKING:
    import httpx

log = get_logger("proxy.app")


@dataclass(frozen=True, slots=True)
class Services:
    """Everything the handlers share."""

    settings: Settings
    upstream: UpstreamClient
    catalogue: ModelCatalogue
    keys: AttestedKeyCache
    chat: ChatService
    demo: bool


def attestation_policy(settings: Settings) -> AttestationPolicy:
    """The verification policy the settings ask for."""
    section = settings.attestation
    return AttestationPolicy(
        dcap=section.dcap,
        nvidia=section.nvidia,
        allowed_tcb_status=frozenset(section.allowed_tcb_status),
    )


def build_services(
    settings: Settings,
    *,
    api_key: SecretStr | None,
    http_client: httpx.AsyncClient | None = None,
    demo: bool = False,
) -> Services:
    """Construct the shared objects from the settings."""
    up = settings.upstream
    upstream = UpstreamClient(
        up.base_url,
        api_key.get_secret_value() if api_key else None,
        timeouts=UpstreamTimeouts(
            connect_s=up.connect_timeout_s,
            first_byte_s=up.first_byte_timeout_s,
            idle_s=up.idle_timeout_s,
        ),
        http_client=http_client,
    )
    catalogue = ModelCatalogue(upstream.list_models, ttl_s=up.models_cache_ttl_s)
    attester = Attester(
        upstream.get_attestation,
        attestation_policy(settings),
        ttl_s=settings.attestation.cache_ttl_s,
    )
    keys = AttestedKeyCache(attester.attest)
    chat = ChatService(
        upstream,
        catalogue,
        keys,
        aliases=settings.models.aliases,
        non_e2ee=settings.privacy.non_e2ee,
        retry=RetryPolicy(
            max_retries=up.retries,
            max_delay_s=up.retry_max_delay_s,
            max_total_s=up.retry_max_total_s,
        ),
    )
    return Services(settings, upstream, catalogue, keys, chat, demo)


def proxy_error_response(exc: ProxyError) -> JSONResponse:
    """The JSON response for one of our errors."""
    headers: dict[str, str] = {}
    if isinstance(exc, UpstreamStatusError) and exc.retry_after:
        headers["retry-after"] = exc.retry_after
    return JSONResponse(exc.to_body(), status_code=exc.http_status, headers=headers)


def create_app(
    settings: Settings,
    *,
    api_key: SecretStr | None = None,
    http_client: httpx.AsyncClient | None = None,
    demo: bool = False,
) -> FastAPI:
    """The proxy as an ASGI app."""
    from proxy.routes import router

    services = build_services(settings, api_key=api_key, http_client=http_client, demo=demo)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await services.keys.aclose()
            await services.upstream.aclose()

    app = FastAPI(
        title="venice-e2ee-proxy",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.services = services
    app.include_router(router)

    @app.exception_handler(ProxyError)
    async def _proxy_error(_: Request, exc: ProxyError) -> JSONResponse:
        return proxy_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(
            error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", error_type=type(exc).__name__)
        return JSONResponse(
            error_body("internal proxy error", "server_error", code="internal_error"),
            status_code=500,
        )

    return app
