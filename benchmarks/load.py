"""Many concurrent streams at a realistic token rate, through the proxy and directly.

One run = the same load three times against a simulator process whose ``token_delay_s`` is
``1 / rate``: client -> simulator with the plaintext model (what the simulator does without
E2EE), the in-process E2EE client -> simulator (E2EE model, each stream sealing its own request
and opening its own answer: the baseline of the goals), then client -> a FRESH proxy process ->
simulator (E2EE model). The proxy is warmed with one request so its key is
attested before the load starts (a cold model is the single-flight benchmark's subject). Stream
``i`` of ``N`` starts at ``i * ramp_s / N``, so all ``N`` are open together from ``ramp_s`` to
``duration`` (``make bench``: ``ramp_s`` is half the duration) and the start is not one
thundering herd; every stream carries ``duration * rate`` content tokens and is checked token
for token.

The load itself is driven by :mod:`benchmarks.lean_client`, not by the httpx client of
:func:`benchmarks.client.stream_once`: with httpx the load generator, which runs in this
process, took half a core for 300 streams at 10 tokens/s and a whole core (all one process
can have) for 1,000, so it was the bottleneck and competed for the 2 cores with the simulator
and the proxy it measured. The lean client sends the same request bytes (``Target.build``) and
returns the same :class:`~benchmarks.client.StreamResult`, with the same timings and error
categories, for about a fifth of that CPU; each stream is bounded by a deadline
(:func:`stream_timeout_s`) and a response size. The proxy's warm-up request and the latency
phase keep ``stream_once``, the real httpx client, for fidelity to what users run.

Figures per run: errors (non-200, in-band error, no ``[DONE]``, wrong content, transport
error, deadline passed), time-to-first-token percentiles (from each stream's own start), the
token rate each stream actually delivered (content tokens after the first / time from first
token to ``[DONE]``), the proxy's peak RSS (``VmHWM``) and the CPU share each process used (CPU
seconds / wall seconds; 1.0 = one core), plus the share used by anything else on the machine (from
``/proc/stat``), which says how much the figures were disturbed. On a 2-core machine the
client, the simulator (in Phala mode: one server key per response, its AES key derived once)
and the proxy share two cores, so the delivered rate sags when their sum passes 2.0; that is
reported, not hidden.

The baseline and the proxy run are both E2EE, so the simulator's E2EE work (opening the sealed
request, sealing each token) is in both and "added" is the proxy's. With ``ramp_s`` = 1 s all N
requests arrive in one second, N requests/s for the proxy's per-request work (sealing,
attestation lookup, the upstream request); a ramp as long as the streams is the steady state
of N concurrent streams.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.client import (
    E2EE_MODEL,
    Prompt,
    StreamResult,
    Target,
    direct_target,
    enclave_key,
    new_client,
    prompt_for_tokens,
    proxy_target,
    stream_once,
)
from benchmarks.lean_client import (
    DEFAULT_TIMEOUT_S,
    LoopbackRequest,
    build_loopback_request,
    stream_once_lean,
)
from benchmarks.procs import SIM_API_KEY, ManagedProcess, start_proxy, system_busy_seconds
from benchmarks.stats import median, median_of_runs, percentile
from proxy.settings import ServerSettings

DEFAULT_MAX_IN_FLIGHT: int = ServerSettings().max_in_flight


@dataclass(frozen=True, slots=True)
class LoadRun:
    """One load run against one target."""

    target: str
    streams: int
    errors: dict[str, int]
    ttft_p50_ms: float
    ttft_p99_ms: float
    tokens_per_s_median: float
    tokens_per_s_min: float
    wall_s: float
    client_cpu_share: float
    simulator_cpu_share: float
    other_cpu_share: float
    chunks: int
    proxy_cpu_share: float | None = None
    proxy_cpu_us_per_chunk: float | None = None
    proxy_rss_mb: float | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def stream_timeout_s(duration_s: float, ramp_s: float) -> float:
    """Each load stream's deadline: three times its nominal length (the ramp and the tokens at
    the planned rate), plus the 120 s the httpx client allowed between two reads. A stream past
    it counts as an error (``ReadTimeout``) instead of hanging the benchmark."""
    return 120.0 + 3.0 * (ramp_s + duration_s)


def _requests(target: Target, prompt: Prompt, streams: int) -> list[LoopbackRequest]:
    """One request per stream: a plaintext request carries nothing of its own, so it is built
    once; a sealed one (the in-process E2EE client) has its own keys and decryptor each."""
    if target.model_key is None:
        return [build_loopback_request(target, prompt)] * streams
    return [build_loopback_request(target, prompt) for _ in range(streams)]


async def _staggered(
    requests: Sequence[LoopbackRequest], expected: str, ramp_s: float, timeout_s: float
) -> list[StreamResult]:
    streams = len(requests)

    async def one(index: int) -> StreamResult:
        await asyncio.sleep(index * ramp_s / streams)
        return await stream_once_lean(requests[index], expected=expected, timeout_s=timeout_s)

    return list(await asyncio.gather(*(one(i) for i in range(streams))))


def _rates(results: Sequence[StreamResult]) -> list[float]:
    rates = []
    for result in results:
        if result.ok and result.ttft_s is not None and result.ttlt_s is not None:
            span = result.ttlt_s - result.ttft_s
            if span > 0 and result.content_events > 1:
                rates.append((result.content_events - 1) / span)
    return rates


async def load_run(
    target: Target,
    prompt: Prompt,
    *,
    streams: int,
    ramp_s: float,
    simulator: ManagedProcess,
    proxy: ManagedProcess | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> LoadRun:
    """Run ``streams`` concurrent streams against ``target`` and summarize them; ``timeout_s``
    bounds each stream. A target that seals its own request has all its requests sealed before
    the clocks start (the streams' timings and the CPU shares cover the streams only)."""
    requests = _requests(target, prompt, streams)
    sim_before = simulator.cpu_seconds()
    proxy_before = proxy.cpu_seconds() if proxy is not None else 0.0
    client_before = time.process_time()
    busy_before = system_busy_seconds()
    start = time.perf_counter()
    results = await _staggered(requests, prompt.answer, ramp_s, timeout_s)
    wall = time.perf_counter() - start
    busy = system_busy_seconds() - busy_before
    client = time.process_time() - client_before
    sim = simulator.cpu_seconds() - sim_before
    via = proxy.cpu_seconds() - proxy_before if proxy is not None else 0.0
    errors = Counter(result.error for result in results if result.error is not None)
    ttft = [r.ttft_s * 1000 for r in results if r.ttft_s is not None]
    rates = _rates(results)
    chunks = sum(result.events for result in results)
    return LoadRun(
        target=target.name,
        streams=streams,
        errors=dict(errors),
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p99_ms=percentile(ttft, 99),
        tokens_per_s_median=median(rates),
        tokens_per_s_min=min(rates) if rates else float("nan"),
        wall_s=wall,
        client_cpu_share=client / wall,
        simulator_cpu_share=sim / wall,
        other_cpu_share=max(0.0, busy - client - sim - via) / wall,
        chunks=chunks,
        proxy_cpu_share=via / wall if proxy else None,
        proxy_cpu_us_per_chunk=via / chunks * 1e6 if proxy and chunks else None,
        proxy_rss_mb=proxy.vm_hwm_mb() if proxy else None,
    )


@dataclass(frozen=True, slots=True)
class LoadFigures:
    """Medians over runs (``rss_mb`` is the largest peak of any run)."""

    streams: int
    duration_s: float
    rate: float
    errors: int
    baseline_errors: int
    ttft_added_ms_p99: float
    rss_mb: float
    max_in_flight: int | None
    # (baseline: the in-process E2EE client straight to the simulator, through the proxy)
    runs: list[tuple[LoadRun, LoadRun]]
    # The same load, plaintext model, straight to the simulator: what the simulator does
    # without E2EE (not part of any goal).
    plaintext_runs: list[LoadRun]


async def measure_load(
    log_dir: Path,
    simulator: ManagedProcess,
    *,
    streams: int,
    duration_s: float,
    rate: float,
    runs: int,
    ramp_s: float = 1.0,
) -> LoadFigures:
    """``runs`` x (plaintext load, baseline load, proxy load on a fresh proxy process).

    The baseline is the issue's: the in-process E2EE client (each stream seals its own request
    and opens its own answer, as an SDK with E2EE built in would) straight to the simulator, so
    "added" is what the proxy adds, not the simulator's E2EE work. The plaintext run says what
    the simulator does without E2EE.

    The proxy's ``server.max_in_flight`` (default 256, over which it answers 503 at once by
    design) is raised to ``streams`` when needed, so the test measures the relay, not the
    admission limit; :data:`LoadFigures.max_in_flight` records the value used.
    """
    max_in_flight = streams if streams > DEFAULT_MAX_IN_FLIGHT else None
    prompt = prompt_for_tokens(round(duration_s * rate))
    timeout_s = stream_timeout_s(duration_s, ramp_s)
    plaintext = direct_target(simulator.url, SIM_API_KEY, "direct_plain", model_key=None)
    async with new_client(1) as client:
        model_key = await enclave_key(client, simulator.url, SIM_API_KEY)
    baseline = direct_target(simulator.url, SIM_API_KEY, "direct_e2ee", model_key=model_key)
    pairs: list[tuple[LoadRun, LoadRun]] = []
    plaintext_runs: list[LoadRun] = []
    for _ in range(runs):
        plaintext_runs.append(
            await load_run(
                plaintext,
                prompt,
                streams=streams,
                ramp_s=ramp_s,
                simulator=simulator,
                timeout_s=timeout_s,
            )
        )
        direct = await load_run(
            baseline,
            prompt,
            streams=streams,
            ramp_s=ramp_s,
            simulator=simulator,
            timeout_s=timeout_s,
        )
        with start_proxy(
            log_dir, upstream_url=simulator.url + "/api/v1", max_in_flight=max_in_flight
        ) as proxy:
            target = proxy_target(proxy.url, E2EE_MODEL, "proxy_e2ee")
            async with new_client(1) as client:
                warm = await stream_once(client, target, prompt_for_tokens(8))
            if not warm.ok:
                raise RuntimeError(f"proxy warm-up failed: {warm.error}\n{proxy.log_tail()}")
            via_proxy = await load_run(
                target,
                prompt,
                streams=streams,
                ramp_s=ramp_s,
                simulator=simulator,
                proxy=proxy,
                timeout_s=timeout_s,
            )
        pairs.append((direct, via_proxy))
    return LoadFigures(
        streams=streams,
        duration_s=duration_s,
        rate=rate,
        errors=sum(p.error_count for _, p in pairs),
        baseline_errors=sum(d.error_count for d, _ in pairs),
        ttft_added_ms_p99=median_of_runs([p.ttft_p99_ms - d.ttft_p99_ms for d, p in pairs]),
        rss_mb=max(p.proxy_rss_mb or 0.0 for _, p in pairs),
        max_in_flight=max_in_flight,
        runs=pairs,
        plaintext_runs=plaintext_runs,
    )
