"""The audit log: one JSON line per accepted attestation, public attestation data only."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from proxy.attestation import AttestationReport, CheckResult
from proxy.observability.audit import AuditLog, audit_record
from tests.support.attestation_helpers import synthetic_quote

MR_CONFIG_ID_OFFSET = 232
VERIFIED_AT = 1776995921  # 2026-04-24T01:58:41Z
NONCE = "ac82" * 16
ADDRESS = "0x" + "ab" * 20


def _quote() -> bytes:
    quote = bytearray(synthetic_quote(bytes(range(64)), mr_td=bytes(range(48))))
    quote[MR_CONFIG_ID_OFFSET : MR_CONFIG_ID_OFFSET + 48] = b"\xcc" * 48
    return bytes(quote)


def _report(**changes: object) -> AttestationReport:
    fields: dict[str, object] = {
        "model": "e2ee-glm-5-1",
        "nonce": NONCE,
        "shape": "near",
        "signing_address": ADDRESS,
        "signing_public_key": b"\x04" + b"\x01" * 64,
        "tcb_status": "UpToDate",
        "checks": (
            CheckResult("dcap", True, True, "the quote verified", "tee"),
            CheckResult("gpu_nras", None, False, "not checked", "gpu"),
            CheckResult("tcb_status", False, False, "OutOfDate", "tee"),
        ),
        "advisory_ids": ("INTEL-SA-00837", "INTEL-SA-00960"),
        "tee_provider": "near-ai",
        "trust_level": "enclave",
        "attested": "the model's enclave",
        "facts": {"secret": "never in the audit line"},
    }
    fields.update(changes)
    return AttestationReport(**fields)  # type: ignore[arg-type]


EXPECTED = {
    "time": "2026-04-24T01:58:41Z",
    "model": "e2ee-glm-5-1",
    "signing_address": ADDRESS,
    "quote_sha256": hashlib.sha256(_quote()).hexdigest(),
    "measurements": {
        "mr_td": bytes(range(48)).hex(),
        "mr_config_id": "cc" * 48,
        "rtmr0": "a0" * 48,
        "rtmr1": "a1" * 48,
        "rtmr2": "a2" * 48,
        "rtmr3": "a3" * 48,
    },
    "tcb_status": "UpToDate",
    "advisory_ids": ["INTEL-SA-00837", "INTEL-SA-00960"],
    "tee_provider": "near-ai",
    "trust_level": "enclave",
    "nonce": NONCE,
    "checks": {"dcap": True, "gpu_nras": None, "tcb_status": False},
}


def test_the_record_is_every_public_field_of_the_accepted_attestation() -> None:
    record = audit_record(_report(), _quote(), VERIFIED_AT)
    assert record == EXPECTED
    # Nothing else: not the signing key, not the report's free-form facts or details.
    assert "signing_public_key" not in record
    assert "never in the audit line" not in json.dumps(record)
    assert "the quote verified" not in json.dumps(record)


def test_the_time_is_utc_with_a_z_and_keeps_fractions() -> None:
    assert audit_record(_report(), _quote(), 0)["time"] == "1970-01-01T00:00:00Z"
    record = audit_record(_report(), _quote(), VERIFIED_AT + 0.25)
    assert record["time"] == "2026-04-24T01:58:41.250000Z"


def test_a_gateway_record_without_provider_or_status_says_null() -> None:
    report = _report(
        tcb_status=None, advisory_ids=(), tee_provider=None, trust_level="gateway", checks=()
    )
    record = audit_record(report, _quote(), VERIFIED_AT)
    assert record["tcb_status"] is None
    assert record["advisory_ids"] == []
    assert record["tee_provider"] is None
    assert record["trust_level"] == "gateway"
    assert record["checks"] == {}


def test_one_record_is_one_compact_line_with_sorted_keys(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path).append({"b": 1, "a": {"d": [1, 2], "c": None}, "é": "ü"})
    # Sorted keys, no spaces, ASCII (json escapes the rest), one newline.
    assert path.read_bytes() == b'{"a":{"c":null,"d":[1,2]},"b":1,"\\u00e9":"\\u00fc"}\n'


def test_records_are_appended_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier":true}\n', encoding="utf-8")
    log = AuditLog(path)
    assert log.path == path
    log.append(audit_record(_report(), _quote(), VERIFIED_AT))
    log.append({"second": 2})
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"earlier":true}'
    assert json.loads(lines[1]) == EXPECTED
    assert lines[2] == '{"second":2}'
    assert len(lines) == 3


def test_missing_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "var" / "log" / "venice-proxy" / "audit.jsonl"
    log = AuditLog(path)
    log.append({"n": 1})
    log.append({"n": 2})  # the folders exist now: no error
    assert path.read_text(encoding="utf-8") == '{"n":1}\n{"n":2}\n'


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    record = {"model": "m" * 5000}

    def write() -> None:
        for _ in range(20):
            log.append(record)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 80
    assert all(json.loads(line) == record for line in lines)
