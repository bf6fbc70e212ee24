"""Fetch and check the enclave's signature over a completed answer (PROTOCOL.md §6).

After a stream ends with ``[DONE]``, Venice can serve ``GET /tee/signature?model=&request_id=``
for that completion id for about 20 minutes. The signature must recover the signing address the
proxy attested; that proves the answer came from the attested enclave. The signed hashes
themselves are not recomputed (Venice re-serializes requests and re-frames streams; see
:mod:`proxy.attestation.signature`).

The signature can lag the end of the stream by a moment, so a 404 is retried a few times with a
short pause before the result is "unavailable". Outcomes: ``ok``, ``mismatch`` (another key
signed, or the text is malformed), ``unavailable`` (not served), ``error`` (the upstream
failed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from proxy.attestation.signature import parse_signature_response, verify_signature
from proxy.core.errors import AttestationError, ProxyError, UpstreamStatusError

Outcome = Literal["ok", "mismatch", "unavailable", "error"]
SignatureFetcher = Callable[[str, str], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ReceiptResult:
    """The outcome of one signature check (no content inside)."""

    outcome: Outcome
    code: str
    detail: str

    @property
    def ok(self) -> bool:
        """True when the attested enclave signed the answer."""
        return self.outcome == "ok"


class ReceiptVerifier:
    """Checks completed answers' signatures against the attested signing address."""

    def __init__(
        self,
        fetch: SignatureFetcher,
        *,
        attempts: int = 4,
        pause_s: float = 0.1,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._fetch = fetch
        self._attempts = attempts
        self._pause_s = pause_s
        self._sleep = sleep

    async def verify(self, model: str, completion_id: str, attested_address: str) -> ReceiptResult:
        """Fetch the signature for ``completion_id`` and check who signed it."""
        body: Any = None
        for attempt in range(self._attempts):
            try:
                body = await self._fetch(model, completion_id)
                break
            except UpstreamStatusError as exc:
                if exc.upstream_status != 404:
                    return ReceiptResult("error", "signature_fetch_failed", exc.message[:200])
                if attempt + 1 == self._attempts:
                    return ReceiptResult(
                        "unavailable", "signature_unavailable", "the upstream has no signature"
                    )
                await self._sleep(self._pause_s * 2**attempt)
            except ProxyError as exc:
                return ReceiptResult("error", "signature_fetch_failed", exc.message[:200])
        try:
            evidence = parse_signature_response(body)
        except AttestationError as exc:
            return ReceiptResult("mismatch", exc.code or "signature_malformed", exc.message[:200])
        check = verify_signature(evidence, attested_address)
        return ReceiptResult("ok" if check.ok else "mismatch", check.code, check.detail[:200])
