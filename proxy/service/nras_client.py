"""NVIDIA GPU evidence: send the attestation's GPU evidence to NRAS and fetch its signing keys.

The verdict itself is checked purely by :func:`proxy.attestation.verify_nras_response` (ES384
signatures against the JWKS, issuer, expiry, nonce, per-GPU claims); this module only does the
round trips. The JWKS is cached for ``jwks_ttl_s``, and fetched again before then when an answer
is signed with a key (``kid``) the cached set lacks: NVIDIA adds keys several times a day, and a
stale set would fail every GPU verification until it expired. Any failure to reach NRAS becomes
``AttestationError(code="gpu_nras_unavailable")``: with ``attestation.nvidia = "nras"`` a model
whose GPUs cannot be verified is not used (fail closed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from proxy.attestation import NrasEvidence
from proxy.attestation.nras import jwks_key_ids, token_key_ids
from proxy.core.errors import AttestationError, ProxyError
from proxy.venice.client import ServiceClient

UNAVAILABLE = "gpu_nras_unavailable"
_PROCEED = (
    "check attestation.nras_url and attestation.nras_jwks_url, or set "
    'attestation.nvidia = "nonce" to use the model without NVIDIA\'s verdict (its GPUs then '
    "NOT verified)"
)


class NrasSource:
    """Callable: GPU evidence payload -> :class:`NrasEvidence` (NRAS answer + JWKS)."""

    def __init__(
        self,
        client: ServiceClient,
        *,
        url: str,
        jwks_url: str,
        jwks_ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._url = url
        self._jwks_url = jwks_url
        self._jwks_ttl_s = jwks_ttl_s
        self._clock = clock
        self._jwks: tuple[float, Mapping[str, Any]] | None = None

    async def _keys(self, kids: frozenset[str]) -> Mapping[str, Any]:
        cached = self._jwks
        if cached is not None and cached[0] > self._clock() and kids <= jwks_key_ids(cached[1]):
            return cached[1]
        jwks = await self._client.request_json("GET", self._jwks_url)
        if not isinstance(jwks, Mapping):
            raise AttestationError(
                f"the NRAS JWKS is not a JSON object; {_PROCEED}", code=UNAVAILABLE
            )
        self._jwks = (self._clock() + self._jwks_ttl_s, jwks)
        return jwks

    async def __call__(self, payload: Mapping[str, Any]) -> NrasEvidence:
        try:
            response = await self._client.request_json("POST", self._url, dict(payload))
            jwks = await self._keys(token_key_ids(response))
        except AttestationError:
            raise
        except ProxyError as exc:
            raise AttestationError(
                f"NVIDIA NRAS could not be reached: {exc.message}; {_PROCEED}", code=UNAVAILABLE
            ) from exc
        return NrasEvidence(response=response, jwks=jwks)
