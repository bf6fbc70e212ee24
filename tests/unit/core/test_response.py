"""Response chunks rebuilt from the allowlist, with the real crypto on the enclave side.

Cases carried over from the former ``test_protocol.py`` keep their names. Changed on purpose:
``rebuild`` returns a new chunk (nothing is patched in place); list content comes back as one
joined string; completions-style ``text`` and chunks whose ``choices`` is not a list fail
closed instead of being decrypted or passed through.
"""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

import pytest

from proxy.core import crypto
from proxy.core.errors import (
    DecryptionError,
    PlaintextInStreamError,
    ProxyError,
    SSEProtocolError,
)
from proxy.core.response import ChunkDecryptor, ChunkRebuilder, has_text

CLIENT = crypto.keypair_from_private(bytes.fromhex("33" * 32))
INJECTED = "INJECTED text the proxy never decrypted"


def sealed(text: str, *, ephemeral: bytes | None = None) -> str:
    return crypto.seal(CLIENT.public, text.encode(), ephemeral_private=ephemeral).hex()


def delta_chunk(**delta: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def rebuild(chunk: dict[str, Any]) -> dict[str, Any]:
    return ChunkDecryptor(CLIENT.private).rebuild(chunk)


def first_delta(chunk: dict[str, Any]) -> dict[str, Any]:
    delta: dict[str, Any] = rebuild(chunk)["choices"][0]["delta"]
    return delta


# --- decryption (carried over) ---------------------------------------------------------------


def test_encrypted_delta_decrypts_into_a_new_chunk() -> None:
    chunk = delta_chunk(role="assistant", content=sealed("Hello é"))
    before = copy.deepcopy(chunk)
    result = rebuild(chunk)
    assert result is not chunk
    assert chunk == before  # never patched in place
    assert result == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "Hello é"},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }


def test_reasoning_fields_decrypt() -> None:
    delta = first_delta(delta_chunk(reasoning_content=sealed("think"), reasoning=sealed("also")))
    assert delta == {"reasoning_content": "think", "reasoning": "also"}


def test_non_stream_message_decrypts() -> None:
    chunk: dict[str, Any] = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": sealed("hi")}}]
    }
    assert rebuild(chunk)["choices"][0]["message"]["content"] == "hi"


def test_multiple_choices_decrypt() -> None:
    chunk: dict[str, Any] = {
        "choices": [
            {"index": 0, "delta": {"content": sealed("a")}},
            {"index": 1, "delta": {"content": sealed("b")}},
        ]
    }
    assert [c["delta"]["content"] for c in rebuild(chunk)["choices"]] == ["a", "b"]


def test_list_content_parts_decrypt_and_join() -> None:
    chunk = delta_chunk(
        content=[{"type": "text", "text": sealed("part ")}, {"type": "text", "text": sealed("2")}]
    )
    assert first_delta(chunk)["content"] == "part 2"


def test_uppercase_hex_blob_is_accepted() -> None:
    blob = sealed("up")
    assert first_delta(delta_chunk(content="04" + blob[2:].upper()))["content"] == "up"


@pytest.mark.parametrize("position", [0, 70, 80, 100, -1])
def test_one_byte_tamper_fails(position: int) -> None:
    raw = bytearray(bytes.fromhex(sealed("secret text")))
    raw[position] ^= 0x01
    with pytest.raises((DecryptionError, PlaintextInStreamError)) as info:
        rebuild(delta_chunk(content=raw.hex()))
    if position != 0:
        assert isinstance(info.value, DecryptionError)
    assert "secret" not in str(info.value)


def test_tampered_ciphertext_raises_decryption_error_without_detail() -> None:
    raw = bytearray(bytes.fromhex(sealed("secret text")))
    raw[90] ^= 0x80
    with pytest.raises(DecryptionError) as info:
        rebuild(delta_chunk(content=raw.hex()))
    assert info.value.message == DecryptionError.default_message


def test_wrong_recipient_fails() -> None:
    other = crypto.generate_keypair()
    blob = crypto.seal(other.public, b"not for you").hex()
    with pytest.raises(DecryptionError):
        rebuild(delta_chunk(content=blob))


def test_blob_with_invalid_point_fails() -> None:
    with pytest.raises(DecryptionError):
        rebuild(delta_chunk(content="04" + "01" * 64 + "00" * 28))


def test_invalid_utf8_plaintext_fails() -> None:
    blob = crypto.seal(CLIENT.public, b"\xff\xfe").hex()
    with pytest.raises(DecryptionError):
        rebuild(delta_chunk(content=blob))


@pytest.mark.parametrize(
    "plaintext",
    [
        " ",
        "\n",
        "Hello",
        "04abcdef",  # short hex
        "04" + "ab" * 91 + "a",  # odd length
        "05" + "ab" * 92,  # wrong prefix
        "04" + "zz" * 92,  # not hex
    ],
)
@pytest.mark.parametrize("field", ["content", "reasoning_content", "reasoning"])
def test_plaintext_in_stream_fails_closed(plaintext: str, field: str) -> None:
    with pytest.raises(PlaintextInStreamError):
        rebuild(delta_chunk(**{field: plaintext}))


@pytest.mark.parametrize("value", [5, True, {"text": "x"}])
def test_non_string_field_fails_closed(value: Any) -> None:
    with pytest.raises(PlaintextInStreamError):
        rebuild(delta_chunk(content=value))


def test_plaintext_text_part_fails_closed() -> None:
    with pytest.raises(PlaintextInStreamError):
        rebuild(delta_chunk(content=[{"type": "text", "text": "leak"}]))


def test_empty_and_none_pass_unchanged() -> None:
    delta = first_delta(delta_chunk(role="assistant", content="", reasoning_content=None))
    assert delta == {"role": "assistant", "content": ""}
    assert first_delta(delta_chunk(content=None)) == {"content": None}


def test_usage_chunk_keeps_numbers_and_drops_cost() -> None:
    usage = {
        "id": "c",
        "choices": [],
        "usage": {
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": None,
        },
        "cost": {"usd": 0.0},
    }
    out = rebuild(usage)
    assert out["choices"] == []
    assert out["usage"] == usage["usage"]
    assert "cost" not in out


def test_cached_key_path_with_repeated_ephemeral() -> None:
    ephemeral = bytes.fromhex("44" * 32)
    decryptor = ChunkDecryptor(CLIENT.private)
    words = ["one", " two", " three"]
    out = []
    for word in words:
        chunk = delta_chunk(content=sealed(word, ephemeral=ephemeral))
        out.append(decryptor.rebuild(chunk)["choices"][0]["delta"]["content"])
    assert out == words
    # A tampered blob under a cached key still fails.
    raw = bytearray(bytes.fromhex(sealed("four", ephemeral=ephemeral)))
    raw[-1] ^= 0x01
    with pytest.raises(DecryptionError):
        decryptor.rebuild(delta_chunk(content=raw.hex()))


def test_key_cache_is_bounded_and_stays_correct() -> None:
    decryptor = ChunkDecryptor(CLIENT.private)
    for i in range(40):
        chunk = delta_chunk(content=sealed(f"t{i}"))
        assert decryptor.rebuild(chunk)["choices"][0]["delta"]["content"] == f"t{i}"
    assert len(decryptor._keys) <= 8
    decryptor.clear()
    assert not decryptor._keys


def test_decryptor_repr_hides_key() -> None:
    assert CLIENT.private.hex() not in repr(ChunkDecryptor(CLIENT.private))


def test_malformed_choices_fail_closed() -> None:
    """Shapes that could carry text past the decryptor are refused, not passed through."""
    decryptor = ChunkDecryptor(crypto.generate_keypair().private)
    for chunk in (
        {"choices": ["leaked text"]},
        {"choices": [{"index": 0, "delta": "leaked text"}]},
        {"choices": [{"index": 0, "message": ["leaked"]}]},
        {"choices": [{"index": "0", "delta": {}}]},
        {"choices": [{"index": -1, "delta": {}}]},
    ):
        with pytest.raises(ProxyError):
            decryptor.rebuild(chunk)
    with pytest.raises(PlaintextInStreamError):
        decryptor.rebuild({"choices": [{"index": 0, "text": "completions-style leak"}]})


def test_completions_style_text_fails_closed_even_when_sealed() -> None:
    # Previously decrypted and relayed as ``text``: not a chat field, so not relayed at all.
    with pytest.raises(PlaintextInStreamError):
        rebuild({"choices": [{"index": 0, "text": sealed("hi")}]})


# --- the allowlist: every injection of the issue ---------------------------------------------


INJECTIONS: dict[str, dict[str, Any]] = {
    "choices_as_object": {"choices": {"0": {"delta": {"content": INJECTED}}}},
    "choices_as_string": {"choices": INJECTED},
    "refusal": delta_chunk(refusal=INJECTED),
    "tool_calls": delta_chunk(
        tool_calls=[{"index": 0, "function": {"name": "f", "arguments": INJECTED}}]
    ),
    "function_call": delta_chunk(function_call={"name": "f", "arguments": INJECTED}),
    "audio_transcript": delta_chunk(audio={"id": "a", "transcript": INJECTED}),
    "annotations": delta_chunk(annotations=[{"type": "url_citation", "url": INJECTED}]),
    "logprobs": {
        "choices": [
            {
                "index": 0,
                "delta": {"content": sealed("x")},
                "logprobs": {"content": [{"token": INJECTED, "logprob": -0.1}]},
            }
        ]
    },
    "plain_string_in_content_array": delta_chunk(content=[INJECTED]),
    "plaintext_part_in_content_array": delta_chunk(content=[{"type": "text", "text": INJECTED}]),
    "image_part_in_content_array": delta_chunk(
        content=[{"type": "image_url", "image_url": {"url": INJECTED}}]
    ),
    "unknown_delta_key": delta_chunk(content=sealed("ok"), note=INJECTED),
    "unknown_choice_key": {"choices": [{"index": 0, "delta": {}, "note": INJECTED}]},
    "unknown_top_level_key": {"notice": INJECTED, "choices": []},
    "message_refusal": {"choices": [{"index": 0, "message": {"refusal": INJECTED}}]},
    "usage_text": {"choices": [], "usage": {"prompt_tokens": 1, "note": INJECTED}},
    "finish_reason_text": {"choices": [{"index": 0, "delta": {}, "finish_reason": INJECTED}]},
    "finish_reason_tool_calls": {
        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
    },
    "role_text": delta_chunk(role=INJECTED),
    "prompt_logprobs": {"choices": [], "prompt_logprobs": [{"1": {"decoded_token": INJECTED}}]},
    "web_search_citations": {
        "choices": [],
        "venice_parameters": {"web_search_citations": [{"title": "t", "url": "u"}]},
    },
}


@pytest.mark.parametrize("name", list(INJECTIONS))
def test_text_the_proxy_did_not_decrypt_ends_the_answer(name: str) -> None:
    rebuilders: list[ChunkRebuilder] = [ChunkDecryptor(CLIENT.private)]
    if name != "plaintext_part_in_content_array":  # plaintext is what passthrough expects
        rebuilders.append(ChunkRebuilder())
    for rebuilder in rebuilders:
        with pytest.raises(ProxyError) as info:
            rebuilder.rebuild(copy.deepcopy(INJECTIONS[name]))
        assert INJECTED not in info.value.message
        assert info.value.http_status == 502


def test_harmless_unknown_metadata_is_dropped() -> None:
    chunk = {
        "id": "chatcmpl-1",
        "created": 5,
        "model": "e2ee-glm-5-1",
        "system_fingerprint": "fp_1",
        "service_tier": "default",
        "prompt_token_ids": [1, 2, 3],
        "kv_transfer_params": None,
        "venice_parameters": {"character_slug": "venice", "web_search_citations": []},
        "choices": [
            {
                "index": 0,
                "delta": {
                    "content": sealed("ok"),
                    "tool_calls": [],
                    "refusal": None,
                    "audio": None,
                    "token_count": 3,
                },
                "logprobs": None,
                "stop_reason": "</s>",
                "matched_stop": 151643,
                "token_ids": [7],
                "finish_reason": "stop",
            }
        ],
    }
    assert rebuild(chunk) == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "e2ee-glm-5-1",
        "system_fingerprint": "fp_1",
        "choices": [
            {"index": 0, "delta": {"content": "ok"}, "logprobs": None, "finish_reason": "stop"}
        ],
    }


@pytest.mark.parametrize("value", ["has spaces in it", "x" * 300, 42, None, ""])
def test_metadata_that_is_not_a_short_token_is_dropped(value: Any) -> None:
    out = rebuild({"id": value, "model": value, "system_fingerprint": value, "choices": []})
    assert out["id"] == ""
    assert out["model"] == ""
    assert "system_fingerprint" not in out


def test_usage_keeps_only_openai_token_counts() -> None:
    usage = {
        "prompt_tokens": 1,
        "total_tokens": 1.0,
        "Free text here": 2,
        "ok": True,
        "prompt_tokens_details": {"cached_tokens": 1, "other": 2, "audio_tokens": "x"},
    }
    with_text = rebuild({"choices": [], "usage": {**usage, "prompt_tokens_details": {}}})
    assert with_text["usage"] == {
        "prompt_tokens": 1,
        "total_tokens": 1.0,
        "prompt_tokens_details": {},
    }
    with pytest.raises(PlaintextInStreamError):
        rebuild({"choices": [], "usage": usage})  # "x" is text in usage


def test_passthrough_rebuilder_takes_plaintext_but_keeps_the_allowlist() -> None:
    out = ChunkRebuilder().rebuild(delta_chunk(role="assistant", content="plain words"))
    assert out["choices"][0]["delta"] == {"role": "assistant", "content": "plain words"}


def test_has_text() -> None:
    assert has_text(rebuild(delta_chunk(content=sealed("a"))))
    assert has_text(rebuild(delta_chunk(reasoning=sealed("a"))))
    assert not has_text(rebuild(delta_chunk(role="assistant", content="")))
    assert not has_text(rebuild({"choices": [], "usage": {"total_tokens": 1}}))


# --- what the client reads when the answer ends (pinned by mutation testing) -------------------


def _leak(where: str | None) -> str:
    what = f"'{where}'" if where else "an unexpected field"
    return (
        f"the upstream sent {what} holding text the proxy did not decrypt, for an end-to-end "
        "encrypted request; the response was discarded"
    )


_FINE = {"index": 0, "delta": {"content": ""}}


def _second(choice: Any) -> dict[str, Any]:
    """A chunk whose second choice is ``choice`` (positions in messages count from 0)."""
    return {"id": "c", "choices": [_FINE, choice]}


@pytest.mark.parametrize(
    ("chunk", "error", "message"),
    [
        ({"choices": "leak"}, PlaintextInStreamError, _leak("choices")),
        ({"choices": 5}, SSEProtocolError, "the upstream sent 'choices' that is not an array"),
        ({"choices": [], "metadata": {"k": "leak"}}, PlaintextInStreamError, _leak("metadata")),
        ({"choices": [], "notice": ["leak"]}, PlaintextInStreamError, _leak(None)),
        (
            {"choices": [], "venice_parameters": {"web_search_citations": [{"url": "u"}]}},
            PlaintextInStreamError,
            "the upstream reports a web search for this request: it ran outside the enclave; "
            "the response was discarded",
        ),
        ({"choices": [], "usage": "leak"}, PlaintextInStreamError, _leak("usage")),
        (
            {"choices": [], "usage": 5},
            SSEProtocolError,
            "the upstream sent a 'usage' that is not an object",
        ),
        ({"choices": [], "usage": {"note": "leak"}}, PlaintextInStreamError, _leak("usage")),
        (_second("leak"), PlaintextInStreamError, _leak("choices[1]")),
        (_second(5), SSEProtocolError, "the upstream sent a choice that is not an object"),
        (
            _second({"index": "1"}),
            SSEProtocolError,
            "the upstream sent a choice without a valid index",
        ),
        (_second({"index": 1, "delta": "leak"}), PlaintextInStreamError, _leak("choices[1].delta")),
        (
            _second({"index": 1, "message": 5}),
            SSEProtocolError,
            "the upstream sent a 'message' that is not an object",
        ),
        (
            _second({"index": 1, "finish_reason": "tool_calls"}),
            PlaintextInStreamError,
            _leak("choices[1].finish_reason"),
        ),
        (
            _second({"index": 1, "finish_reason": "function_call"}),
            PlaintextInStreamError,
            _leak("choices[1].finish_reason"),
        ),
        (
            _second({"index": 1, "finish_reason": "eos"}),
            PlaintextInStreamError,
            "the upstream ended choices[1] with a finish_reason the proxy does not relay; the "
            "response was discarded",
        ),
        (
            _second({"index": 1, "logprobs": {"content": [{"token": "leak"}]}}),
            PlaintextInStreamError,
            _leak("choices[1].logprobs"),
        ),
        (_second({"index": 1, "note": "leak"}), PlaintextInStreamError, _leak(None)),
        (
            _second({"index": 1, "delta": {"role": "system"}}),
            PlaintextInStreamError,
            _leak("choices[1].delta.role"),
        ),
        (
            _second({"index": 1, "message": {"reasoning": 5}}),
            PlaintextInStreamError,
            _leak("choices[1].message.reasoning"),
        ),
        (
            _second({"index": 1, "delta": {"refusal": "leak"}}),
            PlaintextInStreamError,
            _leak("choices[1].delta.refusal"),
        ),
        (_second({"index": 1, "delta": {"note": "leak"}}), PlaintextInStreamError, _leak(None)),
        (
            _second({"index": 1, "delta": {"content": [{"type": "image_url"}]}}),
            PlaintextInStreamError,
            _leak("choices[1].delta.content"),
        ),
        (
            _second({"index": 1, "message": {"content": [{"type": "text", "text": 5}]}}),
            PlaintextInStreamError,
            _leak("choices[1].message.content"),
        ),
        (
            _second(
                {"index": 1, "delta": {"content": [{"type": "text", "text": "", "x": "leak"}]}}
            ),
            PlaintextInStreamError,
            _leak(None),
        ),
    ],
)
def test_the_error_names_only_the_proxys_own_field_names(
    chunk: dict[str, Any], error: type[ProxyError], message: str
) -> None:
    for rebuilder in (ChunkDecryptor(CLIENT.private), ChunkRebuilder()):
        with pytest.raises(error) as info:
            rebuilder.rebuild(copy.deepcopy(chunk))
        assert type(info.value) is error
        assert info.value.message == message


def test_empty_text_parts_add_nothing_and_harmless_part_keys_are_dropped() -> None:
    content = [
        {"type": "text", "text": ""},
        {"type": "text", "text": sealed("a"), "cache": {"n": 1}},
        {"type": "text", "text": None},
        {"type": "text"},
    ]
    assert first_delta(delta_chunk(content=content)) == {"content": "a"}
    assert first_delta(delta_chunk(content=[])) == {"content": ""}


def test_an_empty_reasoning_field_is_dropped_and_the_next_one_still_read() -> None:
    delta = first_delta(delta_chunk(reasoning_content="", reasoning=sealed("r")))
    assert delta == {"reasoning": "r"}
    delta = first_delta(delta_chunk(content=None, reasoning_content=None, reasoning=sealed("r")))
    assert delta == {"content": None, "reasoning": "r"}


def test_an_empty_role_is_dropped() -> None:
    assert first_delta(delta_chunk(role="", content=sealed("x"))) == {"content": "x"}


def test_a_chunk_without_choices_or_index_gets_defaults() -> None:
    assert rebuild({"id": "c"}) == {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "",
        "choices": [],
    }
    choice = rebuild({"choices": [{"delta": {}}]})["choices"][0]
    assert choice == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": None}


def test_any_mapping_is_rebuilt() -> None:
    chunk = MappingProxyType(
        {"id": "c", "choices": [{"index": 0, "delta": {"content": sealed("x")}}]}
    )
    assert ChunkDecryptor(CLIENT.private).rebuild(chunk)["choices"][0]["delta"] == {"content": "x"}


def test_has_text_of_anything() -> None:
    assert not has_text({})
    assert not has_text({"choices": "x"})
    assert not has_text({"choices": ["x", {"delta": "x"}]})
    assert has_text({"choices": ["x", {"message": {"reasoning_content": "r"}}]})


def test_the_decryptors_repr() -> None:
    assert repr(ChunkDecryptor(CLIENT.private)) == "ChunkDecryptor(<redacted>)"


def test_one_rebuilder_checks_each_metadata_value_itself_across_a_stream() -> None:
    rebuilder = ChunkRebuilder()
    good = {"id": "chatcmpl-1", "model": "e2ee-m", "system_fingerprint": "fp_1", "choices": []}
    for _ in range(3):
        out = rebuilder.rebuild(dict(good))
        assert (out["id"], out["model"], out["system_fingerprint"]) == (
            "chatcmpl-1",
            "e2ee-m",
            "fp_1",
        )
    # A later chunk with other values is judged on its own: a bad token is still dropped.
    bad = {"id": "chatcmpl 1 <x>", "model": "e2ee-m\n", "system_fingerprint": "x" * 300}
    out = rebuilder.rebuild({**bad, "choices": []})
    assert (out["id"], out["model"]) == ("", "")
    assert "system_fingerprint" not in out


def test_a_lone_choice_is_named_choices_0_in_the_error() -> None:
    chunk = {"id": "c", "choices": [{"index": 0, "delta": {"refusal": "leak"}}]}
    for rebuilder in (ChunkDecryptor(CLIENT.private), ChunkRebuilder()):
        with pytest.raises(PlaintextInStreamError) as info:
            rebuilder.rebuild(copy.deepcopy(chunk))
        assert info.value.message == _leak("choices[0].delta.refusal")


@pytest.mark.parametrize("parameters", [5, True, "text", ["a"], {"web_search_citations": []}])
def test_venice_parameters_that_report_no_web_search_are_dropped(parameters: Any) -> None:
    out = ChunkRebuilder().rebuild({"id": "c", "venice_parameters": parameters, "choices": []})
    assert out == {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "",
        "choices": [],
    }


def test_the_accepted_metadata_tokens_are_remembered_and_nothing_else() -> None:
    rebuilder = ChunkRebuilder()
    rebuilder.rebuild({"id": "chatcmpl-1", "model": "e2ee-m", "system_fingerprint": "fp_1"})
    rebuilder.rebuild({"id": "bad id", "model": 5, "choices": []})
    assert rebuilder._tokens == {"chatcmpl-1", "e2ee-m", "fp_1"}


def test_a_stream_of_ever_new_ids_keeps_the_rebuilder_small_and_still_checks_each() -> None:
    rebuilder = ChunkRebuilder()
    for i in range(100):
        assert rebuilder.rebuild({"id": f"chatcmpl-{i}", "choices": []})["id"] == f"chatcmpl-{i}"
        assert rebuilder.rebuild({"id": f"bad id {i}", "choices": []})["id"] == ""
    assert len(rebuilder._tokens) <= 8  # remembered tokens are bounded (one response's few)
