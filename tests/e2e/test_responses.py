"""The Responses API end to end: the `openai` package -> proxy -> simulator, over real sockets.

Every event is checked against the `openai` package's own pydantic models; answers are
compared with what the same client gets from the simulator's plaintext path. The canary guard
(conftest.py) checks that no prompt text reached the upstream or a log line in plaintext.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel

from proxy.core import crypto
from proxy.http.loopback import ThreadedServer
from proxy.simulator import Faults, SimulatorState
from tests.conftest import CANARY, E2EE_MODEL, PLAIN_MODEL, REASONING_MODEL

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def _event_models() -> dict[str, type[BaseModel]]:
    union = typing.get_args(ResponseStreamEvent)[0]
    return {
        typing.get_args(model.model_fields["type"].annotation)[0]: model
        for model in typing.get_args(union)
    }


EVENT_MODELS = _event_models()


def client(server: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="local", max_retries=0)


def plaintext_answer(sim_server: ThreadedServer, messages: list[dict[str, Any]]) -> Any:
    """What the same `openai` client gets from the simulator's plaintext path (its plaintext
    model answers exactly as the E2EE models do; the canary guard allows it)."""
    direct = openai.OpenAI(
        base_url=sim_server.url + "/api/v1", api_key="sim-test-key-ab12cd34", max_retries=0
    )
    return direct.chat.completions.create(model=PLAIN_MODEL, messages=messages)  # type: ignore[arg-type]


def upstream_chats(state: SimulatorState) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in state.requests if r.path.endswith("/chat/completions")]


def raw_events(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        event = json.loads(lines["data"])
        assert lines["event"] == event["type"]
        events.append(event)
    return events


def test_non_streaming_response_matches_the_plaintext_path(
    proxy: ThreadedServer, sim_server: ThreadedServer, sim_state: SimulatorState
) -> None:
    prompt = f"Hello {CANARY}"
    response = client(proxy).responses.create(
        model=E2EE_MODEL,
        input=prompt,
        instructions=f"Be brief {CANARY}",
        metadata={"trace": "t-1"},
        user="user-1",
        max_output_tokens=200,
    )
    sent = upstream_chats(sim_state)
    expected = plaintext_answer(
        sim_server,
        [{"role": "system", "content": "Be brief"}, {"role": "user", "content": prompt}],
    )
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == expected.choices[0].message.content
    assert response.metadata == {"trace": "t-1"}
    assert response.usage is not None
    assert response.usage.output_tokens == expected.usage.completion_tokens
    assert response.usage.total_tokens == (
        response.usage.input_tokens + response.usage.output_tokens
    )
    (message,) = response.output
    assert message.type == "message"
    assert message.id.startswith("msg_")
    (chat,) = sent
    assert [m["role"] for m in chat["messages"]] == ["system", "user"]
    assert all(crypto.looks_like_ciphertext(m["content"]) for m in chat["messages"])
    assert chat["max_completion_tokens"] == 200
    for private in ("metadata", "user", "instructions", "input"):
        assert private not in chat  # nothing but the encrypted messages and settings


def test_streaming_events_validate_and_match_the_plaintext_path(
    proxy: ThreadedServer, sim_server: ThreadedServer
) -> None:
    prompt = f"stream {CANARY}"
    with httpx.Client() as http:
        raw = http.post(
            proxy.url + "/v1/responses",
            json={"model": E2EE_MODEL, "input": prompt, "stream": True},
        )
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-venice-proxy-e2ee"] == "true"
    assert raw.headers["x-request-id"]
    assert "[DONE]" not in raw.text
    events = raw_events(raw.text)
    for event in events:
        EVENT_MODELS[event["type"]].model_validate(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    expected = plaintext_answer(sim_server, [{"role": "user", "content": prompt}])
    assert text == expected.choices[0].message.content
    final = Response.model_validate(events[-1]["response"])
    assert final.usage is not None
    assert final.usage.output_tokens == expected.usage.completion_tokens
    assert final.output_text == text


def test_sdk_stream_helpers(proxy: ThreadedServer) -> None:
    stream = client(proxy).responses.create(model=E2EE_MODEL, input=CANARY, stream=True)
    deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    assert "".join(deltas).startswith(f"You said: {CANARY}")
    with client(proxy).responses.stream(model=REASONING_MODEL, input=CANARY) as helper:
        for _ in helper:
            pass
        final = helper.get_final_response()
    reasoning, _message = final.output
    assert reasoning.type == "reasoning"
    assert reasoning.content is not None
    assert reasoning.content[0].text.startswith("Considering")
    assert final.output_text.startswith(f"You said: {CANARY}")


async def test_async_client(proxy: ThreadedServer) -> None:
    async_client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    response = await async_client.responses.create(model=E2EE_MODEL, input=CANARY)
    assert response.output_text.startswith(f"You said: {CANARY}")
    stream = await async_client.responses.create(model=E2EE_MODEL, input=CANARY, stream=True)
    types = [event.type async for event in stream]
    assert types[-1] == "response.completed"
    await async_client.close()


def test_item_list_input_with_images_and_history(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    items: Any = [
        {"role": "user", "content": f"first {CANARY}"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": f"answer {CANARY}", "annotations": []}],
        },
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": f"second {CANARY}"},
                {
                    "type": "input_image",
                    "image_url": "data:image/png;base64,iVBORw0KGgo=",
                    "detail": "auto",
                },
            ],
        },
    ]
    response = client(proxy).responses.create(model=E2EE_MODEL, input=items)
    assert response.output_text.startswith(f"You said: second {CANARY}")
    (chat,) = upstream_chats(sim_state)
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "user"]
    assert all(crypto.looks_like_ciphertext(m["content"]) for m in chat["messages"])


def test_max_output_tokens_gives_an_incomplete_response(proxy: ThreadedServer) -> None:
    response = client(proxy).responses.create(model=E2EE_MODEL, input=CANARY, max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


# -- function tools and text.format (emulated inside the encrypted messages) ----------------------


def _secret_tool() -> Any:
    """The weather tool with the canary in its description and schema (typed loosely)."""
    tool: Any = json.loads(json.dumps(WEATHER_TOOL))
    tool["description"] = f"The weather in a city {CANARY}"
    tool["parameters"]["properties"]["city"]["description"] = f"a city {CANARY}"
    return tool


def _assert_never_upstream(state: SimulatorState, *texts: str) -> None:
    """None of ``texts`` appears in a body the upstream received."""
    for recorded in state.requests:
        body = recorded.body.decode("utf-8", "replace")
        for text in texts:
            assert text not in body, "a tool name reached the upstream in plaintext"


def test_function_tool_loop_round_trip(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    api = client(proxy)
    tool = _secret_tool()
    first = api.responses.create(
        model=E2EE_MODEL,
        input=f"Use get_weather for Oslo {CANARY}",
        tools=[tool],
    )
    assert first.status == "completed"
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert call.call_id.startswith("call_")
    assert "city" in json.loads(call.arguments)
    # The second turn: the call and its output are history, encrypted like the rest.
    second = api.responses.create(
        model=E2EE_MODEL,
        input=[
            {"role": "user", "content": f"Use get_weather for Oslo {CANARY}"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": f"sunny {CANARY}",
            },
        ],
        tools=[tool],
    )
    assert second.status == "completed"
    assert "sunny" in second.output_text
    _assert_never_upstream(sim_state, "get_weather", call.call_id)
    chats = upstream_chats(sim_state)
    assert len(chats) == 2
    assert all("tools" not in chat and "tool_choice" not in chat for chat in chats)


def test_function_tool_call_streamed(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    with client(proxy).responses.stream(
        model=E2EE_MODEL,
        input=f"Use get_weather for Oslo {CANARY}",
        tools=[_secret_tool()],
        tool_choice="required",
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    assert kinds[-1] == "response.completed"
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather"
    _assert_never_upstream(sim_state, "get_weather")


class _City(BaseModel):
    name: str
    population: int


def test_text_format_json_schema(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    schema = _City.model_json_schema() | {"additionalProperties": False}
    response = client(proxy).responses.create(
        model=E2EE_MODEL,
        input=f"Describe a city {CANARY}",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    _City.model_validate_json(response.output_text)
    parsed = client(proxy).responses.parse(
        model=E2EE_MODEL, input=f"Describe a city {CANARY}", text_format=_City
    )
    assert isinstance(parsed.output_parsed, _City)
    _assert_never_upstream(sim_state, "population", "json_schema")


def test_text_format_json_object(proxy: ThreadedServer) -> None:
    response = client(proxy).responses.create(
        model=E2EE_MODEL,
        input=f"Answer in JSON {CANARY}",
        text={"format": {"type": "json_object"}},
    )
    assert isinstance(json.loads(response.output_text), dict)


# -- stateless by design --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_abc"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0]"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0]"),
    ],
)
def test_stateful_and_hosted_features_get_a_400_that_says_why(
    proxy: ThreadedServer, sim_state: SimulatorState, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(proxy).responses.create(model=E2EE_MODEL, input=CANARY, **extra)
    assert info.value.param == param
    assert "state" in info.value.message or "tool" in info.value.message
    assert upstream_chats(sim_state) == []


# -- failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"corrupt_ciphertext": True, "fault_at_token": 3},
        {"plaintext_chunk": True, "fault_at_token": 3},
        {"midstream_error": True, "fault_at_token": 3},
        {"cut_stream_after": 3},
    ],
)
def test_failure_after_the_stream_started_is_response_failed(
    proxy: ThreadedServer, sim_state: SimulatorState, fault: dict[str, Any]
) -> None:
    sim_state.faults = Faults(**fault)
    stream = client(proxy).responses.create(model=E2EE_MODEL, input=CANARY, stream=True)
    events = list(stream)
    types = [event.type for event in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.failed"
    assert "response.completed" not in types
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed"
    assert failed.response.error is not None
    assert failed.response.error.code == "server_error"


def test_failure_without_stream_is_an_http_error(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(corrupt_ciphertext=True, fault_at_token=3)
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).responses.create(model=E2EE_MODEL, input=CANARY)
    assert info.value.status_code == 502
    assert info.value.response.headers["x-request-id"]


def test_errors_before_the_stream_are_plain_http_errors(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(fail_status=429, fail_times=-1)
    with pytest.raises(openai.RateLimitError):
        client(proxy).responses.create(model=E2EE_MODEL, input=CANARY, stream=True)
    sim_state.faults = Faults()
    with pytest.raises(openai.NotFoundError) as info:
        client(proxy).responses.create(model="no-such-model", input=CANARY)
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
def test_responses_carry_the_e2ee_and_trust_headers(proxy: ThreadedServer, stream: bool) -> None:
    body = {"model": E2EE_MODEL, "input": f"headers {CANARY}", "stream": stream}
    with httpx.stream("POST", proxy.url + "/v1/responses", json=body, timeout=30) as answer:
        answer.read()
    assert answer.status_code == 200
    assert answer.headers["x-venice-proxy-e2ee"] == "true"
    assert answer.headers["x-venice-proxy-trust"] == "enclave"
    assert answer.headers["x-venice-proxy-signing-address"].startswith("0x")
    assert answer.headers["x-request-id"]
