"""The HTTP endpoints of :mod:`proxy.http.routes` in-process (no server): what a client gets from
``/v1/models`` (which models, aliases, trust levels, the demo's owner), and how a streamed chat
answer is relayed (usage, the signature policy per mode, the log line, a hang-up).

The service layer is scripted (``route_fakes``); the relay, the log line and the metrics are the
real ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from proxy.core.errors import AttestationError, InvalidRequestError, UpstreamError
from proxy.http.guard import DrainController
from proxy.http.routes import router
from proxy.service.catalog import ModelInfo
from proxy.settings import Settings
from tests.unit.http.route_fakes import (
    E2EE_HEADERS,
    MODEL,
    SIGNER,
    USAGE,
    Background,
    Catalogue,
    Chat,
    Keys,
    Script,
    Signatures,
    app_for,
    attested_key,
    call,
    chunk,
    hang_up_after_first_part,
    log_of,
    opened,
    services,
    sse_data,
    usage_chunk,
)

Lines = Callable[[], list[str]]
DEMO_OWNER = "venice-e2ee-proxy simulator (demo, not Venice)"


def raw(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "owned_by": "venice.ai", "model_spec": {"n": 1}}


def catalogue() -> Catalogue:
    return Catalogue(
        {
            "e2ee-a": ModelInfo(id="e2ee-a", supports_e2ee=True, raw=raw("e2ee-a")),
            "plain-p": ModelInfo(id="plain-p", supports_e2ee=False, raw=raw("plain-p")),
            "plain-q": ModelInfo(id="plain-q", supports_e2ee=False, raw=raw("plain-q")),
        }
    )


ALIASES = {"fast": "e2ee-a", "open": "plain-p", "closed": "plain-q", "ghost": "no-such-model"}


def listing_services(*, demo: bool = False) -> Any:
    chat = Chat()
    chat.passthrough = {"plain-p"}
    settings = Settings.model_validate({"models": {"aliases": ALIASES}})
    keys = Keys({"e2ee-a": attested_key("e2ee-a", "gateway")})
    return services(chat=chat, catalogue=catalogue(), keys=keys, settings=settings, demo=demo)


# --- the model list --------------------------------------------------------------------------


async def test_the_list_has_the_e2ee_and_passthrough_models_then_their_aliases() -> None:
    svc = listing_services()
    response = await call(app_for(router, svc), "GET", "/v1/models")
    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [
            {**raw("e2ee-a"), "trust_level": "gateway"},
            {**raw("plain-p"), "trust_level": None},
            {**raw("e2ee-a"), "id": "fast", "venice_model": "e2ee-a", "trust_level": "gateway"},
            {**raw("plain-p"), "id": "open", "venice_model": "plain-p", "trust_level": None},
        ],
    }
    # the catalogue's own entries are not changed by listing them
    models = await svc.catalogue.models()
    assert models["e2ee-a"].raw == raw("e2ee-a")
    assert (await call(app_for(router, svc), "GET", "/models")).json() == response.json()


async def test_one_model_by_id_or_alias_and_an_unlisted_one_is_404() -> None:
    app = app_for(router, listing_services())
    alias = await call(app, "GET", "/v1/models/fast")
    assert alias.status_code == 200
    assert alias.json()["venice_model"] == "e2ee-a"
    assert alias.json()["trust_level"] == "gateway"
    for hidden in ("plain-q", "closed", "ghost", "no-such-model"):
        missing = await call(app, "GET", f"/v1/models/{hidden}")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"
        assert missing.json()["error"]["param"] == "model"


async def test_without_passthrough_only_e2ee_models_are_listed() -> None:
    svc = listing_services()
    svc.chat.passthrough = set()
    response = await call(app_for(router, svc), "GET", "/v1/models")
    assert [item["id"] for item in response.json()["data"]] == ["e2ee-a", "fast"]


async def test_in_demo_mode_every_model_says_it_is_the_simulator() -> None:
    response = await call(app_for(router, listing_services(demo=True)), "GET", "/v1/models")
    body = response.json()
    assert [item["owned_by"] for item in body["data"]] == [DEMO_OWNER] * 4
    assert body["notice"].startswith("DEMO MODE")
    plain = await call(app_for(router, listing_services()), "GET", "/v1/models")
    assert "notice" not in plain.json()
    assert {item["owned_by"] for item in plain.json()["data"]} == {"venice.ai"}


# --- a streamed chat answer -----------------------------------------------------------------


def stream_app(
    script: Script, mode: str = "async", *, e2ee: bool = True, include_usage: bool = False
) -> tuple[Any, Any]:
    answer = opened(script, e2ee=e2ee, include_usage=include_usage)
    svc = services(chat=Chat(answer), signatures=Signatures(mode), background=Background())
    return app_for(router, svc), svc


CHAT = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
TWO_PARTS = Script(first=[chunk("Hel")], rest=[[chunk("lo", "stop")]])


def contents(body: bytes) -> list[str]:
    out = []
    for data in sse_data(body):
        if data == "[DONE]":
            out.append(data)
            continue
        parsed = json.loads(data)
        if "error" in parsed:
            out.append("error:" + parsed["error"]["code"])
        elif parsed["choices"]:
            out.append(parsed["choices"][0]["delta"]["content"])
        else:
            out.append("usage")
    return out


async def test_a_streamed_answer_is_relayed_and_its_signature_checked_afterwards(
    log_lines: Lines,
) -> None:
    app, svc = stream_app(TWO_PARTS, "async")
    response = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-venice-proxy-signing-address"] == SIGNER
    assert response.headers["x-venice-proxy-trust"] == "enclave"
    assert contents(response.content) == ["Hel", "lo", "[DONE]"]
    answer = svc.chat.answer
    assert answer.upstream.closed >= 1

    (line,) = log_of(log_lines, "chat_request")
    assert line["status"] == 200
    assert line["error"] is None
    assert line["completed"] is True
    assert line["stream"] is True
    request_id = line["request_id"]
    assert svc.chat.started == [(CHAT, request_id)]

    # async: nothing checked before [DONE], one check of this answer afterwards
    assert svc.signatures.strict_calls == []
    assert svc.signatures.checked == []
    assert len(svc.background_work.work) == 1
    await svc.background_work.run()
    assert svc.signatures.checked == [(answer, request_id)]


async def test_strict_checks_before_done_and_nothing_afterwards(log_lines: Lines) -> None:
    app, svc = stream_app(TWO_PARTS, "strict")
    response = await call(app, "POST", "/chat/completions", CHAT)
    assert contents(response.content) == ["Hel", "lo", "[DONE]"]
    (line,) = log_of(log_lines, "chat_request")
    assert svc.signatures.strict_calls == [(svc.chat.answer, line["request_id"])]
    assert svc.background_work.work == []
    assert line["completed"] is True


async def test_strict_withholds_done_when_the_signature_fails(log_lines: Lines) -> None:
    app, svc = stream_app(TWO_PARTS, "strict")
    svc.signatures.failure = AttestationError("not signed by the enclave", code="sig_bad")
    response = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert response.status_code == 200  # the stream had started
    assert contents(response.content) == ["Hel", "lo", "error:sig_bad", "[DONE]"]
    (line,) = log_of(log_lines, "chat_request")
    assert line["completed"] is False
    assert line["error"] == "sig_bad"
    assert svc.background_work.work == []


@pytest.mark.parametrize(("mode", "e2ee"), [("off", True), ("async", False), ("strict", False)])
async def test_no_check_when_off_or_for_a_passthrough_answer(mode: str, e2ee: bool) -> None:
    app, svc = stream_app(TWO_PARTS, mode, e2ee=e2ee)
    response = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert contents(response.content) == ["Hel", "lo", "[DONE]"]
    assert svc.signatures.strict_calls == []
    assert svc.background_work.work == []


async def test_async_checks_no_answer_that_failed(log_lines: Lines) -> None:
    broken = Script(
        first=[chunk("Hel")], error=UpstreamError("the stream broke", code="upstream_broke")
    )
    app, svc = stream_app(broken, "async")
    response = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert contents(response.content) == ["Hel", "error:upstream_broke", "[DONE]"]
    (line,) = log_of(log_lines, "chat_request")
    assert line["error"] == "upstream_broke"
    assert line["status"] == 200
    assert svc.background_work.work == []
    assert svc.chat.answer.upstream.closed >= 1


@pytest.mark.parametrize("include_usage", [True, False])
async def test_the_usage_chunk_is_relayed_only_when_asked_for(include_usage: bool) -> None:
    script = Script(first=[chunk("Hi", "stop")], rest=[[usage_chunk()]])
    app, _ = stream_app(script, "off", include_usage=include_usage)
    response = await call(app, "POST", "/v1/chat/completions", CHAT)
    expected = ["Hi", "usage", "[DONE]"] if include_usage else ["Hi", "[DONE]"]
    assert contents(response.content) == expected
    if include_usage:
        assert json.loads(sse_data(response.content)[1])["usage"] == USAGE


async def test_a_client_that_hangs_up_mid_stream_is_logged_and_the_upstream_closed(
    log_lines: Lines,
) -> None:
    script = Script(first=[chunk("Hel")], rest=[[chunk("lo")]], hang=True)
    app, svc = stream_app(script, "async")
    sent = await hang_up_after_first_part(app, "/v1/chat/completions", CHAT)
    assert sent[0]["status"] == 200
    assert svc.chat.answer.upstream.closed >= 1
    assert svc.chat.answer.stats.error_code == "client_disconnected"
    (line,) = log_of(log_lines, "chat_request")
    assert line["error"] == "client_disconnected"
    assert line["status"] == 200
    assert line["completed"] is False
    assert svc.background_work.work == []  # nothing to check: the answer did not complete


async def test_a_whole_answer_is_one_json_with_the_answer_headers() -> None:
    script = Script(first=[chunk("Hel")], rest=[[chunk("lo", "stop")]])
    answer = opened(script, client_stream=False)
    svc = services(chat=Chat(answer), signatures=Signatures("off"))
    response = await call(
        app_for(router, svc), "POST", "/v1/chat/completions", {**CHAT, "stream": False}
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello"
    assert {k: response.headers[k] for k in E2EE_HEADERS} == E2EE_HEADERS


# --- the other endpoints -----------------------------------------------------------------------


async def test_a_chat_error_before_the_first_byte_is_an_openai_envelope(log_lines: Lines) -> None:
    chat = Chat(InvalidRequestError("'messages' must be a non-empty array", param="messages"))
    svc = services(chat=chat)
    body = {"model": MODEL, "stream": True, "messages": []}
    response = await call(app_for(router, svc), "POST", "/v1/chat/completions", body)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "'messages' must be a non-empty array",
        "type": "invalid_request_error",
        "param": "messages",
        "code": None,
    }
    (line,) = log_of(log_lines, "chat_request")
    assert (line["status"], line["model"], line["stream"]) == (400, MODEL, True)
    assert chat.started == [(body, line["request_id"])]


async def test_healthz_answers_get_and_head() -> None:
    app = app_for(router, services())
    assert (await call(app, "GET", "/healthz")).json() == {"status": "ok"}
    assert (await call(app, "HEAD", "/healthz")).status_code == 200


def ready_services(*, draining: bool = False, key: bool = True, demo: bool = False) -> Any:
    settings = Settings.model_validate({"attestation": {"warm_up": ["e2ee-a", "e2ee-b"]}})
    svc = services(settings=settings, keys=Keys({"e2ee-a": attested_key("e2ee-a")}), demo=demo)
    svc.drain = DrainController()
    if draining:
        svc.drain.start_draining()
    svc.upstream = type("Upstream", (), {"has_api_key": key})()
    return svc


async def test_readyz_names_every_reason_it_is_not_ready() -> None:
    response = await call(app_for(router, ready_services(key=False)), "GET", "/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "ready": False,
        "demo": False,
        "reasons": [
            "no Venice API key: set VENICE_API_KEY or upstream.api_key_file",
            "model e2ee-b has no verified, unexpired attestation",
        ],
    }
    svc = ready_services()
    svc.keys.keys["e2ee-b"] = attested_key("e2ee-b")
    assert (await call(app_for(router, svc), "GET", "/readyz")).json() == {
        "ready": True,
        "demo": False,
        "reasons": [],
    }
    demo = ready_services(key=False, demo=True)
    demo.keys.keys["e2ee-b"] = attested_key("e2ee-b")
    ready = await call(app_for(router, demo), "HEAD", "/readyz")
    assert ready.status_code == 200


async def test_readyz_is_not_ready_while_draining() -> None:
    svc = ready_services(draining=True)
    svc.keys.keys["e2ee-b"] = attested_key("e2ee-b")
    response = await call(app_for(router, svc), "GET", "/readyz")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["shutting down"]


async def test_the_attestation_report_of_a_catalogue_model_or_alias() -> None:
    svc = listing_services()
    app = app_for(router, svc)
    response = await call(app, "GET", "/v1/attestation/fast")
    assert response.status_code == 200
    body = response.json()
    key = svc.keys.keys["e2ee-a"]
    assert body["model"] == "e2ee-a"
    assert body["trust_level"] == "gateway"
    assert body["signing_address"] == SIGNER
    assert (body["verified_at"], body["expires_at"]) == (0, int(key.expires_at))
    assert body["demo"] is False
    assert body["report"] == key.report.to_dict()
    assert svc.keys.asked == ["e2ee-a"]
    unknown = await call(app, "GET", "/v1/attestation/" + "x" * 100)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert "x" * 65 not in unknown.json()["error"]["message"]
    assert svc.keys.asked == ["e2ee-a"]  # nothing attested for a name the upstream does not list


async def test_metrics_are_the_prometheus_text() -> None:
    response = await call(app_for(router, services()), "GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "venice_proxy_" in response.text
