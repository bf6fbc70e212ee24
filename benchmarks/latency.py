"""Sequential latency (what the proxy adds to one request) and long-stream throughput, measured
from a client in this process against a simulator, a proxy, a byte relay and a stack relay in
other processes.

Six variants, interleaved request by request (the order rotates) so drift hits all alike:

==============  ===========================================================================
direct_plain    client -> simulator, plaintext model                    (the baseline)
proxy_e2ee      client -> proxy -> simulator, E2EE model                (the headline)
direct_e2ee     the in-process E2EE client: seals its own request -> simulator, E2EE model,
                and decrypts every chunk itself (ChunkDecryptor): the E2EE baseline
proxy_plain     client -> proxy (passthrough) -> simulator, plaintext model: the extra hop
relay_plain     client -> byte relay -> simulator, the request of direct_plain byte for byte
                (same path and key: the relay is transparent): the machine floor of a hop
stack_plain     client -> stack relay -> simulator, the request of direct_plain (uvicorn and
                aiohttp relay it, nothing of the proxy's): the stack floor of a hop
==============  ===========================================================================

Requests are sequential with a short idle gap between them (the plan's ``overhead_gap_s``): by
default the proxy checks each E2EE answer's enclave signature in the background right after
``[DONE]``, and without the gap that work would be timed as part of whatever request came next.

``overhead = percentile(proxy_e2ee) - percentile(direct_plain)``, for time to first token and to
last token, p50 and p99 (difference of percentiles, not percentile of paired differences).
``proxy_e2ee - direct_e2ee`` is the part the proxy itself adds over an in-process E2EE client
(the simulator's sealing, which Venice does inside its TEE, and the unavoidable ECDH and
decryption cancel out); ``proxy_plain - direct_plain`` is the bare hop.
``relay_plain - direct_plain`` is the floor hop: what any process in the middle costs on this
machine (one more socket pair each way and one more process wake-up, nothing parsed; see
``benchmarks.byte_relay``); ``proxy_plain - relay_plain`` is what the proxy's HTTP and Python add
beyond that floor. ``stack_plain - direct_plain`` is the stack floor hop: what the proxy's
chosen libraries cost with nothing of the proxy's own on top (uvicorn serving a raw ASGI
callable that relays with aiohttp; see ``benchmarks.stack_relay``), so ``stack_plain -
relay_plain`` is the libraries beyond the machine and ``proxy_plain - stack_plain`` the proxy's
own code beyond the libraries. Comparisons whose variants were not run are left out.

The long stream: one answer of N tokens with no delay between tokens, timed from its first
content token to ``[DONE]`` (``interval`` per chunk), plus the proxy's CPU time per relayed
chunk read from ``/proc`` (all of the proxy's work per chunk: sockets, h11, ASGI, the pipeline),
for the E2EE model and for the plaintext model relayed in passthrough (no crypto at all), so
``proxy_e2ee - proxy_plain`` is what the decryption costs in place. The byte relay's CPU time
per chunk is read the same way for ``relay_*`` targets: the floor of any process's CPU per
relayed chunk; and the stack relay's for ``stack_*`` targets: the floor of a relay built from
the proxy's libraries. All three are also read from the scheduler's nanosecond counter where
the kernel exposes it (``runtime_us_per_chunk``; the ``/proc/<pid>/stat`` figures have a 10 ms
tick, which on a 300-token stream is 33 µs per chunk). Per chunk means per SSE event the
client counted; the relays do not see events, only reads, so at a 1 ms pace it is one read per
event and in the unpaced stream many events per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from benchmarks.client import Prompt, StreamResult, Target, stream_once
from benchmarks.procs import ManagedProcess
from benchmarks.stats import median_of_runs, percentile


@dataclass(frozen=True, slots=True)
class VariantRun:
    """Percentiles of one variant in one run, in milliseconds."""

    ttft_p50: float
    ttft_p99: float
    ttlt_p50: float
    ttlt_p99: float
    samples: int


def _variant_run(results: Sequence[StreamResult]) -> VariantRun:
    ttft = [r.ttft_s * 1000 for r in results if r.ttft_s is not None]
    ttlt = [r.ttlt_s * 1000 for r in results if r.ttlt_s is not None]
    return VariantRun(
        ttft_p50=percentile(ttft, 50),
        ttft_p99=percentile(ttft, 99),
        ttlt_p50=percentile(ttlt, 50),
        ttlt_p99=percentile(ttlt, 99),
        samples=len(ttlt),
    )


@dataclass(frozen=True, slots=True)
class OverheadFigures:
    """Medians over runs. ``variants[name]`` holds each variant's own percentiles (ms)."""

    variants: dict[str, dict[str, float]]
    added: dict[str, dict[str, float]]
    requests_per_run: int
    runs: int
    answer_tokens: int
    errors: int


def _diff(a: VariantRun, b: VariantRun) -> dict[str, float]:
    return {
        "ttft_p50": a.ttft_p50 - b.ttft_p50,
        "ttft_p99": a.ttft_p99 - b.ttft_p99,
        "ttlt_p50": a.ttlt_p50 - b.ttlt_p50,
        "ttlt_p99": a.ttlt_p99 - b.ttlt_p99,
    }


_COMPARISONS = {
    "proxy_e2ee_vs_direct_plain": ("proxy_e2ee", "direct_plain"),
    "proxy_e2ee_vs_direct_e2ee": ("proxy_e2ee", "direct_e2ee"),
    "proxy_plain_vs_direct_plain": ("proxy_plain", "direct_plain"),
    "direct_e2ee_vs_direct_plain": ("direct_e2ee", "direct_plain"),
    "relay_plain_vs_direct_plain": ("relay_plain", "direct_plain"),
    "proxy_plain_vs_relay_plain": ("proxy_plain", "relay_plain"),
    "stack_plain_vs_direct_plain": ("stack_plain", "direct_plain"),
    "stack_plain_vs_relay_plain": ("stack_plain", "relay_plain"),
    "proxy_plain_vs_stack_plain": ("proxy_plain", "stack_plain"),
}


async def measure_overhead(
    client: httpx.AsyncClient,
    targets: Sequence[Target],
    prompt: Prompt,
    *,
    requests_per_run: int,
    runs: int,
    gap_s: float,
    warmup: int = 20,
) -> OverheadFigures:
    """Interleave ``requests_per_run`` requests of every target, ``runs`` times, ``gap_s``
    apart so background work of one request (the proxy's asynchronous signature check) does not
    land in the next one's timing, whichever variant that is."""
    errors = 0
    for _ in range(warmup):
        for target in targets:
            await stream_once(client, target, prompt)
    per_run: list[dict[str, VariantRun]] = []
    for _ in range(runs):
        results: dict[str, list[StreamResult]] = {target.name: [] for target in targets}
        for i in range(requests_per_run):
            shift = i % len(targets)
            for target in [*targets[shift:], *targets[:shift]]:
                expected = prompt.answer
                result = await stream_once(client, target, prompt, expected=expected)
                errors += 0 if result.ok else 1
                results[target.name].append(result)
                await asyncio.sleep(gap_s)
        per_run.append({name: _variant_run(values) for name, values in results.items()})

    names = [target.name for target in targets]
    variants = {
        name: {
            key: median_of_runs([getattr(run[name], key) for run in per_run])
            for key in ("ttft_p50", "ttft_p99", "ttlt_p50", "ttlt_p99")
        }
        for name in names
    }
    added: dict[str, dict[str, float]] = {}
    for label, (a, b) in _COMPARISONS.items():
        if a in names and b in names:
            diffs = [_diff(run[a], run[b]) for run in per_run]
            added[label] = {key: median_of_runs([d[key] for d in diffs]) for key in diffs[0]}
    return OverheadFigures(
        variants=variants,
        added=added,
        requests_per_run=requests_per_run,
        runs=runs,
        answer_tokens=prompt.tokens,
        errors=errors,
    )


@dataclass(frozen=True, slots=True)
class LongStreamFigures:
    """Per variant: microseconds between chunks on the wire, and chunks per second."""

    interval_us: dict[str, float]
    chunks_per_s: dict[str, float]
    proxy_cpu_us_per_chunk: dict[str, float]
    # The kernel's part of proxy_cpu_us_per_chunk (socket reads and writes, epoll wake-ups).
    proxy_system_us_per_chunk: dict[str, float]
    simulator_cpu_us_per_chunk: dict[str, float]
    # The byte relay's CPU time per chunk, and its kernel part, for the relay_* targets.
    relay_cpu_us_per_chunk: dict[str, float]
    relay_system_us_per_chunk: dict[str, float]
    # The stack relay's CPU time per chunk, and its kernel part, for the stack_* targets.
    stack_cpu_us_per_chunk: dict[str, float]
    stack_system_us_per_chunk: dict[str, float]
    # CPU time per chunk of the process in the middle (the proxy for proxy_* targets, the byte
    # relay for relay_*, the stack relay for stack_*) from the scheduler's nanosecond counter;
    # empty where the kernel has none.
    runtime_us_per_chunk: dict[str, float]
    tokens: int
    runs: int
    errors: int


def _middle(
    name: str,
    proxy: ManagedProcess,
    relay: ManagedProcess | None,
    stack: ManagedProcess | None,
) -> ManagedProcess | None:
    """The process between the client and the simulator for the target called ``name``."""
    if name.startswith("proxy"):
        return proxy
    if name.startswith("relay"):
        return relay
    if name.startswith("stack"):
        return stack
    return None


async def measure_long_stream(
    client: httpx.AsyncClient,
    targets: Sequence[Target],
    prompt: Prompt,
    *,
    proxy: ManagedProcess,
    simulator: ManagedProcess,
    runs: int,
    relay: ManagedProcess | None = None,
    stack: ManagedProcess | None = None,
) -> LongStreamFigures:
    """Stream ``prompt``'s long answer through each target ``runs`` times (``relay``: the byte
    relay of the ``relay_*`` targets, ``stack``: the stack relay of the ``stack_*`` targets,
    whose CPU time is then read like the proxy's)."""
    intervals: dict[str, list[float]] = {target.name: [] for target in targets}
    sim_cpu: dict[str, list[float]] = {target.name: [] for target in targets}
    proxy_cpu: dict[str, list[float]] = {t.name: [] for t in targets if t.name.startswith("proxy")}
    proxy_sys: dict[str, list[float]] = {name: [] for name in proxy_cpu}
    relay_cpu: dict[str, list[float]] = {
        t.name: [] for t in targets if relay is not None and t.name.startswith("relay")
    }
    relay_sys: dict[str, list[float]] = {name: [] for name in relay_cpu}
    stack_cpu: dict[str, list[float]] = {
        t.name: [] for t in targets if stack is not None and t.name.startswith("stack")
    }
    stack_sys: dict[str, list[float]] = {name: [] for name in stack_cpu}
    runtime: dict[str, list[float]] = {name: [] for name in (*proxy_cpu, *relay_cpu, *stack_cpu)}
    errors = 0
    for _ in range(runs):
        for target in targets:
            middle = _middle(target.name, proxy, relay, stack)
            sim_before = simulator.cpu_seconds()
            cpu_before = middle.cpu_seconds() if middle else 0.0
            system_before = middle.system_seconds() if middle else 0.0
            runtime_before = middle.runtime_seconds() if middle else None
            expected = prompt.answer
            result = await stream_once(client, target, prompt, expected=expected)
            runtime_after = middle.runtime_seconds() if middle else None
            cpu_used = middle.cpu_seconds() - cpu_before if middle else 0.0
            system_used = middle.system_seconds() - system_before if middle else 0.0
            sim_used = simulator.cpu_seconds() - sim_before
            if not result.ok or result.ttft_s is None or result.ttlt_s is None:
                errors += 1
                continue
            gaps = max(1, result.content_events - 1)
            intervals[target.name].append((result.ttlt_s - result.ttft_s) / gaps * 1e6)
            sim_cpu[target.name].append(sim_used / result.events * 1e6)
            for cpu, system in (
                (proxy_cpu, proxy_sys),
                (relay_cpu, relay_sys),
                (stack_cpu, stack_sys),
            ):
                if target.name in cpu:
                    cpu[target.name].append(cpu_used / result.events * 1e6)
                    system[target.name].append(system_used / result.events * 1e6)
            if target.name in runtime and runtime_before is not None and runtime_after is not None:
                runtime[target.name].append((runtime_after - runtime_before) / result.events * 1e6)
    interval_us = {name: median_of_runs(values) for name, values in intervals.items()}
    return LongStreamFigures(
        interval_us=interval_us,
        chunks_per_s={name: 1e6 / value for name, value in interval_us.items() if value > 0},
        proxy_cpu_us_per_chunk={name: median_of_runs(v) for name, v in proxy_cpu.items()},
        proxy_system_us_per_chunk={name: median_of_runs(v) for name, v in proxy_sys.items()},
        simulator_cpu_us_per_chunk={name: median_of_runs(v) for name, v in sim_cpu.items()},
        relay_cpu_us_per_chunk={name: median_of_runs(v) for name, v in relay_cpu.items()},
        relay_system_us_per_chunk={name: median_of_runs(v) for name, v in relay_sys.items()},
        stack_cpu_us_per_chunk={name: median_of_runs(v) for name, v in stack_cpu.items()},
        stack_system_us_per_chunk={name: median_of_runs(v) for name, v in stack_sys.items()},
        runtime_us_per_chunk={name: median_of_runs(v) for name, v in runtime.items() if v},
        tokens=prompt.tokens,
        runs=runs,
        errors=errors,
    )
