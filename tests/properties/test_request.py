"""Property tests for the request side: nothing readable leaves, everything comes back.

For arbitrary chat requests (every role, Unicode with astral characters, empty strings,
content-part lists, ``null`` content, history fields the proxy drops, unknown top-level fields
and message keys holding anything, known fields holding secrets),
:func:`proxy.core.request.parse_chat_request` + :func:`~proxy.core.request.encrypt_request`
must either refuse the request with a 400 or:

- leave no substring of 4 or more characters of any secret text (message contents, part texts,
  image URLs, the dropped ``name`` / ``reasoning*`` / ``refusal`` fields, and secrets put in
  any other field) in the upstream JSON body or headers;
- round-trip through the simulator's enclave-side decryption
  (:func:`proxy.simulator.decrypt.decrypt_messages_near`, and the Phala legacy variant) back to
  the original messages, minus the dropped fields;
- pass the simulator's strict check of the proxy's own policy
  (:func:`proxy.simulator.policy.policy_violations`).

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
from proxy.core.errors import InvalidRequestError
from proxy.core.fields import MESSAGE_KEYS, REQUEST_FIELDS, Rule
from proxy.core.request import EncryptedRequest, encrypt_request, parse_chat_request
from proxy.simulator.decrypt import decrypt_messages_near, decrypt_messages_phala
from proxy.simulator.policy import policy_violations

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
_PLAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz_")
# Every drawn image URL starts so; the prefix is the test's, not a secret (its "imag" may well
# stand in a forwarded plain field name such as "x_imag").
DATA_URL_PREFIX = "data:image/png;base64,"
PLAIN_TEXT = st.text(alphabet="".join(sorted(_PLAIN_CHARS)), max_size=12)
PLAIN_VALUE = st.one_of(st.booleans(), st.integers())
PLAIN_KEY = PLAIN_TEXT.map(lambda text: "x_" + text)


@st.composite
def parts(draw: st.DrawFn) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        if draw(st.booleans()):
            result.append({"type": "text", "text": draw(SECRET)})
        else:
            url = DATA_URL_PREFIX + draw(SECRET)
            result.append({"type": "image_url", "image_url": {"url": url}})
    return result


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": draw(st.sampled_from(ROLES))}
    content = draw(st.one_of(SECRET, parts(), st.none(), st.just("")))
    if content is not None or draw(st.booleans()):
        message["content"] = content
    for name in DROPPED:
        rule = MESSAGE_KEYS[message["role"]].get(name)
        local = rule is not None and rule.rule is Rule.LOCAL_ONLY
        if local and draw(st.integers(min_value=0, max_value=3)) == 0:
            message[name] = draw(SECRET)
    return message


# Anything JSON, with secrets wherever a string can go.
ANY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), SECRET),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(PLAIN_KEY | SECRET, inner, max_size=3)
    ),
    max_leaves=6,
)
KNOWN_FIELD = st.sampled_from(sorted(set(REQUEST_FIELDS) - {"model", "messages"}))


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


@st.composite
def hostile_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Valid messages, plus secrets anywhere else: known fields, unknown fields, message keys."""
    body = draw(requests())
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        body[draw(KNOWN_FIELD | PLAIN_KEY | SECRET)] = draw(ANY_JSON)
    if draw(st.booleans()):
        message = draw(st.sampled_from(body["messages"]))
        message[draw(PLAIN_KEY | SECRET | st.sampled_from(["tool_call_id", "tool_calls"]))] = draw(
            ANY_JSON
        )
    return body


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [*strings_in(k), *strings_in(v)]]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def secrets_of(body: dict[str, Any]) -> list[str]:
    """Every text the upstream must not be able to read (strings drawn from SECRET: the plain
    names and values are lower-case ASCII, which SECRET never holds)."""
    found: list[str] = []
    for message in body["messages"]:
        found += [s for key, value in message.items() if key != "role" for s in strings_in(value)]
    for key, value in body.items():
        if key not in ("model", "messages"):
            found += strings_in(key) + strings_in(value)
    found = [text.removeprefix(DATA_URL_PREFIX) for text in found]
    return [text for text in found if not set(text) <= _PLAIN_CHARS]


def encrypted(body: dict[str, Any]) -> EncryptedRequest:
    return encrypt_request(
        parse_chat_request(body), model_key=ENCLAVE.public, upstream_model="up-model"
    )


def assert_no_leak(body: dict[str, Any], request: EncryptedRequest) -> None:
    wire = json.dumps(request.body, ensure_ascii=False) + "\n" + json.dumps(request.headers)
    for secret in secrets_of(body):
        for start in range(len(secret) - MIN_LEAK + 1):
            assert secret[start : start + MIN_LEAK] not in wire, "plaintext left the machine"


def expected_after_enclave(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {key: value for key, value in message.items() if key not in DROPPED}
        for message in body["messages"]
    ]


@settings(max_examples=150, deadline=None)
@given(requests())
def test_no_secret_substring_leaves_in_plaintext(body: dict[str, Any]) -> None:
    request = encrypted(body)
    assert_no_leak(body, request)
    for sent, original in zip(request.body["messages"], body["messages"], strict=True):
        if original.get("content") is not None:
            assert looks_like_ciphertext(sent["content"])  # "" too: always a sealed blob
        assert set(sent) <= {"role", "content"}
    assert policy_violations(request.body) == []


@settings(max_examples=200, deadline=None)
@given(hostile_requests())
def test_whatever_the_fields_hold_a_secret_is_refused_or_stays_encrypted(
    body: dict[str, Any],
) -> None:
    try:
        request = encrypted(body)
    except InvalidRequestError as exc:
        refused: InvalidRequestError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.http_status == 400
        return
    assert_no_leak(body, request)
    assert policy_violations(request.body) == []


@settings(max_examples=100, deadline=None)
@given(requests())
def test_enclave_decryption_restores_the_messages(body: dict[str, Any]) -> None:
    snapshot = json.loads(json.dumps(body))
    request = encrypted(body)
    assert body == snapshot, "the caller's request was mutated"
    sent = request.body["messages"]
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
    # Unknown scalar fields reach the upstream unchanged, and it always streams with usage.
    for key, value in body.items():
        if key not in ("messages", "model", "stream", "stream_options"):
            assert request.body[key] == value
    assert request.body["model"] == "up-model"
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
