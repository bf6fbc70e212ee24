"""When to retry an upstream request, and how long to wait first. Pure.

Retried (only before any byte reached the client, each attempt re-encrypted with fresh keys by
the caller): connection failures and connect timeouts (nothing was sent), HTTP 429, 500, 502,
503 and 504, and a stream that broke or ended before its first text arrived. Not retried:
timeouts after connecting (a slow prefill would be paid twice), 4xx other than 429, attestation
and decryption failures (those have their own single re-attestation path).

Delay for retry ``n`` (0-based): the upstream's own hint when it gave one (``Retry-After`` in
seconds or as an HTTP date; else Venice's ``x-ratelimit-reset-requests``, a unix time), else
exponential backoff ``base * 2**n`` with full jitter, capped at ``max_delay_s``. When the
upstream asks for a longer wait than ``max_delay_s``, or the wait would pass ``max_total_s``
since the first attempt, there is no retry: the client gets the error (with ``Retry-After``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

from proxy.core.errors import (
    ProxyError,
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamStatusError,
)

RetryReason = Literal[
    "connect",
    "timeout",
    "rate_limited",
    "server_error",
    "stream_broken",
    "key_rejected",
    "tool_repair",
]
"""Why an upstream attempt was retried: the one vocabulary of metrics, logs and the retry path.

``connect``/``timeout``: the connection failed or timed out (nothing was sent); ``rate_limited``:
HTTP 429; ``server_error``: HTTP 5xx; ``stream_broken``: the stream broke before the first byte
reached the client; ``key_rejected``: the enclave key was stale and the model was re-attested;
``tool_repair``: an emulated tool call or JSON answer did not validate and was re-asked in a new
encrypted request (:mod:`proxy.service.emulation`; never chosen by :func:`retry_reason`).
"""

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRYABLE_STREAM_CODES = frozenset(
    {"upstream_stream_broken", "upstream_stream_truncated", "upstream_error"}
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter."""

    max_retries: int = 2
    base_delay_s: float = 0.25
    max_delay_s: float = 8.0
    max_total_s: float = 30.0


def retry_reason(exc: ProxyError) -> RetryReason | None:
    """Why ``exc`` is worth retrying (one of :data:`RetryReason`), or None when it is not."""
    if isinstance(exc, UpstreamStatusError):
        status = exc.upstream_status
        if status not in RETRYABLE_STATUSES:
            return None
        return "rate_limited" if status == 429 else "server_error"
    if isinstance(exc, UpstreamConnectTimeoutError):
        return "timeout"
    if isinstance(exc, UpstreamConnectError):
        return "connect"
    if type(exc) is UpstreamError and exc.code in RETRYABLE_STREAM_CODES:
        return "stream_broken"
    return None


def hinted_delay(exc: ProxyError, now: float) -> float | None:
    """The wait the upstream asked for, in seconds, if it said."""
    if not isinstance(exc, UpstreamStatusError):
        return None
    if exc.retry_after:
        value = exc.retry_after.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError, IndexError):
            pass
    if exc.ratelimit_reset:
        try:
            return max(0.0, float(exc.ratelimit_reset) - now)
        except ValueError:
            return None
    return None


def retry_delay(
    policy: RetryPolicy,
    retry_index: int,
    exc: ProxyError,
    *,
    elapsed_s: float,
    now: float,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before retry number ``retry_index`` (0-based), or None to give up."""
    if retry_index >= policy.max_retries or retry_reason(exc) is None:
        return None
    delay = hinted_delay(exc, now)
    if delay is None:
        ceiling = min(policy.max_delay_s, policy.base_delay_s * 2**retry_index)
        delay = (rng or random).uniform(0, ceiling)
    if delay > policy.max_delay_s or elapsed_s + delay > policy.max_total_s:
        return None
    return delay
