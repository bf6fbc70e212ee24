"""Property tests for the attestation parsers: hostile input raises only our typed errors.

The attestation body comes from the network, so :func:`proxy.attestation.parse_attestation`,
:func:`proxy.attestation.unwrap_capture` and the checks in
:func:`proxy.attestation.verify_evidence` must turn any JSON into either a value or a
:class:`proxy.core.errors.ProxyError` subclass (an ``AttestationError`` with a stable code), never a
``KeyError``/``TypeError``/``RecursionError`` that the proxy would report as a crash.

Random and truncated *quote bytes* are already covered in test_attestation_quote.py and
test_attestation_verify.py; here the rest of the body is hostile: random JSON documents, real
captured bodies with one member replaced by random JSON (or removed), and real bodies whose quote
text is cut short. A body that still parses must verify to a failing report, never to a pass.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.attestation import (
    AttestationPolicy,
    Evidence,
    enclave_key,
    parse_attestation,
    parse_tdx_quote,
    unwrap_capture,
    verify_evidence,
)
from proxy.core.errors import AttestationError, ProxyError
from tests.support.attestation_helpers import FIXTURE_LIST, Fixture, body_of, nonce_of, time_of

KNOWN_KEYS = [
    "intel_quote",
    "quote",
    "nvidia_payload",
    "event_log",
    "info",
    "tcb_info",
    "vm_config",
    "signing_address",
    "signing_key",
    "signing_public_key",
    "model",
    "model_name",
    "nonce",
    "request_nonce",
    "verified",
    "api_version",
    "attestation",
    "evidence",
    "workload_keyset",
    "e2ee_public_keys",
    "key_custody",
    "keys",
    "public_key",
    "role",
    "compose_manager_attestation",
    "tee_provider",
    "upstream_model",
    "_client_nonce",
    "_capture_epoch",
]
# Strings that steer the parser down its less common branches.
SPECIAL_TEXT = st.sampled_from(
    [
        "",
        "aci/1",
        "e2ee",
        "04" + "11" * 64,
        "0x" + "ab" * 20,
        "00" * 700,
        "{}",
        "[]",
        "[{}]",
        '{"a": 1}',
        "not json",
        "AAAA",
        "=",
    ]
)
TEXT = st.one_of(SPECIAL_TEXT, st.text(max_size=16))
KEY = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8))
JSON_VALUE = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        TEXT,
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEY, children, max_size=5),
    max_leaves=20,
)
# Header (48) + TD report (584) + signature length field (4): the signature data follows.
SIGNED_QUOTE_PREFIX = 636
# Verification without DCAP (no collateral round trip per example) but with every other check.
POLICY = AttestationPolicy(dcap="off", nvidia="nonce")


def _parse_or_typed_error(body: Any) -> Evidence | None:
    try:
        return parse_attestation(body)
    except ProxyError as exc:
        error = exc
    assert isinstance(error, AttestationError), type(error)
    assert error.code, "every attestation failure carries a stable code"
    return None


def _verify_fails(evidence: Any, fixture: Fixture) -> None:
    report = verify_evidence(
        evidence,
        expected_model=fixture.model,
        nonce=nonce_of(fixture),
        policy=POLICY,
        now=time_of(fixture),
    )
    assert not report.passed


@settings(max_examples=300, deadline=None)
@given(JSON_VALUE)
def test_random_json_documents(document: Any) -> None:
    evidence = _parse_or_typed_error(document)
    if evidence is not None:
        # A random document carries no quote bound to our nonce: it can never pass.
        _verify_fails(evidence, FIXTURE_LIST[0])
    with contextlib.suppress(AttestationError):
        unwrap_capture(document)


def _mutate(body: dict[str, Any], data: st.DataObject) -> None:
    """Replace or remove one member, at the top level or one object down."""
    target = body
    nested = sorted(key for key, value in body.items() if isinstance(value, dict))
    deeper = data.draw(st.booleans(), label="nested")
    if nested and deeper:
        target = body[data.draw(st.sampled_from(nested), label="object")]
    keys = sorted(target) or ["intel_quote"]
    key = data.draw(st.one_of(st.sampled_from(keys), st.sampled_from(KNOWN_KEYS)), label="key")
    if data.draw(st.integers(min_value=0, max_value=4), label="op") == 0:
        target.pop(key, None)
    else:
        target[key] = data.draw(JSON_VALUE, label="value")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(FIXTURE_LIST), st.data())
def test_real_bodies_with_hostile_members(fixture: Fixture, data: st.DataObject) -> None:
    body = body_of(fixture)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        _mutate(body, data)
    original = copy.deepcopy(body)
    evidence = _parse_or_typed_error(body)
    assert body == original, "parsing mutated its input"
    if evidence is None:
        return
    report = verify_evidence(
        evidence,
        expected_model=fixture.model,
        nonce=nonce_of(fixture),
        policy=POLICY,
        now=time_of(fixture),
    )
    if report.passed:
        # Only a member the checks rightly ignore (an unauthenticated echo, an unused field)
        # may change without failing: the key that would be trusted is still the attested one.
        pristine = parse_attestation(body_of(fixture))
        assert evidence.intel_quote == pristine.intel_quote
        assert enclave_key(report) == pristine.signing_public_key


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(FIXTURE_LIST), st.integers(min_value=0), st.booleans())
def test_real_bodies_with_truncated_quote_text(fixture: Fixture, cut: int, odd: bool) -> None:
    body = body_of(fixture)
    holders: list[tuple[dict[str, Any], str]] = [
        (body, name) for name in ("intel_quote", "quote") if isinstance(body.get(name), str)
    ]
    if not holders:
        holders = [(body["attestation"]["evidence"], "quote")]
    for holder, name in holders:
        text = holder[name]
        holder[name] = text[: cut % len(text)] + ("0" if odd else "")
    evidence = _parse_or_typed_error(body)
    if evidence is None:
        return
    report = verify_evidence(
        evidence,
        expected_model=fixture.model,
        nonce=nonce_of(fixture),
        policy=POLICY,
        now=time_of(fixture),
    )
    if report.passed:
        # Only trailing padding may go (DCAP is off here, so it is the parser that must see
        # the cut): the whole signed quote is still there.
        whole = parse_tdx_quote(parse_attestation(body_of(fixture)).intel_quote)
        signed = SIGNED_QUOTE_PREFIX + whole.signature_data_length
        assert evidence.intel_quote[:signed] == whole.raw[:signed]
        assert len(evidence.intel_quote) >= signed


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("where", ["event_log", "nvidia_payload", "info.tcb_info"])
def test_deeply_nested_json_text_is_a_typed_error(where: str) -> None:
    body = body_of(FIXTURE_LIST[0])
    if where == "info.tcb_info":
        body["info"] = {"tcb_info": DEEP}
    else:
        body[where] = DEEP
    with pytest.raises(AttestationError):
        parse_attestation(body)
