"""The FastAPI application: wiring and error translation. Handlers live in :mod:`proxy.routes`.

``create_app(settings, api_key=..., http_client=None)`` builds every shared object once (upstream
client, model catalogue, attested-key cache, chat service) and stores them on ``app.state``; the
lifespan closes them. Every error a client sees is an OpenAI envelope
``{"error": {"message", "type", "param", "code"}}``, including unknown routes and crashes (a
crash says nothing about its cause: its traceback could hold data).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.attestation import AttestationPolicy, MeasurementPins
from proxy.audit import AuditLog
from proxy.chat import ChatService
from proxy.collateral import CollateralCache, file_fetcher, pccs_fetcher
from proxy.errors import ProxyError, UpstreamStatusError, error_body
from proxy.gpu import NrasSource
from proxy.keys import AttestedKeyCache, Attester, CollateralSource
from proxy.logs import get_logger
from proxy.models import ModelCatalogue
from proxy.receipts import ReceiptVerifier
from proxy.retry import RetryPolicy
from proxy.settings import Settings
from proxy.upstream import ServiceClient, UpstreamClient, UpstreamTimeouts

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
    receipts: ReceiptVerifier
    verifiers: ServiceClient
    demo: bool
    background: set[asyncio.Task[object]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, object]) -> None:
        """Run ``work`` in the background, keeping a reference until it ends."""
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def aclose(self) -> None:
        """Stop background work and close every connection pool."""
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.keys.aclose()
        await self.upstream.aclose()
        await self.verifiers.aclose()


def attestation_policy(settings: Settings) -> AttestationPolicy:
    """The verification policy the settings ask for."""
    section = settings.attestation
    return AttestationPolicy(
        dcap=section.dcap,
        nvidia=section.nvidia,
        allowed_tcb_status=frozenset(section.allowed_tcb_status),
        software=section.software,
        allow_dev_image=section.allow_dev_image,
        pins={
            model: MeasurementPins(**{name: tuple(values) for name, values in pins})
            for model, pins in section.pins.items()
        },
    )


def collateral_source(settings: Settings) -> CollateralSource | None:
    """Where DCAP collateral comes from (None when DCAP is off)."""
    section = settings.attestation
    if section.dcap == "off":
        return None
    fetch = (
        file_fetcher(section.collateral_file)
        if section.collateral_file is not None
        else pccs_fetcher(section.pccs_url)
    )
    return CollateralCache(fetch).get


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
    verifiers = ServiceClient(timeout_s=up.connect_timeout_s + 30.0)
    section = settings.attestation
    attester = Attester(
        upstream.get_attestation,
        attestation_policy(settings),
        ttl_s=section.cache_ttl_s,
        collateral=collateral_source(settings),
        nras=NrasSource(verifiers, url=section.nras_url, jwks_url=section.nras_jwks_url)
        if section.nvidia == "nras"
        else None,
        audit=AuditLog(settings.logging.audit_log) if settings.logging.audit_log else None,
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
    receipts = ReceiptVerifier(upstream.get_signature)
    return Services(settings, upstream, catalogue, keys, chat, receipts, verifiers, demo)


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
