"""Intel DCAP collateral: which platform a quote is, what is cached and until when, the file and
PCCS fetchers, and what a user reads when collateral cannot be had.

Real quotes and Intel collateral from tests/fixtures, verified with dcap-qvl where the collateral
is used; the PCCS is a fake in place of dcap-qvl's HTTP client (no network).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest

from proxy.attestation import parse_attestation, verify_quote_dcap
from proxy.core.errors import AttestationError
from proxy.service.dcap_collateral import (
    CollateralCache,
    file_fetcher,
    next_update,
    pccs_fetcher,
    platform_key,
)
from tests.support.attestation_helpers import (
    FIXTURES,
    FIXTURES_BY_NAME,
    body_of,
    collateral_of,
    time_of,
)

DCAP_OFF = 'attestation.dcap = "off" uses the model with its quote NOT verified'
PCCS_URL = "https://pccs.test/sgx/certification/v4/"
DAY = 24 * 3600.0


def quote_of(name: str) -> bytes:
    return parse_attestation(body_of(FIXTURES_BY_NAME[name])).intel_quote


def manager_quote_of(name: str) -> bytes:
    member = body_of(FIXTURES_BY_NAME[name])["compose_manager_attestation"]
    member = json.loads(member) if isinstance(member, str) else member
    return bytes.fromhex(member["quote"])


def no_chain(quote: bytes) -> bytes:
    return quote[: quote.find(b"-----BEGIN CERTIFICATE-----")]


def with_next_updates(
    collateral: dict[str, Any], tcb_info: Any, qe_identity: Any
) -> dict[str, Any]:
    out = dict(collateral)
    for name, value in (("tcb_info", tcb_info), ("qe_identity", qe_identity)):
        if value is None:
            out[name] = "{not json"
        else:
            document = json.loads(out[name])
            document["nextUpdate"] = value
            out[name] = json.dumps(document)
    return out


# --- which platform a quote is ---------------------------------------------------------------


def test_quotes_of_one_platform_share_a_key_and_other_platforms_do_not() -> None:
    glm, gpt, gemma, qwen_vl = (
        quote_of(name)
        for name in ("glm_5_1", "gpt_oss_120b_p", "gemma_3_27b_p", "qwen3_vl_30b_a3b_p")
    )
    # two models on one machine, and the compose manager's second quote from the same CVM
    assert gemma != qwen_vl
    assert platform_key(gemma) == platform_key(qwen_vl)
    assert platform_key(manager_quote_of("glm_5_1")) == platform_key(glm)
    # different machines: each its own PCK chain (they share Intel's root and intermediate)
    assert len({platform_key(glm), platform_key(gpt), platform_key(gemma)}) == 3
    assert platform_key(glm) == platform_key(glm + b"\x00" * 8)  # the quote's padding


def test_a_quote_without_a_chain_is_keyed_by_all_its_bytes() -> None:
    glm, gpt = no_chain(quote_of("glm_5_1")), no_chain(quote_of("gpt_oss_120b_p"))
    assert platform_key(glm + b"X") != platform_key(gpt + b"X")
    assert platform_key(glm + b"X") != platform_key(glm)
    assert platform_key(glm) == platform_key(glm + b"\x00\x00")


# --- when collateral expires -----------------------------------------------------------------


def test_next_update_is_the_earliest_of_tcb_info_and_qe_identity() -> None:
    collateral = collateral_of(FIXTURES_BY_NAME["glm_5_1"])
    early, late = "2026-07-01T00:00:00Z", "2026-07-02T00:00:00Z"
    early_s = 1782864000.0
    assert next_update(with_next_updates(collateral, early, late)) == early_s
    assert next_update(with_next_updates(collateral, late, early)) == early_s
    # one unreadable, the other still counts
    assert next_update(with_next_updates(collateral, None, early)) == early_s
    assert next_update(with_next_updates(collateral, early, None)) == early_s
    assert next_update(with_next_updates(collateral, None, None)) is None
    assert next_update(with_next_updates(collateral, 1782864000, "yesterday")) is None
    assert next_update({}) is None
    assert next_update({"tcb_info": {"nextUpdate": early}}) is None  # not the JSON text


class Pccs:
    """Answers each platform's real collateral; records the quotes it was asked about."""

    def __init__(self, collateral: dict[bytes, dict[str, Any]]) -> None:
        self.collateral = collateral
        self.asked: list[bytes] = []
        self.gates: dict[bytes, asyncio.Event] = {}

    async def __call__(self, quote: bytes) -> dict[str, Any]:
        self.asked.append(quote)
        if quote in self.gates:
            await self.gates[quote].wait()
        return self.collateral[quote]


def test_each_platform_gets_its_own_collateral_once() -> None:
    glm, gpt = quote_of("glm_5_1"), quote_of("gpt_oss_120b_p")
    gemma, qwen_vl = quote_of("gemma_3_27b_p"), quote_of("qwen3_vl_30b_a3b_p")
    pccs = Pccs(
        {
            glm: collateral_of(FIXTURES_BY_NAME["glm_5_1"]),
            gpt: collateral_of(FIXTURES_BY_NAME["gpt_oss_120b_p"]),
            gemma: collateral_of(FIXTURES_BY_NAME["gemma_3_27b_p"]),
        }
    )
    at = time_of(FIXTURES_BY_NAME["glm_5_1"])
    cache = CollateralCache(pccs, clock=lambda: float(at))

    async def run() -> None:
        for quote in (glm, gpt, glm, gpt, gemma, qwen_vl):  # qwen_vl: gemma's machine
            collateral = await cache.get(quote)
            assert verify_quote_dcap(quote, collateral, at).status == "UpToDate"

    asyncio.run(run())
    assert pccs.asked == [glm, gpt, gemma]
    assert cache.fetches == 3


def test_collateral_is_fetched_again_at_its_next_update_or_after_max_age() -> None:
    quote = quote_of("glm_5_1")
    collateral = collateral_of(FIXTURES_BY_NAME["glm_5_1"])
    expiry = next_update(collateral)
    assert expiry is not None
    pccs = Pccs({quote: collateral})
    now = [expiry - 60.0]
    cache = CollateralCache(pccs, clock=lambda: now[0])

    async def run() -> None:
        await cache.get(quote)
        now[0] = expiry - 0.5
        await cache.get(quote)
        assert cache.fetches == 1
        now[0] = expiry  # at nextUpdate it is stale
        await cache.get(quote)
        assert cache.fetches == 2

    asyncio.run(run())

    # nextUpdate far away: kept for max_age_s, 24 hours by default
    pccs = Pccs({quote: with_next_updates(collateral, None, None)})
    now = [1000.0]
    cache = CollateralCache(pccs, clock=lambda: now[0])

    async def run_max_age() -> None:
        await cache.get(quote)
        now[0] = 1000.0 + DAY - 1
        await cache.get(quote)
        assert cache.fetches == 1
        now[0] = 1000.0 + DAY
        await cache.get(quote)
        assert cache.fetches == 2

    asyncio.run(run_max_age())


def test_collateral_already_past_its_next_update_is_never_reused() -> None:
    quote = quote_of("glm_5_1")
    collateral = collateral_of(FIXTURES_BY_NAME["glm_5_1"])
    expiry = next_update(collateral)
    assert expiry is not None
    pccs = Pccs({quote: collateral})
    cache = CollateralCache(pccs, clock=lambda: expiry)  # stale from the moment it arrives

    async def run() -> None:
        for _ in range(3):
            await cache.get(quote)
        # nor handed to those who waited for it
        pccs.gates[quote] = asyncio.Event()
        waiters = [asyncio.ensure_future(cache.get(quote)) for _ in range(3)]
        await asyncio.sleep(0)
        pccs.gates[quote].set()
        await asyncio.wait_for(asyncio.gather(*waiters), 2.0)

    asyncio.run(run())
    assert cache.fetches == 6
    assert pccs.asked == [quote] * 6


def test_many_waiters_share_one_fetch_and_a_slow_platform_does_not_hold_up_another() -> None:
    glm, gpt = quote_of("glm_5_1"), quote_of("gpt_oss_120b_p")
    glm_collateral = collateral_of(FIXTURES_BY_NAME["glm_5_1"])
    gpt_collateral = collateral_of(FIXTURES_BY_NAME["gpt_oss_120b_p"])
    pccs = Pccs({glm: glm_collateral, gpt: gpt_collateral})
    cache = CollateralCache(pccs, clock=lambda: 0.0)

    async def run() -> None:
        pccs.gates[glm] = asyncio.Event()  # glm's PCCS answer is slow
        waiters = [asyncio.ensure_future(cache.get(glm)) for _ in range(5)]
        await asyncio.sleep(0)
        assert await asyncio.wait_for(cache.get(gpt), 2.0) is gpt_collateral
        assert not any(waiter.done() for waiter in waiters)
        pccs.gates[glm].set()
        results = await asyncio.wait_for(asyncio.gather(*waiters), 2.0)
        assert all(result is glm_collateral for result in results)

    asyncio.run(run())
    assert pccs.asked == [glm, gpt]
    assert cache.fetches == 2


def test_a_failed_fetch_is_not_cached() -> None:
    quote = quote_of("glm_5_1")
    collateral = collateral_of(FIXTURES_BY_NAME["glm_5_1"])
    answers: list[Any] = [AttestationError("down", code="dcap_collateral_unavailable"), collateral]

    async def flaky(raw: bytes) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cache = CollateralCache(flaky, clock=lambda: 0.0)

    async def run() -> None:
        with pytest.raises(AttestationError):
            await cache.get(quote)
        assert await cache.get(quote) is collateral

    asyncio.run(run())
    assert cache.fetches == 2


# --- the collateral file (air-gapped use) ----------------------------------------------------


async def test_a_collateral_file_verifies_its_quote(tmp_path: Path) -> None:
    fixture = FIXTURES_BY_NAME["glm_5_1"]
    path = tmp_path / "collateral.json"
    path.write_text((FIXTURES / fixture.collateral_file).read_text(encoding="utf-8"))
    quote = quote_of("glm_5_1")
    collateral = await file_fetcher(path)(quote)
    assert verify_quote_dcap(quote, collateral, time_of(fixture)).status == "UpToDate"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            None,
            "could not read DCAP collateral file {path}; fix or remove attestation.collateral_file",
        ),
        (
            "{not json",
            "could not read DCAP collateral file {path}; fix or remove attestation.collateral_file",
        ),
        ("[1, 2]", "{path} is not a JSON object; fix or remove attestation.collateral_file"),
        ('"text"', "{path} is not a JSON object; fix or remove attestation.collateral_file"),
    ],
)
async def test_an_unusable_collateral_file_names_itself_and_the_setting(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "collateral.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(AttestationError) as info:
        await file_fetcher(path)(b"quote")
    assert info.value.code == "dcap_collateral_unavailable"
    assert info.value.message == message.format(path=path) + f" ({DCAP_OFF})"


# --- the PCCS (dcap-qvl's client, faked) -----------------------------------------------------


class FakeCollateral:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def to_json(self) -> str:
        return json.dumps(self.document)


async def test_the_pccs_is_asked_about_the_quote_and_its_answer_verifies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fixture = FIXTURES_BY_NAME["gpt_oss_120b_p"]
    quote = quote_of("gpt_oss_120b_p")
    asked: list[tuple[str, bytes]] = []

    async def get_collateral(url: str, raw: bytes) -> FakeCollateral:
        assert type(raw) is bytes
        asked.append((url, raw))
        return FakeCollateral(collateral_of(fixture))

    monkeypatch.setattr(dcap_qvl, "get_collateral", get_collateral)
    collateral = await pccs_fetcher(PCCS_URL)(bytearray(quote))  # type: ignore[arg-type]
    assert asked == [(PCCS_URL, quote)]
    assert verify_quote_dcap(quote, collateral, time_of(fixture)).status == "UpToDate"


async def test_an_unreachable_pccs_names_the_url_the_cause_and_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cause = "error sending request: connection refused " + "x" * 300

    async def get_collateral(url: str, raw: bytes) -> FakeCollateral:
        raise ValueError(cause)

    monkeypatch.setattr(dcap_qvl, "get_collateral", get_collateral)
    with pytest.raises(AttestationError) as info:
        await pccs_fetcher(PCCS_URL)(quote_of("glm_5_1"))
    assert info.value.code == "dcap_collateral_unavailable"
    assert info.value.message == (
        f"could not fetch DCAP collateral from {PCCS_URL}: {cause[:200]}; set "
        "attestation.pccs_url to a reachable PCCS, or attestation.collateral_file to collateral "
        f"saved for this platform ({DCAP_OFF})"
    )


def test_expired_collateral_and_the_locks_of_failed_fetches_are_not_kept_for_good() -> None:
    """Regression: every platform key ever seen kept its lock (and its expired collateral) for
    the life of the proxy, so an upstream sending ever new quotes (a quote with no PCK chain is
    keyed by its whole digest) grew the cache without bound, one lock per attestation."""
    collateral = collateral_of(FIXTURES_BY_NAME["glm_5_1"])
    expiry = next_update(collateral)
    assert expiry is not None
    now = [expiry - 60.0]

    async def fetch(quote: bytes) -> dict[str, Any]:
        if quote.startswith(b"junk"):
            raise AttestationError("no chain", code="dcap_collateral_unavailable")
        return collateral

    cache = CollateralCache(fetch, clock=lambda: now[0])
    glm, gpt = quote_of("glm_5_1"), quote_of("gpt_oss_120b_p")

    async def run() -> None:
        await cache.get(glm)
        for index in range(500):
            with pytest.raises(AttestationError):
                await cache.get(b"junk %d" % index)
        now[0] = expiry  # glm's collateral is stale now
        await cache.get(gpt)

    asyncio.run(run())
    assert len(cache._locks) <= 2
    assert list(cache._entries) == [platform_key(gpt)]
