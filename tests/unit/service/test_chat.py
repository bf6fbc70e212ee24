"""The chat use case (:mod:`proxy.service.chat`) against a scripted upstream, no servers.

The upstream is a fake of the client interface the service takes (``open_chat`` returning a
stream with ``iter_bytes``/``aclose``); the model catalogue and the attested key cache are fakes
too. The crypto is real on both sides: every message the proxy sends is opened with the fake
enclave's private key, and every answer is sealed (the simulator's :class:`ResponseSealer`) to
the client key the request names. A canary in the prompt must never appear in plaintext in
anything sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import pytest

from proxy.attestation.report import AttestationReport
from proxy.core.aggregate import CompletionAggregator
from proxy.core.crypto import KeyPair, keypair_from_private, open_text
from proxy.core.errors import (
    DecryptionError,
    InvalidRequestError,
    ModelNotE2EEError,
    ModelNotFoundError,
    ProxyError,
    UnsupportedForE2EEError,
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamTooLargeError,
)
from proxy.core.retry import RetryPolicy
from proxy.service.catalog import ModelInfo
from proxy.service.chat import ChatService, OpenedAnswer
from proxy.service.enclave_keys import AttestedKey
from proxy.simulator.sealing import ResponseSealer
from tests.support.weather_tool import BAD, GOOD, WEATHER

ENCLAVE = keypair_from_private(bytes.fromhex("11" * 32))
ROTATED = keypair_from_private(bytes.fromhex("22" * 32))
STRANGER = keypair_from_private(bytes.fromhex("33" * 32))
MODEL = "e2ee-qwen-2-5-7b-p"
PLAIN = "plain-model"
CANARY = "CANARY-7f3a9c-secret-prompt"
SIGNER = "0x" + "ab" * 20
CLIENT_KEY = "x-venice-tee-client-pub-key"
MODEL_KEY = "x-venice-tee-model-pub-key"
ALGO = "x-venice-tee-signing-algo"


def attested(keys: KeyPair, *, tcb: str | None = "UpToDate", signer: str = SIGNER) -> AttestedKey:
    report = AttestationReport(
        model=MODEL,
        nonce="00" * 32,
        shape="near",
        signing_address=signer,
        signing_public_key=None,
        tcb_status=tcb,
        checks=(),
    )
    return AttestedKey(MODEL, keys.public, signer, report, 0.0, 1e12, 1e12)


# --- fakes ------------------------------------------------------------------------------------


class Keys:
    """The attested key cache: hands out ``current``; a rejected key is replaced by the next."""

    def __init__(self, *keys: AttestedKey) -> None:
        self.queue = list(keys)
        self.asked: list[str] = []
        self.invalidated: list[bytes] = []

    async def get(self, model: str) -> AttestedKey:
        self.asked.append(model)
        return self.queue[0]

    def invalidate_key(self, public_key: bytes) -> None:
        self.invalidated.append(public_key)
        if self.queue[0].public_key == public_key and len(self.queue) > 1:
            self.queue.pop(0)


class Catalogue:
    def __init__(self, *infos: ModelInfo, **models: bool) -> None:
        self.models = {
            name.replace("_", "-"): ModelInfo(id=name, supports_e2ee=e2ee, raw={})
            for name, e2ee in models.items()
        }
        self.models.update({info.id: info for info in infos})
        self.asked: list[str] = []

    async def lookup(self, model: str) -> ModelInfo | None:
        self.asked.append(model)
        return self.models.get(model)


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    obj = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
Piece = bytes | BaseException
Script = Callable[[bytes | None], list[Piece]]


def sealed(*texts: str, to: KeyPair | None = None, done: bool = True) -> Script:
    """An answer whose texts are sealed to the request's client key (or to ``to``'s key)."""

    def build(client_public: bytes | None) -> list[Piece]:
        assert client_public is not None, "an E2EE answer needs the request's client key"
        sealer = ResponseSealer(to.public if to is not None else client_public)
        pieces: list[Piece] = [chunk({"role": "assistant", "content": ""})]
        for text in texts:
            delta = {"content": text}
            sealer.seal_delta(delta)
            pieces.append(chunk(delta))
        pieces.append(chunk({}, "stop"))
        if done:
            pieces.append(DONE)
        return pieces

    return build


def plain(*texts: str) -> Script:
    def build(client_public: bytes | None) -> list[Piece]:
        assert client_public is None, "a passthrough request names no client key"
        pieces: list[Piece] = [chunk({"role": "assistant", "content": ""})]
        pieces += [chunk({"content": text}) for text in texts]
        return [*pieces, chunk({}, "stop"), DONE]

    return build


def raw(*pieces: Piece) -> Script:
    return lambda client_public: list(pieces)


class Stream:
    """An open upstream answer: its pieces in order (an exception is raised where it stands)."""

    def __init__(self, pieces: list[Piece]) -> None:
        self.pieces = pieces
        self.read = 0
        self.closed = 0

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            if isinstance(piece, BaseException):
                raise piece
            self.read += 1
            yield piece

    async def aclose(self) -> None:
        self.closed += 1


@dataclass
class Sent:
    raw: bytes
    headers: dict[str, str]  # names lowercased
    names: list[str]  # as the service wrote them

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.raw)
        return body

    @property
    def client_public(self) -> bytes | None:
        value = self.headers.get(CLIENT_KEY)
        return bytes.fromhex(value) if value is not None else None

    def opened(self, enclave: KeyPair = ENCLAVE) -> list[dict[str, Any]]:
        """The messages as the enclave reads them."""
        return [
            {**m, "content": open_text(enclave.private, m["content"])} if "content" in m else m
            for m in self.body["messages"]
        ]


@dataclass
class Upstream:
    """``open_chat``: each call takes the next scripted answer (an exception is raised)."""

    script: list[Script | BaseException]
    sent: list[Sent] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)

    async def open_chat(self, body: bytes, headers: dict[str, str]) -> Stream:
        assert isinstance(body, bytes)
        self.sent.append(Sent(body, {k.lower(): v for k, v in headers.items()}, list(headers)))
        assert self.script, "the upstream was asked once more than scripted"
        answer = self.script.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        stream = Stream(answer(self.sent[-1].client_public))
        self.streams.append(stream)
        return stream


class Pauses:
    def __init__(self) -> None:
        self.taken: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)


@dataclass
class Rig:
    upstream: Upstream
    keys: Keys
    catalogue: Catalogue
    pauses: Pauses
    retried: list[str]
    service: ChatService


def rig(
    *script: Script | BaseException,
    keys: Keys | None = None,
    catalogue: Catalogue | None = None,
    on_retry: bool = True,
    **options: Any,
) -> Rig:
    upstream = Upstream(list(script))
    keys = keys or Keys(attested(ENCLAVE))
    catalogue = catalogue or Catalogue(
        **{MODEL.replace("-", "_"): True, PLAIN.replace("-", "_"): False}
    )
    pauses = Pauses()
    retried: list[str] = []
    options.setdefault("aliases", {})
    options.setdefault("non_e2ee", "reject")
    service = ChatService(
        upstream,  # type: ignore[arg-type]
        catalogue,  # type: ignore[arg-type]
        keys,  # type: ignore[arg-type]
        sleep=pauses,
        on_retry=retried.append if on_retry else None,
        **options,
    )
    return Rig(upstream, keys, catalogue, pauses, retried, service)


def ask(*, model: str = MODEL, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": f"system {CANARY}"},
            {"role": "user", "content": f"user {CANARY}"},
        ],
        **extra,
    }


def texts(batch: list[dict[str, Any]]) -> list[str]:
    return [
        choice["delta"]["content"]
        for item in batch
        for choice in item.get("choices", [])
        if choice.get("delta", {}).get("content")
    ]


async def whole(answer: OpenedAnswer) -> str:
    out = list(answer.first)
    async for batch in answer.rest:
        out.extend(batch)
    return "".join(texts(out))


def assert_no_plaintext(sent: list[Sent]) -> None:
    for request in sent:
        assert CANARY.encode() not in request.raw
        assert all(CANARY not in f"{k}:{v}" for k, v in request.headers.items())


# --- what reaches the upstream ----------------------------------------------------------------


async def test_an_e2ee_request_travels_encrypted_to_the_attested_key() -> None:
    r = rig(sealed("Hello", " world"), aliases={"friendly": MODEL})
    answer = await r.service.start(ask(model="friendly", temperature=0.5), request_id="req-1")
    (sent,) = r.upstream.sent
    assert_no_plaintext(r.upstream.sent)
    assert r.catalogue.asked == [MODEL]
    assert r.keys.asked == [MODEL]
    assert sent.body["model"] == MODEL
    assert sent.body["temperature"] == 0.5
    assert sent.body["stream"] is True
    assert sent.opened() == [
        {"role": "system", "content": f"system {CANARY}"},
        {"role": "user", "content": f"user {CANARY}"},
    ]
    with pytest.raises(DecryptionError):
        sent.opened(STRANGER)
    assert sent.headers[MODEL_KEY] == ENCLAVE.public.hex()
    assert sent.headers[ALGO] == "ecdsa"
    assert sent.headers["x-request-id"] == "req-1"
    assert "x-request-id" in sent.names  # lowercase, like every header the proxy adds
    assert sent.client_public is not None
    assert len(sent.client_public) == 65
    assert texts(answer.first) == ["Hello"]
    assert await whole(answer) == "Hello world"
    assert answer.model == MODEL
    assert answer.e2ee is True
    assert answer.client_stream is True
    assert answer.include_usage is False
    assert answer.key == r.keys.queue[0]
    assert answer.attempts == 1
    assert answer.plan is None
    assert answer.headers == {
        "x-venice-proxy-e2ee": "true",
        "x-venice-proxy-signing-address": SIGNER,
        "x-venice-proxy-tcb-status": "UpToDate",
    }
    assert r.pauses.taken == []
    assert r.retried == []
    assert r.upstream.streams[0].closed == 0
    await answer.aclose()
    assert r.upstream.streams[0].closed == 1


async def test_the_answer_reads_ahead_until_its_first_text_only() -> None:
    r = rig(sealed("one", "two", "three"))
    answer = await r.service.start(ask())
    assert texts(answer.first) == ["one"]
    assert answer.first[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    stream = r.upstream.streams[0]
    assert stream.read == 2
    assert await whole(answer) == "onetwothree"


async def test_no_request_id_is_sent_when_there_is_none() -> None:
    r = rig(sealed("x"))
    await r.service.start(ask(), request_id=None)
    assert "x-request-id" not in r.upstream.sent[0].headers


async def test_non_streamed_with_usage_and_no_tcb_status() -> None:
    keys = Keys(attested(ENCLAVE, tcb=None, signer="0x" + "cd" * 20))
    r = rig(sealed("hi"), keys=keys)
    answer = await r.service.start(ask(stream_options={"include_usage": True}))
    assert answer.client_stream is True
    assert answer.include_usage is True
    assert answer.headers == {
        "x-venice-proxy-e2ee": "true",
        "x-venice-proxy-signing-address": "0x" + "cd" * 20,
    }


async def test_a_field_outside_the_allowlist_is_refused_before_anything_is_sent() -> None:
    r = rig(sealed("x"))
    with pytest.raises(UnsupportedForE2EEError) as caught:
        await r.service.start(ask(custom_note=CANARY))
    assert caught.value.param == "custom_note"
    assert r.upstream.sent == []
    assert r.keys.asked == []
    assert r.catalogue.asked == []  # the policy comes first


async def test_a_forwarded_field_travels_as_configured() -> None:
    r = rig(sealed("x"), forward_fields=["custom_note"])
    await r.service.start(ask(custom_note="tenant-42"))
    assert r.upstream.sent[0].body["custom_note"] == "tenant-42"
    assert_no_plaintext(r.upstream.sent)


async def test_a_model_feature_suffix_is_refused() -> None:
    r = rig(sealed("x"))
    with pytest.raises(UnsupportedForE2EEError) as caught:
        await r.service.start(ask(model=MODEL + ":enable_web_search=on"))
    assert caught.value.param == "model"
    assert r.catalogue.asked == []
    assert r.upstream.sent == []


async def test_a_lone_surrogate_is_a_400_not_a_crash() -> None:
    r = rig(plain("x"), non_e2ee="passthrough", passthrough_models=[PLAIN])
    request = ask(model=PLAIN)
    request["messages"][1]["content"] = "bad \ud800 text"
    with pytest.raises(InvalidRequestError) as caught:
        await r.service.start(request)
    assert caught.value.code == "invalid_unicode"
    assert caught.value.status == 400
    assert caught.value.message == "the request contains a lone UTF-16 surrogate (invalid Unicode)"


async def test_each_request_takes_fresh_client_keys() -> None:
    r = rig(sealed("a"), sealed("b"))
    await r.service.start(ask())
    await r.service.start(ask())
    first, second = r.upstream.sent
    assert first.client_public != second.client_public
    assert first.body["messages"] != second.body["messages"]
    assert first.opened() == second.opened()


# --- the model: lookup, policy, passthrough ---------------------------------------------------


async def test_an_unknown_model_is_a_404() -> None:
    r = rig()
    with pytest.raises(ModelNotFoundError) as caught:
        await r.service.start(ask(model="nope"))
    error = caught.value
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert error.message == (
        "the model 'nope' does not exist upstream; GET /v1/models lists the E2EE models"
    )
    assert r.keys.asked == []
    assert r.upstream.sent == []


async def test_a_model_without_e2ee_is_refused_by_default() -> None:
    r = rig(plain("x"), passthrough_models=[PLAIN])
    with pytest.raises(ModelNotE2EEError) as caught:
        await r.service.start(ask(model=PLAIN))
    error = caught.value
    assert (error.status, error.code, error.param) == (400, "model_not_e2ee", "model")
    assert error.message == (
        "the model 'plain-model' does not support end-to-end encryption, and this proxy refuses "
        "to send prompts in plaintext (to allow it for this model: privacy.non_e2ee = "
        '"passthrough" and the model in privacy.passthrough_models); choose an e2ee- model '
        "from GET /v1/models"
    )
    assert r.upstream.sent == []


async def test_an_e2ee_id_without_e2ee_in_the_catalogue_is_never_passed_through() -> None:
    catalogue = Catalogue(e2ee_odd=False)
    r = rig(
        plain("x"), catalogue=catalogue, non_e2ee="passthrough", passthrough_models=["e2ee-odd"]
    )
    with pytest.raises(ModelNotE2EEError) as caught:
        await r.service.start(ask(model="e2ee-odd"))
    assert caught.value.message == (
        "the upstream's catalogue says 'e2ee-odd' does not support end-to-end encryption; "
        "an e2ee- model is never sent a prompt in plaintext"
    )
    assert r.upstream.sent == []


async def test_a_configured_passthrough_model_goes_in_plaintext() -> None:
    r = rig(
        plain("plain ", "answér"),
        non_e2ee="passthrough",
        passthrough_models=[PLAIN],
        aliases={"p": PLAIN},
    )
    answer = await r.service.start(ask(model="p", stream=False, n=1), request_id="req-9")
    (sent,) = r.upstream.sent
    assert sent.body["model"] == PLAIN
    assert sent.body["messages"][1] == {"role": "user", "content": f"user {CANARY}"}
    assert sent.headers == {"x-request-id": "req-9"}
    assert r.keys.asked == []
    assert answer.e2ee is False
    assert answer.model == PLAIN
    assert answer.client_stream is False
    assert answer.include_usage is False
    assert answer.key is None
    assert answer.attempts == 1
    assert answer.first == []
    assert answer.headers == {"x-venice-proxy-e2ee": "false"}
    assert r.catalogue.asked == [PLAIN]
    assert await whole(answer) == "plain answér"
    assert answer.stats.completed is True
    await answer.aclose()
    assert r.upstream.streams[0].closed == 1
    # Compact JSON, UTF-8 as is.
    assert b'"model":"plain-model"' in sent.raw
    assert "answér".encode() not in sent.raw  # the answer is not in the request
    r2 = rig(plain("x"), non_e2ee="passthrough", passthrough_models=[PLAIN])
    request = ask(model=PLAIN, stream_options={"include_usage": True})
    request["messages"][1]["content"] = "café"
    answer = await r2.service.start(request)
    assert answer.include_usage is True
    assert answer.client_stream is True
    assert "café".encode() in r2.upstream.sent[0].raw
    assert r2.upstream.sent[0].headers == {}


def test_passthrough_allowed_needs_the_setting_the_list_and_no_e2ee_prefix() -> None:
    both = rig(non_e2ee="passthrough", passthrough_models=[PLAIN, "e2ee-x"]).service
    assert both.passthrough_allowed(PLAIN) is True
    assert both.passthrough_allowed("other") is False
    assert both.passthrough_allowed("e2ee-x") is False
    rejecting = rig(non_e2ee="reject", passthrough_models=[PLAIN]).service
    assert rejecting.passthrough_allowed(PLAIN) is False


async def test_passthrough_stream_events_are_bounded() -> None:
    big = chunk({"content": "x" * 5000})
    r = rig(
        raw(big, DONE), non_e2ee="passthrough", passthrough_models=[PLAIN], max_event_bytes=1000
    )
    answer = await r.service.start(ask(model=PLAIN))
    with pytest.raises(ProxyError) as caught:
        await whole(answer)
    assert caught.value.code == "upstream_event_too_large"


async def test_passthrough_answers_are_cut_at_stop_sequences() -> None:
    r = rig(plain("one two ", "three"), non_e2ee="passthrough", passthrough_models=[PLAIN])
    answer = await r.service.start(ask(model=PLAIN, stop=["two"]))
    assert await whole(answer) == "one "


async def test_passthrough_connect_errors_are_retried() -> None:
    r = rig(
        UpstreamConnectError(),
        plain("ok"),
        non_e2ee="passthrough",
        passthrough_models=[PLAIN],
    )
    answer = await r.service.start(ask(model=PLAIN))
    assert answer.attempts == 2
    assert r.retried == ["connect"]
    assert await whole(answer) == "ok"


# --- retries ----------------------------------------------------------------------------------


def rate_limited(**hints: str) -> UpstreamStatusError:
    return UpstreamStatusError(429, "upstream error 429: slow down", **hints)


def server_error(status: int = 503) -> UpstreamStatusError:
    return UpstreamStatusError(status, f"upstream error {status}: busy")


async def test_a_connect_error_is_retried_with_fresh_encryption() -> None:
    r = rig(UpstreamConnectError(), sealed("ok"))
    answer = await r.service.start(ask())
    assert answer.attempts == 2
    assert r.retried == ["connect"]
    (pause,) = r.pauses.taken
    assert 0 <= pause <= 0.25
    first, second = r.upstream.sent
    assert first.client_public != second.client_public
    assert first.body["messages"] != second.body["messages"]
    assert first.opened() == second.opened()
    assert r.keys.invalidated == []
    assert_no_plaintext(r.upstream.sent)
    assert await whole(answer) == "ok"


async def test_a_connect_timeout_is_retried() -> None:
    r = rig(UpstreamConnectTimeoutError(), sealed("ok"))
    answer = await r.service.start(ask())
    assert (answer.attempts, r.retried) == (2, ["timeout"])


async def test_retries_work_without_a_retry_callback() -> None:
    r = rig(UpstreamConnectError(), server_error(), sealed("ok"), on_retry=False)
    answer = await r.service.start(ask())
    assert answer.attempts == 3
    assert len(r.pauses.taken) == 2


async def test_a_429_waits_what_retry_after_says() -> None:
    r = rig(rate_limited(retry_after="3"), sealed("ok"))
    answer = await r.service.start(ask())
    assert r.pauses.taken == [3.0]
    assert r.retried == ["rate_limited"]
    assert answer.attempts == 2


async def test_a_retry_after_date_is_read_against_the_clock() -> None:
    r = rig(rate_limited(retry_after=formatdate(time.time() + 4, usegmt=True)), sealed("ok"))
    await r.service.start(ask())
    (pause,) = r.pauses.taken
    assert 2.0 <= pause <= 4.0


async def test_a_ratelimit_reset_is_a_unix_time() -> None:
    r = rig(rate_limited(ratelimit_reset=str(time.time() + 5)), sealed("ok"))
    await r.service.start(ask())
    (pause,) = r.pauses.taken
    assert 4.0 <= pause <= 5.0


async def test_a_wait_longer_than_allowed_is_not_taken() -> None:
    r = rig(rate_limited(retry_after="9"), sealed("ok"))
    with pytest.raises(UpstreamStatusError) as caught:
        await r.service.start(ask())
    assert caught.value.http_status == 429
    assert caught.value.retry_after == "9"
    assert r.pauses.taken == []
    assert r.retried == []
    assert len(r.upstream.sent) == 1


async def test_the_total_time_bounds_the_retries() -> None:
    policy = RetryPolicy(max_retries=5, max_delay_s=8.0, max_total_s=10.0)
    r = rig(
        rate_limited(retry_after="6"),
        rate_limited(retry_after="6"),
        sealed("ok"),
        retry=policy,
    )
    # The pauses are not really taken: elapsed time is the clock's, so the second wait (6 s
    # after about 0 s) still fits, a third would not have.
    answer = await r.service.start(ask())
    assert r.pauses.taken == [6.0, 6.0]
    assert answer.attempts == 3
    r = rig(rate_limited(retry_after="6"), rate_limited(retry_after="11"), retry=policy)
    with pytest.raises(UpstreamStatusError):
        await r.service.start(ask())
    assert r.pauses.taken == [6.0]


async def test_server_errors_are_retried_twice_then_reported() -> None:
    last = server_error(502)
    r = rig(server_error(500), server_error(503), last)
    with pytest.raises(UpstreamStatusError) as caught:
        await r.service.start(ask())
    assert caught.value is last
    assert caught.value.http_status == 502
    assert r.retried == ["server_error", "server_error"]
    assert len(r.pauses.taken) == 2
    assert 0 <= r.pauses.taken[0] <= 0.25
    assert 0 <= r.pauses.taken[1] <= 0.5
    assert len(r.upstream.sent) == 3
    assert len({s.client_public for s in r.upstream.sent}) == 3


async def test_the_retry_count_is_the_policy_s() -> None:
    r = rig(server_error(), server_error(), server_error(), sealed("ok"), retry=RetryPolicy(3))
    answer = await r.service.start(ask())
    assert answer.attempts == 4
    assert len(r.pauses.taken) == 3
    r = rig(server_error(), sealed("ok"), retry=RetryPolicy(max_retries=0))
    with pytest.raises(UpstreamStatusError):
        await r.service.start(ask())
    assert len(r.upstream.sent) == 1


@pytest.mark.parametrize(
    "error",
    [
        UpstreamStatusError(400, "upstream error 400: bad request"),
        UpstreamStatusError(401, "upstream error 401: decrypt the public key"),
        UpstreamStatusError(402, "upstream error 402: pay"),
        UpstreamTimeoutError(),
    ],
    ids=["400", "401-with-key-words", "402", "timeout-after-connect"],
)
async def test_errors_that_are_not_retried(error: ProxyError) -> None:
    r = rig(error, sealed("ok"))
    with pytest.raises(ProxyError) as caught:
        await r.service.start(ask())
    assert caught.value is error
    assert r.pauses.taken == []
    assert r.retried == []
    assert r.keys.invalidated == []
    assert len(r.upstream.sent) == 1


async def test_a_stream_that_breaks_before_its_first_text_is_retried() -> None:
    broken = UpstreamError("the upstream connection broke", code="upstream_stream_broken")
    r = rig(raw(chunk({"role": "assistant", "content": ""}), broken), sealed("ok"))
    answer = await r.service.start(ask())
    assert r.retried == ["stream_broken"]
    assert answer.attempts == 2
    assert r.upstream.streams[0].closed == 1
    assert r.upstream.streams[1].closed == 0
    assert await whole(answer) == "ok"


# --- a stale enclave key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "rejection",
    [
        UpstreamStatusError(400, "upstream error 400: x", upstream_type="e2ee_model_key_mismatch"),
        UpstreamStatusError(400, "upstream error 400: x", upstream_type="e2ee_decryption_failed"),
        UpstreamStatusError(400, "upstream error 400: x", code="e2ee_model_key_mismatch"),
        UpstreamStatusError(400, "upstream error 400: x", code="e2ee_decryption_failed"),
        UpstreamStatusError(400, "upstream error 400: Failed to DECRYPT message"),
        UpstreamStatusError(400, "upstream error 400: invalid Public Key"),
        UpstreamStatusError(400, "upstream error 400: bad model_key"),
        UpstreamStatusError(400, "upstream error 400: unknown model key"),
        UpstreamStatusError(400, "upstream error 400: missing E2EE header"),
    ],
)
async def test_a_rejected_key_is_reattested_and_the_request_sent_again(
    rejection: UpstreamStatusError,
) -> None:
    keys = Keys(attested(ENCLAVE), attested(ROTATED, signer="0x" + "ee" * 20))
    r = rig(rejection, sealed("fresh"), keys=keys)
    answer = await r.service.start(ask())
    assert r.keys.invalidated == [ENCLAVE.public]
    assert r.keys.asked == [MODEL, MODEL]
    assert r.retried == ["key_rejected"]
    assert r.pauses.taken == []
    first, second = r.upstream.sent
    assert first.headers[MODEL_KEY] == ENCLAVE.public.hex()
    assert second.headers[MODEL_KEY] == ROTATED.public.hex()
    assert second.opened(ROTATED) == first.opened(ENCLAVE)
    with pytest.raises(DecryptionError):
        second.opened(ENCLAVE)
    assert first.client_public != second.client_public
    assert_no_plaintext(r.upstream.sent)
    assert answer.key is not None
    assert answer.key.public_key == ROTATED.public
    assert answer.headers["x-venice-proxy-signing-address"] == "0x" + "ee" * 20
    assert answer.attempts == 2
    assert await whole(answer) == "fresh"


async def test_a_key_rejected_twice_is_reported() -> None:
    keys = Keys(attested(ENCLAVE), attested(ROTATED))
    again = UpstreamStatusError(400, "upstream error 400: decrypt failed")
    r = rig(UpstreamStatusError(400, "upstream error 400: decrypt"), again, keys=keys)
    with pytest.raises(UpstreamStatusError) as caught:
        await r.service.start(ask())
    assert caught.value is again
    assert caught.value.__suppress_context__ is True
    assert r.keys.invalidated == [ENCLAVE.public]
    assert r.retried == ["key_rejected"]
    assert len(r.upstream.sent) == 2


async def test_an_answer_sealed_to_another_key_is_a_stale_key() -> None:
    keys = Keys(attested(ENCLAVE), attested(ROTATED))
    r = rig(sealed("lost", to=STRANGER), sealed("found"), keys=keys)
    answer = await r.service.start(ask())
    assert r.upstream.streams[0].closed == 1
    assert r.keys.invalidated == [ENCLAVE.public]
    assert r.retried == ["key_rejected"]
    assert r.upstream.sent[1].headers[MODEL_KEY] == ROTATED.public.hex()
    assert answer.attempts == 2
    assert await whole(answer) == "found"


async def test_an_answer_that_never_opens_is_a_decryption_error() -> None:
    keys = Keys(attested(ENCLAVE), attested(ROTATED))
    r = rig(sealed("lost", to=STRANGER), sealed("lost", to=STRANGER), keys=keys)
    with pytest.raises(DecryptionError) as caught:
        await r.service.start(ask())
    assert caught.value.code == "e2ee_decryption_failed"
    assert all(stream.closed == 1 for stream in r.upstream.streams)
    assert len(r.upstream.sent) == 2


async def test_a_stale_key_then_a_transient_fault_are_both_survived() -> None:
    keys = Keys(attested(ENCLAVE), attested(ROTATED))
    r = rig(
        UpstreamStatusError(400, "upstream error 400: decrypt"),
        server_error(),
        sealed("ok"),
        keys=keys,
    )
    answer = await r.service.start(ask())
    assert r.retried == ["key_rejected", "server_error"]
    assert answer.attempts == 3
    assert [s.headers[MODEL_KEY] for s in r.upstream.sent] == [
        ENCLAVE.public.hex(),
        ROTATED.public.hex(),
        ROTATED.public.hex(),
    ]


# --- the read-ahead ---------------------------------------------------------------------------


async def test_the_read_ahead_is_bounded() -> None:
    role = chunk({"role": "assistant", "content": ""})
    r = rig(raw(role, role, role, role), max_read_ahead_bytes=len(role) * 2)
    with pytest.raises(UpstreamTooLargeError) as caught:
        await r.service.start(ask())
    assert caught.value.code == "upstream_read_ahead_exceeded"
    assert r.upstream.streams[0].closed == 1
    assert r.upstream.streams[0].read == 3


async def test_an_event_is_bounded() -> None:
    r = rig(raw(chunk({"role": "assistant", "content": "y" * 3000})), max_event_bytes=1000)
    with pytest.raises(ProxyError) as caught:
        await r.service.start(ask())
    assert caught.value.code == "upstream_event_too_large"
    assert r.upstream.streams[0].closed == 1


async def test_plaintext_in_an_e2ee_stream_is_refused_and_closed() -> None:
    r = rig(raw(chunk({"content": "not sealed at all"}), DONE))
    with pytest.raises(ProxyError) as caught:
        await r.service.start(ask())
    assert caught.value.code == "e2ee_plaintext_in_stream"
    assert r.upstream.streams[0].closed == 1
    assert r.keys.invalidated == []


async def test_a_stream_without_text_ends_the_read_ahead() -> None:
    r = rig(raw(chunk({"role": "assistant", "content": ""}), chunk({}, "stop"), DONE))
    answer = await r.service.start(ask())
    assert len(answer.first) == 2
    assert [b async for b in answer.rest] == []
    assert answer.stats.completed


async def test_a_cancelled_read_ahead_closes_the_upstream() -> None:
    r = rig(raw(chunk({"role": "assistant", "content": ""}), KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        await r.service.start(ask())
    assert r.upstream.streams[0].closed == 1


# --- stop sequences ---------------------------------------------------------------------------


async def test_stop_sequences_cut_the_answer() -> None:
    r = rig(sealed("say one", " two three", " four"))
    answer = await r.service.start(ask(stop=["three"]))
    assert await whole(answer) == "say one two "


async def test_the_stream_is_read_to_its_end_after_a_stop_when_asked() -> None:
    cases: list[tuple[dict[str, Any], int]] = [({}, 3), ({"read_to_end_after_stop": True}, 6)]
    for options, read in cases:
        r = rig(sealed("a", "b STOP", "c"), **options)
        answer = await r.service.start(ask(stop=["STOP"]))
        assert await whole(answer) == "ab "
        assert r.upstream.streams[0].read == read


# --- tool emulation ---------------------------------------------------------------------------


async def chunks_of(answer: OpenedAnswer) -> list[dict[str, Any]]:
    out = list(answer.first)
    async for batch in answer.rest:
        out.extend(batch)
    return out


def calls(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool calls of the answer, folded as a client would."""
    aggregator = CompletionAggregator()
    for item in chunks:
        aggregator.add(item)
    found: list[dict[str, Any]] = aggregator.result()["choices"][0]["message"].get("tool_calls")
    return found or []


async def test_tools_travel_encrypted_and_the_call_comes_back() -> None:
    r = rig(sealed(GOOD), aliases={"friendly": MODEL})
    answer = await r.service.start(
        ask(model="friendly", tools=[WEATHER], tool_choice="auto"), request_id="req-3"
    )
    (sent,) = r.upstream.sent
    assert_no_plaintext(r.upstream.sent)
    assert b"get_weather" not in sent.raw
    assert "tools" not in sent.body
    assert "tool_choice" not in sent.body
    assert sent.body["model"] == MODEL
    assert sent.headers["x-request-id"] == "req-3"
    assert "get_weather" in json.dumps(sent.opened())
    assert r.catalogue.asked == [MODEL]
    assert answer.plan is not None
    assert answer.first == []
    assert answer.model == MODEL
    assert answer.attempts == 1
    assert answer.headers["x-venice-proxy-e2ee"] == "true"
    chunks = await chunks_of(answer)
    (call,) = calls(chunks)
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert r.retried == []


async def test_an_invalid_call_is_asked_again_in_a_new_encrypted_request() -> None:
    keys = Keys(attested(ENCLAVE), attested(ROTATED, signer="0x" + "ee" * 20))
    r = rig(
        sealed(BAD),
        UpstreamStatusError(400, "upstream error 400: decrypt"),
        UpstreamConnectError(),
        sealed(GOOD),
        keys=keys,
        forward_fields=["custom_note"],
    )
    answer = await r.service.start(ask(tools=[WEATHER], custom_note="n1"), request_id="req-4")
    first_upstream = answer.upstream
    chunks = await chunks_of(answer)
    (call,) = calls(chunks)
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert r.retried == ["tool_repair", "key_rejected", "connect"]
    assert len(r.upstream.sent) == 4
    assert_no_plaintext(r.upstream.sent)
    assert [s.body["custom_note"] for s in r.upstream.sent] == ["n1"] * 4
    assert all(s.headers["x-request-id"] == "req-4" for s in r.upstream.sent)
    assert r.upstream.sent[3].headers[MODEL_KEY] == ROTATED.public.hex()
    assert "town" in json.dumps(r.upstream.sent[3].opened(ROTATED))
    # The outcome now reads (and closes) the attempt that answered, with its key.
    upstream: Any = answer.upstream
    assert upstream is r.upstream.streams[1]
    assert upstream is not first_upstream
    assert answer.key is not None
    assert answer.key.public_key == ROTATED.public
    assert answer.attempts == 1 + 3
    assert r.upstream.streams[0].closed == 1


async def test_emulation_stops_cut_the_text_never_the_call() -> None:
    r = rig(sealed(GOOD))
    answer = await r.service.start(ask(tools=[WEATHER], stop=["Oslo"]))
    (call,) = calls(await chunks_of(answer))
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    r = rig(sealed("It is sunny STOP in Oslo"))
    answer = await r.service.start(ask(tools=[WEATHER], stop=["STOP"]))
    chunks = await chunks_of(answer)
    assert calls(chunks) == []
    assert "".join(texts(chunks)) == "It is sunny "


async def test_the_model_spec_chooses_the_convention() -> None:
    spec = {"modelSource": "Qwen/Qwen2.5-7B-Instruct"}
    for raw_spec, convention in ((spec, "<tool_call>"), ("Qwen", None)):
        info = ModelInfo(id="e2ee-mystery", supports_e2ee=True, raw={"model_spec": raw_spec})
        r = rig(sealed("no call"), catalogue=Catalogue(info))
        await r.service.start(ask(model="e2ee-mystery", tools=[WEATHER]))
        system = r.upstream.sent[0].opened()[0]["content"]
        if convention is None:
            assert "<tool_call>" not in system
        else:
            assert convention in system


async def test_a_tool_choice_without_tools_is_dropped_and_sent_encrypted() -> None:
    r = rig(sealed("plain words"), forward_fields=["custom_note"])
    answer = await r.service.start(
        ask(tool_choice="none", custom_note="n2", stop=["words"]), request_id="req-5"
    )
    (sent,) = r.upstream.sent
    assert "tool_choice" not in sent.body
    assert sent.body["custom_note"] == "n2"
    assert sent.headers["x-request-id"] == "req-5"
    assert answer.plan is None
    assert texts(answer.first) == ["plain "]
    assert await whole(answer) == "plain "
    assert_no_plaintext(r.upstream.sent)


async def test_tools_for_an_unknown_model_are_a_404() -> None:
    r = rig()
    with pytest.raises(ModelNotFoundError):
        await r.service.start(ask(model="nope", tools=[WEATHER]))


async def test_tools_for_a_passthrough_model_get_the_policy_s_400() -> None:
    r = rig(plain("x"), non_e2ee="passthrough", passthrough_models=[PLAIN])
    with pytest.raises(UnsupportedForE2EEError) as caught:
        await r.service.start(ask(model=PLAIN, tools=[WEATHER]))
    assert caught.value.param == "tools"
    assert r.upstream.sent == []


async def test_a_tool_message_with_an_unknown_text_key_is_refused() -> None:
    request = ask(tools=[WEATHER])
    request["messages"].append({"role": "user", "content": "x", "secret_note": CANARY})
    r = rig(sealed(GOOD))
    with pytest.raises(InvalidRequestError):
        await r.service.start(request)
    assert r.upstream.sent == []


@pytest.mark.parametrize("payload", [["not", "an", "object"], {"model": 7, "tools": [WEATHER]}])
async def test_a_malformed_request_is_a_400(payload: Any) -> None:
    r = rig(sealed("x"))
    with pytest.raises(InvalidRequestError):
        await r.service.start(payload)
    assert r.upstream.sent == []
    assert r.catalogue.asked == []


async def test_response_format_is_emulated() -> None:
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "city",
            "schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    r = rig(sealed('{"city": "Oslo"}'))
    answer = await r.service.start(ask(response_format=schema))
    assert answer.plan is not None
    assert "response_format" not in r.upstream.sent[0].body
    assert json.loads(await whole(answer)) == {"city": "Oslo"}


# --- the key pairs made ahead -----------------------------------------------------------------


async def test_key_pairs_are_made_again_one_per_loop_pass_after_a_request() -> None:
    r = rig(sealed("a"), sealed("b"))
    fresh = r.service.fresh_keys
    assert repr(fresh) == "FreshKeys(0 of 64 ready)"
    await r.service.start(ask())
    await r.service.start(ask())
    assert repr(fresh) == "FreshKeys(0 of 64 ready)"  # nothing made before the answers began
    await asyncio.sleep(0)
    assert repr(fresh) == "FreshKeys(1 of 64 ready)"
    await asyncio.sleep(0)
    assert repr(fresh) == "FreshKeys(2 of 64 ready)"
    for _ in range(100):
        await asyncio.sleep(0)
    assert repr(fresh) == "FreshKeys(64 of 64 ready)"


async def test_key_pairs_are_topped_up_again_after_the_pool_was_full() -> None:
    r = rig(sealed("a"), sealed("b"))
    await r.service.start(ask())
    for _ in range(100):
        await asyncio.sleep(0)
    await r.service.start(ask())  # takes three: the client's and two messages'
    assert repr(r.service.fresh_keys) == "FreshKeys(61 of 64 ready)"
    for _ in range(10):
        await asyncio.sleep(0)
    assert repr(r.service.fresh_keys) == "FreshKeys(64 of 64 ready)"


async def test_key_pairs_are_topped_up_after_a_failed_open() -> None:
    r = rig(UpstreamStatusError(403, "upstream error 403: no"))
    with pytest.raises(UpstreamStatusError):
        await r.service.start(ask())
    await asyncio.sleep(0)
    assert repr(r.service.fresh_keys) == "FreshKeys(1 of 64 ready)"


def with_a_field_sealed_to_a_stranger(*texts: str, bad: str) -> Script:
    """An answer whose ``texts`` open, then one more text field that does not."""

    def build(client_public: bytes | None) -> list[Piece]:
        good = sealed(*texts)(client_public)
        wrong = sealed(bad, to=STRANGER)(client_public)
        return [*good[: 1 + len(texts)], wrong[1], *good[1 + len(texts) :]]

    return build


@pytest.mark.parametrize(
    ("stop", "read_to_end"), [("STOP", False), ("ST", True)], ids=["held-back", "cut"]
)
async def test_a_field_that_fails_after_the_first_opened_is_no_stale_key(
    stop: str, read_to_end: bool
) -> None:
    """Regression: with a stop sequence, the answer's first text can be held back (a prefix of
    the stop) or cut away (the stop itself) before the read-ahead sees it. A later field that
    did not decrypt was then taken for a stale key: the working key was dropped, the model
    re-attested and the prompt sent (and paid) again, and the broken answer replaced by the
    new one as if nothing had happened. The first field opened: it is a decryption error.
    (A cut first text hides it only when the stream is read to its end after the stop.)"""
    keys = Keys(attested(ENCLAVE), attested(ROTATED))
    r = rig(
        with_a_field_sealed_to_a_stranger("ST", bad="OP more"),
        sealed("again"),
        keys=keys,
        read_to_end_after_stop=read_to_end,
    )
    with pytest.raises(DecryptionError):
        await r.service.start(ask(stop=[stop]))
    assert r.keys.invalidated == []
    assert r.retried == []
    assert len(r.upstream.sent) == 1
    assert r.upstream.streams[0].closed == 1


async def test_a_first_field_that_does_not_open_under_a_stop_is_a_stale_key() -> None:
    keys = Keys(attested(ENCLAVE), attested(ROTATED))
    r = rig(sealed("lost", to=STRANGER), sealed("found STOP x"), keys=keys)
    answer = await r.service.start(ask(stop=["STOP"]))
    assert r.keys.invalidated == [ENCLAVE.public]
    assert r.retried == ["key_rejected"]
    assert await whole(answer) == "found "
    assert r.upstream.streams[0].closed == 1


# --- more of the policy, the choices and emulation --------------------------------------------


async def test_a_malformed_request_is_a_400_before_the_model_is_looked_up() -> None:
    r = rig(sealed("x"))
    with pytest.raises(InvalidRequestError) as caught:
        await r.service.start(ask(model="nope", temperature="hot"))
    assert caught.value.status == 400
    assert caught.value.param == "temperature"
    assert r.catalogue.asked == []


async def test_stops_apply_to_every_choice() -> None:
    def two_choices(client_public: bytes | None) -> list[Piece]:
        def at(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
            obj = {
                "id": "chatcmpl-2",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": PLAIN,
                "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        return [
            at(0, {"role": "assistant", "content": "one two three"}),
            at(0, {}, "stop"),
            at(1, {"role": "assistant", "content": "four two five"}),
            at(1, {}, "stop"),
            DONE,
        ]

    r = rig(two_choices, non_e2ee="passthrough", passthrough_models=[PLAIN])
    answer = await r.service.start(ask(model=PLAIN, n=2, stop=["two"]))
    assert await whole(answer) == "one four "
    assert answer.stats.stopped is True


async def test_an_emulated_answer_counts_on_the_request_s_stats() -> None:
    r = rig(sealed("It is sunny STOP in Oslo"))
    answer = await r.service.start(ask(tools=[WEATHER], stop=["STOP"]))
    await chunks_of(answer)
    assert answer.stats.stopped is True


async def test_a_re_ask_continues_the_request_s_stats_and_model() -> None:
    r = rig(sealed(BAD), sealed(GOOD), aliases={"friendly": MODEL})
    answer = await r.service.start(ask(model="friendly", tools=[WEATHER], stop=["Oslo"]))
    (call,) = calls(await chunks_of(answer))
    # The re-ask's answer is emulated too: the stop never cuts a call's arguments.
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert answer.stats.completed is True
    assert [s.body["model"] for s in r.upstream.sent] == [MODEL, MODEL]
    assert r.keys.asked == [MODEL, MODEL]
    assert answer.attempts == 2


async def test_an_emulated_stream_is_relayed_as_it_arrives() -> None:
    r = rig(sealed("It ", "is ", "sunny ", "today"))
    answer = await r.service.start(ask(tools=[WEATHER]))
    stream = r.upstream.streams[0]
    first = await anext(answer.rest)
    assert "".join(texts(first)).strip() == "It"
    assert stream.read < len(stream.pieces)
    r = rig(sealed("It ", "is ", "sunny ", "today"))
    answer = await r.service.start(ask(tools=[WEATHER], stream=False))
    first = await anext(answer.rest)
    assert "".join(texts(first)) == "It is sunny today"


async def test_an_emulated_answer_is_bounded() -> None:
    r = rig(sealed("x" * 40, "y" * 40), max_answer_chars=50)
    answer = await r.service.start(ask(tools=[WEATHER]))
    with pytest.raises(UpstreamTooLargeError):
        await chunks_of(answer)


async def test_a_tool_choice_only_request_keeps_its_model_and_attempts() -> None:
    r = rig(UpstreamConnectError(), sealed("words"), aliases={"friendly": MODEL})
    answer = await r.service.start(ask(model="friendly", tool_choice="none"))
    assert [s.body["model"] for s in r.upstream.sent] == [MODEL, MODEL]
    assert r.keys.asked == [MODEL, MODEL]
    assert answer.model == MODEL
    assert answer.attempts == 2


async def test_an_unknown_key_on_a_message_emulation_rebuilds_is_refused() -> None:
    request = ask(tools=[WEATHER])
    request["messages"] += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        # Emulation rebuilds a tool result as text, which would drop this key silently.
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny", "secret_note": CANARY},
    ]
    r = rig(sealed(GOOD))
    with pytest.raises(InvalidRequestError) as caught:
        await r.service.start(request)
    assert "secret_note" in str(caught.value.param)
    assert r.upstream.sent == []


async def test_tool_history_without_tools_is_emulated() -> None:
    request = ask()
    request["messages"] += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": f"sunny {CANARY}"},
    ]
    r = rig(sealed("It is sunny"))
    answer = await r.service.start(request)
    assert await whole(answer) == "It is sunny"
    assert_no_plaintext(r.upstream.sent)
    assert f"sunny {CANARY}" in json.dumps(r.upstream.sent[0].opened())
    assert all("tool_calls" not in m for m in r.upstream.sent[0].body["messages"])


async def test_empty_tools_are_dropped_not_forwarded() -> None:
    r = rig(sealed("words"))
    answer = await r.service.start(ask(tools=[]))
    assert "tools" not in r.upstream.sent[0].body
    assert await whole(answer) == "words"
