"""The simulator's strict mode (the proxy's field policy checked on the server side) and Phala's
stale-key answer."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.crypto import seal_text
from proxy.simulator import Faults, SimulatorState
from proxy.simulator.policy import policy_violations
from tests.support.simulator_helpers import NEAR_MODEL, client_for, e2ee_chat

USER = [{"role": "user", "content": "hi"}]


def body(**extra: Any) -> dict[str, Any]:
    key = SimulatorState().enclave_public_key
    return {
        "model": NEAR_MODEL,
        "messages": [{"role": "user", "content": seal_text(key, "hi")}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


def test_what_the_proxy_sends_passes() -> None:
    assert policy_violations(body()) == []
    assert policy_violations(body(temperature=0.5, n=2, x_knob=1, reasoning_effort="low")) == []
    assert policy_violations(body(venice_parameters={"disable_thinking": True})) == []


@pytest.mark.parametrize(
    ("extra", "paths"),
    [
        ({"stop": ["x"]}, ["stop"]),
        ({"user": "u"}, ["user"]),
        ({"tools": []}, ["tools"]),
        ({"temperature": "hot"}, ["temperature"]),
        ({"x_text": "words"}, ["x_text"]),
        ({"stream_options": {"include_usage": True, "x": 1}}, ["stream_options"]),
        ({"stream": False}, ["stream"]),
        (
            {"venice_parameters": {"enable_web_search": "on"}},
            ["venice_parameters.enable_web_search"],
        ),
        ({"venice_parameters": {"character_slug": "c"}}, ["venice_parameters.character_slug"]),
        ({"messages": [{"role": "user", "content": "plain"}]}, ["messages[0].content"]),
        ({"messages": [{"role": "user", "content": ""}]}, ["messages[0].content"]),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, ["messages[0].content"]),
        ({"messages": [{"role": "user", "content": None, "name": "n"}]}, ["messages[0].name"]),
        ({"messages": [{"role": "wizard", "content": None}]}, ["messages[0].role"]),
    ],
)
def test_what_the_policy_never_sends_is_named(extra: dict[str, Any], paths: list[str]) -> None:
    assert policy_violations(body(**extra)) == paths


def test_extra_allowed_fields() -> None:
    assert policy_violations(body(x_text="words"), {"x_text"}) == []


async def test_strict_mode_rejects_and_records() -> None:
    state = SimulatorState(proxy_policy=True)
    async with client_for(state) as http:
        response, _client = await e2ee_chat(
            http, state, USER, user="someone", stop="x", stream_options={"include_usage": True}
        )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "proxy policy violation: user, stop"
    assert state.policy_violations == ["user", "stop"]
    state.reset()
    assert state.policy_violations == []


async def test_lenient_by_default() -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        response, _client = await e2ee_chat(http, state, USER, user="someone")
    assert response.status_code == 200
    assert state.policy_violations == []


async def test_phala_answers_a_stale_key_with_its_error_type() -> None:
    state = SimulatorState()
    state.faults = Faults(phala_legacy=True)
    old_key = state.enclave_public_key
    state.rotate_key()
    async with client_for(state) as http:
        response, _client = await e2ee_chat(http, state, USER, model_key=old_key)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "e2ee_model_key_mismatch"
    assert error["code"] is None
    message = error["message"].lower()
    assert not any(word in message for word in ("decrypt", "public key", "model key"))


@pytest.mark.parametrize(
    ("extra", "paths"),
    [
        ({"model": 5}, ["model"]),
        ({"model": None}, ["model"]),
        ({"messages": "hi"}, ["messages"]),
        ({"messages": {"role": "user"}}, ["messages"]),
        ({"venice_parameters": {}}, ["venice_parameters"]),
        ({"venice_parameters": "on"}, ["venice_parameters"]),
        ({"venice_parameters": [1]}, ["venice_parameters"]),
        # A forwarded key holds a value of its own kind only, a refused key nothing at all.
        ({"venice_parameters": {"disable_thinking": 1}}, ["venice_parameters.disable_thinking"]),
        ({"venice_parameters": {"enable_e2ee": True}}, ["venice_parameters.enable_e2ee"]),
        # An unknown key: a number or a boolean under a lower-case identifier, as at the top.
        ({"venice_parameters": {"x_knob": 1, "y_flag": False}}, []),
        ({"venice_parameters": {"x_text": "words"}}, ["venice_parameters.x_text"]),
        ({"venice_parameters": {"X_Knob": 1}}, ["venice_parameters.X_Knob"]),
        (
            {"venice_parameters": {"x_list": [1], "disable_thinking": True, "x_none": None}},
            ["venice_parameters.x_list", "venice_parameters.x_none"],
        ),
    ],
)
def test_each_value_is_checked_against_its_rule(extra: dict[str, Any], paths: list[str]) -> None:
    assert policy_violations(body(**extra)) == paths


def test_missing_structure_is_named_in_order() -> None:
    assert policy_violations({}) == ["messages", "model", "stream", "stream_options"]
    full = body()
    del full["stream"]
    assert policy_violations(full) == ["stream"]


def test_an_allowed_venice_parameter_does_not_end_the_checks() -> None:
    parameters = {"x_text": "words", "character_slug": "c", "x_other": "text"}
    assert policy_violations(body(venice_parameters=parameters), {"venice_parameters.x_text"}) == [
        "venice_parameters.character_slug",
        "venice_parameters.x_other",
    ]
    assert policy_violations(body(venice_parameters={"x_text": "w"}), {"x_text"}) == [
        "venice_parameters.x_text"
    ]
