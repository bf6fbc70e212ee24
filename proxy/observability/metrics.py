"""Prometheus metrics for ``GET /metrics``: counts, latencies and upstream state, never content.

One :class:`Metrics` per app, each with its own ``CollectorRegistry`` (tests build many apps;
the process-wide default registry would collide). Exposition: the Prometheus text format 0.0.4
by default, OpenMetrics when the scraper's ``Accept`` asks for it (:meth:`Metrics.render`).

Series (all prefixed ``venice_proxy_``):

=========================================================  =========  ===========================
name                                                       type       labels
=========================================================  =========  ===========================
``requests_total``                                         counter    route, status
``request_duration_seconds``                               histogram  route
``ttfb_seconds`` (first byte to the client)                histogram  model
``in_flight``                                              gauge
``upstream_retries_total``                                 counter    reason
``attestation_fetches_total``                              counter    model, outcome
``attestation_verification_failures_total``                counter    check
``attestation_age_seconds`` (computed at scrape time)      gauge      model
``decryption_failures_total``                              counter    kind (decrypt|plaintext)
``signature_verifications_total``                          counter    outcome
``upstream_ratelimit_remaining``                           gauge      kind (requests|tokens)
``upstream_balance``                                       gauge      currency (usd|diem|vcu)
``upstream_deprecation_warnings_total``                    counter
``chunks_relayed_total``                                   counter
=========================================================  =========  ===========================

Every label has a bounded set of values, and none can carry text a client chose: ``model`` only
takes ids from an allowlist the app sets from the upstream catalogue (:meth:`Metrics.set_models`),
anything else is ``other``; ``route`` only takes known route templates; ``status`` only numbers
100-599; ``check`` only the attestation module's stable ``CHECK_CODES``; outcome and kind labels
are closed enums.

Upstream headers (Venice's response headers, names from its API docs): ``x-ratelimit-remaining-
requests``, ``x-ratelimit-remaining-tokens``, ``x-venice-balance-usd``, ``x-venice-balance-diem``,
``x-venice-balance-vcu``, ``x-venice-model-deprecation-warning``, ``x-venice-model-deprecation-
date`` and ``CF-RAY`` (Venice's request id). :func:`parse_upstream_headers` is pure and returns
them typed for the request log line; the deprecation text and ``CF-RAY`` never become labels.

Deliberately not done: per-client or per-key series (unbounded, and identifying), the balance
before/after arithmetic (Venice reports the balance *before* the request), and any process
metrics beyond ``prometheus_client``'s process collector.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from proxy.attestation import CHECK_CODES
from proxy.attestation.signature import SignatureOutcome
from proxy.core.retry import RetryReason
from proxy.observability.worker import current_worker
from proxy.venice.headers import UpstreamHeaders, parse_upstream_headers

NAMESPACE = "venice_proxy"
OTHER = "other"
MAX_MODELS = 512

FetchOutcome = Literal["ok", "fetch_error", "verification_failed"]
DecryptionKind = Literal["decrypt", "plaintext"]

_RETRY_REASONS: frozenset[str] = frozenset(get_args(RetryReason))
_FETCH_OUTCOMES: frozenset[str] = frozenset(get_args(FetchOutcome))
_DECRYPTION_KINDS: frozenset[str] = frozenset(get_args(DecryptionKind))
_SIGNATURE_OUTCOMES: frozenset[str] = frozenset(get_args(SignatureOutcome))

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")

# LLM latencies span milliseconds (cached errors) to minutes (long generations, slow prefill).
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TTFB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120)


class _AttestationAge(Collector):
    """``attestation_age_seconds{model}``, computed from verification times when scraped."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.verified_at: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            f"{NAMESPACE}_attestation_age_seconds",
            "Seconds since the attestation in use for a model was verified.",
            labels=["model"],
        )
        now = self._clock()
        for model, verified_at in sorted(self.verified_at.items()):
            family.add_metric([model], max(now - verified_at, 0.0))
        yield family


class Metrics:
    """Every metric of one proxy app, in its own registry."""

    def __init__(
        self,
        *,
        models: Iterable[str] = (),
        routes: Iterable[str] = (),
        check_codes: Iterable[str] = CHECK_CODES,
        clock: Callable[[], float] = time.time,
        process_metrics: bool = True,
        worker: int | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._routes = frozenset(routes)
        self._check_codes = frozenset(check_codes)
        self._models: frozenset[str] = frozenset()
        self.set_models(models)
        registry = self.registry

        self.requests = Counter(
            "requests",
            "HTTP requests answered, by route template and status.",
            ["route", "status"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.request_duration = Histogram(
            "request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ["route"],
            namespace=NAMESPACE,
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.ttfb = Histogram(
            "ttfb_seconds",
            "Time from request start to the first response byte sent to the client.",
            ["model"],
            namespace=NAMESPACE,
            buckets=_TTFB_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "in_flight",
            "Chat requests in progress, streaming bodies included.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.upstream_retries = Counter(
            "upstream_retries",
            "Upstream attempts retried, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.attestation_fetches = Counter(
            "attestation_fetches",
            "Attestation fetches, by model and outcome.",
            ["model", "outcome"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.verification_failures = Counter(
            "attestation_verification_failures",
            "Failed attestation checks, by stable check code.",
            ["check"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.decryption_failures = Counter(
            "decryption_failures",
            "Responses ended because a field did not decrypt or arrived in plaintext.",
            ["kind"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.signature_verifications = Counter(
            "signature_verifications",
            "Response signature verifications, by outcome.",
            ["outcome"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.ratelimit_remaining = Gauge(
            "upstream_ratelimit_remaining",
            "Venice's remaining rate limit from its last response headers.",
            ["kind"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.balance = Gauge(
            "upstream_balance",
            "Venice account balance from its last response headers (before that request).",
            ["currency"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.deprecation_warnings = Counter(
            "upstream_deprecation_warnings",
            "Upstream responses that carried a model deprecation warning.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.chunks_relayed = Counter(
            "chunks_relayed",
            "Decrypted chunks relayed to clients.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._attestation_age = _AttestationAge(clock)
        registry.register(self._attestation_age)
        # Which process answered this scrape (server.workers > 1: each worker has its own
        # registry; the label says whose figures these are).
        self.worker = Gauge(
            "worker",
            "The worker process (server.workers) whose figures these are; 1 per process.",
            ["worker"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.worker.labels(worker=str(worker if worker is not None else current_worker())).set(1)
        if process_metrics:
            ProcessCollector(namespace=NAMESPACE, registry=registry)

    # -- label hygiene -------------------------------------------------------------------------

    def set_models(self, models: Iterable[str]) -> None:
        """Replace the model-label allowlist (the upstream catalogue's ids and the aliases)."""
        allowed: set[str] = set()
        for model in models:
            if len(allowed) >= MAX_MODELS:
                break
            if _MODEL_ID.fullmatch(model):
                allowed.add(model)
        self._models = frozenset(allowed)

    def model_label(self, model: str | None) -> str:
        """``model`` if it is an allowed id, else ``other``."""
        return model if model is not None and model in self._models else OTHER

    def set_routes(self, routes: Iterable[str]) -> None:
        """Replace the route-label allowlist (the app's route templates)."""
        self._routes = frozenset(routes)

    def route_label(self, route: str) -> str:
        """``route`` if it is a known route template, else ``other``."""
        return route if route in self._routes else OTHER

    @staticmethod
    def _enum(value: str, allowed: frozenset[str]) -> str:
        return value if value in allowed else OTHER

    # -- recording -----------------------------------------------------------------------------

    def observe_request(self, route: str, status: int, duration_s: float) -> None:
        """One answered request: its route template, HTTP status and total duration."""
        label = self.route_label(route)
        status_label = str(status) if 100 <= status <= 599 else OTHER
        self.requests.labels(route=label, status=status_label).inc()
        self.request_duration.labels(route=label).observe(max(duration_s, 0.0))

    def observe_ttfb(self, model: str | None, seconds: float) -> None:
        """Time to the first byte sent to the client."""
        self.ttfb.labels(model=self.model_label(model)).observe(max(seconds, 0.0))

    def bind_in_flight(self, source: Callable[[], float]) -> None:
        """Read the in-flight gauge from ``source`` at scrape time (e.g. the limiter's count)."""
        self.in_flight.set_function(source)

    def record_retry(self, reason: RetryReason) -> None:
        """One upstream attempt retried."""
        self.upstream_retries.labels(reason=self._enum(reason, _RETRY_REASONS)).inc()

    def record_attestation_fetch(
        self, model: str, outcome: FetchOutcome, *, verified_at: float | None = None
    ) -> None:
        """One attestation fetch; on success pass ``verified_at`` (unix time) to track its age."""
        label = self.model_label(model)
        self.attestation_fetches.labels(
            model=label, outcome=self._enum(outcome, _FETCH_OUTCOMES)
        ).inc()
        if outcome == "ok" and verified_at is not None and label != OTHER:
            self._attestation_age.verified_at[label] = verified_at

    def forget_attestation(self, model: str) -> None:
        """Stop reporting an age for ``model`` (its key was dropped)."""
        self._attestation_age.verified_at.pop(model, None)

    def record_verification_failure(self, check: str) -> None:
        """One failed attestation check, by its stable code."""
        self.verification_failures.labels(check=self._enum(check, self._check_codes)).inc()

    def record_decryption_failure(self, kind: DecryptionKind) -> None:
        """A response ended by an undecryptable field or unexpected plaintext."""
        self.decryption_failures.labels(kind=self._enum(kind, _DECRYPTION_KINDS)).inc()

    def record_signature(self, outcome: SignatureOutcome) -> None:
        """One response signature verification."""
        self.signature_verifications.labels(outcome=self._enum(outcome, _SIGNATURE_OUTCOMES)).inc()

    def record_chunks(self, count: int) -> None:
        """Chunks relayed to a client (call once per response with its total)."""
        if count > 0:
            self.chunks_relayed.inc(count)

    def record_upstream_headers(self, headers: Mapping[str, str]) -> UpstreamHeaders:
        """Update rate-limit, balance and deprecation metrics from one upstream response.

        Returns the parsed headers for the request log line.
        """
        parsed = parse_upstream_headers(headers)
        for kind, value in (
            ("requests", parsed.ratelimit_remaining_requests),
            ("tokens", parsed.ratelimit_remaining_tokens),
        ):
            if value is not None:
                self.ratelimit_remaining.labels(kind=kind).set(value)
        for currency, value in (
            ("usd", parsed.balance_usd),
            ("diem", parsed.balance_diem),
            ("vcu", parsed.balance_vcu),
        ):
            if value is not None:
                self.balance.labels(currency=currency).set(value)
        if parsed.deprecation_warning is not None:
            self.deprecation_warnings.inc()
        return parsed

    # -- exposition ----------------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type, chosen from the scraper's ``Accept``."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
