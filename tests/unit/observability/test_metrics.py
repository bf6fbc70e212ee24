"""Prometheus metrics: values move, exposition parses, labels stay bounded."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.attestation import CHECK_CODES
from proxy.observability.metrics import OTHER, Metrics
from proxy.venice.headers import UpstreamHeaders, parse_upstream_headers

CANARY = "CANARY-7f3a9c-secret-prompt"
MODEL = "e2ee-glm-5-1"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text, keyed by (name, sorted labels); parsing must succeed."""
    body, _ = metrics.render()
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_render_is_prometheus_text_by_default_and_openmetrics_on_request() -> None:
    metrics = Metrics(process_metrics=False)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"# TYPE venice_proxy_requests_total counter" in body
    assert b"# TYPE venice_proxy_ttfb_seconds histogram" in body
    om_body, om_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert om_type.startswith("application/openmetrics-text")
    assert om_body.rstrip().endswith(b"# EOF")


def test_requests_and_durations_move() -> None:
    metrics = Metrics(routes=["/v1/chat/completions", "/healthz"], process_metrics=False)
    metrics.observe_request("/v1/chat/completions", 200, 0.3)
    metrics.observe_request("/v1/chat/completions", 200, 2.0)
    metrics.observe_request("/v1/chat/completions", 503, 0.001)
    metrics.observe_request("/no/such/route", 404, 0.01)
    route = "/v1/chat/completions"
    assert value(metrics, "venice_proxy_requests_total", route=route, status="200") == 2
    assert value(metrics, "venice_proxy_requests_total", route=route, status="503") == 1
    assert value(metrics, "venice_proxy_requests_total", route=OTHER, status="404") == 1
    duration = "venice_proxy_request_duration_seconds"
    assert value(metrics, f"{duration}_count", route=route) == 3
    assert value(metrics, f"{duration}_sum", route=route) == pytest.approx(2.301)
    assert value(metrics, f"{duration}_bucket", route=route, le="0.5") == 2


def test_status_label_is_bounded() -> None:
    metrics = Metrics(routes=["/healthz"], process_metrics=False)
    metrics.observe_request("/healthz", 999, 0.0)
    metrics.observe_request("/healthz", -1, 0.0)
    assert value(metrics, "venice_proxy_requests_total", route="/healthz", status=OTHER) == 2


def test_ttfb_uses_the_model_allowlist() -> None:
    metrics = Metrics(models=[MODEL], process_metrics=False)
    metrics.observe_ttfb(MODEL, 0.7)
    metrics.observe_ttfb("e2ee-unknown", 0.2)
    metrics.observe_ttfb(None, 0.2)
    assert value(metrics, "venice_proxy_ttfb_seconds_count", model=MODEL) == 1
    assert value(metrics, "venice_proxy_ttfb_seconds_count", model=OTHER) == 2
    metrics.set_models(["e2ee-unknown"])
    metrics.observe_ttfb("e2ee-unknown", 0.2)
    assert value(metrics, "venice_proxy_ttfb_seconds_count", model="e2ee-unknown") == 1


def test_model_allowlist_rejects_odd_ids_and_is_capped() -> None:
    metrics = Metrics(models=['bad"id', "has space", "", "x" * 200, MODEL], process_metrics=False)
    assert metrics.model_label(MODEL) == MODEL
    assert metrics.model_label('bad"id') == OTHER
    assert metrics.model_label("has space") == OTHER
    many = Metrics(models=[f"m-{i}" for i in range(10_000)], process_metrics=False)
    allowed = sum(many.model_label(f"m-{i}") != OTHER for i in range(10_000))
    assert allowed == 512


def test_in_flight_gauge_reads_its_source() -> None:
    metrics = Metrics(process_metrics=False)
    current = [3]
    metrics.bind_in_flight(lambda: current[0])
    assert value(metrics, "venice_proxy_in_flight") == 3
    current[0] = 0
    assert value(metrics, "venice_proxy_in_flight") == 0


def test_counters_move() -> None:
    metrics = Metrics(models=[MODEL], process_metrics=False)
    metrics.record_retry("connect")
    metrics.record_retry("rate_limited")
    metrics.record_retry("rate_limited")
    metrics.record_verification_failure("report_data_nonce")
    metrics.record_verification_failure("made_up_code")
    metrics.record_decryption_failure("decrypt")
    metrics.record_decryption_failure("plaintext")
    metrics.record_signature("ok")
    metrics.record_signature("mismatch")
    metrics.record_chunks(41)
    metrics.record_chunks(1)
    metrics.record_chunks(0)
    assert value(metrics, "venice_proxy_upstream_retries_total", reason="connect") == 1
    assert value(metrics, "venice_proxy_upstream_retries_total", reason="rate_limited") == 2
    name = "venice_proxy_attestation_verification_failures_total"
    assert value(metrics, name, check="report_data_nonce") == 1
    assert value(metrics, name, check=OTHER) == 1
    assert value(metrics, "venice_proxy_decryption_failures_total", kind="decrypt") == 1
    assert value(metrics, "venice_proxy_decryption_failures_total", kind="plaintext") == 1
    assert value(metrics, "venice_proxy_signature_verifications_total", outcome="ok") == 1
    assert value(metrics, "venice_proxy_signature_verifications_total", outcome="mismatch") == 1
    assert value(metrics, "venice_proxy_chunks_relayed_total") == 42


def test_attestation_fetches_and_age() -> None:
    clock = Clock(1_000.0)
    metrics = Metrics(models=[MODEL], clock=clock, process_metrics=False)
    metrics.record_attestation_fetch(MODEL, "ok", verified_at=900.0)
    metrics.record_attestation_fetch(MODEL, "verification_failed")
    metrics.record_attestation_fetch("e2ee-not-listed", "ok", verified_at=900.0)
    fetches = "venice_proxy_attestation_fetches_total"
    assert value(metrics, fetches, model=MODEL, outcome="ok") == 1
    assert value(metrics, fetches, model=MODEL, outcome="verification_failed") == 1
    assert value(metrics, fetches, model=OTHER, outcome="ok") == 1
    age = "venice_proxy_attestation_age_seconds"
    assert value(metrics, age, model=MODEL) == 100.0
    assert value(metrics, age, model=OTHER) is None
    clock.now = 1_250.0
    assert value(metrics, age, model=MODEL) == 350.0
    metrics.forget_attestation(MODEL)
    assert value(metrics, age, model=MODEL) is None


def test_upstream_headers_set_gauges_and_count_deprecations() -> None:
    metrics = Metrics(process_metrics=False)
    parsed = metrics.record_upstream_headers(
        {
            "X-RateLimit-Remaining-Requests": "19",
            "x-ratelimit-remaining-tokens": "99000",
            "x-venice-balance-usd": "12.5",
            "x-venice-balance-diem": "3",
            "x-venice-model-deprecation-warning": "this model goes away soon",
            "x-venice-model-deprecation-date": "2026-12-01",
            "CF-RAY": "8f1e2d3c4b5a6978-AMS",
        }
    )
    assert parsed == UpstreamHeaders(
        ratelimit_remaining_requests=19.0,
        ratelimit_remaining_tokens=99000.0,
        balance_usd=12.5,
        balance_diem=3.0,
        deprecation_warning="this model goes away soon",
        deprecation_date="2026-12-01",
        cf_ray="8f1e2d3c4b5a6978-AMS",
    )
    ratelimit = "venice_proxy_upstream_ratelimit_remaining"
    assert value(metrics, ratelimit, kind="requests") == 19
    assert value(metrics, ratelimit, kind="tokens") == 99000
    assert value(metrics, "venice_proxy_upstream_balance", currency="usd") == 12.5
    assert value(metrics, "venice_proxy_upstream_balance", currency="diem") == 3
    assert value(metrics, "venice_proxy_upstream_deprecation_warnings_total") == 1
    body, _ = metrics.render()
    assert b"goes away soon" not in body
    assert b"8f1e2d3c4b5a6978" not in body

    # A later response without those headers leaves the gauges at their last known values.
    metrics.record_upstream_headers({"x-ratelimit-remaining-requests": "18"})
    assert value(metrics, ratelimit, kind="requests") == 18
    assert value(metrics, ratelimit, kind="tokens") == 99000
    assert value(metrics, "venice_proxy_upstream_deprecation_warnings_total") == 1


def test_parse_upstream_headers_ignores_garbage() -> None:
    parsed = parse_upstream_headers(
        {
            "x-ratelimit-remaining-requests": "lots",
            "x-ratelimit-remaining-tokens": "nan",
            "x-venice-balance-usd": "inf",
            "x-venice-model-deprecation-warning": "   ",
        }
    )
    assert parsed == UpstreamHeaders()


def test_registries_are_per_instance() -> None:
    first = Metrics(process_metrics=False)
    second = Metrics(process_metrics=False)
    first.record_chunks(5)
    assert value(first, "venice_proxy_chunks_relayed_total") == 5
    assert value(second, "venice_proxy_chunks_relayed_total") == 0


def test_process_metrics_are_optional() -> None:
    assert b"venice_proxy_process_" not in Metrics(process_metrics=False).render()[0]


def test_canary_never_reaches_the_exposition() -> None:
    metrics = Metrics(models=[MODEL], process_metrics=False)
    metrics.observe_request(f"/v1/{CANARY}", 200, 0.1)
    metrics.observe_ttfb(CANARY, 0.1)
    metrics.record_attestation_fetch(CANARY, "ok", verified_at=1.0)
    metrics.record_verification_failure(CANARY)
    metrics.record_verification_failure(CANARY.lower().replace("-", "_"))
    metrics.record_retry(CANARY)  # type: ignore[arg-type]
    metrics.record_decryption_failure(CANARY)  # type: ignore[arg-type]
    metrics.record_signature(CANARY)  # type: ignore[arg-type]
    metrics.record_attestation_fetch(MODEL, CANARY)  # type: ignore[arg-type]
    metrics.record_upstream_headers(
        {"x-venice-model-deprecation-warning": CANARY, "cf-ray": CANARY}
    )
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        body, _ = metrics.render(accept)
        text = body.decode("utf-8").lower()
        assert CANARY.lower() not in text
        assert "canary" not in text
    # The canary calls were still counted, under bounded labels.
    assert value(metrics, "venice_proxy_ttfb_seconds_count", model=OTHER) == 1
    assert value(metrics, "venice_proxy_upstream_retries_total", reason=OTHER) == 1


def test_every_attestation_check_code_is_a_label() -> None:
    metrics = Metrics(process_metrics=False)
    for code in CHECK_CODES:
        metrics.record_verification_failure(code)
    name = "venice_proxy_attestation_verification_failures_total"
    assert all(value(metrics, name, check=code) == 1 for code in CHECK_CODES)
    assert value(metrics, name, check=OTHER) is None


def test_route_labels_are_the_apps_own_routes() -> None:
    from fastapi.routing import APIRoute
    from pydantic import SecretStr

    from proxy.http.app import create_app
    from proxy.http.routes import router
    from proxy.settings import load_settings

    app = create_app(load_settings(environ={}), api_key=SecretStr("k"))
    metrics: Metrics = app.state.services.metrics
    paths = {route.path for route in router.routes if isinstance(route, APIRoute)}
    assert {"/v1/chat/completions", "/v1/models", "/healthz", "/metrics"} <= paths
    for path in paths:
        assert metrics.route_label(path) == path
    assert metrics.route_label("/v1/embeddings") == OTHER


# -- the series, as a scraper reads them ---------------------------------------------------------

# name (counters without _total): (type, help, label names).
SERIES = {
    "venice_proxy_requests": (
        "counter",
        "HTTP requests answered, by route template and status.",
        {"route", "status"},
    ),
    "venice_proxy_request_duration_seconds": (
        "histogram",
        "Time from request start to the end of the response, by route template.",
        {"route"},
    ),
    "venice_proxy_ttfb_seconds": (
        "histogram",
        "Time from request start to the first response byte sent to the client.",
        {"model"},
    ),
    "venice_proxy_in_flight": (
        "gauge",
        "Chat requests in progress, streaming bodies included.",
        set(),
    ),
    "venice_proxy_upstream_retries": (
        "counter",
        "Upstream attempts retried, by reason.",
        {"reason"},
    ),
    "venice_proxy_attestation_fetches": (
        "counter",
        "Attestation fetches, by model and outcome.",
        {"model", "outcome"},
    ),
    "venice_proxy_attestation_verification_failures": (
        "counter",
        "Failed attestation checks, by stable check code.",
        {"check"},
    ),
    "venice_proxy_decryption_failures": (
        "counter",
        "Responses ended because a field did not decrypt or arrived in plaintext.",
        {"kind"},
    ),
    "venice_proxy_signature_verifications": (
        "counter",
        "Response signature verifications, by outcome.",
        {"outcome"},
    ),
    "venice_proxy_upstream_ratelimit_remaining": (
        "gauge",
        "Venice's remaining rate limit from its last response headers.",
        {"kind"},
    ),
    "venice_proxy_upstream_balance": (
        "gauge",
        "Venice account balance from its last response headers (before that request).",
        {"currency"},
    ),
    "venice_proxy_upstream_deprecation_warnings": (
        "counter",
        "Upstream responses that carried a model deprecation warning.",
        set(),
    ),
    "venice_proxy_chunks_relayed": (
        "counter",
        "Decrypted chunks relayed to clients.",
        set(),
    ),
    "venice_proxy_attestation_age_seconds": (
        "gauge",
        "Seconds since the attestation in use for a model was verified.",
        {"model"},
    ),
    "venice_proxy_worker": (
        "gauge",
        "The worker process (server.workers) whose figures these are; 1 per process.",
        {"worker"},
    ),
}


def _every_series_once(metrics: Metrics) -> None:
    metrics.observe_request("/healthz", 200, 0.1)
    metrics.observe_ttfb(MODEL, 0.1)
    metrics.record_retry("connect")
    metrics.record_attestation_fetch(MODEL, "ok", verified_at=1.0)
    metrics.record_verification_failure("dcap")
    metrics.record_decryption_failure("decrypt")
    metrics.record_signature("ok")
    metrics.record_upstream_headers(
        {
            "x-ratelimit-remaining-requests": "1",
            "x-venice-balance-usd": "1",
            "x-venice-model-deprecation-warning": "soon",
        }
    )
    metrics.record_chunks(1)


def test_every_series_has_its_name_type_help_and_label_names() -> None:
    metrics = Metrics(models=[MODEL], routes=["/healthz"], process_metrics=False)
    _every_series_once(metrics)
    found = {}
    for family in metrics.registry.collect():
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        found[family.name] = (family.type, family.documentation, labels)
    assert found == SERIES


def test_the_help_lines_reach_the_exposition() -> None:
    body, _ = Metrics(process_metrics=False).render()
    text = body.decode("utf-8")
    for name, (kind, help_text, _labels) in SERIES.items():
        exposed = f"{name}_total" if kind == "counter" else name
        assert f"# HELP {exposed} {help_text}\n" in text, name
        assert f"# TYPE {exposed} {kind}\n" in text, name


def test_the_histogram_buckets() -> None:
    metrics = Metrics(models=[MODEL], routes=["/healthz"], process_metrics=False)
    metrics.observe_request("/healthz", 200, 0.1)
    metrics.observe_ttfb(MODEL, 0.1)

    def bounds(name: str) -> list[str]:
        return [
            sample.labels["le"]
            for family in metrics.registry.collect()
            for sample in family.samples
            if sample.name == f"{name}_bucket"
        ]

    assert bounds("venice_proxy_request_duration_seconds") == [
        "0.01", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0",
        "120.0", "300.0", "600.0", "+Inf",
    ]  # fmt: skip
    assert bounds("venice_proxy_ttfb_seconds") == [
        "0.05", "0.1", "0.25", "0.5", "1.0", "2.0", "3.0", "5.0", "10.0", "20.0", "30.0",
        "60.0", "120.0", "+Inf",
    ]  # fmt: skip


def test_process_metrics_are_on_by_default_in_the_app_s_own_registry() -> None:
    metrics = Metrics()
    names = {family.name for family in metrics.registry.collect()}
    assert "venice_proxy_process_cpu_seconds" in names
    assert "venice_proxy_process_resident_memory_bytes" in names
    assert all(name.startswith("venice_proxy_") for name in names)
    # A second app in the same process has its own (no duplicate registration).
    assert "venice_proxy_process_cpu_seconds" in {f.name for f in Metrics().registry.collect()}


def test_the_worker_series_names_the_given_worker_or_this_process() -> None:
    assert (
        Metrics(worker=4, process_metrics=False).registry.get_sample_value(
            "venice_proxy_worker", {"worker": "4"}
        )
        == 1.0
    )
    single = Metrics(process_metrics=False)
    assert single.registry.get_sample_value("venice_proxy_worker", {"worker": "0"}) == 1.0
    samples = [
        sample
        for family in single.registry.collect()
        if family.name == "venice_proxy_worker"
        for sample in family.samples
    ]
    assert [(sample.labels, sample.value) for sample in samples] == [({"worker": "0"}, 1.0)]


@pytest.mark.parametrize(
    ("status", "label"),
    [(100, "100"), (101, "101"), (200, "200"), (598, "598"), (599, "599"), (99, OTHER),
     (600, OTHER), (0, OTHER)],
)  # fmt: skip
def test_status_labels_are_100_to_599(status: int, label: str) -> None:
    metrics = Metrics(routes=["/healthz"], process_metrics=False)
    metrics.observe_request("/healthz", status, 0.0)
    assert value(metrics, "venice_proxy_requests_total", route="/healthz", status=label) == 1


def test_negative_durations_count_as_zero() -> None:
    metrics = Metrics(models=[MODEL], routes=["/healthz"], process_metrics=False)
    metrics.observe_request("/healthz", 200, -3.0)
    metrics.observe_ttfb(MODEL, -3.0)
    metrics.observe_ttfb(MODEL, 0.5)
    assert value(metrics, "venice_proxy_request_duration_seconds_sum", route="/healthz") == 0.0
    assert value(metrics, "venice_proxy_ttfb_seconds_sum", model=MODEL) == 0.5
    assert value(metrics, "venice_proxy_ttfb_seconds_bucket", model=MODEL, le="0.05") == 1


def test_an_age_is_never_negative_and_starts_at_zero() -> None:
    clock = Clock(1_000.0)
    metrics = Metrics(models=[MODEL, "e2ee-other"], clock=clock, process_metrics=False)
    metrics.record_attestation_fetch(MODEL, "ok", verified_at=1_000.0)
    metrics.record_attestation_fetch("e2ee-other", "ok", verified_at=1_500.0)  # clock skew
    age = "venice_proxy_attestation_age_seconds"
    assert value(metrics, age, model=MODEL) == 0.0
    assert value(metrics, age, model="e2ee-other") == 0.0
    clock.now = 1_000.5
    assert value(metrics, age, model=MODEL) == 0.5


def test_only_an_ok_fetch_with_a_time_starts_an_age() -> None:
    metrics = Metrics(models=[MODEL], clock=Clock(10.0), process_metrics=False)
    metrics.record_attestation_fetch(MODEL, "ok")
    metrics.record_attestation_fetch(MODEL, "fetch_error", verified_at=5.0)
    assert value(metrics, "venice_proxy_attestation_age_seconds", model=MODEL) is None
    fetches = "venice_proxy_attestation_fetches_total"
    assert value(metrics, fetches, model=MODEL, outcome="ok") == 1
    assert value(metrics, fetches, model=MODEL, outcome="fetch_error") == 1


def test_forgetting_a_model_never_tracked_is_harmless() -> None:
    metrics = Metrics(models=[MODEL], process_metrics=False)
    metrics.forget_attestation("e2ee-never-attested")
    metrics.forget_attestation(CANARY)
    assert value(metrics, "venice_proxy_attestation_age_seconds", model=MODEL) is None


def test_every_balance_currency_is_a_label() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.record_upstream_headers(
        {"x-venice-balance-usd": "1.5", "x-venice-balance-diem": "2", "x-venice-balance-vcu": "7"}
    )
    balance = "venice_proxy_upstream_balance"
    assert value(metrics, balance, currency="usd") == 1.5
    assert value(metrics, balance, currency="diem") == 2
    assert value(metrics, balance, currency="vcu") == 7
    assert value(metrics, "venice_proxy_upstream_deprecation_warnings_total") == 0


def test_every_retry_reason_is_a_label() -> None:
    reasons = [
        "connect",
        "timeout",
        "rate_limited",
        "server_error",
        "stream_broken",
        "key_rejected",
        "tool_repair",
    ]
    metrics = Metrics(process_metrics=False)
    for reason in reasons:
        metrics.record_retry(reason)  # type: ignore[arg-type]
    for reason in reasons:
        assert value(metrics, "venice_proxy_upstream_retries_total", reason=reason) == 1


def test_every_closed_label_set_maps_the_unknown_to_other() -> None:
    assert OTHER == "other"  # what dashboards match on
    metrics = Metrics(models=[MODEL], process_metrics=False)
    for outcome in ("ok", "fetch_error", "verification_failed", "OK", "failed"):
        metrics.record_attestation_fetch(MODEL, outcome)  # type: ignore[arg-type]
    for kind in ("decrypt", "plaintext", "Decrypt", ""):
        metrics.record_decryption_failure(kind)  # type: ignore[arg-type]
    fetches = "venice_proxy_attestation_fetches_total"
    for outcome in ("ok", "fetch_error", "verification_failed"):
        assert value(metrics, fetches, model=MODEL, outcome=outcome) == 1
    assert value(metrics, fetches, model=MODEL, outcome=OTHER) == 2
    kinds = "venice_proxy_decryption_failures_total"
    assert value(metrics, kinds, kind="decrypt") == 1
    assert value(metrics, kinds, kind="plaintext") == 1
    assert value(metrics, kinds, kind=OTHER) == 2


def test_check_codes_can_be_narrowed() -> None:
    metrics = Metrics(check_codes=["dcap"], process_metrics=False)
    metrics.record_verification_failure("dcap")
    metrics.record_verification_failure("gpu_nras")
    name = "venice_proxy_attestation_verification_failures_total"
    assert value(metrics, name, check="dcap") == 1
    assert value(metrics, name, check=OTHER) == 1


def test_model_ids_are_letters_digits_and_a_few_marks_up_to_128() -> None:
    ok = ["a", "A" + "b" * 127, "org/model-1.5:free_v2", "9b"]
    bad = ["A" + "b" * 128, "-leading-dash", ".hidden", "a b", "a\nb", "a{b}", "é"]
    metrics = Metrics(models=[*ok, *bad], process_metrics=False)
    assert [metrics.model_label(model) for model in ok] == ok
    assert {metrics.model_label(model) for model in bad} == {OTHER}


def test_routes_can_be_replaced() -> None:
    metrics = Metrics(routes=["/healthz"], process_metrics=False)
    metrics.set_routes(["/v1/models"])
    assert metrics.route_label("/v1/models") == "/v1/models"
    assert metrics.route_label("/healthz") == OTHER
