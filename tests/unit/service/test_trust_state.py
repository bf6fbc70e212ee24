"""The remembered trust levels and the Attester on the real aci capture: refuse, allow, no
silent downgrade across restarts, accept."""

from __future__ import annotations

import json
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
