"""The chat request and response fields the installed ``openai`` package knows, with sample values.

The field-policy tests enumerate from here, so a field a new ``openai`` release adds is tested
(and must be given a rule in :mod:`proxy.core.fields`) without anyone remembering to.

- :func:`request_fields`: every top-level field of ``CompletionCreateParams`` (``stream``
  included) and its type;
- :func:`message_types`: role -> the message ``TypedDict`` of that role;
- :func:`content_part_types`: part type -> (the role that declares it, the part ``TypedDict``);
- :func:`samples`: values of a type with ``text`` in every place a string can go (one value
  per branch of a union; a ``Literal`` gives its first value);
- :func:`response_fields`: the pydantic fields of ``ChatCompletionChunk``, its ``Choice`` and
  ``ChoiceDelta``, and of ``ChatCompletion``'s ``Choice`` and ``ChatCompletionMessage``.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

import typing_extensions
from openai.types.chat import completion_create_params

NONE_TYPE = type(None)


def _hints(typed_dict: Any) -> dict[str, Any]:
    return typing.get_type_hints(typed_dict)


def request_fields() -> dict[str, Any]:
    """Field name -> type, for every top-level chat completion request field."""
    hints = _hints(completion_create_params.CompletionCreateParamsStreaming)
    hints.update(_hints(completion_create_params.CompletionCreateParamsNonStreaming))
    hints["stream"] = bool | None  # Literal[True] in one, Literal[False] in the other
    return hints


def _union_members(tp: Any) -> list[Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [member for member in typing.get_args(tp) if member is not NONE_TYPE]
    return [tp]


def _item_type(tp: Any) -> Any:
    """The element type of an Iterable / Sequence / List hint."""
    (item,) = typing.get_args(tp)
    return item


def message_types() -> dict[str, Any]:
    """Role -> message TypedDict."""
    messages = request_fields()["messages"]
    out: dict[str, Any] = {}
    for member in _union_members(_item_type(messages)):
        (role,) = typing.get_args(_hints(member)["role"])
        out[role] = member
    return out


def content_part_types() -> dict[str, tuple[str, Any]]:
    """Part type -> (a role whose content may hold it, the part TypedDict)."""
    out: dict[str, tuple[str, Any]] = {}
    for role, message in message_types().items():
        for content in _union_members(_hints(message).get("content", str)):
            if typing.get_origin(content) not in (
                collections.abc.Iterable,
                collections.abc.Sequence,
                list,
            ):
                continue
            for part in _union_members(_item_type(content)):
                (kind,) = typing.get_args(_hints(part)["type"])
                out.setdefault(kind, (role, part))
    return out


def samples(tp: Any, text: str, depth: int = 0) -> list[Any]:
    """Values of type ``tp`` with ``text`` wherever a string can go (one per union branch)."""
    if depth > 8:
        return [text]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [value for member in _union_members(tp) for value in samples(member, text, depth)]
    if origin is typing.Literal:
        return [typing.get_args(tp)[0]]
    if tp is str:
        return [text]
    if tp is bool:
        return [True]
    if tp is int:
        return [3]
    if tp is float:
        return [0.5]
    if tp in (object, typing.Any):
        return [text]
    if origin in (collections.abc.Iterable, collections.abc.Sequence, list):
        return [[value] for value in samples(_item_type(tp), text, depth + 1)]
    if origin in (dict, collections.abc.Mapping):
        _key, value_type = typing.get_args(tp)
        return [{text: samples(value_type, text, depth + 1)[0]}]
    if typing_extensions.is_typeddict(tp):
        return [{k: samples(v, text, depth + 1)[0] for k, v in _hints(tp).items()}]
    raise TypeError(f"no sample for {tp!r}")


def response_fields() -> dict[str, set[str]]:
    """Level -> field names of OpenAI's response models."""
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from openai.types.chat.chat_completion import Choice as CompletionChoice
    from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta
    from openai.types.chat.chat_completion_message import ChatCompletionMessage

    return {
        "chunk": set(ChatCompletionChunk.model_fields) | set(ChatCompletion.model_fields),
        "choice": set(Choice.model_fields) | set(CompletionChoice.model_fields),
        "message": set(ChoiceDelta.model_fields) | set(ChatCompletionMessage.model_fields),
    }
