"""The FastAPI application: wiring and error translation. Handlers live in :mod:`proxy.http.routes`.

``create_app(settings, api_key=..., http_client=None)`` builds every shared object once (upstream
client, model catalogue, attested-key cache, chat service) and stores them on ``app.state``; the
lifespan closes them. Every error a client sees is an OpenAI envelope
``{"error": {"message", "type", "param", "code"}}``, including unknown routes and crashes (a
crash says nothing about its cause: its traceback could hold data).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from proxy.attestation import AttestationPolicy, MeasurementPins
from proxy.core.errors import AttestationError, ProxyError, UpstreamStatusError, error_body
from proxy.core.retry import RetryPolicy
from proxy.http.guard import (
    DrainController,
    DrainMiddleware,
    HostGuardMiddleware,
    InFlightLimitMiddleware,
    LocalAuthMiddleware,
)
from proxy.observability.audit import AuditLog
from proxy.observability.logs import get_logger
from proxy.observability.metrics import Metrics, RequestMetricsMiddleware, RetryReason
from proxy.service.catalog import ModelCatalogue
from proxy.service.chat import ChatService
from proxy.service.dcap_collateral import CollateralCache, file_fetcher, pccs_fetcher
from proxy.service.enclave_keys import AttestedKey, AttestedKeyCache, Attester, CollateralSource
from proxy.service.nras_client import NrasSource
from proxy.service.signatures import ReceiptVerifier
from proxy.settings import Settings
from proxy.venice.client import ServiceClient, UpstreamClient, UpstreamTimeouts

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
    attester: Attester
    chat: ChatService
    receipts: ReceiptVerifier
    verifiers: ServiceClient
    metrics: Metrics
    drain: DrainController
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
    metrics = Metrics()
    aliases = settings.models.aliases

    def allow_model_labels(models: Iterable[str]) -> None:
        metrics.set_models([*models, *aliases])

    catalogue = ModelCatalogue(
        upstream.list_models, ttl_s=up.models_cache_ttl_s, on_refresh=allow_model_labels
    )
    verifiers = ServiceClient(timeout_s=up.connect_timeout_s + 30.0)
    section = settings.attestation

    def count_failed_checks(codes: tuple[str, ...]) -> None:
        for code in codes:
            metrics.record_verification_failure(code)

    attester = Attester(
        upstream.get_attestation,
        attestation_policy(settings),
        ttl_s=section.cache_ttl_s,
        collateral=collateral_source(settings),
        nras=NrasSource(verifiers, url=section.nras_url, jwks_url=section.nras_jwks_url)
        if section.nvidia == "nras"
        else None,
        audit=AuditLog(settings.logging.audit_log) if settings.logging.audit_log else None,
        on_failed_checks=count_failed_checks,
    )

    def count_attestation(model: str, key: AttestedKey | None, error: ProxyError | None) -> None:
        if key is not None:
            metrics.record_attestation_fetch(model, "ok", verified_at=key.verified_at)
            log.info(
                "attestation_accepted",
                model=model,
                signing_address=key.signing_address,
                tcb_status=key.report.tcb_status,
            )
            return
        if isinstance(error, AttestationError):
            metrics.record_attestation_fetch(model, "verification_failed")
        else:
            metrics.record_attestation_fetch(model, "fetch_error")
        log.warning("attestation_failed", model=model, code=error.log_code if error else None)

    keys = AttestedKeyCache(attester.attest, on_result=count_attestation)

    def count_retry(reason: str) -> None:
        metrics.record_retry(_RETRY_LABELS.get(reason, "server_error"))

    chat = ChatService(
        upstream,
        catalogue,
        keys,
        aliases=settings.models.aliases,
        non_e2ee=settings.privacy.non_e2ee,
        passthrough_models=settings.privacy.passthrough_models,
        forward_fields=settings.privacy.forward_fields,
        read_to_end_after_stop=settings.signatures.mode == "strict",
        retry=RetryPolicy(
            max_retries=up.retries,
            max_delay_s=up.retry_max_delay_s,
            max_total_s=up.retry_max_total_s,
        ),
        on_retry=count_retry,
    )
    receipts = ReceiptVerifier(upstream.get_signature)
    return Services(
        settings,
        upstream,
        catalogue,
        keys,
        attester,
        chat,
        receipts,
        verifiers,
        metrics,
        DrainController(),
        demo,
    )


_RETRY_LABELS: dict[str, RetryReason] = {
    "connect": "connect",
    "status_429": "rate_limited",
    "stale_key": "key_rejected",
}


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
    from proxy.http.routes import router

    services = build_services(settings, api_key=api_key, http_client=http_client, demo=demo)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for model in settings.attestation.warm_up:
            services.spawn(_warm_up(services, model))
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
    _add_guards(app, settings, services)

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


async def _warm_up(services: Services, model: str) -> None:
    """Attest a configured model at start-up so its first request does not wait."""
    try:
        await services.keys.get(model)
    except ProxyError:
        return  # logged and counted by the cache's observer; /readyz reports it


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
            ],
        )
    app.add_middleware(DrainMiddleware, controller=services.drain)
    hosts = [*server.allowed_hosts]
    if server.host not in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
        hosts.append(server.host)
    app.add_middleware(HostGuardMiddleware, allowed_hosts=hosts)
    app.add_middleware(RequestMetricsMiddleware, metrics=services.metrics)
    services.metrics.bind_in_flight(lambda: services.drain.in_flight)
