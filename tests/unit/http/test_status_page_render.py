"""The status page's HTML, rendered in-process (no server, no browser): what a user reads about
each model's trust level, verdict and checks, and that everything shown is escaped.

The page in a real Chromium against a real proxy is ``tests/e2e/test_status_page.py``.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from proxy.attestation.report import AttestationReport, CheckResult
from proxy.core.errors import AttestationError, ProxyError
from proxy.http import status_page
from proxy.http.services import Services
from proxy.http.status_page import CSP, SECURITY_HEADERS, render_status
from proxy.observability.metrics import Metrics
from proxy.service.catalog import ModelInfo
from proxy.service.enclave_keys import AttestedKey
from proxy.service.trust_state import TrustState
from proxy.settings import Settings

NOW = 1_800_000_000.0
PERSISTED = TrustState(Path("/nonexistent/state"))  # a state file that is kept (none yet)
HOSTILE = '<img src=x onerror="alert(1)">&'
ESCAPED = html.escape(HOSTILE, quote=True)


def check(code: str, ok: bool | None, enforced: bool, tier: str, detail: str = "") -> CheckResult:
    return CheckResult(
        code=code, ok=ok, enforced=enforced, detail=detail or f"{code} seen", tier=tier
    )


def report(
    model: str = "e2ee-m",
    *,
    trust: str | None = "enclave",
    checks: tuple[CheckResult, ...] | None = None,
    **extra: Any,
) -> AttestationReport:
    values: dict[str, Any] = {
        "model": model,
        "nonce": "00" * 32,
        "shape": "near",
        "signing_address": "0x" + "ab" * 20,
        "signing_public_key": None,
        "tcb_status": "UpToDate",
        "checks": checks
        if checks is not None
        else (check("trust_level", True, True, "trust", f"{trust} trust"),),
        "tee_provider": "near-ai",
        "upstream_model": "org/model",
        "trust_level": trust,
        "attested": "the machine that runs the model",
        "not_attested": ("the model weights",),
        **extra,
    }
    return AttestationReport(**values)


def key(
    rep: AttestationReport, *, verified_at: float = NOW - 90, expires_at: float = NOW + 3000
) -> AttestedKey:
    return AttestedKey(
        model=rep.model,
        public_key=b"\x04" + b"\x01" * 64,
        signing_address=rep.signing_address,
        report=rep,
        verified_at=verified_at,
        refresh_at=expires_at - 60,
        expires_at=expires_at,
    )


class Keys:
    """What the page reads of the key cache: valid keys, and the last failure per model."""

    def __init__(
        self,
        keys: Mapping[str, AttestedKey] | None = None,
        failures: Mapping[str, ProxyError] | None = None,
    ) -> None:
        self.keys = dict(keys or {})
        self.failures = dict(failures or {})

    def peek(self, model: str) -> AttestedKey | None:
        return self.keys.get(model)

    def last_failure(self, model: str) -> ProxyError | None:
        return self.failures.get(model)

    def models(self) -> list[str]:
        return list(self.keys)

    def failed_models(self) -> list[str]:
        return list(self.failures)


class Catalogue:
    def __init__(self, models: dict[str, ModelInfo] | ProxyError) -> None:
        self._models = models

    async def models(self) -> dict[str, ModelInfo]:
        if isinstance(self._models, ProxyError):
            raise self._models
        return self._models


def services(
    keys: Keys | None = None,
    *,
    trust_state: TrustState | None = None,
    settings: Settings | None = None,
    metrics: Metrics | None = None,
    demo: bool = False,
    catalogue: Catalogue | None = None,
) -> Services:
    return cast(
        Services,
        SimpleNamespace(
            keys=keys or Keys(),
            attester=SimpleNamespace(trust_state=trust_state or PERSISTED),
            settings=settings or Settings(),
            metrics=metrics or Metrics(process_metrics=False),
            demo=demo,
            catalogue=catalogue or Catalogue({}),
        ),
    )


def page(svc: Services, models: list[str] | None = None) -> str:
    names = models if models is not None else [*svc.keys.models(), *svc.keys.failed_models()]
    return render_status(svc, names, NOW)


def card(text: str, slug: str) -> str:
    match = re.search(rf'<section class="[^"]*" id="model-{re.escape(slug)}".*?</section>', text)
    assert match is not None, text
    return match.group(0)


def row(mark: str, css: str, code: str, scope: str, detail: str) -> str:
    return (
        f'<tr><td class="{css}">{mark}</td><td>{code}</td><td>{scope}</td>'
        f'<td class="detail">{detail}</td></tr>'
    )


# --- the verdict of each check -------------------------------------------------------------------


def test_each_check_is_shown_with_its_own_result_and_a_skip_is_never_a_pass() -> None:
    checks = (
        check("trust_level", True, True, "trust", "enclave"),
        check("dcap", None, True, "quote", "not evaluated: quote_parse failed"),
        check("gpu_nras", None, False, "gpu", "skipped: nvidia = nonce"),
        check("measurements_known", False, False, "measurements", "rtmr0 unknown"),
        check("quote_parse", False, True, "quote", "bad quote"),
        check("keyset_expiry", True, False, "custody", "not after 2030"),
    )
    rep = report(checks=checks)
    text = page(services(Keys({"e2ee-m": key(rep)})))
    assert row("PASS", "r-pass", "trust_level", "enforced", "enclave") in text
    # Enforced but not evaluated fails closed; advisory and not evaluated is a skip.
    assert row("FAIL", "r-fail", "dcap", "enforced", "not evaluated: quote_parse failed") in text
    assert row("SKIP", "r-skip", "gpu_nras", "advisory", "skipped: nvidia = nonce") in text
    # An advisory check that failed is flagged, not failed and never passed.
    assert row("FLAG", "r-skip", "measurements_known", "advisory", "rtmr0 unknown") in text
    assert row("FAIL", "r-fail", "quote_parse", "enforced", "bad quote") in text
    assert row("PASS", "r-pass", "keyset_expiry", "advisory", "not after 2030") in text
    assert text.count("r-pass") - text.count(".r-pass") == 2


def test_tiers_come_in_report_order_and_only_trust_is_open_on_an_enclave() -> None:
    checks = (
        check("x_unknown", True, True, "zeta"),
        check("keyset_digest", True, True, "custody"),
        check("mrtd_allowed", True, True, "measurements"),
        check("event_log_replay", True, True, "software"),
        check("gpu_nonce", True, True, "gpu"),
        check("dcap", True, True, "quote"),
        check("quote_parse", True, True, "quote"),
        check("signing_key_valid", True, True, "binding"),
        check("nonce_echo", True, True, "response"),
        check("trust_level", True, True, "trust"),
        check("y_unknown", True, True, "alpha"),
    )
    text = page(services(Keys({"e2ee-m": key(report(checks=checks))})))
    summaries = re.findall(r"<details( open)?><summary>([a-z]+) \((\d+) checks\)</summary>", text)
    assert summaries == [
        (" open", "trust", "1"),
        ("", "response", "1"),
        ("", "binding", "1"),
        ("", "quote", "2"),
        ("", "gpu", "1"),
        ("", "software", "1"),
        ("", "measurements", "1"),
        ("", "custody", "1"),
        ("", "zeta", "1"),
        ("", "alpha", "1"),
    ]
    assert "</table></details><details><summary>response (1 checks)</summary>" in text
    assert (
        "<table><tr><th>result</th><th>check</th><th></th><th>value seen</th></tr>"
        + row("PASS", "r-pass", "dcap", "enforced", "dcap seen")
        + row("PASS", "r-pass", "quote_parse", "enforced", "quote_parse seen")
        + "</table></details>"
    ) in text


def test_a_gateway_card_opens_its_custody_checks() -> None:
    checks = (
        check("trust_level", True, True, "trust"),
        check("keyset_digest", True, True, "custody"),
    )
    text = page(services(Keys({"e2ee-g": key(report("e2ee-g", trust="gateway", checks=checks))})))
    assert "<details open><summary>custody (1 checks)</summary>" in text
    assert "<details open><summary>trust (1 checks)</summary>" in text


# --- the card of an attested model ---------------------------------------------------------------


def test_an_attested_enclave_model_card_says_what_is_and_is_not_attested() -> None:
    rep = report(not_attested=("the model weights", "what the software does"))
    text = page(services(Keys({"e2ee-m": key(rep, verified_at=NOW - 90, expires_at=NOW + 3000)})))
    assert (
        '<section class="card enclave passed" id="model-e2ee-m" data-trust="enclave" '
        'data-verdict="passed"><h2>e2ee-m</h2>'
        '<span class="badge passed" id="verdict-e2ee-m">ATTESTED</span>'
        '<span class="badge enclave" id="trust-e2ee-m">ENCLAVE TRUST</span>'
        "<p><b>Attested:</b> the machine that runs the model</p>"
        '<p class="not"><b>Not attested:</b></p><ul class="not">'
        "<li>the model weights</li><li>what the software does</li></ul>"
        "<dl><dt>signing address</dt><dd>0x" + "ab" * 20 + "</dd>"
        "<dt>TCB status</dt><dd>UpToDate</dd>"
        "<dt>report</dt><dd>near from near-ai, upstream model org/model</dd>"
        "<dt>attested</dt><dd>2027-01-15 07:58:30 UTC (90 s ago)</dd>"
        "<dt>expires</dt><dd>2027-01-15 08:50:00 UTC (in 50 min)</dd></dl>"
    ) in text


def test_a_gateway_model_is_shown_as_gateway_trust_never_as_enclave() -> None:
    rep = report("e2ee-g", trust="gateway", tcb_status=None)
    text = card(page(services(Keys({"e2ee-g": key(rep)}))), "e2ee-g")
    assert text.startswith(
        '<section class="card gateway passed" id="model-e2ee-g" data-trust="gateway" '
        'data-verdict="passed">'
    )
    assert '<span class="badge gateway" id="trust-e2ee-g">GATEWAY TRUST</span>' in text
    assert "ENCLAVE" not in text
    assert "<dt>TCB status</dt><dd>not verified (DCAP off)</dd>" in text


def test_a_report_without_a_trust_level_is_unknown_trust() -> None:
    text = card(page(services(Keys({"e2ee-m": key(report(trust=None))}))), "e2ee-m")
    assert 'data-trust="unknown"' in text
    assert "UNKNOWN TRUST" in text


def test_a_failed_report_or_a_failed_refresh_is_failed_with_its_reason() -> None:
    failed = report(checks=(check("trust_level", False, True, "trust", "gateway refused"),))
    text = card(page(services(Keys({"e2ee-m": key(failed)}))), "e2ee-m")
    assert 'data-verdict="failed"' in text
    assert '<span class="badge failed" id="verdict-e2ee-m">FAILED</span>' in text
    assert "ATTESTED<" not in text
    assert "re-attestation" not in text

    refresh = AttestationError("quote <expired>", code="dcap")
    text = card(
        page(services(Keys({"e2ee-m": key(report())}, {"e2ee-m": refresh})), ["e2ee-m"]), "e2ee-m"
    )
    assert text.startswith('<section class="card enclave failed"')
    assert '<span class="badge failed" id="verdict-e2ee-m">FAILED</span>' in text
    assert (
        '<p class="error">The latest re-attestation failed; the key above is used until it '
        "expires: quote &lt;expired&gt;</p>"
    ) in text


# --- models without a key ------------------------------------------------------------------------


def test_a_model_not_attested_yet_says_so() -> None:
    text = page(services(), ["e2ee-new"])
    assert (
        '<section class="card pending" id="model-e2ee-new" data-trust="unknown" '
        'data-verdict="pending"><h2>e2ee-new</h2>'
        '<span class="badge pending" id="verdict-e2ee-new">NOT ATTESTED YET</span>'
        '<span class="badge" id="trust-e2ee-new">not attested</span>'
        "<p>Attested on its first request (or list it in attestation.warm_up).</p></section>"
    ) in text


def test_a_remembered_gateway_level_is_shown_as_remembered(tmp_path: Any) -> None:
    state = TrustState(tmp_path)
    state.record("e2ee-g", "gateway")
    text = page(services(trust_state=state), ["e2ee-g"])
    assert 'id="model-e2ee-g" data-trust="gateway" data-verdict="pending"' in text
    assert '<span class="badge" id="trust-e2ee-g">gateway (remembered)</span>' in text


def test_a_refused_model_shows_failed_with_the_escaped_reason() -> None:
    error = AttestationError(f"refused: {HOSTILE}", code="compose_images_pinned")
    text = page(services(Keys(failures={"e2ee-x": error})))
    assert (
        '<section class="card failed" id="model-e2ee-x" data-trust="unknown" '
        'data-verdict="failed"><h2>e2ee-x</h2>'
        '<span class="badge failed" id="verdict-e2ee-x">FAILED</span>'
        '<span class="badge" id="trust-e2ee-x">not attested</span>'
        f'<p class="error">refused: {ESCAPED}</p></section>'
    ) in text
    assert HOSTILE not in text


# --- escaping ------------------------------------------------------------------------------------


def test_everything_the_upstream_says_is_escaped() -> None:
    rep = report(
        HOSTILE,
        checks=(check(HOSTILE, True, True, "trust", HOSTILE),),
        shape=HOSTILE,
        tee_provider=HOSTILE,
        upstream_model=HOSTILE,
        signing_address=HOSTILE,
        tcb_status=HOSTILE,
        attested=HOSTILE,
        not_attested=(HOSTILE,),
        facts={
            "compose": {"images": [{"service": HOSTILE, "image": HOSTILE, "pinned": True}]},
            "gateway": {HOSTILE: HOSTILE},
            "measurements": {HOSTILE: HOSTILE, "known": {HOSTILE: HOSTILE}},
        },
    )
    text = page(services(Keys({HOSTILE: key(rep)})))
    assert HOSTILE not in text
    assert "<img" not in text
    assert 'onerror="' not in text
    slug = "_img_src_x_onerror__alert_1____"
    assert f'id="model-{slug}"' in text
    assert f"<h2>{ESCAPED}</h2>" in text
    assert f"<td>{ESCAPED}</td>" in text
    assert f'<td class="detail">{ESCAPED}</td>' in text
    assert text.count(ESCAPED) >= 14


def test_a_hostile_trust_level_is_escaped_in_the_card_class_too() -> None:
    # The trust level is the proxy's own word today; the page escapes it wherever it goes all
    # the same (it was written raw into the card's class attribute).
    text = page(services(Keys({"e2ee-m": key(report(trust=HOSTILE))})))
    assert HOSTILE not in text
    assert 'onerror="' not in text
    assert f'<section class="card {ESCAPED} passed" id="model-e2ee-m"' in text


def test_a_hostile_remembered_model_name_is_escaped(tmp_path: Any) -> None:
    state = TrustState(tmp_path)
    state.record(HOSTILE, "gateway")
    text = page(services(trust_state=state), [HOSTILE])
    assert HOSTILE not in text
    assert f'data-trust="gateway" data-verdict="pending"><h2>{ESCAPED}</h2>' in text
    assert "gateway (remembered)</span>" in text


def test_the_slug_keeps_safe_characters_and_is_at_most_120_long() -> None:
    text = page(services(), ["Org/model:v1.2_x-y" + "z" * 200])
    assert 'id="model-Org_model_v1.2_x-y' + "z" * 102 + '" ' in text
    assert 'id="verdict-Org_model_v1.2_x-y' + "z" * 102 + '"' in text


# --- facts ---------------------------------------------------------------------------------------


def test_the_compose_images_say_which_are_pinned_by_digest() -> None:
    facts = {
        "compose": {
            "images": [
                {"service": "vllm", "image": "vllm@sha256:" + "0" * 64, "pinned": True},
                {"service": "proxy", "image": "nginx:latest", "pinned": False},
                {"service": "local", "image": None, "pinned": False},
                "not a mapping",
            ]
        }
    }
    text = page(services(Keys({"e2ee-m": key(report(facts=facts))})))
    assert (
        "<details><summary>what the measured compose runs</summary><table><tr>"
        "<th>service</th><th>image</th><th></th></tr>"
        f"<tr><td>vllm</td><td>vllm@sha256:{'0' * 64}</td>"
        '<td class="r-pass">pinned by digest</td></tr>'
        '<tr><td>proxy</td><td>nginx:latest</td><td class="r-fail">NOT pinned</td></tr>'
        '<tr><td>local</td><td>build</td><td class="r-fail">NOT pinned</td></tr>'
        "</table></details>"
    ) in text


def test_a_compose_without_images_shows_no_image_table() -> None:
    text = page(services(Keys({"e2ee-m": key(report(facts={"compose": {"images": []}}))})))
    assert "what the measured compose runs" not in text
    text = page(services(Keys({"e2ee-m": key(report(facts={"compose": "x"}))})))
    assert "what the measured compose runs" not in text


def test_the_gateway_custody_facts_are_labelled_and_open() -> None:
    facts = {
        "gateway": {
            "downstream_tls": "tls1.3",
            "keyset_not_after": "2030-01-01",
            "source": "boot",
            "workload_id": "0xabc",
        }
    }
    text = page(services(Keys({"e2ee-g": key(report("e2ee-g", trust="gateway", facts=facts))})))
    assert (
        "<details open><summary>gateway custody</summary><dl>"
        "<dt>downstream TLS (self-asserted)</dt><dd>tls1.3</dd>"
        "<dt>keyset not after (advisory)</dt><dd>2030-01-01</dd>"
        "<dt>source (built at boot, not measured)</dt><dd>boot</dd>"
        "<dt>workload id</dt><dd>0xabc</dd></dl></details>"
    ) in text
    text = page(services(Keys({"e2ee-g": key(report("e2ee-g", facts={"gateway": "x"}))})))
    assert "gateway custody" not in text


def test_the_measurements_say_whether_each_is_known() -> None:
    facts = {
        "measurements": {
            "mrtd": "aa",
            "rtmr0": "bb",
            "rtmr1": "cc",
            "compose_hash": "",
            "known": {"mrtd": "dstack 0.5", "rtmr0": None},
        }
    }
    text = page(services(Keys({"e2ee-m": key(report(facts=facts))})))
    assert (
        "<details><summary>measurements</summary><dl>"
        "<dt>mrtd</dt><dd>aa <small>(known: dstack 0.5)</small></dd>"
        "<dt>rtmr0</dt><dd>bb <small>(unknown)</small></dd>"
        "<dt>rtmr1</dt><dd>cc</dd></dl></details>"
    ) in text
    empty: object
    for empty in ({}, "x"):
        text = page(services(Keys({"e2ee-m": key(report(facts={"measurements": empty}))})))
        assert "<summary>measurements</summary>" not in text


def test_facts_come_one_after_another_images_custody_measurements() -> None:
    facts = {
        "compose": {"images": [{"service": "a", "image": "i", "pinned": True}]},
        "gateway": {"workload_id": "w"},
        "measurements": {"mrtd": "aa"},
    }
    text = page(services(Keys({"e2ee-g": key(report("e2ee-g", trust="gateway", facts=facts))})))
    assert (
        "</table></details><details open><summary>gateway custody</summary>"
        "<dl><dt>workload id</dt><dd>w</dd></dl></details>"
        "<details><summary>measurements</summary><dl><dt>mrtd</dt><dd>aa</dd></dl></details>"
        "<details open><summary>trust (1 checks)</summary>"
    ) in text


def test_a_missing_value_is_shown_empty_never_as_none() -> None:
    rep = report(tee_provider=None, upstream_model=None)
    text = page(services(Keys({"e2ee-m": key(rep)})))
    assert "<dt>report</dt><dd>near from , upstream model </dd>" in text
    assert "None" not in card(text, "e2ee-m")


def test_a_report_without_facts_shows_none() -> None:
    text = page(services(Keys({"e2ee-m": key(report(facts={}))})))
    assert "<details><summary>" not in text.replace("<details><summary>trust", "")
    assert "gateway custody" not in text


# --- times ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "shown"),
    [
        (-5, "0 s"),
        (0, "0 s"),
        (119.9, "119 s"),
        (120, "2 min"),
        (7199, "119 min"),
        (7200, "2 h 0 min"),
        (7260, "2 h 1 min"),
        (7200 + 59 * 60 + 59, "2 h 59 min"),
        (172_799, "47 h 59 min"),
        (172_800, "2 days"),
        (10 * 86_400 + 5, "10 days"),
    ],
)
def test_ages_and_expiries_read_in_sensible_units(age: float, shown: str) -> None:
    rep = report()
    text = page(services(Keys({"e2ee-m": key(rep, verified_at=NOW - age, expires_at=NOW + age)})))
    assert f"({shown} ago)</dd>" in text
    assert f"(in {shown})</dd>" in text


def test_times_are_utc_whatever_the_local_zone_and_an_unknown_time_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert status_page._when(0) == "1970-01-01 00:00:00 UTC"
        text = page(services(Keys({"e2ee-m": key(report(), verified_at=NOW - 90)})))
        assert "<dt>attested</dt><dd>2027-01-15 07:58:30 UTC (90 s ago)</dd>" in text
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert status_page._when(None) == "unknown"


# --- the page around the cards -------------------------------------------------------------------


def test_gateway_models_come_first_then_enclaves_then_failures_then_pending() -> None:
    keys = Keys(
        {"e2ee-enc": key(report("e2ee-enc")), "e2ee-gw": key(report("e2ee-gw", trust="gateway"))},
        {"e2ee-bad": AttestationError("no", code="dcap")},
    )
    text = page(services(keys), ["e2ee-new", "e2ee-bad", "e2ee-enc", "e2ee-gw"])
    order = re.findall(r'id="model-([^"]+)"', text)
    assert order == ["e2ee-gw", "e2ee-enc", "e2ee-bad", "e2ee-new"]
    assert text.count('</section><section class="card ') == 3  # one card after another


def test_the_page_frame_says_where_it_looks_and_when() -> None:
    text = page(services(), [])
    assert text.startswith(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>venice-e2ee-proxy: attestation status</title><style>"
    )
    assert (
        "<body><header><h1>venice-e2ee-proxy: attestation status</h1>"
        f"<p>{Settings().upstream.base_url} &middot; 2027-01-15 08:00:00 UTC</p></header><main>"
        "<p>No E2EE models known yet.</p>"
        '<section class="card"><h2>Response signatures</h2><p>mode: async</p>'
        "<p>No answer's signature has been checked yet.</p></section>"
        '<section class="card"><h2>Settings that weaken the checks</h2>'
        "<p>None: every check runs and is enforced.</p></section>"
        '<section class="card"><h2>What this proxy cannot vouch for</h2><ul>'
    ) in text
    assert text.endswith(
        "</ul></section></main><footer>Rendered by the proxy, no scripts, "
        "no external assets.</footer></body></html>"
    )
    items = "".join(f"<li>{html.escape(item)}</li>" for item in status_page.CANNOT_VOUCH)
    assert f"<h2>What this proxy cannot vouch for</h2><ul>{items}</ul></section>" in text
    assert len(status_page.CANNOT_VOUCH) == 5
    assert "<li>On gateway models: the inference host that reads the decrypted prompt.</li>" in text
    assert "DEMO MODE" not in text
    assert "<script" not in text


def test_the_style_marks_results_and_trust_levels_apart() -> None:
    text = page(services(), [])
    for rule in (
        ".r-pass{color:#1f9d55;font-weight:700}",
        ".r-fail{color:#c81e1e;font-weight:700}",
        ".r-skip{color:#6b7280;font-weight:700}",
        ".badge.enclave{background:#1f9d55}.badge.gateway{background:#d97706}",
        ".badge.passed{background:#1f9d55}.badge.failed{background:#c81e1e}",
        "section.card.enclave.passed{border-left-color:#1f9d55}",
        "section.card.gateway.passed{border-left-color:#d97706}",
        "section.card.failed{border-left-color:#c81e1e}",
    ):
        assert rule in text


def test_the_demo_banner_says_the_simulator_is_not_venice() -> None:
    text = page(services(demo=True), [])
    assert (
        '<main><p class="warn"><b>DEMO MODE:</b> these models are served by the built-in '
        "simulator, not by Venice; its quote carries no Intel signature.</p>"
    ) in text


def test_weakening_settings_are_listed_and_escaped() -> None:
    settings = Settings.model_validate(
        {"attestation": {"dcap": "off", "nvidia": "nonce"}, "signatures": {"mode": "strict"}}
    )
    text = page(services(settings=settings), [])
    assert (
        '<h2>Settings that weaken the checks</h2><div class="warn"><ul>'
        "<li>WEAKENED: attestation.dcap = off: TDX quote signatures are NOT verified, so any "
        "machine can pose as an enclave</li>"
        "<li>WEAKENED: attestation.nvidia = nonce: GPU evidence is NOT verified by NVIDIA "
        "NRAS</li></ul></div></section>"
    ) in text
    assert "<p>mode: strict</p>" in text
    assert "None: every check runs" not in text


def test_signature_results_are_counted_by_outcome() -> None:
    metrics = Metrics(process_metrics=False)
    for outcome in ("ok", "mismatch", "ok"):
        metrics.record_signature(outcome)
    text = page(services(metrics=metrics), [])
    assert (
        "<table><tr><th>outcome</th><th>answers</th></tr>"
        "<tr><td>mismatch</td><td>1</td></tr><tr><td>ok</td><td>2</td></tr></table>"
    ) in text
    assert "No answer's signature" not in text


# --- the route -----------------------------------------------------------------------------------


def info(model: str, e2ee: bool) -> ModelInfo:
    return ModelInfo(id=model, supports_e2ee=e2ee, raw={})


async def test_the_models_shown_are_the_e2ee_ones_listed_then_those_known() -> None:
    keys = Keys(
        {"e2ee-k": key(report("e2ee-k")), "e2ee-a": key(report("e2ee-a"))},
        {"e2ee-f": AttestationError("x", code="dcap")},
    )
    catalogue = Catalogue({"e2ee-a": info("e2ee-a", True), "plain": info("plain", False)})
    assert await status_page._models(services(keys, catalogue=catalogue)) == [
        "e2ee-a",
        "e2ee-k",
        "e2ee-f",
    ]
    down = Catalogue(ProxyError("upstream down"))
    assert await status_page._models(services(keys, catalogue=down)) == [
        "e2ee-k",
        "e2ee-a",
        "e2ee-f",
    ]


async def test_the_route_answers_with_the_page_and_its_security_headers() -> None:
    svc = services(catalogue=Catalogue({"e2ee-a": info("e2ee-a", True)}))
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(services=svc)))
    response = await status_page.status_page(request)  # type: ignore[arg-type]
    assert response.status_code == 200
    assert response.media_type == "text/html"
    body = bytes(response.body).decode()
    assert 'id="model-e2ee-a" data-trust="unknown" data-verdict="pending"' in body
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert SECURITY_HEADERS == {
        "content-security-policy": CSP,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
    }
    assert CSP == (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )


def test_trust_levels_kept_in_memory_only_are_listed_as_a_weakening(tmp_path: Any) -> None:
    # serve drops attestation.state_dir when it is not writable (main._with_state_dir): a
    # downgrade from enclave to gateway across restarts is then not caught, and the page says so,
    # as serve's start-up warning does.
    memory = page(services(trust_state=TrustState(None)), [])
    assert (
        "<li>WEAKENED: trust levels are remembered in memory only (attestation.state_dir is not "
        "writable): a downgrade from enclave to gateway across restarts is not caught</li>"
    ) in memory
    assert "None: every check runs and is enforced." not in memory
    untracked = services()
    untracked.attester.trust_state = None  # an Attester that remembers nothing at all
    assert "memory only (attestation.state_dir is not writable)" in page(untracked, [])
    persisted = page(services(trust_state=TrustState(tmp_path)), [])
    assert "<p>None: every check runs and is enforced.</p>" in persisted
    assert "memory only" not in persisted
