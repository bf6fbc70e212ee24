"""Bad input gets a precise OpenAI error, nothing reaches the upstream, and the proxy stays up."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from proxy.http.loopback import ThreadedServer
from proxy.simulator import SimulatorState
from tests.conftest import CANARY, E2EE_MODEL, ProxyFactory


def _post(
    server: ThreadedServer, content: bytes, content_type: str = "application/json"
) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions",
        content=content,
        headers={"content-type": content_type},
    )


def _assert_envelope(
    response: httpx.Response, status: int, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    assert CANARY not in response.text
    return dict(error)


def _user(content: Any) -> bytes:
    return json.dumps(
        {"model": E2EE_MODEL, "messages": [{"role": "user", "content": content}]}
    ).encode()


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b'{"model": "x", "messages": [', 400, None),
        (b"", 400, None),
        (b"[]", 400, None),
        (b'"just a string"', 400, None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (json.dumps({"model": E2EE_MODEL}).encode(), 400, "messages"),
        (json.dumps({"model": E2EE_MODEL, "messages": []}).encode(), 400, "messages"),
        (json.dumps({"model": E2EE_MODEL, "messages": "hi"}).encode(), 400, "messages"),
        (json.dumps({"model": E2EE_MODEL, "messages": ["hi"]}).encode(), 400, "messages[0]"),
        (
            json.dumps(
                {"model": E2EE_MODEL, "messages": [{"role": "wizard", "content": "x"}]}
            ).encode(),
            400,
            "messages[0].role",
        ),
        (_user(5), 400, "messages[0].content"),
        (_user(True), 400, "messages[0].content"),
        (_user({"text": "x"}), 400, "messages[0].content"),
        (
            json.dumps(
                {
                    "model": E2EE_MODEL,
                    "messages": [{"role": "user", "content": "x"}],
                    "stream": "yes",
                }
            ).encode(),
            400,
            "stream",
        ),
        (
            json.dumps(
                {"model": E2EE_MODEL, "messages": [{"role": "user", "content": "x"}], "n": "2"}
            ).encode(),
            400,
            "n",
        ),
        (
            json.dumps(
                {"model": E2EE_MODEL, "messages": [{"role": "user", "content": "x"}], "n": 0}
            ).encode(),
            400,
            "n",
        ),
        (b"[" * 100_000 + b"]" * 100_000, 400, None),
    ],
)
def test_bad_bodies(
    proxy: ThreadedServer, sim_state: SimulatorState, body: bytes, status: int, param: str | None
) -> None:
    _assert_envelope(_post(proxy, body), status, param)
    assert sim_state.chat_requests == 0
    assert httpx.get(proxy.url + "/healthz").status_code == 200


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
)
def test_wrong_content_type(
    proxy: ThreadedServer, sim_state: SimulatorState, content_type: str
) -> None:
    error = _assert_envelope(_post(proxy, _user(CANARY), content_type), 415)
    assert error["code"] == "unsupported_content_type"
    assert "Content-Type: application/json" in error["message"]
    assert sim_state.chat_requests == 0


def test_missing_content_type(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    # What a page's no-cors fetch with a Blob body sends: no Content-Type at all.
    response = httpx.post(proxy.url + "/v1/chat/completions", content=_user(CANARY))
    assert "content-type" not in response.request.headers
    error = _assert_envelope(response, 415)
    assert error["code"] == "unsupported_content_type"
    assert "no Content-Type" in error["message"]
    assert sim_state.chat_requests == 0


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json ;x=1"]
)
def test_json_content_types_are_accepted(proxy: ThreadedServer, content_type: str) -> None:
    response = _post(proxy, _user("hi"), content_type)
    assert response.status_code == 200, response.text


def test_oversized_body(make_proxy: Any, sim_state: SimulatorState) -> None:
    server = make_proxy(server={"max_body_bytes": 1000})
    error = _assert_envelope(_post(server, _user("x" * 2000)), 413)
    assert error["code"] == "request_too_large"
    assert sim_state.chat_requests == 0


def test_file_parts_are_refused(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    parts = [{"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA"}}]
    error = _assert_envelope(_post(proxy, _user(parts)), 400)
    assert error["code"] == "e2ee_unsupported"
    assert sim_state.chat_requests == 0


def test_tool_history_is_refused_when_emulation_is_off(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    # With [tools] mode = "emulate" (the default) this history travels inside the encrypted
    # messages (tests/e2e/test_tools.py); "refuse" keeps the field policy's clear 400.
    server = make_proxy(tools={"mode": "refuse"})
    body = {
        "model": E2EE_MODEL,
        "messages": [
            {"role": "user", "content": CANARY},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
        ],
    }
    error = _assert_envelope(_post(server, json.dumps(body).encode()), 400)
    assert error["param"] == "messages[1].tool_calls"
    assert sim_state.chat_requests == 0


def test_unknown_route_and_method(proxy: ThreadedServer) -> None:
    _assert_envelope(httpx.get(proxy.url + "/v1/nope"), 404)
    _assert_envelope(httpx.get(proxy.url + "/v1/chat/completions"), 405)


def _sent(sim_state: SimulatorState) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        next(r.body for r in sim_state.requests if r.path.endswith("/chat/completions"))
    )
    return body


def test_unknown_scalar_fields_are_forwarded(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    # A new sampling knob must not break clients: numbers and booleans carry no text.
    body = json.loads(_user(CANARY))
    body["some_future_openai_knob"] = 0.5
    body["some_future_switch"] = True
    body["temperature"] = 0.3
    response = _post(proxy, json.dumps(body).encode())
    assert response.status_code == 200, response.text
    sent = _sent(sim_state)
    assert sent["some_future_openai_knob"] == 0.5
    assert sent["some_future_switch"] is True
    assert sent["temperature"] == 0.3


def test_unknown_fields_that_can_hold_text_are_refused(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    # Previously passed through as they came; an object or a string could carry the prompt.
    for value in ({"a": 1}, "text", ["x"]):
        body = json.loads(_user(CANARY))
        body["some_future_openai_param"] = value
        error = _assert_envelope(
            _post(proxy, json.dumps(body).encode()), 400, "some_future_openai_param"
        )
        assert error["code"] == "e2ee_unsupported"
        assert "privacy.forward_fields" in error["message"]
    assert sim_state.chat_requests == 0


def test_forward_fields_lets_a_listed_unknown_field_through(
    make_proxy: Any, sim_state: SimulatorState
) -> None:
    server = make_proxy(privacy={"forward_fields": ["some_future_openai_param"]})
    sim_state.policy_allows = frozenset({"some_future_openai_param"})
    body = json.loads(_user(CANARY))
    body["some_future_openai_param"] = {"a": 1}
    response = _post(server, json.dumps(body).encode())
    assert response.status_code == 200, response.text
    assert _sent(sim_state)["some_future_openai_param"] == {"a": 1}


def test_request_id_is_echoed_but_stays_local(
    proxy: ThreadedServer, sim_state: SimulatorState, log_lines: Any
) -> None:
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        content=_user(CANARY),
        headers={"content-type": "application/json", "x-request-id": "abc-123"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "abc-123"
    # Upstream gets the proxy's own id, never the client's (it could name the user or session).
    (chat,) = [r for r in sim_state.requests if r.path.endswith("/chat/completions")]
    assert chat.headers["x-request-id"].startswith("req_")
    assert "abc-123" not in chat.headers.values()
    records = [json.loads(line) for line in log_lines() if '"chat_request"' in line]
    assert records[-1]["client_request_id"] == "abc-123"
    assert records[-1]["request_id"] == chat.headers["x-request-id"]
    generated = _post(proxy, b"{")
    assert generated.headers["x-request-id"].startswith("req_")


def test_health_and_readiness(proxy: ThreadedServer) -> None:
    assert httpx.get(proxy.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(proxy.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
