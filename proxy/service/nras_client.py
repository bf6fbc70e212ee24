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

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from proxy.attestation import NrasEvidence
from proxy.attestation.nras import b64url_decode
from proxy.core.errors import AttestationError, ProxyError
from proxy.venice.client import ServiceClient

UNAVAILABLE = "gpu_nras_unavailable"
_PROCEED = (
    "check attestation.nras_url and attestation.nras_jwks_url, or set "
    'attestation.nvidia = "nonce" to use the model without NVIDIA\'s verdict (its GPUs then '
    "NOT verified)"
)


def _kids(response: Any) -> set[str]:
    """The ``kid`` of every compact JWS in an NRAS answer (what cannot be read names none)."""
    kids: set[str] = set()
    pending = [response]
    while pending:
        value = pending.pop()
        if isinstance(value, list | tuple):
            pending.extend(value)
        elif isinstance(value, Mapping):
            pending.extend(value.values())
        elif isinstance(value, str) and value.count(".") == 2:
            try:
                kid = json.loads(b64url_decode(value.split(".", 1)[0])).get("kid")
            except (ValueError, AttributeError, RecursionError):
                continue
            if isinstance(kid, str):
                kids.add(kid)
    return kids


def _known_kids(jwks: Mapping[str, Any]) -> set[str]:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        return set()
    return {
        key["kid"] for key in keys if isinstance(key, Mapping) and isinstance(key.get("kid"), str)
    }


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

    async def _keys(self, kids: set[str]) -> Mapping[str, Any]:
        cached = self._jwks
        if cached is not None and cached[0] > self._clock() and kids <= _known_kids(cached[1]):
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
            jwks = await self._keys(_kids(response))
        except AttestationError:
            raise
        except ProxyError as exc:
            raise AttestationError(
                f"NVIDIA NRAS could not be reached: {exc.message}; {_PROCEED}", code=UNAVAILABLE
            ) from exc
        return NrasEvidence(response=response, jwks=jwks)
