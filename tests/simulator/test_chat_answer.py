"""The simulated chat endpoint's logic without HTTP (proxy/simulator/chat.py): every 400 and 404
in the documented order with its exact body, what the answer carries (model, id, created, choices,
token caps, stream or one object) and that an E2EE answer is sealed to the client's key, with NEAR
or Phala legacy semantics. Real crypto on both sides."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from proxy.core.crypto import generate_keypair, open_text, seal_text
from proxy.simulator.answer import ANSWER_SUFFIX
from proxy.simulator.catalog import find_model
from proxy.simulator.chat import (
    E2EE_HEADERS,
    MAX_N,
    ChatAnswer,
    PolicyViolationError,
    answer_chat,
    parse_body,
)
from proxy.simulator.chunks import Marker
from proxy.simulator.faults import Faults
from proxy.simulator.http_errors import SimulatedHTTPError
from proxy.simulator.tools import NO_CALL_TEXT

NEAR_MODEL = "e2ee-simulated-near"
REASONING_MODEL = "e2ee-simulated-reasoning"
PLAIN_MODEL = "simulated-plain"
ENCLAVE = generate_keypair()
CLIENT = generate_keypair()
CREATED = 1_767_225_600
CLIENT_KEY = "X-Venice-TEE-Client-Pub-Key"
MODEL_KEY = "X-Venice-TEE-Model-Pub-Key"
ALGO = "X-Venice-TEE-Signing-Algo"
GATEWAY = "invalid_request_error"


def e2ee_headers(**changes: str | None) -> httpx.Headers:
    """The three E2EE headers (case-insensitive, like the app's); None leaves one out."""
    values: dict[str, str | None] = {
        CLIENT_KEY: CLIENT.public_hex,
        MODEL_KEY: ENCLAVE.public_hex,
        ALGO: "ecdsa",
    }
    values.update(changes)
    return httpx.Headers({k: v for k, v in values.items() if v is not None})


def plain_body(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": NEAR_MODEL, "messages": [{"role": "user", "content": text}], **extra}


def sealed_body(text: str = "hi", **extra: Any) -> dict[str, Any]:
    content = seal_text(ENCLAVE.public, text)
    return {
        "model": NEAR_MODEL,
        "messages": [{"role": "user", "content": content}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


def answer(
    body: dict[str, Any] | bytes,
    headers: httpx.Headers | None = None,
    faults: Faults | None = None,
    **options: Any,
) -> ChatAnswer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return answer_chat(
        headers if headers is not None else httpx.Headers(),
        raw,
        enclave=ENCLAVE,
        faults=faults or Faults(),
        created=CREATED,
        **options,
    )


def refusal(
    body: dict[str, Any] | bytes,
    headers: httpx.Headers | None = None,
    faults: Faults | None = None,
    **options: Any,
) -> SimulatedHTTPError:
    with pytest.raises(SimulatedHTTPError) as caught:
        answer(body, headers, faults, **options)
    return caught.value


def invalid(detail: str) -> dict[str, Any]:
    return {"error": f"Invalid request parameters: {detail}", "code": "INVALID_REQUEST"}


def chunks(result: ChatAnswer) -> list[dict[str, Any]]:
    assert result.items is not None
    frames = [item for item in result.items if not isinstance(item, Marker)]
    return [
        json.loads(frame.removeprefix(b"data: "))
        for frame in frames
        if frame != b"data: [DONE]\n\n"
    ]


def contents(result: ChatAnswer, client_private: bytes | None = None) -> dict[int, list[str]]:
    """Per choice, the non-empty ``content`` of each delta (opened when a key is given)."""
    out: dict[int, list[str]] = {}
    for chunk in chunks(result):
        for choice in chunk["choices"]:
            value = choice["delta"].get("content")
            if value:
                text = open_text(client_private, value) if client_private else value
                out.setdefault(choice["index"], []).append(text)
    return out


# -- the body ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"\xff\xfe", "body is not valid JSON"),
        (b"[1]", "body must be a JSON object"),
        (b"null", "body must be a JSON object"),
    ],
)
def test_a_body_that_is_not_a_json_object(raw: bytes, detail: str) -> None:
    with pytest.raises(SimulatedHTTPError) as caught:
        parse_body(raw)
    assert caught.value.status_code == 400
    assert caught.value.body == invalid(detail)
    assert parse_body(b'{"a": 1}') == {"a": 1}


@pytest.mark.parametrize("model", [None, 5, ""])
def test_the_model_is_required(model: Any) -> None:
    body = plain_body()
    if model is None:
        del body["model"]
    else:
        body["model"] = model
    error = refusal(body)
    assert error.status_code == 400
    assert error.body == invalid("model is required")


def test_an_unknown_model_is_a_404_that_names_it() -> None:
    error = refusal(plain_body() | {"model": "gpt-9"})
    assert error.status_code == 404
    assert error.body == {"error": "Specified model not found: gpt-9", "code": "MODEL_NOT_FOUND"}


@pytest.mark.parametrize("messages", [None, [], "hi", {"role": "user"}])
def test_messages_must_be_a_non_empty_list(messages: Any) -> None:
    body = plain_body()
    if messages is None:
        del body["messages"]
    else:
        body["messages"] = messages
    error = refusal(body)
    assert error.status_code == 400
    assert error.body == invalid("messages must be a non-empty list")


@pytest.mark.parametrize("name", ["n", "max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -1, True, False, 1.5, "2", [1]])
def test_counts_must_be_positive_integers(name: str, value: Any) -> None:
    error = refusal(plain_body(**{name: value}))
    assert error.status_code == 400
    assert error.body == invalid(f"{name} must be a positive integer")


def test_n_is_one_to_eight() -> None:
    assert MAX_N == 8
    error = refusal(plain_body(n=9))
    assert error.body == invalid("n must be at most 8")
    eight = answer(plain_body(n=8))
    assert eight.completion is not None
    assert [c["index"] for c in eight.completion["choices"]] == list(range(8))
    assert (
        eight.completion["choices"][7]["message"]["content"] == f"[7] You said: hi{ANSWER_SUFFIX}"
    )
    for body in (plain_body(), plain_body(n=None), plain_body(n=1)):
        single = answer(body).completion
        assert single is not None
        assert len(single["choices"]) == 1
        assert single["choices"][0]["message"]["content"] == f"You said: hi{ANSWER_SUFFIX}"


def _content_of(**caps: Any) -> tuple[str, str]:
    completion = answer(plain_body("one two three four five six", **caps)).completion
    assert completion is not None
    choice = completion["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert _content_of() == (f"You said: one two three four five six{ANSWER_SUFFIX}", "stop")
    assert _content_of(max_tokens=3) == ("You said: one", "length")
    assert _content_of(max_completion_tokens=2) == ("You said:", "length")
    assert _content_of(max_completion_tokens=2, max_tokens=4) == ("You said:", "length")
    assert _content_of(max_completion_tokens=4, max_tokens=2) == ("You said: one two", "length")
    assert _content_of(max_completion_tokens=None, max_tokens=1) == ("You", "length")


# -- the plaintext answer ----------------------------------------------------------------------


def test_plaintext_without_stream_is_one_completion_object() -> None:
    result = answer(plain_body())
    assert result.model is find_model(NEAR_MODEL)
    assert result.enclave is ENCLAVE
    assert result.e2ee is False
    assert result.items is None
    assert result.meta.model == NEAR_MODEL
    assert result.meta.created == CREATED
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", result.meta.id)
    assert answer(plain_body()).meta.id != result.meta.id
    assert result.completion is not None
    assert result.completion["id"] == result.meta.id
    assert result.completion["created"] == CREATED
    assert result.completion["model"] == NEAR_MODEL
    assert result.completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": f"You said: hi{ANSWER_SUFFIX}",
    }


@pytest.mark.parametrize("stream", [False, 1, "true", None])
def test_only_stream_true_streams(stream: Any) -> None:
    result = answer(plain_body(stream=stream))
    assert result.items is None
    assert result.completion is not None


def test_plaintext_stream_is_not_sealed() -> None:
    result = answer(plain_body(stream=True, n=2))
    assert result.e2ee is False
    assert result.completion is None
    assert result.meta.created == CREATED
    texts = contents(result)
    assert "".join(texts[0]) == f"[0] You said: hi{ANSWER_SUFFIX}"
    assert "".join(texts[1]) == f"[1] You said: hi{ANSWER_SUFFIX}"
    assert all(c["id"] == result.meta.id and c["model"] == NEAR_MODEL for c in chunks(result))


def test_a_reasoning_model_thinks_first() -> None:
    completion = answer(plain_body() | {"model": REASONING_MODEL}).completion
    assert completion is not None
    assert completion["choices"][0]["message"]["reasoning_content"] == "Considering 1 messages."
    plain = answer(plain_body()).completion
    assert plain is not None
    assert "reasoning_content" not in plain["choices"][0]["message"]


def test_a_plaintext_model_is_served_without_headers() -> None:
    result = answer(plain_body() | {"model": PLAIN_MODEL})
    assert result.model is find_model(PLAIN_MODEL)
    assert result.e2ee is False


# -- E2EE --------------------------------------------------------------------------------------


def test_e2ee_decrypts_the_prompt_and_seals_the_answer_to_the_client() -> None:
    result = answer(sealed_body("secret words"), e2ee_headers())
    assert result.e2ee is True
    assert result.completion is None
    blobs = contents(result)[0]
    assert not any("secret" in blob for blob in blobs)
    opened = "".join(open_text(CLIENT.private, blob) for blob in blobs)
    assert opened == f"You said: secret words{ANSWER_SUFFIX}"


def test_e2ee_header_names_and_algorithm_are_case_insensitive() -> None:
    headers = httpx.Headers(
        {
            CLIENT_KEY.lower(): CLIENT.public_hex,
            MODEL_KEY.upper(): "04" + ENCLAVE.public_hex[2:].upper(),
            ALGO.lower(): " ECDSA ",
        }
    )
    assert answer(sealed_body(), headers).e2ee is True


def test_all_three_headers_empty_is_plaintext() -> None:
    headers = e2ee_headers(**dict.fromkeys(E2EE_HEADERS, ""))
    result = answer(plain_body(stream=True), headers)
    assert result.e2ee is False
    assert "".join(contents(result)[0]) == f"You said: hi{ANSWER_SUFFIX}"


@pytest.mark.parametrize(
    ("changes", "missing"),
    [
        ({MODEL_KEY: None}, MODEL_KEY),
        ({CLIENT_KEY: ""}, CLIENT_KEY),
        ({ALGO: None}, ALGO),
        ({CLIENT_KEY: None, ALGO: None}, f"{CLIENT_KEY}, {ALGO}"),
        ({MODEL_KEY: None, CLIENT_KEY: None}, f"{CLIENT_KEY}, {MODEL_KEY}"),
    ],
)
def test_some_headers_name_the_missing_ones(changes: dict[str, str | None], missing: str) -> None:
    error = refusal(sealed_body(), e2ee_headers(**changes))
    assert error.status_code == 400
    assert error.body == {
        "error": {"message": f"Invalid E2EE headers: missing {missing}", "type": GATEWAY}
    }


def gateway(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": GATEWAY}}


def near(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "bad_request", "param": None, "code": None}}


OTHER = generate_keypair()


@pytest.mark.parametrize(
    ("model", "changes", "extra", "body"),
    [
        # Each check in its documented order: a request that breaks two gets the first one's.
        (PLAIN_MODEL, {ALGO: "ed25519"}, {}, gateway("Model does not support E2EE")),
        (NEAR_MODEL, {ALGO: "ed25519", CLIENT_KEY: "04" + "00" * 64}, {}, None),
        (NEAR_MODEL, {CLIENT_KEY: "04" + "00" * 64}, {}, gateway("Invalid public key")),
        (NEAR_MODEL, {MODEL_KEY: "zz"}, {}, gateway("Invalid public key")),
        (NEAR_MODEL, {MODEL_KEY: OTHER.public_hex}, {"stream": False}, near("Decryption failed")),
        (NEAR_MODEL, {}, {"stream": False, "user": "u"}, gateway("E2EE requires streaming")),
        (NEAR_MODEL, {}, {"stream": None}, gateway("E2EE requires streaming")),
    ],
)
def test_e2ee_checks_in_order(
    model: str, changes: dict[str, str], extra: dict[str, Any], body: dict[str, Any] | None
) -> None:
    error = refusal(
        sealed_body(**extra) | {"model": model}, e2ee_headers(**changes), proxy_policy=True
    )
    assert error.status_code == 400
    assert error.body == (body or gateway("Unsupported signing algorithm"))


def test_a_stale_model_key_under_phala_is_phalas_mismatch() -> None:
    error = refusal(
        sealed_body(), e2ee_headers(**{MODEL_KEY: OTHER.public_hex}), Faults(phala_legacy=True)
    )
    assert error.status_code == 400
    assert error.body == {
        "error": {
            "message": "X-Model-Pub-Key does not match this instance",
            "type": "e2ee_model_key_mismatch",
            "param": None,
            "code": None,
        }
    }


def test_the_policy_is_checked_only_when_asked_and_before_decryption() -> None:
    plaintext = sealed_body(x_text="words")
    plaintext["messages"] = [{"role": "user", "content": "plain"}]
    with pytest.raises(PolicyViolationError) as caught:
        answer(plaintext, e2ee_headers(), proxy_policy=True)
    assert caught.value.paths == ["x_text", "messages[0].content"]
    assert caught.value.status_code == 400
    assert caught.value.body == near("proxy policy violation: x_text, messages[0].content")
    # Without the policy the same body reaches decryption, which refuses the plaintext.
    assert refusal(plaintext, e2ee_headers()).body == near("Encrypted field is not valid hex")
    allowed = answer(
        sealed_body(x_text="w"), e2ee_headers(), proxy_policy=True, policy_allows={"x_text"}
    )
    assert allowed.e2ee is True
    with pytest.raises(PolicyViolationError):
        answer(sealed_body(x_text="w"), e2ee_headers(), proxy_policy=True)
    # The plaintext path is never checked.
    assert answer(plain_body(user="u", stream=True), proxy_policy=True).e2ee is False


def test_a_policy_violation_names_twenty_paths_and_keeps_all() -> None:
    paths = [f"x{i}" for i in range(25)]
    error = PolicyViolationError(paths)
    paths.append("later")
    assert error.paths == [f"x{i}" for i in range(25)]
    assert str(error) == "proxy policy violation: " + ", ".join(f"x{i}" for i in range(20))
    assert error.body == near(str(error))
    assert error.headers == {}


def _senders(blobs: list[str]) -> set[str]:
    """The sender (ephemeral) public keys of sealed blobs."""
    return {blob[:130] for blob in blobs}


def test_near_and_phala_semantics_follow_the_fault() -> None:
    empty_system = sealed_body()
    empty_system["messages"].insert(0, {"role": "system", "content": ""})
    near_answer = answer(empty_system, e2ee_headers())
    # NEAR: a fresh ephemeral key for every sealed field.
    assert len(_senders(contents(near_answer)[0])) > 1
    # Phala legacy: "" is not hex, and one ephemeral key seals the whole response.
    phala = Faults(phala_legacy=True)
    error = refusal(empty_system, e2ee_headers(), faults=phala)
    assert error.body["error"]["message"] == "Encrypted message content must be hex-encoded"
    phala_answer = answer(sealed_body("x y z"), e2ee_headers(), phala)
    blobs = contents(phala_answer)[0]
    assert len(_senders(blobs)) == 1
    opened = "".join(open_text(CLIENT.private, b) for b in blobs)
    assert opened == f"You said: x y z{ANSWER_SUFFIX}"


def test_the_faults_reach_the_stream() -> None:
    result = answer(sealed_body("a b c d"), e2ee_headers(), Faults(cut_stream_after=1))
    assert result.items is not None
    assert Marker.CUT in list(result.items)


TOOLS_SYSTEM = (
    "<tools>\n"
    + json.dumps({"type": "function", "function": {"name": "lookup", "parameters": {}}})
    + "\n</tools>\nYou MUST call the function lookup in your next reply."
)


def test_tool_prompts_are_answered_by_the_tool_model_with_its_fault() -> None:
    messages = [
        {"role": "system", "content": seal_text(ENCLAVE.public, TOOLS_SYSTEM)},
        {"role": "user", "content": seal_text(ENCLAVE.public, "go")},
    ]
    body = sealed_body() | {"messages": messages}
    called = answer(body, e2ee_headers())
    text = "".join(open_text(CLIENT.private, b) for b in contents(called)[0])
    assert text.startswith("<tool_call>")
    assert '"name": "lookup"' in text
    asked: list[int] = []

    def fault() -> str | None:
        asked.append(1)
        return "no_call"

    spoiled = answer(body, e2ee_headers(), tool_fault=fault)
    assert "".join(open_text(CLIENT.private, b) for b in contents(spoiled)[0]) == NO_CALL_TEXT
    assert asked == [1]
