"""The load generator's client: one streamed chat request over httpx, timed from the client side.

Requests::

    via the proxy     POST {proxy}/v1/chat/completions      model e2ee-simulated-near (E2EE)
                                                            or simulated-plain (passthrough)
    directly          POST {sim}/api/v1/chat/completions    model simulated-plain, or
                                                            e2ee-simulated-near with the E2EE
                                                            headers and sealed messages

The simulator answers ``"You said: " + <last user message> + " — ok ✓ 🦊"``, one word per
event, so :func:`prompt_for_tokens` picks a prompt whose answer has an exact number of content
tokens, and the plaintext model streams the same tokens as the E2EE one.

Timing: ``ttft`` is the moment the read that carried the first non-empty ``delta.content``
returned; ``ttlt`` the moment ``data: [DONE]`` arrived. Both are measured from just before the
request is sent. A stream counts as an error when the status is not 200, an event is not a
JSON object or carries an ``error`` member, ``[DONE]`` never arrives, or (when ``expected`` is
given) the concatenated content differs from the expected answer. Direct E2EE is the
in-process E2EE client, the baseline of the issue-16 goals: it seals its own request (fresh
client key pair, ECDH to the enclave key) and opens every chunk of the answer with the proxy's
own :class:`~proxy.core.response.ChunkDecryptor`, as an SDK with E2EE built in would, so
``proxy_e2ee - direct_e2ee`` is what the extra process and its HTTP hop cost.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from proxy.core.crypto import parse_public_key
from proxy.core.errors import ProxyError
from proxy.core.request import encrypt_request, parse_chat_request
from proxy.core.response import ChunkDecryptor
from proxy.simulator.answer import ANSWER_PREFIX, ANSWER_SUFFIX, tokenize

E2EE_MODEL = "e2ee-simulated-near"
PLAIN_MODEL = "simulated-plain"


@dataclass(frozen=True, slots=True)
class Prompt:
    """A user message whose answer is exactly ``tokens`` content tokens long."""

    text: str
    answer: str
    tokens: int


def prompt_for_tokens(tokens: int) -> Prompt:
    """A prompt of plain words making the simulator's answer ``tokens`` tokens long."""
    fixed = len(tokenize(ANSWER_PREFIX + "x" + ANSWER_SUFFIX)) - 1
    words = max(1, tokens - fixed)
    text = " ".join(f"w{i % 997}" for i in range(words))
    answer = ANSWER_PREFIX + text + ANSWER_SUFFIX
    return Prompt(text=text, answer=answer, tokens=len(tokenize(answer)))


@dataclass(frozen=True, slots=True)
class Target:
    """Where one variant sends its requests, and how to build each one."""

    name: str
    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    # The enclave key when this target seals its own messages (direct E2EE).
    model_key: bytes | None = None

    def build(self, prompt: Prompt) -> tuple[bytes, dict[str, str], ChunkDecryptor | None]:
        """Body and headers of one request (fresh encryption each time for direct E2EE), and
        for direct E2EE the decryptor of its answer (the request's own client key)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt.text}],
            "stream": True,
        }
        headers = {"content-type": "application/json", **self.headers}
        decryptor: ChunkDecryptor | None = None
        if self.model_key is not None:
            encrypted = encrypt_request(
                parse_chat_request(body), model_key=self.model_key, upstream_model=self.model
            )
            body = encrypted.body
            headers.update(encrypted.headers)
            decryptor = ChunkDecryptor(encrypted.client_keys.private)
        return json.dumps(body, separators=(",", ":")).encode("utf-8"), headers, decryptor


def proxy_target(proxy_url: str, model: str, name: str) -> Target:
    return Target(name=name, url=proxy_url + "/v1/chat/completions", model=model)


def direct_target(sim_url: str, api_key: str, name: str, *, model_key: bytes | None) -> Target:
    return Target(
        name=name,
        url=sim_url + "/api/v1/chat/completions",
        model=E2EE_MODEL if model_key is not None else PLAIN_MODEL,
        headers={"authorization": f"Bearer {api_key}"},
        model_key=model_key,
    )


async def enclave_key(client: httpx.AsyncClient, sim_url: str, api_key: str) -> bytes:
    """The simulator's enclave key, read from its attestation (not verified: a benchmark)."""
    response = await client.get(
        sim_url + "/api/v1/tee/attestation",
        params={"model": E2EE_MODEL, "nonce": "00" * 32},
        headers={"authorization": f"Bearer {api_key}"},
    )
    response.raise_for_status()
    return parse_public_key(str(response.json()["signing_public_key"]))


@dataclass(frozen=True, slots=True)
class StreamResult:
    """Client-side timings and counts of one streamed answer (seconds from request start)."""

    ttft_s: float | None
    ttlt_s: float | None
    events: int
    content_events: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def new_client(connections: int) -> httpx.AsyncClient:
    """An httpx client that never queues requests behind its own pool limit."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=30.0, read=120.0, write=30.0, pool=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=connections),
    )


async def stream_once(
    client: httpx.AsyncClient, target: Target, prompt: Prompt, *, expected: str | None = None
) -> StreamResult:
    """Send one streamed request and time it; never raises for a failed stream."""
    body, headers, decryptor = target.build(prompt)
    clock = time.perf_counter
    ttft: float | None = None
    ttlt: float | None = None
    events = content_events = 0
    parts: list[str] = []
    start = clock()
    try:
        async with client.stream("POST", target.url, content=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                return StreamResult(None, None, 0, 0, f"http_{response.status_code}")
            buffer = bytearray()
            async for data in response.aiter_raw():
                now = clock()
                buffer += data
                cut = 0
                while True:
                    end = buffer.find(b"\n\n", cut)
                    if end < 0:
                        break
                    event = bytes(buffer[cut:end])
                    cut = end + 2
                    if event == b"data: [DONE]":
                        ttlt = now
                        continue
                    events += 1
                    try:
                        payload = json.loads(event.removeprefix(b"data: "))
                    except ValueError:
                        return StreamResult(None, None, events, content_events, "bad_event")
                    if not isinstance(payload, dict) or "error" in payload:
                        return StreamResult(None, None, events, content_events, "in_band_error")
                    if decryptor is not None:
                        try:
                            payload = decryptor.rebuild(payload)
                        except ProxyError as exc:
                            return StreamResult(None, None, events, content_events, exc.log_code)
                    for choice in payload.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            content_events += 1
                            if ttft is None:
                                ttft = now
                            if expected is not None:
                                parts.append(text)
                del buffer[:cut]
    except httpx.HTTPError as exc:
        return StreamResult(None, None, events, content_events, type(exc).__name__)
    if ttlt is None or ttft is None:
        return StreamResult(None, None, events, content_events, "no_done")
    if expected is not None and "".join(parts) != expected:
        return StreamResult(None, None, events, content_events, "content_mismatch")
    return StreamResult(ttft - start, ttlt - start, events, content_events, None)
