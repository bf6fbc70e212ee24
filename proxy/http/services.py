"""Every shared object the handlers use, built once from the settings.

:func:`build_services` constructs the upstream client, model catalogue, attester and key cache,
chat service, signature policy, metrics and drain controller; :class:`Services` holds them for
the lifetime of one app and closes them in :meth:`Services.aclose`. Nothing here speaks HTTP to
clients: :mod:`proxy.http.app` puts a :class:`Services` on ``app.state`` and the handlers in
:mod:`proxy.http.routes` read it from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from proxy.attestation import AttestationPolicy, MeasurementPins
from proxy.core.errors import AttestationError, ProxyError
from proxy.core.retry import RetryPolicy, RetryReason
from proxy.core.tools import ToolsConfig
from proxy.http.guard import DrainController
from proxy.observability.audit import AuditLog
from proxy.observability.logs import clip, get_logger
from proxy.observability.metrics import Metrics
from proxy.service.catalog import ModelCatalogue
from proxy.service.chat import ChatService
from proxy.service.dcap_collateral import CollateralCache, file_fetcher, pccs_fetcher
from proxy.service.enclave_keys import AttestedKey, AttestedKeyCache, Attester, CollateralSource
from proxy.service.nras_client import NrasSource
from proxy.service.signatures import SignaturePolicy, SignatureVerifier
from proxy.service.trust_state import TrustState
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
    signatures: SignaturePolicy
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
        gateway_models=section.gateway_models,
        trust_levels=dict(section.trust_levels),
        allow_unpinned_images=section.allow_unpinned_images,
        extra_mrseam=frozenset(section.extra_mrseam),
        extra_mrtd=frozenset(section.extra_mrtd),
        gateway_kms_roots=frozenset(section.gateway_kms_roots),
        gateway_app_ids=frozenset(section.gateway_app_ids),
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
        max_json_bytes=up.max_json_bytes,
    )
    metrics = Metrics()
    aliases = settings.models.aliases

    def allow_model_labels(models: Iterable[str]) -> None:
        metrics.set_models([*models, *aliases])

    catalogue = ModelCatalogue(
        upstream.list_models, ttl_s=up.models_cache_ttl_s, on_refresh=allow_model_labels
    )
    verifiers = ServiceClient(
        timeout_s=up.connect_timeout_s + 30.0, max_json_bytes=up.max_json_bytes
    )
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
        trust_state=TrustState(section.state_dir),
    )

    def count_attestation(model: str, key: AttestedKey | None, error: ProxyError | None) -> None:
        if key is not None:
            metrics.record_attestation_fetch(model, "ok", verified_at=key.verified_at)
            log.info(
                "attestation_accepted",
                model=model,
                signing_address=key.signing_address,
                tcb_status=key.report.tcb_status,
                trust_level=key.report.trust_level,
            )
            return
        if isinstance(error, AttestationError):
            metrics.record_attestation_fetch(model, "verification_failed")
        else:
            metrics.record_attestation_fetch(model, "fetch_error")
        log.warning("attestation_failed", model=clip(model), code=error.log_code if error else None)

    keys = AttestedKeyCache(
        attester.attest,
        on_result=count_attestation,
        max_fetches_per_minute=section.max_fetches_per_minute,
        failure_cache_size=section.failure_cache_size,
    )

    def count_retry(reason: RetryReason) -> None:
        metrics.record_retry(reason)

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
        max_read_ahead_bytes=up.max_read_ahead_bytes,
        max_event_bytes=up.max_event_bytes,
        max_answer_chars=up.max_answer_chars,
        tools=ToolsConfig.from_settings(settings.tools),
    )
    signatures = SignaturePolicy(
        SignatureVerifier(upstream.get_signature), settings.signatures.mode, metrics
    )
    return Services(
        settings,
        upstream,
        catalogue,
        keys,
        attester,
        chat,
        signatures,
        verifiers,
        metrics,
        DrainController(),
        demo,
    )


def model_trust(services: Services) -> dict[str, str | None]:
    """Each model's trust level: from its current key, else as remembered (may be stale)."""
    levels: dict[str, str | None] = {}
    state = services.attester.trust_state
    if state is not None:
        # An unreadable state file fails attestations; listing the models still works.
        with contextlib.suppress(ProxyError):
            levels.update({model: entry.get("level") for model, entry in state.models().items()})
    for model in services.keys.models():
        key = services.keys.peek(model)
        if key is not None:
            levels[model] = key.report.trust_level
    return levels


WARM_RETRY_MIN_S = 5.0
WARM_RETRY_MAX_S = 300.0


async def keep_warm(
    services: Services,
    model: str,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Keep an ``attestation.warm_up`` model attested for as long as the app runs.

    Attests at start-up, then wakes when the key enters its refresh window (so the cache
    re-attests in the background before expiry, even when no request uses the model), and after
    a failure retries with exponential backoff from 5 s to 5 min. Without this, an idle replica's
    warm-up key would expire and ``/readyz`` would take the replica out of service for good.
    Runs until cancelled (the app's lifespan cancels it at shutdown); an unforeseen error (not a
    :class:`ProxyError`) is logged as ``warm_up_error`` and retried like a failure.
    """
    backoff = WARM_RETRY_MIN_S
    while True:
        try:
            key = await services.keys.get(model)
        except Exception as exc:
            # A ProxyError is logged and counted by the cache's observer, and /readyz reports
            # it. Anything else is a bug below, and the loop must outlive it too (ended, the key
            # would expire and /readyz turn 503 with nothing left to attest again): its type
            # only, as the message of an unforeseen error may hold anything.
            if not isinstance(exc, ProxyError):
                log.error("warm_up_error", model=model, error_type=type(exc).__name__)
            await sleep(backoff)
            backoff = min(backoff * 2, WARM_RETRY_MAX_S)
            continue
        backoff = WARM_RETRY_MIN_S
        # Before the refresh window: sleep until it opens. Inside it (a refresh is running in
        # the background): look again shortly for the new key.
        await sleep(max(1.0, key.refresh_at - clock()))
