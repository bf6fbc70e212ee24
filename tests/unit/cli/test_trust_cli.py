"""verify without silent downgrades, pins MODEL, trust accept, and the weakening warnings."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.cli.main import main
from proxy.observability.logs import configure_logging
from proxy.settings import load_settings, weakenings
from tests.conftest import _LOG_BUFFER
from tests.support.fixtures import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "attestations"
GLM = str(FIXTURES / "attestation_glm_5_1.json")
GLM_COLLATERAL = str(FIXTURES / "collateral_glm_5_1.json")
ACI = str(FIXTURES / "attestation_live_evidence.json")
ACI_COLLATERAL = str(FIXTURES / "collateral_live_evidence.json")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in ("VENICE_PROXY_CONFIG", "VENICE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    yield
    # main() configured logging to this test's captured stdout: give it back to the suite.
    configure_logging("debug", "json", stream=_LOG_BUFFER)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


def test_offline_verify_without_collateral_reports_dcap_not_checked_and_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "verify", "--offline", "--attestation", GLM, "--no-nras")
    assert code == 1
    assert "not checked: no DCAP collateral" in out
    assert "--no-dcap" in out
    assert "attestation FAILED: dcap" in out


def test_offline_verify_without_nras_fails_unless_no_nras(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(
        capsys, "verify", "--offline", "--attestation", GLM, "--collateral", GLM_COLLATERAL
    )
    assert code == 1
    assert "gpu_nras" in out
    assert "--no-nras" in out


def test_knowing_skips_pass_and_say_what_was_not_checked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "verify", "--offline", "--attestation", GLM, "--no-dcap", "--no-nras")
    assert code == 0, out
    assert "SKIP  DCAP (--no-dcap)" in out
    assert "SKIP  NRAS (--no-nras)" in out
    assert "PASSED (trust level enclave)" in out
    code, out = run(
        capsys, "verify", "--offline", "--attestation", GLM, "--no-dcap", "--no-nras", "--json"
    )
    document = json.loads(out)
    assert document["not_checked"]
    assert document["trust_level"] == "enclave"


def test_the_aci_capture_is_refused_as_gateway_unless_allowed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VENICE_PROXY_ATTESTATION__ALLOW_DEV_IMAGE", "true")
    args = [
        "verify",
        "--offline",
        "--attestation",
        ACI,
        "--collateral",
        ACI_COLLATERAL,
        "--no-nras",
    ]
    code, out = run(capsys, *args)
    assert code == 1
    assert "trust level     GATEWAY" in out
    assert "NOT attested    the inference host" in out
    assert "attestation FAILED: trust_level" in out
    code, out = run(capsys, *args, "--allow-gateway")
    assert code == 0, out
    assert "PASSED (trust level gateway)" in out


def test_an_unknown_shape_names_its_keys_and_the_known_shapes_and_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"hello": 1, "world": 2}))
    code, out = run(capsys, "verify", "--offline", "--attestation", str(path), "--nonce", "00" * 32)
    assert code == 2
    assert "top-level keys: hello, world" in out
    assert "known shapes: near" in out
    assert "aci" in out


def test_an_ed25519_report_says_ed25519_is_not_supported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    document = json.loads(Path(GLM).read_text())
    document["attestation"]["signing_algo"] = "ed25519"
    path = tmp_path / "ed.json"
    path.write_text(json.dumps(document))
    code, out = run(capsys, "verify", "--offline", "--attestation", str(path))
    assert code == 2
    assert "ed25519 is not supported" in out


def test_pins_prints_the_measurements_in_the_pins_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "pins", "e2ee-glm-5-1", "--offline", "--attestation", GLM)
    assert code == 0
    table = tomllib.loads(out)["attestation"]["pins"]["e2ee-glm-5-1"]
    assert table["mrtd"] == [
        "b24d3b24e9e3c16012376b52362ca09856c4adecb709d5fac33addf1c47e193da075b125b6c364115771390a5461e217"
    ]
    assert set(table) == {"mrtd", "rtmr0", "rtmr1", "rtmr2", "compose_hash", "os_image_hash"}
    assert "# known:" in out
    # The printed table is valid config.
    load_settings(overrides={"attestation": {"pins": {"e2ee-glm-5-1": table}}}, environ={})


def test_trust_accept_records_gateway_and_show_lists_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = run(capsys, "trust", "accept", "e2ee-x")
    assert code == 0
    assert "gateway trust accepted" in out
    assert 'gateway_models = "allow"' in out  # what else it takes
    code, out = run(capsys, "trust", "show")
    assert "e2ee-x" in out
    assert "accepted by the user" in out
    assert str(tmp_path / "state") in out


def test_trust_accept_will_not_override_the_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VENICE_PROXY_ATTESTATION__TRUST_LEVELS", json.dumps({"e2ee-x": "enclave"}))
    assert main(["trust", "accept", "e2ee-x"]) == 2


def _events(**attestation: Any) -> set[str]:
    settings = load_settings(overrides={"attestation": attestation}, environ={})
    return {event for event, _ in weakenings(settings)}


def test_every_weakening_setting_is_named() -> None:
    assert _events() == set()
    assert _events(dcap="off") == {"dcap_off"}
    assert _events(nvidia="nonce") == {"nras_off"}
    assert _events(nvidia="off") == {"nvidia_off"}
    assert _events(software="off") == {"software_off"}
    assert _events(allow_dev_image=True) == {"dev_images_allowed"}
    assert _events(allowed_tcb_status=["UpToDate", "OutOfDate"]) == {"tcb_status_weakened"}
    assert _events(gateway_models="allow") == {"gateway_models_allowed"}
    assert _events(trust_levels={"m": "gateway"}) == {"gateway_trust_accepted"}
    assert _events(allow_unpinned_images=True) == {"unpinned_images_allowed"}
    assert _events(extra_mrtd=["00" * 48]) == {"measurement_policy_extended"}
    settings = load_settings(environ={})
    details = weakenings(settings, state_persisted=False)
    assert [event for event, _ in details] == ["trust_state_in_memory"]
    assert all(detail.startswith("WEAKENED: ") for _, detail in details)
