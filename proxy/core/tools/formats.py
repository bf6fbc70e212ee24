"""Read one delimited tool-call block as calls. Pure; the scanner (:mod:`.stream`) finds blocks.

Block kinds and what is read from them::

    tagged   <tool_call> INNER </tool_call>     INNER is any of:
               JSON      {"name": N, "arguments": A}  (also "parameters"), several objects
                         separated by whitespace / "," / ";", a JSON array of them,
                         {"tool_calls": [...]}, {"function": {"name", "arguments"}}, optionally
                         inside a ``` fence
               XML       <function=N><parameter=K>V</parameter>...</function>  (Qwen3-Coder,
                         Qwen3.5; several <function> blocks allowed)
               GLM       N\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>...  (GLM-4.5..5;
                         newlines optional, GLM-4.7 writes none)
    function <function=N>...</function> without the <tool_call> wrapper (XML as above)
    json     a bare JSON object or array in the text (Llama 3 JSON, xLAM, Mistral after
             [TOOL_CALLS], the JSON fallback convention)
    fence    a ``` fenced block holding such JSON, bare or with a language tag (```json,
             ```json5, ```tool_code: up to 16 ASCII letters, digits and "_+.-", see
             FENCE_LANGUAGE); it closes at the first ``` outside the JSON's strings, so an
             argument may hold code fences of its own

Arguments: a JSON object, or a JSON string that holds one (decoded once). Anything else is kept
as-is and left for validation to reject. XML/GLM values are typed from the tool's JSON Schema:
a ``string`` property keeps its raw text (Qwen XML: one leading and one trailing newline
removed), any other is read as JSON (``True``/``False``/``None`` accepted), else kept as text.

Untagged blocks (``json``, ``fence``) count as calls only when their shape is explicit
(``tool_calls`` / ``function`` wrappers) or their ``name`` is one of the request's tools *and*
they carry ``arguments``/``parameters``: JSON in an ordinary answer must not become a call.

Deliberately not read: Python-call syntax (``[f(x=1)]``), special-token formats whose markers
a text-only API strips (gpt-oss harmony channels, Kimi, DeepSeek), NaN/Infinity in JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

MAX_JSON_DEPTH = 64


class CallSyntaxError(ValueError):
    """A block that is meant to be a call could not be read. The message is for the re-ask
    (it goes back to the model inside the encryption) and names no values."""


@dataclass(frozen=True, slots=True)
class ParsedCall:
    """One call as the model wrote it: a name and its decoded arguments (any JSON value)."""

    name: str
    arguments: Any


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_JSON_SEPARATORS = " \t\r\n,;"


def loads(text: str) -> Any:
    """Strict JSON (no NaN/Infinity); :class:`ValueError` for anything else, deep nesting
    included."""
    try:
        value, end = _DECODER.raw_decode(text.strip())
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    if end != len(text.strip()):
        raise ValueError("extra data after the JSON value")
    return value


def decode_prefix(text: str) -> tuple[Any, int]:
    """The JSON value at the start of ``text`` and where it ends; :class:`ValueError` else."""
    try:
        value, end = _DECODER.raw_decode(text)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    return value, end


def json_values(text: str) -> list[Any]:
    """Every JSON value in ``text``, separated by whitespace, ``,`` or ``;``.

    Raises :class:`ValueError` (with json's position message) when any part is not JSON.
    """
    values: list[Any] = []
    pos = 0
    length = len(text)
    while True:
        while pos < length and text[pos] in _JSON_SEPARATORS:
            pos += 1
        if pos >= length:
            return values
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except RecursionError as exc:
            raise ValueError("JSON nested too deeply") from exc
        values.append(value)


def normalize_arguments(raw: Any) -> Any:
    """Arguments as written: an object stays, a string holding JSON is decoded once."""
    if isinstance(raw, str):
        stripped = raw.strip()
        if not stripped:
            return {}
        try:
            return loads(stripped)
        except ValueError:
            return raw
    return raw


_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")


def _call_from_object(
    obj: Mapping[str, Any], *, known: Container[str] | None, explicit: bool
) -> ParsedCall | None:
    """A call from one object, or None when the object is not call-shaped."""
    function = obj.get("function")
    if isinstance(function, Mapping) and isinstance(function.get("name"), str):
        return _call_from_object(function, known=known, explicit=True)
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    present = [key for key in _ARGUMENT_KEYS if key in obj]
    # Untagged JSON: only a declared tool with an arguments key is a call.
    if not explicit and (not present or (known is not None and name not in known)):
        return None
    raw = obj[present[0]] if present else {}
    return ParsedCall(name.strip(), normalize_arguments(raw))


def calls_from_value(
    value: Any, *, known: Container[str] | None, explicit: bool
) -> list[ParsedCall] | None:
    """Calls from a decoded JSON value; None when it is not call-shaped.

    ``explicit`` is true inside ``<tool_call>`` tags (any object with a name is a call).
    """
    if isinstance(value, Mapping):
        wrapped = value.get("tool_calls")
        if isinstance(wrapped, list) and wrapped:
            return calls_from_value(wrapped, known=known, explicit=True)
        call = _call_from_object(value, known=known, explicit=explicit)
        return [call] if call is not None else None
    if isinstance(value, list) and value:
        calls: list[ParsedCall] = []
        for item in value:
            if not isinstance(item, Mapping):
                return None
            call = _call_from_object(item, known=known, explicit=explicit)
            if call is None:
                return None
            calls.append(call)
        return calls
    return None


# A fence's language tag (empty, or the first word of a Markdown info string): up to 16 ASCII
# letters, digits and "_+.-", as language names are written (json5, tool_code, c++, objective-c,
# vb.net). A longer run of them is no tag. The scanner (:mod:`.stream`) uses the same pattern.
FENCE_LANGUAGE = re.compile(r"[A-Za-z0-9_+.-]{0,16}(?![A-Za-z0-9_+.-])")
_FENCE_OPEN = re.compile(rf"^\s*```{FENCE_LANGUAGE.pattern}[ \t]*\n?")
_FENCE_CLOSE = re.compile(r"\n?[ \t]*```\s*$")


def strip_fence(text: str) -> str:
    """The body of a ```-fenced block (the closing fence may be missing), or ``text``."""
    opening = _FENCE_OPEN.match(text)
    if opening is None:
        return text
    body = text[opening.end() :]
    closing = _FENCE_CLOSE.search(body)
    return body[: closing.start()] if closing else body


def parse_json_calls(
    text: str, *, known: Container[str] | None, explicit: bool
) -> list[ParsedCall] | None:
    """Calls from JSON text (one or more values); None when it is JSON but not calls.

    Raises :class:`CallSyntaxError` when the text is not JSON at all.
    """
    try:
        values = json_values(strip_fence(text))
    except ValueError as exc:
        raise CallSyntaxError(f"the tool call is not valid JSON ({exc})") from exc
    if not values:
        return None
    calls: list[ParsedCall] = []
    for value in values:
        found = calls_from_value(value, known=known, explicit=explicit)
        if found is None:
            return None
        calls.extend(found)
    return calls


def _property_schema(schema: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    if not isinstance(schema, Mapping):
        return None
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        prop = properties.get(key)
        if isinstance(prop, Mapping):
            return prop
    return None


def _is_string_property(prop: Mapping[str, Any] | None) -> bool:
    if prop is None:
        return False
    kind = prop.get("type")
    if kind == "string":
        return True
    if isinstance(kind, list):
        return [k for k in kind if k != "null"] == ["string"]
    return "enum" in prop and all(isinstance(v, str) for v in prop["enum"] or [None])


_PY_LITERALS = {"True": True, "False": False, "None": None}


def coerce_value(raw: str, prop: Mapping[str, Any] | None) -> Any:
    """A text value typed by its property schema (see the module docstring)."""
    if _is_string_property(prop):
        return raw
    text = raw.strip()
    if text in _PY_LITERALS:
        return _PY_LITERALS[text]
    try:
        return loads(text)
    except ValueError:
        return raw if prop is not None else text


_XML_FUNCTION = re.compile(r"<function=([^>\n]*)>(.*?)(?:</function>|\Z)", re.DOTALL)
_XML_PARAMETER = re.compile(
    r"<parameter=([^>\n]*)>(.*?)(?:</parameter>|(?=<parameter=)|(?=</function>)|\Z)", re.DOTALL
)


def _strip_one_newline(value: str) -> str:
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


def parse_xml_calls(text: str, schemas: Mapping[str, Mapping[str, Any] | None]) -> list[ParsedCall]:
    """Qwen3-Coder / Qwen3.5 ``<function=N><parameter=K>V</parameter></function>`` blocks."""
    calls: list[ParsedCall] = []
    for match in _XML_FUNCTION.finditer(text):
        name = match.group(1).strip()
        if not name:
            raise CallSyntaxError("a <function=...> tag has no function name")
        schema = schemas.get(name)
        arguments: dict[str, Any] = {}
        for param in _XML_PARAMETER.finditer(match.group(2)):
            key = param.group(1).strip()
            if not key:
                raise CallSyntaxError(f"a <parameter=...> tag of {name} has no name")
            prop = _property_schema(schema, key)
            value = param.group(2)
            if _is_string_property(prop):
                arguments[key] = _strip_one_newline(value)
            else:
                arguments[key] = coerce_value(_strip_one_newline(value), prop)
        calls.append(ParsedCall(name, arguments))
    if not calls:
        raise CallSyntaxError("no <function=...> block was found in the tool call")
    return calls


_GLM_PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)
_GLM_NAME = re.compile(r"^\s*([^\s<>{}\[\]\"']+)\s*(?=<arg_key>|\n|\Z)")


def parse_glm_call(text: str, schemas: Mapping[str, Mapping[str, Any] | None]) -> ParsedCall:
    """GLM ``NAME<arg_key>K</arg_key><arg_value>V</arg_value>...`` (newlines optional)."""
    match = _GLM_NAME.match(text)
    if match is None:
        raise CallSyntaxError("the tool call does not start with a function name")
    name = match.group(1)
    rest = text[match.end() :]
    pairs = _GLM_PAIR.findall(rest)
    if rest.count("<arg_key>") != len(pairs) or rest.count("<arg_value>") != len(pairs):
        raise CallSyntaxError(
            f"the arguments of {name} are not complete <arg_key>/<arg_value> pairs"
        )
    leftover = _GLM_PAIR.sub("", rest).strip()
    if leftover:
        raise CallSyntaxError(f"the call to {name} has text outside <arg_key>/<arg_value> pairs")
    schema = schemas.get(name)
    arguments: dict[str, Any] = {}
    for key, value in pairs:
        key = key.strip()
        arguments[key] = coerce_value(value, _property_schema(schema, key))
    return ParsedCall(name, arguments)


def parse_tagged(
    inner: str,
    *,
    known: Container[str] | None,
    schemas: Mapping[str, Mapping[str, Any] | None],
) -> list[ParsedCall]:
    """Calls from the inside of ``<tool_call>...</tool_call>`` (any of the three notations).

    Raises :class:`CallSyntaxError`: a tagged block is always meant as a call.
    """
    body = inner.strip()
    if not body:
        raise CallSyntaxError("the <tool_call> block is empty")
    if body.startswith("<function="):
        return parse_xml_calls(body, schemas)
    if body[0] in "{[`":
        calls = parse_json_calls(body, known=known, explicit=True)
        if not calls:
            raise CallSyntaxError('the tool call JSON has no "name" and "arguments"')
        return calls
    return [parse_glm_call(body, schemas)]


_CALL_HEAD = re.compile(r'^\s*[\[{]\s*\{?\s*"(?:name|tool_calls|function)"\s*:\s*"?([^"]*)')


def looks_like_call(text: str, known: Container[str] | None) -> bool:
    """Whether broken untagged JSON was most likely meant as a call (so it is re-asked rather
    than shown as text): it opens with ``tool_calls``/``function``, or with a declared name."""
    match = _CALL_HEAD.match(strip_fence(text) if text.lstrip().startswith("```") else text)
    if match is None:
        return False
    if '"tool_calls"' in text[: match.end()] or '"function"' in text[: match.end()]:
        return True
    return known is None or match.group(1) in known
