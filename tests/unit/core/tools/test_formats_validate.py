"""Block readers (formats) and schema validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from proxy.core.errors import InvalidRequestError
from proxy.core.tools.formats import (
    CallSyntaxError,
    ParsedCall,
    calls_from_value,
    coerce_value,
    decode_prefix,
    json_values,
    loads,
    looks_like_call,
    normalize_arguments,
    parse_glm_call,
    parse_json_calls,
    parse_tagged,
    parse_xml_calls,
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
    with pytest.raises(ValueError, match=r"^JSON nested too deeply$"):
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


def test_a_schema_nested_past_the_validator_s_reach_is_refused_by_name() -> None:
    schema: dict[str, Any] = {}
    inner = schema
    for _ in range(300):  # json reads it; the metaschema check recurses too deep
        inner["not"] = inner = {}
    with pytest.raises(InvalidRequestError) as info:
        compile_schema(schema, param="p")
    assert (info.value.param, info.value.message) == ("p", "'p' is nested too deeply")


def test_a_schema_error_is_quoted_to_200_characters() -> None:
    with pytest.raises(InvalidRequestError) as info:
        compile_schema({"type": "x" * 300}, param="q")
    prefix = "'q' is not a valid JSON Schema: "
    assert info.value.message.startswith(prefix + "'xxx")
    assert len(info.value.message) == len(prefix) + 200


def test_the_compiled_validator_checks_against_the_schema_given() -> None:
    compiled = compile_schema({"type": "object", "required": ["a"]}, param="p")
    assert compiled.validator.schema == {"type": "object", "required": ["a"]}
    assert compiled.problems({"a": 1}, where="x") == []
    assert compiled.problems({}, where="x") != []


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


def _syntax_error(function: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    """The reason a block that is meant as a call cannot be read (it goes into the re-ask)."""
    with pytest.raises(CallSyntaxError) as info:
        function(*args, **kwargs)
    return str(info.value)


def test_json_text_is_read_strictly() -> None:
    assert loads('  {"a": 1}\n') == {"a": 1}
    with pytest.raises(ValueError, match=r"^extra data after the JSON value$"):
        loads('{"a": 1} and more')
    with pytest.raises(ValueError, match=r"^JSON nested too deeply$"):
        decode_prefix("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"^JSON nested too deeply$"):
        json_values("[" * 100_000 + "]" * 100_000)
    assert decode_prefix('{"a": 1} rest') == ({"a": 1}, 8)
    assert json_values("") == []
    assert json_values(" ;\n, ") == []
    with pytest.raises(ValueError, match="Expecting value"):
        json_values('{"a": 1} x')


def test_arguments_may_be_padded_json_text() -> None:
    assert normalize_arguments('  {"a": 1}  ') == {"a": 1}
    assert normalize_arguments(" \n ") == {}
    assert normalize_arguments({"a": 1}) == {"a": 1}


@pytest.mark.parametrize(
    ("value", "calls"),
    [
        ({"name": " f ", "arguments": {"a": 1}}, [ParsedCall("f", {"a": 1})]),
        ({"name": "f", "parameters": {"a": 1}}, [ParsedCall("f", {"a": 1})]),
        ({"name": "f", "args": {"a": 1}}, [ParsedCall("f", {"a": 1})]),
        ({"name": "f", "input": {"a": 1}}, [ParsedCall("f", {"a": 1})]),
        ({"name": "f", "arguments": {"a": 1}, "parameters": {"b": 2}}, [ParsedCall("f", {"a": 1})]),
        ({"name": "f"}, [ParsedCall("f", {})]),
        ({"function": {"name": "f", "arguments": '{"a": 1}'}}, [ParsedCall("f", {"a": 1})]),
        ({"function": {"name": 3}, "name": "g"}, [ParsedCall("g", {})]),
        ({"function": "f", "name": "g"}, [ParsedCall("g", {})]),
        (
            {"tool_calls": [{"name": "f"}, {"name": "g"}]},
            [ParsedCall("f", {}), ParsedCall("g", {})],
        ),
        ({"tool_calls": [], "name": "f"}, [ParsedCall("f", {})]),
        ({"name": "  "}, None),
        ({"name": 3}, None),
        ({"arguments": {}}, None),
        ([{"name": "f"}, "g"], None),
        ([{"name": "f"}, {"x": 1}], None),
        ([], None),
        ("f", None),
    ],
)
def test_call_shapes_inside_tags(value: object, calls: list[ParsedCall] | None) -> None:
    assert calls_from_value(value, known=None, explicit=True) == calls


def test_untagged_json_is_a_call_only_with_a_declared_name_and_arguments() -> None:
    call = {"name": "f", "arguments": {}}
    assert calls_from_value(call, known={"f"}, explicit=False) == [ParsedCall("f", {})]
    assert calls_from_value(call, known=None, explicit=False) == [ParsedCall("f", {})]
    assert calls_from_value(call, known={"g"}, explicit=False) is None
    assert calls_from_value({"name": "f"}, known={"f"}, explicit=False) is None
    assert calls_from_value([call, {"name": "f"}], known={"f"}, explicit=False) is None
    wrapped = {"tool_calls": [{"name": "x"}]}  # the wrapper says it is a call, whatever the name
    assert calls_from_value(wrapped, known={"f"}, explicit=False) == [ParsedCall("x", {})]
    assert parse_json_calls("", known=None, explicit=True) is None
    assert parse_json_calls('{"a": 1} {"name": "f"}', known=None, explicit=True) is None
    with pytest.raises(CallSyntaxError, match=r"^the tool call is not valid JSON \(Expecting"):
        parse_json_calls("{oops}", known=None, explicit=True)


def test_fences_with_languages_and_spacing() -> None:
    assert strip_fence('```python  \n{"a": 1}\n  ```  \n') == '{"a": 1}'
    assert strip_fence('  ```{"a": 1}```') == '{"a": 1}'
    assert strip_fence('```json\n{"a": "```"}') == '{"a": "```"}'


@pytest.mark.parametrize(
    "tag", ["json5", "py3", "c++", "objective-c", "vb.net", "a1_b2+c3.d4-e5f6", "a" * 16]
)
def test_a_fence_language_tag_is_a_language_name(tag: str) -> None:
    assert strip_fence(f"```{tag}\n{{}}\n```") == "{}"
    assert strip_fence(f"```{tag} {{}}```") == "{}"
    fenced = f'```{tag}\n{{"name": "f", "arguments": {{"a": 1}}}}\n```'
    assert parse_tagged(fenced, known=None, schemas={}) == [ParsedCall("f", {"a": 1})]
    assert parse_json_calls(fenced, known={"f"}, explicit=False) == [ParsedCall("f", {"a": 1})]
    assert looks_like_call(f'```{tag}\n{{"name": "f", "arguments": {{', {"f"}) is True


@pytest.mark.parametrize("tag", ["c#", "jsön", "json!", "a" * 17])
def test_a_fence_whose_tag_is_no_language_name_is_not_stripped(tag: str) -> None:
    with pytest.raises(ValueError, match="Expecting value"):
        loads(strip_fence(f"```{tag}\n{{}}\n```"))
    fenced = f'```{tag}\n{{"name": "f", "arguments": {{"a": 1}}}}\n```'
    with pytest.raises(CallSyntaxError):
        parse_tagged(fenced, known=None, schemas={})


def test_values_typed_by_the_schema() -> None:
    assert coerce_value(" x ", None) == "x"
    assert coerce_value(" x ", {"type": "integer"}) == " x "
    assert coerce_value("None", {"type": "integer"}) is None
    assert coerce_value("False", None) is False
    assert coerce_value("7", {"type": ["string", "integer"]}) == 7
    assert coerce_value("7", {"type": ["null", "string"]}) == "7"
    assert coerce_value("7", {"enum": ["7", 7]}) == 7
    assert coerce_value("7", {"enum": None}) == 7
    assert coerce_value("7", {"enum": []}) == 7
    assert coerce_value("7", {"description": "no type"}) == 7


def test_xml_calls() -> None:
    schemas = {"f": {"properties": {"a": {"type": "string"}, "s": {"type": "string"}}}}
    text = (
        "<function= f >\n<parameter= a >\n\n x \n\n</parameter>\n<parameter=n>\n5\n"
        "<parameter=s>y</function><function=g><parameter=v>\n[1]\n"
    )
    assert parse_xml_calls(text, schemas) == [
        ParsedCall("f", {"a": "\n x \n", "n": 5, "s": "y"}),
        ParsedCall("g", {"v": [1]}),
    ]
    odd: dict[str, Any] = {
        "f": {"properties": ["a"]},
        "g": "not a schema",
        "h": {"properties": {"a": "x"}},
    }
    for name in odd:
        assert parse_xml_calls(f"<function={name}><parameter=a>7</parameter></function>", odd) == [
            ParsedCall(name, {"a": 7})
        ]
    assert (
        _syntax_error(parse_xml_calls, "<function= >", {})
        == "a <function=...> tag has no function name"
    )
    assert (
        _syntax_error(parse_xml_calls, "<function=f><parameter= >1</parameter>", {})
        == "a <parameter=...> tag of f has no name"
    )
    assert _syntax_error(parse_xml_calls, "<function f>", {}).startswith(
        "no <function=...> block was found"
    )


def test_glm_calls() -> None:
    assert parse_glm_call(" f \n<arg_key> k </arg_key>\n<arg_value> 5 </arg_value>", {}) == (
        ParsedCall("f", {"k": 5})
    )
    schemas = {"f": {"properties": {"k": {"type": "string"}}}}
    assert parse_glm_call("f<arg_key>k</arg_key><arg_value> 5 </arg_value>", schemas) == (
        ParsedCall("f", {"k": " 5 "})
    )
    assert (
        _syntax_error(parse_glm_call, "{f}", {})
        == "the tool call does not start with a function name"
    )
    assert (
        _syntax_error(parse_glm_call, "f<arg_key>k</arg_key>", {})
        == "the arguments of f are not complete <arg_key>/<arg_value> pairs"
    )
    assert _syntax_error(
        parse_glm_call, "f<arg_key>k</arg_key><arg_value>1</arg_value><arg_value>", {}
    ).startswith("the arguments of f are not complete")
    assert (
        _syntax_error(parse_glm_call, "f<arg_key>k</arg_key><arg_value>1</arg_value>x", {})
        == "the call to f has text outside <arg_key>/<arg_value> pairs"
    )


def test_tagged_blocks_of_each_notation() -> None:
    assert parse_tagged(" <function=f></function> ", known=None, schemas={}) == [
        ParsedCall("f", {})
    ]
    assert parse_tagged('[{"name": "f"}]', known=None, schemas={}) == [ParsedCall("f", {})]
    fenced = '```json\n{"name": "f", "arguments": {"a": 1}}\n```'
    assert parse_tagged(fenced, known=None, schemas={}) == [ParsedCall("f", {"a": 1})]
    assert parse_tagged("f", known=None, schemas={}) == [ParsedCall("f", {})]
    assert (
        _syntax_error(parse_tagged, "[]", known=None, schemas={})
        == 'the tool call JSON has no "name" and "arguments"'
    )
    assert (
        _syntax_error(parse_tagged, " \n", known=None, schemas={})
        == "the <tool_call> block is empty"
    )


@pytest.mark.parametrize(
    ("text", "known", "meant"),
    [
        ('{"name": "f", "arguments": {', {"f"}, True),
        ('{"name": "g", "arguments": {', {"f"}, False),
        ('{"name": "g", "arguments": {', None, True),
        ('[{"name": "f", "arguments": {', {"f"}, True),
        ('{"tool_calls": [{"name": "g", ', {"f"}, True),
        ('{"function": {"name": "g", ', {"f"}, True),
        ('```json\n{"name": "f", "arguments": {', {"f"}, True),
        ('```json\n{"name": "g", "arguments": {', {"f"}, False),
        ('{"city": "f", ', {"f"}, False),
        ('{"name": 3, ', {"f"}, False),
        ("not json", None, False),
        ('  ```json\n{"name": "f", "arguments": {', {"f"}, True),
    ],
)
def test_broken_untagged_json_meant_as_a_call(
    text: str, known: set[str] | None, meant: bool
) -> None:
    assert looks_like_call(text, known) is meant


def test_wrappers_and_lists_in_untagged_json() -> None:
    # A "function" wrapper says the object is a call, like "tool_calls" does.
    wrapper = {"function": {"name": "x"}}
    assert calls_from_value(wrapper, known={"f"}, explicit=False) == [ParsedCall("x", {})]
    # A bare list is a call list only when every item names a declared tool.
    listed = [{"name": "g", "arguments": {}}]
    assert calls_from_value(listed, known={"f"}, explicit=False) is None
    assert calls_from_value(listed, known={"g"}, explicit=False) == [ParsedCall("g", {})]


def test_more_values_typed_by_the_schema() -> None:
    strings = {"f": {"properties": {"v": {"enum": ["1", "2"]}, "n": {"type": "integer"}}}}
    text = "<function=f><parameter=v>1</parameter><parameter=n>\n abc \n</parameter></function>"
    # An enum of strings keeps "1" as text; a bad integer is kept as written, for validation.
    assert parse_xml_calls(text, strings) == [ParsedCall("f", {"v": "1", "n": " abc "})]
    glm = "XRay\n<arg_key>v</arg_key><arg_value>2</arg_value>"
    assert parse_tagged(glm, known=None, schemas={"XRay": strings["f"]}) == [
        ParsedCall("XRay", {"v": "2"})
    ]
