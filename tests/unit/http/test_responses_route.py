"""``POST /v1/responses`` (:mod:`proxy.http.responses_route`) in-process (no server): the
translated chat request the service gets, errors named in Responses terms, and the streamed
event sequence with the signature policy per mode, the answer's bound and a hang-up.

The service layer is scripted (``route_fakes``); the translation, the event builder, the log
line and the metrics are the real ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from proxy.core.errors import AttestationError, InvalidRequestError, UpstreamError
from proxy.http.responses_route import router
from tests.unit.http.route_fakes import (
    E2EE_HEADERS,
    MODEL,
    SIGNER,
    Background,
    Chat,
    Script,
    Signatures,
    app_for,
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
STREAM = {"model": MODEL, "input": "hi", "stream": True}
TWO_PARTS = Script(first=[chunk("Hel")], rest=[[chunk("lo", "stop")]])


def events(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(data) for data in sse_data(body)]


def types(body: bytes) -> list[str]:
    return [event["type"] for event in events(body)]


def text_of(body: bytes) -> str:
    return "".join(e["delta"] for e in events(body) if e["type"] == "response.output_text.delta")


def stream_app(script: Script, mode: str = "async", *, e2ee: bool = True) -> tuple[Any, Any]:
    answer = opened(script, e2ee=e2ee)
    svc = services(chat=Chat(answer), signatures=Signatures(mode), background=Background())
    return app_for(router, svc), svc


# --- errors in Responses terms --------------------------------------------------------------


async def test_a_chat_error_names_the_responses_input_it_came_from() -> None:
    chat = Chat(InvalidRequestError("bad message", param="messages[2]", code="bad_message"))
    app = app_for(router, services(chat=chat))
    body = {
        "model": MODEL,
        "instructions": "be brief",
        "input": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    }
    response = await call(app, "POST", "/v1/responses", body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input[1]"
    assert response.json()["error"]["code"] == "bad_message"
    ((payload, _),) = chat.started
    assert [m["content"] for m in payload["messages"]] == ["be brief", "a", "b"]


async def test_an_error_without_a_param_keeps_none() -> None:
    chat = Chat(InvalidRequestError("bad", code="bad_thing"))
    response = await call(app_for(router, services(chat=chat)), "POST", "/responses", STREAM)
    assert response.status_code == 400
    assert response.json()["error"]["param"] is None


async def test_a_request_that_does_not_translate_is_answered_with_its_own_param(
    log_lines: Lines,
) -> None:
    chat = Chat()
    app = app_for(router, services(chat=chat))
    response = await call(app, "POST", "/v1/responses", {"model": MODEL, "input": 5})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"
    assert chat.started == []
    (line,) = log_of(log_lines, "chat_request")
    assert line["status"] == 400
    assert line["model"] == MODEL


# --- the streamed events --------------------------------------------------------------------


async def test_a_streamed_response_is_relayed_and_its_signature_checked_afterwards(
    log_lines: Lines,
) -> None:
    app, svc = stream_app(TWO_PARTS, "async")
    response = await call(app, "POST", "/v1/responses", STREAM)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-venice-proxy-signing-address"] == SIGNER
    assert types(response.content)[0] == "response.created"
    assert types(response.content)[-1] == "response.completed"
    assert text_of(response.content) == "Hello"
    assert svc.chat.answer.upstream.closed >= 1

    (line,) = log_of(log_lines, "chat_request")
    assert line["status"] == 200
    assert line["error"] is None
    assert line["stream"] is True
    request_id = line["request_id"]
    ((payload, started_id),) = svc.chat.started
    assert started_id == request_id
    assert payload["messages"] == [{"role": "user", "content": "hi"}]

    assert svc.signatures.strict_calls == []
    assert len(svc.background_work.work) == 1
    await svc.background_work.run()
    assert svc.signatures.checked == [(svc.chat.answer, request_id)]


async def test_strict_checks_before_completing_and_nothing_afterwards(log_lines: Lines) -> None:
    app, svc = stream_app(TWO_PARTS, "strict")
    response = await call(app, "POST", "/responses", STREAM)
    assert types(response.content)[-1] == "response.completed"
    (line,) = log_of(log_lines, "chat_request")
    assert svc.signatures.strict_calls == [(svc.chat.answer, line["request_id"])]
    assert svc.background_work.work == []


async def test_strict_fails_a_response_whose_signature_fails(log_lines: Lines) -> None:
    app, svc = stream_app(TWO_PARTS, "strict")
    svc.signatures.failure = AttestationError("not signed by the enclave", code="sig_bad")
    response = await call(app, "POST", "/v1/responses", STREAM)
    assert response.status_code == 200
    last = events(response.content)[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["error"]["message"].endswith("(sig_bad)")
    (line,) = log_of(log_lines, "chat_request")
    assert line["error"] == "sig_bad"
    assert svc.background_work.work == []


@pytest.mark.parametrize(("mode", "e2ee"), [("off", True), ("async", False), ("strict", False)])
async def test_no_check_when_off_or_for_a_passthrough_answer(mode: str, e2ee: bool) -> None:
    app, svc = stream_app(TWO_PARTS, mode, e2ee=e2ee)
    response = await call(app, "POST", "/v1/responses", STREAM)
    assert types(response.content)[-1] == "response.completed"
    assert svc.signatures.strict_calls == []
    assert svc.background_work.work == []


async def test_async_checks_no_response_that_failed(log_lines: Lines) -> None:
    broken = Script(
        first=[chunk("Hel")], error=UpstreamError("the stream broke", code="upstream_broke")
    )
    app, svc = stream_app(broken, "async")
    response = await call(app, "POST", "/v1/responses", STREAM)
    last = events(response.content)[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["error"]["message"].endswith("(upstream_broke)")
    (line,) = log_of(log_lines, "chat_request")
    assert line["error"] == "upstream_broke"
    assert line["status"] == 200
    assert svc.background_work.work == []


async def test_a_streamed_response_longer_than_the_bound_fails() -> None:
    script = Script(first=[chunk("Hel")], rest=[[chunk("lo world", "stop")], [usage_chunk()]])
    app, svc = stream_app(script, "async")
    svc.chat.max_answer_chars = 5
    response = await call(app, "POST", "/v1/responses", STREAM)
    last = events(response.content)[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["error"]["message"].endswith("(upstream_answer_too_large)")
    assert svc.background_work.work == []


async def test_a_client_that_hangs_up_mid_stream_is_logged_and_the_upstream_closed(
    log_lines: Lines,
) -> None:
    script = Script(first=[chunk("Hel")], rest=[[chunk("lo")]], hang=True)
    app, svc = stream_app(script, "async")
    sent = await hang_up_after_first_part(app, "/v1/responses", STREAM)
    assert sent[0]["status"] == 200
    assert svc.chat.answer.upstream.closed >= 1
    assert svc.chat.answer.stats.error_code == "client_disconnected"
    (line,) = log_of(log_lines, "chat_request")
    assert line["error"] == "client_disconnected"
    assert line["status"] == 200
    assert svc.background_work.work == []


async def test_a_whole_response_is_one_object_with_the_answer_headers() -> None:
    answer = opened(TWO_PARTS, client_stream=False)
    svc = services(chat=Chat(answer), signatures=Signatures("off"))
    response = await call(
        app_for(router, svc), "POST", "/v1/responses", {**STREAM, "stream": False}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == "Hello"
    assert {k: response.headers[k] for k in E2EE_HEADERS} == E2EE_HEADERS
