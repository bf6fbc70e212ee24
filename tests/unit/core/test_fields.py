"""The field policy itself: complete against the installed ``openai`` package, consistent, and
the README's table is the policy's own rendering."""

from __future__ import annotations

import typing
from pathlib import Path
from types import MappingProxyType

import pytest

from proxy.core import fields
from proxy.core.fields import (
    CONTENT_PART_KEYS,
    CONTENT_PART_TYPES,
    FORWARD_FIELDS_SETTING,
    MESSAGE_KEYS,
    REQUEST_FIELDS,
    RESPONSE_CHOICE,
    RESPONSE_CHUNK,
    RESPONSE_MESSAGE,
    TOOLS_SETTING,
    VENICE_PARAMETERS,
    FieldRule,
    Kind,
    Rule,
    forward_fields_problem,
    holds_text,
    policy_markdown,
    same_json,
    value_of_kind,
)
from tests.support.openai_types import (
    content_part_types,
    message_types,
    request_fields,
    response_fields,
)

README = Path(__file__).resolve().parents[3] / "README.md"
BEGIN, END = "<!-- fields:begin -->\n", "<!-- fields:end -->"


def test_every_openai_request_field_has_a_rule() -> None:
    unknown = sorted(set(request_fields()) - set(REQUEST_FIELDS))
    assert not unknown, (
        f"the installed openai package has request fields the policy does not know: {unknown}; "
        "give each a rule in proxy/core/fields.py (REQUEST_FIELDS)"
    )


def test_every_openai_message_key_has_a_rule() -> None:
    for role, message in message_types().items():
        assert role in MESSAGE_KEYS, f"new message role {role!r}: add it to MESSAGE_KEYS"
        unknown = sorted(set(typing.get_type_hints(message)) - set(MESSAGE_KEYS[role]))
        assert not unknown, f"{role} messages have keys without a rule: {unknown}"


def test_every_openai_content_part_and_key_has_a_rule() -> None:
    for kind, (_role, part) in content_part_types().items():
        assert kind in CONTENT_PART_TYPES, f"new content part type {kind!r}"
        unknown = sorted(set(typing.get_type_hints(part)) - set(CONTENT_PART_KEYS[kind]))
        assert not unknown, f"{kind} parts have keys without a rule: {unknown}"


def test_every_openai_response_field_has_a_rule() -> None:
    known = response_fields()
    for level, table in (
        ("chunk", RESPONSE_CHUNK),
        ("choice", RESPONSE_CHOICE),
        ("message", RESPONSE_MESSAGE),
    ):
        unknown = sorted(known[level] - set(table))
        assert not unknown, f"OpenAI {level} fields without a response rule: {unknown}"


def _all_request_rules() -> list[tuple[str, FieldRule]]:
    rules = [(name, rule) for name, rule in REQUEST_FIELDS.items()]
    rules += [(f"venice_parameters.{n}", r) for n, r in VENICE_PARAMETERS.items()]
    rules += [(f"{role}.{n}", r) for role, keys in MESSAGE_KEYS.items() for n, r in keys.items()]
    rules += [(f"part {n}", r) for n, r in CONTENT_PART_TYPES.items()]
    rules += [(f"{t}.{n}", r) for t, keys in CONTENT_PART_KEYS.items() for n, r in keys.items()]
    return rules


@pytest.mark.parametrize(("name", "rule"), _all_request_rules())
def test_rules_are_consistent(name: str, rule: FieldRule) -> None:
    assert rule.why.strip(), name
    if rule.rule is Rule.FORWARDED:
        # Forwarded means "proven to carry no user text": a value kind is declared (only the
        # model id, checked against the catalogue, is a free string).
        assert rule.kind is not Kind.ANY or name == "model", name
        assert not rule.inert, name
    if rule.rule is Rule.INSIDE_ENCRYPTION:
        assert rule.setting == TOOLS_SETTING, name
    if rule.rule is Rule.REFUSED:
        assert rule.setting in (None, FORWARD_FIELDS_SETTING), name
        assert "setting" not in rule.why, f"{name}: the refusal itself says what allows it"
    if rule.rule not in (Rule.REFUSED, Rule.INSIDE_ENCRYPTION):
        assert rule.setting is None, name
        assert not rule.inert, name


def test_inert_values_are_fixed_constants() -> None:
    # An inert value is matched exactly; "type": "text" is the only string one can hold.
    for name, rule in _all_request_rules():
        for value in rule.inert:
            assert value in ([], {}, "none", "off", True, False, 0, ["text"], {"type": "text"}), (
                name
            )


def test_inert_matching_is_exact_json() -> None:
    rule = REQUEST_FIELDS["logprobs"]
    assert rule.is_inert(False)
    assert not rule.is_inert(0)  # 0 is not false
    assert not REQUEST_FIELDS["top_logprobs"].is_inert(False)
    assert REQUEST_FIELDS["response_format"].is_inert({"type": "text"})
    assert not REQUEST_FIELDS["response_format"].is_inert({"type": "text", "x": 1})


def test_holds_text_looks_at_values_only() -> None:
    assert holds_text("x")
    assert not holds_text("")
    assert holds_text([{"a": ["x"]}])
    assert not holds_text({"any key": [1, None, True, {"k": ""}]})


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("some_new_field", None),
        ("logit_bias", None),
        ("stop_token_ids", None),
        ("venice_parameters.some_new_key", None),
        ("user", "has its own rule (local only)"),
        ("temperature", "has its own rule (forwarded)"),
        ("tools", "has its own rule (inside encryption)"),
        ("venice_parameters.enable_web_search", "has its own rule (refused)"),
        ("metadata.key", "only 'venice_parameters.<key>'"),
        ("Upper", "not a lower-case field name"),
    ],
)
def test_what_forward_fields_may_list(name: str, problem: str | None) -> None:
    found = forward_fields_problem(name)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_response_text_fields_are_the_decrypted_ones() -> None:
    assert fields.RESPONSE_TEXT_FIELDS == ("content", "reasoning_content", "reasoning")


def test_readme_table_is_the_policy() -> None:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text
    assert END in text
    table = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    assert table == policy_markdown(), (
        "README.md's field table differs from proxy/core/fields.py; regenerate it with\n"
        "  python -c 'from proxy.core.fields import policy_markdown; print(policy_markdown())'\n"
        "and paste it between the fields:begin / fields:end markers"
    )


# --- pinned by mutation testing ----------------------------------------------------------------


def test_same_json_ignores_key_order_only() -> None:
    assert same_json({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert same_json({"b": 2, "a": 1}, {"a": 1, "b": 2})
    assert not same_json({"a": 1}, {"a": True})


def test_holds_text_in_any_mapping() -> None:
    assert holds_text(MappingProxyType({"k": "x"}))
    assert not holds_text(MappingProxyType({"k": ""}))
    assert not holds_text(MappingProxyType({"k": 5}))
    assert holds_text(("", ["x"]))
    assert not holds_text(None)
    assert not holds_text(1.5)


@pytest.mark.parametrize(
    ("value", "kind", "accepted"),
    [
        ({"a": 1}, Kind.OBJECT, True),
        (MappingProxyType({}), Kind.OBJECT, True),
        ([], Kind.OBJECT, False),
        ("text", Kind.OBJECT, False),
        ("anything", Kind.ANY, True),
        (None, Kind.ANY, True),
        (True, Kind.INTEGER, False),
        (2, Kind.INTEGER, True),
        (1.0, Kind.NUMBER, True),
        (False, Kind.NUMBER, False),
        (0, Kind.BOOLEAN, False),
    ],
)
def test_value_of_kind(value: object, kind: Kind, accepted: bool) -> None:
    assert value_of_kind(value, kind) is accepted


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("user", "'user' has its own rule (local only) that this setting does not change"),
        (
            "venice_parameters.enable_web_search",
            "'venice_parameters.enable_web_search' has its own rule (refused) that this setting "
            "does not change",
        ),
        ("metadata.key", "'metadata.key': only 'venice_parameters.<key>' may be given with a dot"),
        (
            "venice_parameters.Key",
            "'venice_parameters.Key': only 'venice_parameters.<key>' may be given with a dot",
        ),
        ("Upper", "'Upper' is not a lower-case field name"),
    ],
)
def test_what_forward_fields_may_not_list_is_explained(name: str, problem: str) -> None:
    assert forward_fields_problem(name) == problem
