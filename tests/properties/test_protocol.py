"""Property tests for the request transformer: nothing readable leaves, everything comes back.

For arbitrary valid chat requests (every role, Unicode with astral characters, empty strings,
content-part lists, ``null`` content, extra fields at the top level and in messages, history
fields the proxy drops), :func:`proxy.core.protocol.encrypt_request` must:

- leave no substring of 4 or more characters of any secret text (message contents, part texts,
  image URLs, and the dropped ``name`` / ``reasoning*`` / ``refusal`` fields) in the upstream
  JSON body or headers;
- round-trip through the simulator's enclave-side decryption
  (:func:`proxy.simulator.decrypt.decrypt_messages_near`, and the Phala legacy variant) back to
  the original messages, minus the dropped fields.

Secret texts are drawn from an alphabet (upper-case letters G-Z, some punctuation, and any
non-ASCII character) that cannot occur in hex, in JSON structure, or in the lower-case extra
fields, so a match can only be a leak, never a coincidence.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.crypto import keypair_from_private, looks_like_ciphertext
from proxy.core.protocol import encrypt_request
from proxy.simulator.decrypt import decrypt_messages_near, decrypt_messages_phala

ENCLAVE = keypair_from_private(bytes.fromhex("5a" * 32))
ROLES = ["system", "developer", "user", "assistant", "tool"]
DROPPED = ("name", "reasoning_content", "reasoning", "refusal")
MIN_LEAK = 4

_SECRET_CHAR = st.one_of(
    st.sampled_from("GHIJKLMNOPQRSTUVWXYZ!?#&*~^|"),
    st.characters(codec="utf-8", min_codepoint=0x80),
)
SECRET = st.text(alphabet=_SECRET_CHAR, max_size=24)
# Plain fields: lower-case ASCII only, so they never contain a secret by chance.
PLAIN_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", max_size=12)
PLAIN_VALUE = st.one_of(st.none(), st.booleans(), st.integers(), PLAIN_TEXT)
PLAIN_KEY = PLAIN_TEXT.map(lambda text: "x_" + text)


@st.composite
def parts(draw: st.DrawFn) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        if draw(st.booleans()):
            result.append({"type": "text", "text": draw(SECRET)})
        else:
            url = "data:image/png;base64," + draw(SECRET)
            result.append({"type": "image_url", "image_url": {"url": url}})
    return result


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": draw(st.sampled_from(ROLES))}
    content = draw(st.one_of(SECRET, parts(), st.none(), st.just("")))
    if content is not None or draw(st.booleans()):
        message["content"] = content
    for name in DROPPED:
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            message[name] = draw(SECRET)
    message.update(draw(st.dictionaries(PLAIN_KEY, PLAIN_VALUE, max_size=2)))
    return message


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "e2ee-any",
        "messages": draw(st.lists(messages(), min_size=1, max_size=4)),
    }
    if draw(st.booleans()):
        body["stream"] = draw(st.booleans())
    if draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    body.update(draw(st.dictionaries(PLAIN_KEY, PLAIN_VALUE, max_size=3)))
    return body


def secrets_of(body: dict[str, Any]) -> list[str]:
    """Every text the upstream must not be able to read."""
    found: list[str] = []
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, str):
            found.append(content)
        elif isinstance(content, list):
            for part in content:
                if part["type"] == "text":
                    found.append(part["text"])
                else:
                    found.append(part["image_url"]["url"].split(",", 1)[1])
        found.extend(message[name] for name in DROPPED if name in message)
    return found


def expected_after_enclave(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {key: value for key, value in message.items() if key not in DROPPED}
        for message in body["messages"]
    ]


@settings(max_examples=150, deadline=None)
@given(requests())
def test_no_secret_substring_leaves_in_plaintext(body: dict[str, Any]) -> None:
    encrypted = encrypt_request(body, model_key=ENCLAVE.public, upstream_model="up-model")
    wire = json.dumps(encrypted.body, ensure_ascii=False) + "\n" + json.dumps(encrypted.headers)
    for secret in secrets_of(body):
        for start in range(len(secret) - MIN_LEAK + 1):
            assert secret[start : start + MIN_LEAK] not in wire, "plaintext left the machine"
    for sent, original in zip(encrypted.body["messages"], body["messages"], strict=True):
        if original.get("content") is not None:
            assert looks_like_ciphertext(sent["content"])  # "" too: always a sealed blob
        assert not set(DROPPED) & set(sent)


@settings(max_examples=100, deadline=None)
@given(requests())
def test_enclave_decryption_restores_the_messages(body: dict[str, Any]) -> None:
    snapshot = json.loads(json.dumps(body))
    encrypted = encrypt_request(body, model_key=ENCLAVE.public, upstream_model="up-model")
    assert body == snapshot, "the caller's request was mutated"
    sent = encrypted.body["messages"]
    assert decrypt_messages_near(sent, ENCLAVE.private) == expected_after_enclave(body)
    # Phala legacy keeps list content as the JSON text the proxy sealed.
    for opened, original in zip(
        decrypt_messages_phala(sent, ENCLAVE.private), expected_after_enclave(body), strict=True
    ):
        content = original.get("content")
        if isinstance(content, list):
            assert json.loads(opened["content"]) == content
        else:
            assert opened == original
    # Everything else reaches the upstream unchanged, and it always streams with usage.
    for key, value in body.items():
        if key not in ("messages", "model", "stream", "stream_options"):
            assert encrypted.body[key] == value
    assert encrypted.body["model"] == "up-model"
    assert encrypted.body["stream"] is True
    assert encrypted.body["stream_options"]["include_usage"] is True
