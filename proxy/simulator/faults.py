"""Fault switches for the simulated Venice server.

A :class:`Faults` value is immutable; tests swap in a new one at runtime
(``state.faults = Faults(...)``), which also resets the ``fail_times`` budget. Every switch is
off by default, so ``Faults()`` is a well-behaved server.

What each switch does on the wire:

- ``fail_status`` / ``fail_times``: chat requests answer that HTTP status with a Venice error body
  ``{"error": "<message>", "code": "<CODE>"}`` ``fail_times`` times (-1 = every time); a 429 also
  carries ``Retry-After: 1``.
- ``cut_stream_after``: after that many token chunks the connection is dropped without
  ``[DONE]`` (the chunked body never terminates, so the client sees a truncated stream).
- ``plaintext_chunk``: the first content token of choice 0 (from token ``fault_at_token`` on,
  default 0) is sent in plaintext under E2EE.
- ``corrupt_ciphertext``: the first encrypted content blob of choice 0 (from token
  ``fault_at_token`` on) has one byte of its GCM
  tag flipped.
- ``midstream_error``: half-way through the tokens, Venice's in-band error
  ``data: {"error": {...}}`` then ``data: [DONE]`` (no finish, no usage, no signature).
- ``wrong_nonce``: the attestation echoes and binds a nonce other than the requested one.
- ``debug_quote``: the quote's TD attributes carry the DEBUG bit.
- ``phala_legacy``: Phala's legacy server semantics (one server ephemeral per response,
  ``delta.content == ""`` deleted, ``reasoning`` left in plaintext, hex-only request content)
  and the Phala legacy attestation shape.
- ``signing_key_missing``: the attestation omits ``signing_public_key`` and ``signing_key``.
- ``bad_signature``: completed answers are signed by a key the attestation does not name.
- ``tool_fault`` / ``tool_fault_times``: answers that should hold a tool call or a JSON object
  (see :mod:`proxy.simulator.tools`) are spoiled ``tool_fault_times`` times (-1 = every time):
  ``invalid_arguments``, ``malformed_call``, ``no_call`` or ``broken_object``.
"""

from __future__ import annotations

from dataclasses import dataclass

ALWAYS = -1
TOOL_FAULTS = ("invalid_arguments", "malformed_call", "no_call", "broken_object")


@dataclass(frozen=True, slots=True)
class Faults:
    """Which misbehaviours the simulator injects. All off by default."""

    fail_status: int | None = None
    fail_times: int = 1
    cut_stream_after: int | None = None
    plaintext_chunk: bool = False
    corrupt_ciphertext: bool = False
    fault_at_token: int = 0
    midstream_error: bool = False
    wrong_nonce: bool = False
    debug_quote: bool = False
    phala_legacy: bool = False
    signing_key_missing: bool = False
    bad_signature: bool = False
    tool_fault: str | None = None
    tool_fault_times: int = ALWAYS

    def __post_init__(self) -> None:
        if self.fail_status is not None and not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")
        if self.fail_times < ALWAYS:
            raise ValueError("fail_times must be -1 (always) or a count >= 0")
        if self.tool_fault is not None and self.tool_fault not in TOOL_FAULTS:
            raise ValueError(f"tool_fault must be one of {', '.join(TOOL_FAULTS)}")
        if self.tool_fault_times < ALWAYS:
            raise ValueError("tool_fault_times must be -1 (always) or a count >= 0")
        if self.cut_stream_after is not None and self.cut_stream_after < 0:
            raise ValueError("cut_stream_after must be >= 0")
