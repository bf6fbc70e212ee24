"""OpenAI chat request -> :class:`ChatRequest` (the field policy applied) -> Venice E2EE request.
Pure.

:func:`parse_chat_request` applies :mod:`proxy.core.fields` to every field of the client's
request (top level, each message, each content part) and keeps only what may go on: the
messages (role and content), the forwarded fields (values of a declared kind), and what the
proxy enforces itself (``stop``, ``n``, whether the client streams and wants usage). Anything
refused is a 400 naming the field, why, and the setting that allows it. Fields the policy calls
"inside encryption" (tools, tool results, structured outputs) are refused here: a tool-emulation
layer that carries them inside the encrypted messages must consume them before this runs.

:func:`encrypt_request` builds the upstream request (PROTOCOL.md §4, the client rule that holds
on every backend)::

    POST /api/v1/chat/completions
    X-Venice-TEE-Client-Pub-Key: <130 hex, 04...>   fresh per request; responses are sealed to it
    X-Venice-TEE-Model-Pub-Key:  <130 hex, 04...>   the attested enclave key
    X-Venice-TEE-Signing-Algo:   ecdsa
    {"model": <Venice id>, "messages": [{"role": ..., "content": <hex blob> | null}, ...],
     "stream": true, "stream_options": {"include_usage": true}, <forwarded fields>}

- ``content`` of every message of every role is sealed whenever it is not ``null``, ``""``
  included (NEAR returns ``""``, Phala legacy and aci demand hex for every string). A list of
  content parts is sealed as its compact JSON text (one blob). A string that itself parses as a
  JSON array is sealed as ``[{"type": "text", "text": <the string>}]``: NEAR (and Phala)
  ``json.loads`` decrypted content and would otherwise turn it into content parts.
- Every blob gets a fresh ephemeral key (``seal_text``); the server reads the sender key from
  each blob, so nothing ties two fields together.
- Upstream always streams with usage (the aggregator needs it); whether the client streams and
  sees the usage chunk is :attr:`ChatRequest.client_stream` / :attr:`ChatRequest.include_usage`.

:func:`plaintext_body` is the same request without encryption, for models listed in
``privacy.passthrough_models``: the same field policy applies to them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.crypto import KeyPair, generate_keypair, parse_public_key, seal_text
from proxy.core.errors import InvalidRequestError, UnsupportedForE2EEError
from proxy.core.fields import (
    CONTENT_PART_KEYS,
    CONTENT_PART_TYPES,
    FORWARD_FIELDS_SETTING,
    MAX_MODEL_CHARS,
    MAX_N,
    MAX_STOP_CHARS,
    MAX_STOPS,
    MESSAGE_KEYS,
    REQUEST_FIELDS,
    ROLES,
    UNKNOWN_MESSAGE_KEY,
    UNKNOWN_PART_TYPE,
    FieldRule,
    Kind,
    Rule,
    is_identifier,
    is_number,
)

CLIENT_KEY_HEADER = "X-Venice-TEE-Client-Pub-Key"
MODEL_KEY_HEADER = "X-Venice-TEE-Model-Pub-Key"
SIGNING_ALGO_HEADER = "X-Venice-TEE-Signing-Algo"
SIGNING_ALGO = "ecdsa"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A client's chat request after the field policy: all that may leave, and what is local.

    The repr shows no message and no stop string.
    """

    model: str
    messages: tuple[Mapping[str, Any], ...] = field(repr=False)
    forwarded: Mapping[str, Any]
    client_stream: bool = False
    include_usage: bool = False
    n: int = 1
    stops: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class EncryptedRequest:
    """What to send upstream for one attempt."""

    body: dict[str, Any]
    headers: dict[str, str]
    # KeyPair's own repr hides the private key.
    client_keys: KeyPair


# --- refusals --------------------------------------------------------------------------------


def refusal(param: str, rule: FieldRule) -> UnsupportedForE2EEError:
    """The 400 for a refused (or not yet emulated) field: names it, says why and what allows
    it."""
    message = f"'{param}' cannot be used with an end-to-end encrypted model: {rule.why}"
    if rule.setting == FORWARD_FIELDS_SETTING:
        message += f"; list '{param}' in {FORWARD_FIELDS_SETTING} to send it to Venice in plaintext"
    elif rule.setting is None:
        message += "; no setting allows it"
    return UnsupportedForE2EEError(message, param=param)


def _unknown_refusal(param: str) -> UnsupportedForE2EEError:
    return UnsupportedForE2EEError(
        f"'{param}' is not a field this proxy knows, and it can hold text that would travel "
        f"to Venice unencrypted; list it in {FORWARD_FIELDS_SETTING} to send it in plaintext "
        "(unknown numbers and booleans are forwarded)",
        param=param,
    )


_SHOWN_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def shown(name: str) -> str:
    """A client-chosen field name as it may appear in an error (and its ``param``): ASCII,
    escaped and cut when it is not a plain name (it could be a lone surrogate, or long text)."""
    if _SHOWN_NAME.fullmatch(name):
        return name
    return name.encode("ascii", "backslashreplace").decode("ascii")[:64] or "''"


def _invalid(param: str, what: str) -> InvalidRequestError:
    return InvalidRequestError(f"'{param}' must be {what}", param=param)


# --- top level -------------------------------------------------------------------------------


def _model(payload: Mapping[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError(
            "'model' is required and must be a non-empty string", param="model"
        )
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidRequestError(
            f"'model' is longer than {MAX_MODEL_CHARS} characters", param="model"
        )
    try:
        model.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(
            "'model' contains invalid Unicode (a lone surrogate)",
            param="model",
            code="invalid_unicode",
        ) from None
    return model


def check_upstream_model(model: str) -> None:
    """Refuse a Venice model feature suffix (``name:enable_web_search=on``): it would switch on
    Venice features outside the field policy."""
    if ":" in model:
        raise UnsupportedForE2EEError(
            f"'{model}' carries a Venice model feature suffix (after ':'), which would switch "
            "on Venice features outside this proxy's field policy; use the plain model id and "
            "the fields the proxy forwards",
            param="model",
        )


def _stream(payload: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream", "a boolean")
    options = payload.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, Mapping):
            raise _invalid("stream_options", "an object")
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise _invalid("stream_options.include_usage", "a boolean")
        include_usage = usage is True
    client_stream = stream is True
    return client_stream, client_stream and include_usage


def _n(payload: Mapping[str, Any]) -> int:
    n = payload.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise InvalidRequestError(f"'n' must be an integer from 1 to {MAX_N}", param="n")
    return n


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise _invalid("stop", "a string or an array of strings")
    if len(items) > MAX_STOPS:
        raise InvalidRequestError(
            f"'stop' takes at most {MAX_STOPS} strings", param="stop", code="too_many_stops"
        )
    for item in items:
        if len(item) > MAX_STOP_CHARS:
            raise InvalidRequestError(
                f"each 'stop' string must be at most {MAX_STOP_CHARS} characters", param="stop"
            )
    # An empty stop string cannot mean anything sensible: ignored, like a missing one.
    return tuple(dict.fromkeys(item for item in items if item))


def _forward_unknown(
    name: str, param: str, value: Any, forward_fields: Collection[str], out: dict[str, Any]
) -> None:
    """An unknown field: scalars under an identifier name go on, the rest only if listed."""
    scalar = is_number(value) or isinstance(value, bool)
    if (scalar and is_identifier(name)) or param in forward_fields:
        out[name] = value
    else:
        raise _unknown_refusal(param)


def _apply_rule(
    name: str,
    param: str,
    value: Any,
    rule: FieldRule,
    forward_fields: Collection[str],
    out: dict[str, Any],
) -> None:
    """Put ``value`` into ``out`` if its rule forwards it; refuse it if its rule refuses it."""
    if rule.rule is Rule.FORWARDED:
        if rule.kind is Kind.OBJECT and rule.keys is not None:
            if not isinstance(value, Mapping):
                raise _invalid(param, "an object")
            inner: dict[str, Any] = {}
            for key, item in value.items():
                if item is None:
                    continue
                inner_param = f"{param}.{shown(key)}"
                inner_rule = rule.keys.get(key)
                if inner_rule is None:
                    _forward_unknown(key, inner_param, item, forward_fields, inner)
                else:
                    _apply_rule(key, inner_param, item, inner_rule, forward_fields, inner)
            if inner:
                out[name] = inner
        elif rule.accepts(value):
            out[name] = value
        else:
            raise _invalid(param, rule.why)
    elif rule.rule in (Rule.REFUSED, Rule.INSIDE_ENCRYPTION):
        if rule.is_inert(value):
            return
        if rule.setting == FORWARD_FIELDS_SETTING and param in forward_fields:
            out[name] = value
            return
        raise refusal(param, rule)
    # ENCRYPTED, ENFORCED_LOCALLY and LOCAL_ONLY fields are handled by the caller or dropped.


# --- messages --------------------------------------------------------------------------------


def _part(part: Any, param: str) -> dict[str, Any]:
    if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
        raise _invalid(param, "an object with a string 'type'")
    kind = part["type"]
    part_rule = CONTENT_PART_TYPES.get(kind, UNKNOWN_PART_TYPE)
    if part_rule.rule is not Rule.ENCRYPTED:
        raise refusal(param, part_rule)
    keys = CONTENT_PART_KEYS[kind]
    # Unknown keys and OpenAI bookkeeping are stripped: the backend gets the keys it knows.
    return {
        key: value
        for key, value in part.items()
        if key in keys and keys[key].rule is Rule.ENCRYPTED
    }


def _content(value: Any, param: str) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return [_part(part, f"{param}[{j}]") for j, part in enumerate(value)]
    raise InvalidRequestError(f"{param} must be a string, an array or null", param=param)


def _message(message: Any, index: int) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise InvalidRequestError(f"{where} must be an object", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in MESSAGE_KEYS:
        raise InvalidRequestError(
            f"{where}.role must be one of {', '.join(sorted(ROLES))}", param=f"{where}.role"
        )
    keys = MESSAGE_KEYS[role]
    out: dict[str, Any] = {"role": role}
    for key, value in message.items():
        param = f"{where}.{shown(key)}"
        rule = keys.get(key, UNKNOWN_MESSAGE_KEY)
        if key == "role" or rule.rule is Rule.LOCAL_ONLY:
            continue
        if rule.rule is Rule.ENCRYPTED:
            out[key] = _content(value, param)
        elif value is not None:
            _apply_rule(key, param, value, rule, (), out)
    return out


def _messages(payload: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError(
            "'messages' is required and must be a non-empty array", param="messages"
        )
    return tuple(_message(message, i) for i, message in enumerate(messages))


_EMULATED_MESSAGE_KEYS = frozenset({"tool_calls", "function_call", "tool_call_id"})


def check_messages_for_emulation(payload: Any) -> None:
    """Apply the message policy to every message *except* the keys tool emulation consumes
    (``tool_calls``, ``function_call``, ``tool_call_id``, a function result's ``name``).

    Tool emulation rebuilds tool results and assistant messages with calls as text, which would
    silently drop anything else on them; this keeps the policy's answer for those keys (an
    unknown key holding text is a 400, not a silent drop). Malformed requests are left to
    :func:`parse_chat_request`.
    """
    messages = payload.get("messages") if isinstance(payload, Mapping) else None
    if not isinstance(messages, list):
        return
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in MESSAGE_KEYS:
            continue
        role = message["role"]
        _message(
            {
                key: value
                for key, value in message.items()
                if key not in _EMULATED_MESSAGE_KEYS and not (role == "function" and key == "name")
            },
            index,
        )


# --- the whole request -----------------------------------------------------------------------

# Validated by their own functions above; the table still gives their rule.
_OWN_CHECKS = frozenset({"model", "messages", "stream", "stream_options", "n", "stop"})


def parse_chat_request(
    payload: Any, *, forward_fields: Collection[str] = frozenset()
) -> ChatRequest:
    """The client's request after the field policy, or a 400 naming the field.

    ``forward_fields`` is ``privacy.forward_fields``: unknown fields (and ``logit_bias``,
    ``stop_token_ids``, ``venice_parameters.<key>``) to send in plaintext anyway.
    """
    if not isinstance(payload, Mapping):
        raise InvalidRequestError("the request body must be a JSON object")
    model = _model(payload)
    messages = _messages(payload)
    client_stream, include_usage = _stream(payload)
    n = _n(payload)
    stops = _stops(payload.get("stop"))
    forwarded: dict[str, Any] = {}
    if payload.get("n") is not None:
        forwarded["n"] = n
    for name, value in payload.items():
        if name in _OWN_CHECKS or value is None:
            continue
        rule = REQUEST_FIELDS.get(name)
        if rule is None:
            _forward_unknown(name, shown(name), value, forward_fields, forwarded)
        else:
            _apply_rule(name, name, value, rule, forward_fields, forwarded)
    return ChatRequest(
        model=model,
        messages=messages,
        forwarded=forwarded,
        client_stream=client_stream,
        include_usage=include_usage,
        n=n,
        stops=stops,
    )


# --- encoding --------------------------------------------------------------------------------


def parses_as_json_array(text: str) -> bool:
    """Whether a server that ``json.loads`` decrypted content would turn ``text`` into a list."""
    if not text.lstrip(" \t\r\n").startswith("["):
        return False
    try:
        return isinstance(json.loads(text), list)
    except RecursionError:
        return True  # deeper than we parse: wrap it rather than guess
    except ValueError:
        return False


def _seal_content(
    model_key: bytes, content: Any, index: int, fresh: Callable[[], KeyPair]
) -> str | None:
    if content is None:
        return None
    if isinstance(content, str) and not parses_as_json_array(content):
        text = content
    else:
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    try:
        return seal_text(model_key, text, ephemeral=fresh())
    except UnicodeEncodeError as exc:
        # A lone surrogate escape in the client's JSON has no UTF-8 form.
        param = f"messages[{index}].content"
        raise InvalidRequestError(f"{param} is not valid Unicode", param=param) from exc


def _upstream_body(
    request: ChatRequest, upstream_model: str, messages: list[Any]
) -> dict[str, Any]:
    return {
        "model": upstream_model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        **request.forwarded,
    }


def encrypt_request(
    request: ChatRequest,
    *,
    model_key: bytes,
    upstream_model: str,
    client_keys: KeyPair | None = None,
    fresh: Callable[[], KeyPair] = generate_keypair,
) -> EncryptedRequest:
    """The upstream E2EE request for one attempt. ``model_key`` is the attested enclave key
    (65, 64 or 33 bytes). Every key pair is fresh and used once: the client's (unless
    ``client_keys`` is given, for tests) and one ephemeral per sealed message, each from
    ``fresh`` (:meth:`proxy.core.crypto.FreshKeys.take` hands out pairs made ahead)."""
    model_public = parse_public_key(model_key)
    keys = client_keys if client_keys is not None else fresh()
    messages: list[Any] = []
    for index, message in enumerate(request.messages):
        sealed: dict[str, Any] = {"role": message["role"]}
        if "content" in message:
            sealed["content"] = _seal_content(model_public, message["content"], index, fresh)
        messages.append(sealed)
    headers = {
        CLIENT_KEY_HEADER: keys.public_hex,
        MODEL_KEY_HEADER: model_public.hex(),
        SIGNING_ALGO_HEADER: SIGNING_ALGO,
    }
    return EncryptedRequest(_upstream_body(request, upstream_model, messages), headers, keys)


def plaintext_body(request: ChatRequest, *, upstream_model: str) -> dict[str, Any]:
    """The upstream request for a passthrough model: the same policy, no encryption."""
    return _upstream_body(request, upstream_model, [dict(m) for m in request.messages])
