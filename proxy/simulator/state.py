"""Mutable state of one simulated Venice server: enclave key, faults, recorder, counters, and
the signature cache.

The enclave key is derived deterministically from ``seed`` and a rotation counter
(``sha256("venice-simulator enclave key" || seed || generation)``), so two simulators with the
same seed attest the same address; :meth:`SimulatorState.rotate_key` moves to the next one.
Signatures are kept for 1200 s, like NEAR's cache.

Everything runs on one asyncio event loop; the counters need no locks because no ``await``
separates a check from its update.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from proxy.core.crypto import KeyPair, keypair_from_private
from proxy.simulator.faults import ALWAYS, Faults

SIGNATURE_TTL_S = 1200.0
# How many ended streams :attr:`SimulatorState.stream_outcomes` remembers (the oldest go first).
STREAM_OUTCOMES_KEPT = 1024
_SECP256K1_ORDER = int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141", 16)


class StreamOutcome(StrEnum):
    """How one streamed answer ended."""

    COMPLETED = "completed"  # the server sent [DONE] and the last byte was taken
    CANCELLED = "cancelled"  # the reader went away first (a client or proxy disconnect)
    CUT = "cut"  # the cut_stream_after fault dropped the connection
    FAILED = "failed"  # anything else


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the simulator received it. The repr shows no header values or body."""

    method: str
    path: str
    query: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class StoredSignature:
    model: str
    text: str
    signature: str
    signing_address: str
    expires_at: float


def enclave_keypair(seed: int, generation: int) -> KeyPair:
    """The enclave key for a seed and rotation generation."""
    counter = 0
    while True:
        digest = hashlib.sha256(
            f"venice-simulator enclave key|{seed}|{generation}|{counter}".encode()
        ).digest()
        if 0 < int.from_bytes(digest, "big") < _SECP256K1_ORDER:
            return keypair_from_private(digest)
        counter += 1  # pragma: no cover - probability ~2**-128


class SimulatorState:
    """Everything one simulated server remembers; tests read and poke it directly."""

    def __init__(
        self,
        api_key: str | None = None,
        token_delay_s: float = 0.0,
        seed: int = 0,
        *,
        proxy_policy: bool = False,
    ) -> None:
        self._api_key = api_key
        self.token_delay_s = token_delay_s
        self.seed = seed
        # Strict mode: E2EE requests must follow the proxy's field policy (proxy.simulator.
        # policy); the paths of every violation are kept here (never their values).
        self.proxy_policy = proxy_policy
        self.policy_allows: frozenset[str] = frozenset()
        self.policy_violations: list[str] = []
        self._generation = 0
        self._enclave = enclave_keypair(seed, 0)
        self._faults = Faults()
        self._failures_left = 0
        self._tool_faults_left = 0
        self.requests: list[RecordedRequest] = []
        self.attestation_fetches = 0
        self.chat_requests = 0
        self.streams_open = 0
        self.streams_completed = 0
        self.streams_cancelled = 0
        # Completion id -> how that stream ended: a test can wait for its own stream, whatever
        # streams of earlier tests are still winding down.
        self.stream_outcomes: dict[str, StreamOutcome] = {}
        self._signatures: dict[str, StoredSignature] = {}

    def __repr__(self) -> str:
        return (
            f"SimulatorState(seed={self.seed}, generation={self._generation}, "
            f"faults={self._faults!r}, requests={len(self.requests)})"
        )

    # -- faults -------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._faults = faults
        self._failures_left = faults.fail_times if faults.fail_status is not None else 0
        self._tool_faults_left = faults.tool_fault_times if faults.tool_fault is not None else 0

    def take_failure(self) -> int | None:
        """The status to fail this chat request with, consuming one from the budget."""
        status = self._faults.fail_status
        if status is None or self._failures_left == 0:
            return None
        if self._failures_left != ALWAYS:
            self._failures_left -= 1
        return status

    def take_tool_fault(self) -> str | None:
        """The tool fault to inject into this answer, consuming one from its budget."""
        fault = self._faults.tool_fault
        if fault is None or self._tool_faults_left == 0:
            return None
        if self._tool_faults_left != ALWAYS:
            self._tool_faults_left -= 1
        return fault

    # -- enclave key --------------------------------------------------------------------------

    @property
    def enclave_public_key(self) -> bytes:
        """The current 65-byte uncompressed enclave key."""
        return self._enclave.public

    @property
    def enclave(self) -> KeyPair:
        return self._enclave

    def rotate_key(self) -> None:
        """Move to a new enclave key; blobs sealed to the old one no longer open."""
        self._generation += 1
        self._enclave = enclave_keypair(self.seed, self._generation)

    # -- auth ---------------------------------------------------------------------------------

    def api_key_ok(self, presented: str) -> bool:
        if self._api_key is None:
            return bool(presented)
        return hmac.compare_digest(presented.encode(), self._api_key.encode())

    # -- signatures ---------------------------------------------------------------------------

    def store_signature(self, request_id: str, signature: StoredSignature) -> None:
        now = time.monotonic()
        expired = [key for key, value in self._signatures.items() if value.expires_at <= now]
        for key in expired:
            del self._signatures[key]
        self._signatures[request_id] = signature

    def signature_for(self, request_id: str, model: str) -> StoredSignature | None:
        stored = self._signatures.get(request_id)
        if stored is None or stored.model != model or stored.expires_at <= time.monotonic():
            return None
        return stored

    # -- streams ------------------------------------------------------------------------------

    def stream_ended(self, completion_id: str, outcome: StreamOutcome) -> None:
        """Count a stream that ended and remember its outcome by its completion id."""
        if outcome is StreamOutcome.COMPLETED:
            self.streams_completed += 1
        elif outcome is StreamOutcome.CANCELLED:
            self.streams_cancelled += 1
        self.stream_outcomes[completion_id] = outcome
        while len(self.stream_outcomes) > STREAM_OUTCOMES_KEPT:
            del self.stream_outcomes[next(iter(self.stream_outcomes))]

    # -- housekeeping -------------------------------------------------------------------------

    def reset(self) -> None:
        """Clear the recorder, counters, faults, policy violations and allowances, and stored
        signatures (the key is kept)."""
        self.requests.clear()
        self.policy_violations.clear()
        self.policy_allows = frozenset()
        self.attestation_fetches = 0
        self.chat_requests = 0
        self.streams_completed = 0
        self.streams_cancelled = 0
        self.stream_outcomes.clear()
        self.faults = Faults()
        self._signatures.clear()
