"""The shipped measurement policy (``data/measurement_policy.json``) and the checks built on it.

Data file format (JSON, package data; every value lowercase hex, every entry with where it was
seen and its sources)::

    {"format", "updated": "YYYY-MM-DD", "how_to_update",
     "mrseam": {"enforced": true, "values": [{"value", "release", "seen_on_venice", "sources"}]},
     "mrtd":   {"enforced": true, "values": [...]},
     "known":  {"rtmr0" | "rtmr1" | "rtmr2" | "compose_hash": [{"value", "seen_on"}]},
     "gateway": {"kms_roots": [{"value", "name", "sources"}], "app_ids": [...]}}

Checks (tier ``measurements``), on the quote's TD report:

``mrseam_allowed``
    MRSEAM (the Intel TDX module) is a release in the policy or in ``policy.extra_mrseam``.
    Enforced: an unknown TDX module is not one Intel published.
``mrtd_allowed``
    MRTD (the dstack virtual firmware) is one seen on Venice or in ``policy.extra_mrtd``.
    Enforced: unknown firmware means the guest's first code is not a known dstack build.
``measurements_known``
    RTMR0-2 and the compose hash, each reported as known (with where it was seen) or unknown.
    Informational: these change with hardware sizes and redeploys; ``attestation.pins`` is the
    way to enforce them for one model (``measurements_pinned``).

The gateway trust anchors (KMS roots, app ids) are read here too and used by :mod:`.custody`.

Deliberately NOT checked: ``mr_signer_seam`` and ``seam_attributes`` (zero for Intel's own
modules; DCAP's TCB evaluation covers the module's SVN), XFAM, and whether a known value is
still current: a value stays in the file until it is removed on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final

from proxy.attestation.quote import TdReport
from proxy.attestation.report import TIER_MEASUREMENTS, CheckResult

MRSEAM_ALLOWED: Final = "mrseam_allowed"
MRTD_ALLOWED: Final = "mrtd_allowed"
MEASUREMENTS_KNOWN: Final = "measurements_known"

MEASUREMENT_CHECK_CODES: Final = (MRSEAM_ALLOWED, MRTD_ALLOWED, MEASUREMENTS_KNOWN)
KNOWN_NAMES: Final = ("rtmr0", "rtmr1", "rtmr2", "compose_hash")
DATA_FILE: Final = "measurement_policy.json"


@dataclass(frozen=True, slots=True)
class ShippedPolicy:
    """The data file, parsed: value -> description, per register."""

    updated: str
    mrseam: Mapping[str, str]
    mrtd: Mapping[str, str]
    known: Mapping[str, Mapping[str, str]]
    kms_roots: Mapping[str, str]
    app_ids: Mapping[str, str]
    raw: Mapping[str, Any] = field(repr=False)


def _values(entries: Any, label: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("value"), str):
            out[entry["value"].lower()] = str(entry.get(label) or "")
    return out


def parse_policy_data(document: Mapping[str, Any]) -> ShippedPolicy:
    """Parse a measurement policy document (the shipped file's format)."""
    known_part = document.get("known") if isinstance(document.get("known"), Mapping) else {}
    assert isinstance(known_part, Mapping)
    gateway = document.get("gateway") if isinstance(document.get("gateway"), Mapping) else {}
    assert isinstance(gateway, Mapping)
    return ShippedPolicy(
        updated=str(document.get("updated", "unknown")),
        mrseam=_values((document.get("mrseam") or {}).get("values"), "release"),
        mrtd=_values((document.get("mrtd") or {}).get("values"), "release"),
        known={name: _values(known_part.get(name), "seen_on") for name in KNOWN_NAMES},
        kms_roots=_values(gateway.get("kms_roots"), "name"),
        app_ids=_values(gateway.get("app_ids"), "name"),
        raw=document,
    )


@cache
def shipped_policy() -> ShippedPolicy:
    """The policy shipped in the package (read once)."""
    text = resources.files("proxy.attestation.data").joinpath(DATA_FILE).read_text("utf-8")
    return parse_policy_data(json.loads(text))


def _result(code: str, ok: bool | None, detail: str, enforced: bool) -> CheckResult:
    return CheckResult(code=code, ok=ok, enforced=enforced, detail=detail, tier=TIER_MEASUREMENTS)


def _skipped(code: str, because: str, enforced: bool) -> CheckResult:
    return _result(code, False, f"not evaluated: {because} failed", enforced)


def measurement_checks(
    report: TdReport | None,
    quote_failure: str,
    compose_hash: str | None,
    *,
    extra_mrseam: frozenset[str] = frozenset(),
    extra_mrtd: frozenset[str] = frozenset(),
    shipped: ShippedPolicy | None = None,
) -> list[CheckResult]:
    """The three measurement results. ``report`` is None when ``quote_failure`` failed."""
    data = shipped or shipped_policy()
    if report is None:
        return [
            # The quote's own failure decides the verdict; these only report.
            _skipped(MRSEAM_ALLOWED, quote_failure, False),
            _skipped(MRTD_ALLOWED, quote_failure, False),
            _skipped(MEASUREMENTS_KNOWN, quote_failure, False),
        ]
    return [
        _allowed(MRSEAM_ALLOWED, "MRSEAM", report.mr_seam.hex(), data.mrseam, extra_mrseam, data),
        _allowed(MRTD_ALLOWED, "MRTD", report.mr_td.hex(), data.mrtd, extra_mrtd, data),
        _known(report, compose_hash, data),
    ]


def _allowed(
    code: str,
    name: str,
    value: str,
    shipped: Mapping[str, str],
    extra: frozenset[str],
    data: ShippedPolicy,
) -> CheckResult:
    setting = "attestation.extra_" + name.lower()
    if value in shipped:
        return _result(code, True, f"{name} {value[:16]}… is {shipped[value]}", True)
    if value in extra:
        return _result(code, True, f"{name} {value[:16]}… is allowed by {setting}", True)
    detail = (
        f"{name} {value} is not in the measurement policy ({len(shipped)} known values, "
        f"updated {data.updated}); after checking it against its source, add it to {setting}"
    )
    return _result(code, False, detail, True)


def _known(report: TdReport, compose_hash: str | None, data: ShippedPolicy) -> CheckResult:
    seen = {
        "rtmr0": report.rtmr0.hex(),
        "rtmr1": report.rtmr1.hex(),
        "rtmr2": report.rtmr2.hex(),
        "compose_hash": compose_hash,
    }
    parts: list[str] = []
    unknown: list[str] = []
    for name, value in seen.items():
        if value is None:
            parts.append(f"{name} not bound")
            continue
        where = data.known[name].get(value)
        if where is None:
            unknown.append(name)
            parts.append(f"{name} {value[:16]}… unknown")
        else:
            parts.append(f"{name} known ({where})")
    ok = not unknown
    verdict = "all known" if ok else f"unknown: {', '.join(unknown)} (pin them to enforce)"
    return _result(MEASUREMENTS_KNOWN, ok, f"{verdict}; " + "; ".join(parts), False)


def known_status(value: str | None, name: str) -> str | None:
    """Where a value of ``name`` (rtmr0..2, compose_hash) was seen, or None when unknown."""
    if value is None:
        return None
    return shipped_policy().known.get(name, {}).get(value)
