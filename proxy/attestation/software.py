"""The "software" tier: what runs in the TD, as far as the quote binds it.

Inputs (all unauthenticated until the quote they are compared with passes DCAP):

- the event logs (:mod:`.eventlog`), replayed against RTMR0..3 of the quote;
- ``info.tcb_info.app_compose`` (dstack's app manifest, a JSON string hashed as sent) and the
  ``compose_hash`` copies in ``info`` and ``info.tcb_info``;
- ``vm_config`` (a JSON string: ``image``, ``os_image_hash``, ...) and the ``os_image_hash``
  copies in ``info`` and ``info.tcb_info``;
- ``mr_config_id`` and ``mr_td``/``rtmr0..2`` of the quote.

Checks (tier ``software``, in this order):

``event_log_replay``
    every event log present replays to RTMR0..3 of the quote. No log: ``ok=None``.
``compose_hash_binding``
    the compose hash bound by the quote equals ``sha256(app_compose)`` and every stated
    ``compose_hash``. Two bindings exist and both hold on every real capture (NEAR, Phala
    legacy, aci): ``mr_config_id = 01 || compose_hash || 00*15`` (docs/protocol.md#compose-hash)
    and the RTMR3 runtime event ``compose-hash`` whose payload is the hash. Either one suffices;
    when both are present they must agree; the event only counts once the log replays. A report
    without ``app_compose`` (aci) passes on the binding alone and says that the manifest
    itself was not shown. No binding at all: ``ok=None``.
``os_image_not_dev``
    ``vm_config.image`` names no dstack dev/debug image (a ``dev``, ``devel`` or ``debug``
    token, as in ``dstack-nvidia-dev-0.5.8-…``; dev images let the operator log in), and every
    stated ``os_image_hash`` equals the one the RTMR3 ``os-image-hash`` event measured. The
    image *name* is self-reported: only a pinned ``os_image_hash`` makes it binding. No image
    name: ``ok=None``.
``measurements_pinned``
    with pins for the requested model, each pinned measurement's value (mrtd, rtmr0..2 from the
    quote; compose_hash from the binding above; os_image_hash from the replayed event log) is
    one of the allowed values. Without pins: ``ok=None``, not enforced, and the detail lists
    the values seen so they can be copied into a config.

Enforcement: the first three follow ``policy.software`` (``ok=None`` fails closed when
enforced); ``os_image_not_dev`` also yields to ``policy.allow_dev_image``; pins, being explicit,
are always enforced.

Deliberately NOT checked: any flag inside ``app_compose`` (dstack's manifest has no debug flag;
``public_logs`` is a privacy concern of the app, not a TEE property), the KMS and app
certificates, ``mr_aggregated``, the ``info.tcb_info`` copies of mrtd/rtmr (the quote is the
authority), RTMR3 pinning (it differs per instance) and whether an image hash is a genuine
dstack release (that is what pinning is for).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxy.attestation.eventlog import (
    Event,
    EventLog,
    EventLogError,
    parse_event_log,
    replay,
    runtime_claim,
)
from proxy.attestation.evidence import Evidence
from proxy.attestation.policy import PIN_HEX_LENGTHS, AttestationPolicy
from proxy.attestation.quote import TdxQuote
from proxy.attestation.report import TIER_SOFTWARE, CheckResult

EVENT_LOG_REPLAY: Final = "event_log_replay"
COMPOSE_HASH_BINDING: Final = "compose_hash_binding"
OS_IMAGE_NOT_DEV: Final = "os_image_not_dev"
MEASUREMENTS_PINNED: Final = "measurements_pinned"

SOFTWARE_CHECK_CODES: Final = (
    EVENT_LOG_REPLAY,
    COMPOSE_HASH_BINDING,
    OS_IMAGE_NOT_DEV,
    MEASUREMENTS_PINNED,
)

DEV_IMAGE_TOKENS: Final = frozenset({"dev", "devel", "debug"})
_IMAGE_NAME_TOKENS: Final = re.compile(r"[a-z0-9]+")
_CONFIG_ID_TAG = 0x01
_COMPOSE_HASH_BYTES = 32


@dataclass(frozen=True, slots=True)
class _Facts:
    """What the report says and what the quote binds, gathered once for all four checks."""

    replay: CheckResult
    events: tuple[Event, ...] | None  # the replayed events, only when every log replays
    info: Mapping[str, Any]
    tcb_info: Mapping[str, Any]


def software_checks(
    evidence: Evidence,
    quote: TdxQuote | None,
    quote_failure: str,
    policy: AttestationPolicy,
    model: str,
) -> list[CheckResult]:
    """The four software-tier results. ``quote`` is None when ``quote_failure`` failed."""
    enforced = policy.software_enforced
    info = evidence.info or {}
    tcb_info = info.get("tcb_info")
    tcb = tcb_info if isinstance(tcb_info, Mapping) else {}
    replay_result, events = _event_log_replay(evidence, tcb, quote, quote_failure, enforced)
    facts = _Facts(replay=replay_result, events=events, info=info, tcb_info=tcb)
    compose_result, compose_hash = _compose_hash_binding(facts, quote, quote_failure, enforced)
    image_result, os_image_hash = _os_image_not_dev(facts, policy, enforced)
    pins_result = _measurements_pinned(
        policy, model, quote, quote_failure, compose_hash, os_image_hash
    )
    return [replay_result, compose_result, image_result, pins_result]


def _result(code: str, ok: bool | None, detail: str, enforced: bool) -> CheckResult:
    return CheckResult(code=code, ok=ok, enforced=enforced, detail=detail, tier=TIER_SOFTWARE)


def _skipped(code: str, because: str, enforced: bool) -> CheckResult:
    return _result(code, False, f"not evaluated: {because} failed", enforced)


# --- event_log_replay -------------------------------------------------------------------------


def _log_sources(evidence: Evidence, tcb: Mapping[str, Any]) -> list[tuple[str, Any]]:
    sources: list[tuple[str, Any]] = []
    if evidence.event_log:
        name = "attestation.evidence.event_log" if evidence.shape == "aci" else "event_log"
        sources.append((name, evidence.event_log))
    nested = tcb.get("event_log")
    if nested not in (None, "", []):
        sources.append(("info.tcb_info.event_log", nested))
    return sources


def _event_log_replay(
    evidence: Evidence,
    tcb: Mapping[str, Any],
    quote: TdxQuote | None,
    quote_failure: str,
    enforced: bool,
) -> tuple[CheckResult, tuple[Event, ...] | None]:
    sources = _log_sources(evidence, tcb)
    if not sources:
        detail = "no event log in the attestation: RTMR0-3 cannot be explained"
        return _result(EVENT_LOG_REPLAY, None, detail, enforced), None
    if quote is None:
        return _skipped(EVENT_LOG_REPLAY, quote_failure, enforced), None
    logs: list[EventLog] = []
    for source, value in sources:
        if logs and value == sources[0][1]:
            # The same entries under a second name (Venice repeats the log in tcb_info): the
            # same parse, checked against the quote under its own name below.
            logs.append(EventLog(source, logs[0].events))
            continue
        try:
            logs.append(parse_event_log(value, source))
        except EventLogError as exc:
            return _result(EVENT_LOG_REPLAY, False, f"{source}: {exc}", enforced), None
    for log in logs:
        replayed = replay(log.events)
        wrong = [f"RTMR{i}" for i in range(4) if replayed[i] != quote.report.rtmrs[i]]
        if wrong:
            detail = f"{log.source} ({len(log.events)} events): {', '.join(wrong)} differ"
            return _result(EVENT_LOG_REPLAY, False, detail + " from the quote", enforced), None
    names = ", ".join(log.source for log in logs)
    detail = f"{len(logs[0].events)} events replay RTMR0-3 of the quote ({names})"
    return _result(EVENT_LOG_REPLAY, True, detail, enforced), logs[0].events


def _claim(facts: _Facts, name: str) -> tuple[bytes | None, str | None]:
    """A runtime claim from the replayed log: (payload, None) or (None, why it is unusable)."""
    if facts.events is None:
        return None, f"{EVENT_LOG_REPLAY} did not pass"
    try:
        return runtime_claim(facts.events, name), None
    except EventLogError as exc:
        return None, str(exc)


# --- compose_hash_binding ---------------------------------------------------------------------


def _config_id_hash(mr_config_id: bytes) -> tuple[str | None, str]:
    if not any(mr_config_id):
        return None, "mr_config_id is zero"
    tail = mr_config_id[1 + _COMPOSE_HASH_BYTES :]
    if mr_config_id[0] != _CONFIG_ID_TAG or any(tail):
        return None, "mr_config_id has no dstack compose-hash layout"
    return mr_config_id[1 : 1 + _COMPOSE_HASH_BYTES].hex(), ""


def measured_claim(evidence: Evidence, quote: TdxQuote | None, name: str) -> bytes | None:
    """A runtime claim (``os-image-hash``, ``app-id``, ...) from a log that replays, else None."""
    if quote is None:
        return None
    tcb = (evidence.info or {}).get("tcb_info")
    result, events = _event_log_replay(
        evidence, tcb if isinstance(tcb, Mapping) else {}, quote, "", True
    )
    if result.ok is not True or events is None:
        return None
    try:
        return runtime_claim(events, name)
    except EventLogError:
        return None


def bound_compose_hash(quote: TdxQuote | None) -> str | None:
    """The compose hash ``mr_config_id`` binds (dstack layout), else None."""
    return _config_id_hash(quote.report.mr_config_id)[0] if quote is not None else None


def _stated(mapping: Mapping[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    return value.strip().lower().removeprefix("0x") if isinstance(value, str) and value else None


def _compose_hash_binding(
    facts: _Facts, quote: TdxQuote | None, quote_failure: str, enforced: bool
) -> tuple[CheckResult, str | None]:
    code = COMPOSE_HASH_BINDING
    if quote is None:
        return _skipped(code, quote_failure, enforced), None
    bound: dict[str, str] = {}
    config_hash, config_note = _config_id_hash(quote.report.mr_config_id)
    if config_hash is not None:
        bound["mr_config_id"] = config_hash
    event_hash, event_note = _claim(facts, "compose-hash")
    if event_hash is not None:
        bound["the compose-hash event"] = event_hash.hex()
    elif event_note is None:
        event_note = "no compose-hash event"
    if len(set(bound.values())) > 1:
        detail = " but ".join(f"{source} binds {value}" for source, value in bound.items())
        return _result(code, False, detail, enforced), None
    if not bound:
        detail = f"no compose hash is bound by the quote ({config_note}; {event_note})"
        return _result(code, None, detail, enforced), None
    value = next(iter(bound.values()))
    stated = [
        (name, hash_value)
        for name, hash_value in (
            ("info.compose_hash", _stated(facts.info, "compose_hash")),
            ("info.tcb_info.compose_hash", _stated(facts.tcb_info, "compose_hash")),
        )
        if hash_value is not None
    ]
    # The manifest the compose facts read (compose.app_compose_of): tcb_info's, unless it is
    # absent or null, then info's. Hashing another one would vouch for a manifest never checked.
    app_compose = facts.tcb_info.get("app_compose")
    if app_compose is None:
        app_compose = facts.info.get("app_compose")
    if app_compose is not None:
        if not isinstance(app_compose, str):
            return _result(code, False, "app_compose is not a string", enforced), value
        stated.append(("sha256(app_compose)", hashlib.sha256(app_compose.encode()).hexdigest()))
    for name, hash_value in stated:
        if hash_value != value:
            detail = f"{name} {hash_value} != compose hash {value} bound by the quote"
            return _result(code, False, detail, enforced), value
    sources = " and ".join(bound)
    shown = (
        "app_compose hashes to it"
        if app_compose is not None
        else "the report carries no app_compose to hash"
    )
    return _result(code, True, f"compose hash {value} bound by {sources}; {shown}", enforced), value


# --- os_image_not_dev -------------------------------------------------------------------------


def _vm_config(info: Mapping[str, Any]) -> Mapping[str, Any] | None:
    value = info.get("vm_config")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return None
    return value if isinstance(value, Mapping) else None


def is_dev_image(name: str) -> bool:
    """True when an image name has a dev/debug token (``dstack-nvidia-dev-0.5.8-e3e677dd``,
    ``dstack/dev:0.5``): tokens are the runs of letters and digits, so any separator counts and
    a word that only starts with one (``devstack``, ``device``) does not."""
    tokens = _IMAGE_NAME_TOKENS.findall(name.lower())
    return any(token in DEV_IMAGE_TOKENS for token in tokens)


def _os_image_not_dev(
    facts: _Facts, policy: AttestationPolicy, enforced: bool
) -> tuple[CheckResult, str | None]:
    code = OS_IMAGE_NOT_DEV
    measured_bytes, _ = _claim(facts, "os-image-hash")
    measured = measured_bytes.hex() if measured_bytes is not None else None
    vm_config = _vm_config(facts.info)
    image = vm_config.get("image") if vm_config is not None else None
    if not isinstance(image, str) or not image:
        return _result(code, None, "no vm_config image name in the attestation", enforced), measured
    if measured is not None:
        for name, stated in (
            ("vm_config.os_image_hash", _stated(vm_config or {}, "os_image_hash")),
            ("info.os_image_hash", _stated(facts.info, "os_image_hash")),
            ("info.tcb_info.os_image_hash", _stated(facts.tcb_info, "os_image_hash")),
        ):
            if stated is not None and stated != measured:
                detail = f"{name} {stated} != os-image-hash {measured} measured in RTMR3"
                return _result(code, False, detail, enforced), measured
    shown = f"image {image[:80]!r}"
    if is_dev_image(image):
        allowed = policy.allow_dev_image
        detail = f"{shown} is a dstack dev image (operator login possible)"
        detail += "; allowed by policy" if allowed else ""
        return _result(code, False, detail, enforced and not allowed), measured
    hash_note = f", os_image_hash {measured}" if measured is not None else ""
    return _result(code, True, f"{shown}{hash_note}", enforced), measured


# --- measurements_pinned ----------------------------------------------------------------------


def _measurements_pinned(
    policy: AttestationPolicy,
    model: str,
    quote: TdxQuote | None,
    quote_failure: str,
    compose_hash: str | None,
    os_image_hash: str | None,
) -> CheckResult:
    code = MEASUREMENTS_PINNED
    pins = policy.pins_for(model)
    seen: dict[str, str | None] = dict.fromkeys(PIN_HEX_LENGTHS)
    if quote is not None:
        seen |= {
            "mrtd": quote.report.mr_td.hex(),
            "rtmr0": quote.report.rtmr0.hex(),
            "rtmr1": quote.report.rtmr1.hex(),
            "rtmr2": quote.report.rtmr2.hex(),
        }
    seen |= {"compose_hash": compose_hash, "os_image_hash": os_image_hash}
    if pins is None:
        values = " ".join(f"{name}={value or 'unknown'}" for name, value in seen.items())
        return _result(code, None, f"no pins for {model!r}; seen {values}", False)
    if quote is None:
        return _skipped(code, quote_failure, True)
    problems: list[str] = []
    for name, allowed in pins.pinned().items():
        value = seen[name]
        if value is None:
            problems.append(f"{name} is pinned but this attestation does not bind one")
        elif value not in allowed:
            problems.append(f"{name} {value} is not one of the {len(allowed)} pinned values")
    if problems:
        return _result(code, False, "; ".join(problems), True)
    return _result(code, True, f"{', '.join(pins.pinned())} match the pins for {model!r}", True)
