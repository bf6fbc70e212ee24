"""The attestation policy alone: strict defaults, TCB states, software mode, measurement pins."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.attestation.policy import (
    DEFAULT_ALLOWED_TCB_STATUS,
    KNOWN_TCB_STATUSES,
    PIN_HEX_LENGTHS,
    TRUST_LEVELS,
    AttestationPolicy,
    MeasurementPins,
)

SHA384 = "ab" * 48
SHA256 = "cd" * 32
VALID = {
    "mrtd": SHA384,
    "rtmr0": SHA384,
    "rtmr1": SHA384,
    "rtmr2": SHA384,
    "compose_hash": SHA256,
    "os_image_hash": SHA256,
}


def refusal(**pins: Any) -> str:
    """The message of the ValueError that building these pins raises."""
    with pytest.raises(ValueError, match=r"^pins\.") as info:
        MeasurementPins(**pins)
    return str(info.value)


def test_the_default_policy_is_the_strictest() -> None:
    policy = AttestationPolicy()
    assert (policy.dcap, policy.nvidia, policy.software) == ("require", "nonce", "require")
    assert policy.allowed_tcb_status == frozenset({"UpToDate", "SWHardeningNeeded"})
    assert policy.allow_dev_image is False
    assert policy.allow_unpinned_images is False
    assert policy.gateway_models == "refuse"
    assert dict(policy.pins) == {}
    assert dict(policy.trust_levels) == {}
    assert policy.extra_mrseam == policy.extra_mrtd == frozenset()
    assert policy.gateway_kms_roots == policy.gateway_app_ids == frozenset()
    assert policy.software_enforced is True


def test_the_known_values() -> None:
    assert TRUST_LEVELS == ("enclave", "gateway")
    assert sorted(DEFAULT_ALLOWED_TCB_STATUS) == ["SWHardeningNeeded", "UpToDate"]
    assert sorted(KNOWN_TCB_STATUSES) == [
        "ConfigurationAndSWHardeningNeeded",
        "ConfigurationNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
        "SWHardeningNeeded",
        "UpToDate",
    ]
    assert dict(PIN_HEX_LENGTHS) == {
        "mrtd": 96,
        "rtmr0": 96,
        "rtmr1": 96,
        "rtmr2": 96,
        "compose_hash": 64,
        "os_image_hash": 64,
    }


# --- TCB states -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "allowed"),
    [
        ("UpToDate", True),
        ("SWHardeningNeeded", True),
        ("OutOfDate", False),
        ("ConfigurationNeeded", False),
        ("Revoked", False),
        ("uptodate", False),
        ("", False),
    ],
)
def test_the_default_tcb_states(status: str, allowed: bool) -> None:
    assert AttestationPolicy().tcb_status_allowed(status) is allowed


def test_revoked_is_refused_even_when_listed() -> None:
    policy = AttestationPolicy(allowed_tcb_status=frozenset({"Revoked", "OutOfDate"}))
    assert policy.tcb_status_allowed("Revoked") is False
    assert policy.tcb_status_allowed("OutOfDate") is True
    assert policy.tcb_status_allowed("UpToDate") is False


def test_an_empty_allowed_set_refuses_every_state() -> None:
    policy = AttestationPolicy(allowed_tcb_status=frozenset())
    assert not any(policy.tcb_status_allowed(status) for status in KNOWN_TCB_STATUSES)


# --- software mode --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("software", "enforced"),
    [("require", True), ("off", False), ("optional", True), ("OFF", True), ("", True)],
)
def test_only_off_turns_the_software_checks_off(software: str, enforced: bool) -> None:
    policy = AttestationPolicy(software=software)  # type: ignore[arg-type]
    assert policy.software_enforced is enforced


# --- measurement pins -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALID))
def test_every_measurement_is_normalized(name: str) -> None:
    value = VALID[name]
    pins = MeasurementPins(**{name: ("  0X" + value.upper() + "\n", value)})
    assert getattr(pins, name) == (value, value)
    assert pins.pinned() == {name: (value, value)}


@pytest.mark.parametrize("name", list(VALID))
def test_every_measurement_has_its_own_length(name: str) -> None:
    length = PIN_HEX_LENGTHS[name]
    assert getattr(MeasurementPins(**{name: ("a" * length,)}), name) == ("a" * length,)
    for wrong in (length - 1, length + 1, length - 2, length + 2):
        message = refusal(**{name: ("a" * wrong,)})
        assert message == f"pins.{name} values must be {length} hex digits"


@pytest.mark.parametrize("name", list(VALID))
def test_every_measurement_refuses_non_hex(name: str) -> None:
    length = PIN_HEX_LENGTHS[name]
    for bad in ("g" + "a" * (length - 1), "a" * (length - 1) + " ", "0x" * (length // 2)):
        message = refusal(**{name: ("a" * length, bad)})
        assert message == f"pins.{name} values must be {length} hex digits"


@pytest.mark.parametrize("name", list(VALID))
def test_one_string_instead_of_a_list_is_refused(name: str) -> None:
    message = refusal(**{name: VALID[name]})
    assert message == f"pins.{name} must be a list of hex strings, not one string"


@pytest.mark.parametrize("value", [1, None, b"ab" * 48, ["ab" * 48]])
def test_a_non_string_value_is_refused(value: Any) -> None:
    assert refusal(rtmr1=(SHA384, value)) == "pins.rtmr1 holds a non-string value"


def test_any_iterable_of_values_is_accepted_and_kept_in_order() -> None:
    other = "01" * 48
    pins = MeasurementPins(mrtd=iter([SHA384, other]), rtmr2=[other])  # type: ignore[arg-type]
    assert pins.mrtd == (SHA384, other)
    assert pins.rtmr2 == (other,)


def test_pinned_lists_only_the_pinned_measurements_in_declaration_order() -> None:
    assert MeasurementPins().pinned() == {}
    pins = MeasurementPins(os_image_hash=(SHA256,), mrtd=(SHA384,), rtmr2=(SHA384,))
    assert list(pins.pinned().items()) == [
        ("mrtd", (SHA384,)),
        ("rtmr2", (SHA384,)),
        ("os_image_hash", (SHA256,)),
    ]
    assert list(MeasurementPins(**{k: (v,) for k, v in VALID.items()}).pinned()) == list(VALID)


def test_pins_for_a_model_with_at_least_one_pinned_measurement() -> None:
    pinned = MeasurementPins(compose_hash=(SHA256,))
    policy = AttestationPolicy(pins={"e2ee-a": pinned, "e2ee-empty": MeasurementPins()})
    assert policy.pins_for("e2ee-a") is pinned
    assert policy.pins_for("e2ee-empty") is None  # nothing pinned: the same as no pins
    assert policy.pins_for("e2ee-b") is None
    assert AttestationPolicy().pins_for("e2ee-a") is None
