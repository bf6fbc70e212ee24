"""The upstream's model catalogue, cached briefly, and model-name resolution.

Venice's ``GET /models?type=text`` items look like ``{id, object, owned_by, type, created,
model_spec: {name, privacy, capabilities: {supportsE2EE, supportsTeeAttestation, ...}}}``
(docs/protocol.md#models). A model counts as E2EE only when ``supportsE2EE`` is true; the ``e2ee-``
prefix is used only when the catalogue cannot be read, and even then the attestation still has to
pass before any prompt is encrypted to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.core.errors import ProxyError, UpstreamError
from proxy.core.fields import E2EE_PREFIX

__all__ = ["E2EE_PREFIX", "ModelCatalogue", "ModelInfo", "parse_catalogue", "resolve_alias"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the proxy needs to know about one upstream model."""

    id: str
    supports_e2ee: bool
    raw: Mapping[str, Any]


def _capabilities(item: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = item.get("model_spec")
    if isinstance(spec, Mapping):
        caps = spec.get("capabilities")
        if isinstance(caps, Mapping):
            return caps
    return {}


def parse_catalogue(payload: Any) -> dict[str, ModelInfo]:
    """Model id -> info from a ``/models`` answer; items without a string id are skipped."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("data"), list):
        raise UpstreamError("the upstream's model list is malformed", code="upstream_bad_json")
    models: dict[str, ModelInfo] = {}
    for item in payload["data"]:
        if isinstance(item, Mapping) and isinstance(item.get("id"), str):
            supports = _capabilities(item).get("supportsE2EE") is True
            models[item["id"]] = ModelInfo(id=item["id"], supports_e2ee=supports, raw=item)
    return models


class ModelCatalogue:
    """The upstream's models, fetched at most once per ``ttl_s`` (one fetch for many callers)."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Any]],
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_refresh: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._on_refresh = on_refresh
        self._ttl_s = ttl_s
        self._clock = clock
        self._models: dict[str, ModelInfo] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def models(self) -> dict[str, ModelInfo]:
        """The catalogue, refreshed when older than the TTL."""
        if self._models is not None and self._clock() - self._fetched_at < self._ttl_s:
            return self._models
        async with self._lock:
            if self._models is None or self._clock() - self._fetched_at >= self._ttl_s:
                self._models = parse_catalogue(await self._fetch())
                self._fetched_at = self._clock()
                if self._on_refresh is not None:
                    self._on_refresh(self._models)
            return self._models

    async def lookup(self, model: str) -> ModelInfo | None:
        """The model's info; when the catalogue is unreadable, an ``e2ee-`` id is assumed E2EE
        (attestation still decides) and anything else is unknown."""
        try:
            return (await self.models()).get(model)
        except ProxyError:
            if model.startswith(E2EE_PREFIX):
                return ModelInfo(id=model, supports_e2ee=True, raw={})
            raise


def resolve_alias(model: str, aliases: Mapping[str, str]) -> str:
    """The Venice id for a client-facing model name."""
    return aliases.get(model, model)
