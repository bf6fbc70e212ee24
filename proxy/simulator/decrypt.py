"""Enclave-side decryption of an E2EE chat request's messages (docs/protocol.md#request-fields).
Pure.

Each encrypted field is ``hex(sender_pub(65) || gcm_nonce(12) || ciphertext || tag(16))`` sealed
to the enclave key; the sender key is read from the blob itself, never from a header.

NEAR semantics (the default), every message of every role:

- ``content``: ``""`` stays ``""``; any other string is decrypted strictly, and a plaintext that
  is a JSON array is restored as content parts; a list passes through unencrypted; ``None``
  passes.
- ``reasoning_content`` and ``reasoning``: non-empty strings are decrypted strictly.
- Errors (400, NEAR body): "Encrypted field is not valid hex", "Decryption failed" (too short,
  bad point, bad tag), "Decrypted content is not valid UTF-8".

Phala legacy semantics:

- ``content``: every string must be non-empty, even-length hex (``""`` is rejected), else
  "Encrypted message content must be hex-encoded"; lists have each ``text`` part decrypted;
  ``None`` passes. No JSON-array restoration. Other fields are not touched.

Deliberately not done: NEAR's all-fields mode (tool calls, names, refusal) and ``audio.data``;
neither is sent by Venice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from proxy.core.crypto import open_blob
from proxy.core.errors import DecryptionError
from proxy.simulator.http_errors import SimulatedHTTPError, near_error, phala_error

_HEX = frozenset("0123456789abcdefABCDEF")
_NEAR_STRICT_FIELDS = ("reasoning_content", "reasoning")


def is_hex(text: str) -> bool:
    """Even-length hex, either case, nothing else (no whitespace, unlike ``bytes.fromhex``)."""
    return len(text) % 2 == 0 and _HEX.issuperset(text)


def _open(private: bytes, text: str, *, error: Callable[[str], SimulatedHTTPError]) -> str:
    """Decrypt one hex blob (already checked to be hex) to UTF-8 text."""
    try:
        plaintext = open_blob(private, bytes.fromhex(text))
    except DecryptionError:
        raise error("Decryption failed") from None
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise error("Decrypted content is not valid UTF-8") from None


def _near_open(private: bytes, text: str) -> str:
    if not is_hex(text):
        raise near_error("Encrypted field is not valid hex")
    return _open(private, text, error=near_error)


def _restore_parts(plaintext: str) -> str | list[Any]:
    if not plaintext.lstrip().startswith("["):
        return plaintext
    try:
        parsed = json.loads(plaintext)
    except ValueError:
        return plaintext
    return parsed if isinstance(parsed, list) else plaintext


def decrypt_messages_near(messages: list[Any], private: bytes) -> list[Any]:
    """NEAR's strict decryption of every message; returns new message dicts."""
    result: list[Any] = []
    for message in messages:
        if not isinstance(message, dict):
            result.append(message)
            continue
        opened = dict(message)
        content = opened.get("content")
        if isinstance(content, str) and content:
            opened["content"] = _restore_parts(_near_open(private, content))
        for name in _NEAR_STRICT_FIELDS:
            value = opened.get(name)
            if isinstance(value, str) and value:
                opened[name] = _near_open(private, value)
        result.append(opened)
    return result


def _phala_decryption_error(message: str) -> SimulatedHTTPError:
    return phala_error(message, "e2ee_decryption_failed")


def _phala_open(private: bytes, text: str, message: str) -> str:
    if not text or not is_hex(text):
        raise phala_error(message, "invalid_e2ee_request")
    return _open(private, text, error=_phala_decryption_error)


def decrypt_messages_phala(messages: list[Any], private: bytes) -> list[Any]:
    """Phala legacy decryption: ``content`` only, hex required for every string."""
    result: list[Any] = []
    for message in messages:
        if not isinstance(message, dict):
            result.append(message)
            continue
        opened = dict(message)
        content = opened.get("content")
        if isinstance(content, str):
            opened["content"] = _phala_open(
                private, content, "Encrypted message content must be hex-encoded"
            )
        elif isinstance(content, list):
            parts: list[Any] = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    text = part.get("text")
                    if isinstance(text, str):
                        part = {
                            **part,
                            "text": _phala_open(
                                private, text, "Encrypted message text content must be hex-encoded"
                            ),
                        }
                parts.append(part)
            opened["content"] = parts
        result.append(opened)
    return result
