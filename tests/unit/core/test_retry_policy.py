"""The retry policy (pure): what is retried, and how long to wait first."""

from __future__ import annotations

import random

import pytest

from proxy.core.errors import (
    AttestationError,
    DecryptionError,
    ProxyError,
    SSEProtocolError,
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamTooLargeError,
)
from proxy.core.retry import RetryPolicy, hinted_delay, retry_delay, retry_reason

POLICY = RetryPolicy(max_retries=3, base_delay_s=0.5, max_delay_s=8.0, max_total_s=30.0)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (UpstreamStatusError(429, "x"), "rate_limited"),
        (UpstreamStatusError(503, "x"), "server_error"),
        (UpstreamStatusError(500, "x"), "server_error"),
        (UpstreamStatusError(400, "x"), None),
        (UpstreamStatusError(401, "x"), None),
        (UpstreamConnectError(), "connect"),
        (UpstreamTimeoutError(), None),
        (UpstreamConnectTimeoutError(), "timeout"),
        (UpstreamError("cut", code="upstream_stream_broken"), "stream_broken"),
        (AttestationError(), None),
        (DecryptionError(), None),
    ],
)
def test_what_is_retried(exc: Exception, reason: str | None) -> None:
    assert retry_reason(exc) == reason  # type: ignore[arg-type]


def test_backoff_is_jittered_exponential_and_bounded() -> None:
    rng = random.Random(1)
    exc = UpstreamStatusError(503, "x")
    for index in range(3):
        delay = retry_delay(POLICY, index, exc, elapsed_s=0, now=0, rng=rng)
        assert delay is not None
        assert 0 <= delay <= 0.5 * 2**index
    assert retry_delay(POLICY, 3, exc, elapsed_s=0, now=0, rng=rng) is None
    hinted = UpstreamStatusError(503, "x", retry_after="1")
    assert retry_delay(POLICY, 0, hinted, elapsed_s=29.5, now=0) is None  # past max_total_s
    assert retry_delay(POLICY, 0, hinted, elapsed_s=28.5, now=0) == 1.0


def test_retry_after_is_honoured() -> None:
    exc = UpstreamStatusError(429, "x", retry_after="2")
    assert retry_delay(POLICY, 0, exc, elapsed_s=0, now=0) == 2.0
    long_wait = UpstreamStatusError(429, "x", retry_after="120")
    assert retry_delay(POLICY, 0, long_wait, elapsed_s=0, now=0) is None  # the client decides
    dated = UpstreamStatusError(429, "x", retry_after="Thu, 01 Jan 1970 00:00:05 GMT")
    assert hinted_delay(dated, now=1.0) == pytest.approx(4.0)
    reset = UpstreamStatusError(429, "x", ratelimit_reset="103")
    assert hinted_delay(reset, now=100.0) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (UpstreamStatusError(502, "x"), "server_error"),
        (UpstreamStatusError(504, "x"), "server_error"),
        (UpstreamStatusError(501, "x"), None),
        (UpstreamStatusError(505, "x"), None),
        (UpstreamStatusError(408, "x"), None),
        (UpstreamError(), "stream_broken"),  # its default code is upstream_error
        (UpstreamError("cut", code="upstream_stream_truncated"), "stream_broken"),
        (UpstreamError("cut", code="upstream_error"), "stream_broken"),
        (UpstreamError("x", code="upstream_bad_request"), None),
        # A subclass is judged by its type, never by a retryable-looking code.
        (UpstreamTooLargeError(), None),
        (UpstreamTooLargeError("x", code="upstream_stream_broken"), None),
        (UpstreamTimeoutError("x", code="upstream_error"), None),
        (SSEProtocolError("x", code="upstream_stream_broken"), None),
    ],
)
def test_what_is_retried_by_status_type_and_code(exc: ProxyError, reason: str | None) -> None:
    assert retry_reason(exc) == reason


class _Recorder(random.Random):
    """An rng that records the bounds it is asked for and returns the upper one."""

    def __init__(self) -> None:
        super().__init__(0)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return b


def test_backoff_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    policy = RetryPolicy(max_retries=8, base_delay_s=0.5, max_delay_s=3.0, max_total_s=100.0)
    rng = _Recorder()
    exc = UpstreamStatusError(503, "x")
    delays = [retry_delay(policy, index, exc, elapsed_s=0, now=0, rng=rng) for index in range(5)]
    assert rng.bounds == [(0, 0.5), (0, 1.0), (0, 2.0), (0, 3.0), (0, 3.0)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]  # a wait of exactly max_delay_s is allowed
    assert retry_delay(policy, 8, exc, elapsed_s=0, now=0, rng=rng) is None
    assert retry_delay(policy, 0, UpstreamStatusError(400, "x"), elapsed_s=0, now=0) is None


def test_the_total_budget_allows_a_wait_that_ends_exactly_at_it() -> None:
    hinted = UpstreamStatusError(503, "x", retry_after="1")
    assert retry_delay(POLICY, 0, hinted, elapsed_s=29.0, now=0) == 1.0
    assert retry_delay(POLICY, 0, hinted, elapsed_s=29.25, now=0) is None
    at_cap = UpstreamStatusError(503, "x", retry_after="8")
    assert retry_delay(POLICY, 0, at_cap, elapsed_s=0, now=0) == 8.0
    over_cap = UpstreamStatusError(503, "x", retry_after="8.5")
    assert retry_delay(POLICY, 0, over_cap, elapsed_s=0, now=0) is None


def test_hints_are_measured_from_now() -> None:
    reset = UpstreamStatusError(429, "x", ratelimit_reset="103")
    assert retry_delay(POLICY, 0, reset, elapsed_s=0, now=100.0) == pytest.approx(3.0)
    dated = UpstreamStatusError(429, "x", retry_after="Thu, 01 Jan 1970 00:00:05 GMT")
    assert retry_delay(POLICY, 0, dated, elapsed_s=0, now=1.0) == pytest.approx(4.0)


@pytest.mark.parametrize(
    "exc",
    [
        UpstreamStatusError(429, "x", retry_after="0"),
        UpstreamStatusError(429, "x", retry_after=" -3 "),
        UpstreamStatusError(429, "x", retry_after="Thu, 01 Jan 1970 00:00:05 GMT"),
        UpstreamStatusError(429, "x", ratelimit_reset="50"),
        UpstreamStatusError(429, "x", retry_after="soon", ratelimit_reset="99.5"),
    ],
)
def test_a_hint_in_the_past_means_no_wait(exc: UpstreamStatusError) -> None:
    assert hinted_delay(exc, now=100.0) == 0.0
    assert retry_delay(POLICY, 0, exc, elapsed_s=0, now=100.0) == 0.0


@pytest.mark.parametrize(
    "exc",
    [
        UpstreamStatusError(429, "x"),
        UpstreamStatusError(429, "x", retry_after="", ratelimit_reset=""),
        UpstreamStatusError(429, "x", retry_after="soon"),
        UpstreamStatusError(429, "x", ratelimit_reset="tomorrow"),
        UpstreamConnectError(),
    ],
)
def test_no_usable_hint_means_backoff(exc: ProxyError) -> None:
    assert hinted_delay(exc, now=100.0) is None
    rng = _Recorder()
    assert retry_delay(POLICY, 1, exc, elapsed_s=0, now=100.0, rng=rng) == 1.0
    assert rng.bounds == [(0, 1.0)]
