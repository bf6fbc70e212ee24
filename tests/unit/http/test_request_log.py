"""The one log line of each chat request: its exact fields, status, our error code, timings and
cost, the metrics it feeds, and never any content or key (no server: a real Starlette request,
a stand-in for the services that only carries real metrics, a fixed clock)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
from starlette.requests import Request

import proxy.http.request_log as request_log
from proxy.core.errors import AttestationError, DecryptionError, UpstreamStatusError
from proxy.http.body import REQUEST_ID_SCOPE_KEY
from proxy.http.request_log import RequestRecord
from proxy.http.services import Services
from proxy.observability.logs import MAX_LOGGED_NAME
from proxy.observability.metrics import Metrics
from proxy.service.chat import OpenedAnswer
from proxy.service.enclave_keys import AttestedKey
from proxy.service.relay import StreamStats

CANARY = "CANARY-5d1e-secret-prompt"
API_KEY = "sk-CANARY-venice-key"
MODEL = "e2ee-model-1"
T0 = 1000.0  # the monotonic clock when the request starts
WALL = 1_800_000_000.0

LINE_FIELDS = (
    "request_id",
    "client_request_id",
    "model",
    "stream",
    "e2ee",
    "status",
    "upstream_status",
    "attempts",
    "chunks",
    "completed",
    "stopped",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "signing_address",
    "trust_level",
    "attestation_age_s",
    "venice_request_id",
    "ratelimit_remaining_requests",
    "error",
    "ttfb_ms",
    "duration_ms",
)
META = {"component", "event", "level", "timestamp"}


class Clock:
    """``perf_counter`` and ``time`` for the module under test."""

    def __init__(self) -> None:
        self.now = T0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return WALL


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(request_log, "time", fake)
    return fake


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(models=[MODEL], process_metrics=False)


@pytest.fixture
def services(metrics: Metrics) -> Services:
    # RequestRecord reads only the metrics of the services.
    return cast(Services, SimpleNamespace(metrics=metrics))


def make_request(
    headers: dict[str, str] | None = None, chosen: str | None = "req_chosen"
) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [
            (name.lower().encode(), value.encode())
            for name, value in {"authorization": f"Bearer {API_KEY}", **(headers or {})}.items()
        ],
    }
    if chosen is not None:
        scope[REQUEST_ID_SCOPE_KEY] = chosen
    return Request(scope)


async def _nothing() -> AsyncIterator[list[dict[str, Any]]]:
    return
    yield  # pragma: no cover


def make_key(age_s: float = 12.3456, trust_level: str = "enclave") -> AttestedKey:
    return AttestedKey(
        model=MODEL,
        public_key=b"\x04" + b"\x01" * 64,
        signing_address="0x" + "ab" * 20,
        report=cast(Any, SimpleNamespace(trust_level=trust_level)),
        verified_at=WALL - age_s,
        refresh_at=WALL + 60,
        expires_at=WALL + 120,
    )


def make_outcome(
    stats: StreamStats,
    *,
    client_stream: bool = True,
    model: str = MODEL,
    upstream_headers: dict[str, str] | None = None,
    status_code: int = 200,
    key: AttestedKey | None = None,
    attempts: int = 1,
    e2ee: bool = True,
) -> OpenedAnswer:
    content = {"choices": [{"delta": {"content": CANARY}}]}
    return OpenedAnswer(
        model=model,
        e2ee=e2ee,
        client_stream=client_stream,
        include_usage=True,
        first=[content],
        rest=_nothing(),
        upstream=cast(
            Any,
            SimpleNamespace(
                headers={"x-echo": CANARY, **(upstream_headers or {})}, status_code=status_code
            ),
        ),
        stats=stats,
        key=key,
        attempts=attempts,
        headers={"x-venice-proxy-e2ee": "true"},
    )


@pytest.fixture
def lines(log_lines: Callable[[], list[str]]) -> Callable[[str], list[dict[str, Any]]]:
    """The log lines of one event since the test started, each checked for content and keys."""

    def of(event: str) -> list[dict[str, Any]]:
        for raw in log_lines():
            assert CANARY not in raw
            assert API_KEY not in raw
        found = [json.loads(raw) for raw in log_lines()]
        return [line for line in found if line.get("event") == event]

    return of


def request_line(lines: Callable[[str], list[dict[str, Any]]]) -> dict[str, Any]:
    (line,) = lines("chat_request")
    assert set(line) == META | set(LINE_FIELDS)
    assert line["component"] == "proxy.request"
    assert line["level"] == "info"
    return {name: line[name] for name in LINE_FIELDS}


def test_a_complete_stream_logs_every_field(
    clock: Clock,
    services: Services,
    metrics: Metrics,
    lines: Callable[[str], list[dict[str, Any]]],
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.stream = True
    stats = StreamStats(
        chunks=9,
        usage={"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33},
        cost={"usd": 0.0042},
        completed=True,
        stopped=True,
        sent=7,
        delivered=True,
    )
    record.attach(
        make_outcome(
            stats,
            upstream_headers={"CF-Ray": "8f00aa-AMS", "x-ratelimit-remaining-requests": "41"},
            key=make_key(),
            attempts=2,
        )
    )
    clock.now = T0 + 0.0123456
    record.first_byte()
    clock.now = T0 + 1.2345678
    record.first_byte()  # only the first one counts
    record.finish(200)
    assert request_line(lines) == {
        "request_id": "req_chosen",
        "client_request_id": None,
        "model": MODEL,
        "stream": True,
        "e2ee": True,
        "status": 200,
        "upstream_status": 200,
        "attempts": 2,
        "chunks": 7,  # what the client was handed, not what was read
        "completed": True,
        "stopped": True,
        "prompt_tokens": 11,
        "completion_tokens": 22,
        "cost_usd": 0.0042,
        "signing_address": "0x" + "ab" * 20,
        "trust_level": "enclave",
        "attestation_age_s": 12.3,
        "venice_request_id": "8f00aa-AMS",
        "ratelimit_remaining_requests": 41,
        "error": None,
        "ttfb_ms": 12.35,
        "duration_ms": 1234.57,
    }
    assert metrics.registry.get_sample_value("venice_proxy_chunks_relayed_total") == 7
    assert (
        metrics.registry.get_sample_value("venice_proxy_ttfb_seconds_count", {"model": MODEL}) == 1
    )
    assert metrics.registry.get_sample_value("venice_proxy_ttfb_seconds_sum", {"model": MODEL}) == (
        pytest.approx(0.0123456)
    )
    for kind in ("decrypt", "plaintext"):
        assert not metrics.registry.get_sample_value(
            "venice_proxy_decryption_failures_total", {"kind": kind}
        )


def test_an_aborted_stream_is_not_completed_and_counts_what_it_got(
    clock: Clock, services: Services, lines: Callable[[str], list[dict[str, Any]]]
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.stream = True
    stats = StreamStats(chunks=5, completed=True, sent=3, delivered=False)
    record.attach(make_outcome(stats))
    record.finish(200)
    line = request_line(lines)
    assert (line["chunks"], line["completed"]) == (3, False)
    assert line["ttfb_ms"] is None  # no byte ever left


@pytest.mark.parametrize(
    ("status", "stats_error", "given_error", "completed"),
    [
        (200, None, None, True),
        (502, None, None, False),  # the answer was not a 200
        (200, "upstream_error", None, False),  # the relay recorded an error
        (200, None, "stop_invalid", False),  # the caller's error code
    ],
)
def test_a_single_json_answer_counts_the_chunks_it_was_built_from(
    clock: Clock,
    services: Services,
    metrics: Metrics,
    lines: Callable[[str], list[dict[str, Any]]],
    status: int,
    stats_error: str | None,
    given_error: str | None,
    completed: bool,
) -> None:
    record = RequestRecord.begin(services, make_request())
    stats = StreamStats(chunks=6, completed=True, sent=0, delivered=False, error_code=stats_error)
    record.attach(make_outcome(stats, client_stream=False))
    record.finish(status, given_error)
    line = request_line(lines)
    assert line["stream"] is False
    assert line["chunks"] == 6
    assert line["completed"] is completed
    assert line["status"] == status
    assert line["error"] == (given_error or stats_error)
    assert metrics.registry.get_sample_value("venice_proxy_chunks_relayed_total") == 6


def test_an_incomplete_single_answer_is_not_completed(
    clock: Clock, services: Services, lines: Callable[[str], list[dict[str, Any]]]
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.attach(make_outcome(StreamStats(chunks=2, completed=False), client_stream=False))
    record.finish(200)
    assert request_line(lines)["completed"] is False


def test_the_callers_error_code_wins_over_the_relays(
    clock: Clock, services: Services, lines: Callable[[str], list[dict[str, Any]]]
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.attach(make_outcome(StreamStats(error_code="upstream_error")))
    record.finish(502, "e2ee_decryption_failed")
    assert request_line(lines)["error"] == "e2ee_decryption_failed"


@pytest.mark.parametrize(
    ("code", "kind"),
    [("e2ee_decryption_failed", "decrypt"), ("e2ee_plaintext_in_stream", "plaintext")],
)
@pytest.mark.parametrize("from_relay", [False, True])
def test_a_decryption_failure_is_counted_by_kind(
    clock: Clock,
    services: Services,
    metrics: Metrics,
    lines: Callable[[str], list[dict[str, Any]]],
    code: str,
    kind: str,
    from_relay: bool,
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.attach(make_outcome(StreamStats(error_code=code if from_relay else None)))
    record.finish(502, None if from_relay else code)
    assert request_line(lines)["error"] == code
    for each in ("decrypt", "plaintext"):
        counted = metrics.registry.get_sample_value(
            "venice_proxy_decryption_failures_total", {"kind": each}
        )
        assert (counted or 0) == (1 if each == kind else 0)


def test_a_request_that_failed_before_the_upstream(
    clock: Clock,
    services: Services,
    metrics: Metrics,
    lines: Callable[[str], list[dict[str, Any]]],
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.model = MODEL
    clock.now = T0 + 0.25
    response = record.fail(AttestationError(), {"x-request-id": "req_chosen"})
    assert response.status_code == 502
    assert response.headers["x-request-id"] == "req_chosen"
    assert json.loads(bytes(response.body))["error"]["code"] == "attestation_failed"
    assert request_line(lines) == {
        "request_id": "req_chosen",
        "client_request_id": None,
        "model": MODEL,
        "stream": False,
        "e2ee": None,
        "status": 502,
        "upstream_status": None,
        "attempts": 0,
        "chunks": 0,
        "completed": False,
        "stopped": False,
        "prompt_tokens": None,
        "completion_tokens": None,
        "cost_usd": None,
        "signing_address": None,
        "trust_level": None,
        "attestation_age_s": None,
        "venice_request_id": None,
        "ratelimit_remaining_requests": None,
        "error": "attestation_failed",
        "ttfb_ms": None,
        "duration_ms": 250.0,
    }
    assert metrics.registry.get_sample_value("venice_proxy_chunks_relayed_total") == 0


def test_a_failure_keeps_the_retry_after_and_logs_our_code_not_the_upstreams(
    clock: Clock, services: Services, lines: Callable[[str], list[dict[str, Any]]]
) -> None:
    record = RequestRecord.begin(services, make_request())
    error = UpstreamStatusError(429, f"slow down {CANARY}", code=f"code-{CANARY}", retry_after="7")
    response = record.fail(error, {"x-request-id": "req_chosen"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    line = request_line(lines)
    assert line["status"] == 429
    assert line["error"] == "UpstreamStatusError:429"


def test_a_decryption_failure_before_any_outcome_is_counted(
    clock: Clock, services: Services, metrics: Metrics, lines: Callable[[str], list[dict[str, Any]]]
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.fail(DecryptionError(), {})
    assert request_line(lines)["error"] == "e2ee_decryption_failed"
    assert (
        metrics.registry.get_sample_value(
            "venice_proxy_decryption_failures_total", {"kind": "decrypt"}
        )
        == 1
    )


def test_a_long_model_name_is_clipped(
    clock: Clock, services: Services, lines: Callable[[str], list[dict[str, Any]]]
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.attach(make_outcome(StreamStats(), model="m" * 200))
    record.finish(200)
    assert request_line(lines)["model"] == "m" * MAX_LOGGED_NAME + "..."


@pytest.mark.parametrize(
    ("cost", "logged"),
    [
        ({"usd": 0.5}, 0.5),
        ({"usd": 3}, 3.0),
        ({"usd": True}, None),  # a bool is not a number of dollars
        ({"usd": "0.5"}, None),
        ({"diem": 1.0}, None),
        ([0.5], None),
        (None, None),
    ],
)
def test_the_cost_is_logged_only_when_venice_sent_a_number_of_dollars(
    clock: Clock,
    services: Services,
    lines: Callable[[str], list[dict[str, Any]]],
    cost: Any,
    logged: float | None,
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.attach(make_outcome(StreamStats(cost=cost)))
    record.finish(200)
    line = request_line(lines)
    assert line["cost_usd"] == logged
    assert type(line["cost_usd"]) is type(logged)


def test_a_client_request_id_is_logged_apart_and_never_sent_upstream(services: Services) -> None:
    record = RequestRecord.begin(services, make_request({"X-Request-ID": "client-id-1"}))
    assert record.client_request_id == "client-id-1"
    assert record.request_id.startswith("req_")
    assert record.request_id not in ("client-id-1", "req_chosen")
    # Without one, the id the middleware chose is the record's own.
    plain = RequestRecord.begin(services, make_request())
    assert (plain.request_id, plain.client_request_id) == ("req_chosen", None)
    # A malformed one is not the client's id.
    bad = RequestRecord.begin(services, make_request({"X-Request-ID": "bad id!"}))
    assert (bad.request_id, bad.client_request_id) == ("req_chosen", None)


def test_begin_starts_the_clock_now(clock: Clock, services: Services) -> None:
    clock.now = 4242.5
    record = RequestRecord.begin(services, make_request())
    assert record.started == 4242.5
    assert (record.model, record.stream, record.outcome, record.ttfb_s) == (None, False, None, None)


def test_a_deprecated_model_is_warned_of(
    clock: Clock, services: Services, lines: Callable[[str], list[dict[str, Any]]]
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.attach(
        make_outcome(
            StreamStats(),
            upstream_headers={
                "x-venice-model-deprecation-warning": "retiring soon",
                "x-venice-model-deprecation-date": "2027-01-01",
            },
        )
    )
    (line,) = lines("model_deprecation")
    assert {k: line[k] for k in ("model", "warning", "date", "level", "component")} == {
        "model": MODEL,
        "warning": "retiring soon",
        "date": "2027-01-01",
        "level": "warning",
        "component": "proxy.request",
    }
    assert set(line) == META | {"model", "warning", "date"}


def test_no_deprecation_no_warning(
    clock: Clock, services: Services, lines: Callable[[str], list[dict[str, Any]]]
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.attach(make_outcome(StreamStats()))
    assert record.model == MODEL
    assert record.upstream is not None
    assert lines("model_deprecation") == []


def test_a_gateway_key_and_a_plaintext_model(
    clock: Clock, services: Services, lines: Callable[[str], list[dict[str, Any]]]
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.attach(make_outcome(StreamStats(), key=make_key(0.04, "gateway"), e2ee=False))
    record.finish(200)
    line = request_line(lines)
    assert (line["e2ee"], line["trust_level"], line["attestation_age_s"]) == (False, "gateway", 0.0)


def test_ttfb_is_observed_once_under_the_models_label(
    clock: Clock, services: Services, metrics: Metrics
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.model = "not-listed"
    clock.now = T0 + 0.5
    record.first_byte()
    clock.now = T0 + 0.9
    record.first_byte()
    assert record.ttfb_s == 0.5
    assert (
        metrics.registry.get_sample_value("venice_proxy_ttfb_seconds_count", {"model": "other"})
        == 1
    )
    assert (
        metrics.registry.get_sample_value("venice_proxy_ttfb_seconds_sum", {"model": "other"})
        == 0.5
    )


def test_the_clients_own_id_is_logged_beside_the_proxys(
    clock: Clock, services: Services, lines: Callable[[str], list[dict[str, Any]]]
) -> None:
    record = RequestRecord.begin(services, make_request({"X-Request-ID": "client-id-2"}))
    record.attach(make_outcome(StreamStats()))
    record.finish(200)
    line = request_line(lines)
    assert line["client_request_id"] == "client-id-2"
    assert line["request_id"] == record.request_id
    assert line["request_id"].startswith("req_")


def test_a_request_ended_before_any_answer_without_a_code(
    clock: Clock, services: Services, lines: Callable[[str], list[dict[str, Any]]]
) -> None:
    record = RequestRecord.begin(services, make_request())
    record.finish(499)
    line = request_line(lines)
    assert (line["status"], line["error"], line["attempts"], line["chunks"]) == (499, None, 0, 0)
    assert (line["completed"], line["stopped"], line["upstream_status"]) == (False, False, None)
