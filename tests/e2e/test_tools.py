"""Tool calling and structured outputs end to end: the real ``openai`` package and LangChain
against the proxy and the simulator over loopback.

The proxy emulates tools inside the encrypted messages (:mod:`proxy.core.tools`,
:mod:`proxy.service.emulation`): every tool name, description, schema, argument and result in
these tests carries the canary or a distinctive name, and none of them may appear in any body
the upstream received (the canary guard checks ``CANARY``; :func:`assert_not_upstream` the tool
names).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from proxy.http.loopback import ThreadedServer
from proxy.simulator import Faults, SimulatorState
from tests.conftest import CANARY, E2EE_MODEL, REASONING_MODEL, ProxyFactory

TOOL = "lookup_weather_zq"
OTHER = "convert_units_zq"


def weather_tool(name: str = TOOL) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"Weather for a city {CANARY}",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": f"the city {CANARY}"},
                    "days": {"type": "integer"},
                },
                "required": ["city"],
            },
        },
    }


TOOLS = [weather_tool(), weather_tool(OTHER)]


def client(server: ThreadedServer) -> Any:
    """The real ``openai`` client (typed loosely: the tests pass plain dicts)."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key="local", max_retries=0)


def assert_not_upstream(state: SimulatorState, *texts: str) -> None:
    """None of ``texts`` reached the upstream in plaintext (bodies, queries, headers)."""
    assert state.requests, "the upstream saw no request"
    for recorded in state.requests:
        seen = [recorded.body.decode("utf-8", "replace"), str(recorded.query)]
        seen += list(recorded.headers.values())
        for text in seen:
            for secret in texts:
                assert secret not in text, "a tool name reached the upstream in plaintext"


def chat_requests(state: SimulatorState) -> int:
    return sum(1 for r in state.requests if r.path.endswith("/chat/completions"))


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{text} {CANARY}"}]


# -- openai: calls -------------------------------------------------------------------------


def test_tool_call_not_streamed(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=ask(f"Use {TOOL} for Paris"), tools=TOOLS
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    assert calls[0].id.startswith("call_")
    assert calls[0].function.name == TOOL
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0
    assert_not_upstream(sim_state, TOOL, OTHER, "tool_choice", '"tools"')


def test_tool_call_streamed(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    stream = client(proxy).chat.completions.create(
        model=E2EE_MODEL,
        messages=ask(f"Use {TOOL} for Paris"),
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish = None
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names[call.index] = call.function.name
                if call.function and call.function.arguments:
                    arguments[call.index] = arguments.get(call.index, "") + call.function.arguments
            finish = choice.finish_reason or finish
    assert names == {0: TOOL}
    assert "city" in json.loads(arguments[0])
    assert finish == "tool_calls"
    assert usage is not None
    assert usage.total_tokens > 0
    assert_not_upstream(sim_state, TOOL, OTHER)


def test_stream_manager_accumulates_tool_calls(proxy: ThreadedServer) -> None:
    with client(proxy).chat.completions.stream(
        model=E2EE_MODEL, messages=ask(f"Use {TOOL} for Paris"), tools=TOOLS
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert [c.function.name for c in calls] == [TOOL]


def test_reasoning_model_keeps_its_reasoning_and_calls(proxy: ThreadedServer) -> None:
    stream = client(proxy).chat.completions.create(
        model=REASONING_MODEL, messages=ask(f"Use {TOOL} for Paris"), tools=TOOLS, stream=True
    )
    reasoning = ""
    names = []
    for chunk in stream:
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            names += [c.function.name for c in choice.delta.tool_calls or [] if c.function.name]
    assert reasoning
    assert names == [TOOL]


def test_parallel_calls(proxy: ThreadedServer) -> None:
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=ask(f"Use {TOOL} and then {OTHER}"), tools=TOOLS
    )
    calls = completion.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == [TOOL, OTHER]
    assert len({c.id for c in calls}) == 2


def test_parallel_calls_off_gives_one_call(proxy: ThreadedServer) -> None:
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL,
        messages=ask(f"Use {TOOL} and then {OTHER}"),
        tools=TOOLS,
        parallel_tool_calls=False,
    )
    calls = completion.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == [TOOL]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", []),
        ("none", []),
        ("required", [TOOL]),
        ({"type": "function", "function": {"name": OTHER}}, [OTHER]),
    ],
)
def test_tool_choice(proxy: ThreadedServer, choice: Any, expected: list[str]) -> None:
    # The prompt names no tool: only "required" and a named choice produce calls.
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=ask("Hello there"), tools=TOOLS, tool_choice=choice
    )
    message = completion.choices[0].message
    assert [c.function.name for c in message.tool_calls or []] == expected
    if not expected:
        assert message.content
        assert completion.choices[0].finish_reason == "stop"


def test_tool_choice_none_with_a_named_tool_answers_text(proxy: ThreadedServer) -> None:
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=ask(f"Use {TOOL}"), tools=TOOLS, tool_choice="none"
    )
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_two_turn_loop_with_the_tool_result(
    proxy: ThreadedServer, sim_state: SimulatorState, stream: bool
) -> None:
    api = client(proxy)
    messages: list[Any] = ask(f"Use {TOOL} for Paris")
    first = api.chat.completions.create(model=E2EE_MODEL, messages=messages, tools=TOOLS)
    call = (first.choices[0].message.tool_calls or [])[0]
    result = f"sunny and 21 degrees {CANARY}"
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    if stream:
        text = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in api.chat.completions.create(
                model=E2EE_MODEL, messages=messages, tools=TOOLS, stream=True
            )
            if chunk.choices
        )
    else:
        second = api.chat.completions.create(model=E2EE_MODEL, messages=messages, tools=TOOLS)
        assert second.choices[0].finish_reason == "stop"
        text = second.choices[0].message.content or ""
    assert "sunny and 21 degrees" in text  # the result reached the model (encrypted)
    assert_not_upstream(sim_state, TOOL, OTHER, call.id, "tool_call_id")


# -- openai: structured outputs -------------------------------------------------------------


class City(BaseModel):
    name: str
    population: int
    coastal: bool


def test_parse_with_a_pydantic_model(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    completion = client(proxy).chat.completions.parse(
        model=E2EE_MODEL, messages=ask("Describe a city"), response_format=City
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert_not_upstream(sim_state, "population", "coastal", "json_schema")


def test_json_object(proxy: ThreadedServer) -> None:
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL,
        messages=ask("Answer in JSON"),
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_json_schema_streamed(proxy: ThreadedServer) -> None:
    stream = client(proxy).chat.completions.create(
        model=E2EE_MODEL,
        messages=ask("Describe a city"),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "strict": True, "schema": City.model_json_schema()},
        },
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    City.model_validate_json(text)


# -- privacy: a canary in every tool field -------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_canary_in_every_tool_field_never_leaves_in_plaintext(
    proxy: ThreadedServer, sim_state: SimulatorState, stream: bool
) -> None:
    # The tool's name, description, schema (a property named by the canary, its description,
    # an enum value), an earlier call's id and arguments, and the tool's result all carry the
    # canary; the guard in tests/conftest.py fails the test if it reaches the upstream.
    name = f"{CANARY}_tool"
    secret_tool = {
        "type": "function",
        "function": {
            "name": name,
            "description": f"secret tool {CANARY}",
            "parameters": {
                "type": "object",
                "properties": {
                    CANARY: {"type": "string", "description": CANARY, "enum": [CANARY]},
                },
                "required": [CANARY],
            },
        },
    }
    call_id = f"call_{CANARY}"
    messages: list[Any] = [
        {"role": "system", "content": f"be brief {CANARY}"},
        *ask(f"Use {name}"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps({CANARY: CANARY})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": f"result {CANARY}"},
        *ask(f"Use {name} again"),
    ]
    api = client(proxy)
    if stream:
        with api.chat.completions.stream(
            model=E2EE_MODEL, messages=messages, tools=[secret_tool]
        ) as events:
            for _ in events:
                pass
            completion = events.get_final_completion()
    else:
        completion = api.chat.completions.create(
            model=E2EE_MODEL, messages=messages, tools=[secret_tool]
        )
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.function.name == name
    assert json.loads(call.function.arguments) == {CANARY: CANARY}
    assert chat_requests(sim_state) == 1
    assert_not_upstream(sim_state, name, call_id, "secret tool")


# -- repair ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_invalid_arguments_are_repaired(
    proxy: ThreadedServer, sim_state: SimulatorState, stream: bool
) -> None:
    sim_state.faults = Faults(tool_fault="invalid_arguments", tool_fault_times=1)
    api = client(proxy)
    if stream:
        with api.chat.completions.stream(
            model=E2EE_MODEL, messages=ask(f"Use {TOOL} for Paris"), tools=TOOLS
        ) as events:
            for _ in events:
                pass
            completion = events.get_final_completion()
    else:
        completion = api.chat.completions.create(
            model=E2EE_MODEL, messages=ask(f"Use {TOOL} for Paris"), tools=TOOLS
        )
    calls = completion.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == [TOOL]
    assert "city" in json.loads(calls[0].function.arguments)
    assert chat_requests(sim_state) == 2  # the re-ask was a second encrypted request
    assert_not_upstream(sim_state, TOOL, "could not be used")
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'upstream_retries_total{reason="tool_repair"}' in metrics


def test_broken_json_answer_is_repaired(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    sim_state.faults = Faults(tool_fault="broken_object", tool_fault_times=1)
    completion = client(proxy).chat.completions.parse(
        model=E2EE_MODEL, messages=ask("Describe a city"), response_format=City
    )
    assert isinstance(completion.choices[0].message.parsed, City)
    assert chat_requests(sim_state) == 2


def test_no_call_under_required_is_repaired(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(tool_fault="no_call", tool_fault_times=1)
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=ask("Hello there"), tools=TOOLS, tool_choice="required"
    )
    assert [c.function.name for c in completion.choices[0].message.tool_calls or []] == [TOOL]
    assert chat_requests(sim_state) == 2


def test_malformed_call_beyond_the_repair_budget_is_a_clear_error(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(tool_fault="malformed_call")
    with pytest.raises(openai.APIStatusError) as caught:
        client(proxy).chat.completions.create(
            model=E2EE_MODEL, messages=ask(f"Use {TOOL} for Paris"), tools=TOOLS
        )
    assert caught.value.status_code == 502
    body: Any = caught.value.body
    assert body["code"] == "tool_call_invalid"
    assert chat_requests(sim_state) == 2  # one answer, one re-ask (repair_attempts = 1)


def test_malformed_call_streamed_fails_in_band_never_as_success(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(tool_fault="malformed_call")
    stream = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=ask(f"Use {TOOL} for Paris"), tools=TOOLS, stream=True
    )
    finish: list[str] = []

    def read() -> None:
        for chunk in stream:
            finish.extend(c.finish_reason for c in chunk.choices if c.finish_reason)

    with pytest.raises(openai.APIError, match="tool"):
        read()
    assert finish == []


def test_no_repair_when_the_budget_is_zero(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    server = make_proxy(tools={"repair_attempts": 0})
    sim_state.faults = Faults(tool_fault="invalid_arguments", tool_fault_times=1)
    with pytest.raises(openai.APIStatusError) as caught:
        client(server).chat.completions.create(
            model=E2EE_MODEL, messages=ask(f"Use {TOOL} for Paris"), tools=TOOLS
        )
    assert caught.value.status_code == 502
    assert chat_requests(sim_state) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_strict_signatures_check_the_attempt_that_answered(
    make_proxy: ProxyFactory, sim_state: SimulatorState, stream: bool
) -> None:
    # With a re-ask, the answer the client gets is the second attempt's: that one is verified.
    server = make_proxy(signatures={"mode": "strict"})
    sim_state.faults = Faults(tool_fault="invalid_arguments", tool_fault_times=1)
    api = client(server)
    if stream:
        with api.chat.completions.stream(
            model=E2EE_MODEL, messages=ask(f"Use {TOOL} for Paris"), tools=TOOLS
        ) as events:
            for _ in events:
                pass
            completion = events.get_final_completion()
    else:
        completion = api.chat.completions.create(
            model=E2EE_MODEL, messages=ask(f"Use {TOOL} for Paris"), tools=TOOLS
        )
    assert completion.choices[0].finish_reason == "tool_calls"
    assert chat_requests(sim_state) == 2
    checked = [str(r.query) for r in sim_state.requests if "/signature" in r.path]
    assert checked  # strict: the answer was only released after its signature verified
    if not stream:
        assert any(completion.id in query for query in checked)


def test_strict_signatures_fail_a_tool_answer_with_a_bad_signature(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    server = make_proxy(signatures={"mode": "strict"})
    sim_state.faults = Faults(bad_signature=True)
    with pytest.raises(openai.APIStatusError) as caught:
        client(server).chat.completions.create(
            model=E2EE_MODEL, messages=ask(f"Use {TOOL} for Paris"), tools=TOOLS
        )
    assert caught.value.status_code == 502


# -- settings and passthrough ---------------------------------------------------------------


def test_refuse_mode_keeps_the_clear_400(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    server = make_proxy(tools={"mode": "refuse"})
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": E2EE_MODEL, "messages": ask("hi"), "tools": TOOLS},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools"
    assert chat_requests(sim_state) == 0


def test_stop_applies_to_text_never_to_arguments(proxy: ThreadedServer) -> None:
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL,
        messages=ask(f"Use {TOOL} for Paris"),
        tools=TOOLS,
        stop=["city"],
    )
    calls = completion.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == [TOOL]
    assert "city" in json.loads(calls[0].function.arguments)


# -- LangChain ------------------------------------------------------------------------------

langchain_openai = pytest.importorskip("langchain_openai")


def chat_model(server: ThreadedServer) -> Any:
    return langchain_openai.ChatOpenAI(
        model=E2EE_MODEL, base_url=server.url + "/v1", api_key="local", max_retries=0
    )


def test_langchain_bind_tools_invoke_and_stream(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    model = chat_model(proxy).bind_tools(TOOLS)
    message = model.invoke(f"Use {TOOL} for Paris {CANARY}")
    assert [call["name"] for call in message.tool_calls] == [TOOL]
    assert "city" in message.tool_calls[0]["args"]
    gathered = None
    for chunk in model.stream(f"Use {TOOL} for Paris {CANARY}"):
        gathered = chunk if gathered is None else gathered + chunk
    assert gathered is not None
    assert [call["name"] for call in gathered.tool_calls] == [TOOL]
    assert_not_upstream(sim_state, TOOL, OTHER)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_langchain_with_structured_output(
    proxy: ThreadedServer, sim_state: SimulatorState, method: str
) -> None:
    prompt = f"Describe a city as JSON with name, population and coastal {CANARY}"
    if method == "json_mode":
        # JSON mode promises an object, not a schema: LangChain returns the parsed dict.
        answer = chat_model(proxy).with_structured_output(None, method="json_mode").invoke(prompt)
        assert isinstance(answer, dict)
        return
    result = chat_model(proxy).with_structured_output(City, method=method).invoke(prompt)
    assert isinstance(result, City)
    assert_not_upstream(sim_state, "coastal")
