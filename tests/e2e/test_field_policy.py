"""A canary in every field of a chat request, through the real proxy and the strict simulator.

The fields come from the installed ``openai`` package's request types
(:mod:`tests.support.openai_types`): every top-level field (one request per branch of its type,
plus the bare canary string as its value), every key of every role's message, every key of
every content part. Venice's own fields and the policy's other known fields get the same
treatment. For each request:

- the policy must know the field (a new ``openai`` field fails here until it has a rule);
- the outcome is the one its rule says: refused (400 naming the field, nothing sent upstream),
  or served with the field encrypted (tool fields: emulated inside the encrypted messages, a
  malformed value a 400 naming it), enforced locally, dropped, or forwarded as a value that
  holds no text;
- the canary never reaches the upstream in plaintext and the strict simulator sees nothing the
  policy forbids (both checked after every test by the guard in ``tests/conftest.py``).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from proxy.core.crypto import looks_like_ciphertext
from proxy.core.fields import (
    CONTENT_PART_KEYS,
    CONTENT_PART_TYPES,
    MESSAGE_KEYS,
    REQUEST_FIELDS,
    Kind,
    Rule,
    holds_text,
)
from proxy.http.loopback import ThreadedServer
from proxy.simulator import SimulatorState
from tests.conftest import CANARY, E2EE_MODEL
from tests.support.openai_types import (
    content_part_types,
    message_types,
    request_fields,
    samples,
)

PROMPT = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def _top_level_cases() -> list[Any]:
    cases = []
    openai_fields = request_fields()
    for name in sorted(set(openai_fields) | set(REQUEST_FIELDS)):
        if name in ("model", "messages"):
            continue
        values = samples(openai_fields[name], CANARY) if name in openai_fields else []
        values += [CANARY, {"q": CANARY}, [CANARY], 3, True]
        seen: list[str] = []
        for value in values:
            key = json.dumps(value, sort_keys=True)
            if key not in seen:
                seen.append(key)
                cases.append(pytest.param(name, value, id=f"{name}-{len(seen)}"))
    return cases


def _post(server: ThreadedServer, http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return http.post(server.url + "/v1/chat/completions", json=body)


def _sent(state: SimulatorState) -> list[dict[str, Any]]:
    return [r.json() for r in state.requests if r.path.endswith("/chat/completions")]


def _refused(response: httpx.Response, param: str, state: SimulatorState) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert str(error["param"]).startswith(param), error
    assert error["message"]
    assert _sent(state) == [], "a refused request reached the upstream"
    return error


@pytest.mark.parametrize(("name", "value"), _top_level_cases())
def test_every_top_level_field(
    proxy: ThreadedServer, sim_state: SimulatorState, http: httpx.Client, name: str, value: Any
) -> None:
    rule = REQUEST_FIELDS.get(name)
    assert rule is not None, f"no rule for the request field {name!r} (proxy/core/fields.py)"
    response = _post(proxy, http, {"model": E2EE_MODEL, "messages": PROMPT, name: value})
    if response.status_code != 200:
        error = _refused(response, name, sim_state)
        if rule.rule is Rule.INSIDE_ENCRYPTION and error["code"] != "e2ee_unsupported":
            # Tool emulation consumed the field and found its value malformed.
            assert error["code"] is None
        elif rule.rule in (Rule.REFUSED, Rule.INSIDE_ENCRYPTION):
            assert error["code"] == "e2ee_unsupported"
            assert rule.setting is None or rule.setting in error["message"]
        else:
            # Only a forwarded or validated field refuses a value of the wrong kind.
            assert rule.rule is Rule.FORWARDED or name in ("stream", "stream_options", "stop")
        return
    (sent,) = _sent(sim_state)
    if rule.rule is Rule.FORWARDED and name in sent:
        if rule.kind is Kind.OBJECT:
            assert not holds_text(sent[name]) or set(sent[name]) <= set(rule.keys or {}), sent
        elif rule.kind is not Kind.ENUM:
            assert not holds_text(sent[name])
        assert sent[name] == value or rule.kind is Kind.OBJECT
    elif name == "stream":
        assert sent[name] is True
    elif name == "stream_options":
        assert sent[name] == {"include_usage": True}
    else:
        # encrypted, enforced locally, local only, or an inert value of a refused field
        assert name not in sent, f"{name} ({rule.rule}) reached the upstream"


@pytest.mark.parametrize("value", [CANARY, {"q": CANARY}, [CANARY]])
def test_unknown_fields_that_hold_text_are_refused(
    proxy: ThreadedServer, sim_state: SimulatorState, http: httpx.Client, value: Any
) -> None:
    body = {"model": E2EE_MODEL, "messages": PROMPT, "x_new_field": value}
    error = _refused(_post(proxy, http, body), "x_new_field", sim_state)
    assert "privacy.forward_fields" in error["message"]
    body = {"model": E2EE_MODEL, "messages": PROMPT, CANARY: 1}
    _refused(_post(proxy, http, body), "CANARY", sim_state)


def test_unknown_numbers_and_booleans_are_forwarded(
    proxy: ThreadedServer, sim_state: SimulatorState, http: httpx.Client
) -> None:
    body = {"model": E2EE_MODEL, "messages": PROMPT, "x_knob": 0.25, "x_flag": False}
    assert _post(proxy, http, body).status_code == 200
    (sent,) = _sent(sim_state)
    assert (sent["x_knob"], sent["x_flag"]) == (0.25, False)


def _message_cases() -> list[Any]:
    cases = []
    for role, message_type in message_types().items():
        for key, hint in typing.get_type_hints(message_type).items():
            if key == "role":
                continue
            for i, value in enumerate(samples(hint, CANARY)):
                cases.append(pytest.param(role, key, value, id=f"{role}.{key}-{i}"))
        cases.append(pytest.param(role, "x_unknown", CANARY, id=f"{role}.x_unknown"))
    return cases


@pytest.mark.parametrize(("role", "key", "value"), _message_cases())
def test_every_message_key(
    proxy: ThreadedServer,
    sim_state: SimulatorState,
    http: httpx.Client,
    role: str,
    key: str,
    value: Any,
) -> None:
    assert role in MESSAGE_KEYS, f"no rule for the message role {role!r}"
    rule = MESSAGE_KEYS[role].get(key)
    assert rule is not None or key == "x_unknown", f"no rule for {role}.{key}"
    message: dict[str, Any] = {"role": role, "content": f"{role} says {CANARY}", key: value}
    body = {"model": E2EE_MODEL, "messages": [{"role": "user", "content": "q"}, message]}
    response = _post(proxy, http, body)
    if response.status_code != 200:
        error = _refused(response, f"messages[1].{key}", sim_state)
        if key == "content":  # a refused part inside the content, e.g. a file part
            assert error["param"] == "messages[1].content[0]"
            assert CONTENT_PART_TYPES[value[0]["type"]].rule is Rule.REFUSED
        else:
            assert rule is None or rule.rule in (Rule.REFUSED, Rule.INSIDE_ENCRYPTION), error
        return
    assert rule is not None
    (sent,) = _sent(sim_state)
    upstream = sent["messages"][1]
    assert set(upstream) <= {"role", "content"}, f"{role}.{key} reached the upstream"
    assert looks_like_ciphertext(upstream["content"])
    if rule.rule is not Rule.ENCRYPTED:
        assert key not in upstream


def _part_cases() -> list[Any]:
    cases = []
    for kind, (role, part_type) in content_part_types().items():
        (part,) = samples(part_type, CANARY)
        cases.append(pytest.param(kind, role, part, id=kind))
    return cases


@pytest.mark.parametrize(("kind", "role", "part"), _part_cases())
def test_every_content_part(
    proxy: ThreadedServer,
    sim_state: SimulatorState,
    http: httpx.Client,
    kind: str,
    role: str,
    part: dict[str, Any],
) -> None:
    assert kind in CONTENT_PART_TYPES, f"no rule for the content part type {kind!r}"
    unknown = set(part) - set(CONTENT_PART_KEYS[kind])
    assert not unknown, f"no rule for {kind} part keys {unknown}"
    message = {"role": role, "content": [part]}
    body = {"model": E2EE_MODEL, "messages": [{"role": "user", "content": "q"}, message]}
    response = _post(proxy, http, body)
    if CONTENT_PART_TYPES[kind].rule is Rule.REFUSED:
        _refused(response, "messages[1].content[0]", sim_state)
        return
    assert response.status_code == 200, response.text
    (sent,) = _sent(sim_state)
    assert looks_like_ciphertext(sent["messages"][1]["content"])
