"""The answer's own headers (what a client reads about where its prompt was decrypted) and the
non-streaming answer path (signature policy, hang-up, errors), called in-process."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, cast

import pytest

from proxy.attestation.report import AttestationReport, CheckResult
from proxy.core.errors import CLIENT_CLOSED_REQUEST, AttestationError, ProxyError
from proxy.http.answers import answer_headers, whole_answer
from proxy.service.chat import OpenedAnswer
from proxy.service.enclave_keys import AttestedKey

SIGNER = "0x" + "ab" * 20
E2EE_HEADERS = {
    "x-venice-proxy-e2ee": "true",
    "x-venice-proxy-signing-address": SIGNER,
    "x-venice-proxy-tcb-status": "UpToDate",
}


def key(trust: str | None) -> AttestedKey:
    report = AttestationReport(
        model="e2ee-m",
        nonce="00" * 32,
        shape="aci/1",
        signing_address=SIGNER,
        signing_public_key=None,
        tcb_status="UpToDate",
        checks=(CheckResult("trust_level", True, True, "ok", "trust"),),
        trust_level=trust,
    )
    return AttestedKey("e2ee-m", b"\x04" * 65, SIGNER, report, 0.0, 50.0, 100.0)


def outcome(trust: str | None = "enclave", *, with_key: bool = True, e2ee: bool = True) -> Any:
    return Outcome(key(trust) if with_key else None, dict(E2EE_HEADERS) if e2ee else {}, e2ee)


class Outcome:
    def __init__(self, key: AttestedKey | None, headers: dict[str, str], e2ee: bool) -> None:
        self.key = key
        self.headers = headers
        self.e2ee = e2ee
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("trust", ["enclave", "gateway"])
def test_the_answer_headers_name_the_trust_level_of_the_key_that_attested_it(trust: str) -> None:
    answer = outcome(trust)
    assert answer_headers(cast(OpenedAnswer, answer)) == {
        **E2EE_HEADERS,
        "x-venice-proxy-trust": trust,
    }
    assert answer.headers == E2EE_HEADERS  # the outcome's own headers are not changed


@pytest.mark.parametrize(("trust", "with_key"), [(None, True), ("", True), ("enclave", False)])
def test_no_trust_header_without_a_key_or_a_level(trust: str | None, with_key: bool) -> None:
    answer = outcome(trust, with_key=with_key)
    assert answer_headers(cast(OpenedAnswer, answer)) == E2EE_HEADERS


def test_a_passthrough_answer_says_it_is_not_e2ee() -> None:
    answer = Outcome(None, {"x-venice-proxy-e2ee": "false"}, False)
    assert answer_headers(cast(OpenedAnswer, answer)) == {"x-venice-proxy-e2ee": "false"}


# --- the whole (non-streaming) answer ------------------------------------------------------------


class Signatures:
    def __init__(self, mode: str, failure: ProxyError | None = None) -> None:
        self.mode = mode
        self.failure = failure
        self.strict_calls: list[str] = []
        self.checked: list[str] = []
        self.answers: list[Any] = []

    def mode_for(self, answer: Any) -> str:
        return self.mode if answer.e2ee else "off"

    async def strict_failure(self, answer: Any, request_id: str) -> ProxyError | None:
        self.strict_calls.append(request_id)
        self.answers.append(answer)
        return self.failure

    async def check(self, answer: Any, request_id: str) -> None:
        self.checked.append(request_id)
        self.answers.append(answer)


class Record:
    def __init__(self, signatures: Signatures) -> None:
        self.request_id = "req-1"
        self.spawned: list[Any] = []
        self.services = SimpleNamespace(signatures=signatures, spawn=self.spawn)
        self.events: list[Any] = []

    def spawn(self, coroutine: Any) -> None:
        self.spawned.append(coroutine)

    def first_byte(self) -> None:
        self.events.append("first_byte")

    def finish(self, status: int, error_code: str | None = None) -> None:
        self.events.append(("finish", status, error_code))

    def fail(self, exc: ProxyError, headers: dict[str, str]) -> Any:
        self.events.append(("fail", exc.code))
        return SimpleNamespace(status_code=exc.http_status, headers=headers)


class Client:
    """The ASGI request as ``until_disconnect`` reads it: a client that stays or hangs up."""

    def __init__(self, hang_up: bool = False) -> None:
        self.hang_up = hang_up

    async def receive(self) -> dict[str, Any]:
        if self.hang_up:
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def body(value: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)
    return value


HEADERS = {**E2EE_HEADERS, "x-venice-proxy-trust": "gateway"}


async def test_a_whole_answer_is_json_with_the_headers_and_async_checks_its_signature() -> None:
    signatures = Signatures("async")
    record, answer = Record(signatures), outcome("gateway")
    response = await whole_answer(
        cast(Any, Client()), cast(Any, record), answer, body({"id": "c1"}), HEADERS
    )
    assert response.status_code == 200
    assert json.loads(bytes(response.body)) == {"id": "c1"}
    assert response.headers["x-venice-proxy-trust"] == "gateway"
    assert response.headers["x-venice-proxy-signing-address"] == SIGNER
    assert record.events == ["first_byte", ("finish", 200, None)]
    assert answer.closed == 1
    assert signatures.strict_calls == []
    assert len(record.spawned) == 1
    await record.spawned[0]
    assert signatures.checked == ["req-1"]
    assert signatures.answers == [answer]  # the answer's own signer, not none


@pytest.mark.parametrize("mode", ["off", "strict"])
async def test_no_background_check_unless_async(mode: str) -> None:
    signatures = Signatures(mode)
    record, answer = Record(signatures), outcome()
    response = await whole_answer(cast(Any, Client()), cast(Any, record), answer, body({}), HEADERS)
    assert response.status_code == 200
    assert record.spawned == []
    assert signatures.strict_calls == (["req-1"] if mode == "strict" else [])
    assert signatures.answers == ([answer] if mode == "strict" else [])


async def test_strict_withholds_an_answer_whose_signature_fails() -> None:
    failure = AttestationError("the answer's signature does not verify", code="signature_mismatch")
    signatures = Signatures("strict", failure)
    record, answer = Record(signatures), outcome()
    response = await whole_answer(
        cast(Any, Client()), cast(Any, record), answer, body({"secret": "x"}), HEADERS
    )
    assert response.status_code == failure.http_status
    assert response.headers == HEADERS
    assert record.events == [("fail", "signature_mismatch")]
    assert answer.closed == 1
    assert record.spawned == []


async def test_an_error_while_gathering_is_the_answer() -> None:
    async def broken() -> dict[str, Any]:
        raise ProxyError("upstream broke")

    signatures = Signatures("async")
    record, answer = Record(signatures), outcome()
    response = await whole_answer(cast(Any, Client()), cast(Any, record), answer, broken(), HEADERS)
    assert response.status_code == ProxyError("x").http_status
    assert record.events == [("fail", ProxyError("x").code)]
    assert answer.closed == 1
    assert record.spawned == []


async def test_a_client_that_hangs_up_is_logged_as_499_and_the_upstream_closed() -> None:
    signatures = Signatures("async")
    record, answer = Record(signatures), outcome()

    async def slow() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    with pytest.raises(asyncio.CancelledError):
        await whole_answer(
            cast(Any, Client(hang_up=True)), cast(Any, record), answer, slow(), HEADERS
        )
    assert CLIENT_CLOSED_REQUEST == 499
    assert record.events == [("finish", 499, "client_disconnected")]
    assert answer.closed == 1
    assert record.spawned == []
