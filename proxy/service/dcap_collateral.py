"""Intel DCAP collateral for TDX quotes: fetched from a PCCS / Intel PCS, or read from a file,
and cached until its own ``nextUpdate``; expired collateral, and the lock of a platform with none
cached and no fetch running, are dropped at the next miss.

Collateral (TCB info, QE identity, CRLs, the PCK chain) depends on the platform, not on the quote,
so the cache key is the PCK certificate chain the quote carries (its PEM text, hashed); a quote
without an embedded chain is cached by its whole digest. An entry expires at the earliest
``nextUpdate`` of its TCB info and QE identity, or after ``max_age_s`` if that is sooner.

Fetching uses ``dcap_qvl.get_collateral`` (dcap-qvl's own HTTP client, talking to the PCCS only:
the Venice API key is never sent there). Failures become
``AttestationError(code="dcap_collateral_unavailable")``; verification itself is pure and lives
in :mod:`proxy.attestation.dcap`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import dcap_qvl

from proxy.core.errors import AttestationError

UNAVAILABLE = "dcap_collateral_unavailable"
_PEM_START = b"-----BEGIN CERTIFICATE-----"
_DCAP_OFF = 'attestation.dcap = "off" uses the model with its quote NOT verified'

CollateralFetcher = Callable[[bytes], Awaitable[Mapping[str, Any]]]


def platform_key(quote: bytes) -> str:
    """A cache key naming the quote's platform: the digest of its embedded PCK chain."""
    start = quote.find(_PEM_START)
    material = quote[start:] if start >= 0 else quote
    return hashlib.sha256(material.rstrip(b"\x00")).hexdigest()


def next_update(collateral: Mapping[str, Any]) -> float | None:
    """The earliest ``nextUpdate`` (unix time) of the TCB info and QE identity, if readable."""
    times: list[float] = []
    for name in ("tcb_info", "qe_identity"):
        text = collateral.get(name)
        try:
            value = json.loads(text)["nextUpdate"] if isinstance(text, str) else None
            if isinstance(value, str):
                times.append(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
    return min(times) if times else None


def pccs_fetcher(pccs_url: str) -> CollateralFetcher:
    """A fetcher that asks ``pccs_url`` (a PCCS, or Intel's PCS) for a quote's collateral."""

    async def fetch(quote: bytes) -> Mapping[str, Any]:
        try:
            collateral = await dcap_qvl.get_collateral(pccs_url, bytes(quote))
            document: Mapping[str, Any] = json.loads(collateral.to_json())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # dcap-qvl surfaces Rust errors as ValueError or panics
            raise AttestationError(
                f"could not fetch DCAP collateral from {pccs_url}: {str(exc)[:200]}; set "
                "attestation.pccs_url to a reachable PCCS, or attestation.collateral_file to "
                f"collateral saved for this platform ({_DCAP_OFF})",
                code=UNAVAILABLE,
            ) from exc
        return document

    return fetch


def file_fetcher(path: Path) -> CollateralFetcher:
    """A fetcher that always answers with the collateral saved in ``path`` (air-gapped use)."""

    async def fetch(quote: bytes) -> Mapping[str, Any]:
        try:
            document = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise AttestationError(
                f"could not read DCAP collateral file {path}; fix or remove "
                f"attestation.collateral_file ({_DCAP_OFF})",
                code=UNAVAILABLE,
            ) from exc
        if not isinstance(document, dict):
            raise AttestationError(
                f"{path} is not a JSON object; fix or remove attestation.collateral_file "
                f"({_DCAP_OFF})",
                code=UNAVAILABLE,
            )
        return document

    return fetch


class CollateralCache:
    """Collateral per platform, kept until its ``nextUpdate`` (one fetch for many waiters)."""

    def __init__(
        self,
        fetch: CollateralFetcher,
        *,
        max_age_s: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0

    async def get(self, quote: bytes) -> Mapping[str, Any]:
        """Collateral for ``quote``'s platform."""
        key = platform_key(quote)
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        self._forget_idle(self._clock())
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self._entries.get(key)
            now = self._clock()
            if entry is not None and entry[0] > now:
                return entry[1]
            self.fetches += 1
            collateral = await self._fetch(quote)
            expiry = now + self._max_age_s
            update = next_update(collateral)
            if update is not None:
                expiry = min(expiry, update)
            self._entries[key] = (expiry, collateral)
            return collateral

    def _forget_idle(self, now: float) -> None:
        """Drop expired collateral, and the lock of each platform with none cached and no fetch
        running (else every platform key ever seen, one per new quote without a chain, stays)."""
        self._entries = {key: entry for key, entry in self._entries.items() if entry[0] > now}
        self._locks = {
            key: lock for key, lock in self._locks.items() if key in self._entries or lock.locked()
        }
