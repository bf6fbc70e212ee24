"""Fetch and check the enclave's signature over a completed answer (docs/protocol.md#signatures).

After a stream ends with ``[DONE]``, Venice can serve ``GET /tee/signature?model=&request_id=``
for that completion id for about 20 minutes. The signature must recover the signing address the
proxy attested; that proves the answer came from the attested enclave. The signed hashes
themselves are not recomputed (Venice re-serializes requests and re-frames streams; see
:mod:`proxy.attestation.signature`).

The signature can lag the end of the stream by a moment, so a 404 is retried a few times with a
short pause before the result is "unavailable". Outcomes are
:data:`~proxy.attestation.signature.SignatureOutcome`.

:class:`SignaturePolicy` applies ``signatures.mode``: ``async`` checks after the answer was
relayed (logged and counted), ``strict`` withholds an answer whose signature does not verify
(the caller turns the returned error into a 502 or an in-band error before ``[DONE]``), ``off``
checks nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from proxy.attestation.signature import (
    SignatureOutcome,
    parse_signature_response,
    verify_signature,
)
from proxy.core.errors import AttestationError, ProxyError, UpstreamStatusError
from proxy.observability.logs import get_logger

if TYPE_CHECKING:
    from proxy.observability.metrics import Metrics
    from proxy.service.chat import OpenedAnswer

SignatureMode = Literal["async", "strict", "off"]
SignatureFetcher = Callable[[str, str], Awaitable[Any]]
log = get_logger("proxy.request")


@dataclass(frozen=True, slots=True)
class SignatureResult:
    """The outcome of one signature check (no content inside)."""

    outcome: SignatureOutcome
    code: str
    detail: str

    @property
    def ok(self) -> bool:
        """True when the attested enclave signed the answer."""
        return self.outcome == "ok"


class SignatureVerifier:
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

    async def verify(
        self, model: str, completion_id: str, attested_address: str
    ) -> SignatureResult:
        """Fetch the signature for ``completion_id`` and check who signed it."""
        body: Any = None
        for attempt in range(self._attempts):
            try:
                body = await self._fetch(model, completion_id)
                break
            except UpstreamStatusError as exc:
                if exc.upstream_status != 404:
                    return SignatureResult("error", "signature_fetch_failed", exc.message[:200])
                if attempt + 1 == self._attempts:
                    return SignatureResult(
                        "unavailable", "signature_unavailable", "the upstream has no signature"
                    )
                await self._sleep(self._pause_s * 2**attempt)
            except ProxyError as exc:
                return SignatureResult("error", "signature_fetch_failed", exc.message[:200])
        try:
            evidence = parse_signature_response(body)
        except AttestationError as exc:
            return SignatureResult("mismatch", exc.code or "signature_malformed", exc.message[:200])
        check = verify_signature(evidence, attested_address)
        return SignatureResult("ok" if check.ok else "mismatch", check.code, check.detail[:200])


class SignaturePolicy:
    """``signatures.mode`` applied to completed answers: check, log, count, and in ``strict``
    mode say whether to withhold."""

    def __init__(self, verifier: SignatureVerifier, mode: SignatureMode, metrics: Metrics) -> None:
        self.verifier = verifier
        self.mode: SignatureMode = mode
        self._metrics = metrics

    def mode_for(self, outcome: OpenedAnswer) -> SignatureMode:
        """The mode that applies to one answer (plaintext passthrough answers have no signer)."""
        return self.mode if outcome.e2ee else "off"

    async def check(self, outcome: OpenedAnswer, request_id: str) -> SignatureResult | None:
        """Verify the enclave's signature over a completed answer; log and count the outcome.

        None when there is nothing to check (no attested key or no completion id)."""
        completion_id = outcome.stats.completion_id
        if outcome.key is None or completion_id is None:
            return None
        result = await self.verifier.verify(
            outcome.model, completion_id, outcome.key.signing_address
        )
        self._metrics.record_signature(result.outcome)
        (log.info if result.ok else log.warning)(
            "signature_check",
            request_id=request_id,
            completion_id=completion_id,
            model=outcome.model,
            outcome=result.outcome,
            code=result.code,
            signing_address=outcome.key.signing_address,
        )
        return result

    async def strict_failure(self, outcome: OpenedAnswer, request_id: str) -> ProxyError | None:
        """For ``strict`` mode: the error to answer with unless the attested enclave signed."""
        result = await self.check(outcome, request_id)
        if result is None:
            return AttestationError(
                "the answer carried no completion id to check its signature",
                code="signature_unavailable",
            )
        if result.ok:
            return None
        return AttestationError(
            f"the enclave's signature over this answer did not verify ({result.code}); "
            "the answer was withheld",
            code=result.code,
        )
