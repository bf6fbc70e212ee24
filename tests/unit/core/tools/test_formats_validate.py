"""Block readers (formats) and schema validation."""

from __future__ import annotations

import pytest

from proxy.core.errors import InvalidRequestError
from proxy.core.tools.formats import (
    CallSyntaxError,
    ParsedCall,
    coerce_value,
    json_values,
    loads,
    normalize_arguments,
    parse_glm_call,
    parse_tagged,
    strip_fence,
)
from proxy.core.tools.validate import (
    Problem,
    ToolSpec,
    compile_schema,
    extract_json,
    validate_call,
    validate_structured,
)

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = {"get_weather": ToolSpec("get_weather", None, SCHEMA, compile_schema(SCHEMA, param="p"))}


def test_strict_json() -> None:
    with pytest.raises(ValueError, match="NaN"):
        loads('{"a": NaN}')
    with pytest.raises(ValueError, match="deeply"):
        loads("[" * 100_000 + "]" * 100_000)
    assert json_values('{"a": 1}; {"b": 2},\n[3]') == [{"a": 1}, {"b": 2}, [3]]


def test_arguments_normalization() -> None:
    assert normalize_arguments('{"a": 1}') == {"a": 1}
    assert normalize_arguments("") == {}
    assert normalize_arguments("not json") == "not json"
    assert normalize_arguments([1]) == [1]


def test_value_coercion_follows_the_schema() -> None:
    assert coerce_value("42", {"type": "string"}) == "42"
    assert coerce_value(" 42 ", {"type": "integer"}) == 42
    assert coerce_value("True", {"type": "boolean"}) is True
    assert coerce_value("Paris", {"type": "integer"}) == "Paris"
    assert coerce_value("x", {"type": ["string", "null"]}) == "x"
    assert coerce_value("a", {"enum": ["a", "b"]}) == "a"
    assert coerce_value("[1, 2]", None) == [1, 2]


def test_fences() -> None:
    assert strip_fence('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_fence('```\n{"a": 1}') == '{"a": 1}'
    assert strip_fence("plain") == "plain"


@pytest.mark.parametrize(
    ("inner", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ('{"arguments": {}}', 'no "name"'),
        ("{not json", "not valid JSON"),
        ("<function=>\n</function>", "no function name"),
        ("<function=f>\n<parameter=>x</parameter>\n</function>", "has no name"),
        ("f\n<arg_key>a</arg_key>\n<arg_value>1", "pairs"),
        ("f\n<arg_key>a</arg_key><arg_value>1</arg_value> stray", "outside"),
        ('"quoted"', "function name"),
    ],
)
def test_malformed_tagged_blocks(inner: str, reason: str) -> None:
    with pytest.raises(CallSyntaxError, match=reason):
        parse_tagged(inner, known=None, schemas={})


def test_glm_values_are_typed_by_schema() -> None:
    schemas = {"f": {"properties": {"n": {"type": "integer"}, "s": {"type": "string"}}}}
    call = parse_glm_call(
        "f<arg_key>n</arg_key><arg_value>7</arg_value>"
        "<arg_key>s</arg_key><arg_value>007</arg_value>",
        schemas,
    )
    assert call == ParsedCall("f", {"n": 7, "s": "007"})


def test_validate_call() -> None:
    assert validate_call(ParsedCall("get_weather", {"city": "Paris"}), TOOLS, 1) == []
    unknown = validate_call(ParsedCall("nope", {}), TOOLS, 2)
    assert "no tool named 'nope'" in unknown[0].reask
    assert "nope" not in unknown[0].client
    not_object = validate_call(ParsedCall("get_weather", "Paris"), TOOLS, 1)
    assert "JSON object" in not_object[0].reask
    bad = validate_call(ParsedCall("get_weather", {"city": 3, "days": 0, "x": "SECRET"}), TOOLS, 1)
    assert 1 <= len(bad) <= 3
    assert any("3 is not of type 'string'" in p.reask for p in bad)
    for problem in bad:  # the client text names paths and keywords, never values
        assert "SECRET" not in problem.client
        assert "3 is" not in problem.client
    no_schema = {"f": ToolSpec("f", None, None)}
    assert validate_call(ParsedCall("f", {"anything": 1}), no_schema, 1) == []


def test_unresolvable_ref_is_accepted() -> None:
    schema = {"$ref": "https://example.invalid/schema.json"}
    compiled = compile_schema(schema, param="p")
    assert compiled.problems({"a": 1}, where="x") == []


def test_invalid_schema_is_a_400() -> None:
    with pytest.raises(InvalidRequestError) as info:
        compile_schema({"type": "float"}, param="tools[0].function.parameters")
    assert info.value.param == "tools[0].function.parameters"
    with pytest.raises(InvalidRequestError):
        compile_schema(["not", "a", "schema"], param="p")


def test_structured_answers() -> None:
    schema = compile_schema(SCHEMA, param="p")
    ok = validate_structured('```json\n{"city": "Oslo"}\n```', schema)
    assert ok.text == '{"city": "Oslo"}'
    assert ok.value == {"city": "Oslo"}
    assert not ok.problems
    prose = validate_structured('Sure! {"city": "Oslo", "days": 2} Enjoy.', schema)
    assert prose.text == '{"city": "Oslo", "days": 2}'
    assert not prose.problems
    wrong = validate_structured('{"days": 2}', schema)
    assert wrong.problems
    assert wrong.text == '{"days": 2}'
    broken = validate_structured('{"city": ', schema)
    assert broken.text is None
    assert broken.problems
    assert validate_structured("no json here", None).text is None
    assert validate_structured("[1, 2]", None).text is None  # json_object wants an object
    assert extract_json(" [1, 2] ")[1] == [1, 2]


def test_call_problems_say_what_the_model_must_fix_and_the_client_may_read() -> None:
    where = "tool call 2 ('nope')"
    assert validate_call(ParsedCall("nope", {}), TOOLS, 2) == [
        Problem(
            reask=f"{where}: there is no tool named 'nope'; the tools are: 'get_weather'",
            client="tool call 2 names a tool that was not declared",
        )
    ]
    two = {"a": ToolSpec("a", None, None), "b": ToolSpec("b", None, None)}
    assert "the tools are: 'a', 'b'" in validate_call(ParsedCall("c", {}), two, 1)[0].reask
    assert "the tools are: none" in validate_call(ParsedCall("c", {}), {}, 1)[0].reask
    assert validate_call(ParsedCall("get_weather", "Paris"), TOOLS, 1) == [
        Problem(
            reask="tool call 1 ('get_weather'): the arguments must be a JSON object, not str",
            client="tool call 1 ('get_weather'): the arguments are not a JSON object",
        )
    ]
    assert validate_call(ParsedCall("get_weather", {"city": 3}), TOOLS, 1) == [
        Problem(
            reask="tool call 1 ('get_weather'): at $.city: 3 is not of type 'string'",
            client="tool call 1 ('get_weather'): $.city fails 'type'",
        )
    ]


def test_schema_errors_name_the_parameter() -> None:
    with pytest.raises(InvalidRequestError) as info:
        compile_schema(["not", "a", "schema"], param="tools[1].function.parameters")
    assert info.value.param == "tools[1].function.parameters"
    assert info.value.message == "'tools[1].function.parameters' must be a JSON Schema object"
    for unserializable in ({"minimum": float("nan")}, {"enum": [object()]}):
        with pytest.raises(InvalidRequestError) as info:
            compile_schema(unserializable, param="p")
        assert info.value.param == "p"
        assert info.value.message == "'p' is not a valid JSON Schema"
    with pytest.raises(InvalidRequestError) as info:
        compile_schema({"type": "float"}, param="q")
    assert info.value.message.startswith("'q' is not a valid JSON Schema: ")


def test_the_same_schema_in_another_key_order_is_compiled_once() -> None:
    first = compile_schema({"type": "object", "required": ["a"]}, param="p")
    assert compile_schema({"required": ["a"], "type": "object"}, param="p") is first


def test_structured_answer_problems() -> None:
    assert validate_structured("[1, 2]", None).problems == (
        Problem(reask="the answer must be a JSON object", client="the answer is not a JSON object"),
    )
    assert validate_structured("no json here", None).problems == (
        Problem(reask="the answer holds no JSON object", client="the answer is not valid JSON"),
    )
    broken = validate_structured('Here: {"city": ', None).problems
    assert broken[0].reask.startswith("the answer is not valid JSON (")
    assert broken[0].client == "the answer is not valid JSON"
    schema = compile_schema(SCHEMA, param="p")
    assert validate_structured('{"days": 2}', schema).problems == (
        Problem(
            reask="the answer: at $: 'city' is a required property",
            client="the answer: $ fails 'required'",
        ),
    )


def test_the_first_json_value_of_an_answer_is_taken() -> None:
    assert extract_json('Result: {"a": {"b": 1}} ok') == ('{"a": {"b": 1}}', {"a": {"b": 1}})
    assert extract_json("Values: [[1], [2]] done.") == ("[[1], [2]]", [[1], [2]])
    assert extract_json('Pick [1] or {"a": 2}.') == ("[1]", [1])
    listed = validate_structured("Values: [1, 2].", None, require_object=False)
    assert (listed.text, listed.value, listed.problems) == ("[1, 2]", [1, 2], ())
