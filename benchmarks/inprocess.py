"""In-process measurements: the crypto floor, the per-chunk pipeline, attestation verification.

- ``crypto_floor_us``: one response field opened the only way the protocol allows, on a blob
  with a fresh server ephemeral key (NEAR and aci never reuse one): ECDH (secp256k1 point
  multiplication, raw x) + HKDF-SHA256 + AES-256-GCM decrypt of a 5-byte token, via
  :func:`proxy.core.crypto.aes_key_for` and :func:`proxy.core.crypto.open_with_key`.
- ``chunk_us``: the proxy's pure per-chunk pipeline ``SSEDecoder.feed -> json.loads ->
  ChunkDecryptor.rebuild -> encode_json`` on real upstream bytes: the simulator's own
  stream composer sealing a 2000-token answer to a client key, fed one event per ``feed`` (what
  arrives from the socket when the upstream paces its tokens). Two variants are reported next to
  it: the same bytes fed in 64 KiB reads (what httpx hands over when the proxy lags behind), and
  the proxy's real async generators (:func:`proxy.service.relay.decrypted_batches` +
  :func:`proxy.service.relay.sse_to_client`), which add the generator hops and the usage/cost
  handling.
- ``attestation_verify_ms``: :func:`proxy.attestation.verify_evidence` on the real
  ``attestation_glm_5_1.json`` capture with its collateral already in memory ("warm"), at its
  ``_capture_epoch``, policy dcap=require and nvidia=nonce; parsing the body is outside the
  timed region. Its DCAP part is also timed alone, split into building the collateral object
  and ``dcap_qvl.verify``.

- ``chunk_budget``: the pure pipeline taken apart, each step timed alone over the same recorded
  stream and divided by its chunk count: SSE decoding, ``json.loads``, the blob shape check and
  hex decoding, ECDH, HKDF, AES-GCM, the rest of ``rebuild`` (walking the chunk, UTF-8
  decoding, the key cache), ``encode_json``. Set against the proxy's whole CPU time per relayed
  chunk (measured end to end), the remainder is the HTTP machinery (httpx/httpcore/h11 on the
  upstream side, uvicorn/h11/Starlette on the client side, the event loop, system calls).

Each figure is the median of several runs; each run times a whole loop with
:func:`time.perf_counter` and divides.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import dcap_qvl

from benchmarks.client import E2EE_MODEL, prompt_for_tokens
from benchmarks.stats import median_of_runs
from proxy.attestation import AttestationPolicy, parse_attestation, unwrap_capture, verify_evidence
from proxy.core.crypto import (
    KeyPair,
    aes_key_for,
    decode_blob_hex,
    derive_aes_key,
    generate_keypair,
    looks_like_ciphertext,
    open_with_key,
    seal,
    shared_x,
)
from proxy.core.response import ChunkDecryptor
from proxy.core.sse import SSEDecoder, encode_json
from proxy.service.relay import StreamStats, decrypted_batches, sse_to_client
from proxy.simulator.answer import plan_answer
from proxy.simulator.chunks import CompletionMeta, stream_items
from proxy.simulator.faults import Faults
from proxy.simulator.sealing import ResponseSealer
from tests.support.fixtures import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "attestations"
READ_SIZE = 64 * 1024


def crypto_floor_us(blobs: int, runs: int) -> float:
    """Median over ``runs`` of the time to open one fresh-ephemeral blob, in microseconds."""
    keys = generate_keypair()
    sealed = [seal(keys.public, b" word") for _ in range(blobs)]
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        for blob in sealed:
            open_with_key(aes_key_for(keys.private, blob[:65]), blob)
        results.append((time.perf_counter() - start) / blobs * 1e6)
    return median_of_runs(results)


@dataclass(frozen=True, slots=True)
class UpstreamRecording:
    """A sealed upstream answer as the socket would deliver it, and the key that opens it."""

    keys: KeyPair
    events: tuple[bytes, ...]

    @property
    def joined(self) -> bytes:
        return b"".join(self.events)

    def reads(self, size: int) -> list[bytes]:
        data = self.joined
        return [data[i : i + size] for i in range(0, len(data), size)]


def record_upstream(tokens: int) -> UpstreamRecording:
    """Real E2EE upstream bytes from the simulator's composer (fresh ephemeral per field)."""
    keys = generate_keypair()
    prompt = prompt_for_tokens(tokens)
    plan = plan_answer([{"role": "user", "content": prompt.text}])
    meta = CompletionMeta(id="chatcmpl-bench", created=1_767_225_600, model=E2EE_MODEL)
    items = stream_items(plan, meta, faults=Faults(), sealer=ResponseSealer(keys.public))
    return UpstreamRecording(keys, tuple(item for item in items if isinstance(item, bytes)))


def pipeline_once(recording: UpstreamRecording, reads: list[bytes]) -> tuple[float, int]:
    """Seconds and chunk count for one pass of the pure pipeline over ``reads``."""
    decoder = SSEDecoder()
    decryptor = ChunkDecryptor(recording.keys.private)
    chunks = 0
    start = time.perf_counter()
    for data in reads:
        for event in decoder.feed(data):
            if event.data == "[DONE]":
                break
            chunk = json.loads(event.data)
            encode_json(decryptor.rebuild(chunk))
            chunks += 1
    return time.perf_counter() - start, chunks


async def _replay(reads: list[bytes]) -> AsyncIterator[bytes]:
    for data in reads:
        yield data


async def _generators_once(recording: UpstreamRecording, reads: list[bytes]) -> tuple[float, int]:
    stats = StreamStats()
    decryptor = ChunkDecryptor(recording.keys.private)
    rest = decrypted_batches(_replay(reads), decryptor, stats)
    start = time.perf_counter()
    async for _ in sse_to_client([], rest, include_usage=False, stats=stats):
        pass
    return time.perf_counter() - start, stats.chunks


def generators_once(recording: UpstreamRecording, reads: list[bytes]) -> tuple[float, int]:
    """Seconds and chunk count for the proxy's own async generators over ``reads``."""
    return asyncio.run(_generators_once(recording, reads))


@dataclass(frozen=True, slots=True)
class PipelineFigures:
    chunk_us: float
    chunk_us_64k_reads: float
    chunk_us_generators: float
    chunks: int


def pipeline_figures(tokens: int, runs: int) -> PipelineFigures:
    """Per-chunk microseconds of the three pipeline variants (median of ``runs`` each)."""
    recording = record_upstream(tokens)
    per_event = list(recording.events)
    big_reads = recording.reads(READ_SIZE)
    chunks = 0

    def measure(
        once: Callable[[UpstreamRecording, list[bytes]], tuple[float, int]], reads: list[bytes]
    ) -> float:
        nonlocal chunks
        once(recording, reads)  # warm-up: imports, caches, allocator
        results = []
        for _ in range(runs):
            seconds, chunks = once(recording, reads)
            results.append(seconds / chunks * 1e6)
        return median_of_runs(results)

    return PipelineFigures(
        chunk_us=measure(pipeline_once, per_event),
        chunk_us_64k_reads=measure(pipeline_once, big_reads),
        chunk_us_generators=measure(generators_once, per_event),
        chunks=chunks,
    )


@dataclass(frozen=True, slots=True)
class AttestationFigures:
    verify_ms: float
    dcap_collateral_ms: float
    dcap_verify_ms: float
    passed: bool


def _load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def attestation_figures(runs: int) -> AttestationFigures:
    """Time ``verify_evidence`` on the GLM-5.1 capture (warm collateral), and its DCAP parts."""
    capture = unwrap_capture(_load("attestation_glm_5_1.json"))
    collateral = _load("collateral_glm_5_1.json")
    assert capture.client_nonce is not None
    assert capture.capture_epoch is not None
    evidence = parse_attestation(capture.body)
    policy = AttestationPolicy(dcap="require", nvidia="nonce")
    now = capture.capture_epoch

    def verify() -> bool:
        report = verify_evidence(
            evidence,
            expected_model="e2ee-glm-5-1",
            nonce=capture.client_nonce or b"",
            policy=policy,
            now=now,
            collateral=collateral,
        )
        return report.passed

    passed = verify()
    quote = bytes(evidence.intel_quote)
    collateral_text = json.dumps(collateral)
    built = dcap_qvl.QuoteCollateralV3.from_json(collateral_text)

    def timed(action: Callable[[], object]) -> float:
        results = []
        for _ in range(runs):
            start = time.perf_counter()
            action()
            results.append((time.perf_counter() - start) * 1000)
        return median_of_runs(results)

    return AttestationFigures(
        verify_ms=timed(verify),
        dcap_collateral_ms=timed(lambda: dcap_qvl.QuoteCollateralV3.from_json(collateral_text)),
        dcap_verify_ms=timed(lambda: dcap_qvl.verify(quote, built, now)),
        passed=passed,
    )


def _per_item(action: Callable[[], int], runs: int) -> float:
    """Median over ``runs`` of microseconds per item; ``action`` returns how many it did."""
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        items = action()
        results.append((time.perf_counter() - start) / items * 1e6)
    return median_of_runs(results)


def chunk_budget(tokens: int, runs: int) -> dict[str, float]:
    """Microseconds per relayed chunk spent in each step of the pure pipeline."""
    recording = record_upstream(tokens)
    private = recording.keys.private
    decoder = SSEDecoder()
    texts = [e.data for data in recording.events for e in decoder.feed(data)]
    texts = texts[: texts.index("[DONE]")]
    chunks = len(texts)
    parsed = [json.loads(text) for text in texts]
    blobs_hex = [
        choice["delta"]["content"]
        for chunk in parsed
        for choice in chunk["choices"]
        if choice["delta"].get("content")
    ]
    blobs = [bytes.fromhex(text) for text in blobs_hex]
    shared = [shared_x(private, blob[:65]) for blob in blobs]
    keys = [derive_aes_key(x) for x in shared]

    def sse() -> int:
        fresh = SSEDecoder()
        for data in recording.events:
            fresh.feed(data)
        return chunks

    def loads() -> int:
        for text in texts:
            json.loads(text)
        return chunks

    def shape_and_hex() -> int:
        for text in blobs_hex:
            looks_like_ciphertext(text)
            decode_blob_hex(text)
        return chunks

    def ecdh() -> int:
        for blob in blobs:
            shared_x(private, blob[:65])
        return chunks

    def hkdf() -> int:
        for x in shared:
            derive_aes_key(x)
        return chunks

    def aes() -> int:
        for key, blob in zip(keys, blobs, strict=True):
            open_with_key(key, blob)
        return chunks

    def decrypt_all() -> float:
        results = []
        for _ in range(runs):
            fresh = [json.loads(text) for text in texts]
            decryptor = ChunkDecryptor(private)
            start = time.perf_counter()
            for chunk in fresh:
                decryptor.rebuild(chunk)
            results.append((time.perf_counter() - start) / chunks * 1e6)
        return median_of_runs(results)

    opener = ChunkDecryptor(private)
    plain = [opener.rebuild(json.loads(text)) for text in texts]

    def encode() -> int:
        for chunk in plain:
            encode_json(chunk)
        return chunks

    budget = {
        "sse_decode": _per_item(sse, runs),
        "json_loads": _per_item(loads, runs),
        "blob_shape_check_and_hex": _per_item(shape_and_hex, runs),
        "ecdh_secp256k1": _per_item(ecdh, runs),
        "hkdf_sha256": _per_item(hkdf, runs),
        "aes_gcm_open": _per_item(aes, runs),
        "encode_json": _per_item(encode, runs),
    }
    decrypt_total = decrypt_all()
    crypto_steps = ("blob_shape_check_and_hex", "ecdh_secp256k1", "hkdf_sha256", "aes_gcm_open")
    budget["decrypt_chunk_rest"] = max(0.0, decrypt_total - sum(budget[k] for k in crypto_steps))
    return budget
