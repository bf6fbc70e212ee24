"""Enclave-side encryption of response deltas to the client key (docs/protocol.md#response-fields).
Pure.

Each sealed field becomes ``hex(server_ephemeral_pub(65) || gcm_nonce(12) || ciphertext || tag)``
encrypted to ``X-Venice-TEE-Client-Pub-Key``.

- NEAR (default): ``content``, ``reasoning_content`` and ``reasoning`` are sealed when they are
  non-empty strings (whitespace included), each with a FRESH server ephemeral key; ``""`` stays
  ``""`` (so the role chunk ``{"role": "assistant", "content": ""}`` is plaintext).
- Phala legacy: ONE server ephemeral key per response (fresh GCM nonce per field); only
  ``content`` and ``reasoning_content`` are sealed, ``reasoning`` is left as is (in plaintext),
  and ``delta.content == ""`` is deleted.

Deliberately not done: NEAR's all-fields mode (tool calls, refusal, logprobs).
"""

from __future__ import annotations

from typing import Any

from proxy.core.crypto import KeyPair, aes_key_for, generate_keypair, seal, seal_with_key

_NEAR_FIELDS = ("content", "reasoning_content", "reasoning")
_PHALA_FIELDS = ("content", "reasoning_content")


class ResponseSealer:
    """Seals the text fields of one response's deltas; one instance per response."""

    __slots__ = ("_aes_key", "_client_public", "_ephemeral", "_fields")

    def __init__(self, client_public: bytes, *, phala_legacy: bool = False) -> None:
        self._client_public = client_public
        self._fields = _PHALA_FIELDS if phala_legacy else _NEAR_FIELDS
        # Phala's legacy proxy derives one AES key per response from a single ephemeral (once:
        # the ECDH and the key derivation are not repeated per field).
        self._ephemeral: KeyPair | None = generate_keypair() if phala_legacy else None
        self._aes_key = (
            aes_key_for(self._ephemeral.private, client_public) if self._ephemeral else b""
        )

    def __repr__(self) -> str:
        return f"ResponseSealer(phala_legacy={self.phala_legacy})"

    @property
    def phala_legacy(self) -> bool:
        return self._ephemeral is not None

    def seal_text(self, text: str) -> str:
        """One field's hex blob."""
        plaintext = text.encode("utf-8")
        if self._ephemeral is not None:
            return seal_with_key(self._aes_key, self._ephemeral.public, plaintext).hex()
        return seal(self._client_public, plaintext).hex()

    def seal_delta(self, delta: dict[str, Any], *, skip: frozenset[str] = frozenset()) -> None:
        """Seal ``delta``'s text fields in place; fields named in ``skip`` stay plaintext."""
        if self.phala_legacy and delta.get("content") == "":
            del delta["content"]
        for name in self._fields:
            value = delta.get(name)
            if isinstance(value, str) and value and name not in skip:
                delta[name] = self.seal_text(value)
