"""The model catalogue: which upstream models are E2EE, cached for its TTL, one fetch for many."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.core.errors import UpstreamConnectError, UpstreamError
from proxy.service.catalog import ModelCatalogue, ModelInfo, parse_catalogue, resolve_alias

E2EE_ITEM = {
    "id": "e2ee-glm-5-1",
    "object": "model",
    "type": "text",
    "model_spec": {"name": "GLM", "capabilities": {"supportsE2EE": True}},
}
PLAIN_ITEM = {
    "id": "llama-3.3-70b",
    "model_spec": {"capabilities": {"supportsE2EE": False, "supportsTeeAttestation": True}},
}
PAYLOAD = {"object": "list", "data": [E2EE_ITEM, PLAIN_ITEM]}


def test_a_model_is_e2ee_only_when_the_catalogue_says_so_exactly() -> None:
    models = parse_catalogue(
        {
            "data": [
                E2EE_ITEM,
                PLAIN_ITEM,
                {"id": "truthy", "model_spec": {"capabilities": {"supportsE2EE": "true"}}},
                {"id": "no-caps", "model_spec": {"capabilities": ["supportsE2EE"]}},
                {"id": "no-spec", "model_spec": "e2ee"},
                {"id": "bare"},
                {"id": 7, "model_spec": {"capabilities": {"supportsE2EE": True}}},
                {"name": "no id"},
                "e2ee-not-an-object",
            ]
        }
    )
    assert list(models) == ["e2ee-glm-5-1", "llama-3.3-70b", "truthy", "no-caps", "no-spec", "bare"]
    assert models["e2ee-glm-5-1"] == ModelInfo(id="e2ee-glm-5-1", supports_e2ee=True, raw=E2EE_ITEM)
    assert [model.id for model in models.values() if model.supports_e2ee] == ["e2ee-glm-5-1"]


@pytest.mark.parametrize("payload", [None, [], {"data": {}}, {"models": []}, {"data": "x"}])
def test_a_malformed_model_list_is_an_upstream_error(payload: Any) -> None:
    with pytest.raises(UpstreamError) as info:
        parse_catalogue(payload)
    assert info.value.code == "upstream_bad_json"
    assert info.value.message == "the upstream's model list is malformed"


def test_aliases_map_client_names_to_venice_ids() -> None:
    aliases = {"gpt-4o": "e2ee-glm-5-1"}
    assert resolve_alias("gpt-4o", aliases) == "e2ee-glm-5-1"
    assert resolve_alias("e2ee-glm-5-1", aliases) == "e2ee-glm-5-1"


class Upstream:
    def __init__(self) -> None:
        self.calls = 0
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return PAYLOAD


async def test_the_catalogue_is_fetched_once_per_ttl() -> None:
    now = [100.0]
    upstream = Upstream()
    refreshed: list[list[str]] = []
    catalogue = ModelCatalogue(
        upstream, ttl_s=60, clock=lambda: now[0], on_refresh=lambda ids: refreshed.append(list(ids))
    )
    first = await catalogue.models()
    assert list(first) == ["e2ee-glm-5-1", "llama-3.3-70b"]
    now[0] += 59.9
    assert await catalogue.models() is first
    assert upstream.calls == 1
    assert refreshed == [["e2ee-glm-5-1", "llama-3.3-70b"]]
    now[0] += 0.1  # exactly the TTL later: refreshed
    assert await catalogue.models() is not first
    assert upstream.calls == 2
    assert len(refreshed) == 2


async def test_a_cold_catalogue_is_fetched_once_for_many_callers() -> None:
    upstream = Upstream()
    upstream.gate = asyncio.Event()
    catalogue = ModelCatalogue(upstream, ttl_s=60, clock=lambda: 100.0)
    waiters = [asyncio.create_task(catalogue.lookup("e2ee-glm-5-1")) for _ in range(20)]
    await asyncio.sleep(0)
    upstream.gate.set()
    found = await asyncio.gather(*waiters)
    assert upstream.calls == 1
    assert {info.id for info in found if info is not None} == {"e2ee-glm-5-1"}


async def test_lookup_finds_a_model_or_none() -> None:
    catalogue = ModelCatalogue(Upstream(), ttl_s=60, clock=lambda: 100.0)
    info = await catalogue.lookup("llama-3.3-70b")
    assert info is not None
    assert info.supports_e2ee is False
    assert await catalogue.lookup("unknown") is None


async def test_an_unreadable_catalogue_assumes_e2ee_only_for_the_prefix() -> None:
    upstream = Upstream()
    upstream.fail = UpstreamConnectError()
    catalogue = ModelCatalogue(upstream, ttl_s=60, clock=lambda: 100.0)
    # the attestation still decides before any prompt is encrypted to it
    assert await catalogue.lookup("e2ee-new-model") == ModelInfo(
        id="e2ee-new-model", supports_e2ee=True, raw={}
    )
    with pytest.raises(UpstreamConnectError):
        await catalogue.lookup("llama-3.3-70b")
    with pytest.raises(UpstreamConnectError):
        await catalogue.models()
    assert upstream.calls == 3  # a failure is not cached: the next call tries again
    upstream.fail = None
    assert list(await catalogue.models()) == ["e2ee-glm-5-1", "llama-3.3-70b"]


async def test_the_first_call_fetches_even_when_the_clock_reads_less_than_the_ttl() -> None:
    # time.monotonic() may be small: seconds since boot
    now = [5.0]
    upstream = Upstream()
    catalogue = ModelCatalogue(upstream, ttl_s=300, clock=lambda: now[0])
    assert await catalogue.lookup("e2ee-glm-5-1") is not None
    now[0] = 304.9
    assert list(await catalogue.models()) == ["e2ee-glm-5-1", "llama-3.3-70b"]
    assert upstream.calls == 1
    now[0] = 305.0
    await catalogue.models()
    assert upstream.calls == 2
