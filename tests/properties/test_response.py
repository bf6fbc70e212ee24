"""Property: whatever JSON the upstream sends, the client gets only decrypted text or an error.

Chunks are drawn chunk-shaped (keys from the response tables and unknown ones, at the top
level, in choices and in deltas/messages) with values that mix sealed blobs of SAFE text
(lower-case), INJECTED plaintext (upper-case), numbers, booleans, nulls, lists and objects.
Through :class:`~proxy.core.response.ChunkDecryptor` alone, and through the whole relay
(:func:`~proxy.service.relay.decrypted_batches` + :func:`~proxy.service.relay.sse_to_client`)
down to the client's bytes, every string the client can read is either decrypted SAFE text in
``content`` / ``reasoning_content`` / ``reasoning``, or one of the relayed metadata values
(``id``, ``model``, ``system_fingerprint`` as short tokens, ``object``, ``role: assistant``, a
known ``finish_reason``); otherwise the answer is an error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.core.crypto import keypair_from_private, seal_text
from proxy.core.errors import ProxyError
from proxy.core.fields import (
    FINISH_REASONS,
    RESPONSE_CHOICE,
    RESPONSE_CHUNK,
    RESPONSE_MESSAGE,
    RESPONSE_TEXT_FIELDS,
    USAGE_KEYS,
)
from proxy.core.response import ChunkDecryptor
from proxy.service.relay import StreamStats, decrypted_batches, sse_to_client

CLIENT = keypair_from_private(bytes.fromhex("6b" * 32))
SAFE = st.text(alphabet="abcdefghij ", min_size=1, max_size=8)
INJECTED = st.text(alphabet="GHIJKLMNOPQRSTUVWXYZ !", min_size=1, max_size=8)
METADATA = frozenset({"id", "model", "system_fingerprint", "object"})


@st.composite
def sealed(draw: st.DrawFn) -> str:
    return seal_text(CLIENT.public, draw(SAFE))


LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=10**6),
    st.just(""),
    INJECTED,
    sealed(),
    st.sampled_from([*FINISH_REASONS, "assistant", "text", "tool_calls"]),
)
VALUE = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["type", "text", "x", "token"]) | INJECTED, inner, max_size=3
        ),
    ),
    max_leaves=5,
)


def keyed(keys: list[str], value: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys) | INJECTED, value, max_size=5)


def with_extras(
    base: st.SearchStrategy[dict[str, Any]], keys: list[str], value: st.SearchStrategy[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """A mostly well-formed object, with a few keys (known or not) of arbitrary value."""
    extras = st.dictionaries(st.sampled_from(keys) | INJECTED, value, max_size=2)
    return st.builds(lambda b, e: {**b, **e}, base, extras)


PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": sealed() | INJECTED | st.just("")}),
    VALUE,
)
MESSAGE = with_extras(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.just("assistant") | INJECTED,
            "content": sealed() | st.lists(PART, max_size=2) | st.just("") | INJECTED,
            "reasoning_content": sealed() | st.none(),
        },
    ),
    [*RESPONSE_MESSAGE, "note"],
    VALUE,
)
CHOICE = with_extras(
    st.fixed_dictionaries(
        {"index": st.integers(min_value=0, max_value=2)},
        optional={
            "delta": MESSAGE,
            "finish_reason": st.none() | st.sampled_from([*FINISH_REASONS, "tool_calls"]),
        },
    ),
    [*RESPONSE_CHOICE, "note"],
    VALUE | MESSAGE,
)
CHUNK = with_extras(
    st.fixed_dictionaries(
        {"id": st.just("chatcmpl-1") | INJECTED, "choices": st.lists(CHOICE, max_size=2)},
        optional={"usage": st.dictionaries(st.sampled_from(["prompt_tokens", "x"]), VALUE)},
    ),
    [*RESPONSE_CHUNK, "note"],
    VALUE | st.lists(CHOICE, max_size=2),
)


def _readable(value: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    """Every (path, string) the client could read in ``value``, keys included."""
    if isinstance(value, str):
        return [(path, value)]
    found: list[tuple[tuple[str, ...], str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append(((*path, "<key>"), key))
            found += _readable(item, (*path, key))
    elif isinstance(value, list):
        for item in value:
            found += _readable(item, (*path, "[]"))
    return found


def assert_only_decrypted_text(chunk: dict[str, Any]) -> None:
    known_keys = (
        set(RESPONSE_CHUNK)
        | set(RESPONSE_CHOICE)
        | set(RESPONSE_MESSAGE)
        | set(USAGE_KEYS)
        | {detail for details in USAGE_KEYS.values() for detail in details}
    )
    for path, text in _readable(chunk, ()):
        last = path[-1] if path else ""
        if last == "<key>":
            assert text in known_keys, f"an upstream-chosen key reached the client: {path}"
        elif last in RESPONSE_TEXT_FIELDS:
            assert set(text) <= set("abcdefghij "), f"undecrypted text at {path}"
        elif last == "role":
            assert text == "assistant"
        elif last == "finish_reason":
            assert text in FINISH_REASONS
        else:
            assert last in METADATA, f"a string at {path} reached the client"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CHUNK)
def test_a_rebuilt_chunk_holds_only_decrypted_text(chunk: dict[str, Any]) -> None:
    try:
        out = ChunkDecryptor(CLIENT.private).rebuild(chunk)
    except ProxyError as exc:
        failed: ProxyError | None = exc
    else:
        failed = None
    if failed is not None:
        assert failed.http_status == 502
        return
    assert_only_decrypted_text(out)
    assert json.loads(json.dumps(out)) == out


async def _client_bytes(events: list[dict[str, Any]]) -> bytes:
    async def upstream() -> AsyncIterator[bytes]:
        for event in events:
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    stats = StreamStats()
    rest = decrypted_batches(upstream(), ChunkDecryptor(CLIENT.private), stats)
    parts = [part async for part in sse_to_client([], rest, include_usage=True, stats=stats)]
    return b"".join(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CHUNK, min_size=1, max_size=4))
def test_the_client_gets_only_decrypted_text_or_an_error(events: list[dict[str, Any]]) -> None:
    body = asyncio.run(_client_bytes(events))
    assert body.endswith(b"data: [DONE]\n\n")
    sent = [json.loads(block[6:]) for block in body.split(b"\n\n") if block.startswith(b"data: {")]
    for index, chunk in enumerate(sent):
        if "error" in chunk:
            assert index == len(sent) - 1, "nothing follows an error"
            assert set(chunk["error"]) == {"message", "type", "param", "code"}
            continue
        assert_only_decrypted_text(chunk)
