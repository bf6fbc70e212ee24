"""The remembered trust levels and the Attester on the real aci capture: refuse, allow, no
silent downgrade across restarts, accept."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxy.attestation import AttestationPolicy
from proxy.core.errors import AttestationError
from proxy.service.enclave_keys import Attester
from proxy.service.trust_state import (
    STATE_FILE,
    TrustState,
    TrustStateError,
    default_state_dir,
    writable_problem,
)
from tests.support.attestation_helpers import (
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    collateral_of,
    nonce_of,
    policy_for,
    time_of,
)

ACI = FIXTURES_BY_NAME["live_evidence_aci"]
GLM = FIXTURES_BY_NAME["glm_5_1"]


def test_levels_persist_across_instances_and_writes_leave_no_temporary_files(
    tmp_path: Path,
) -> None:
    state = TrustState(tmp_path, clock=lambda: 1000.0)
    assert state.get("m") is None
    state.record("m", "enclave")
    again = TrustState(tmp_path)
    assert again.get("m") == "enclave"
    again.accept("m", "gateway")
    entry = TrustState(tmp_path).models()["m"]
    assert entry["level"] == "gateway"
    assert entry["first_seen"] == 1000
    assert entry["accepted_at"] is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]
    document = json.loads((tmp_path / STATE_FILE).read_text())
    assert document["format"] == "venice-e2ee-proxy trust state v1"


def test_a_corrupt_state_file_fails_closed(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(TrustStateError, match="not a trust state file"):
        TrustState(tmp_path).get("m")


def test_memory_only_state_and_writability(tmp_path: Path) -> None:
    state = TrustState(None)
    state.record("m", "gateway")
    assert state.get("m") == "gateway"
    assert "memory" in state.where
    assert writable_problem(tmp_path / "new") is None
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert writable_problem(blocked / "sub") is not None
    assert default_state_dir({"XDG_STATE_HOME": "/x"}) == Path("/x/venice-e2ee-proxy")


def _attester(fixture: Fixture, policy: AttestationPolicy, state: TrustState) -> Attester:
    async def fetch(model: str, nonce_hex: str) -> Mapping[str, Any]:
        return body_of(fixture)

    async def collateral(quote: bytes) -> Mapping[str, Any]:
        return collateral_of(fixture)

    return Attester(
        fetch,
        policy,
        ttl_s=60,
        collateral=collateral,
        make_nonce=lambda: nonce_of(fixture),
        clock=lambda: float(time_of(fixture)),
        trust_state=state,
    )


async def test_a_gateway_model_is_refused_by_default_with_what_is_and_is_not_attested(
    tmp_path: Path,
) -> None:
    state = TrustState(tmp_path)
    refuse = replace(policy_for(ACI), gateway_models="refuse")
    with pytest.raises(AttestationError) as info:
        await _attester(ACI, refuse, state).attest(ACI.model)
    assert info.value.code == "trust_level"
    assert "NOT attested: the inference host" in info.value.message
    assert 'attestation.gateway_models = "allow"' in info.value.message
    assert state.get(ACI.model) is None  # nothing accepted, nothing remembered


async def test_allowed_gateway_trust_is_used_and_remembered(tmp_path: Path) -> None:
    state = TrustState(tmp_path)
    key = await _attester(ACI, policy_for(ACI), state).attest(ACI.model)
    assert key.report.trust_level == "gateway"
    assert TrustState(tmp_path).get(ACI.model) == "gateway"


async def test_a_downgrade_is_refused_across_restarts_until_accepted(tmp_path: Path) -> None:
    # An earlier run saw this model as an enclave; now it answers with a gateway attestation.
    TrustState(tmp_path).record(ACI.model, "enclave")
    restarted = TrustState(tmp_path)
    attester = _attester(ACI, policy_for(ACI), restarted)
    with pytest.raises(AttestationError) as info:
        await attester.attest(ACI.model)
    assert info.value.code == "trust_not_downgraded"
    assert f"venice-e2ee-proxy trust accept {ACI.model}" in info.value.message
    assert str(tmp_path) in info.value.message
    restarted.accept(ACI.model, "gateway")  # what `trust accept` does
    key = await attester.attest(ACI.model)
    assert key.report.trust_level == "gateway"


async def test_an_enclave_model_is_remembered_as_enclave(tmp_path: Path) -> None:
    state = TrustState(tmp_path)
    await _attester(GLM, policy_for(GLM), state).attest(GLM.model)
    assert state.get(GLM.model) == "enclave"


async def test_an_unwritable_state_is_logged_and_does_not_block(
    tmp_path: Path, log_lines: Any
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    state = TrustState(blocked / "sub")
    key = await _attester(GLM, policy_for(GLM), state).attest(GLM.model)
    assert key.report.passed
    assert any("trust_state_write_failed" in line for line in log_lines())


# --- the state file itself: its exact form, where it is written, what it refuses ---------------


def test_the_file_is_the_documented_pretty_printed_document_sorted_by_model(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    state = TrustState(tmp_path, clock=lambda: now[0])
    state.record("z-model", "enclave")
    now[0] = 2000.5
    state.record("a-model", "gateway")
    expected = {
        "format": "venice-e2ee-proxy trust state v1",
        "models": {
            "a-model": {
                "first_seen": 2000,
                "accepted_at": None,
                "level": "gateway",
                "last_seen": 2000,
            },
            "z-model": {
                "first_seen": 1000,
                "accepted_at": None,
                "level": "enclave",
                "last_seen": 1000,
            },
        },
    }
    text = (tmp_path / STATE_FILE).read_text(encoding="utf-8")
    assert text == json.dumps(expected, indent=2) + "\n"  # readable, diff-friendly, one ending


def test_record_keeps_first_seen_and_acceptance_and_moves_last_seen(tmp_path: Path) -> None:
    now = [1000.0]
    state = TrustState(tmp_path, clock=lambda: now[0])
    state.record("m", "enclave")
    assert state.models()["m"] == {
        "level": "enclave",
        "first_seen": 1000,
        "last_seen": 1000,
        "accepted_at": None,  # recorded by an attestation, not accepted by the user
    }
    now[0] = 1500.0
    state.accept("m")  # `trust accept m`: gateway by default
    now[0] = 1800.0
    state.record("m", "gateway")  # the next gateway attestation keeps the acceptance
    assert TrustState(tmp_path).models()["m"] == {
        "level": "gateway",
        "first_seen": 1000,
        "last_seen": 1800,
        "accepted_at": 1500,
    }
    assert TrustState(tmp_path).get("m") == "gateway"


def test_the_state_directory_and_its_parents_are_created(tmp_path: Path) -> None:
    # the default, ~/.local/state/venice-e2ee-proxy, may have no ~/.local/state yet
    directory = tmp_path / "state" / "venice-e2ee-proxy"
    TrustState(directory).record("m", "enclave")
    assert TrustState(directory).get("m") == "enclave"


def test_entries_that_are_not_a_known_level_are_skipped(tmp_path: Path) -> None:
    document = {
        "format": "venice-e2ee-proxy trust state v1",
        "models": {
            "good": {"level": "enclave", "first_seen": 1, "last_seen": 1, "accepted_at": None},
            "odd-level": {"level": "bogus"},
            "not-a-record": "enclave",
        },
    }
    (tmp_path / STATE_FILE).write_text(json.dumps(document), encoding="utf-8")
    state = TrustState(tmp_path)
    assert list(state.models()) == ["good"]
    assert state.get("odd-level") is None
    assert state.get("not-a-record") is None


def test_an_unknown_level_in_memory_is_not_reported_as_a_level() -> None:
    state = TrustState(None)
    state.record("m", "bogus")  # type: ignore[arg-type]
    assert state.get("m") is None


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"models": {}}',
        b'{"format": "venice-e2ee-proxy trust state v2", "models": {}}',
        b'{"format": "venice-e2ee-proxy trust state v1", "models": []}',
        b"\xff\xfe{\x00}\x00",  # not UTF-8 at all (e.g. saved as UTF-16 by an editor)
    ],
)
def test_a_file_of_another_format_is_refused_with_what_to_do(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(TrustStateError) as info:
        TrustState(tmp_path).get("m")
    assert info.value.code == "trust_state_unreadable"
    assert info.value.message == (
        f"{tmp_path / STATE_FILE} is not a trust state file "
        "(venice-e2ee-proxy trust state v1); move it away to start over"
    )
    with pytest.raises(TrustStateError):  # nor is it overwritten by a record
        TrustState(tmp_path).record("m", "enclave")
    assert (tmp_path / STATE_FILE).read_bytes() == content


def test_a_raw_utf8_model_name_in_a_hand_edited_file_is_read_as_utf8(tmp_path: Path) -> None:
    text = json.dumps(
        {"format": "venice-e2ee-proxy trust state v1", "models": {"modèle": {"level": "enclave"}}},
        ensure_ascii=False,
    )
    (tmp_path / STATE_FILE).write_bytes(text.encode("utf-8"))
    assert TrustState(tmp_path).get("modèle") == "enclave"


def test_an_unreadable_file_names_the_path_and_the_reason(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).mkdir()  # a directory where the file should be
    with pytest.raises(TrustStateError) as info:
        TrustState(tmp_path).get("m")
    assert info.value.message == f"cannot read {tmp_path / STATE_FILE}: Is a directory"


def test_a_failed_write_names_the_path_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = TrustState(tmp_path)
    state.record("m", "enclave")
    before = (tmp_path / STATE_FILE).read_text()

    def no_space(source: str, target: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(TrustStateError) as info:
        state.record("m", "gateway")
    assert info.value.message == f"cannot write {tmp_path / STATE_FILE}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # temporary removed
    assert (tmp_path / STATE_FILE).read_text() == before  # the old levels are intact


def test_the_new_file_is_written_beside_the_old_one_then_swapped_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # os.replace is atomic only within one directory; the temporary is hidden meanwhile.
    seen: list[list[str]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    TrustState(tmp_path).record("m", "enclave")
    ((temporary,),) = seen
    assert re.fullmatch(r"\.trust_levels\.[^/]+\.tmp", temporary)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


def test_default_state_dir_follows_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "venice-e2ee-proxy"  # the process's env
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "venice-e2ee-proxy"
    assert default_state_dir({"XDG_STATE_HOME": ""}) == (
        tmp_path / "home" / ".local" / "state" / "venice-e2ee-proxy"
    )


def test_writable_problem_creates_the_directory_and_probes_inside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "a" / "b"
    probes: list[list[str]] = []
    real_close = os.close

    def close(fd: int) -> None:
        probes.append(sorted(p.name for p in directory.iterdir()))
        real_close(fd)

    monkeypatch.setattr(os, "close", close)
    assert writable_problem(directory) is None  # parents created
    assert writable_problem(directory) is None  # and an existing directory is fine
    monkeypatch.undo()
    assert len(probes) == 2
    for listing in probes:  # a hidden probe, in the directory itself
        (probe,) = listing
        assert probe.startswith(".probe.")
    assert list(directory.iterdir()) == []  # and removed


def test_writable_problem_says_why(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    problem = writable_problem(blocked / "sub")
    assert problem == f"cannot write to {blocked / 'sub'}: Not a directory"
