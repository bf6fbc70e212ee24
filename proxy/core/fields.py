"""THE privacy policy: one rule for every field of a chat request and of a response chunk. Pure.

Every field a client can send has exactly one :class:`Rule`; the request encoder
(:mod:`proxy.core.request`), the response rebuilder (:mod:`proxy.core.response`), the
aggregator, the simulator's strict checks and the README's field table all read these tables,
so the rule is written once.

Request rules:

- ``encrypted``: sealed to the attested enclave key (message content, every role);
- ``inside encryption``: carried inside the encrypted messages instead of the request (tools,
  tool results, structured outputs). The request encoder refuses such a field unless a
  preprocessor (tool emulation, :mod:`proxy.core.tools`, setting ``tools.mode``) consumed it
  first, so switching it on is that layer's job, not a change of this table;
- ``enforced locally``: the proxy does it on the decrypted answer (``stop``); never sent;
- ``local only``: OpenAI bookkeeping the proxy drops (``user``, ``metadata``, ...);
- ``forwarded``: sent unchanged, and only when its value is of the declared kind (a number, an
  integer, a boolean, or one of a fixed set of strings): proven to carry no user text;
- ``refused``: a 400 that names the field, says why and names the setting that allows it (or
  says that none does).

A JSON ``null`` is the same as an absent field (nothing is sent). A value listed in a field's
``inert`` tuple means "not used" (``logprobs: false``, ``tools: []``,
``response_format: {"type": "text"}``): it is dropped, not refused.

Unknown top-level fields (and unknown ``venice_parameters`` keys): a number or a boolean is
forwarded when its name is a lower-case identifier (a new sampling knob must not break
clients); anything else is refused unless its name is listed in ``privacy.forward_fields``
(``venice_parameters.<key>`` for a Venice parameter). Unknown message keys are refused; unknown
content-part types are refused; unknown keys of a known part type are stripped (the whole part
is encrypted anyway).

Response rules (each chunk is rebuilt from these tables, never patched):

- ``decrypted``: opened with the request's key; non-empty plaintext where a blob is expected
  ends the answer with an error;
- ``relayed``: metadata and structure, shape-checked;
- ``dropped``: harmless metadata the client never sees;
- ``refused``: a field that holds text the proxy did not decrypt (``refusal``, ``tool_calls``,
  logprob tokens, ...): null or empty is dropped, anything else ends the answer with an error.
  Unknown fields follow the same rule: holding a non-empty string anywhere ends the answer,
  otherwise (numbers, booleans, ids as numbers) they are dropped.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final


class Rule(enum.StrEnum):
    """What the proxy does with one request field."""

    ENCRYPTED = "encrypted"
    INSIDE_ENCRYPTION = "inside encryption"
    ENFORCED_LOCALLY = "enforced locally"
    LOCAL_ONLY = "local only"
    FORWARDED = "forwarded"
    REFUSED = "refused"


class Kind(enum.StrEnum):
    """The only values a forwarded field may hold."""

    NUMBER = "number"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    ENUM = "enum"
    OBJECT = "object"  # an object whose keys have rules of their own
    ANY = "any"  # not a forwarded field: no value check


class ResponseRule(enum.StrEnum):
    """What the proxy does with one field of an upstream chunk."""

    DECRYPTED = "decrypted"
    RELAYED = "relayed"
    DROPPED = "dropped"
    REFUSED = "refused"


FORWARD_FIELDS_SETTING: Final = "privacy.forward_fields"
# Venice's E2EE model ids start with this; such a model never gets a prompt in plaintext.
E2EE_PREFIX: Final = "e2ee-"
TOOLS_SETTING: Final = "tools.mode"


@dataclass(frozen=True, slots=True)
class FieldRule:
    """The rule of one field, why it has it, and what a forwarded value may be."""

    rule: Rule
    why: str
    kind: Kind = Kind.ANY
    values: tuple[str, ...] = ()
    inert: tuple[Any, ...] = ()
    setting: str | None = None
    keys: Mapping[str, FieldRule] | None = field(default=None, repr=False)

    def is_inert(self, value: Any) -> bool:
        """True when ``value`` means "not used" (dropped instead of refused)."""
        return any(same_json(value, inert) for inert in self.inert)

    def accepts(self, value: Any) -> bool:
        """True when ``value`` is of this forwarded field's kind."""
        return value_of_kind(value, self.kind, self.values)


@dataclass(frozen=True, slots=True)
class ResponseFieldRule:
    """The rule of one response field."""

    rule: ResponseRule
    why: str


def same_json(a: Any, b: Any) -> bool:
    """JSON equality (``true`` is not ``1``, ``0`` is not ``false``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def value_of_kind(value: Any, kind: Kind, values: tuple[str, ...] = ()) -> bool:
    """Whether ``value`` is a value of ``kind`` (for :attr:`Kind.ENUM`: one of ``values``)."""
    if kind is Kind.NUMBER:
        return is_number(value)
    if kind is Kind.INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is Kind.BOOLEAN:
        return isinstance(value, bool)
    if kind is Kind.ENUM:
        return isinstance(value, str) and value in values
    if kind is Kind.OBJECT:
        return isinstance(value, Mapping)
    return True


def holds_text(value: Any) -> bool:
    """True when ``value`` holds a non-empty string anywhere (as a value: object keys are
    structure, and a field the proxy drops never shows its keys to anyone)."""
    if isinstance(value, str):
        return value != ""
    if isinstance(value, dict):
        return any(holds_text(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(holds_text(item) for item in value)
    if value is None or isinstance(value, int | float):
        return False
    if isinstance(value, Mapping):
        return any(holds_text(item) for item in value.values())
    return False


IDENTIFIER: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


def is_identifier(name: str) -> bool:
    """A lower-case identifier: the only unknown field names the proxy forwards."""
    return IDENTIFIER.fullmatch(name) is not None


# --- request: top level ----------------------------------------------------------------------

_NUMBER = "a number"
_INTEGER = "an integer"
_BOOKKEEPING = "OpenAI bookkeeping; Venice has no use for it and it may name the user"
_CACHE = "OpenAI prompt-cache bookkeeping; Venice has no use for it"
_WEB_SEARCH = (
    "web search runs outside the enclave, on a query derived from the prompt "
    "(Venice disables it under E2EE)"
)
_TOOLS_LATER = (
    "carried inside the encrypted messages by tool emulation, for E2EE models with "
    'tools.mode = "emulate" only (not for plaintext models, with tools.mode = "refuse" or for '
    "a model in tools.disabled_models); sent as it is, Venice would read it"
)
_STRUCTURED_LATER = (
    "a structured-output schema: " + _TOOLS_LATER + ' ({"type": "text"} is accepted)'
)

REASONING_EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
VERBOSITIES: Final = ("low", "medium", "high")
ROLES: Final = ("system", "developer", "user", "assistant", "tool", "function")

MAX_N: Final = 128
MAX_STOPS: Final = 4
MAX_STOP_CHARS: Final = 256
MAX_MODEL_CHARS: Final = 256


def _forwarded(kind: Kind, why: str, values: tuple[str, ...] = ()) -> FieldRule:
    return FieldRule(Rule.FORWARDED, why, kind=kind, values=values)


def _local(why: str) -> FieldRule:
    return FieldRule(Rule.LOCAL_ONLY, why)


def _refused(why: str, *, inert: tuple[Any, ...] = (), setting: str | None = None) -> FieldRule:
    return FieldRule(Rule.REFUSED, why, inert=inert, setting=setting)


def _inside(why: str, *, inert: tuple[Any, ...] = ()) -> FieldRule:
    return FieldRule(Rule.INSIDE_ENCRYPTION, why, inert=inert, setting=TOOLS_SETTING)


VENICE_PARAMETERS: Final[Mapping[str, FieldRule]] = {
    "strip_thinking_response": _forwarded(Kind.BOOLEAN, "a boolean"),
    "disable_thinking": _forwarded(Kind.BOOLEAN, "a boolean"),
    "include_venice_system_prompt": _forwarded(
        Kind.BOOLEAN, "a boolean (under E2EE Venice adds no system prompt)"
    ),
    "enable_e2ee": _refused(
        "the proxy always uses end-to-end encryption (true is accepted and not sent)",
        inert=(True,),
    ),
    "character_slug": _refused(
        "a Venice character adds its own prompt outside the enclave; the slug is text"
    ),
    "enable_web_search": _refused(
        _WEB_SEARCH + ' ("off" is accepted and not sent)', inert=("off",)
    ),
    "enable_web_scraping": _refused(
        "scraping fetches URLs found in the prompt, outside the enclave", inert=(False,)
    ),
    "enable_web_citations": _refused(_WEB_SEARCH, inert=(False,)),
    "include_search_results_in_stream": _refused(_WEB_SEARCH, inert=(False,)),
    "return_search_results_as_documents": _refused(_WEB_SEARCH, inert=(False,)),
}

REQUEST_FIELDS: Final[Mapping[str, FieldRule]] = {
    # The conversation.
    "messages": FieldRule(
        Rule.ENCRYPTED,
        "each message's content is sealed to the attested enclave key; its other keys follow "
        "the message table",
    ),
    "model": _forwarded(
        Kind.ANY,
        "the Venice model id, after aliases; it must exist upstream, and a Venice feature "
        "suffix (model:key=value) is refused",
    ),
    # How the proxy talks to Venice.
    "stream": _local(
        "the proxy always streams from Venice (E2EE requires it) and answers in the shape the "
        "client asked for"
    ),
    "stream_options": _local(
        'the proxy sends its own {"include_usage": true}; include_usage decides whether the '
        "client gets the usage chunk"
    ),
    "stop": FieldRule(
        Rule.ENFORCED_LOCALLY,
        f"up to {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters: the proxy cuts the "
        'decrypted answer at the first one, ends it with finish_reason "stop" and closes the '
        "upstream; never sent",
    ),
    # Sampling: numbers, integers and enums carry no user text.
    "temperature": _forwarded(Kind.NUMBER, _NUMBER),
    "top_p": _forwarded(Kind.NUMBER, _NUMBER),
    "frequency_penalty": _forwarded(Kind.NUMBER, _NUMBER),
    "presence_penalty": _forwarded(Kind.NUMBER, _NUMBER),
    "max_tokens": _forwarded(Kind.INTEGER, _INTEGER),
    "max_completion_tokens": _forwarded(Kind.INTEGER, _INTEGER),
    "n": _forwarded(Kind.INTEGER, f"an integer from 1 to {MAX_N}"),
    "seed": _forwarded(Kind.INTEGER, _INTEGER),
    "reasoning_effort": _forwarded(
        Kind.ENUM, "one of " + ", ".join(REASONING_EFFORTS), REASONING_EFFORTS
    ),
    "verbosity": _forwarded(Kind.ENUM, "one of " + ", ".join(VERBOSITIES), VERBOSITIES),
    # Venice's own sampling knobs (documented on its chat completions endpoint).
    "top_k": _forwarded(Kind.INTEGER, _INTEGER),
    "min_p": _forwarded(Kind.NUMBER, _NUMBER),
    "min_temp": _forwarded(Kind.NUMBER, _NUMBER),
    "max_temp": _forwarded(Kind.NUMBER, _NUMBER),
    "repetition_penalty": _forwarded(Kind.NUMBER, _NUMBER),
    "venice_parameters": FieldRule(
        Rule.FORWARDED,
        "only the keys the Venice-parameters table forwards; an object left empty is not sent",
        kind=Kind.OBJECT,
        keys=VENICE_PARAMETERS,
    ),
    # OpenAI bookkeeping.
    "user": _local(_BOOKKEEPING),
    "metadata": _local(_BOOKKEEPING),
    "safety_identifier": _local(_BOOKKEEPING),
    "store": _local(_BOOKKEEPING),
    "service_tier": _local(_BOOKKEEPING),
    "prompt_cache_key": _local(_CACHE),
    "prompt_cache_options": _local(_CACHE),
    "prompt_cache_retention": _local(_CACHE),
    # Tools and structured outputs: inside the encryption, once emulation exists.
    "tools": _inside("tool definitions: " + _TOOLS_LATER, inert=([],)),
    "tool_choice": _inside("the tool choice: " + _TOOLS_LATER, inert=("none",)),
    "parallel_tool_calls": _inside(
        "a tool-calling option: " + _TOOLS_LATER + " (true or false without tools: ignored)",
        inert=(True, False),
    ),
    "functions": _inside("function definitions: " + _TOOLS_LATER, inert=([],)),
    "function_call": _inside("the function choice: " + _TOOLS_LATER, inert=("none",)),
    "response_format": _inside(_STRUCTURED_LATER, inert=({"type": "text"},)),
    # Refused: their data would travel, or come back, in plaintext.
    "logprobs": _refused(
        "the backend would return the answer's tokens in plaintext beside the encrypted "
        "content (false is accepted)",
        inert=(False,),
    ),
    "top_logprobs": _refused(
        "the backend would return the answer's tokens in plaintext beside the encrypted "
        "content (0 is accepted)",
        inert=(0,),
    ),
    "logit_bias": _refused(
        "its token ids name the words the answer should favour or avoid, in plaintext",
        inert=({},),
        setting=FORWARD_FIELDS_SETTING,
    ),
    "stop_token_ids": _refused(
        "its token ids name the words at which to stop, in plaintext",
        inert=([],),
        setting=FORWARD_FIELDS_SETTING,
    ),
    "web_search_options": _refused(_WEB_SEARCH),
    "audio": _refused(
        "spoken output: its audio and transcript would come back outside the encryption"
    ),
    "modalities": _refused(
        "only text is end-to-end encrypted; audio output would come back in plaintext "
        '(["text"] is accepted)',
        inert=(["text"],),
    ),
    "prediction": _refused("the predicted output is text that would travel in plaintext"),
    "moderation": _refused(
        "OpenAI's moderation does not run on Venice and the proxy will not pretend it did"
    ),
}

UNKNOWN_FIELD_WHY: Final = (
    "an unknown field: a number or a boolean is forwarded (under a lower-case identifier "
    "name); anything that can hold text is refused unless listed in privacy.forward_fields"
)


# --- request: messages and content parts ------------------------------------------------------

_CONTENT = FieldRule(
    Rule.ENCRYPTED,
    'sealed to the enclave key whatever its type: a string ("" included; a string that '
    "parses as a JSON array is sent as one text part), or an array of parts as one JSON text",
)
_ROLE = _forwarded(Kind.ENUM, "one of " + ", ".join(ROLES), ROLES)
_NAME = _local("a participant name: dropped, the backends would receive it unencrypted")

MESSAGE_KEYS: Final[Mapping[str, Mapping[str, FieldRule]]] = {
    "system": {"role": _ROLE, "content": _CONTENT, "name": _NAME},
    "developer": {"role": _ROLE, "content": _CONTENT, "name": _NAME},
    "user": {"role": _ROLE, "content": _CONTENT, "name": _NAME},
    "assistant": {
        "role": _ROLE,
        "content": _CONTENT,
        "name": _NAME,
        "refusal": _local("an earlier refusal: dropped, it would travel unencrypted"),
        "reasoning_content": _local(
            "earlier reasoning: dropped (not every backend decrypts it, and answers do not need it)"
        ),
        "reasoning": _local(
            "earlier reasoning: dropped (not every backend decrypts it, and answers do not need it)"
        ),
        "tool_calls": _inside("earlier tool calls: " + _TOOLS_LATER, inert=([],)),
        "function_call": _inside("an earlier function call: " + _TOOLS_LATER),
        "audio": _refused("a reference to earlier audio output, which is not end-to-end encrypted"),
    },
    "tool": {
        "role": _ROLE,
        "content": _CONTENT,
        "tool_call_id": _inside("a tool result: " + _TOOLS_LATER),
    },
    "function": {
        "role": _ROLE,
        "content": _CONTENT,
        "name": _inside("a function result: " + _TOOLS_LATER),
    },
}

UNKNOWN_MESSAGE_KEY: Final = _refused(
    "an unknown message key: the backends would receive it unencrypted"
)

_PART_CACHE = _local("OpenAI prompt-cache bookkeeping: stripped before encryption")
_PART_TYPE = FieldRule(Rule.ENCRYPTED, "inside the encrypted content")

CONTENT_PART_TYPES: Final[Mapping[str, FieldRule]] = {
    "text": FieldRule(Rule.ENCRYPTED, "inside the encrypted content"),
    "image_url": FieldRule(
        Rule.ENCRYPTED,
        "inside the encrypted content; an http(s) URL is fetched by the backend, from the "
        "enclave, so that host sees the request",
    ),
    "input_audio": FieldRule(Rule.ENCRYPTED, "inside the encrypted content"),
    "refusal": FieldRule(Rule.ENCRYPTED, "inside the encrypted content (assistant history)"),
    "file": _refused("Venice refuses file parts under E2EE"),
}

CONTENT_PART_KEYS: Final[Mapping[str, Mapping[str, FieldRule]]] = {
    "text": {
        "type": _PART_TYPE,
        "text": FieldRule(Rule.ENCRYPTED, "inside the encrypted content"),
        "prompt_cache_breakpoint": _PART_CACHE,
    },
    "image_url": {
        "type": _PART_TYPE,
        "image_url": FieldRule(Rule.ENCRYPTED, "inside the encrypted content"),
        "prompt_cache_breakpoint": _PART_CACHE,
    },
    "input_audio": {
        "type": _PART_TYPE,
        "input_audio": FieldRule(Rule.ENCRYPTED, "inside the encrypted content"),
        "prompt_cache_breakpoint": _PART_CACHE,
    },
    "refusal": {
        "type": _PART_TYPE,
        "refusal": FieldRule(Rule.ENCRYPTED, "inside the encrypted content"),
    },
    "file": {
        "type": CONTENT_PART_TYPES["file"],
        "file": CONTENT_PART_TYPES["file"],
        "prompt_cache_breakpoint": CONTENT_PART_TYPES["file"],
    },
}

UNKNOWN_PART_TYPE: Final = _refused(
    "an unknown content-part type: what the backend does with it is unknown"
)
UNKNOWN_PART_KEY: Final = _local("an unknown key of a known part type: stripped before encryption")


# --- response ---------------------------------------------------------------------------------

_TEXT_NOT_DECRYPTED = (
    "text the proxy did not decrypt: null or empty is dropped, anything else ends the answer "
    "with an error"
)

RESPONSE_CHUNK: Final[Mapping[str, ResponseFieldRule]] = {
    "id": ResponseFieldRule(
        ResponseRule.RELAYED, "the completion id (a short token; anything else is dropped)"
    ),
    "object": ResponseFieldRule(
        ResponseRule.RELAYED, "set by the proxy: chat.completion.chunk / chat.completion"
    ),
    "created": ResponseFieldRule(ResponseRule.RELAYED, "an integer"),
    "model": ResponseFieldRule(ResponseRule.RELAYED, "the model id (a short token)"),
    "system_fingerprint": ResponseFieldRule(ResponseRule.RELAYED, "a short token"),
    "choices": ResponseFieldRule(
        ResponseRule.RELAYED, "an array of choices (anything else ends the answer)"
    ),
    "usage": ResponseFieldRule(
        ResponseRule.RELAYED,
        "OpenAI's token counts (numbers, and their details objects); other keys are dropped",
    ),
    "cost": ResponseFieldRule(ResponseRule.DROPPED, "Venice's price for the request, logged"),
    "service_tier": ResponseFieldRule(ResponseRule.DROPPED, "OpenAI bookkeeping"),
    "venice_parameters": ResponseFieldRule(
        ResponseRule.DROPPED,
        "Venice's echo of its parameters (web_search_citations that are not empty end the "
        "answer: a web search ran)",
    ),
    "obfuscation": ResponseFieldRule(
        ResponseRule.DROPPED, "OpenAI's random padding against length side channels"
    ),
    "metadata": ResponseFieldRule(ResponseRule.REFUSED, _TEXT_NOT_DECRYPTED),
    "moderation": ResponseFieldRule(ResponseRule.REFUSED, _TEXT_NOT_DECRYPTED),
    "prompt_logprobs": ResponseFieldRule(ResponseRule.REFUSED, _TEXT_NOT_DECRYPTED),
    "error": ResponseFieldRule(
        ResponseRule.REFUSED, "Venice's in-band error: ends the answer with an error"
    ),
}

RESPONSE_CHOICE: Final[Mapping[str, ResponseFieldRule]] = {
    "index": ResponseFieldRule(ResponseRule.RELAYED, "an integer >= 0"),
    "delta": ResponseFieldRule(ResponseRule.RELAYED, "the message table below (streams)"),
    "message": ResponseFieldRule(ResponseRule.RELAYED, "the message table below"),
    "finish_reason": ResponseFieldRule(
        ResponseRule.RELAYED,
        "stop, length or content_filter; any other value ends the answer with an error",
    ),
    "logprobs": ResponseFieldRule(ResponseRule.REFUSED, "token text: " + _TEXT_NOT_DECRYPTED),
    "stop_reason": ResponseFieldRule(
        ResponseRule.DROPPED, "the backend's stop token or string (vLLM)"
    ),
    "matched_stop": ResponseFieldRule(
        ResponseRule.DROPPED, "the backend's stop token or string (SGLang)"
    ),
    "text": ResponseFieldRule(
        ResponseRule.REFUSED, "completions-style text: " + _TEXT_NOT_DECRYPTED
    ),
}

RESPONSE_MESSAGE: Final[Mapping[str, ResponseFieldRule]] = {
    "role": ResponseFieldRule(ResponseRule.RELAYED, '"assistant" (anything else ends the answer)'),
    "content": ResponseFieldRule(
        ResponseRule.DECRYPTED,
        'a sealed string (or text parts with sealed text, joined); "" is relayed as is',
    ),
    "reasoning_content": ResponseFieldRule(ResponseRule.DECRYPTED, "a sealed string"),
    "reasoning": ResponseFieldRule(ResponseRule.DECRYPTED, "a sealed string"),
    "refusal": ResponseFieldRule(ResponseRule.REFUSED, _TEXT_NOT_DECRYPTED),
    "tool_calls": ResponseFieldRule(ResponseRule.REFUSED, _TEXT_NOT_DECRYPTED),
    "function_call": ResponseFieldRule(ResponseRule.REFUSED, _TEXT_NOT_DECRYPTED),
    "audio": ResponseFieldRule(ResponseRule.REFUSED, _TEXT_NOT_DECRYPTED),
    "annotations": ResponseFieldRule(ResponseRule.REFUSED, _TEXT_NOT_DECRYPTED),
}

UNKNOWN_RESPONSE_FIELD: Final = ResponseFieldRule(
    ResponseRule.REFUSED,
    "holding a non-empty string anywhere ends the answer with an error; otherwise dropped",
)

# The token counts relayed in ``usage`` (anything else in it is dropped, text ends the answer).
USAGE_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "prompt_tokens": (),
    "completion_tokens": (),
    "total_tokens": (),
    "prompt_tokens_details": ("cached_tokens", "audio_tokens"),
    "completion_tokens_details": (
        "reasoning_tokens",
        "audio_tokens",
        "accepted_prediction_tokens",
        "rejected_prediction_tokens",
    ),
}

RESPONSE_TEXT_FIELDS: Final = tuple(
    name for name, item in RESPONSE_MESSAGE.items() if item.rule is ResponseRule.DECRYPTED
)
FINISH_REASONS: Final = ("stop", "length", "content_filter")
# Where a choice carries its message: ``delta`` in a streamed chunk, ``message`` in a completion.
RESPONSE_CONTAINERS: Final = ("delta", "message")


def forward_fields_problem(name: str) -> str | None:
    """Why ``name`` cannot be listed in ``privacy.forward_fields`` (None when it can).

    Allowed: an unknown top-level field, ``venice_parameters.<unknown key>``, and the known
    fields whose refusal names that setting (``logit_bias``, ``stop_token_ids``).
    """
    top, dot, key = name.partition(".")
    if dot:
        if top != "venice_parameters" or not is_identifier(key):
            return f"{name!r}: only 'venice_parameters.<key>' may be given with a dot"
        rule = VENICE_PARAMETERS.get(key)
        label = name
    else:
        if not is_identifier(name):
            return f"{name!r} is not a lower-case field name"
        rule = REQUEST_FIELDS.get(name)
        label = name
    if rule is None or rule.setting == FORWARD_FIELDS_SETTING:
        return None
    return f"{label!r} has its own rule ({rule.rule}) that this setting does not change"


# --- the README table ------------------------------------------------------------------------


def _setting_cell(item: FieldRule) -> str:
    if item.rule not in (Rule.REFUSED, Rule.INSIDE_ENCRYPTION):
        return ""
    return f"`{item.setting}`" if item.setting else "none"


def _request_rows(table: Mapping[str, FieldRule], prefix: str = "") -> list[str]:
    return [
        f"| `{prefix}{name}` | {item.rule} | {item.why} | {_setting_cell(item)} |"
        for name, item in table.items()
    ]


def policy_markdown() -> str:
    """The field tables of the README, rendered from this module (a test keeps them equal)."""
    head = "| field | rule | why | setting that allows it |\n|---|---|---|---|"
    lines = ["**Request, top level**", "", head, *_request_rows(REQUEST_FIELDS)]
    lines.append(
        f"| any other field | forwarded or refused | {UNKNOWN_FIELD_WHY} | "
        f"`{FORWARD_FIELDS_SETTING}` |"
    )
    lines += ["", "**`venice_parameters`**", "", head]
    lines += _request_rows(VENICE_PARAMETERS, "venice_parameters.")
    lines.append(
        "| any other key | forwarded or refused | as an unknown top-level field "
        f"(listed as `venice_parameters.<key>`) | `{FORWARD_FIELDS_SETTING}` |"
    )
    lines += ["", "**Messages, per role**", "", head]
    for role, keys in MESSAGE_KEYS.items():
        lines += _request_rows(keys, f"{role}.")
    lines.append(
        f"| any other key | {UNKNOWN_MESSAGE_KEY.rule} | {UNKNOWN_MESSAGE_KEY.why} | none |"
    )
    lines += ["", "**Content parts (inside the encrypted content)**", "", head]
    for part, keys in CONTENT_PART_KEYS.items():
        lines.append(
            f"| `{part}` part | {CONTENT_PART_TYPES[part].rule} | "
            f"{CONTENT_PART_TYPES[part].why} | {_setting_cell(CONTENT_PART_TYPES[part])} |"
        )
        lines += [
            f"| `{part}.{name}` | {item.rule} | {item.why} | |"
            for name, item in keys.items()
            if name != "type" and item is not CONTENT_PART_TYPES[part]
        ]
    lines.append(
        f"| any other part type | {UNKNOWN_PART_TYPE.rule} | {UNKNOWN_PART_TYPE.why} | none |"
    )
    lines.append(
        f"| any other key of a part | {UNKNOWN_PART_KEY.rule} | {UNKNOWN_PART_KEY.why} | |"
    )
    response_head = "| field | rule | what |\n|---|---|---|"
    lines += ["", "**Response chunks (each rebuilt from these)**", "", response_head]
    for prefix, rules in (
        ("", RESPONSE_CHUNK),
        ("choices[].", RESPONSE_CHOICE),
        ("choices[].delta/message.", RESPONSE_MESSAGE),
    ):
        lines += [
            f"| `{prefix}{name}` | {item.rule} | {item.why} |" for name, item in rules.items()
        ]
    lines.append(
        f"| any other field | {UNKNOWN_RESPONSE_FIELD.rule} | {UNKNOWN_RESPONSE_FIELD.why} |"
    )
    return "\n".join(lines) + "\n"
