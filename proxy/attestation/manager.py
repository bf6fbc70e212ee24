"""NEAR's ``compose_manager_attestation``: a second quote, from the same CVM, over what it ran.

Wire format (docs/protocol.md#near-shape; a JSON object, or a JSON string holding one)::

    {"actions": [{"timestamp", "action": "compose_up" | "compose_down" | "docker_restart" | ...,
                  "file", "file_sha256", "commit", "tag", "services": [...]}, ...],
     "actions_hash": "<64 hex>", "nonce": "<our nonce>", "quote": "<hex TDX quote>",
     "event_log": "<JSON string>", "report_data": "<128 hex>", "vm_config": "<JSON string>"}

Its REPORTDATA rule is its own: ``REPORTDATA = actions_hash(32) || nonce(32)``, where
``actions_hash = sha256(actions serialized as compact JSON, in the order sent)``.

Check ``compose_manager_quote`` (tier ``quote``), when the member is present: the quote parses
as TDX v4 with the DEBUG bit clear; REPORTDATA[0:32] is the stated ``actions_hash`` and
REPORTDATA[32:64] our nonce; DCAP verifies it (same collateral as the main quote: same platform)
with an allowed TCB status and a TD report equal to the parsed one; its event log replays to its
RTMR0-3; and it comes from the same CVM as the main quote (MRTD, MRCONFIGID, RTMR0-2 equal). The
actions list is used (its ``compose_up`` files) only when it hashes to ``actions_hash``; a list
that was re-serialized (key order lost) is reported as not authenticated, which does not fail
the check: the quote binds the hash, not our copy of the list.

Absent member: ``ok=None``, not enforced. Deliberately NOT checked: what the actions mean (a
``compose_down`` is history, not a fault) and the ``file_sha256`` against the deployment repo.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxy.attestation.dcap import verify_quote_dcap
from proxy.attestation.eventlog import EventLogError, parse_event_log, replay
from proxy.attestation.policy import AttestationPolicy
from proxy.attestation.quote import TdxQuote, decode_quote, parse_tdx_quote
from proxy.attestation.report import TIER_QUOTE, CheckResult
from proxy.core.errors import AttestationError

COMPOSE_MANAGER_QUOTE: Final = "compose_manager_quote"


@dataclass(frozen=True, slots=True)
class ManagerFacts:
    """What the compose manager's authenticated actions say was deployed."""

    deployed: tuple[str, ...]  # "FILE (services a, b)" of each compose_up, newest last
    actions_authenticated: bool


def _result(ok: bool | None, detail: str, enforced: bool) -> CheckResult:
    return CheckResult(
        code=COMPOSE_MANAGER_QUOTE, ok=ok, enforced=enforced, detail=detail, tier=TIER_QUOTE
    )


def _member(raw: Mapping[str, Any]) -> Mapping[str, Any] | None:
    value = raw.get("compose_manager_attestation")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return {}
    if value is None:
        return None
    return value if isinstance(value, Mapping) else {}


def compose_manager_check(
    raw: Mapping[str, Any],
    main: TdxQuote | None,
    main_failure: str,
    *,
    nonce: bytes,
    policy: AttestationPolicy,
    now: int,
    collateral: Mapping[str, Any] | None,
    enforced: bool,
) -> tuple[CheckResult, ManagerFacts | None]:
    """The ``compose_manager_quote`` result and, when it passed, the deployment facts."""
    member = _member(raw)
    if member is None:
        return _result(None, "no compose_manager_attestation in this report", False), None
    if main is None:
        return _result(False, f"not evaluated: {main_failure} failed", False), None
    try:
        text: Any = member.get("quote")
        quote = parse_tdx_quote(decode_quote(text), require_tdx=True)
    except AttestationError as exc:
        return _result(False, f"its quote: {exc.message}", enforced), None
    problems = _quote_problems(member, quote, main, nonce)
    dcap_note, dcap_problem = _dcap(quote, policy, now, collateral)
    if dcap_problem:
        problems.append(dcap_problem)
    if problems:
        return _result(False, "; ".join(problems), enforced), None
    facts = _facts(member)
    actions = (
        f"{len(facts.deployed)} compose_up actions authenticated"
        if facts.actions_authenticated
        else "its actions list does not hash to actions_hash as sent (not used)"
    )
    detail = (
        f"second quote from the same CVM binds actions_hash and our nonce; {dcap_note}; {actions}"
    )
    return _result(True, detail, enforced), facts


def _quote_problems(
    member: Mapping[str, Any], quote: TdxQuote, main: TdxQuote, nonce: bytes
) -> list[str]:
    problems: list[str] = []
    report = quote.report
    if report.debug:
        problems.append("its quote has the DEBUG bit set")
    stated = member.get("actions_hash")
    if not isinstance(stated, str) or report.report_data[:32].hex() != stated.strip().lower():
        problems.append("REPORTDATA[0:32] is not the stated actions_hash")
    if report.report_data[32:] != nonce:
        problems.append("REPORTDATA[32:64] is not our nonce")
    different = [
        name
        for name, mine, theirs in (
            ("mr_td", report.mr_td, main.report.mr_td),
            ("mr_config_id", report.mr_config_id, main.report.mr_config_id),
            ("rtmr0", report.rtmr0, main.report.rtmr0),
            ("rtmr1", report.rtmr1, main.report.rtmr1),
            ("rtmr2", report.rtmr2, main.report.rtmr2),
        )
        if mine != theirs
    ]
    if different:
        problems.append(f"not the same CVM as the main quote ({', '.join(different)} differ)")
    try:
        log = parse_event_log(member.get("event_log"), "compose_manager_attestation.event_log")
    except EventLogError as exc:
        problems.append(str(exc))
    else:
        replayed = replay(log.events)
        wrong = [f"RTMR{i}" for i in range(4) if replayed[i] != report.rtmrs[i]]
        if wrong:
            problems.append(f"its event log does not replay ({', '.join(wrong)} differ)")
    return problems


def _dcap(
    quote: TdxQuote, policy: AttestationPolicy, now: int, collateral: Mapping[str, Any] | None
) -> tuple[str, str]:
    if policy.dcap == "off":
        return "DCAP off (its signature not verified)", ""
    if collateral is None:
        return "", "no DCAP collateral for its quote"
    try:
        verified = verify_quote_dcap(quote.raw, collateral, now)
    except AttestationError as exc:
        return "", f"its quote: {exc.message}"
    if verified.report.differences(quote.report):
        return "", "its DCAP-verified TD report differs from the parsed one"
    if not policy.tcb_status_allowed(verified.status):
        return "", f"its TCB status {verified.status} is not allowed by policy"
    return f"DCAP {verified.status}", ""


def _facts(member: Mapping[str, Any]) -> ManagerFacts:
    actions = member.get("actions")
    stated = member.get("actions_hash")
    if not isinstance(actions, list):
        return ManagerFacts((), False)
    text = json.dumps(actions, separators=(",", ":"), ensure_ascii=False)
    authenticated = isinstance(stated, str) and (
        hashlib.sha256(text.encode("utf-8")).hexdigest() == stated.strip().lower()
    )
    if not authenticated:
        return ManagerFacts((), False)
    deployed: list[str] = []
    for action in actions:
        if isinstance(action, Mapping) and action.get("action") == "compose_up":
            services = action.get("services")
            names = ", ".join(str(s) for s in services[:8]) if isinstance(services, list) else ""
            entry = f"{action.get('file')} ({names})" if names else str(action.get("file"))
            if entry not in deployed:
                deployed.append(entry)
    return ManagerFacts(tuple(deployed[-3:]), True)
