"""The shipped measurement policy: enforced MRSEAM/MRTD, known/unknown RTMRs, data with sources."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources

import pytest

from proxy.attestation.measurements import (
    ShippedPolicy,
    known_status,
    measurement_checks,
    parse_policy_data,
    shipped_policy,
)
from proxy.attestation.quote import TdReport
from tests.support.attestation_helpers import (
    FIXTURE_IDS,
    FIXTURE_LIST,
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    flip_quote_byte,
    policy_for,
)
from tests.support.trust_helpers import failed, verify

GLM = FIXTURES_BY_NAME["glm_5_1"]
GEMMA = FIXTURES_BY_NAME["gemma_3_27b_p"]
QWEN = FIXTURES_BY_NAME["venice_qwen3_5_122b"]
MR_SEAM_OFFSET = 48 + 16
MR_TD_OFFSET = 184


def _data() -> dict[str, object]:
    text = resources.files("proxy.attestation.data").joinpath("measurement_policy.json")
    document: dict[str, object] = json.loads(text.read_text("utf-8"))
    return document


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_every_capture_runs_a_known_tdx_module_firmware_and_known_registers(
    fixture: Fixture,
) -> None:
    report = verify(fixture)
    for code in ("mrseam_allowed", "mrtd_allowed"):
        check = report.check(code)
        assert (check.ok, check.enforced, check.tier) == (True, True, "measurements")
    known = report.check("measurements_known")
    assert (known.ok, known.enforced) == (True, False)


@pytest.mark.parametrize(
    ("offset", "code"), [(MR_SEAM_OFFSET, "mrseam_allowed"), (MR_TD_OFFSET, "mrtd_allowed")]
)
def test_a_measurement_not_in_the_policy_is_refused_and_names_the_setting(
    offset: int, code: str
) -> None:
    # GEMMA has no compose-manager quote, whose own MRTD would then differ too.
    body = flip_quote_byte(body_of(GEMMA), offset + 5)
    policy = replace(policy_for(GEMMA), dcap="off")  # isolate the policy check from the signature
    report = verify(GEMMA, body, policy=policy)
    assert failed(report) == {code}
    setting = "attestation.extra_mrseam" if code == "mrseam_allowed" else "attestation.extra_mrtd"
    assert setting in report.check(code).detail
    value = report.facts["measurements"]["mrseam" if code == "mrseam_allowed" else "mrtd"]
    extra = {"extra_mrseam" if code == "mrseam_allowed" else "extra_mrtd": frozenset({value})}
    assert verify(GEMMA, body, policy=replace(policy, **extra)).passed  # type: ignore[arg-type]


def test_the_june_2026_rtmr0_change_is_known_with_both_values() -> None:
    april = verify(QWEN).facts["measurements"]
    june = verify(GLM).facts["measurements"]
    assert april["rtmr0"] != june["rtmr0"]
    assert "2026-04-24" in april["known"]["rtmr0"]
    assert "2026-06-04" in june["known"]["rtmr0"]


def test_an_unknown_rtmr_is_flagged_but_not_enforced() -> None:
    body = flip_quote_byte(body_of(GLM), 376 + 1)  # RTMR0
    policy = replace(policy_for(GLM), dcap="off", software="off")
    check = verify(GLM, body, policy=policy).check("measurements_known")
    assert (check.ok, check.enforced) == (False, False)
    assert "unknown: rtmr0" in check.detail


def test_the_shipped_data_names_a_source_or_sighting_for_every_value() -> None:
    document = _data()
    assert document["updated"]
    for register, digits in (("mrseam", 96), ("mrtd", 96)):
        section = document[register]
        assert isinstance(section, dict)
        assert section["enforced"] is True
        for entry in section["values"]:
            assert len(entry["value"]) == digits
            assert entry["sources"]
    known = document["known"]
    assert isinstance(known, dict)
    for name, digits in (("rtmr0", 96), ("rtmr1", 96), ("rtmr2", 96), ("compose_hash", 64)):
        for entry in known[name]:
            assert len(entry["value"]) == digits
            assert entry["seen_on"]
    gateway = document["gateway"]
    assert isinstance(gateway, dict)
    for entry in [*gateway["kms_roots"], *gateway["app_ids"]]:
        assert entry["sources"]
    shipped = shipped_policy()
    assert len(shipped.mrseam) == 4
    assert len(shipped.kms_roots) == 1


# --- parsing a policy document and the checks, exactly -------------------------------------


def test_parse_policy_data_exactly() -> None:
    document = {
        "updated": "2026-01-02",
        "mrseam": {"values": [{"value": "AA01", "release": "TDX 1.5"}, {"value": "aa02"}]},
        "mrtd": {"values": [{"value": "bb01", "release": "dstack 0.5"}, "not a mapping"]},
        "known": {
            "rtmr0": [{"value": "C0", "seen_on": "near 2026-04"}],
            "rtmr2": [{"value": 5, "seen_on": "a number is no value"}, {"seen_on": "no value"}],
            "compose_hash": [{"value": "d0", "seen_on": ""}],
            "rtmr3": [{"value": "e0", "seen_on": "not a known register"}],
        },
        "gateway": {
            "kms_roots": [{"value": "0xF0", "name": "root", "sources": ["x"]}],
            "app_ids": [{"value": "a1", "name": "gateway app", "sources": ["y"]}],
        },
    }
    policy = parse_policy_data(document)
    assert policy == ShippedPolicy(
        updated="2026-01-02",
        mrseam={"aa01": "TDX 1.5", "aa02": ""},
        mrtd={"bb01": "dstack 0.5"},
        known={
            "rtmr0": {"c0": "near 2026-04"},
            "rtmr1": {},
            "rtmr2": {},
            "compose_hash": {"d0": ""},
        },
        kms_roots={"0xf0": "root"},
        app_ids={"a1": "gateway app"},
        raw=document,
    )
    assert policy.raw is document


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"known": [["rtmr0"]], "gateway": ["kms_roots"], "mrseam": {}, "mrtd": None},
        {"mrseam": {"values": {"value": "aa"}}, "known": {"rtmr0": "c0"}, "gateway": {}},
    ],
)
def test_parse_policy_data_of_missing_or_malformed_sections(document: dict[str, object]) -> None:
    policy = parse_policy_data(document)
    assert (policy.updated, policy.mrseam, policy.mrtd, policy.kms_roots, policy.app_ids) == (
        "unknown",
        {},
        {},
        {},
        {},
    )
    assert policy.known == {"rtmr0": {}, "rtmr1": {}, "rtmr2": {}, "compose_hash": {}}
    assert parse_policy_data({**document, "updated": 2026}).updated == "2026"


def test_the_shipped_file_is_parsed_whole() -> None:
    shipped = shipped_policy()
    assert shipped == parse_policy_data(_data())
    assert (len(shipped.mrtd), len(shipped.app_ids)) == (2, 1)
    assert all(len(values) >= 3 for values in shipped.known.values())
    assert shipped.updated == _data()["updated"]


def test_known_status_of_a_value() -> None:
    shipped = shipped_policy()
    value, seen_on = next(iter(shipped.known["rtmr0"].items()))
    assert known_status(value, "rtmr0") == seen_on
    assert known_status(value, "rtmr1") is None
    assert known_status("00" * 48, "rtmr0") is None
    assert known_status(None, "rtmr0") is None
    assert known_status(value, "no_such_register") is None


SEAM = bytes(range(48))
TD = bytes(range(1, 49))
RTMRS = (bytes([0xC0]) * 48, bytes([0xC1]) * 48, bytes([0xC2]) * 48, bytes(48))
COMPOSE = "d0" * 32
POLICY = parse_policy_data(
    {
        "updated": "2026-01-02",
        "mrseam": {"values": [{"value": SEAM.hex(), "release": "TDX 1.5.x"}]},
        "mrtd": {"values": [{"value": TD.hex(), "release": "dstack 0.5"}, {"value": "bb"}]},
        "known": {
            "rtmr0": [{"value": RTMRS[0].hex(), "seen_on": "seen 0"}],
            "rtmr1": [{"value": RTMRS[1].hex(), "seen_on": "seen 1"}],
            "rtmr2": [{"value": RTMRS[2].hex(), "seen_on": "seen 2"}],
            "compose_hash": [{"value": COMPOSE, "seen_on": "seen c"}],
        },
    }
)


def _report(**fields: object) -> TdReport:
    values: dict[str, object] = {
        "tee_tcb_svn": bytes(16),
        "mr_seam": SEAM,
        "mr_signer_seam": bytes(48),
        "seam_attributes": bytes(8),
        "td_attributes": bytes(8),
        "xfam": bytes(8),
        "mr_td": TD,
        "mr_config_id": bytes(48),
        "mr_owner": bytes(48),
        "mr_owner_config": bytes(48),
        "rtmrs": RTMRS,
        "report_data": bytes(64),
        **fields,
    }
    return TdReport(**values)  # type: ignore[arg-type]


def _checks(
    report: TdReport | None, compose_hash: str | None = COMPOSE, **extra: frozenset[str]
) -> list[tuple[str, bool | None, bool, str, str]]:
    return [
        (check.code, check.ok, check.enforced, check.tier, check.detail)
        for check in measurement_checks(
            report,
            "dcap",
            compose_hash,
            shipped=POLICY,
            **extra,
        )
    ]


def test_measurement_checks_without_a_report_only_report() -> None:
    assert _checks(None) == [
        ("mrseam_allowed", False, False, "measurements", "not evaluated: dcap failed"),
        ("mrtd_allowed", False, False, "measurements", "not evaluated: dcap failed"),
        ("measurements_known", False, False, "measurements", "not evaluated: dcap failed"),
    ]
    details = [check.detail for check in measurement_checks(None, "tdx_quote", None)]
    assert details == ["not evaluated: tdx_quote failed"] * 3


def test_measurement_checks_of_known_values() -> None:
    assert _checks(_report()) == [
        ("mrseam_allowed", True, True, "measurements", f"MRSEAM {SEAM.hex()[:16]}… is TDX 1.5.x"),
        ("mrtd_allowed", True, True, "measurements", f"MRTD {TD.hex()[:16]}… is dstack 0.5"),
        (
            "measurements_known",
            True,
            False,
            "measurements",
            "all known; rtmr0 known (seen 0); rtmr1 known (seen 1); rtmr2 known (seen 2); "
            "compose_hash known (seen c)",
        ),
    ]


def test_measurement_checks_refuse_values_not_in_the_policy_unless_configured() -> None:
    seam, td = bytes([0xEE]) * 48, bytes([0xFF]) * 48
    refused = _checks(_report(mr_seam=seam, mr_td=td))
    assert refused[:2] == [
        (
            "mrseam_allowed",
            False,
            True,
            "measurements",
            f"MRSEAM {seam.hex()} is not in the measurement policy (1 known values, updated "
            "2026-01-02); after checking it against its source, add it to "
            "attestation.extra_mrseam",
        ),
        (
            "mrtd_allowed",
            False,
            True,
            "measurements",
            f"MRTD {td.hex()} is not in the measurement policy (2 known values, updated "
            "2026-01-02); after checking it against its source, add it to attestation.extra_mrtd",
        ),
    ]
    # Each setting allows its own register only.
    allowed = _checks(
        _report(mr_seam=seam, mr_td=td),
        extra_mrseam=frozenset({seam.hex()}),
        extra_mrtd=frozenset({td.hex()}),
    )
    assert allowed[:2] == [
        (
            "mrseam_allowed",
            True,
            True,
            "measurements",
            f"MRSEAM {seam.hex()[:16]}… is allowed by attestation.extra_mrseam",
        ),
        (
            "mrtd_allowed",
            True,
            True,
            "measurements",
            f"MRTD {td.hex()[:16]}… is allowed by attestation.extra_mrtd",
        ),
    ]
    crossed = _checks(
        _report(mr_seam=seam, mr_td=td),
        extra_mrseam=frozenset({td.hex()}),
        extra_mrtd=frozenset({seam.hex()}),
    )
    assert [check[1] for check in crossed[:2]] == [False, False]


def test_measurements_known_names_the_unknown_and_the_unbound() -> None:
    rtmrs = (RTMRS[0], bytes([0x11]) * 48, RTMRS[2], RTMRS[3])
    unknown_compose = "ab" * 32
    assert _checks(_report(rtmrs=rtmrs), unknown_compose)[2] == (
        "measurements_known",
        False,
        False,
        "measurements",
        "unknown: rtmr1, compose_hash (pin them to enforce); rtmr0 known (seen 0); "
        f"rtmr1 {'11' * 8}… unknown; rtmr2 known (seen 2); compose_hash {'ab' * 8}… unknown",
    )
    assert _checks(_report(), None)[2] == (
        "measurements_known",
        True,
        False,
        "measurements",
        "all known; rtmr0 known (seen 0); rtmr1 known (seen 1); rtmr2 known (seen 2); "
        "compose_hash not bound",
    )
