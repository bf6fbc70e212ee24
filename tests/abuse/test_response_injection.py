"""A hostile upstream puts text the proxy did not decrypt into an answer: the client gets an
error, and nothing injected, through the real ``openai`` client (streamed and not) and raw
HTTP.

Every injection the field-policy issue lists, sent by :class:`FakeUpstream` after a good
encrypted prefix (the proxy has already relayed text: the error comes in-band) and as the very
first event (the error is an HTTP 502 before any byte). The stream still says
``X-Venice-Proxy-E2EE: true``, which is exactly why a forged field must never get through.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import CANARY, E2EE_MODEL
from tests.support.fake_upstream import SEAL, Behaviour, ProxyHarness, proxy_harness, token_text

INJECTED = "INJECTED-by-the-upstream"
MESSAGES: Any = [{"role": "user", "content": f"{CANARY} hello"}]


def _delta(**delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


INJECTIONS: dict[str, dict[str, Any]] = {
    "choices_not_a_list": {"choices": {"0": {"delta": {"content": INJECTED}}}},
    "refusal": _delta(refusal=INJECTED),
    "tool_calls": _delta(
        tool_calls=[
            {
                "index": 0,
                "id": "c",
                "type": "function",
                "function": {"name": "f", "arguments": INJECTED},
            }
        ]
    ),
    "function_call": _delta(function_call={"name": "f", "arguments": INJECTED}),
    "logprobs": {
        "choices": [
            {
                "index": 0,
                "delta": {"content": SEAL + "x"},
                "logprobs": {"content": [{"token": INJECTED, "logprob": -0.1, "bytes": [73]}]},
                "finish_reason": None,
            }
        ]
    },
    "audio_transcript": _delta(audio={"id": "a", "data": "", "transcript": INJECTED}),
    "annotations": _delta(
        annotations=[{"type": "url_citation", "url_citation": {"url": INJECTED}}]
    ),
    "plain_string_in_content_array": _delta(content=[INJECTED]),
    "plaintext_part_in_content_array": _delta(content=[{"type": "text", "text": INJECTED}]),
    "plaintext_content": _delta(content=INJECTED),
    "plaintext_reasoning": _delta(reasoning_content=INJECTED),
    "unknown_delta_field": _delta(content=SEAL + "ok", note=INJECTED),
    "unknown_choice_field": {"choices": [{"index": 0, "delta": {}, "text": INJECTED}]},
    "unknown_top_level_field": {"notice": INJECTED, "choices": []},
    "message_refusal": {"choices": [{"index": 0, "message": {"refusal": INJECTED}}]},
    "usage_text": {"choices": [], "usage": {"prompt_tokens": 1, "note": INJECTED}},
    "finish_reason_text": {"choices": [{"index": 0, "delta": {}, "finish_reason": INJECTED}]},
    "role_text": _delta(role=INJECTED),
}

HTTP = httpx.Client(timeout=30)
OPENAI_HTTP = openai.DefaultHttpxClient(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    HTTP.close()
    OPENAI_HTTP.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[ProxyHarness]:
    with proxy_harness(upstream={"models_cache_ttl_s": 600}) as harness:
        warm = HTTP.post(harness.chat_url, json=_body(stream=False))
        assert warm.status_code == 200, warm.text
        yield harness


@pytest.fixture(autouse=True)
def leak_guard(harness: ProxyHarness, log_lines: Callable[[], list[str]]) -> Iterator[None]:
    harness.fake.reset()
    yield
    harness.assert_clean("\n".join(log_lines()))
    assert INJECTED not in "\n".join(log_lines())


def _body(*, stream: bool) -> dict[str, Any]:
    return {"model": E2EE_MODEL, "messages": MESSAGES, "stream": stream}


def _client(harness: ProxyHarness) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=harness.server.url + "/v1", api_key="local", max_retries=0, http_client=OPENAI_HTTP
    )


@pytest.mark.parametrize("name", list(INJECTIONS))
def test_injection_after_text_is_an_in_band_error(harness: ProxyHarness, name: str) -> None:
    fake = harness.fake
    behaviour = Behaviour("script", text_chunks=2, events=(INJECTIONS[name],), hold=True)
    fake.reset(behaviour)

    # Raw bytes: the good prefix, one error event, [DONE]; the injected text nowhere.
    with HTTP.stream("POST", harness.chat_url, json=_body(stream=True)) as response:
        assert response.headers["x-venice-proxy-e2ee"] == "true"
        fake.release()
        raw = response.read()
    harness.settle()
    assert INJECTED.encode() not in raw
    events = [json.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
    assert raw.endswith(b"data: [DONE]\n\n")
    assert events[-1]["error"]["code"] in ("e2ee_plaintext_in_stream", "upstream_bad_stream")
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")
    )
    assert text == token_text(0) + token_text(1)

    # The openai package, streaming: the prefix, then APIError; nothing injected in any chunk.
    stream = _client(harness).chat.completions.create(
        model=E2EE_MODEL, messages=MESSAGES, stream=True
    )
    fake.release()
    received: list[str] = []

    def consume() -> None:
        for chunk in stream:
            received.append(chunk.model_dump_json())

    with pytest.raises(openai.APIError) as raised:
        consume()
    harness.settle()
    assert not isinstance(raised.value, openai.APIStatusError)
    assert INJECTED not in "".join(received)
    assert INJECTED not in raised.value.message

    # The openai package, one completion: a 502, never a short answer.
    fake.release()
    with pytest.raises(openai.APIStatusError) as status:
        _client(harness).chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    harness.settle()
    assert status.value.status_code == 502
    assert INJECTED not in status.value.response.text


@pytest.mark.parametrize("name", list(INJECTIONS))
def test_injection_first_is_a_502_before_any_byte(harness: ProxyHarness, name: str) -> None:
    harness.fake.reset(Behaviour("script", text_chunks=0, events=(INJECTIONS[name],)))

    def ask(stream: bool) -> None:
        if stream:
            for _ in _client(harness).chat.completions.create(
                model=E2EE_MODEL, messages=MESSAGES, stream=True
            ):
                pass
        else:
            _client(harness).chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)

    for stream in (True, False):
        with pytest.raises(openai.APIStatusError) as raised:
            ask(stream)
        harness.settle()
        assert raised.value.status_code == 502
        assert raised.value.code in ("e2ee_plaintext_in_stream", "upstream_bad_stream")
        assert INJECTED not in raised.value.response.text


def test_harmless_unknown_metadata_is_dropped(harness: ProxyHarness) -> None:
    event = {
        "prompt_token_ids": [1, 2],
        "choices": [
            {
                "index": 0,
                "delta": {"content": SEAL + "fine", "tool_calls": [], "token_count": 1},
                "stop_reason": None,
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    harness.fake.reset(Behaviour("script", text_chunks=1, events=(event,)))
    with HTTP.stream("POST", harness.chat_url, json=_body(stream=True)) as response:
        raw = response.read()
    harness.settle()
    assert b'"error"' not in raw
    for name in (b"prompt_token_ids", b"tool_calls", b"token_count", b"stop_reason"):
        assert name not in raw
    completion = _client(harness).chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    harness.settle()
    assert completion.choices[0].message.content == token_text(0) + "fine"


def test_the_script_without_injection_is_a_clean_answer(harness: ProxyHarness) -> None:
    # Control: the same behaviour without any injection.
    harness.fake.reset(replace(Behaviour("script", text_chunks=2), events=()))
    completion = _client(harness).chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    harness.settle()
    assert completion.choices[0].message.content == token_text(0) + token_text(1)
