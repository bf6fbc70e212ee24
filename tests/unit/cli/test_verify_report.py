"""``verify``'s report and exit status, called in-process on the real captures in
``tests/fixtures/attestations`` (no network, no subprocess): the tiered text, the JSON keys, the
exit status (0 only when every enforced check passed), the pins table and the input errors."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxy.attestation import AttestationPolicy, AttestationReport
from proxy.attestation.report import CheckResult
from proxy.cli import verify
from proxy.cli.verify import (
    INPUT_ERROR_CODES,
    VerifyInputError,
    print_error,
    print_report,
    render_pins,
    render_text,
    verify_offline,
)
from proxy.core.errors import AttestationError
from proxy.service.trust_state import TrustState
from tests.support.fixtures import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "attestations"
GLM = FIXTURES / "attestation_glm_5_1.json"
GLM_COLLATERAL = FIXTURES / "collateral_glm_5_1.json"
GLM_NONCE = "98cfe304560191241a08cc8a25038313c4725f18a95ba1bed09904da91ea85c6"
GLM_EPOCH = 1780598249
ACI = FIXTURES / "attestation_live_evidence.json"
ACI_COLLATERAL = FIXTURES / "collateral_live_evidence.json"
QWEN = "venice_qwen3_5_122b_20260424"
QWEN_NONCE = "ac82eb750ec4cfbb273f90d33567776bfae8657e2a43f6dff2f3adad9b86095a"
QWEN_AT = 1776995921
NONCE_ONLY = AttestationPolicy(nvidia="nonce")
NRAS = AttestationPolicy(nvidia="nras")  # the settings' default


def qwen(**extra: Any) -> AttestationReport:
    arguments: dict[str, Any] = {
        "nonce_hex": QWEN_NONCE,
        "collateral": FIXTURES / f"{QWEN}_collateral.json",
        "nras_response": FIXTURES / f"{QWEN}_nras_response.json",
        "nras_jwks": FIXTURES / f"{QWEN}_nras_jwks.json",
        "at": QWEN_AT,
        **extra,
    }
    return verify_offline(FIXTURES / f"{QWEN}_attestation.json", NRAS, **arguments)


def codes(report: AttestationReport) -> list[str]:
    return [check.code for check in report.failures]


# --- verify_offline on the real captures ---------------------------------------------------------


def test_a_capture_with_collateral_and_nras_passes_every_enforced_check() -> None:
    report = qwen()
    assert report.passed
    assert report.trust_level == "enclave"
    assert report.model == "e2ee-qwen3-5-122b-a10b"
    assert report.check("dcap").ok is True
    assert report.check("gpu_nras").ok is True
    assert report.nonce == QWEN_NONCE


def test_nras_answers_need_their_jwks_and_the_other_way_round() -> None:
    for missing in ("nras_response", "nras_jwks"):
        with pytest.raises(VerifyInputError) as caught:
            qwen(**{missing: None})
        assert str(caught.value) == "--nras-response and --nras-jwks go together"


def test_without_nras_answers_gpu_nras_fails_closed() -> None:
    report = qwen(nras_response=None, nras_jwks=None)
    assert not report.passed
    assert codes(report) == ["gpu_nras"]
    assert report.check("gpu_nras").ok is None
    assert print_report(report, as_json=False) == 1


def test_without_collateral_dcap_is_not_checked_and_fails() -> None:
    report = qwen(collateral=None)
    assert codes(report) == ["dcap"]
    assert report.check("dcap").ok is None
    assert report.check("dcap").enforced is True


def test_the_nonce_and_time_default_to_those_the_capture_recorded() -> None:
    report = verify_offline(GLM, NONCE_ONLY, nonce_hex=None, collateral=GLM_COLLATERAL)
    assert report.passed, codes(report)
    assert report.nonce == GLM_NONCE
    assert report.tcb_status == "UpToDate"
    # The capture's own time: a year later the collateral has expired and DCAP fails.
    late = verify_offline(
        GLM, NONCE_ONLY, nonce_hex=None, collateral=GLM_COLLATERAL, at=GLM_EPOCH + 400 * 86_400
    )
    assert codes(late) == ["dcap"]
    same = verify_offline(GLM, NONCE_ONLY, nonce_hex=None, collateral=GLM_COLLATERAL, at=GLM_EPOCH)
    assert same.passed


def test_a_capture_without_a_recorded_time_is_checked_now(monkeypatch: pytest.MonkeyPatch) -> None:
    # The qwen capture records neither nonce nor time: as of now, its collateral has expired.
    monkeypatch.setattr(time, "time", lambda: QWEN_AT)
    assert qwen(at=None).passed
    monkeypatch.setattr(time, "time", lambda: QWEN_AT + 400 * 86_400)
    assert "dcap" in codes(qwen(at=None))


def test_the_wrong_nonce_fails_the_nonce_checks() -> None:
    report = qwen(nonce_hex="00" * 32)
    assert {"nonce_echo", "report_data_nonce"} <= set(codes(report))
    assert print_report(report, as_json=True) == 1


@pytest.mark.parametrize(
    ("nonce", "message"),
    [
        ("zz" * 32, "--nonce must be 64 hex characters"),
        ("00" * 31, "--nonce must be 64 hex characters (32 bytes)"),
        ("00" * 33, "--nonce must be 64 hex characters (32 bytes)"),
    ],
)
def test_a_bad_nonce_is_unusable_input(nonce: str, message: str) -> None:
    with pytest.raises(VerifyInputError) as caught:
        qwen(nonce_hex=nonce)
    assert str(caught.value) == message


def test_a_capture_that_records_no_nonce_needs_one() -> None:
    with pytest.raises(VerifyInputError) as caught:
        verify_offline(FIXTURES / f"{QWEN}_attestation.json", NONCE_ONLY, nonce_hex=None)
    assert str(caught.value) == "--nonce is required: the file does not record its nonce"


def test_unreadable_or_invalid_files_are_unusable_input(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(VerifyInputError) as caught:
        verify_offline(missing, NONCE_ONLY, nonce_hex=GLM_NONCE)
    assert str(caught.value) == f"cannot read attestation {missing}: No such file or directory"
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(VerifyInputError) as caught:
        verify_offline(GLM, NONCE_ONLY, nonce_hex=None, collateral=broken)
    assert str(caught.value) == f"collateral {broken} is not valid JSON"
    with pytest.raises(VerifyInputError) as caught:
        qwen(nras_jwks=broken)
    assert str(caught.value) == f"NRAS JWKS {broken} is not valid JSON"
    with pytest.raises(VerifyInputError) as caught:
        qwen(nras_response=broken)
    assert str(caught.value) == f"NRAS response {broken} is not valid JSON"
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(VerifyInputError) as caught:
        verify_offline(latin, NONCE_ONLY, nonce_hex=GLM_NONCE)
    assert str(caught.value) == f"attestation {latin} is not valid JSON"


def test_the_model_checked_is_the_one_named_else_the_captures_own() -> None:
    named = verify_offline(
        GLM, NONCE_ONLY, nonce_hex=None, collateral=GLM_COLLATERAL, model="e2ee-other"
    )
    assert named.model == "e2ee-other"
    assert "model_match" in codes(named)
    own = verify_offline(GLM, NONCE_ONLY, nonce_hex=None, collateral=GLM_COLLATERAL)
    assert own.model == "e2ee-glm-5-1"


def test_a_remembered_enclave_refuses_the_gateway_capture_as_a_downgrade(tmp_path: Path) -> None:
    policy = AttestationPolicy(nvidia="nonce", gateway_models="allow", allow_dev_image=True)
    state = TrustState(tmp_path)
    allowed = verify_offline(
        ACI, policy, nonce_hex=None, collateral=ACI_COLLATERAL, trust_state=state
    )
    assert allowed.passed, codes(allowed)
    assert allowed.trust_level == "gateway"
    state.record("e2ee-venice-uncensored-24b-p", "enclave")
    refused = verify_offline(
        ACI, policy, nonce_hex=None, collateral=ACI_COLLATERAL, trust_state=state
    )
    assert codes(refused) == ["trust_not_downgraded"]
    assert f"remembered in {state.where}" in refused.check("trust_not_downgraded").detail


def test_the_gateway_capture_is_refused_as_gateway_by_default() -> None:
    policy = AttestationPolicy(nvidia="nonce", allow_dev_image=True)
    report = verify_offline(ACI, policy, nonce_hex=None, collateral=ACI_COLLATERAL)
    assert report.trust_level == "gateway"
    assert codes(report) == ["trust_level"]


# --- the text report -----------------------------------------------------------------------------


def synthetic(*checks: CheckResult, **extra: Any) -> dict[str, Any]:
    report = AttestationReport(
        model="e2ee-m",
        nonce="00" * 32,
        shape="aci",
        signing_address="0x" + "ab" * 20,
        signing_public_key=None,
        tcb_status="UpToDate",
        checks=checks,
        tee_provider="phala",
        trust_level="gateway",
        attested="the gateway",
        not_attested=("the inference host", "the model weights"),
        **extra,
    )
    return report.to_dict()


def test_the_text_report_leads_with_the_trust_level_and_marks_each_check() -> None:
    document = synthetic(
        CheckResult("trust_level", True, True, "gateway allowed", "trust"),
        CheckResult("dcap", None, True, "not checked: no DCAP collateral", "quote"),
        CheckResult("gpu_nras", None, False, "nvidia = nonce", "gpu"),
        CheckResult("measurements_known", False, False, "rtmr0 unknown", "measurements"),
        CheckResult("quote_parse", True, True, "TDX quote v4", "quote"),
    )
    text = render_text(document, skipped=["DCAP (--no-dcap)"], weakened=["WEAKENED: x"])
    assert text == "\n".join(
        [
            "model           e2ee-m",
            "trust level     GATEWAY",
            "attested        the gateway",
            "NOT attested    the inference host",
            "NOT attested    the model weights",
            "signing address 0x" + "ab" * 20,
            "report shape    aci   TEE provider phala",
            "TCB status      UpToDate",
            "",
            "[not checked]",
            "  SKIP  DCAP (--no-dcap)",
            "",
            "[weakened by settings]",
            "  WARN  WEAKENED: x",
            "",
            "[trust]",
            "  PASS  trust_level                enforced  gateway allowed",
            "",
            "[quote]",
            # enforced and not evaluated fails closed: never SKIP, never PASS
            "  FAIL  dcap                       enforced  not checked: no DCAP collateral",
            "  PASS  quote_parse                enforced  TDX quote v4",
            "",
            "[gpu]",
            "  SKIP  gpu_nras                   advisory  nvidia = nonce",
            "",
            "[measurements]",
            "  FAIL  measurements_known         advisory  rtmr0 unknown",
            "",
            "to proceed (dcap): give --collateral FILE (Intel collateral for this quote), or "
            "--no-dcap to skip DCAP knowingly",
            "attestation FAILED: dcap",
        ]
    )


def test_a_passing_report_names_its_trust_level_and_no_sections_are_empty() -> None:
    document = synthetic(CheckResult("trust_level", True, True, "gateway allowed", "trust"))
    text = render_text(document)
    assert "[not checked]" not in text
    assert "[weakened by settings]" not in text
    assert "to proceed" not in text
    assert text.endswith(
        "TCB status      UpToDate\n\n[trust]\n"
        "  PASS  trust_level                enforced  gateway allowed\n\n"
        "attestation PASSED (trust level gateway)"
    )


def test_every_failure_with_a_way_forward_names_it() -> None:
    document = synthetic(
        CheckResult("gpu_nras", False, True, "no answer", "gpu"),
        CheckResult("quote_parse", False, True, "bad", "quote"),
        CheckResult("trust_level", False, True, "gateway refused", "trust"),
        CheckResult("trust_not_downgraded", False, True, "was enclave", "trust"),
    )
    lines = render_text(document).splitlines()
    assert lines[-4:] == [
        "to proceed (gpu_nras): give --nras-response FILE --nras-jwks FILE, or --no-nras to "
        "skip NRAS knowingly",
        'to proceed (trust_level): set attestation.gateway_models = "allow" (or pass '
        "--allow-gateway) to accept gateway trust",
        "to proceed (trust_not_downgraded): run `venice-e2ee-proxy trust accept MODEL` to "
        "accept the downgrade",
        "attestation FAILED: gpu_nras, quote_parse, trust_level, trust_not_downgraded",
    ]


def test_an_odd_result_is_never_shown_as_a_pass() -> None:
    document = synthetic(CheckResult("trust_level", True, True, "ok", "trust"))
    document["checks"].append(
        {"code": "x", "ok": "yes", "enforced": False, "detail": "d", "tier": "trust"}
    )
    assert "  ????  x                          advisory  d" in render_text(document)
    assert "[None]" in render_text({"checks": [{"ok": True}]})


def test_the_real_report_in_text_is_tiered_in_report_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert print_report(qwen(), as_json=False, skipped=["S"], weakened=["W"]) == 0
    out = capsys.readouterr().out
    tiers = [line for line in out.splitlines() if line.startswith("[")]
    assert tiers == [
        "[not checked]",
        "[weakened by settings]",
        "[response]",
        "[binding]",
        "[quote]",
        "[gpu]",
        "[software]",
        "[measurements]",
        "[custody]",
        "[trust]",
    ]
    assert out.endswith("attestation PASSED (trust level enclave)\n")
    assert "  PASS  dcap                       enforced  TCB status UpToDate\n" in out


# --- JSON and the exit status --------------------------------------------------------------------


def test_json_is_the_report_with_what_was_not_checked_and_what_was_weakened(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = qwen()
    assert print_report(report, as_json=True, skipped=["S"], weakened=["W"]) == 0
    out = capsys.readouterr().out
    document = json.loads(out)
    assert document == {**report.to_dict(), "not_checked": ["S"], "weakened": ["W"]}
    assert out.startswith('{\n  "model": "e2ee-qwen3-5-122b-a10b",\n')
    assert print_report(report, as_json=True) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["not_checked"] == []
    assert document["weakened"] == []
    assert document["passed"] is True
    assert document["failures"] == []


def test_exit_status_is_0_only_when_every_enforced_check_passed() -> None:
    passing = AttestationReport(
        "m", "n", "near", "0x", None, None, (CheckResult("a", True, True, "", "trust"),)
    )
    advisory_failed = replace(
        passing,
        checks=(*passing.checks, CheckResult("b", False, False, "", "measurements")),
    )
    not_evaluated = replace(
        passing, checks=(*passing.checks, CheckResult("c", None, True, "", "quote"))
    )
    empty = replace(passing, checks=())
    assert print_report(passing, as_json=False) == 0
    assert print_report(advisory_failed, as_json=True) == 0
    assert print_report(not_evaluated, as_json=False) == 1
    assert print_report(empty, as_json=True) == 1


# --- errors --------------------------------------------------------------------------------------


def test_errors_are_printed_as_text_or_json(capsys: pytest.CaptureFixture[str]) -> None:
    error = AttestationError("unknown shape", code="attestation_shape_unknown")
    print_error(error, as_json=False)
    assert capsys.readouterr().out == "error (attestation_shape_unknown): unknown shape\n"
    print_error(error, as_json=True)
    assert json.loads(capsys.readouterr().out) == error.to_body()
    print_error(VerifyInputError("--nonce is required"), as_json=False)
    assert capsys.readouterr().out == "error: --nonce is required\n"
    print_error(VerifyInputError("--nonce is required"), as_json=True)
    assert capsys.readouterr().out == '{"error": {"message": "--nonce is required"}}\n'


def test_unusable_reports_are_the_input_errors() -> None:
    expected = {"attestation_shape_unknown", "signing_algo_unsupported", "capture_invalid"}
    assert expected == INPUT_ERROR_CODES


# --- pins ----------------------------------------------------------------------------------------


def test_pins_print_each_measurement_and_whether_it_is_known() -> None:
    report = verify_offline(GLM, NONCE_ONLY, nonce_hex=None, collateral=GLM_COLLATERAL)
    text = render_pins(report)
    lines = text.splitlines()
    assert lines[:4] == [
        "# Measurements of e2ee-glm-5-1 (trust level enclave), from a fresh attestation.",
        "# Paste into your config file to refuse any other value. Lists: during a rollout keep",
        "# the old value next to the new one. Check new values before you trust them.",
        '[attestation.pins."e2ee-glm-5-1"]',
    ]
    measurements = report.facts["measurements"]
    assert lines[4] == f'mrtd = ["{measurements["mrtd"]}"]'
    assert lines[5].startswith(f'rtmr0 = ["{measurements["rtmr0"]}"]  # known: near-ai, ')
    assert lines[9] == f'os_image_hash = ["{measurements["os_image_hash"]}"]'
    assert len(lines) == 10
    assert render_pins(report, offline=True).splitlines()[0].endswith("from a saved attestation.")


def test_pins_say_what_is_unknown_unbound_or_failed() -> None:
    base = verify_offline(GLM, NONCE_ONLY, nonce_hex=None, collateral=GLM_COLLATERAL)
    facts = {
        "measurements": {
            "mrtd": "aa",
            "rtmr0": "bb",
            "rtmr1": "",
            "known": {"mrtd": "", "rtmr0": "release 1"},
        }
    }
    failed = replace(
        base,
        facts=facts,
        checks=(*base.checks, CheckResult("dcap", False, True, "", "quote")),
    )
    assert render_pins(failed).splitlines()[3:] == [
        "# WARNING: this attestation did NOT pass (dcap); do not pin blindly",
        '[attestation.pins."e2ee-glm-5-1"]',
        'mrtd = ["aa"]  # NOT in the shipped policy',
        'rtmr0 = ["bb"]  # known: release 1',
        "# rtmr1: not bound by this attestation",
        "# rtmr2: not bound by this attestation",
        "# compose_hash: not bound by this attestation",
        "# os_image_hash: not bound by this attestation",
    ]
    assert verify.PIN_NAMES == ("mrtd", "rtmr0", "rtmr1", "rtmr2", "compose_hash", "os_image_hash")
    bare = replace(base, facts={})
    assert render_pins(bare).splitlines()[4] == "# mrtd: not bound by this attestation"


# --- edges of the inputs ------------------------------------------------------------------------


def glm_with(tmp_path: Path, **attestation: Any) -> Path:
    document = json.loads(GLM.read_text(encoding="utf-8"))
    for name, value in attestation.items():
        if value is None:
            document["attestation"].pop(name, None)
        else:
            document["attestation"][name] = value
    path = tmp_path / "capture.json"
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


def test_captures_are_read_as_utf_8_whatever_the_locale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As for a user whose locale is Latin-1 (LANG=de_DE.ISO-8859-1): pathlib asks io for the
    # locale's encoding when none is given.
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "latin-1")
    path = glm_with(tmp_path, model="e2ee-glm-5-1-é")
    report = verify_offline(path, NONCE_ONLY, nonce_hex=None, collateral=GLM_COLLATERAL)
    assert report.model == "e2ee-glm-5-1-é"


def test_a_capture_naming_no_model_is_checked_against_none(tmp_path: Path) -> None:
    path = glm_with(tmp_path, model=None)
    report = verify_offline(path, NONCE_ONLY, nonce_hex=None, collateral=GLM_COLLATERAL)
    assert report.model == ""
    assert "model_match" in codes(report)
    assert render_text(report.to_dict()).startswith("model           \n")


def test_a_document_without_checks_never_passes() -> None:
    text = render_text({})
    assert text.splitlines()[1] == "trust level     NONE"
    assert text.endswith("TCB status      None\n\nattestation FAILED: ")


def test_a_proxy_error_in_json_is_its_envelope_indented(capsys: pytest.CaptureFixture[str]) -> None:
    error = AttestationError("unknown shape", code="attestation_shape_unknown")
    print_error(error, as_json=True)
    assert capsys.readouterr().out == (
        "{\n"
        '  "error": {\n'
        '    "message": "unknown shape",\n'
        '    "type": "attestation_error",\n'
        '    "param": null,\n'
        '    "code": "attestation_shape_unknown"\n'
        "  }\n"
        "}\n"
    )


def test_pins_of_a_failed_attestation_name_every_failed_check() -> None:
    base = verify_offline(GLM, NONCE_ONLY, nonce_hex=None, collateral=GLM_COLLATERAL)
    failed = replace(
        base,
        checks=(
            *base.checks,
            CheckResult("dcap", False, True, "", "quote"),
            CheckResult("gpu_nras", None, True, "", "gpu"),
        ),
    )
    assert render_pins(failed).splitlines()[3] == (
        "# WARNING: this attestation did NOT pass (dcap, gpu_nras); do not pin blindly"
    )
