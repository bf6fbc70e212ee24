"""The software tier on real captures: event log replay, compose hash binding, dev images, pins."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from proxy.attestation import (
    AttestationPolicy,
    AttestationReport,
    MeasurementPins,
    parse_attestation,
    parse_tdx_quote,
    verify_evidence,
)
from proxy.attestation.eventlog import (
    DSTACK_RUNTIME_EVENT_TYPE,
    Event,
    EventLogError,
    parse_event,
    parse_event_log,
    replay,
    runtime_claim,
    runtime_digest,
)
from proxy.attestation.software import is_dev_image
from tests.support.attestation_helpers import (
    FIXTURE_IDS,
    FIXTURE_LIST,
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    collateral_of,
    flip_quote_byte,
    nonce_of,
    policy_for,
    quote_of,
    time_of,
    with_quote,
)

GLM = FIXTURES_BY_NAME["glm_5_1"]
GEMMA = FIXTURES_BY_NAME["gemma_3_27b_p"]
ACI = FIXTURES_BY_NAME["live_evidence_aci"]
DEV_FIXTURES = [fixture for fixture in FIXTURE_LIST if fixture.dev_image]
PRODUCTION_FIXTURES = [fixture for fixture in FIXTURE_LIST if not fixture.dev_image]
WITH_APP_COMPOSE = [fixture for fixture in FIXTURE_LIST if fixture.shape != "aci"]
MR_CONFIG_ID_OFFSET = 232
SOFTWARE = ("event_log_replay", "compose_hash_binding", "os_image_not_dev", "measurements_pinned")

EventList = list[dict[str, Any]]


def run(
    fixture: Fixture, body: dict[str, Any] | None = None, *, policy: AttestationPolicy | None = None
) -> AttestationReport:
    return verify_evidence(
        parse_attestation(body if body is not None else body_of(fixture)),
        expected_model=fixture.model,
        nonce=nonce_of(fixture),
        policy=policy if policy is not None else policy_for(fixture),
        now=time_of(fixture),
        collateral=collateral_of(fixture),
    )


def failed(report: AttestationReport) -> set[str]:
    return {check.code for check in report.failures}


def map_event_logs(
    body: dict[str, Any], change: Callable[[EventList], EventList]
) -> dict[str, Any]:
    """Apply ``change`` to every copy of the event log, keeping each copy's encoding."""

    def apply(value: Any) -> Any:
        if isinstance(value, str):
            return json.dumps(change(json.loads(value)))
        return change(value)

    if "event_log" in body:
        body["event_log"] = apply(body["event_log"])
    tcb_info = body.get("info", {}).get("tcb_info")
    if isinstance(tcb_info, dict) and "event_log" in tcb_info:
        tcb_info["event_log"] = apply(tcb_info["event_log"])
    evidence = body.get("attestation", {}).get("evidence")
    if isinstance(evidence, dict) and "event_log" in evidence:
        evidence["event_log"] = apply(evidence["event_log"])
    return body


def tcb_info_of(body: dict[str, Any]) -> dict[str, Any]:
    tcb_info: dict[str, Any] = body["info"]["tcb_info"]
    return tcb_info


def seen_pins(fixture: Fixture) -> MeasurementPins:
    """Pins made of the values the capture shows (what a user would copy from the report)."""
    detail = run(fixture).check("measurements_pinned").detail
    values = dict(item.split("=") for item in detail.split("; seen ")[1].split())
    return MeasurementPins(**{name: (value,) for name, value in values.items()})


# --- every real capture ---------------------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_real_captures_pass_the_software_checks(fixture: Fixture) -> None:
    report = run(fixture)
    assert report.passed
    for code in ("event_log_replay", "compose_hash_binding"):
        check = report.check(code)
        assert (check.ok, check.enforced, check.tier) == (True, True, "software")
    assert "30 events replay RTMR0-3" in report.check("event_log_replay").detail
    binding = report.check("compose_hash_binding").detail
    assert "bound by mr_config_id and the compose-hash event" in binding
    quote = parse_tdx_quote(parse_attestation(body_of(fixture)).intel_quote)
    assert quote.report.mr_config_id[1:33].hex() in binding


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_without_pins_the_values_seen_are_listed_and_not_enforced(fixture: Fixture) -> None:
    check = run(fixture).check("measurements_pinned")
    assert (check.ok, check.enforced) == (None, False)
    quote = parse_tdx_quote(parse_attestation(body_of(fixture)).intel_quote)
    assert f"mrtd={quote.report.mr_td.hex()}" in check.detail
    assert f"rtmr2={quote.report.rtmr2.hex()}" in check.detail
    assert "unknown" not in check.detail
    assert fixture.model in check.detail


@pytest.mark.parametrize("fixture", PRODUCTION_FIXTURES, ids=lambda f: f.name)
def test_production_images_pass_os_image_not_dev(fixture: Fixture) -> None:
    check = run(fixture, policy=AttestationPolicy()).check("os_image_not_dev")
    assert (check.ok, check.enforced) == (True, True)
    assert "dstack-nvidia-0.5.5" in check.detail


@pytest.mark.parametrize("fixture", DEV_FIXTURES, ids=lambda f: f.name)
def test_dev_images_fail_by_default_and_only_inform_when_allowed(fixture: Fixture) -> None:
    strict = run(fixture, policy=replace(policy_for(fixture), allow_dev_image=False))
    assert failed(strict) == {"os_image_not_dev"}
    assert "dev image" in strict.check("os_image_not_dev").detail
    tolerant = run(fixture).check("os_image_not_dev")
    assert (tolerant.ok, tolerant.enforced) == (False, False)
    assert "allowed by policy" in tolerant.detail


def test_checks_are_software_tier_and_in_order() -> None:
    report = run(GLM)
    codes = [check.code for check in report.checks]
    start = codes.index(SOFTWARE[0])
    assert tuple(codes[start : start + 4]) == SOFTWARE
    assert {check.tier for check in report.checks[start : start + 4]} == {"software"}


# --- event_log_replay -----------------------------------------------------------------------


def _flip_boot_digest(events: EventList) -> EventList:
    index = next(i for i, event in enumerate(events) if event["imr"] == 1)
    digest = bytearray(bytes.fromhex(events[index]["digest"]))
    digest[0] ^= 0x01
    events[index]["digest"] = digest.hex()
    return events


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_changed_event_digest_fails_event_log_replay_only(fixture: Fixture) -> None:
    report = run(fixture, map_event_logs(body_of(fixture), _flip_boot_digest))
    assert failed(report) == {"event_log_replay"}
    assert "RTMR1 differ" in report.check("event_log_replay").detail


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_changed_compose_hash_event_payload_fails_event_log_replay(fixture: Fixture) -> None:
    def change(events: EventList) -> EventList:
        for event in events:
            if event["event"] == "compose-hash":
                event["event_payload"] = "00" * 32
        return events

    report = run(fixture, map_event_logs(body_of(fixture), change))
    # mr_config_id still binds the compose hash, so only the log itself is blamed.
    assert failed(report) == {"event_log_replay"}
    detail = report.check("event_log_replay").detail
    assert "does not match its type, name and payload" in detail or "RTMR3 differ" in detail


def test_only_one_of_two_logs_doctored_still_fails() -> None:
    body = body_of(GLM)
    _flip_boot_digest(tcb_info_of(body)["event_log"])
    report = run(GLM, body)
    assert failed(report) == {"event_log_replay"}
    assert report.check("event_log_replay").detail.startswith("info.tcb_info.event_log")


@pytest.mark.parametrize("fixture", [GLM, GEMMA, ACI], ids=lambda f: f.name)
def test_missing_event_log_is_not_evaluated_and_fails_closed(fixture: Fixture) -> None:
    body = body_of(fixture)
    body.pop("event_log", None)
    if "info" in body and isinstance(body["info"].get("tcb_info"), dict):
        body["info"]["tcb_info"].pop("event_log", None)
    if "attestation" in body:
        body["attestation"]["evidence"].pop("event_log", None)
    report = run(fixture, body)
    check = report.check("event_log_replay")
    assert (check.ok, check.enforced) == (None, True)
    assert failed(report) == {"event_log_replay"}
    assert "bound by mr_config_id;" in report.check("compose_hash_binding").detail
    off = run(fixture, body, policy=replace(policy_for(fixture), software="off"))
    assert off.check("event_log_replay").enforced is False
    if fixture.shape == "aci":
        # The gateway's app id is read from the log: custody cannot be checked without it.
        assert failed(off) == {"custody_kms_root", "gateway_app_id"}
    else:
        assert off.passed


def test_malformed_event_log_entry_fails_with_its_index() -> None:
    body = body_of(GLM)
    body["event_log"][4]["imr"] = 7
    report = run(GLM, body)
    assert failed(report) == {"event_log_replay"}
    assert "event 4: imr 7" in report.check("event_log_replay").detail


# --- compose_hash_binding -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", WITH_APP_COMPOSE, ids=lambda f: f.name)
def test_changed_app_compose_fails_compose_hash_binding_only(fixture: Fixture) -> None:
    body = body_of(fixture)
    tcb_info = tcb_info_of(body)
    tcb_info["app_compose"] = tcb_info["app_compose"].replace('"runner"', '"Runner"', 1)
    report = run(fixture, body)
    assert failed(report) == {"compose_hash_binding"}
    assert report.check("compose_hash_binding").detail.startswith("sha256(app_compose)")


@pytest.mark.parametrize("fixture", WITH_APP_COMPOSE, ids=lambda f: f.name)
def test_changed_stated_compose_hash_fails_compose_hash_binding(fixture: Fixture) -> None:
    body = body_of(fixture)
    body["info"]["compose_hash"] = "11" * 32
    report = run(fixture, body)
    assert failed(report) == {"compose_hash_binding"}
    assert report.check("compose_hash_binding").detail.startswith("info.compose_hash 1111")


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_changed_mr_config_id_disagrees_with_the_event_log(fixture: Fixture) -> None:
    report = run(fixture, flip_quote_byte(body_of(fixture), MR_CONFIG_ID_OFFSET + 5))
    assert failed(report) == {"compose_hash_binding", "dcap"}
    assert " but the compose-hash event binds " in report.check("compose_hash_binding").detail


def test_aci_has_no_app_compose_and_passes_on_the_binding_alone() -> None:
    detail = run(ACI).check("compose_hash_binding").detail
    assert "the report carries no app_compose to hash" in detail


def test_a_null_app_compose_in_tcb_info_does_not_hide_an_unbound_one_in_info() -> None:
    # The compose facts read info.app_compose when tcb_info's is null (compose.app_compose_of);
    # the binding must hash that same manifest, or a forged one would be judged as measured.
    body = body_of(GEMMA)
    manifest = json.loads(tcb_info_of(body)["app_compose"])
    pinned = "vllm/vllm-openai@sha256:" + "ab" * 32
    manifest["docker_compose_file"] = f"services:\n  vllm:\n    image: {pinned}\n"
    forged = json.dumps(manifest)
    tcb_info_of(body)["app_compose"] = None
    body["info"]["app_compose"] = forged
    strict = replace(policy_for(GEMMA), allow_unpinned_images=False)
    report = run(GEMMA, body, policy=strict)
    assert failed(report) == {"compose_hash_binding"}
    forged_hash = hashlib.sha256(forged.encode()).hexdigest()
    assert report.check("compose_hash_binding").detail.startswith(
        f"sha256(app_compose) {forged_hash} != compose hash "
    )
    images = report.check("compose_images_pinned")
    assert (images.ok, images.enforced) == (False, False)
    assert images.detail == "not evaluated: compose_hash_binding failed"


def test_no_compose_hash_bound_at_all_is_not_evaluated() -> None:
    body = map_event_logs(body_of(GLM), _drop_runtime_event("compose-hash"))
    # Dropping the event also changes RTMR3; and mr_config_id is zeroed in a copy of the quote.
    body = _with_mr_config_id(body, bytes(48))
    report = run(GLM, body, policy=AttestationPolicy(dcap="off"))
    check = report.check("compose_hash_binding")
    assert (check.ok, check.enforced) == (None, True)
    assert "mr_config_id is zero" in check.detail


def _drop_runtime_event(name: str) -> Callable[[EventList], EventList]:
    def change(events: EventList) -> EventList:
        return [event for event in events if event["event"] != name]

    return change


def _with_mr_config_id(body: dict[str, Any], value: bytes) -> dict[str, Any]:
    quote = bytearray(quote_of(body))
    quote[MR_CONFIG_ID_OFFSET : MR_CONFIG_ID_OFFSET + 48] = value
    return with_quote(body, bytes(quote))


# --- os_image_not_dev -----------------------------------------------------------------------


def test_vm_config_image_hash_disagreeing_with_the_measured_one_fails() -> None:
    body = body_of(GLM)
    vm_config = json.loads(body["info"]["vm_config"])
    vm_config["os_image_hash"] = "22" * 32
    body["info"]["vm_config"] = json.dumps(vm_config)
    report = run(GLM, body)
    assert failed(report) == {"os_image_not_dev"}
    assert "measured in RTMR3" in report.check("os_image_not_dev").detail


def test_dev_image_name_on_a_production_capture_fails() -> None:
    body = body_of(GLM)
    body["info"]["vm_config"] = body["info"]["vm_config"].replace(
        "dstack-nvidia-0.5.5", "dstack-nvidia-dev-0.5.5"
    )
    assert failed(run(GLM, body)) == {"os_image_not_dev"}


def test_missing_vm_config_is_not_evaluated() -> None:
    body = body_of(GLM)
    del body["info"]["vm_config"]
    check = run(GLM, body).check("os_image_not_dev")
    assert (check.ok, check.enforced) == (None, True)


@pytest.mark.parametrize(
    ("name", "dev"),
    [
        ("dstack-nvidia-dev-0.5.8-e3e677dd", True),
        ("dstack-dev-0.5.9-de9c74f0", True),
        ("dstack_debug_0.5", True),
        ("dstack-nvidia-devel.1", True),
        ("dstack-nvidia-0.5.5", False),
        ("devstack-0.5", False),
        ("dstack-device-0.5", False),
        ("dstack/dev:0.5", True),
        ("dstack:debug", True),
        ("dstack+devel", True),
        ("dstack nvidia dev", True),
        ("DSTACK-DEV", True),
        ("dev", True),
        ("dstack/nvidia:0.5.5", False),
        ("dstack-developer-0.5", False),
        ("", False),
    ],
)
def test_dev_image_names(name: str, dev: bool) -> None:
    assert is_dev_image(name) is dev


# --- measurements_pinned --------------------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_pins_copied_from_the_report_pass(fixture: Fixture) -> None:
    pins = seen_pins(fixture)
    policy = replace(policy_for(fixture), pins={fixture.model: pins})
    check = run(fixture, policy=policy).check("measurements_pinned")
    assert (check.ok, check.enforced) == (True, True)
    assert "mrtd, rtmr0, rtmr1, rtmr2, compose_hash, os_image_hash match" in check.detail


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
@pytest.mark.parametrize("field", ["mrtd", "rtmr1", "compose_hash", "os_image_hash"])
def test_a_pin_mismatch_fails_measurements_pinned_only(fixture: Fixture, field: str) -> None:
    pins = seen_pins(fixture)
    value = getattr(pins, field)[0]
    other = ("0" if value[0] != "0" else "1") + value[1:]
    pins = replace(pins, **{field: (other,)})
    report = run(fixture, policy=replace(policy_for(fixture), pins={fixture.model: pins}))
    assert failed(report) == {"measurements_pinned"}
    assert f"{field} {value} is not one of the 1 pinned values" in report.failures[0].detail


def test_pins_are_case_insensitive_and_accept_several_values() -> None:
    pins = seen_pins(GLM)
    shouting = MeasurementPins(
        mrtd=("0x" + "ab" * 48, "0X" + pins.mrtd[0].upper()), compose_hash=pins.compose_hash
    )
    check = run(GLM, policy=AttestationPolicy(pins={GLM.model: shouting})).check(
        "measurements_pinned"
    )
    assert check.ok is True
    assert "mrtd, compose_hash match" in check.detail


def test_pins_for_another_model_do_not_apply() -> None:
    policy = AttestationPolicy(pins={"e2ee-other": MeasurementPins(mrtd=("00" * 48,))})
    check = run(GLM, policy=policy).check("measurements_pinned")
    assert (check.ok, check.enforced) == (None, False)


def test_empty_pins_count_as_no_pins() -> None:
    check = run(GLM, policy=AttestationPolicy(pins={GLM.model: MeasurementPins()})).check(
        "measurements_pinned"
    )
    assert (check.ok, check.enforced) == (None, False)


def test_a_pinned_value_the_attestation_cannot_bind_fails() -> None:
    body = map_event_logs(body_of(GLM), _flip_boot_digest)  # the log no longer replays
    pins = MeasurementPins(os_image_hash=seen_pins(GLM).os_image_hash)
    report = run(GLM, body, policy=AttestationPolicy(pins={GLM.model: pins}))
    assert failed(report) == {"event_log_replay", "measurements_pinned"}
    assert "does not bind one" in report.check("measurements_pinned").detail


@pytest.mark.parametrize(
    "arguments",
    [{"mrtd": ("ab" * 47,)}, {"rtmr0": ("zz" * 48,)}, {"compose_hash": "ab" * 32}, {"rtmr2": (1,)}],
)
def test_malformed_pins_are_rejected_when_built(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="pins"):
        MeasurementPins(**arguments)


def test_unknown_software_mode_is_strict() -> None:
    body = body_of(GLM)
    body.pop("event_log")
    body["info"]["tcb_info"].pop("event_log")
    policy = AttestationPolicy(software="optional")  # type: ignore[arg-type]
    assert failed(run(GLM, body, policy=policy)) == {"event_log_replay"}


# --- the event log module -------------------------------------------------------------------


def _runtime(name: str, payload: bytes = b"") -> Event:
    digest = runtime_digest(DSTACK_RUNTIME_EVENT_TYPE, name, payload)
    return Event(3, DSTACK_RUNTIME_EVENT_TYPE, digest, name, payload)


def test_runtime_digest_reproduces_a_real_event() -> None:
    event = next(e for e in body_of(GLM)["event_log"] if e["event"] == "compose-hash")
    digest = runtime_digest(
        event["event_type"], "compose-hash", bytes.fromhex(event["event_payload"])
    )
    assert digest.hex() == event["digest"]


def test_empty_runtime_digests_are_derived_as_in_the_phala_log() -> None:
    top = parse_event_log(body_of(GEMMA)["event_log"], "event_log")
    nested = parse_event_log(tcb_info_of(body_of(GEMMA))["event_log"], "tcb")
    assert [e.digest for e in top.events] == [e.digest for e in nested.events]
    quote = parse_tdx_quote(parse_attestation(body_of(GEMMA)).intel_quote)
    assert replay(top.events) == quote.report.rtmrs


def test_replay_of_nothing_is_zero() -> None:
    assert replay([]) == (bytes(48),) * 4
    one = _runtime("x")
    assert replay([one])[3] == hashlib.sha384(bytes(48) + one.digest).digest()


def test_runtime_claim_rules() -> None:
    compose = _runtime("compose-hash", b"\x01" * 32)
    boot_done = _runtime("boot-mr-done")
    assert runtime_claim([compose, boot_done], "compose-hash") == b"\x01" * 32
    assert runtime_claim([boot_done], "compose-hash") is None
    with pytest.raises(EventLogError, match="occurs 2 times"):
        runtime_claim([compose, boot_done, _runtime("compose-hash", b"\x02" * 32)], "compose-hash")
    with pytest.raises(EventLogError, match="comes after 'boot-mr-done'"):
        runtime_claim([boot_done, compose], "compose-hash")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"imr": True, "event_type": 1, "digest": "00" * 48}, "imr is not an integer"),
        ({"imr": 0, "event_type": 1, "digest": "00" * 47}, "47 bytes"),
        ({"imr": 0, "event_type": 1, "digest": "xyz"}, "digest is not hex"),
        ({"imr": 0, "event_type": 1, "digest": ""}, "0 bytes"),
        ({"imr": 3, "event_type": DSTACK_RUNTIME_EVENT_TYPE, "event": 5}, "name is not a string"),
        (
            {"imr": 3, "event_type": DSTACK_RUNTIME_EVENT_TYPE, "event": "a", "digest": "00" * 48},
            "does not match",
        ),
        ("not an object", "is not an object"),
    ],
)
def test_parse_event_rejects_malformed_entries(entry: Any, message: str) -> None:
    with pytest.raises(EventLogError, match=message):
        parse_event(entry, 0)


@pytest.mark.parametrize("value", ["[", "{}", 5])
def test_parse_event_log_rejects_non_lists(value: Any) -> None:
    with pytest.raises(EventLogError):
        parse_event_log(value, "event_log")
