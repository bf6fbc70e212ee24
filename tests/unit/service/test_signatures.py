"""The enclave's signature over a completed answer (:mod:`proxy.service.signatures`): fetched
with retries on 404, checked against the attested signing address with real secp256k1
signatures, and ``signatures.mode`` applied (metrics, the log line, strict withholding)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from coincurve import PrivateKey

from proxy.attestation.signature import eip191_digest
from proxy.core.crypto import address_hex
from proxy.core.errors import AttestationError, UpstreamError, UpstreamStatusError
from proxy.observability.metrics import Metrics
from proxy.service.relay import StreamStats
from proxy.service.signatures import SignaturePolicy, SignatureResult, SignatureVerifier

ENCLAVE = PrivateKey(bytes.fromhex("11" * 32))
OTHER = PrivateKey(bytes.fromhex("22" * 32))
TEXT = "Qwen/Qwen3.5-122B-A10B:" + "ab" * 32 + ":" + "cd" * 32
MODEL = "e2ee-m"
COMPLETION = "chatcmpl-7"


def address(key: PrivateKey) -> str:
    return address_hex(key.public_key.format(compressed=False))


ATTESTED = address(ENCLAVE)


def signed_by(key: PrivateKey, **extra: Any) -> dict[str, Any]:
    raw = key.sign_recoverable(eip191_digest(TEXT), hasher=None)
    signature = "0x" + (raw[:64] + bytes([raw[64] + 27])).hex()
    return {"text": TEXT, "signature": signature, **extra}


class Fetcher:
    """Scripted ``GET /tee/signature`` answers: a value is returned, an exception raised."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, model: str, completion_id: str) -> Any:
        self.calls.append((model, completion_id))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Pauses:
    def __init__(self) -> None:
        self.taken: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)


def not_found() -> UpstreamStatusError:
    return UpstreamStatusError(404, "no signature for this request")


def verifier(fetch: Fetcher, pauses: Pauses, **options: Any) -> SignatureVerifier:
    return SignatureVerifier(fetch, sleep=pauses, **options)


# --- SignatureVerifier ----------------------------------------------------------------------------


async def test_the_attested_enclave_signed() -> None:
    fetch, pauses = Fetcher(signed_by(ENCLAVE, signing_address=ATTESTED)), Pauses()
    result = await verifier(fetch, pauses).verify(MODEL, COMPLETION, ATTESTED.upper())
    assert result == SignatureResult(
        "ok", "signature_verified", f"signed by the attested key {ATTESTED}"
    )
    assert result.ok is True
    assert fetch.calls == [(MODEL, COMPLETION)]
    assert pauses.taken == []


async def test_another_key_signed() -> None:
    fetch = Fetcher(signed_by(OTHER))
    result = await verifier(fetch, Pauses()).verify(MODEL, COMPLETION, ATTESTED)
    assert result == SignatureResult(
        "mismatch",
        "signature_signer_mismatch",
        f"signed by {address(OTHER)}, attested key is {ATTESTED}",
    )
    assert result.ok is False


async def test_the_answer_names_another_address() -> None:
    fetch = Fetcher(signed_by(ENCLAVE, signing_address=address(OTHER)))
    result = await verifier(fetch, Pauses()).verify(MODEL, COMPLETION, ATTESTED)
    assert (result.outcome, result.code) == ("mismatch", "signature_address_mismatch")


async def test_a_detail_is_at_most_200_characters() -> None:
    """The upstream's claimed address is shown escaped: 44 control characters make a detail of
    264 characters, cut at 200."""
    fetch = Fetcher(signed_by(ENCLAVE, signing_address="\x01" * 60))
    result = await verifier(fetch, Pauses()).verify(MODEL, COMPLETION, ATTESTED)
    claimed = repr("\x01" * 44)
    detail = f"the answer names signing_address {claimed}, attested {ATTESTED}"
    assert len(detail) == 264
    assert result == SignatureResult("mismatch", "signature_address_mismatch", detail[:200])


@pytest.mark.parametrize(
    ("body", "code", "detail"),
    [
        (
            ["not", "an", "object"],
            "signature_response_invalid",
            "the signature answer is not a JSON object",
        ),
        ({"signature": "0x00"}, "signature_response_invalid", "the signature answer has no text"),
        (
            {"text": TEXT, "signature": "0x1234"},
            "signature_malformed",
            "the signature is not 130 hex digits",
        ),
    ],
    ids=["not-object", "no-text", "short-signature"],
)
async def test_an_unusable_answer_is_a_mismatch(body: Any, code: str, detail: str) -> None:
    result = await verifier(Fetcher(body), Pauses()).verify(MODEL, COMPLETION, ATTESTED)
    assert result == SignatureResult("mismatch", code, detail)


async def test_a_404_is_asked_again_with_a_doubling_pause() -> None:
    fetch, pauses = Fetcher(not_found(), not_found(), signed_by(ENCLAVE)), Pauses()
    result = await verifier(fetch, pauses).verify(MODEL, COMPLETION, ATTESTED)
    assert result.ok
    assert fetch.calls == [(MODEL, COMPLETION)] * 3
    assert pauses.taken == [0.1, 0.2]


async def test_after_four_404s_the_signature_is_unavailable() -> None:
    fetch, pauses = Fetcher(*[not_found() for _ in range(4)], signed_by(ENCLAVE)), Pauses()
    result = await verifier(fetch, pauses).verify(MODEL, COMPLETION, ATTESTED)
    assert result == SignatureResult(
        "unavailable", "signature_unavailable", "the upstream has no signature"
    )
    assert len(fetch.calls) == 4
    assert pauses.taken == [0.1, 0.2, 0.4]  # no pause after the last attempt


async def test_the_attempts_and_the_pause_are_settings() -> None:
    fetch, pauses = Fetcher(*[not_found() for _ in range(3)], signed_by(ENCLAVE)), Pauses()
    result = await verifier(fetch, pauses, attempts=3, pause_s=0.5).verify(
        MODEL, COMPLETION, ATTESTED
    )
    assert result.outcome == "unavailable"
    assert pauses.taken == [0.5, 1.0]
    fetch, pauses = Fetcher(not_found(), signed_by(ENCLAVE)), Pauses()
    result = await verifier(fetch, pauses, attempts=1).verify(MODEL, COMPLETION, ATTESTED)
    assert result.outcome == "unavailable"
    assert (len(fetch.calls), pauses.taken) == (1, [])


@pytest.mark.parametrize(
    "failure",
    [
        UpstreamStatusError(500, "x" * 300),
        UpstreamStatusError(429, "x" * 300),
        UpstreamError("x" * 300, code="upstream_connect"),
    ],
    ids=["500", "429", "connect"],
)
async def test_any_other_failure_is_an_error_at_once(failure: UpstreamError) -> None:
    fetch, pauses = Fetcher(failure, signed_by(ENCLAVE)), Pauses()
    result = await verifier(fetch, pauses).verify(MODEL, COMPLETION, ATTESTED)
    assert result == SignatureResult("error", "signature_fetch_failed", "x" * 200)
    assert (len(fetch.calls), pauses.taken) == (1, [])


# --- SignaturePolicy ------------------------------------------------------------------------------


@dataclass
class Key:
    signing_address: str = ATTESTED


@dataclass
class Answer:
    """What the policy reads of an opened answer."""

    e2ee: bool = True
    key: Key | None = field(default_factory=Key)
    model: str = MODEL
    stats: StreamStats = field(default_factory=lambda: StreamStats(completion_id=COMPLETION))


def policy(fetch: Fetcher, mode: Any = "strict") -> tuple[SignaturePolicy, Metrics]:
    metrics = Metrics(process_metrics=False)
    return SignaturePolicy(verifier(fetch, Pauses()), mode, metrics), metrics


def counted(metrics: Metrics, outcome: str) -> float:
    name = "venice_proxy_signature_verifications_total"
    return metrics.registry.get_sample_value(name, {"outcome": outcome}) or 0.0


@pytest.mark.parametrize("mode", ["async", "strict", "off"])
def test_the_mode_applies_to_e2ee_answers_only(mode: Any) -> None:
    checks, _ = policy(Fetcher(), mode)
    assert checks.mode_for(Answer()) == mode  # type: ignore[arg-type]
    assert checks.mode_for(Answer(e2ee=False)) == "off"  # type: ignore[arg-type]


async def test_a_check_is_counted_and_logged(log_lines: Callable[[], list[str]]) -> None:
    fetch = Fetcher(signed_by(ENCLAVE))
    checks, metrics = policy(fetch)
    result = await checks.check(Answer(), "req-1")  # type: ignore[arg-type]
    assert result is not None
    assert result.ok
    assert fetch.calls == [(MODEL, COMPLETION)]
    assert counted(metrics, "ok") == 1
    assert counted(metrics, "mismatch") == 0
    (line,) = [json.loads(line) for line in log_lines() if "signature_check" in line]
    assert (line["event"], line["component"], line["level"]) == (
        "signature_check",
        "proxy.request",
        "info",
    )
    assert {key: line[key] for key in ("request_id", "completion_id", "model")} == {
        "request_id": "req-1",
        "completion_id": COMPLETION,
        "model": MODEL,
    }
    assert (line["outcome"], line["code"], line["signing_address"]) == (
        "ok",
        "signature_verified",
        ATTESTED,
    )


async def test_a_failed_check_is_counted_and_logged_as_a_warning(
    log_lines: Callable[[], list[str]],
) -> None:
    checks, metrics = policy(Fetcher(signed_by(OTHER)))
    result = await checks.check(Answer(), "req-2")  # type: ignore[arg-type]
    assert result is not None
    assert result.outcome == "mismatch"
    assert counted(metrics, "mismatch") == 1
    assert counted(metrics, "ok") == 0
    (line,) = [json.loads(line) for line in log_lines() if "signature_check" in line]
    assert line["level"] == "warning"
    assert (line["outcome"], line["code"]) == ("mismatch", "signature_signer_mismatch")


@pytest.mark.parametrize(
    "answer",
    [Answer(key=None), Answer(stats=StreamStats())],
    ids=["no-attested-key", "no-completion-id"],
)
async def test_nothing_to_check(answer: Answer, log_lines: Callable[[], list[str]]) -> None:
    fetch = Fetcher()
    checks, metrics = policy(fetch)
    assert await checks.check(answer, "req-3") is None  # type: ignore[arg-type]
    assert fetch.calls == []
    assert counted(metrics, "ok") == counted(metrics, "mismatch") == 0
    assert not [line for line in log_lines() if "signature_check" in line]
    # Strict mode cannot vouch for an answer it could not check: withheld.
    failure = await checks.strict_failure(answer, "req-3")  # type: ignore[arg-type]
    assert type(failure) is AttestationError
    assert failure.code == "signature_unavailable"
    assert failure.message == "the answer carried no completion id to check its signature"
    assert failure.http_status == 502


async def test_strict_passes_an_answer_the_enclave_signed(
    log_lines: Callable[[], list[str]],
) -> None:
    checks, metrics = policy(Fetcher(signed_by(ENCLAVE)))
    assert await checks.strict_failure(Answer(), "req-4") is None  # type: ignore[arg-type]
    # The strict check is the same check: counted, and logged under the request's id.
    assert counted(metrics, "ok") == 1
    (line,) = [json.loads(line) for line in log_lines() if "signature_check" in line]
    assert line["request_id"] == "req-4"


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (signed_by(OTHER), "signature_signer_mismatch"),
        (UpstreamStatusError(500, "down"), "signature_fetch_failed"),
    ],
    ids=["other-signer", "fetch-failed"],
)
async def test_strict_withholds_any_other_answer(answer: Any, code: str) -> None:
    checks, _ = policy(Fetcher(answer))
    failure = await checks.strict_failure(Answer(), "req-5")  # type: ignore[arg-type]
    assert type(failure) is AttestationError
    assert failure.code == code
    assert failure.message == (
        f"the enclave's signature over this answer did not verify ({code}); the answer was withheld"
    )
    assert failure.http_status == 502


async def test_strict_withholds_an_unavailable_signature() -> None:
    checks, _ = policy(Fetcher(*[not_found() for _ in range(4)]))
    failure = await checks.strict_failure(Answer(), "req-6")  # type: ignore[arg-type]
    assert failure is not None
    assert failure.code == "signature_unavailable"
