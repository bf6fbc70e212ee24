"""OpenAI chat request -> Venice E2EE request, and encrypted upstream chunk -> plain chunk. Pure.

Request (docs/protocol.md#chat-request, the client rule that holds on every backend)::

    POST /api/v1/chat/completions
    X-Venice-TEE-Client-Pub-Key: <130 hex, 04...>   fresh per request; responses are sealed to it
    X-Venice-TEE-Model-Pub-Key:  <130 hex, 04...>   the attested enclave key
    X-Venice-TEE-Signing-Algo:   ecdsa
    {"model": <upstream id>, "stream": true, "stream_options": {"include_usage": true},
     "messages": [{"role": ..., "content": <hex blob>}, ...], <other fields unchanged>}

- ``content`` of every message of every role is sealed to the model key whenever it is a string,
  ``""`` included (NEAR returns ``""``, Phala legacy and aci demand hex for every string). A list
  of content parts is sealed as its compact JSON text (one blob). ``null`` stays ``null``.
- Every blob gets a fresh ephemeral key (``seal_text``); the server reads the sender key from
  each blob, so nothing ties two fields together.
- ``reasoning_content``, ``reasoning``, ``refusal`` and ``name`` are removed from every message:
  backends either do not decrypt them (they would travel in plaintext) or decrypt them strictly
  (plaintext would be rejected), and none of them is needed to continue a conversation.
- Upstream always streams; usage is always requested because the aggregator needs it. Whether the
  client sees the usage chunk is recorded in :attr:`EncryptedRequest.include_usage`.

Requests whose data would have to travel in plaintext are refused up front by
:func:`check_e2ee_supported` (tools, functions, predicted outputs, tool-call history, file parts).

Response chunks (docs/protocol.md#response-fields): in ``choices[i].delta`` (stream) or
``choices[i].message``, ``content``, ``reasoning_content`` and ``reasoning`` are blobs sealed to
the client key; for list content, each part's ``text``. ``None`` and ``""`` are left alone.
Anything else non-empty that is not blob-shaped fails closed with :class:`PlaintextInStreamError`,
whitespace included.

Deliberately NOT checked or encrypted (no backend encrypts them in the default mode): top-level
``stop``, ``response_format`` schemas, ``metadata``, ``user``, ``logit_bias``,
``venice_parameters``, message ``tool_call_id``; in responses, ``refusal``, ``tool_calls`` and
``logprobs`` are passed through as they arrive.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.core.crypto import (
    PUBLIC_KEY_BYTES,
    KeyPair,
    aes_key_for,
    decode_blob_hex,
    generate_keypair,
    looks_like_ciphertext,
    open_with_key,
    parse_public_key,
    seal_text,
)
from proxy.core.errors import (
    DecryptionError,
    InvalidRequestError,
    PlaintextInStreamError,
    SSEProtocolError,
    UnsupportedForE2EEError,
)

CLIENT_KEY_HEADER = "X-Venice-TEE-Client-Pub-Key"
MODEL_KEY_HEADER = "X-Venice-TEE-Model-Pub-Key"
SIGNING_ALGO_HEADER = "X-Venice-TEE-Signing-Algo"
SIGNING_ALGO = "ecdsa"

_DROPPED_MESSAGE_FIELDS = ("reasoning_content", "reasoning", "refusal", "name")
_ENCRYPTED_RESPONSE_FIELDS = ("content", "reasoning_content", "reasoning")
_RESPONSE_CONTAINERS = ("delta", "message")
# Phala legacy reuses one server ephemeral per response; NEAR and aci never repeat one, so a few
# entries are enough and the bound keeps a long NEAR stream from growing the cache.
_KEY_CACHE_SIZE = 8


def _messages(body: Mapping[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array", param="messages")
    return messages


def _message_at(messages: list[Any], index: int) -> Mapping[str, Any]:
    message = messages[index]
    if not isinstance(message, Mapping):
        raise InvalidRequestError(
            f"messages[{index}] must be an object", param=f"messages[{index}]"
        )
    if not isinstance(message.get("role"), str):
        raise InvalidRequestError(
            f"messages[{index}].role must be a string", param=f"messages[{index}].role"
        )
    return message


def _unsupported(what: str, param: str) -> UnsupportedForE2EEError:
    return UnsupportedForE2EEError(
        f"{what} cannot be used with an end-to-end encrypted model: "
        "its data would travel unencrypted",
        param=param,
    )


def check_e2ee_supported(body: Mapping[str, Any]) -> None:
    """Refuse a request that needs data to travel in plaintext, or that E2EE cannot serve.

    Raises :class:`UnsupportedForE2EEError` whose ``param`` names the offending field, or
    :class:`InvalidRequestError` when ``messages`` is not an array of objects with a role.
    """
    if body.get("tools"):
        raise _unsupported("tools (function calling)", "tools")
    if body.get("functions"):
        raise _unsupported("functions (function calling)", "functions")
    if body.get("tool_choice") not in (None, "none"):
        raise _unsupported("tool_choice", "tool_choice")
    if body.get("function_call") not in (None, "none"):
        raise _unsupported("function_call", "function_call")
    if body.get("prediction") is not None:
        raise _unsupported("prediction (predicted outputs)", "prediction")
    messages = _messages(body)
    for i in range(len(messages)):
        message = _message_at(messages, i)
        if message.get("tool_calls"):
            raise _unsupported("a message with tool_calls", f"messages[{i}].tool_calls")
        if message.get("function_call"):
            raise _unsupported("a message with function_call", f"messages[{i}].function_call")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, Mapping) and part.get("type") == "file":
                    raise UnsupportedForE2EEError(
                        "file content parts are not supported by end-to-end encrypted models",
                        param=f"messages[{i}].content[{j}]",
                    )


@dataclass(frozen=True)
class EncryptedRequest:
    """What to send upstream for one request, and what the client asked for."""

    body: dict[str, Any]
    headers: dict[str, str]
    # KeyPair's own repr hides the private key.
    client_keys: KeyPair
    client_stream: bool
    include_usage: bool


def _seal_content(model_key: bytes, content: Any, index: int) -> str | None:
    param = f"messages[{index}].content"
    if content is None:
        return None
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    else:
        raise InvalidRequestError(f"{param} must be a string, an array or null", param=param)
    try:
        return seal_text(model_key, text)
    except UnicodeEncodeError as exc:
        # A lone surrogate escape in the client's JSON has no UTF-8 form.
        raise InvalidRequestError(f"{param} is not valid Unicode", param=param) from exc


def _encrypt_message(model_key: bytes, message: Mapping[str, Any], index: int) -> dict[str, Any]:
    out = {k: v for k, v in message.items() if k not in _DROPPED_MESSAGE_FIELDS}
    if "content" in out:
        out["content"] = _seal_content(model_key, out["content"], index)
    return out


def encrypt_request(
    body: Mapping[str, Any],
    *,
    model_key: bytes,
    upstream_model: str,
    client_keys: KeyPair | None = None,
) -> EncryptedRequest:
    """Build the upstream E2EE request from a client's OpenAI request (never mutated).

    ``model_key`` is the attested enclave key (65, 64 or 33 bytes). ``client_keys`` is drawn
    fresh unless given (tests only).
    """
    check_e2ee_supported(body)
    model_public = parse_public_key(model_key)
    keys = client_keys if client_keys is not None else generate_keypair()
    messages = _messages(body)
    upstream = dict(body)
    upstream["model"] = upstream_model
    upstream["messages"] = [
        _encrypt_message(model_public, messages[i], i) for i in range(len(messages))
    ]
    client_stream = bool(body.get("stream"))
    stream_options = body.get("stream_options")
    include_usage = (
        client_stream
        and isinstance(stream_options, Mapping)
        and bool(stream_options.get("include_usage"))
    )
    upstream["stream"] = True
    upstream["stream_options"] = (
        {**stream_options, "include_usage": True}
        if isinstance(stream_options, Mapping)
        else {"include_usage": True}
    )
    headers = {
        CLIENT_KEY_HEADER: keys.public_hex,
        MODEL_KEY_HEADER: model_public.hex(),
        SIGNING_ALGO_HEADER: SIGNING_ALGO,
    }
    return EncryptedRequest(
        body=upstream,
        headers=headers,
        client_keys=keys,
        client_stream=client_stream,
        include_usage=include_usage,
    )


class ChunkDecryptor:
    """Decrypts the sealed fields of upstream chunks with the request's client private key.

    Holds the only copy of derived AES keys for one response; drop the decryptor (or call
    :meth:`clear`) when the response ends.
    """

    __slots__ = ("_keys", "_private")

    def __init__(self, client_private: bytes) -> None:
        self._private = client_private
        self._keys: dict[bytes, bytes] = {}

    def __repr__(self) -> str:
        return "ChunkDecryptor(<redacted>)"

    def clear(self) -> None:
        """Forget cached derived keys."""
        self._keys.clear()

    def decrypt_chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """Decrypt ``chunk`` in place and return it. Chunks without choices pass unchanged.

        Raises :class:`DecryptionError` (no detail) when a blob does not open and
        :class:`PlaintextInStreamError` when a sealed field holds anything but a blob.
        """
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return chunk
        for choice in choices:
            if not isinstance(choice, dict):
                raise SSEProtocolError("the upstream sent a choice that is not an object")
            for container_name in _RESPONSE_CONTAINERS:
                container = choice.get(container_name)
                if isinstance(container, dict):
                    self._decrypt_fields(container)
                elif container is not None:
                    # A string delta (or any other shape) could carry text we never decrypted.
                    raise SSEProtocolError(
                        f"the upstream sent a '{container_name}' that is not an object"
                    )
            text = choice.get("text")
            if text is not None and text != "":
                # Completions-style text is sealed like content, or refused.
                if not isinstance(text, str):
                    raise PlaintextInStreamError()
                choice["text"] = self._open(text)
        return chunk

    def _decrypt_fields(self, container: dict[str, Any]) -> None:
        for name in _ENCRYPTED_RESPONSE_FIELDS:
            value = container.get(name)
            if value is None or value == "":
                continue
            if isinstance(value, str):
                container[name] = self._open(value)
            elif isinstance(value, list):
                for part in value:
                    if isinstance(part, dict):
                        text = part.get("text")
                        if isinstance(text, str) and text:
                            part["text"] = self._open(text)
                        elif text is not None and text != "":
                            raise PlaintextInStreamError()
            else:
                raise PlaintextInStreamError()

    def _open(self, text: str) -> str:
        if not looks_like_ciphertext(text):
            raise PlaintextInStreamError()
        blob = decode_blob_hex(text)
        ephemeral = blob[:PUBLIC_KEY_BYTES]
        key = self._keys.get(ephemeral)
        if key is None:
            try:
                key = aes_key_for(self._private, ephemeral)
            except ValueError as exc:
                raise DecryptionError() from exc
            if len(self._keys) >= _KEY_CACHE_SIZE:
                del self._keys[next(iter(self._keys))]
            self._keys[ephemeral] = key
        plaintext = open_with_key(key, blob)
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecryptionError() from exc
