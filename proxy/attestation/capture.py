"""Saved attestations: a raw response body, or a capture that wraps one.

Two file layouts are accepted (the caller reads and JSON-decodes the file; this module does no
I/O)::

    {<the attestation response body>}                              raw body
    {"_client_nonce": "<64 hex>", "_capture_epoch": <unix time>,
     "attestation": {<body>} | "<body as a JSON string>"}           capture wrapper

A document is a wrapper only when it has ``_client_nonce`` or ``_capture_epoch``: the ``aci/1``
body has an ``attestation`` member of its own, so that key alone proves nothing.

Deliberately NOT checked here: anything about the body itself (see :mod:`.evidence`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.errors import AttestationError

_WRAPPER_KEYS = ("_client_nonce", "_capture_epoch")


@dataclass(frozen=True, slots=True)
class Capture:
    """A saved attestation body with the nonce and time it was captured at, when recorded."""

    body: Mapping[str, Any] = field(repr=False)
    client_nonce: bytes | None
    capture_epoch: int | None


def unwrap_capture(document: Mapping[str, Any]) -> Capture:
    """Split a saved document into the response body and its capture metadata.

    Raises :class:`AttestationError` (code ``capture_invalid``) when a wrapper is malformed.
    """
    if not isinstance(document, Mapping):
        raise AttestationError("the saved attestation is not a JSON object", code="capture_invalid")
    if not any(key in document for key in _WRAPPER_KEYS):
        return Capture(body=document, client_nonce=None, capture_epoch=None)
    body: Any = document.get("attestation")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise AttestationError(
                "the capture's attestation is not valid JSON", code="capture_invalid"
            ) from exc
    if not isinstance(body, Mapping):
        raise AttestationError("the capture has no attestation object", code="capture_invalid")
    return Capture(
        body=body,
        client_nonce=_nonce(document.get("_client_nonce")),
        capture_epoch=_epoch(document.get("_capture_epoch")),
    )


def _nonce(value: Any) -> bytes | None:
    if value is None:
        return None
    try:
        nonce = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        nonce = None
    if nonce is None or len(nonce) != 32:
        raise AttestationError("the capture's _client_nonce is not 64 hex", code="capture_invalid")
    return nonce


def _epoch(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise AttestationError(
            "the capture's _capture_epoch is not an integer", code="capture_invalid"
        )
    return value
