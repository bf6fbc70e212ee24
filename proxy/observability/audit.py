"""Append-only audit log of accepted attestations, one JSON object per line.

Each accepted attestation is written once, when it is accepted::

    {"time": "2026-11-23T16:00:00Z", "model": "e2ee-glm-5-1", "signing_address": "0x...",
     "quote_sha256": "...", "measurements": {"mr_td": ..., "mr_config_id": ..., "rtmr0": ...,
     ..., "rtmr3": ...}, "tcb_status": "UpToDate", "advisory_ids": [...],
     "tee_provider": "near-ai", "trust_level": "enclave" | "gateway", "nonce": "...",
     "checks": {"<code>": true|false|null, ...}}

Everything in it is public attestation data: no prompt, completion, API key or private key.
The file is opened in append mode for each record (no handle kept; log rotation is safe), and
its writes are serialised by a lock so lines never interleave.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.attestation import AttestationReport, parse_tdx_quote


def audit_record(report: AttestationReport, quote: bytes, verified_at: float) -> dict[str, Any]:
    """The audit line for an accepted attestation."""
    parsed = parse_tdx_quote(quote)
    measurements = {
        "mr_td": parsed.report.mr_td.hex(),
        "mr_config_id": parsed.report.mr_config_id.hex(),
        **{f"rtmr{index}": value.hex() for index, value in enumerate(parsed.report.rtmrs)},
    }
    return {
        "time": datetime.fromtimestamp(verified_at, UTC).isoformat().replace("+00:00", "Z"),
        "model": report.model,
        "signing_address": report.signing_address,
        "quote_sha256": hashlib.sha256(quote).hexdigest(),
        "measurements": measurements,
        "tcb_status": report.tcb_status,
        "advisory_ids": list(report.advisory_ids),
        "tee_provider": report.tee_provider,
        "trust_level": report.trust_level,
        "nonce": report.nonce,
        "checks": {check.code: check.ok for check in report.checks},
    }


class AuditLog:
    """Appends records to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line."""
        line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
