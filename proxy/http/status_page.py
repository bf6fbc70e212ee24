"""``GET /``: the attestation status page, server-rendered HTML that works with JavaScript off.

For each E2EE model the upstream lists (and each model attested or remembered), one card: the
trust level (``enclave``, ``gateway`` or not attested yet) and the verdict, what is and is not
attested, the signing address, TCB status, attestation age and expiry, the checks by tier with
their values, the compose's images and the gateway's custody facts. Then the response
signature results so far, the settings that weaken the checks, and what the proxy cannot vouch
for at all. The page only shows what the proxy already knows: it never triggers an attestation
(a model is attested on its first request, or by ``attestation.warm_up``).

Safety: every value is escaped (:func:`html.escape`); no script, no external asset, no form.
Headers: ``Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; img-src
'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'``, ``X-Content-Type-Options:
nosniff``, ``Referrer-Policy: no-referrer``, ``Cache-Control: no-store``. The listener guards
apply as to every route (local API keys, Host allowlist).

Element ids the tests read: ``model-<id>`` (the card, with ``data-trust`` and ``data-verdict``
attributes), ``verdict-<id>``, ``trust-<id>``.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from proxy.core.errors import ProxyError
from proxy.http.services import Services, model_trust
from proxy.service.enclave_keys import AttestedKey
from proxy.settings import weakenings

router = APIRouter()

CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
CANNOT_VOUCH: Final = (
    "Which model weights a host loads: nothing in any attestation measures them.",
    "Venice's own labels (model, verified, server_verification): unauthenticated.",
    "On gateway models: the inference host that reads the decrypted prompt.",
    "What the measured software does with a prompt beyond what its images are.",
    "That Venice routes a request to the attested machine: only the key proves it, so a "
    "request encrypted to that key can be read only there.",
)
_TIER_ORDER: Final = (
    "trust",
    "response",
    "binding",
    "quote",
    "gpu",
    "software",
    "measurements",
    "custody",
)
_STYLE: Final = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;
background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c4c9d4}
main{max-width:1120px;margin:0 auto;padding:20px}
section.card{background:#fff;border-radius:10px;box-shadow:0 1px 3px #0002;margin:0 0 18px;
padding:16px 20px;border-left:8px solid #9aa1ad}
section.card.enclave.passed{border-left-color:#1f9d55}
section.card.gateway.passed{border-left-color:#d97706}
section.card.failed{border-left-color:#c81e1e}
h2{margin:0 0 6px;font-size:19px;word-break:break-all}
.badge{display:inline-block;border-radius:999px;padding:2px 10px;font-size:12px;
font-weight:700;letter-spacing:.04em;margin-right:6px;color:#fff;background:#6b7280}
.badge.enclave{background:#1f9d55}.badge.gateway{background:#d97706}
.badge.passed{background:#1f9d55}.badge.failed{background:#c81e1e}
.badge.pending{background:#6b7280}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:10px 0}
dt{color:#586174}dd{margin:0;word-break:break-all}
table{border-collapse:collapse;width:100%;font-size:13px;margin:4px 0 10px}
th,td{text-align:left;padding:3px 6px;border-bottom:1px solid #eceef2;vertical-align:top}
td.detail{word-break:break-word;color:#3a4252}
.r-pass{color:#1f9d55;font-weight:700}.r-fail{color:#c81e1e;font-weight:700}
.r-skip{color:#6b7280;font-weight:700}
.not{color:#9a3412}ul{margin:4px 0 8px 20px;padding:0}
details summary{cursor:pointer;color:#374151;margin:6px 0}
.error{background:#fdecec;border-radius:6px;padding:8px 10px;word-break:break-word}
.warn{background:#fff4e5;border-radius:6px;padding:8px 10px}
footer{color:#6b7280;font-size:12px;text-align:center;padding:10px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", model)[:120]


def _when(unix: float | None) -> str:
    if unix is None:
        return "unknown"
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds >= 172_800:
        return f"{seconds // 86_400} days"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _mark(check: Mapping[str, Any]) -> tuple[str, str]:
    ok, enforced = check.get("ok"), check.get("enforced")
    if ok is True:
        return "PASS", "r-pass"
    if ok is None and not enforced:
        return "SKIP", "r-skip"
    if ok is False and not enforced:
        return "FLAG", "r-skip"
    return "FAIL", "r-fail"


def _checks_table(checks: Iterable[Mapping[str, Any]], *, gateway: bool) -> str:
    tiers: dict[str, list[Mapping[str, Any]]] = {}
    for check in checks:
        tiers.setdefault(str(check.get("tier")), []).append(check)
    parts: list[str] = []
    for tier in sorted(tiers, key=lambda t: _TIER_ORDER.index(t) if t in _TIER_ORDER else 99):
        rows = []
        for check in tiers[tier]:
            mark, css = _mark(check)
            scope = "enforced" if check.get("enforced") else "advisory"
            rows.append(
                f'<tr><td class="{css}">{mark}</td><td>{_e(check.get("code"))}</td>'
                f'<td>{scope}</td><td class="detail">{_e(check.get("detail"))}</td></tr>'
            )
        parts.append(
            f"<details{' open' if tier == 'trust' or (gateway and tier == 'custody') else ''}>"
            f"<summary>{_e(tier)} "
            f"({len(rows)} checks)</summary><table><tr><th>result</th><th>check</th>"
            f"<th></th><th>value seen</th></tr>{''.join(rows)}</table></details>"
        )
    return "".join(parts)


def _facts(report: Mapping[str, Any]) -> str:
    facts = report.get("facts") or {}
    parts: list[str] = []
    compose = facts.get("compose")
    if isinstance(compose, Mapping) and compose.get("images"):
        rows = "".join(
            f"<tr><td>{_e(image.get('service'))}</td><td>{_e(image.get('image') or 'build')}</td>"
            f'<td class="{"r-pass" if image.get("pinned") else "r-fail"}">'
            f"{'pinned by digest' if image.get('pinned') else 'NOT pinned'}</td></tr>"
            for image in compose["images"]
            if isinstance(image, Mapping)
        )
        parts.append(
            "<details><summary>what the measured compose runs</summary><table><tr>"
            f"<th>service</th><th>image</th><th></th></tr>{rows}</table></details>"
        )
    gateway = facts.get("gateway")
    if isinstance(gateway, Mapping):
        labels = {
            "downstream_tls": "downstream TLS (self-asserted)",
            "keyset_not_after": "keyset not after (advisory)",
            "source": "source (built at boot, not measured)",
        }
        items = "".join(
            f"<dt>{_e(labels.get(name, name.replace('_', ' ')))}</dt><dd>{_e(value)}</dd>"
            for name, value in gateway.items()
        )
        parts.append(f"<details open><summary>gateway custody</summary><dl>{items}</dl></details>")
    measurements = facts.get("measurements")
    if isinstance(measurements, Mapping) and measurements:
        known = measurements.get("known") or {}
        items = "".join(
            f"<dt>{_e(name)}</dt><dd>{_e(value)}"
            + (
                f" <small>({'known: ' + _e(known[name]) if known.get(name) else 'unknown'})</small>"
                if name in known
                else ""
            )
            + "</dd>"
            for name, value in measurements.items()
            if name != "known" and value
        )
        parts.append(f"<details><summary>measurements</summary><dl>{items}</dl></details>")
    return "".join(parts)


def _card(
    model: str,
    key: AttestedKey | None,
    error: ProxyError | None,
    now: float,
    *,
    remembered: str | None,
) -> str:
    slug = _slug(model)
    if key is None:
        trust = remembered or "unknown"
        verdict = "failed" if error is not None else "pending"
        label = "FAILED" if error is not None else "NOT ATTESTED YET"
        trust_label = f"{trust} (remembered)" if remembered else "not attested"
        body = (
            f'<p class="error">{_e(error.message)}</p>'
            if error is not None
            else "<p>Attested on its first request (or list it in attestation.warm_up).</p>"
        )
        return (
            f'<section class="card {verdict}" id="model-{slug}" data-trust="{_e(trust)}" '
            f'data-verdict="{verdict}"><h2>{_e(model)}</h2>'
            f'<span class="badge {verdict}" id="verdict-{slug}">{label}</span>'
            f'<span class="badge" id="trust-{slug}">{_e(trust_label)}</span>{body}</section>'
        )
    report = key.report.to_dict()
    trust = str(report.get("trust_level") or "unknown")
    passed = bool(report.get("passed"))
    verdict = "passed" if passed and error is None else "failed"
    refresh = (
        f'<p class="error">The latest re-attestation failed; the key above is used until it '
        f"expires: {_e(error.message)}</p>"
        if error is not None
        else ""
    )
    not_attested = "".join(f"<li>{_e(item)}</li>" for item in report.get("not_attested") or [])
    return (
        f'<section class="card {_e(trust)} {verdict}" id="model-{slug}" data-trust="{_e(trust)}" '
        f'data-verdict="{verdict}"><h2>{_e(model)}</h2>'
        f'<span class="badge {verdict}" id="verdict-{slug}">'
        f"{'ATTESTED' if verdict == 'passed' else 'FAILED'}</span>"
        f'<span class="badge {_e(trust)}" id="trust-{slug}">{_e(trust.upper())} TRUST</span>'
        f"<p><b>Attested:</b> {_e(report.get('attested'))}</p>"
        f'<p class="not"><b>Not attested:</b></p><ul class="not">{not_attested}</ul>{refresh}'
        "<dl>"
        f"<dt>signing address</dt><dd>{_e(report.get('signing_address'))}</dd>"
        f"<dt>TCB status</dt><dd>{_e(report.get('tcb_status') or 'not verified (DCAP off)')}</dd>"
        f"<dt>report</dt><dd>{_e(report.get('shape'))} from {_e(report.get('tee_provider'))}, "
        f"upstream model {_e(report.get('upstream_model'))}</dd>"
        f"<dt>attested</dt><dd>{_when(key.verified_at)} ({_duration(now - key.verified_at)} "
        "ago)</dd>"
        f"<dt>expires</dt><dd>{_when(key.expires_at)} (in {_duration(key.expires_at - now)}"
        ")</dd></dl>"
        f"{_facts(report)}"
        f"{_checks_table(report.get('checks') or [], gateway=trust == 'gateway')}</section>"
    )


def _signature_rows(services: Services) -> str:
    counts: dict[str, float] = {}
    for family in services.metrics.signature_verifications.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                counts[sample.labels.get("outcome", "?")] = sample.value
    if not counts:
        return "<p>No answer's signature has been checked yet.</p>"
    rows = "".join(
        f"<tr><td>{_e(outcome)}</td><td>{int(value)}</td></tr>"
        for outcome, value in sorted(counts.items())
    )
    return f"<table><tr><th>outcome</th><th>answers</th></tr>{rows}</table>"


async def _models(services: Services) -> list[str]:
    names: list[str] = []
    try:
        catalogue = await services.catalogue.models()
        names = [info.id for info in catalogue.values() if info.supports_e2ee]
    except ProxyError:
        names = []
    extra = [*services.keys.models(), *services.keys.failed_models(), *model_trust(services)]
    for name in extra:
        if name not in names:
            names.append(name)
    return names


def render_status(services: Services, models: list[str], now: float) -> str:
    """The whole page as HTML text."""
    remembered = model_trust(services)

    def order(model: str) -> tuple[int, int]:
        key = services.keys.peek(model)
        if key is not None:
            return (0, 0 if key.report.trust_level == "gateway" else 1)
        return (1 if services.keys.last_failure(model) is not None else 2, 0)

    models = sorted(models, key=order)
    cards = "".join(
        _card(
            model,
            services.keys.peek(model),
            services.keys.last_failure(model),
            now,
            remembered=remembered.get(model),
        )
        for model in models
    )
    # serve drops attestation.state_dir when it is not writable: the trust levels then live in
    # memory only, a weakening the page lists as serve's start-up warning does.
    state = services.attester.trust_state
    persisted = state is not None and state.path is not None
    weak = [detail for _, detail in weakenings(services.settings, state_persisted=persisted)]
    weak_html = (
        '<div class="warn"><ul>' + "".join(f"<li>{_e(d)}</li>" for d in weak) + "</ul></div>"
        if weak
        else "<p>None: every check runs and is enforced.</p>"
    )
    demo = (
        '<p class="warn"><b>DEMO MODE:</b> these models are served by the built-in simulator, '
        "not by Venice; its quote carries no Intel signature.</p>"
        if services.demo
        else ""
    )
    cannot = "".join(f"<li>{_e(item)}</li>" for item in CANNOT_VOUCH)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>venice-e2ee-proxy: attestation status</title><style>{_STYLE}</style></head>"
        "<body><header><h1>venice-e2ee-proxy: attestation status</h1>"
        f"<p>{_e(services.settings.upstream.base_url)} &middot; {_when(now)}</p></header><main>"
        f"{demo}{cards or '<p>No E2EE models known yet.</p>'}"
        '<section class="card"><h2>Response signatures</h2>'
        f"<p>mode: {_e(services.settings.signatures.mode)}</p>{_signature_rows(services)}"
        '</section><section class="card"><h2>Settings that weaken the checks</h2>'
        f'{weak_html}</section><section class="card"><h2>What this proxy cannot vouch for'
        f"</h2><ul>{cannot}</ul></section></main><footer>Rendered by the proxy, no scripts, "
        "no external assets.</footer></body></html>"
    )


@router.get("/")
async def status_page(request: Request) -> HTMLResponse:
    """The attestation status page."""
    services: Services = request.app.state.services
    models = await _models(services)
    return HTMLResponse(render_status(services, models, time.time()), headers=SECURITY_HEADERS)
