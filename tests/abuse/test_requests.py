"""Bad requests the table in test_e2e_bad_requests.py does not cover, each followed by a good one.

Covered here: NUL bytes and lone surrogates (raw and escaped, in every place a client can put
text), unknown roles, non-string content of every JSON type, deep nesting inside content and
inside pass-through fields, and invalid ``model`` / ``n`` / ``stream`` / ``stream_options``
types. Each bad request must get a precise 4xx OpenAI envelope, reach nothing upstream, and
leave the proxy able to serve the very next good request (checked every time, with the canary,
whose plaintext the shared guard in conftest.py looks for upstream and in the logs).

Most cases run against a proxy in front of :class:`tests.support.fake_upstream.FakeUpstream` (its
answers are fixed tokens, and it records every request for the canary check); the cases where
text must survive the round trip run against the simulator, which decrypts the prompt and echoes
it. Bodies are built as raw bytes where JSON escapes matter (``\\ud800`` and ``\\u0000`` can
only come from the client's JSON text).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from proxy.core.crypto import looks_like_ciphertext
from proxy.http.loopback import ThreadedServer
from proxy.simulator import SimulatorState
from tests.conftest import CANARY, E2EE_MODEL
from tests.support.fake_upstream import FakeUpstream, ProxyHarness, proxy_harness, token_text

GOOD_PROMPT = f"{CANARY} still there?"


@dataclass(frozen=True)
class Harness:
    proxy: ProxyHarness
    # "connection: close" keeps each request on a fresh connection.
    client: httpx.Client

    @property
    def fake(self) -> FakeUpstream:
        return self.proxy.fake

    def post(self, content: bytes, server: ThreadedServer | None = None) -> httpx.Response:
        response = self.client.post(
            (server or self.proxy.server).url + "/v1/chat/completions",
            content=content,
            headers={"content-type": "application/json"},
        )
        self.proxy.settle()  # a crash is logged before any assertion (see ProxyHarness.settle)
        return response


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    with (
        proxy_harness(upstream={"models_cache_ttl_s": 600}) as proxy,
        httpx.Client(headers={"connection": "close"}, timeout=30) as client,
    ):
        yield Harness(proxy, client)


@pytest.fixture(autouse=True)
def fake_canary_guard(harness: Harness, log_lines: Callable[[], list[str]]) -> Iterator[None]:
    harness.fake.reset()
    yield
    harness.proxy.assert_clean("\n".join(log_lines()))


def _body(**fields: Any) -> bytes:
    body: dict[str, Any] = {"model": E2EE_MODEL, "messages": [{"role": "user", "content": "x"}]}
    body.update(fields)
    return json.dumps(body).encode()


def _with_raw(field_json: bytes) -> bytes:
    """A valid body plus one extra top-level member given as raw JSON text."""
    return _body()[:-1] + b", " + field_json + b"}"


def _message(**message: Any) -> bytes:
    return _body(messages=[message])


def _content_raw(content_json: bytes) -> bytes:
    return (
        b'{"model": "'
        + E2EE_MODEL.encode()
        + b'", "messages": [{"role": "user", "content": '
        + (content_json + b"}]}")
    )


def _good_request(harness: Harness, server: ThreadedServer | None = None) -> str:
    response = harness.post(
        _body(messages=[{"role": "user", "content": GOOD_PROMPT}], stream=False), server
    )
    assert response.status_code == 200, response.text
    answer: str = response.json()["choices"][0]["message"]["content"]
    return answer


def _assert_good_request_served(harness: Harness) -> None:
    assert _good_request(harness) == "".join(token_text(i) for i in range(3))


BAD: dict[str, tuple[bytes, int, str | None, str | None]] = {
    # name: (body, status, param, code)
    "nul_byte_outside_strings": (b'{"model": "x",\x00 "messages": []}', 400, None, "invalid_json"),
    "invalid_utf8_bytes": (b'{"model": "\xff\xfe", "messages": []}', 400, None, "invalid_json"),
    "lone_high_surrogate_in_content": (
        _content_raw(b'"before \\ud800 after"'),
        400,
        "messages[0].content",
        None,
    ),
    "lone_low_surrogate_in_content": (
        _content_raw(b'"\\udfff"'),
        400,
        "messages[0].content",
        None,
    ),
    "lone_surrogate_in_content_part": (
        _content_raw(b'[{"type": "text", "text": "\\ud83d"}]'),
        400,
        "messages[0].content",
        None,
    ),
    "lone_surrogate_in_second_message": (
        b'{"model": "' + E2EE_MODEL.encode() + b'", "messages": [{"role": "system", "content": '
        b'"ok"}, {"role": "user", "content": "\\ud800"}]}',
        400,
        "messages[1].content",
        None,
    ),
    "lone_surrogate_role": (
        b'{"model": "m", "messages": [{"role": "\\ud800", "content": "x"}]}',
        400,
        "messages[0].role",
        None,
    ),
    "nul_in_role": (_message(role="user\x00", content="x"), 400, "messages[0].role", None),
    "empty_role": (_message(role="", content="x"), 400, "messages[0].role", None),
    "upper_case_role": (_message(role="USER", content="x"), 400, "messages[0].role", None),
    "role_with_space": (_message(role="user ", content="x"), 400, "messages[0].role", None),
    "missing_role": (_message(content="x"), 400, "messages[0].role", None),
    "numeric_role": (_message(role=1, content="x"), 400, "messages[0].role", None),
    "null_role": (_message(role=None, content="x"), 400, "messages[0].role", None),
    "list_role": (_message(role=["user"], content="x"), 400, "messages[0].role", None),
    "object_role": (_message(role={"name": "user"}, content="x"), 400, "messages[0].role", None),
    "float_content": (_message(role="user", content=1.5), 400, "messages[0].content", None),
    "negative_content": (_message(role="user", content=-3), 400, "messages[0].content", None),
    "zero_content": (_message(role="user", content=0), 400, "messages[0].content", None),
    "false_content": (_message(role="user", content=False), 400, "messages[0].content", None),
    "empty_object_content": (_message(role="user", content={}), 400, "messages[0].content", None),
    "part_object_not_in_list": (
        _message(role="user", content={"type": "text", "text": "x"}),
        400,
        "messages[0].content",
        None,
    ),
    "huge_integer_content": (_content_raw(b"1" + b"0" * 5000), 400, None, "invalid_json"),
    "deeply_nested_content": (_content_raw(b"[" * 50_000 + b"]" * 50_000), 400, None, None),
    "deeply_nested_object_in_content": (
        _content_raw(b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
        400,
        None,
        None,
    ),
    "deeply_nested_extra_field": (
        _with_raw(b'"metadata": ' + b"[" * 50_000 + b"]" * 50_000),
        400,
        None,
        None,
    ),
    "null_model": (_body(model=None), 400, "model", None),
    "true_model": (_body(model=True), 400, "model", None),
    "float_model": (_body(model=1.5), 400, "model", None),
    "list_model": (_body(model=[E2EE_MODEL]), 400, "model", None),
    "object_model": (_body(model={"id": E2EE_MODEL}), 400, "model", None),
    "empty_model": (_body(model=""), 400, "model", None),
    "blank_model": (_body(model="   "), 400, "model", None),
    "nul_in_model": (_body(model=E2EE_MODEL + "\x00"), 404, "model", "model_not_found"),
    "negative_n": (_body(n=-1), 400, "n", None),
    "float_n": (_body(n=1.0), 400, "n", None),
    "true_n": (_body(n=True), 400, "n", None),
    "too_large_n": (_body(n=129), 400, "n", None),
    "enormous_n": (_body(n=10**30), 400, "n", None),
    "list_n": (_body(n=[1]), 400, "n", None),
    "integer_stream": (_body(stream=1), 400, "stream", None),
    "zero_stream": (_body(stream=0), 400, "stream", None),
    "string_stream": (_body(stream="true"), 400, "stream", None),
    "object_stream": (_body(stream={}), 400, "stream", None),
    "string_stream_options": (_body(stream_options="usage"), 400, "stream_options", None),
    "string_include_usage": (
        _body(stream=True, stream_options={"include_usage": "yes"}),
        400,
        "stream_options.include_usage",
        None,
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_request_then_a_good_one(harness: Harness, name: str) -> None:
    body, status, param, code = BAD[name]
    response = harness.post(body)
    assert response.status_code == status, response.text
    envelope = response.json()
    assert set(envelope) == {"error"}
    error = envelope["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert harness.fake.chat_requests == 0, "a bad request reached the upstream"
    _assert_good_request_served(harness)


@pytest.mark.parametrize(
    ("content_json", "expected"),
    [
        (b'"a\\u0000b"', "a\x00b"),
        (b'"\\ud83e\\udd8a paired surrogates are fine"', "\U0001f98a paired surrogates are fine"),
        (b'[{"type": "text", "text": "nul \\u0000 in a part"}]', "nul \x00 in a part"),
    ],
)
def test_nul_and_paired_surrogates_are_text(
    harness: Harness,
    proxy: ThreadedServer,
    sim_state: SimulatorState,
    content_json: bytes,
    expected: str,
) -> None:
    # Legitimate text: encrypted like any other, and the simulator's echo comes back intact.
    response = harness.post(_content_raw(content_json), proxy)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith(f"You said: {expected}")
    sent = next(r.json() for r in sim_state.requests if r.path.endswith("/chat/completions"))
    assert looks_like_ciphertext(sent["messages"][0]["content"])
    assert _good_request(harness, proxy).startswith(f"You said: {GOOD_PROMPT}")


def test_moderately_nested_content_parts_pass(harness: Harness) -> None:
    nested = [
        {"type": "text", "text": f"{CANARY} deep"},
        {"type": "image_url", "image_url": {"url": "data:,", "n": [[[[[[1]]]]]]}},
    ]
    response = harness.post(_body(messages=[{"role": "user", "content": nested}]))
    assert response.status_code == 200, response.text
    _assert_good_request_served(harness)


def test_unknown_content_part_types_are_refused(harness: Harness) -> None:
    # Changed on purpose: an unknown part type used to be encrypted and sent; what a backend
    # does with it (fetch a URL, read a file id) is unknown, so it is refused now.
    nested = [{"type": "text", "text": f"{CANARY} deep"}, {"type": "x", "n": [[[[[[1]]]]]]}]
    response = harness.post(_body(messages=[{"role": "user", "content": nested}]))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages[0].content[1]"
    assert harness.fake.chat_requests == 0
    _assert_good_request_served(harness)


SURROGATE_ELSEWHERE = {
    "model": b'{"model": "e2ee-\\ud800", "messages": [{"role": "user", "content": "x"}]}',
    "member_name": _with_raw(b'"\\ud800": 1'),
    "message_field": b'{"model": "' + E2EE_MODEL.encode() + b'", "messages": [{"role": "user", '
    b'"content": "x", "tool_call_id": "\\ud800"}]}',
}


@pytest.mark.parametrize("where", list(SURROGATE_ELSEWHERE))
def test_lone_surrogate_outside_content_is_a_400(harness: Harness, where: str) -> None:
    response = harness.post(SURROGATE_ELSEWHERE[where])
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert harness.fake.chat_requests == 0


SURROGATE_KEPT_LOCAL = {
    # Changed on purpose: these fields never leave the proxy any more (metadata is local only,
    # stop is enforced on the decrypted answer), so their text cannot break the upstream JSON.
    "metadata": _with_raw(b'"metadata": {"note": "\\ud800"}'),
    "stop": _with_raw(b'"stop": ["\\udfff"]'),
}


@pytest.mark.parametrize("where", list(SURROGATE_KEPT_LOCAL))
def test_lone_surrogate_in_a_local_field_is_harmless(harness: Harness, where: str) -> None:
    response = harness.post(SURROGATE_KEPT_LOCAL[where])
    assert response.status_code == 200, response.text
    (sent,) = [r for r in harness.fake.requests if r.path.endswith("/chat/completions")]
    assert where not in json.loads(sent.body)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_numbers_are_refused(harness: Harness, constant: bytes) -> None:
    response = harness.post(_with_raw(b'"temperature": ' + constant))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"
    assert harness.fake.chat_requests == 0
