"""Upstream chunk -> a new chunk rebuilt from the allowlist, with its text decrypted. Pure.

Each ``chat.completion.chunk`` the client gets is built from scratch by
:meth:`ChunkRebuilder.rebuild` following :mod:`proxy.core.fields` (the response tables)::

    {"id", "object": "chat.completion.chunk", "created", "model"[, "system_fingerprint"],
     "choices": [{"index", "delta" | "message": {["role": "assistant"], ["content"],
                  ["reasoning_content"], ["reasoning"]}, "logprobs": null, "finish_reason"}],
     ["usage": {<numbers>}]}

- ``content``, ``reasoning_content`` and ``reasoning`` are sealed to the client key
  (PROTOCOL.md §5.2): each non-empty string must be a blob that opens, else the answer ends
  (:class:`~proxy.core.errors.PlaintextInStreamError` / :class:`DecryptionError`). ``""`` and
  ``null`` stay as they are. Content given as a list of text parts (each ``text`` sealed) is
  decrypted and joined into one string; a part that is not ``{"type": "text", "text": blob}``
  ends the answer.
- A field that holds text the proxy did not decrypt (``refusal``, ``tool_calls``,
  ``function_call``, ``audio``, ``annotations``, ``logprobs``, completions-style ``text``,
  ``prompt_logprobs``, non-list ``choices``, an unknown field holding a string) ends the answer;
  null or empty, or an unknown field holding only numbers and booleans, is dropped.
- ``id``, ``model`` and ``system_fingerprint`` are relayed when they are short tokens (else
  dropped); ``created`` when it is an integer; ``usage`` keeps OpenAI's token counts
  (:data:`proxy.core.fields.USAGE_KEYS`) when they are numbers; ``finish_reason`` is ``stop``,
  ``length``, ``content_filter`` or null.
  ``cost``, ``service_tier``, ``venice_parameters``, ``stop_reason`` and ``matched_stop`` are
  dropped (non-empty ``venice_parameters.web_search_citations`` ends the answer: a web search
  ran outside the enclave).

:class:`ChunkRebuilder` itself takes text fields as plain strings (models in
``privacy.passthrough_models``); :class:`ChunkDecryptor` opens them with the request's client
private key. Error messages name fields only from the proxy's own tables, never a name or value
the upstream chose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from proxy.core.crypto import (
    PUBLIC_KEY_BYTES,
    aes_key_for,
    decode_blob_hex,
    looks_like_ciphertext,
    open_with_key,
)
from proxy.core.errors import DecryptionError, PlaintextInStreamError, SSEProtocolError
from proxy.core.fields import (
    FINISH_REASONS,
    RESPONSE_CHOICE,
    RESPONSE_CHUNK,
    RESPONSE_CONTAINERS,
    RESPONSE_MESSAGE,
    RESPONSE_TEXT_FIELDS,
    USAGE_KEYS,
    ResponseRule,
    holds_text,
    is_number,
)

CHUNK_OBJECT: Final = "chat.completion.chunk"
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}")
# Phala legacy reuses one server ephemeral per response; NEAR and aci never repeat one, so a few
# entries are enough and the bound keeps a long NEAR stream from growing the cache.
_KEY_CACHE_SIZE = 8
# id, model and system_fingerprint repeat on every chunk of a response; a few spare entries.
_TOKEN_CACHE_SIZE = 8


def _not_decrypted(where: str | None) -> PlaintextInStreamError:
    what = f"'{where}'" if where else "an unexpected field"
    return PlaintextInStreamError(
        f"the upstream sent {what} holding text the proxy did not decrypt, for an end-to-end "
        "encrypted request; the response was discarded"
    )


def _drop_or_refuse(value: Any, where: str | None) -> None:
    """A field the client never sees: fine when it holds no text, the end of the answer when
    it does."""
    if holds_text(value):
        raise _not_decrypted(where)


def _usage(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        _drop_or_refuse(value, "usage")
        raise SSEProtocolError("the upstream sent a 'usage' that is not an object")
    _drop_or_refuse(value, "usage")
    out: dict[str, Any] = {}
    for key, details in USAGE_KEYS.items():
        item = value.get(key)
        if is_number(item) or (item is None and key in value):
            out[key] = item
        elif isinstance(item, dict) and details:
            out[key] = {k: item[k] for k in details if is_number(item.get(k))}
    return out


def _token(value: Any) -> str | None:
    """A metadata value the client may see: a short token, else nothing."""
    if isinstance(value, str) and _TOKEN.fullmatch(value):
        return value
    return None


def _web_search_ran(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    return bool(value.get("web_search_citations"))


def has_text(chunk: Mapping[str, Any]) -> bool:
    """True when any choice of a rebuilt chunk carries non-empty decrypted text."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        for name in RESPONSE_CONTAINERS:
            body = choice.get(name) if isinstance(choice, dict) else None
            if isinstance(body, dict) and any(body.get(f) for f in RESPONSE_TEXT_FIELDS):
                return True
    return False


def _passing(table: Mapping[str, Any]) -> frozenset[str]:
    """The keys of a response table the rebuild handles itself (not refused when holding text)."""
    return frozenset(key for key, item in table.items() if item.rule is not ResponseRule.REFUSED)


# Keys that need no text check: handled by the rebuild, or dropped whatever they hold.
_CHUNK_PASSING = _passing(RESPONSE_CHUNK)
_CHOICE_PASSING = _passing(RESPONSE_CHOICE)
_MESSAGE_PASSING = _passing(RESPONSE_MESSAGE)
_PART_PASSING = frozenset({"type", "text"})


def _check_rest(
    obj: dict[str, Any], passing: frozenset[str], table: Mapping[str, Any], where: str
) -> None:
    """Every key of ``obj`` outside ``passing`` must hold no text (it is dropped). ``null``
    (``"logprobs": null`` on every chunk) is settled here without a call."""
    for key in obj.keys() - passing:
        value = obj[key]
        if value is not None:
            _drop_or_refuse(value, f"{where}.{key}" if key in table else None)


class ChunkRebuilder:
    """Rebuilds upstream chunks from the allowlist. Text fields are taken as plaintext (for
    passthrough models); :class:`ChunkDecryptor` decrypts them.

    One rebuilder serves one response: it remembers the few metadata tokens it already accepted
    (every chunk of a stream repeats the same ``id``, ``model`` and ``system_fingerprint``), so
    each is checked once, not once per chunk.
    """

    __slots__ = ("_tokens",)

    def __init__(self) -> None:
        self._tokens: set[str] = set()

    def _token(self, value: Any) -> str | None:
        """A metadata value the client may see: a short token, else nothing."""
        if isinstance(value, str) and value in self._tokens:
            return value
        token = _token(value)
        if token is not None and len(self._tokens) < _TOKEN_CACHE_SIZE:
            self._tokens.add(token)
        return token

    def rebuild(self, chunk: Mapping[str, Any]) -> dict[str, Any]:
        """The chunk to relay, rebuilt; raises when the upstream sent text it must not."""
        if not isinstance(chunk, dict):
            chunk = dict(chunk)
        for key in chunk.keys() - _CHUNK_PASSING:
            value = chunk[key]
            if value is not None:
                _drop_or_refuse(value, key if key in RESPONSE_CHUNK else None)
        parameters = chunk.get("venice_parameters")
        if parameters is not None and _web_search_ran(parameters):
            raise PlaintextInStreamError(
                "the upstream reports a web search for this request: it ran outside the "
                "enclave; the response was discarded"
            )
        # id, model and system_fingerprint repeat on every chunk: the ones already accepted
        # are looked up, not checked again (self._token checks and remembers the rest).
        tokens = self._tokens
        completion_id = chunk.get("id")
        if not (isinstance(completion_id, str) and completion_id in tokens):
            completion_id = self._token(completion_id) or ""
        model = chunk.get("model")
        if not (isinstance(model, str) and model in tokens):
            model = self._token(model) or ""
        created = chunk.get("created")
        rebuilt: dict[str, Any] = {
            "id": completion_id,
            "object": CHUNK_OBJECT,
            "created": created if type(created) is int else 0,
            "model": model,
        }
        fingerprint = chunk.get("system_fingerprint")
        if fingerprint is not None:
            fingerprint = self._token(fingerprint)
            if fingerprint is not None:
                rebuilt["system_fingerprint"] = fingerprint
        choices = chunk.get("choices")
        if choices is None:
            rebuilt["choices"] = []
        elif isinstance(choices, list):
            if len(choices) == 1:
                rebuilt["choices"] = [self._choice(choices[0], 0)]
            else:
                rebuilt["choices"] = [self._choice(c, i) for i, c in enumerate(choices)]
        else:
            _drop_or_refuse(choices, "choices")
            raise SSEProtocolError("the upstream sent 'choices' that is not an array")
        if "usage" in chunk:
            rebuilt["usage"] = _usage(chunk["usage"])
        return rebuilt

    def _choice(self, choice: Any, position: int) -> dict[str, Any]:
        if not isinstance(choice, dict):
            _drop_or_refuse(choice, f"choices[{position}]")
            raise SSEProtocolError("the upstream sent a choice that is not an object")
        index = choice.get("index", 0)
        if type(index) is not int or index < 0:
            raise SSEProtocolError("the upstream sent a choice without a valid index")
        out: dict[str, Any] = {"index": index}
        for name in RESPONSE_CONTAINERS:
            body = choice.get(name)
            if body is None:
                continue
            if not isinstance(body, dict):
                _drop_or_refuse(body, f"choices[{position}].{name}")
                raise SSEProtocolError(f"the upstream sent a '{name}' that is not an object")
            out[name] = self._message(body, position, name)
        finish = choice.get("finish_reason")
        if finish is not None and finish not in FINISH_REASONS:
            if finish in ("tool_calls", "function_call"):
                raise _not_decrypted(f"choices[{position}].finish_reason")
            raise PlaintextInStreamError(
                f"the upstream ended choices[{position}] with a finish_reason the proxy does "
                "not relay; the response was discarded"
            )
        if choice.keys() - _CHOICE_PASSING:
            _check_rest(choice, _CHOICE_PASSING, RESPONSE_CHOICE, f"choices[{position}]")
        out["logprobs"] = None
        out["finish_reason"] = finish
        return out

    def _message(self, body: dict[str, Any], position: int, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        role = body.get("role")
        if role == "assistant":
            out["role"] = role
        elif role is not None and role != "":
            raise _not_decrypted(f"choices[{position}].{name}.role")
        for field in RESPONSE_TEXT_FIELDS:
            if field not in body:
                continue
            value = body[field]
            if value is None or value == "":
                if field == "content":
                    out[field] = value
                continue
            if isinstance(value, str):
                out[field] = self._open(value)
            elif field == "content" and isinstance(value, list):
                out[field] = "".join(self._part(part, position, name) for part in value)
            else:
                raise _not_decrypted(f"choices[{position}].{name}.{field}")
        if body.keys() - _MESSAGE_PASSING:
            _check_rest(body, _MESSAGE_PASSING, RESPONSE_MESSAGE, f"choices[{position}].{name}")
        return out

    def _part(self, part: Any, position: int, name: str) -> str:
        where = f"choices[{position}].{name}.content"
        if not isinstance(part, dict) or part.get("type") != "text":
            raise _not_decrypted(where)
        for key in part.keys() - _PART_PASSING:
            _drop_or_refuse(part[key], None)
        text = part.get("text")
        if text is None or text == "":
            return ""
        if not isinstance(text, str):
            raise _not_decrypted(where)
        return self._open(text)

    def _open(self, text: str) -> str:
        """A text field's plaintext (here: as given; passthrough models send plaintext)."""
        return text


class ChunkDecryptor(ChunkRebuilder):
    """Rebuilds chunks and decrypts their sealed fields with the request's client private key.

    Holds the only copy of derived AES keys for one response; drop the decryptor (or call
    :meth:`clear`) when the response ends.
    """

    __slots__ = ("_keys", "_private")

    def __init__(self, client_private: bytes) -> None:
        super().__init__()
        self._private = client_private
        self._keys: dict[bytes, bytes] = {}

    def __repr__(self) -> str:
        return "ChunkDecryptor(<redacted>)"

    def clear(self) -> None:
        """Forget cached derived keys."""
        self._keys.clear()

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
