"""The proxy's field policy, checked again on the server side (strict mode). Pure.

Venice itself accepts far more than the proxy ever sends. With ``SimulatorState(proxy_policy=
True)`` (what the proxy's own tests use) the simulator also rejects any E2EE request that
breaks :mod:`proxy.core.fields`, so an end-to-end test proves the rule on the wire, not only in
the proxy's code:

- top level: ``model``; ``messages``; ``stream`` true; ``stream_options`` exactly
  ``{"include_usage": true}``; a forwarded field with a value of its kind (``venice_parameters``
  with forwarded keys only); an unknown field holding a number or a boolean under a lower-case
  identifier name, or one the test allowed (``extra_allowed``: what ``privacy.forward_fields``
  would forward). Anything else (``stop``, ``user``, ``tools``, ...) is a violation;
- every message: only ``role`` and ``content``; ``content`` null or a sealed blob (never a
  list, never plaintext, not even ``""``).

:func:`policy_violations` returns the offending paths (never their values). The app answers 400
``proxy policy violation`` and records the paths in ``SimulatorState.policy_violations``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from proxy.core.crypto import looks_like_ciphertext
from proxy.core.fields import (
    REQUEST_FIELDS,
    ROLES,
    Kind,
    Rule,
    is_identifier,
    is_number,
    same_json,
)

_STRUCTURE = frozenset({"model", "messages", "stream", "stream_options"})


def _scalar_unknown(name: str, value: Any) -> bool:
    return (is_number(value) or isinstance(value, bool)) and is_identifier(name)


def _top_level(name: str, value: Any, extra_allowed: Collection[str]) -> list[str]:
    if name == "model":
        return [] if isinstance(value, str) else [name]
    if name == "messages":
        return [] if isinstance(value, list) else [name]
    if name == "stream":
        return [] if value is True else [name]
    if name == "stream_options":
        return [] if same_json(value, {"include_usage": True}) else [name]
    if name in extra_allowed:
        return []
    rule = REQUEST_FIELDS.get(name)
    if rule is None:
        return [] if _scalar_unknown(name, value) else [name]
    if rule.rule is not Rule.FORWARDED:
        return [name]
    if rule.kind is Kind.OBJECT and rule.keys is not None:
        if not isinstance(value, Mapping) or not value:
            return [name]
        problems = []
        for key, item in value.items():
            path = f"{name}.{key}"
            inner = rule.keys.get(key)
            if path in extra_allowed:
                continue
            if inner is None:
                if not _scalar_unknown(key, item):
                    problems.append(path)
            elif inner.rule is not Rule.FORWARDED or not inner.accepts(item):
                problems.append(path)
        return problems
    return [] if rule.accepts(value) else [name]


def _message(message: Any, index: int) -> list[str]:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        return [where]
    problems = [f"{where}.{key}" for key in message if key not in ("role", "content")]
    if message.get("role") not in ROLES:
        problems.append(f"{where}.role")
    content = message.get("content")
    if content is not None and not (isinstance(content, str) and looks_like_ciphertext(content)):
        problems.append(f"{where}.content")
    return problems


def policy_violations(body: Mapping[str, Any], extra_allowed: Collection[str] = ()) -> list[str]:
    """Every path of an E2EE request body that the proxy's policy never sends (no values)."""
    problems: list[str] = []
    for name, value in body.items():
        problems += _top_level(name, value, extra_allowed)
    for name in sorted(_STRUCTURE):
        if name not in body:
            problems.append(name)
    messages = body.get("messages")
    if isinstance(messages, list):
        for index, message in enumerate(messages):
            problems += _message(message, index)
    return problems
