"""Bounded memory against a hostile upstream: each flood is cut at its bound, at once.

Each case lets :class:`~tests.support.fake_upstream.FakeUpstream` send far more than the proxy's
bound (generated as it is written, so the test process never holds it) and checks that the
client gets a clear OpenAI error within seconds (not at the idle timeout, which is 30 s here),
that the upstream was hung up on long before it finished, and that the process's resident memory
(client, proxy and fake share it) grew by less than 20 MiB at its peak, sampled every 2 ms while
the request ran:

- role-only chunks before the first text: ``upstream.max_read_ahead_bytes`` (512 KiB);
- ``data:`` lines that never end an event: ``upstream.max_event_bytes`` (4 MiB);
- a 128 MiB JSON answer for the attestation, the model list and a signature:
  ``upstream.max_json_bytes`` (4 MiB);
- an answer that never ends, gathered whole for a non-streaming client (chat completions and
  the Responses API) or held for a streamed Responses answer (its ``response.completed``
  carries the whole output), or a tool call that never closes in a streamed answer:
  ``upstream.max_answer_chars`` (4,000,000 characters of text).

Before the bounds: 120 MB of role-only chunks raised the proxy's RSS from 77 to 202 MB, endless
data lines by 120 MB, a 128 MiB attestation by 300 MB, each hanging until the idle timeout; an
endless answer for a non-streaming client was gathered until the upstream stopped.
"""

from __future__ import annotations

import gc
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import httpx
import pytest

from tests.conftest import CANARY, E2EE_MODEL
from tests.support.fake_upstream import Behaviour, ProxyHarness, proxy_harness

MiB = 1 << 20
RSS_GROWTH_LIMIT = 20 * MiB
FLOOD = 150 * MiB
HUGE_JSON = 128 * MiB
EVENT_LINE = re.compile(rb"(?:^|\n)event: ([a-z_.]+)\n")
CUT_WITHIN_S = 10.0  # the idle timeout is 30 s: an answer before this was cut at the bound
TIMEOUTS = {"first_byte_timeout_s": 30, "idle_timeout_s": 30}


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The peak growth of this process's resident memory during the block (2 ms samples)."""

    def __init__(self) -> None:
        self.growth = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.growth = max(self.growth, _rss() - self._before)

    def __enter__(self) -> PeakRss:
        gc.collect()
        self._before = _rss()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.growth = max(self.growth, _rss() - self._before)


def _check(case: str, rss: PeakRss, sent: int, total: int, elapsed: float, held: int = 0) -> None:
    """The bound held: cut quickly, long before the upstream finished, memory flat (beyond
    ``held`` bytes the case must hold by design). The numbers are printed for ``pytest -s``."""
    print(
        f"\n{case}: RSS +{rss.growth / MiB:.1f} MiB at peak; the upstream got to send "
        f"{sent / MiB:.1f} of {total / MiB:.0f} MiB; answered in {elapsed:.2f} s"
    )
    assert elapsed < CUT_WITHIN_S
    assert sent < total // 4, "the proxy kept reading after its bound"
    assert rss.growth < RSS_GROWTH_LIMIT + held, f"RSS grew by {rss.growth / MiB:.1f} MiB"


def _body(*, stream: bool) -> dict[str, Any]:
    return {
        "model": E2EE_MODEL,
        "messages": [{"role": "user", "content": f"{CANARY} hello"}],
        "stream": stream,
    }


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


@pytest.fixture(scope="module")
def harness() -> Iterator[ProxyHarness]:
    with proxy_harness(upstream={**TIMEOUTS, "models_cache_ttl_s": 600}) as harness:
        warm = httpx.post(harness.chat_url, json=_body(stream=False), timeout=30)
        assert warm.status_code == 200, warm.text
        yield harness


@pytest.fixture
def clean(harness: ProxyHarness, log_lines: Callable[[], list[str]]) -> Iterator[ProxyHarness]:
    harness.fake.reset()
    yield harness
    harness.assert_clean("\n".join(log_lines()))


def test_role_only_chunks_before_the_first_text(clean: ProxyHarness) -> None:
    fake = clean.fake
    fake.reset(Behaviour("role_flood", size=FLOOD))
    started = time.monotonic()
    with PeakRss() as rss:
        response = httpx.post(clean.chat_url, json=_body(stream=True), timeout=60)
    elapsed = time.monotonic() - started
    error = _error(response, 502, "upstream_read_ahead_exceeded")
    assert "upstream.max_read_ahead_bytes" in error["message"]
    assert fake.settled()
    _check("role-only chunks", rss, fake.bytes_sent, FLOOD, elapsed)


def test_data_lines_that_never_end_an_event(clean: ProxyHarness) -> None:
    fake = clean.fake
    fake.reset(Behaviour("data_lines", text_chunks=2, size=FLOOD))
    started = time.monotonic()
    with PeakRss() as rss:
        response = httpx.post(clean.chat_url, json=_body(stream=True), timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code == 200  # the first text had gone out: the error is in-band
    body = response.text
    assert body.endswith("data: [DONE]\n\n")
    assert '"code":"upstream_event_too_large"' in body
    assert fake.settled()
    _check("endless data: lines", rss, fake.bytes_sent, FLOOD, elapsed)


def _huge_json_case(
    path: str, request: Callable[[ProxyHarness], httpx.Response], **sections: dict[str, Any]
) -> tuple[httpx.Response, PeakRss, float, int]:
    with proxy_harness(upstream={**TIMEOUTS}, **sections) as harness:
        harness.fake.huge_json[path] = HUGE_JSON
        started = time.monotonic()
        with PeakRss() as rss:
            response = request(harness)
        elapsed = time.monotonic() - started
        sent = harness.fake.bytes_sent
        harness.settle()
    return response, rss, elapsed, sent


def _chat(harness: ProxyHarness) -> httpx.Response:
    return httpx.post(harness.chat_url, json=_body(stream=False), timeout=60)


def _models(harness: ProxyHarness) -> httpx.Response:
    return httpx.get(harness.server.url + "/v1/models", timeout=60)


@pytest.mark.parametrize(
    ("path", "request_", "sections"),
    [
        ("/tee/attestation", _chat, {}),
        ("/models", _models, {}),
        ("/tee/signature", _chat, {"signatures": {"mode": "strict"}}),
    ],
    ids=["attestation", "models", "signature"],
)
def test_a_huge_json_answer_is_cut_at_its_bound(
    path: str,
    request_: Callable[[ProxyHarness], httpx.Response],
    sections: dict[str, dict[str, Any]],
) -> None:
    response, rss, elapsed, sent = _huge_json_case(path, request_, **sections)
    if path == "/tee/signature":
        # strict mode: the signature could not be fetched, so the answer is withheld
        _error(response, 502, "signature_fetch_failed")
    else:
        error = _error(response, 502, "upstream_json_too_large")
        assert "upstream.max_json_bytes" in error["message"]
    _check(f"128 MiB JSON at {path}", rss, sent, HUGE_JSON, elapsed)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_an_endless_answer_gathered_whole_is_cut_at_its_bound(
    clean: ProxyHarness, path: str
) -> None:
    fake = clean.fake
    fake.reset(Behaviour("flood", text_chunks=1, size=FLOOD))
    body: dict[str, Any] = (
        _body(stream=False)
        if path.endswith("completions")
        else {"model": E2EE_MODEL, "input": f"{CANARY} hello"}
    )
    started = time.monotonic()
    with PeakRss() as rss:
        response = httpx.post(clean.server.url + path, json=body, timeout=60)
    elapsed = time.monotonic() - started
    error = _error(response, 502, "upstream_answer_too_large")
    assert error["message"] == (
        "the upstream's answer exceeds 4000000 characters, more than the proxy holds for "
        "one answer; raise upstream.max_answer_chars for longer ones"
    )
    assert fake.settled()
    _check(f"endless answer at {path}", rss, fake.bytes_sent, FLOOD, elapsed)


def test_an_endless_answer_streamed_as_the_responses_api_is_cut_at_its_bound(
    clean: ProxyHarness,
) -> None:
    # response.completed carries the whole output, so a streamed Responses answer is held too:
    # one that never ends fails in-band at the bound instead of growing the proxy.
    fake = clean.fake
    fake.reset(Behaviour("flood", text_chunks=1, size=FLOOD))
    body = {"model": E2EE_MODEL, "input": f"{CANARY} hello", "stream": True}
    started = time.monotonic()
    kinds: list[bytes] = []
    code_seen = False
    tail = b""
    # Read as it arrives, keeping only a short tail: the client shares this process, and the
    # body (4 MB of deltas, then the failed response carrying the 4 MB output) would otherwise
    # count as the proxy's growth.
    with (
        PeakRss() as rss,
        httpx.stream("POST", clean.server.url + "/v1/responses", json=body, timeout=60) as response,
    ):
        for piece in response.iter_raw():
            window = tail + piece
            kinds += [
                match[1]
                for match in EVENT_LINE.finditer(window)
                if match.end() > len(tail)  # not counted with the tail already
            ]
            code_seen = code_seen or b"(upstream_answer_too_large)" in window
            tail = window[-128:]
    elapsed = time.monotonic() - started
    assert response.status_code == 200  # the stream had started: the error is in-band
    assert kinds[-1] == b"response.failed"
    assert b"response.completed" not in kinds
    assert code_seen
    # By design the proxy holds the answer (4,000,000 characters) and then encodes it once
    # more in response.failed, which carries the output whole: 8 MB beyond the other cases.
    _check("endless streamed Responses answer", rss, fake.bytes_sent, FLOOD, elapsed, held=8 * MiB)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_an_endless_tool_call_in_a_streamed_answer_is_cut_at_its_bound(
    clean: ProxyHarness,
) -> None:
    # Tool emulation holds a call's text until the call closes: one that never closes must not
    # grow the proxy, streamed or not.
    fake = clean.fake
    opening = '<tool_call>{"name": "get_weather", "arguments": {"city": "'
    fake.reset(Behaviour("flood", text_chunks=0, size=FLOOD, opening=opening))
    body = {**_body(stream=True), "tools": [WEATHER_TOOL]}
    started = time.monotonic()
    with PeakRss() as rss:
        response = httpx.post(clean.chat_url, json=body, timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code == 200  # the stream had started: the error is in-band
    assert response.text.endswith("data: [DONE]\n\n")
    assert '"code":"upstream_answer_too_large"' in response.text
    assert "get_weather" not in response.text  # no part of the unfinished call went out
    assert fake.settled()
    _check("endless streamed tool call", rss, fake.bytes_sent, FLOOD, elapsed)
