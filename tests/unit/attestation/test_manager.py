"""NEAR's compose manager quote (``compose_manager_quote``), check by check, on the real GLM-5.1
capture: its second quote, verified with dcap-qvl against Intel's collateral at the capture time.

What a user reads in the report: passed only when every part held (and DCAP off said so), each
failure named, "not evaluated" never shown as passed, an absent member reported as skipped, and
which compose files the authenticated actions deployed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest

from proxy.attestation import AttestationPolicy, parse_attestation, verify_quote_dcap
from proxy.attestation.manager import ManagerFacts, _facts, compose_manager_check
from proxy.attestation.quote import TdxQuote, parse_tdx_quote
from proxy.service.dcap_collateral import next_update
from tests.support.attestation_helpers import (
    FIXTURES_BY_NAME,
    body_of,
    collateral_of,
    nonce_of,
    time_of,
)

GLM = FIXTURES_BY_NAME["glm_5_1"]
NONCE = nonce_of(GLM)
AT = time_of(GLM)
COLLATERAL = collateral_of(GLM)
MAIN = parse_tdx_quote(parse_attestation(body_of(GLM)).intel_quote)
STRICT = AttestationPolicy()
NO_DCAP = AttestationPolicy(dcap="off")
DEPLOYED = (
    "GLM-5.1.yaml (proxy-glm51)",
    "GLM-5.1.yaml (model-proxy-registrar)",
    "GLM-5.1.yaml (proxy-glm51, model-proxy-registrar)",
)
PASSED = (
    "second quote from the same CVM binds actions_hash and our nonce; DCAP UpToDate; "
    "3 compose_up actions authenticated"
)
TD_ATTRIBUTES = 48 + 120  # the TD report's td_attributes in a v4 quote


def member() -> dict[str, Any]:
    value = body_of(GLM)["compose_manager_attestation"]
    assert isinstance(value, dict)
    return value


def with_quote_byte(value: dict[str, Any], offset: int, mask: int) -> dict[str, Any]:
    quote = bytearray(bytes.fromhex(value["quote"]))
    quote[offset] ^= mask
    value["quote"] = quote.hex()
    return value


def check(
    value: Any,
    *,
    main: TdxQuote | None = MAIN,
    nonce: bytes = NONCE,
    policy: AttestationPolicy = STRICT,
    collateral: Any = COLLATERAL,
    enforced: bool = True,
) -> tuple[tuple[bool | None, bool, str], ManagerFacts | None]:
    raw = {} if value is None else {"compose_manager_attestation": value}
    result, facts = compose_manager_check(
        raw,
        main,
        "quote_parse",
        nonce=nonce,
        policy=policy,
        now=AT,
        collateral=collateral,
        enforced=enforced,
    )
    assert (result.code, result.tier) == ("compose_manager_quote", "quote")
    return (result.ok, result.enforced, result.detail), facts


# --- passed, and what it says ------------------------------------------------------------------


def test_the_real_second_quote_passes_and_names_what_was_deployed() -> None:
    assert check(member()) == ((True, True, PASSED), ManagerFacts(DEPLOYED, True))
    # a member sent as a JSON string is the same member
    assert check(json.dumps(member())) == ((True, True, PASSED), ManagerFacts(DEPLOYED, True))
    assert check(member(), enforced=False)[0] == (True, False, PASSED)


def test_with_dcap_off_it_says_the_signature_was_not_verified() -> None:
    (ok, enforced, detail), _ = check(member(), policy=NO_DCAP, collateral=None)
    assert (ok, enforced) == (True, True)
    assert detail == (
        "second quote from the same CVM binds actions_hash and our nonce; DCAP off (its "
        "signature not verified); 3 compose_up actions authenticated"
    )


def test_an_actions_list_that_is_missing_is_reported_not_used() -> None:
    value = member()
    del value["actions"]
    (ok, _, detail), facts = check(value)
    assert ok is True
    assert detail.endswith(
        "; DCAP UpToDate; its actions list does not hash to actions_hash as sent (not used)"
    )
    assert facts == ManagerFacts((), False)


# --- skipped, not evaluated, failed ------------------------------------------------------------


def test_no_member_is_skipped_and_a_failed_main_quote_is_not_evaluated() -> None:
    assert check(None) == ((None, False, "no compose_manager_attestation in this report"), None)
    assert check(member(), main=None) == (
        (False, False, "not evaluated: quote_parse failed"),
        None,
    )


@pytest.mark.parametrize("value", ["{not json", "[1, 2]", [1, 2], 7, {}])
def test_a_member_that_is_not_an_object_with_a_quote_fails(value: Any) -> None:
    (ok, enforced, detail), facts = check(value)
    assert (ok, enforced, facts) == (False, True, None)
    assert detail.startswith("its quote: ")


def test_a_second_quote_that_does_not_parse_or_is_not_tdx_fails() -> None:
    value = member()
    value["quote"] = "00" * 100
    (ok, enforced, detail), facts = check(value, enforced=False)
    assert (ok, enforced, facts) == (False, False, None)
    assert detail.startswith("its quote: ")
    value = with_quote_byte(member(), 4, 0xFF)  # the header's tee_type: not TDX
    (ok, _, detail), _ = check(value, policy=NO_DCAP, collateral=None)
    assert ok is False
    assert detail.startswith("its quote: ")
    assert "TDX" in detail


def test_each_broken_binding_is_named_and_all_of_them_are_listed() -> None:
    value = with_quote_byte(member(), TD_ATTRIBUTES, 0x01)  # DEBUG
    other_nonce = bytes(32)
    (ok, enforced, detail), facts = check(value, nonce=other_nonce, policy=NO_DCAP, collateral=None)
    assert (ok, enforced, facts) == (False, True, None)
    assert detail == "its quote has the DEBUG bit set; REPORTDATA[32:64] is not our nonce"
    value = member()
    value["actions_hash"] = "00" * 32
    assert check(value)[0] == (False, True, "REPORTDATA[0:32] is not the stated actions_hash")
    value["actions_hash"] = 7
    assert check(value)[0] == (False, True, "REPORTDATA[0:32] is not the stated actions_hash")
    value["actions_hash"] = " " + member()["actions_hash"].upper() + "\n"
    assert check(value)[0][0] is True


def test_a_quote_from_another_cvm_names_every_measurement_that_differs() -> None:
    other = replace(
        MAIN,
        report=replace(
            MAIN.report,
            mr_td=bytes(48),
            mr_config_id=bytes(48),
            rtmrs=(bytes(48), bytes(48), bytes(48), MAIN.report.rtmrs[3]),
        ),
    )
    assert check(member(), main=other)[0] == (
        False,
        True,
        "not the same CVM as the main quote (mr_td, mr_config_id, rtmr0, rtmr1, rtmr2 differ)",
    )
    rtmrs = (*MAIN.report.rtmrs[:3], bytes(48))
    other = replace(MAIN, report=replace(MAIN.report, rtmrs=rtmrs))  # RTMR3 may differ
    assert check(member(), main=other)[0][0] is True


def test_an_event_log_that_does_not_replay_or_parse_fails() -> None:
    value = member()
    events = json.loads(value["event_log"])
    first = {event["imr"]: event for event in reversed(events)}
    for imr in (0, 2):
        first[imr]["digest"] = "00" * 48
    value["event_log"] = json.dumps(events)
    assert check(value)[0] == (
        False,
        True,
        "its event log does not replay (RTMR0, RTMR2 differ)",
    )
    value["event_log"] = "{not json"
    assert check(value)[0] == (
        False,
        True,
        "compose_manager_attestation.event_log is not valid JSON",
    )


# --- its DCAP ----------------------------------------------------------------------------------


def test_without_collateral_or_with_a_bad_signature_its_dcap_fails() -> None:
    assert check(member(), collateral=None)[0] == (
        False,
        True,
        "no DCAP collateral for its quote",
    )
    value = with_quote_byte(member(), 700, 0x01)  # inside the signature
    (ok, _, detail), _ = check(value)
    assert ok is False
    assert detail.startswith("its quote: ")
    # collateral of another platform does not verify it
    (ok, _, detail), _ = check(
        member(), collateral=collateral_of(FIXTURES_BY_NAME["gemma_3_27b_p"])
    )
    assert ok is False
    assert detail.startswith("its quote: ")


def test_its_tcb_status_must_be_allowed_by_policy() -> None:
    policy = AttestationPolicy(allowed_tcb_status=frozenset({"OutOfDate"}))
    assert check(member(), policy=policy)[0] == (
        False,
        True,
        "its TCB status UpToDate is not allowed by policy",
    )


def test_expired_collateral_fails_its_dcap() -> None:
    expiry = next_update(COLLATERAL)
    assert expiry is not None
    result, _ = compose_manager_check(
        {"compose_manager_attestation": member()},
        MAIN,
        "quote_parse",
        nonce=NONCE,
        policy=STRICT,
        now=int(expiry) + 31 * 24 * 3600,
        collateral=COLLATERAL,
        enforced=True,
    )
    assert result.ok is False
    assert result.detail.startswith("its quote: ")


def test_a_dcap_verified_report_that_differs_from_the_parsed_one_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def disagreeing(raw: bytes, collateral: Any, now: int) -> Any:
        verified = verify_quote_dcap(raw, collateral, now)
        rtmrs = (*verified.report.rtmrs[:3], bytes(48))
        return replace(verified, report=replace(verified.report, rtmrs=rtmrs))

    monkeypatch.setattr("proxy.attestation.manager.verify_quote_dcap", disagreeing)
    assert check(member())[0] == (
        False,
        True,
        "its DCAP-verified TD report differs from the parsed one",
    )


# --- which deployments the authenticated actions name ------------------------------------------


def _signed(actions: Any) -> dict[str, Any]:
    text = json.dumps(actions, separators=(",", ":"), ensure_ascii=False)
    return {"actions": actions, "actions_hash": hashlib.sha256(text.encode()).hexdigest()}


def test_deployments_name_each_file_and_at_most_eight_services_newest_three() -> None:
    services = [f"s{i}" for i in range(10)]
    actions = [
        {"action": "compose_up", "file": "a.yaml", "services": services},
        {"action": "compose_up", "file": "b.yaml", "services": "not-a-list"},
        {"action": "compose_up", "file": "c.yaml"},
        {"action": "compose_down", "file": "d.yaml"},
        {"action": "compose_up", "file": "é.yaml", "services": []},
        {"action": "compose_up", "file": "c.yaml"},  # a repeat is listed once
        "not an action",
    ]
    assert _facts(_signed(actions)) == ManagerFacts(("b.yaml", "c.yaml", "é.yaml"), True)
    assert _facts(_signed(actions[:1])) == ManagerFacts(
        ("a.yaml (s0, s1, s2, s3, s4, s5, s6, s7)",), True
    )
    assert _facts({"actions": actions, "actions_hash": None}) == ManagerFacts((), False)
    assert _facts({"actions": {"a": 1}, "actions_hash": _signed({"a": 1})["actions_hash"]}) == (
        ManagerFacts((), False)
    )


def test_the_actions_hash_covers_unescaped_utf8_as_sent() -> None:
    actions = [{"action": "compose_up", "file": "modèle.yaml", "services": ["vllm"]}]
    assert _facts(_signed(actions)) == ManagerFacts(("modèle.yaml (vllm)",), True)
    escaped = json.dumps(actions, separators=(",", ":"))
    stated = hashlib.sha256(escaped.encode()).hexdigest()
    assert _facts({"actions": actions, "actions_hash": stated}) == ManagerFacts((), False)
