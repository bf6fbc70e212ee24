"""Upstream faults, byte by byte: each gives the client a clear OpenAI error and leaves nothing.

A real proxy (uvicorn in a thread) sits before :class:`~tests.support.fake_upstream.FakeUpstream`,
whose attestation and model list come from the real simulator while its chat answers misbehave
on command. Every fault is driven through three clients: raw httpx (to check the framing byte
for byte), the `openai` package streaming, and the `openai` package non-streaming. A fault before
the first text reaches the client is an HTTP error with an OpenAI envelope; after it, the stream
ends with ``data: {"error": ...}`` and ``data: [DONE]`` and nothing that came after the fault.

After every test: the proxy's event loop is back to its idle task count (no stuck task), the
fake upstream saw the proxy close every chat connection (no leaked socket), and the canary
prompt appears neither in what the upstream received nor in any log line (``/metrics`` is
checked once, after a fault). test_abuse_memory.py repeats the cheap faults 200 times.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import openai
import pytest

from proxy.simulator import SimulatorState
from tests.conftest import CANARY, E2EE_MODEL, SIM_API_KEY
from tests.support.fake_upstream import (
    Behaviour,
    FakeUpstream,
    ProxyHarness,
    proxy_harness,
    start_proxy,
    token_text,
)

FIRST_BYTE_TIMEOUT_S = 0.5
IDLE_TIMEOUT_S = 0.25
PROMPT = f"{CANARY} tell me something"
MESSAGES: Any = [{"role": "user", "content": PROMPT}]
MiB = 1 << 20


# One client of each kind for the module: building one (and its TLS context) costs more than
# a request here.
HTTP = httpx.Client(timeout=30)
OPENAI_HTTP = openai.DefaultHttpxClient(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    HTTP.close()
    OPENAI_HTTP.close()


def openai_client(harness: ProxyHarness) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=harness.server.url + "/v1",
        api_key="local",
        max_retries=0,
        http_client=OPENAI_HTTP,
    )


@pytest.fixture(scope="module")
def harness() -> Iterator[ProxyHarness]:
    timeouts = {"first_byte_timeout_s": FIRST_BYTE_TIMEOUT_S, "idle_timeout_s": IDLE_TIMEOUT_S}
    with proxy_harness(upstream={**timeouts, "models_cache_ttl_s": 600}) as harness:
        # Attest once so that every test starts with a warm key.
        warm = HTTP.post(harness.chat_url, json=_body(stream=False))
        assert warm.status_code == 200, warm.text
        yield harness


@pytest.fixture(autouse=True)
def leak_guard(harness: ProxyHarness, log_lines: Callable[[], list[str]]) -> Iterator[None]:
    """Per test: a fresh well-behaved fake; afterwards no task, socket or canary left behind."""
    harness.fake.reset()
    yield
    harness.assert_clean("\n".join(log_lines()))


def _body(*, stream: bool) -> dict[str, Any]:
    return {"model": E2EE_MODEL, "messages": MESSAGES, "stream": stream}


def _envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    assert error["message"]
    return error


def _events(body: bytes) -> list[str]:
    """The data of every event; asserts the framing is exactly ``data: …\\n\\n`` blocks."""
    assert body.endswith(b"\n\n")
    blocks = body[:-2].split(b"\n\n")
    assert all(block.startswith(b"data: ") for block in blocks), blocks
    assert all(b"\n" not in block for block in blocks)
    return [block[len(b"data: ") :].decode("utf-8") for block in blocks]


def _relayed_text(events: list[dict[str, Any]]) -> str:
    return "".join(
        event["choices"][0]["delta"].get("content") or "" for event in events if event["choices"]
    )


def _assert_in_band(
    body: bytes, code: str, text_chunks: int, *, finished: bool = False
) -> dict[str, Any]:
    """The stream relayed exactly the good prefix, then one error event, then ``[DONE]``.

    ``finished``: the upstream had sent its finish chunk before failing (relayed as sent).
    """
    data = _events(body)
    assert data[-1] == "[DONE]"
    assert data.count("[DONE]") == 1
    events = [json.loads(item) for item in data[:-1]]
    error = events[-1].get("error")
    assert isinstance(error, dict), events[-1]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    assert error["type"] == "upstream_error"
    chunks = events[:-1]
    assert all("error" not in chunk for chunk in chunks)
    assert _relayed_text(chunks) == "".join(token_text(i) for i in range(text_chunks))
    finishes = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]]
    assert [f for f in finishes if f] == (["stop"] if finished else [])
    return error


@dataclass(frozen=True)
class Fault:
    behaviour: Behaviour
    status: int  # the HTTP status before the first byte (and for non-streaming clients)
    code: str
    in_band: bool  # streaming clients see it after the first text, in the stream

    @property
    def text_chunks(self) -> int:
        return self.behaviour.text_chunks


FAULTS: dict[str, Fault] = {
    "reset_mid_stream": Fault(Behaviour("reset"), 502, "upstream_stream_broken", True),
    "reset_before_headers": Fault(
        Behaviour("reset_before_headers"), 502, "upstream_stream_broken", False
    ),
    "no_headers": Fault(Behaviour("stall_headers"), 504, "upstream_timeout", False),
    "headers_then_silence": Fault(Behaviour("stall_body"), 504, "upstream_idle_timeout", False),
    "idle_mid_stream": Fault(Behaviour("stall"), 504, "upstream_idle_timeout", True),
    "invalid_utf8_mid_stream": Fault(
        Behaviour("garbage", payload=b"\xff\xfe\x00\x9c garbage \x80\n\n"),
        502,
        "upstream_bad_stream",
        True,
    ),
    "binary_garbage_first": Fault(
        Behaviour("garbage", text_chunks=0, payload=bytes(range(256)) * 4),
        502,
        "upstream_bad_stream",
        False,
    ),
    "non_json_event_first": Fault(
        Behaviour("garbage", text_chunks=0, payload=b"data: <html>oops</html>\n\n"),
        502,
        "upstream_bad_stream",
        False,
    ),
    "json_array_event_mid_stream": Fault(
        Behaviour("garbage", payload=b"data: [1, 2, 3]\n\n"), 502, "upstream_bad_stream", True
    ),
    "endless_line_first": Fault(
        Behaviour("endless_line", text_chunks=0), 502, "upstream_read_ahead_exceeded", False
    ),
    "endless_line_mid_stream": Fault(
        Behaviour("endless_line"), 502, "upstream_event_too_large", True
    ),
    "oversized_event_mid_stream": Fault(
        Behaviour("big_event", size=3 * MiB), 502, "upstream_event_too_large", True
    ),
    "only_comments_before_the_first_text": Fault(
        Behaviour("garbage", text_chunks=0, payload=b": keep-alive\n\n" * 60_000),
        502,
        "upstream_read_ahead_exceeded",
        False,
    ),
    "no_done_mid_stream": Fault(Behaviour("no_done"), 502, "upstream_stream_truncated", True),
    "no_done_nothing_said": Fault(
        Behaviour("no_done", text_chunks=0), 502, "upstream_stream_truncated", False
    ),
    "deeply_nested_event_first": Fault(
        Behaviour("garbage", text_chunks=0, payload=b"data: " + b"[" * 100_000 + b"\n\n"),
        502,
        "upstream_bad_stream",
        False,
    ),
    "deeply_nested_event_mid_stream": Fault(
        Behaviour("garbage", payload=b"data: " + b"[" * 100_000 + b"\n\n"),
        502,
        "upstream_bad_stream",
        True,
    ),
    "json_body_200": Fault(Behaviour("json_body"), 502, "upstream_bad_content_type", False),
    "html_body_200": Fault(Behaviour("html_body"), 502, "upstream_bad_content_type", False),
    "event_stream_labelled_json": Fault(
        Behaviour("wrong_content_type", content_type="application/json"),
        502,
        "upstream_bad_content_type",
        False,
    ),
    "garbage_status_line": Fault(
        Behaviour("bad_status_line", payload=b"HTTP/1.1 two-hundred OK\r\n\r\n"),
        502,
        "upstream_stream_broken",
        False,
    ),
    "not_http_at_all": Fault(
        Behaviour("bad_status_line", payload=b"\x16\x03\x01\x02\x00garbage\r\n\r\n"),
        502,
        "upstream_stream_broken",
        False,
    ),
}


# Faults whose test is expected to fail until the proxy is fixed (name -> xfail mark).
KNOWN_BUGS: dict[str, pytest.MarkDecorator] = {}


def _stream_with_openai(client: openai.OpenAI, on_headers: Callable[[], None] | None) -> None:
    stream = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
    if on_headers is not None:
        on_headers()
    for _ in stream:
        pass


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=KNOWN_BUGS[name]) if name in KNOWN_BUGS else name for name in FAULTS],
)
def test_fault_gives_a_clear_error_to_every_client(harness: ProxyHarness, name: str) -> None:
    fault = FAULTS[name]
    fake = harness.fake
    # Collect pending garbage first: a finalizer that runs while the proxy's JSON parser is deep
    # in a 100,000-level document has no recursion budget left to report anything (Python 3.11),
    # and pytest would blame this test for another test's leftovers.
    gc.collect()
    # After the first text, the fake holds the fault until the proxy has answered the client's
    # headers (so it has read the good prefix): otherwise one read could carry the prefix and
    # the fault together, and the error would come before the first byte instead.
    fake.reset(replace(fault.behaviour, hold=fault.in_band))

    # Raw framing.
    with HTTP.stream("POST", harness.chat_url, json=_body(stream=True)) as response:
        if fault.in_band:
            fake.release()
        body = response.read()
    harness.settle()
    if fault.in_band:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        finished = fault.behaviour.kind == "no_done"
        _assert_in_band(body, fault.code, fault.text_chunks, finished=finished)
    else:
        _envelope(response, fault.status, fault.code)

    # The openai package, streaming.
    client = openai_client(harness)
    with pytest.raises(openai.APIError) as raised:
        _stream_with_openai(client, fake.release if fault.in_band else None)
    harness.settle()
    assert raised.value.code == fault.code
    if fault.in_band:
        assert not isinstance(raised.value, openai.APIStatusError)
    else:
        assert isinstance(raised.value, openai.APIStatusError)
        assert raised.value.status_code == fault.status

    # The openai package, one aggregated completion: always an HTTP error, never a short answer.
    # (Skipped for a silence before the first byte: the proxy's path is the streaming one, and
    # each call costs a whole timeout.)
    if fault.behaviour.kind in ("stall_headers", "stall_body"):
        assert fake.chat_requests == 2
        return
    if fault.in_band:
        fake.release()  # nothing reaches this client before the end: let the fault go at once
    with pytest.raises(openai.APIStatusError) as status_error:
        client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    harness.settle()
    assert status_error.value.status_code == fault.status
    assert status_error.value.code == fault.code
    assert fake.chat_requests == 3  # no retries configured: one upstream call each


def test_well_formed_answer_through_the_fake(harness: ProxyHarness) -> None:
    # The control case: the same harness relays a good stream intact.
    stream = openai_client(harness).chat.completions.create(
        model=E2EE_MODEL, messages=MESSAGES, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "".join(token_text(i) for i in range(3))


def test_enormous_valid_chunk_is_relayed_whole(harness: ProxyHarness) -> None:
    harness.fake.reset(Behaviour("big_event", text_chunks=1, size=MiB))
    with HTTP.stream("POST", harness.chat_url, json=_body(stream=True)) as response:
        body = response.read()
    assert response.status_code == 200
    data = _events(body)
    assert data[-1] == "[DONE]"
    events = [json.loads(item) for item in data[:-1]]
    assert not any("error" in event for event in events)
    assert _relayed_text(events) == token_text(0) + "x" * MiB


@pytest.mark.parametrize("name", ["json_body_200", "html_body_200", "event_stream_labelled_json"])
def test_a_non_sse_answer_names_the_content_type(harness: ProxyHarness, name: str) -> None:
    # The error says what was wrong, not "truncated" (which a JSON or HTML body also is).
    harness.fake.reset(FAULTS[name].behaviour)
    response = HTTP.post(harness.chat_url, json=_body(stream=True))
    harness.settle()
    assert response.status_code == 502
    assert "content type" in response.json()["error"]["message"].lower()


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tee/attestation", DEEP),
        (
            "/tee/attestation",
            b'{"intel_quote": "00", "signing_address": "0x00", "event_log": "'
            + b"[" * 100_000
            + b'"}',
        ),
    ],
    ids=["attestation_body", "attestation_event_log_text"],
)
def test_deeply_nested_attestation_is_a_clear_502(path: str, body: bytes) -> None:
    with proxy_harness() as harness:
        harness.fake.overrides = {path: body}
        response = HTTP.post(harness.chat_url, json=_body(stream=False))
        harness.settle()
        assert response.status_code == 502, response.text
        assert response.json()["error"]["type"] in ("attestation_error", "upstream_error")
        assert harness.fake.chat_requests == 0  # nothing was encrypted to an unverified key


def test_deeply_nested_model_list_falls_back_to_the_prefix() -> None:
    # An unreadable catalogue is not fatal: e2ee- models are still served, attested as ever.
    with proxy_harness() as harness:
        harness.fake.overrides = {"/models": DEEP}
        response = HTTP.post(harness.chat_url, json=_body(stream=False))
        harness.settle()
        assert response.status_code == 200, response.text
        assert harness.fake.state.attestation_fetches == 1


def _status_response(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


_ECHOING_ERROR = json.dumps({"error": {"message": f"bad input: {CANARY}", "code": CANARY}})


@pytest.mark.parametrize(
    "behaviour",
    [
        Behaviour("garbage", payload=f"data: {_ECHOING_ERROR}\n\n".encode()),
        Behaviour(
            "bad_status_line", payload=_status_response("400 Bad Request", _ECHOING_ERROR.encode())
        ),
    ],
    ids=["in_band", "status_400"],
)
def test_upstream_error_codes_cannot_carry_text_into_the_logs(
    harness: ProxyHarness, log_lines: Callable[[], list[str]], behaviour: Behaviour
) -> None:
    harness.fake.reset(behaviour)
    with HTTP.stream("POST", harness.chat_url, json=_body(stream=True)) as response:
        response.read()
    assert harness.fake.settled()
    assert CANARY not in "\n".join(log_lines())


def test_connection_refused_after_attestation() -> None:
    # The fake attests, then disappears: the chat connection itself is refused.
    with FakeUpstream(SimulatorState(api_key=SIM_API_KEY)) as fake:
        server, app = start_proxy(
            fake.url, upstream={"models_cache_ttl_s": 600}, signatures={"mode": "off"}
        )
        idle = len(app.tasks())
        assert httpx.post(server.url + "/v1/chat/completions", json=_body(stream=False)).is_success
    try:
        with httpx.stream(
            "POST", server.url + "/v1/chat/completions", json=_body(stream=True), timeout=30
        ) as response:
            response.read()
        _envelope(response, 502, "upstream_unreachable")
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as raised:
            for _ in client.chat.completions.create(
                model=E2EE_MODEL, messages=MESSAGES, stream=True
            ):
                pass
        assert raised.value.code == "upstream_unreachable"
        assert len(app.wait_for_tasks(idle)) <= idle
        assert CANARY not in fake.recorded_text()
    finally:
        server.stop()


def test_metrics_never_carry_the_canary(harness: ProxyHarness) -> None:
    harness.fake.reset(Behaviour("garbage", payload=CANARY.encode() + b"\n\n"))
    with HTTP.stream("POST", harness.chat_url, json=_body(stream=True)) as response:
        response.read()
    metrics = HTTP.get(harness.server.url + "/metrics")
    if metrics.status_code == 404:
        pytest.skip("this build has no /metrics")
    assert metrics.status_code == 200
    assert CANARY not in metrics.text
    assert "venice_proxy_" in metrics.text
