"""The load phase's client (benchmarks/lean_client.py) against scripted servers on 127.0.0.1.

Each scripted server reads one request and writes its answer in the pieces given, pausing
between them so they arrive as separate reads (if the kernel still merges two, the test checks
the same behaviour on fewer reads). The reader is also fed every split of one answer directly,
which covers the awkward places deterministically. Behaviour only: no timing assertions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from benchmarks.client import (
    PLAIN_MODEL,
    Prompt,
    StreamResult,
    Target,
    direct_target,
    enclave_key,
    prompt_for_tokens,
    proxy_target,
    stream_once,
)
from benchmarks.lean_client import (
    LoopbackRequest,
    ResponseReader,
    build_loopback_request,
    stream_once_lean,
)
from proxy.http.loopback import free_port
from proxy.simulator import Faults, SimulatorState
from tests.support.simulator_helpers import ThreadedSimulator

PROMPT = prompt_for_tokens(4)
TOKENS = ("Hello", " there", ", friend")
EXPECTED = "".join(TOKENS)
HEAD_CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return b"data: " + data.encode() + b"\n\n"


def token_event(text: str) -> bytes:
    return event(
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    )


def answer(*events: bytes) -> bytes:
    """A chunked SSE answer, one event per chunk."""
    return HEAD_CHUNKED + b"".join(chunk(e) for e in events) + LAST_CHUNK


GOOD_EVENTS = (
    event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
    *(token_event(t) for t in TOKENS),
    event("[DONE]"),
)
GOOD_ANSWER = answer(*GOOD_EVENTS)


@dataclass
class ScriptedServer:
    url: str
    requests: list[bytes] = field(default_factory=list)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@asynccontextmanager
async def scripted_server(
    pieces: Sequence[bytes], *, hang: bool = False
) -> AsyncIterator[ScriptedServer]:
    """Answers every request with ``pieces``, then closes (with ``hang``: stays silent until the
    test is done). Handlers are waited for, never cancelled."""
    server_info = ScriptedServer(url="")
    test_done = asyncio.Event()
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            server_info.requests.append(await _read_request(reader))
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.02)
            if hang:
                await test_done.wait()
        except ConnectionError:
            pass  # the client hung up first (it stops reading once it has an outcome)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server_info.url = f"http://127.0.0.1:{port}"
    try:
        yield server_info
    finally:
        test_done.set()
        await asyncio.gather(*handlers)
        server.close()
        await server.wait_closed()


def lean_request(base_url: str) -> LoopbackRequest:
    return build_loopback_request(proxy_target(base_url, PLAIN_MODEL, "test"), PROMPT)


async def run_scripted(
    pieces: Sequence[bytes], *, expected: str | None = EXPECTED, **options: Any
) -> StreamResult:
    async with scripted_server(pieces, hang=options.pop("hang", False)) as server:
        return await stream_once_lean(lean_request(server.url), expected=expected, **options)


def split_at(data: bytes, *offsets: int) -> list[bytes]:
    bounds = [0, *offsets, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


async def test_the_request_is_target_build_plus_framing_headers() -> None:
    async with scripted_server([GOOD_ANSWER]) as server:
        target = direct_target(server.url, "sk-test", "direct", model_key=None)
        result = await stream_once_lean(build_loopback_request(target, PROMPT))
        sent = server.requests[0]
    body, headers, _ = target.build(PROMPT)
    head, _, sent_body = sent.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/v1/chat/completions HTTP/1.1"
    sent_headers = dict(line.split(": ", 1) for line in lines[1:])
    assert sent_headers == {
        "host": server.url.removeprefix("http://"),
        "content-length": str(len(body)),
        "connection": "close",
        **headers,
    }
    assert headers["authorization"] == "Bearer sk-test"
    assert sent_body == body
    assert result.ok


async def test_a_chunked_answer_is_collected_and_timed() -> None:
    result = await run_scripted(split_at(GOOD_ANSWER, len(HEAD_CHUNKED)))
    assert result.ok, result.error
    assert result.error is None
    assert result.events == 4  # the role event counts, [DONE] does not
    assert result.content_events == len(TOKENS)
    assert result.ttft_s is not None
    assert result.ttlt_s is not None
    assert 0 < result.ttft_s <= result.ttlt_s


async def test_reads_split_at_awkward_places_change_nothing() -> None:
    body_start = len(HEAD_CHUNKED)
    first_chunk = chunk(GOOD_EVENTS[0])
    second_event_at = body_start + len(first_chunk)
    pieces = split_at(
        GOOD_ANSWER,
        10,  # inside the status line
        body_start + 1,  # inside the first chunk-size line
        second_event_at - 1,  # between the chunk's \r and \n
        second_event_at + 3,  # inside the next chunk-size line ...
        second_event_at + 20,  # ... and inside its event
        len(GOOD_ANSWER) - 3,  # inside the last chunk
    )
    result = await run_scripted(pieces)
    assert result.ok, result.error
    assert (result.events, result.content_events) == (4, len(TOKENS))


async def test_several_events_in_one_chunk_and_one_event_over_two_chunks() -> None:
    events = b"".join(GOOD_EVENTS)
    body = chunk(events[:7]) + chunk(events[7:100]) + chunk(events[100:])
    result = await run_scripted([HEAD_CHUNKED + body + LAST_CHUNK])
    assert result.ok, result.error
    assert (result.events, result.content_events) == (4, len(TOKENS))


def test_every_split_of_an_answer_gives_the_same_result() -> None:
    whole = ResponseReader(start=0.0, expected=EXPECTED, max_response_bytes=1 << 20)
    whole.feed(GOOD_ANSWER, 1.0)
    assert whole.outcome is not None
    assert whole.outcome.ok
    for cut in range(1, len(GOOD_ANSWER)):
        reader = ResponseReader(start=0.0, expected=EXPECTED, max_response_bytes=1 << 20)
        reader.feed(GOOD_ANSWER[:cut], 1.0)
        reader.feed(GOOD_ANSWER[cut:], 2.0)
        outcome = reader.outcome
        assert outcome is not None
        assert (outcome.error, outcome.events, outcome.content_events) == (None, 4, 3), cut
    byte_by_byte = ResponseReader(start=0.0, expected=EXPECTED, max_response_bytes=1 << 20)
    for index in range(len(GOOD_ANSWER)):
        byte_by_byte.feed(GOOD_ANSWER[index : index + 1], float(index))
    outcome = byte_by_byte.outcome
    assert outcome is not None
    assert (outcome.error, outcome.events, outcome.content_events) == (None, 4, 3)


async def test_an_in_band_error_event_is_an_error() -> None:
    error = event({"error": {"message": "upstream failed", "type": "upstream_error"}})
    result = await run_scripted([answer(token_event("Hello"), error, event("[DONE]"))])
    assert result.error == "in_band_error"
    assert not result.ok
    assert (result.events, result.content_events) == (2, 1)


async def test_an_event_that_is_not_json_is_a_bad_event() -> None:
    result = await run_scripted([answer(token_event("Hello"), b"data: {not json\n\n")])
    assert result.error == "bad_event"


async def test_a_non_200_json_answer_is_read_and_reported_by_status() -> None:
    body = json.dumps({"error": {"message": "busy", "type": "overloaded"}}).encode()
    head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    response = head + b"content-length: %d\r\n\r\n" % len(body) + body
    result = await run_scripted(split_at(response, len(head) + 5, len(response) - 4))
    assert result == StreamResult(None, None, 0, 0, "http_503")


async def test_a_stream_cut_before_done_is_an_error() -> None:
    cut_mid_body = HEAD_CHUNKED + b"".join(chunk(e) for e in GOOD_EVENTS[:3])
    result = await run_scripted([cut_mid_body])
    assert result.error == "RemoteProtocolError"
    assert result.content_events == 2
    ended_without_done = await run_scripted([answer(*GOOD_EVENTS[:-1])])
    assert ended_without_done.error == "no_done"
    assert ended_without_done.content_events == len(TOKENS)


async def test_content_that_differs_from_expected_is_a_mismatch() -> None:
    wrong = await run_scripted([GOOD_ANSWER], expected="Hello there, foe")
    assert wrong.error == "content_mismatch"
    assert wrong.content_events == len(TOKENS)
    longer = await run_scripted([GOOD_ANSWER], expected=EXPECTED + " and more")
    assert longer.error == "content_mismatch"
    unchecked = await run_scripted([GOOD_ANSWER], expected=None)
    assert unchecked.ok


async def test_only_the_first_choice_is_read() -> None:
    two_choices = event(
        {
            "choices": [
                {"index": 0, "delta": {"content": "Hello"}},
                {"index": 1, "delta": {"content": "ignored"}},
            ]
        }
    )
    result = await run_scripted([answer(two_choices, event("[DONE]"))], expected="Hello")
    assert result.ok, result.error
    assert result.content_events == 1


async def test_a_body_larger_than_the_bound_is_cut() -> None:
    result = await run_scripted([GOOD_ANSWER], max_response_bytes=len(GOOD_ANSWER) - 1)
    assert result.error == "too_large"


async def test_a_silent_server_runs_into_the_stream_deadline() -> None:
    result = await run_scripted(
        [HEAD_CHUNKED, chunk(token_event("Hello"))], hang=True, timeout_s=0.3
    )
    assert result.error == "ReadTimeout"
    assert result.content_events == 1


async def test_a_closed_port_is_a_connect_error() -> None:
    result = await stream_once_lean(lean_request(f"http://127.0.0.1:{free_port()}"))
    assert result.error == "ConnectError"


async def test_compressed_or_oddly_framed_answers_are_refused() -> None:
    gzip_head = HEAD_CHUNKED.replace(b"\r\n\r\n", b"\r\ncontent-encoding: gzip\r\n\r\n")
    compressed = await run_scripted([gzip_head + LAST_CHUNK])
    assert compressed.error == "RemoteProtocolError"
    bad_size = await run_scripted([HEAD_CHUNKED + b"-5\r\nhello\r\n"])
    assert bad_size.error == "RemoteProtocolError"


def test_non_loopback_targets_are_refused() -> None:
    for url in ("http://example.com:80", "https://127.0.0.1:8", "http://10.0.0.1:8"):
        with pytest.raises(ValueError, match="test"):
            build_loopback_request(proxy_target(url, PLAIN_MODEL, "test"), PROMPT)


async def test_the_real_simulator_gives_what_stream_once_gives() -> None:
    prompt: Prompt = prompt_for_tokens(12)
    with ThreadedSimulator(SimulatorState()) as simulator:
        sim_url = simulator.base_url.removesuffix("/api/v1")
        target: Target = direct_target(sim_url, "sk-test", "direct_plain", model_key=None)
        lean = await stream_once_lean(
            build_loopback_request(target, prompt), expected=prompt.answer
        )
        async with httpx.AsyncClient() as client:
            reference = await stream_once(client, target, prompt, expected=prompt.answer)
    assert lean.ok, lean.error
    assert reference.ok, reference.error
    assert (lean.events, lean.content_events) == (reference.events, reference.content_events)
    assert lean.content_events == prompt.tokens


async def in_process_e2ee_target(simulator: ThreadedSimulator) -> Target:
    """The in-process E2EE client's target on ``simulator`` (its enclave key read, unverified)."""
    sim_url = simulator.base_url.removesuffix("/api/v1")
    async with httpx.AsyncClient() as client:
        key = await enclave_key(client, sim_url, "sk-test")
    return direct_target(sim_url, "sk-test", "direct_e2ee", model_key=key)


@pytest.mark.parametrize("phala", [False, True])
async def test_the_in_process_e2ee_client_reads_the_real_simulator_as_stream_once(
    phala: bool,
) -> None:
    prompt: Prompt = prompt_for_tokens(12)
    state = SimulatorState()
    state.faults = Faults(phala_legacy=phala)
    with ThreadedSimulator(state) as simulator:
        target = await in_process_e2ee_target(simulator)
        async with httpx.AsyncClient() as client:
            first = build_loopback_request(target, prompt)
            second = build_loopback_request(target, prompt)
            lean = await stream_once_lean(first, expected=prompt.answer)
            reference = await stream_once(client, target, prompt, expected=prompt.answer)
    # A sealed request of its own and a decryptor of its own for every stream.
    assert first.raw != second.raw
    assert first.decryptor is not None
    assert second.decryptor is not None
    assert first.decryptor is not second.decryptor
    assert lean.ok, lean.error
    assert reference.ok, reference.error
    assert (lean.events, lean.content_events) == (reference.events, reference.content_events)
    assert lean.content_events == prompt.tokens


async def test_an_e2ee_answer_read_without_its_key_fails_the_stream() -> None:
    prompt: Prompt = prompt_for_tokens(4)
    with ThreadedSimulator(SimulatorState()) as simulator:
        target = await in_process_e2ee_target(simulator)
        request = build_loopback_request(target, prompt)
        other = build_loopback_request(target, prompt)
        # The answer to one request, opened with another request's key: nothing opens.
        swapped = LoopbackRequest(request.host, request.port, request.raw, other.decryptor)
        result = await stream_once_lean(swapped, expected=prompt.answer)
    assert not result.ok
    assert result.error == "e2ee_decryption_failed"
