"""Validate tool-call arguments and structured answers against the request's JSON Schemas. Pure.

- Schemas are checked once, when the request is prepared (:func:`compile_schema`): an invalid
  schema is the client's error (400, naming the parameter). The dialect follows ``$schema``,
  defaulting to draft 2020-12 (what OpenAI's ``strict`` subset is a part of).
- A call is invalid when its name is not a declared tool, its arguments are not a JSON object,
  or they fail the tool's ``parameters`` schema (a tool without ``parameters`` accepts any
  object).
- A structured answer is the first JSON value of the text (a ```json fence and prose around it
  are tolerated); it must parse, and with a schema it must validate.

Every problem has two texts: ``reask`` goes back to the model inside the encrypted re-ask and
may quote the offending values (they came from the model); ``client`` is for the client's error
message and names only the JSON path and the failing keyword. Neither is ever logged.

Deliberately not checked: ``format`` (dates, e-mails: jsonschema does not assert them by
default), and ``$ref`` to documents outside the schema (never fetched; a schema that needs one
is applied as far as it resolves and the call is accepted).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema.exceptions
import referencing.exceptions
from jsonschema import Draft202012Validator, validators
from jsonschema.protocols import Validator

from proxy.core.errors import InvalidRequestError
from proxy.core.tools.formats import ParsedCall, decode_prefix, loads, strip_fence

MAX_REPORTED = 3


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a call or an answer was rejected (see the module docstring for the two texts)."""

    reask: str
    client: str


@dataclass(frozen=True, slots=True)
class CompiledSchema:
    """A checked JSON Schema's validator (the schema itself is ``validator.schema``)."""

    validator: Validator = field(repr=False)

    def problems(self, instance: Any, *, where: str) -> list[Problem]:
        """Up to :data:`MAX_REPORTED` problems of ``instance``, most relevant first."""
        try:
            errors = sorted(
                self.validator.iter_errors(instance), key=jsonschema.exceptions.relevance
            )
        except (referencing.exceptions.Unresolvable, RecursionError):
            return []
        return [
            Problem(
                reask=f"{where}: at {error.json_path}: {error.message}",
                client=f"{where}: {error.json_path} fails '{error.validator}'",
            )
            for error in errors[:MAX_REPORTED]
        ]


SCHEMA_CACHE_SIZE = 256


def _compile_uncached(canonical: str) -> CompiledSchema | str:
    """A compiled schema, or the reason it is invalid."""
    schema = json.loads(canonical)
    cls = validators.validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        return f"is not a valid JSON Schema: {exc.message[:200]}"
    except RecursionError:
        return "is nested too deeply"
    return CompiledSchema(cls(schema))


# Cached: checking a schema against its metaschema costs milliseconds, and clients send the same
# tools with every request. (Wrapped here rather than decorated, so mutation testing reaches the
# function; its tests clear the cache.)
_compile_canonical = functools.lru_cache(maxsize=SCHEMA_CACHE_SIZE)(_compile_uncached)


def compile_schema(schema: Any, *, param: str) -> CompiledSchema:
    """Check ``schema`` and build its validator; :class:`InvalidRequestError` when it is not a
    valid JSON Schema (``param`` names the request field).

    The last :data:`SCHEMA_CACHE_SIZE` distinct schemas stay compiled in this process's memory
    (keyed by their canonical JSON; never logged or written anywhere).
    """
    if not isinstance(schema, Mapping):
        raise InvalidRequestError(f"'{param}' must be a JSON Schema object", param=param)
    try:
        canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise InvalidRequestError(f"'{param}' is not a valid JSON Schema", param=param) from None
    compiled = _compile_canonical(canonical)
    if isinstance(compiled, str):
        raise InvalidRequestError(f"'{param}' {compiled}", param=param)
    return compiled


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One declared function tool."""

    name: str
    description: str | None
    parameters: Mapping[str, Any] | None
    compiled: CompiledSchema | None = field(default=None, compare=False)


def validate_call(call: ParsedCall, tools: Mapping[str, ToolSpec], number: int) -> list[Problem]:
    """Problems of call ``number`` (1-based, for the messages); empty when it is valid."""
    where = f"tool call {number} ({call.name!r})"
    spec = tools.get(call.name)
    if spec is None:
        known = ", ".join(repr(name) for name in tools) or "none"
        return [
            Problem(
                reask=f"{where}: there is no tool named {call.name!r}; the tools are: {known}",
                client=f"tool call {number} names a tool that was not declared",
            )
        ]
    if not isinstance(call.arguments, dict):
        return [
            Problem(
                reask=f"{where}: the arguments must be a JSON object, "
                f"not {type(call.arguments).__name__}",
                client=f"{where}: the arguments are not a JSON object",
            )
        ]
    if spec.compiled is None:
        return []
    return spec.compiled.problems(call.arguments, where=where)


def extract_json(text: str) -> tuple[str, Any]:
    """The JSON value an answer holds, as (its text, its value).

    Tries the whole text (a fence removed), then the first ``{`` or ``[`` onwards.
    Raises :class:`ValueError` when there is none.
    """
    body = strip_fence(text.strip()).strip()
    try:
        return body, loads(body)
    except ValueError:
        pass
    starts = [pos for pos in (body.find("{"), body.find("[")) if pos != -1]
    if not starts:
        raise ValueError("the answer holds no JSON object")
    tail = body[min(starts) :]
    try:
        value, end = decode_prefix(tail)
    except ValueError as exc:
        raise ValueError(f"the answer is not valid JSON ({exc})") from None
    return tail[:end], value


@dataclass(frozen=True, slots=True)
class StructuredResult:
    """A structured answer: its JSON text (for the client) and value, or its problems."""

    text: str | None
    value: Any
    problems: tuple[Problem, ...]


def validate_structured(
    text: str, schema: CompiledSchema | None, *, require_object: bool = True
) -> StructuredResult:
    """Check a structured answer (``json_object`` when ``schema`` is None)."""
    try:
        json_text, value = extract_json(text)
    except ValueError as exc:
        return StructuredResult(
            None,
            None,
            (Problem(reask=str(exc), client="the answer is not valid JSON"),),
        )
    if require_object and schema is None and not isinstance(value, dict):
        return StructuredResult(
            None,
            None,
            (
                Problem(
                    reask="the answer must be a JSON object",
                    client="the answer is not a JSON object",
                ),
            ),
        )
    problems = schema.problems(value, where="the answer") if schema is not None else []
    return StructuredResult(json_text, value, tuple(problems))
