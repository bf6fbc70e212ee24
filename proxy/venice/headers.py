"""Venice's account and model headers on a chat response: rate limits, balance, deprecation, ray id.

Header names, case-insensitive: ``x-ratelimit-remaining-requests``,
``x-ratelimit-remaining-tokens``, ``x-venice-balance-usd`` / ``-diem`` / ``-vcu``,
``x-venice-model-deprecation-warning`` and ``-date``, and Cloudflare's ``cf-ray`` (Venice's
request id in its support answers). None of them carries user content. Numbers that do not
parse (or are not finite) count as absent; texts are trimmed and truncated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

_RATELIMIT_HEADERS = {
    "requests": "x-ratelimit-remaining-requests",
    "tokens": "x-ratelimit-remaining-tokens",
}
_BALANCE_HEADERS = {
    "usd": "x-venice-balance-usd",
    "diem": "x-venice-balance-diem",
    "vcu": "x-venice-balance-vcu",
}
DEPRECATION_WARNING_HEADER = "x-venice-model-deprecation-warning"
DEPRECATION_DATE_HEADER = "x-venice-model-deprecation-date"
REQUEST_ID_HEADER = "cf-ray"


@dataclass(frozen=True, slots=True)
class UpstreamHeaders:
    """What Venice's response headers say about the account and the model (no content)."""

    ratelimit_remaining_requests: float | None = None
    ratelimit_remaining_tokens: float | None = None
    balance_usd: float | None = None
    balance_diem: float | None = None
    balance_vcu: float | None = None
    deprecation_warning: str | None = None
    deprecation_date: str | None = None
    cf_ray: str | None = None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _text(value: str | None, limit: int) -> str | None:
    if value is None or not value.strip():
        return None
    return value.strip()[:limit]


def parse_upstream_headers(headers: Mapping[str, str]) -> UpstreamHeaders:
    """Venice's rate-limit, balance, deprecation and request-id headers, case-insensitively.

    Unparseable numbers are treated as absent.
    """
    lower = {name.lower(): value for name, value in headers.items()}
    return UpstreamHeaders(
        ratelimit_remaining_requests=_number(lower.get(_RATELIMIT_HEADERS["requests"])),
        ratelimit_remaining_tokens=_number(lower.get(_RATELIMIT_HEADERS["tokens"])),
        balance_usd=_number(lower.get(_BALANCE_HEADERS["usd"])),
        balance_diem=_number(lower.get(_BALANCE_HEADERS["diem"])),
        balance_vcu=_number(lower.get(_BALANCE_HEADERS["vcu"])),
        deprecation_warning=_text(lower.get(DEPRECATION_WARNING_HEADER), 512),
        deprecation_date=_text(lower.get(DEPRECATION_DATE_HEADER), 64),
        cf_ray=_text(lower.get(REQUEST_ID_HEADER), 128),
    )
