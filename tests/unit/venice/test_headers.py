"""Venice's account and model headers (proxy.venice.headers): what each one may say."""

from __future__ import annotations

import pytest

from proxy.venice.headers import UpstreamHeaders, parse_upstream_headers


def test_every_header_lands_in_its_own_field_whatever_the_case_of_its_name() -> None:
    parsed = parse_upstream_headers(
        {
            "X-RateLimit-Remaining-Requests": "19",
            "x-ratelimit-remaining-tokens": "99000",
            "X-VENICE-BALANCE-USD": "12.5",
            "x-venice-balance-diem": "3",
            "x-Venice-Balance-Vcu": "0.25",
            "X-Venice-Model-Deprecation-Warning": "this model goes away",
            "x-venice-model-deprecation-date": "2030-01-01",
            "CF-RAY": "8f1e2d3c4b5a6978-AMS",
            "content-type": "text/event-stream",
        }
    )
    assert parsed == UpstreamHeaders(
        ratelimit_remaining_requests=19.0,
        ratelimit_remaining_tokens=99000.0,
        balance_usd=12.5,
        balance_diem=3.0,
        balance_vcu=0.25,
        deprecation_warning="this model goes away",
        deprecation_date="2030-01-01",
        cf_ray="8f1e2d3c4b5a6978-AMS",
    )


def test_no_header_is_all_absent() -> None:
    parsed = parse_upstream_headers({})
    assert parsed == UpstreamHeaders()
    assert all(getattr(parsed, name) is None for name in UpstreamHeaders.__slots__)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("19", 19.0),
        (" 12.5 ", 12.5),
        ("-3", -3.0),
        ("1e3", 1000.0),
        ("0", 0.0),
        ("lots", None),
        ("", None),
        ("   ", None),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-inf", None),
        ("Infinity", None),
        ("1e999", None),
    ],
)
def test_numbers_that_do_not_parse_or_are_not_finite_are_absent(
    value: str, expected: float | None
) -> None:
    for name, field in [
        ("x-ratelimit-remaining-requests", "ratelimit_remaining_requests"),
        ("x-ratelimit-remaining-tokens", "ratelimit_remaining_tokens"),
        ("x-venice-balance-usd", "balance_usd"),
        ("x-venice-balance-diem", "balance_diem"),
        ("x-venice-balance-vcu", "balance_vcu"),
    ]:
        parsed = getattr(parse_upstream_headers({name: value}), field)
        if expected is None:
            assert parsed is None, name
        else:
            assert parsed == expected, name
            assert type(parsed) is float


@pytest.mark.parametrize(
    ("name", "field", "limit"),
    [
        ("x-venice-model-deprecation-warning", "deprecation_warning", 512),
        ("x-venice-model-deprecation-date", "deprecation_date", 64),
        ("cf-ray", "cf_ray", 128),
    ],
)
def test_texts_are_trimmed_then_truncated_at_their_limit(name: str, field: str, limit: int) -> None:
    def parsed(value: str) -> str | None:
        text: str | None = getattr(parse_upstream_headers({name: value}), field)
        return text

    assert parsed("  a b  ") == "a b"
    assert parsed("\tx\n") == "x"
    assert parsed("") is None
    assert parsed("   ") is None
    assert parsed(" " + "w" * limit + " ") == "w" * limit
    assert parsed(" " + "w" * (limit - 1) + "yz ") == "w" * (limit - 1) + "y"
    assert parsed("  " + "v" * (limit + 50)) == "v" * limit
