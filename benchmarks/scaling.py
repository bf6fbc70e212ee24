"""Multi-core scaling: the same burst of concurrent streams through a proxy with 1 and with 2
worker processes (``server.workers``), rounds interleaved, medians reported.

The simulator runs in Phala mode (one server ephemeral per response) with no token delay, so
it is cheap per token and the proxy is what limits the relayed rate as long as it can.
Per round: ``streams`` E2EE streams of ``tokens`` tokens each start together; the figure is
the relayed content chunks per second (all streams, first request start to last ``[DONE]``)
and each process's CPU share over the round (1.0 = one core), so the reader sees which one
was the bottleneck. On a 2-core machine the client and the simulator compete with the
workers for the same cores; that caps the gain, and the shares say by how much.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.client import (
    E2EE_MODEL,
    new_client,
    prompt_for_tokens,
    proxy_target,
    stream_once,
)
from benchmarks.procs import ManagedProcess, start_proxy, start_simulator, system_busy_seconds
from benchmarks.stats import median


@dataclass(frozen=True, slots=True)
class ScalingRound:
    workers: int
    chunks_per_s: float
    errors: int
    proxy_cores: float
    simulator_cores: float
    client_cores: float
    other_cores: float


@dataclass(frozen=True, slots=True)
class ScalingFigures:
    streams: int
    tokens: int
    rounds: list[ScalingRound]
    chunks_per_s: dict[int, float]
    proxy_cores: dict[int, float]
    simulator_cores: dict[int, float]
    client_cores: dict[int, float]
    other_cores: dict[int, float]
    speedup: float


async def _round(
    proxy: ManagedProcess, simulator: ManagedProcess, workers: int, streams: int, tokens: int
) -> ScalingRound:
    target = proxy_target(proxy.url, E2EE_MODEL, f"proxy_{workers}w")
    prompt = prompt_for_tokens(tokens)
    async with new_client(streams) as client:
        # Every worker attests on its first request: warm them all before timing.
        await asyncio.gather(*(stream_once(client, target, prompt_for_tokens(8)) for _ in range(8)))
        busy0 = system_busy_seconds()
        cpu0 = (proxy.cpu_seconds(), simulator.cpu_seconds(), time.process_time())
        start = time.perf_counter()
        results = await asyncio.gather(
            *(stream_once(client, target, prompt, expected=prompt.answer) for _ in range(streams))
        )
        wall = time.perf_counter() - start
        cpu1 = (proxy.cpu_seconds(), simulator.cpu_seconds(), time.process_time())
        busy = system_busy_seconds() - busy0
    ours = sum(after - before for before, after in zip(cpu0, cpu1, strict=True))
    chunks = sum(r.content_events for r in results if r.ok)
    return ScalingRound(
        workers=workers,
        chunks_per_s=chunks / wall,
        errors=sum(0 if r.ok else 1 for r in results),
        proxy_cores=(cpu1[0] - cpu0[0]) / wall,
        simulator_cores=(cpu1[1] - cpu0[1]) / wall,
        client_cores=(cpu1[2] - cpu0[2]) / wall,
        other_cores=max(0.0, busy - ours) / wall,
    )


async def measure_scaling(
    log_dir: Path,
    *,
    streams: int,
    tokens: int,
    rounds: int,
    worker_counts: tuple[int, ...] = (1, 2),
) -> ScalingFigures:
    """``rounds`` x (each worker count in turn, order alternating), one simulator throughout."""
    done: list[ScalingRound] = []
    with start_simulator(log_dir, token_delay_s=0.0, phala=True) as simulator:
        for index in range(rounds):
            order = worker_counts if index % 2 == 0 else tuple(reversed(worker_counts))
            for workers in order:
                with start_proxy(
                    log_dir, upstream_url=simulator.url + "/api/v1", workers=workers
                ) as proxy:
                    done.append(await _round(proxy, simulator, workers, streams, tokens))

    def med(attr: str) -> dict[int, float]:
        return {
            w: median([getattr(r, attr) for r in done if r.workers == w]) for w in worker_counts
        }

    rate = med("chunks_per_s")
    return ScalingFigures(
        streams=streams,
        tokens=tokens,
        rounds=done,
        chunks_per_s=rate,
        proxy_cores=med("proxy_cores"),
        simulator_cores=med("simulator_cores"),
        client_cores=med("client_cores"),
        other_cores=med("other_cores"),
        speedup=rate[worker_counts[-1]] / rate[worker_counts[0]],
    )
