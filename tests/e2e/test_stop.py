"""``stop`` is enforced by the proxy on the decrypted answer and never sent upstream.

The simulator answers ``"You said: <prompt> — ok ✓ 🦊"`` one word (and one emoji) per encrypted
chunk, so a stop string spanning words spans chunk borders. Through the real ``openai`` client,
streaming and not; the strict simulator proves ``stop`` never reached it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from proxy.http.loopback import ThreadedServer
from proxy.simulator import SimulatorState
from proxy.simulator.state import StreamOutcome
from tests.conftest import CANARY, E2EE_MODEL, ProxyFactory


def client(server: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="local", max_retries=0)


def ask(server: ThreadedServer, prompt: str, stop: Any, **extra: Any) -> tuple[str, str | None]:
    completion = client(server).chat.completions.create(
        model=E2EE_MODEL, messages=[{"role": "user", "content": prompt}], stop=stop, **extra
    )
    return completion.choices[0].message.content or "", completion.choices[0].finish_reason


def ask_streaming(
    server: ThreadedServer, prompt: str, stop: Any, **extra: Any
) -> tuple[dict[int, str], dict[int, str | None], list[Any]]:
    chunks = list(
        client(server).chat.completions.create(
            model=E2EE_MODEL,
            messages=[{"role": "user", "content": prompt}],
            stop=stop,
            stream=True,
            **extra,
        )
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                assert choice.index not in finishes, "one finish per choice"
                finishes[choice.index] = choice.finish_reason
    return texts, finishes, chunks


def upstream_bodies(state: SimulatorState) -> list[dict[str, Any]]:
    return [r.json() for r in state.requests if r.path.endswith("/chat/completions")]


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize(
    ("prompt", "stop", "expected"),
    [
        # One stop string across three encrypted chunks (" beta", " gamma" boundaries).
        (f"alpha beta gamma delta {CANARY}", "a beta gam", "You said: alph"),
        # Several stop strings: the first in the text wins, wherever it completes.
        (f"alpha beta gamma delta {CANARY}", ["delta", "gamma", "zzz"], "You said: alpha beta "),
        # Multi-byte text: the 3-byte check mark and the 4-byte fox are chunks of their own.
        (f"hi {CANARY}", "✓ 🦊", f"You said: hi {CANARY} — ok "),
        (f"hi {CANARY}", ["🦊"], f"You said: hi {CANARY} — ok ✓ "),
        (f"héllo wörld {CANARY}", "ö", "You said: héllo w"),
        # The stop is the canary itself: the answer ends before echoing the prompt.
        (f"tell {CANARY} now", CANARY, "You said: tell "),
    ],
)
def test_stop_cuts_the_answer(
    proxy: ThreadedServer, sim_state: SimulatorState, prompt: str, stop: Any, expected: str
) -> None:
    assert ask(proxy, prompt, stop) == (expected, "stop")
    texts, finishes, _chunks = ask_streaming(proxy, prompt, stop)
    assert texts == {0: expected}
    assert finishes == {0: "stop"}
    for body in upstream_bodies(sim_state):
        assert "stop" not in body


def test_no_match_is_a_normal_answer(proxy: ThreadedServer) -> None:
    text, finish = ask(proxy, f"hi {CANARY}", ["nowhere", "x y z"])
    assert text == f"You said: hi {CANARY} — ok ✓ 🦊"
    assert finish == "stop"
    texts, _finishes, chunks = ask_streaming(
        proxy, f"hi {CANARY}", "nowhere", stream_options={"include_usage": True}
    )
    assert texts == {0: f"You said: hi {CANARY} — ok ✓ 🦊"}
    assert chunks[-1].usage is not None  # the upstream finished: usage as usual


def test_each_choice_is_cut(proxy: ThreadedServer) -> None:
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}], stop="said", n=3
    )
    assert [c.message.content for c in completion.choices] == ["[0] You ", "[1] You ", "[2] You "]
    assert {c.finish_reason for c in completion.choices} == {"stop"}
    texts, finishes, _chunks = ask_streaming(proxy, CANARY, "said", n=2)
    assert texts == {0: "[0] You ", 1: "[1] You "}
    assert finishes == {0: "stop", 1: "stop"}


def test_a_local_stop_cancels_the_generation(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    sim_state.token_delay_s = 0.02
    try:
        prompt = f"{CANARY} " + "word " * 200
        texts, finishes, chunks = ask_streaming(
            proxy, prompt, "word", stream_options={"include_usage": True}
        )
        assert texts == {0: f"You said: {CANARY} "}
        assert finishes == {0: "stop"}
        assert all(chunk.usage is None for chunk in chunks)  # no usage after a local stop
        # The proxy hung up: the simulator's generation was cancelled, not run to the end.
        # (streams_completed is not asserted: an earlier test's stream on the shared simulator
        # may still finish during this one on a loaded machine.)
        # Followed by this stream's own completion id: a stream an earlier test cut may end
        # on the shared simulator during this one.
        own = chunks[0].id
        assert wait_for(lambda: sim_state.stream_outcomes.get(own) is StreamOutcome.CANCELLED)
    finally:
        sim_state.token_delay_s = 0.0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("n", [1, 3])
def test_every_choice_stopped_cancels_the_generation_streaming_or_not(
    proxy: ThreadedServer, sim_state: SimulatorState, stream: bool, n: int
) -> None:
    # Tokens 10 ms apart: the upstream is still generating when every choice has met its stop.
    # (With no delay the simulator writes its whole answer without ever yielding, so it cannot
    # see a hang-up before it is done, like any server whose writes never block.)
    sim_state.token_delay_s = 0.01
    try:
        messages: Any = [{"role": "user", "content": f"{CANARY} " + "word " * 200}]
        if stream:
            _texts, finishes, chunks = ask_streaming(proxy, messages[0]["content"], "said", n=n)
            own = chunks[0].id
            assert finishes == dict.fromkeys(range(n), "stop")
        else:
            answer = client(proxy).chat.completions.create(
                model=E2EE_MODEL, messages=messages, stop="said", n=n
            )
            own = answer.id
            assert [c.finish_reason for c in answer.choices] == ["stop"] * n
        assert wait_for(lambda: sim_state.stream_outcomes.get(own) is StreamOutcome.CANCELLED)
    finally:
        sim_state.token_delay_s = 0.0


def test_raw_stream_ends_cleanly_after_the_stop(
    proxy: ThreadedServer, sim_state: SimulatorState, log_lines: Callable[[], list[str]]
) -> None:
    # Tokens 20 ms apart, so the stop is met before the upstream's [DONE] can arrive (with no
    # delay one read may carry the whole answer, which is then complete upstream).
    sim_state.token_delay_s = 0.02
    try:
        with httpx.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json={
                "model": E2EE_MODEL,
                "messages": [{"role": "user", "content": f"one two three {CANARY}"}],
                "stop": ["two"],
                "stream": True,
            },
            headers={"x-request-id": "stop-clean-end"},
        ) as response:
            body = response.read()
    finally:
        sim_state.token_delay_s = 0.0
    assert body.endswith(b"data: [DONE]\n\n")
    events = [json.loads(e[6:]) for e in body.split(b"\n\n") if e.startswith(b"data: {")]
    assert not any("error" in event for event in events)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text == "You said: one "
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert CANARY.encode() not in body

    # The request's line is written when the stream's generator ends: wait for it (an earlier
    # test's stream may log its own line meanwhile: pick ours by its id).
    def ours() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in log_lines() if '"chat_request"' in line]
        return [line for line in lines if line.get("client_request_id") == "stop-clean-end"]

    assert wait_for(lambda: bool(ours()))
    (record,) = ours()
    assert record["stopped"] is True
    assert record["completed"] is False
    assert record["error"] is None


def test_strict_signatures_read_the_stream_to_its_end(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    # The enclave signs only a completed stream: strict mode reads (and drops) the rest.
    # An earlier test's stream the proxy closed at its stop may still be ending in the
    # simulator (and count as completed after the reset): let it end, then count from zero.
    assert wait_for(lambda: sim_state.streams_open == 0)
    sim_state.streams_completed = sim_state.streams_cancelled = 0
    server = make_proxy(signatures={"mode": "strict"})
    assert ask(server, f"one two three {CANARY}", "two") == ("You said: one ", "stop")
    texts, finishes, chunks = ask_streaming(
        server, f"one two three {CANARY}", "two", stream_options={"include_usage": True}
    )
    assert texts == {0: "You said: one "}
    assert finishes == {0: "stop"}
    assert chunks[-1].usage is not None
    assert sim_state.streams_completed == 2
    assert sim_state.streams_cancelled == 0
