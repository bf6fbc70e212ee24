"""``POST /chat/completions`` of the simulated Venice: validate, decrypt, answer. No I/O here;
the app turns a :class:`ChatAnswer` into an HTTP response.

E2EE is on when the three headers ``X-Venice-TEE-Client-Pub-Key``,
``X-Venice-TEE-Model-Pub-Key`` and ``X-Venice-TEE-Signing-Algo`` are present (names
case-insensitive). Checks, in order, each a 400:

1. only some of the three headers -> "Invalid E2EE headers: missing ..."
2. the model has no E2EE -> "Model does not support E2EE"
3. algorithm other than ``ecdsa`` -> "Unsupported signing algorithm"
4. a key that is not a secp256k1 point -> "Invalid public key"
5. a model key other than the current enclave key -> "Decryption failed" (NEAR body; this is
   how a key rotation surfaces), or under Phala legacy semantics Phala's 400 of type
   ``e2ee_model_key_mismatch`` (with ``code: null`` and a message that names no key)
6. ``stream`` not true -> "E2EE requires streaming"
7. with ``proxy_policy`` (the proxy's own tests): the proxy's field policy
   (:mod:`proxy.simulator.policy`) -> :class:`PolicyViolationError`, "proxy policy violation"
8. message decryption (:mod:`proxy.simulator.decrypt`; NEAR or Phala legacy semantics)

Without the headers the request is served in plaintext, for ``e2ee-`` models too (Venice's
TEE-only mode), streamed or as one ``chat.completion``. Body validation is deliberately
minimal: ``model`` (string), ``messages`` (list), ``n`` (1..8), ``max_tokens`` /
``max_completion_tokens`` (int >= 1); everything else is ignored.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.crypto import KeyPair, parse_public_key
from proxy.core.errors import InvalidPublicKeyError
from proxy.simulator.answer import plan_answer
from proxy.simulator.catalog import SimModel, find_model
from proxy.simulator.chunks import CompletionMeta, StreamItem, completion_object, stream_items
from proxy.simulator.decrypt import decrypt_messages_near, decrypt_messages_phala
from proxy.simulator.faults import Faults
from proxy.simulator.http_errors import (
    SimulatedHTTPError,
    gateway_e2ee_error,
    near_error,
    phala_error,
    venice_error,
)
from proxy.simulator.policy import policy_violations
from proxy.simulator.sealing import ResponseSealer
from proxy.simulator.tools import tool_answer

CLIENT_KEY_HEADER = "X-Venice-TEE-Client-Pub-Key"
MODEL_KEY_HEADER = "X-Venice-TEE-Model-Pub-Key"
SIGNING_ALGO_HEADER = "X-Venice-TEE-Signing-Algo"
E2EE_HEADERS = (CLIENT_KEY_HEADER, MODEL_KEY_HEADER, SIGNING_ALGO_HEADER)
MAX_N = 8
MODEL_KEY_MISMATCH = "e2ee_model_key_mismatch"


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    """What to send back: a stream of items, or one JSON object (plaintext, stream false)."""

    model: SimModel
    meta: CompletionMeta
    e2ee: bool
    enclave: KeyPair = field(repr=False)
    items: Iterator[StreamItem] | None = field(default=None, repr=False)
    completion: dict[str, Any] | None = field(default=None, repr=False)


class PolicyViolationError(SimulatedHTTPError):
    """An E2EE request the proxy's field policy never sends; ``paths`` names what broke it."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(
            400,
            {
                "error": {
                    "message": "proxy policy violation: " + ", ".join(paths[:20]),
                    "type": "bad_request",
                    "param": None,
                    "code": None,
                }
            },
        )
        self.paths = list(paths)


def _invalid(detail: str) -> Exception:
    return venice_error(400, f"Invalid request parameters: {detail}", "INVALID_REQUEST")


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise _invalid("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _invalid("body must be a JSON object")
    return body


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(f"{name} must be a positive integer")
    return value


def _client_key(
    headers: Mapping[str, str], model: SimModel, enclave: KeyPair, *, phala_legacy: bool = False
) -> bytes | None:
    """The client key when the request is E2EE (after the header checks), else None."""
    values = {name: headers.get(name) for name in E2EE_HEADERS}
    present = [name for name, value in values.items() if value]
    if not present:
        return None
    if len(present) != len(E2EE_HEADERS):
        missing = ", ".join(name for name in E2EE_HEADERS if name not in present)
        raise gateway_e2ee_error(f"Invalid E2EE headers: missing {missing}")
    if not model.e2ee:
        raise gateway_e2ee_error("Model does not support E2EE")
    if str(values[SIGNING_ALGO_HEADER]).strip().lower() != "ecdsa":
        raise gateway_e2ee_error("Unsupported signing algorithm")
    try:
        client_key = parse_public_key(str(values[CLIENT_KEY_HEADER]))
        model_key = parse_public_key(str(values[MODEL_KEY_HEADER]))
    except InvalidPublicKeyError:
        raise gateway_e2ee_error("Invalid public key") from None
    if model_key != enclave.public:
        if phala_legacy:
            raise phala_error("X-Model-Pub-Key does not match this instance", MODEL_KEY_MISMATCH)
        raise near_error("Decryption failed")
    return client_key


def answer_chat(
    headers: Mapping[str, str],
    raw_body: bytes,
    *,
    enclave: KeyPair,
    faults: Faults,
    created: int,
    proxy_policy: bool = False,
    policy_allows: Collection[str] = (),
    tool_fault: Callable[[], str | None] | None = None,
) -> ChatAnswer:
    """Validate and answer one chat request. Raises ``SimulatedHTTPError`` on a 4xx
    (:class:`PolicyViolationError` when ``proxy_policy`` is on and the request breaks it).

    ``tool_fault`` is asked for the tool fault to inject (``SimulatorState.take_tool_fault``).
    """
    body = parse_body(raw_body)
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise _invalid("model is required")
    model = find_model(model_id)
    if model is None:
        raise venice_error(404, f"Specified model not found: {model_id}", "MODEL_NOT_FOUND")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty list")
    n = _positive_int(body, "n") or 1
    if n > MAX_N:
        raise _invalid(f"n must be at most {MAX_N}")
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    stream = body.get("stream") is True

    client_key = _client_key(headers, model, enclave, phala_legacy=faults.phala_legacy)
    sealer: ResponseSealer | None = None
    if client_key is not None:
        if not stream:
            raise gateway_e2ee_error("E2EE requires streaming")
        if proxy_policy:
            violations = policy_violations(body, policy_allows)
            if violations:
                raise PolicyViolationError(violations)
        if faults.phala_legacy:
            messages = decrypt_messages_phala(messages, enclave.private)
        else:
            messages = decrypt_messages_near(messages, enclave.private)
        sealer = ResponseSealer(client_key, phala_legacy=faults.phala_legacy)

    text = tool_answer(messages, tool_fault)
    plan = plan_answer(messages, n=n, max_tokens=max_tokens, reasoning=model.reasoning, text=text)
    meta = CompletionMeta(id="chatcmpl-" + secrets.token_hex(16), created=created, model=model_id)
    if stream:
        items = stream_items(plan, meta, faults=faults, sealer=sealer)
        return ChatAnswer(model, meta, sealer is not None, enclave, items=items)
    return ChatAnswer(model, meta, False, enclave, completion=completion_object(plan, meta))
