"""software_checks on its own: the exact four results, on real captures and edited copies.

Each result is pinned whole (ok, enforced, detail): what failed, what was seen, and whether it
blocks. Where an edit must still replay, the copy of the quote gets RTMR0-3 (and mr_config_id)
rewritten to match: the software tier reads the quote's registers only (its signature is the
``dcap`` check's, which such a copy fails; see test_verify.py), so these results are what the
software tier alone decides.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from proxy.attestation import AttestationPolicy, MeasurementPins, parse_attestation, parse_tdx_quote
from proxy.attestation.eventlog import DSTACK_RUNTIME_EVENT_TYPE, parse_event_log, replay
from proxy.attestation.report import CheckResult
from proxy.attestation.software import (
    SOFTWARE_CHECK_CODES,
    bound_compose_hash,
    measured_claim,
    software_checks,
)
from tests.support.attestation_helpers import (
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    quote_of,
    with_quote,
)

GLM = FIXTURES_BY_NAME["glm_5_1"]
GEMMA = FIXTURES_BY_NAME["gemma_3_27b_p"]
ACI = FIXTURES_BY_NAME["live_evidence_aci"]
STRICT = AttestationPolicy()
OFF = AttestationPolicy(software="off")
RTMR_OFFSET = 376
MR_CONFIG_ID_OFFSET = 232
GLM_COMPOSE = "bdabc1ea194db60a0134214ffb7d6f7baeded797c9e228388fb28f4cd618bf29"
GLM_OS_IMAGE = "9b69bb1698bacbb6985409a2c272bcb892e09cdcea63d5399c6768b67d3ff677"
GLM_IMAGE = "'dstack-nvidia-0.5.5'"
GLM_PASS_COMPOSE = (
    f"compose hash {GLM_COMPOSE} bound by mr_config_id and the compose-hash event; "
    "app_compose hashes to it"
)
SKIPPED = "not evaluated: quote_parse failed"

Results = dict[str, tuple[bool | None, bool, str]]


def software(
    body: dict[str, Any],
    *,
    policy: AttestationPolicy = STRICT,
    model: str = GLM.model,
    failure: str = "",
) -> Results:
    """The four results as {code: (ok, enforced, detail)}; no quote when ``failure`` is set."""
    evidence = parse_attestation(body)
    quote = parse_tdx_quote(evidence.intel_quote) if not failure else None
    results = software_checks(evidence, quote, failure, policy, model)
    assert tuple(result.code for result in results) == SOFTWARE_CHECK_CODES
    assert {result.tier for result in results} == {"software"}
    return {result.code: _triple(result) for result in results}


def _triple(result: CheckResult) -> tuple[bool | None, bool, str]:
    return result.ok, result.enforced, result.detail


def seen_values(body: dict[str, Any]) -> dict[str, str]:
    report = parse_tdx_quote(parse_attestation(body).intel_quote).report
    return {
        "mrtd": report.mr_td.hex(),
        "rtmr0": report.rtmr0.hex(),
        "rtmr1": report.rtmr1.hex(),
        "rtmr2": report.rtmr2.hex(),
    }


def runtime_event(name: str, payload: bytes = b"") -> dict[str, Any]:
    """A dstack runtime event (RTMR3) whose digest the parser derives."""
    return {
        "imr": 3,
        "event_type": DSTACK_RUNTIME_EVENT_TYPE,
        "digest": "",
        "event": name,
        "event_payload": payload.hex(),
    }


def rebound(
    body: dict[str, Any],
    change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    *,
    mr_config_id: bytes | None = None,
) -> dict[str, Any]:
    """A NEAR body whose event log (both copies) went through ``change`` and whose copy of the
    quote has RTMR0-3 rewritten to the log's replay (and mr_config_id, when given)."""
    if change is not None:
        body["event_log"] = change(body["event_log"])
        body["info"]["tcb_info"]["event_log"] = copy.deepcopy(body["event_log"])
    registers = replay(parse_event_log(body["event_log"], "event_log").events)
    quote = bytearray(quote_of(body))
    for index, value in enumerate(registers):
        quote[RTMR_OFFSET + 48 * index : RTMR_OFFSET + 48 * (index + 1)] = value
    if mr_config_id is not None:
        quote[MR_CONFIG_ID_OFFSET : MR_CONFIG_ID_OFFSET + 48] = mr_config_id
    return with_quote(body, bytes(quote))


def without(name: str) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def change(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [event for event in events if event.get("event") != name]

    return change


def config_id(tag: int, compose_hash: str, tail: bytes = bytes(15)) -> bytes:
    return bytes([tag]) + bytes.fromhex(compose_hash) + tail


def vm_config(body: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(body["info"]["vm_config"])
    return value


def with_vm_config(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body["info"]["vm_config"] = json.dumps(vm_config(body) | changes)
    return body


# --- whole results on the real captures -----------------------------------------------------


def test_a_production_capture_passes_and_lists_what_it_saw() -> None:
    body = body_of(GLM)
    seen = " ".join(f"{name}={value}" for name, value in seen_values(body).items())
    assert software(body) == {
        "event_log_replay": (
            True,
            True,
            "30 events replay RTMR0-3 of the quote (event_log, info.tcb_info.event_log)",
        ),
        "compose_hash_binding": (True, True, GLM_PASS_COMPOSE),
        "os_image_not_dev": (True, True, f"image {GLM_IMAGE}, os_image_hash {GLM_OS_IMAGE}"),
        "measurements_pinned": (
            None,
            False,
            f"no pins for 'e2ee-glm-5-1'; seen {seen} "
            f"compose_hash={GLM_COMPOSE} os_image_hash={GLM_OS_IMAGE}",
        ),
    }


def test_the_software_mode_off_reports_the_same_results_unenforced() -> None:
    strict, off = software(body_of(GLM)), software(body_of(GLM), policy=OFF)
    for code in ("event_log_replay", "compose_hash_binding", "os_image_not_dev"):
        ok, _, detail = strict[code]
        assert off[code] == (ok, False, detail)
    assert off["measurements_pinned"] == strict["measurements_pinned"]


def test_the_aci_capture_names_its_log_and_has_no_manifest() -> None:
    results = software(body_of(ACI), model=ACI.model)
    assert results["event_log_replay"] == (
        True,
        True,
        "30 events replay RTMR0-3 of the quote (attestation.evidence.event_log)",
    )
    ok, enforced, detail = results["compose_hash_binding"]
    assert (ok, enforced) == (True, True)
    assert detail.endswith(
        "bound by mr_config_id and the compose-hash event; the report carries no app_compose "
        "to hash"
    )


@pytest.mark.parametrize(
    ("fixture", "image"),
    [(GEMMA, "dstack-nvidia-dev-0.5.8-e3e677dd"), (ACI, "dstack-dev-0.5.9-de9c74f0")],
    ids=lambda value: getattr(value, "name", value),
)
def test_a_dev_image_blocks_unless_allowed(fixture: Fixture, image: str) -> None:
    detail = f"image {image!r} is a dstack dev image (operator login possible)"
    strict = software(body_of(fixture), model=fixture.model)["os_image_not_dev"]
    assert strict == (False, True, detail)
    allowed = AttestationPolicy(allow_dev_image=True)
    tolerant = software(body_of(fixture), model=fixture.model, policy=allowed)
    assert tolerant["os_image_not_dev"] == (False, False, detail + "; allowed by policy")
    off = software(body_of(fixture), model=fixture.model, policy=OFF)
    assert off["os_image_not_dev"] == (False, False, detail)


# --- without a usable quote -----------------------------------------------------------------


@pytest.mark.parametrize("failure", ["quote_parse", "quote_tee_type"])
def test_without_a_quote_the_quote_bound_checks_fail_closed(failure: str) -> None:
    skipped = f"not evaluated: {failure} failed"
    unknown = " ".join(
        f"{name}=unknown"
        for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "compose_hash", "os_image_hash")
    )
    assert software(body_of(GLM), failure=failure) == {
        "event_log_replay": (False, True, skipped),
        "compose_hash_binding": (False, True, skipped),
        # The image name is read all the same; no hash is measured without a replayed log.
        "os_image_not_dev": (True, True, f"image {GLM_IMAGE}"),
        "measurements_pinned": (None, False, f"no pins for 'e2ee-glm-5-1'; seen {unknown}"),
    }
    off = software(body_of(GLM), failure=failure, policy=OFF)
    assert off["event_log_replay"] == off["compose_hash_binding"] == (False, False, skipped)


def test_pins_without_a_quote_fail_enforced_even_with_the_software_mode_off() -> None:
    pins = {GLM.model: MeasurementPins(compose_hash=(GLM_COMPOSE,))}
    for software_mode in ("require", "off"):
        policy = AttestationPolicy(software=software_mode, pins=pins)
        results = software(body_of(GLM), failure="quote_parse", policy=policy)
        assert results["measurements_pinned"] == (False, True, SKIPPED)


def test_no_event_log_is_reported_before_the_missing_quote() -> None:
    body = body_of(GLM)
    del body["event_log"]
    del body["info"]["tcb_info"]["event_log"]
    detail = "no event log in the attestation: RTMR0-3 cannot be explained"
    assert software(body, failure="quote_parse")["event_log_replay"] == (None, True, detail)
    assert software(body)["event_log_replay"] == (None, True, detail)
    assert software(body, policy=OFF)["event_log_replay"] == (None, False, detail)


# --- event_log_replay -----------------------------------------------------------------------


@pytest.mark.parametrize("empty", ["", [], None])
def test_an_empty_nested_log_is_no_log(empty: Any) -> None:
    body = body_of(GLM)
    body["info"]["tcb_info"]["event_log"] = empty
    replayed = software(body)["event_log_replay"]
    assert replayed == (True, True, "30 events replay RTMR0-3 of the quote (event_log)")


def test_the_nested_log_alone_is_replayed_under_its_name() -> None:
    body = body_of(GLM)
    del body["event_log"]
    replayed = software(body)["event_log_replay"]
    assert replayed == (
        True,
        True,
        "30 events replay RTMR0-3 of the quote (info.tcb_info.event_log)",
    )


def test_every_register_that_differs_is_named() -> None:
    body = body_of(GLM)
    quote = bytearray(quote_of(body))
    for index in (1, 3):
        quote[RTMR_OFFSET + 48 * index] ^= 0x01
    results = software(with_quote(body, bytes(quote)))
    assert results["event_log_replay"] == (
        False,
        True,
        "event_log (30 events): RTMR1, RTMR3 differ from the quote",
    )
    # The compose-hash event no longer counts; mr_config_id still binds the hash.
    assert results["compose_hash_binding"] == (
        True,
        True,
        f"compose hash {GLM_COMPOSE} bound by mr_config_id; app_compose hashes to it",
    )
    # No os-image-hash is measured, so the stated ones are not compared.
    assert results["os_image_not_dev"] == (True, True, f"image {GLM_IMAGE}")


def test_a_log_that_cannot_be_parsed_fails_with_its_source_and_entry() -> None:
    body = body_of(GLM)
    body["info"]["tcb_info"]["event_log"][4]["imr"] = 7
    assert software(body)["event_log_replay"] == (
        False,
        True,
        "info.tcb_info.event_log: event 4: imr 7 is not 0..3",
    )


# --- compose_hash_binding -------------------------------------------------------------------


def test_mr_config_id_and_the_event_disagreeing_fail_and_bind_nothing() -> None:
    other = "ee" * 32
    body = rebound(body_of(GLM), mr_config_id=config_id(1, other))
    pins = {GLM.model: MeasurementPins(compose_hash=(GLM_COMPOSE,))}
    results = software(body, policy=AttestationPolicy(pins=pins))
    assert results["compose_hash_binding"] == (
        False,
        True,
        f"mr_config_id binds {other} but the compose-hash event binds {GLM_COMPOSE}",
    )
    assert results["measurements_pinned"] == (
        False,
        True,
        "compose_hash is pinned but this attestation does not bind one",
    )


def test_the_event_alone_binds_when_mr_config_id_is_zero() -> None:
    body = rebound(body_of(GLM), mr_config_id=bytes(48))
    assert software(body)["compose_hash_binding"] == (
        True,
        True,
        f"compose hash {GLM_COMPOSE} bound by the compose-hash event; app_compose hashes to it",
    )
    assert bound_compose_hash(parse_tdx_quote(parse_attestation(body).intel_quote)) is None


@pytest.mark.parametrize(
    "tail",
    [
        bytes([1]) + bytes(14),  # the first byte after the hash: the layout's boundary
        bytes(14) + bytes([1]),
    ],
    ids=["first", "last"],
)
def test_a_non_zero_tail_is_not_the_dstack_layout(tail: bytes) -> None:
    body = rebound(body_of(GLM), mr_config_id=config_id(1, GLM_COMPOSE, tail))
    assert software(body)["compose_hash_binding"] == (
        True,
        True,
        f"compose hash {GLM_COMPOSE} bound by the compose-hash event; app_compose hashes to it",
    )
    assert bound_compose_hash(parse_tdx_quote(parse_attestation(body).intel_quote)) is None


@pytest.mark.parametrize(
    ("mr_config_id", "config_note"),
    [
        (bytes(48), "mr_config_id is zero"),
        (config_id(2, GLM_COMPOSE), "mr_config_id has no dstack compose-hash layout"),
        (
            config_id(1, GLM_COMPOSE, bytes(14) + b"\x01"),
            "mr_config_id has no dstack compose-hash layout",
        ),
    ],
)
def test_no_binding_at_all_is_not_evaluated_and_says_why(
    mr_config_id: bytes, config_note: str
) -> None:
    body = rebound(body_of(GLM), without("compose-hash"), mr_config_id=mr_config_id)
    detail = f"no compose hash is bound by the quote ({config_note}; no compose-hash event)"
    assert software(body)["compose_hash_binding"] == (None, True, detail)
    assert software(body, policy=OFF)["compose_hash_binding"] == (None, False, detail)


def test_an_unusable_compose_hash_event_is_named() -> None:
    def twice(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        at = next(i for i, event in enumerate(events) if event.get("event") == "compose-hash")
        return [*events[: at + 1], runtime_event("compose-hash", b"\x01" * 32), *events[at + 1 :]]

    body = rebound(body_of(GLM), twice, mr_config_id=bytes(48))
    assert software(body)["compose_hash_binding"] == (
        None,
        True,
        "no compose hash is bound by the quote (mr_config_id is zero; "
        "the runtime event 'compose-hash' occurs 2 times)",
    )


def test_an_event_that_does_not_replay_is_not_a_binding() -> None:
    body = rebound(body_of(GLM), mr_config_id=bytes(48))
    body["event_log"][0]["digest"] = "00" * 48  # the top-level log no longer replays
    assert software(body)["compose_hash_binding"] == (
        None,
        True,
        "no compose hash is bound by the quote (mr_config_id is zero; "
        "event_log_replay did not pass)",
    )


@pytest.mark.parametrize(
    ("location", "name"),
    [("info", "info.compose_hash"), ("tcb_info", "info.tcb_info.compose_hash")],
)
def test_each_stated_compose_hash_must_match(location: str, name: str) -> None:
    body = body_of(GLM)
    target = body["info"] if location == "info" else body["info"]["tcb_info"]
    target["compose_hash"] = "11" * 32
    pins = {GLM.model: MeasurementPins(compose_hash=(GLM_COMPOSE,))}
    results = software(body, policy=AttestationPolicy(pins=pins))
    assert results["compose_hash_binding"] == (
        False,
        True,
        f"{name} {'11' * 32} != compose hash {GLM_COMPOSE} bound by the quote",
    )
    # The bound hash is still the quote's: the pins see it.
    assert results["measurements_pinned"][:2] == (True, True)


@pytest.mark.parametrize(
    "stated", [f"  0x{GLM_COMPOSE.upper()} ", f"0X{GLM_COMPOSE}", "", 17, None]
)
def test_stated_compose_hashes_are_normalized_and_non_strings_ignored(stated: Any) -> None:
    body = body_of(GLM)
    body["info"]["compose_hash"] = stated
    body["info"]["tcb_info"]["compose_hash"] = stated
    assert software(body)["compose_hash_binding"] == (True, True, GLM_PASS_COMPOSE)


def test_a_stated_hash_with_0x_as_a_suffix_is_not_the_bound_one() -> None:
    body = body_of(GLM)
    body["info"]["compose_hash"] = GLM_COMPOSE + "0x"
    ok, _, detail = software(body)["compose_hash_binding"]
    assert ok is False
    assert detail.startswith(f"info.compose_hash {GLM_COMPOSE}0x != ")


def test_the_manifest_in_info_is_hashed_when_tcb_info_has_none() -> None:
    body = body_of(GLM)
    manifest = body["info"]["tcb_info"].pop("app_compose")
    body["info"]["app_compose"] = manifest
    assert software(body)["compose_hash_binding"] == (True, True, GLM_PASS_COMPOSE)
    body["info"]["app_compose"] = manifest + " "
    ok, enforced, detail = software(body)["compose_hash_binding"]
    assert (ok, enforced) == (False, True)
    assert detail.startswith("sha256(app_compose) ")
    assert detail.endswith(f" != compose hash {GLM_COMPOSE} bound by the quote")


def test_the_manifest_in_tcb_info_is_the_one_hashed_when_both_are_present() -> None:
    body = body_of(GLM)
    body["info"]["app_compose"] = "another manifest"
    assert software(body)["compose_hash_binding"] == (True, True, GLM_PASS_COMPOSE)


@pytest.mark.parametrize("manifest", [17, {"services": {}}, ["a"]])
def test_a_manifest_that_is_not_a_string_fails(manifest: Any) -> None:
    body = body_of(GLM)
    body["info"]["tcb_info"]["app_compose"] = manifest
    pins = {GLM.model: MeasurementPins(compose_hash=(GLM_COMPOSE,))}
    results = software(body, policy=AttestationPolicy(pins=pins))
    assert results["compose_hash_binding"] == (False, True, "app_compose is not a string")
    assert results["measurements_pinned"][:2] == (True, True)  # the bound hash is still known
    off = software(body, policy=OFF)["compose_hash_binding"]
    assert off == (False, False, "app_compose is not a string")


# --- os_image_not_dev -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "name"),
    [
        ("vm_config", "vm_config.os_image_hash"),
        ("info", "info.os_image_hash"),
        ("tcb_info", "info.tcb_info.os_image_hash"),
    ],
)
def test_each_stated_os_image_hash_must_be_the_measured_one(location: str, name: str) -> None:
    body = body_of(GLM)
    wrong = "22" * 32
    if location == "vm_config":
        with_vm_config(body, os_image_hash=wrong)
    else:
        (body["info"] if location == "info" else body["info"]["tcb_info"])["os_image_hash"] = wrong
    detail = f"{name} {wrong} != os-image-hash {GLM_OS_IMAGE} measured in RTMR3"
    assert software(body)["os_image_not_dev"] == (False, True, detail)
    assert software(body, policy=OFF)["os_image_not_dev"] == (False, False, detail)


def test_stated_os_image_hashes_are_normalized() -> None:
    body = with_vm_config(body_of(GLM), os_image_hash="0x" + GLM_OS_IMAGE.upper())
    body["info"]["os_image_hash"] = f" {GLM_OS_IMAGE} "
    body["info"]["tcb_info"]["os_image_hash"] = ""
    expected = (True, True, f"image {GLM_IMAGE}, os_image_hash {GLM_OS_IMAGE}")
    assert software(body)["os_image_not_dev"] == expected


@pytest.mark.parametrize(
    "vm_config_value",
    [
        None,
        "{not json",
        "[" * 100_000,  # the decoder gives up with a RecursionError
        '["dstack-nvidia-0.5.5"]',
        json.dumps({"image": ""}),
        json.dumps({"image": 5}),
        json.dumps({"os_image_hash": GLM_OS_IMAGE}),
    ],
)
def test_no_usable_image_name_is_not_evaluated(vm_config_value: Any) -> None:
    body = body_of(GLM)
    body["info"]["vm_config"] = vm_config_value
    detail = "no vm_config image name in the attestation"
    assert software(body)["os_image_not_dev"] == (None, True, detail)
    assert software(body, policy=OFF)["os_image_not_dev"] == (None, False, detail)


def test_a_vm_config_object_is_read_as_it_is() -> None:
    body = body_of(GLM)
    body["info"]["vm_config"] = vm_config(body)
    expected = (True, True, f"image {GLM_IMAGE}, os_image_hash {GLM_OS_IMAGE}")
    assert software(body)["os_image_not_dev"] == expected


def test_a_long_image_name_is_shown_cut_at_80_characters() -> None:
    name = "dstack-nvidia-0.5.5-" + "x" * 100
    body = with_vm_config(body_of(GLM), image=name)
    assert software(body)["os_image_not_dev"] == (
        True,
        True,
        f"image {name[:80]!r}, os_image_hash {GLM_OS_IMAGE}",
    )


# --- measurements_pinned --------------------------------------------------------------------


def test_every_pin_problem_is_listed() -> None:
    body = body_of(GLM)
    body["info"]["tcb_info"]["event_log"][0]["digest"] = "00" * 48  # no os-image-hash measured
    pins = MeasurementPins(
        mrtd=("00" * 48, "11" * 48),
        compose_hash=(GLM_COMPOSE,),
        os_image_hash=(GLM_OS_IMAGE,),
    )
    results = software(body, policy=AttestationPolicy(pins={GLM.model: pins}))
    mrtd = seen_values(body)["mrtd"]
    assert results["measurements_pinned"] == (
        False,
        True,
        f"mrtd {mrtd} is not one of the 2 pinned values; "
        "os_image_hash is pinned but this attestation does not bind one",
    )


def test_matching_pins_are_named_with_the_model() -> None:
    seen = seen_values(body_of(GLM))
    pins = MeasurementPins(rtmr2=(seen["rtmr2"],), os_image_hash=(GLM_OS_IMAGE,))
    results = software(
        body_of(GLM), policy=AttestationPolicy(pins={GLM.model: pins}, software="off")
    )
    assert results["measurements_pinned"] == (
        True,
        True,
        "rtmr2, os_image_hash match the pins for 'e2ee-glm-5-1'",
    )


# --- the helpers other checks use -----------------------------------------------------------


def test_bound_compose_hash() -> None:
    quote = parse_tdx_quote(parse_attestation(body_of(GLM)).intel_quote)
    assert bound_compose_hash(quote) == GLM_COMPOSE
    assert bound_compose_hash(None) is None


def test_measured_claim_reads_a_log_that_replays() -> None:
    evidence = parse_attestation(body_of(GLM))
    quote = parse_tdx_quote(evidence.intel_quote)
    assert measured_claim(evidence, quote, "os-image-hash") == bytes.fromhex(GLM_OS_IMAGE)
    assert measured_claim(evidence, quote, "compose-hash") == bytes.fromhex(GLM_COMPOSE)
    assert measured_claim(evidence, quote, "no-such-event") is None
    assert measured_claim(evidence, None, "os-image-hash") is None


def test_measured_claim_needs_every_log_to_replay() -> None:
    body = body_of(GLM)
    body["info"]["tcb_info"]["event_log"][0]["digest"] = "00" * 48  # only the nested copy
    evidence = parse_attestation(body)
    assert measured_claim(evidence, parse_tdx_quote(evidence.intel_quote), "os-image-hash") is None


def test_measured_claim_of_an_ambiguous_event_is_none() -> None:
    def twice(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*events[:-1], runtime_event("os-image-hash", b"\x02" * 32), events[-1]]

    evidence = parse_attestation(rebound(body_of(GLM), twice))
    quote = parse_tdx_quote(evidence.intel_quote)
    assert measured_claim(evidence, quote, "compose-hash") == bytes.fromhex(GLM_COMPOSE)
    assert measured_claim(evidence, quote, "os-image-hash") is None


def test_measured_claim_without_info() -> None:
    body = body_of(GLM)
    del body["info"]
    evidence = parse_attestation(body)
    assert evidence.info is None
    quote = parse_tdx_quote(evidence.intel_quote)
    assert measured_claim(evidence, quote, "os-image-hash") == bytes.fromhex(GLM_OS_IMAGE)
