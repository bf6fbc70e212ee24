"""``make bench`` / ``python -m benchmarks.run [--quick] [--json FILE] [--details FILE]``.

Runs every benchmark on this machine against the built-in simulator over loopback, prints one
table and optionally writes the headline figures as JSON with exactly these keys::

    overhead_ms_p50, overhead_ms_p99     time to LAST token added by the proxy (E2EE via proxy
                                         vs plaintext direct), sequential requests
    crypto_floor_us                      one ECDH + HKDF + AES-GCM open of one small field
    chunk_us, chunks_per_s               in-process pipeline cost per chunk; chunks per second
                                         relayed end to end over sockets on a long stream
    concurrent_streams, errors,          the concurrency test: streams, failed streams,
    ttft_added_ms_p99, rss_mb            p99 time-to-first-token added (vs the in-process E2EE
                                         client), proxy peak RSS (MiB)
    attestation_verify_ms                verify_evidence of a real capture, warm collateral
    attestation_fetches                  fetches seen for 100 concurrent cold requests

``--details FILE`` writes every figure measured (variants, breakdowns, per-run data, machine).
Phases run in this order, in-process ones first while the machine is quiet: inprocess,
latency, load, single_flight (``--only`` picks some). The goals are reported, never asserted;
next to the latency and paced-CPU goals stand two floors, the same figure measured in the
latency phase for a process in the proxy's place: the machine floor, the byte relay
(``benchmarks.byte_relay``, a process that only copies bytes; ``--details``: ``machine_floor``),
and the stack floor, the stack relay (``benchmarks.stack_relay``, uvicorn and aiohttp set up as
the proxy has them relaying HTTP, nothing of the proxy's own; ``--details``: ``stack_floor``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.client import (
    E2EE_MODEL,
    PLAIN_MODEL,
    direct_target,
    enclave_key,
    new_client,
    prompt_for_tokens,
    proxy_target,
    stream_once,
)
from benchmarks.inprocess import (
    attestation_figures,
    chunk_budget,
    crypto_floor_us,
    pipeline_figures,
)
from benchmarks.latency import measure_long_stream, measure_overhead
from benchmarks.load import measure_load
from benchmarks.procs import (
    SIM_API_KEY,
    start_byte_relay,
    start_proxy,
    start_simulator,
    start_stack_relay,
    system_busy_seconds,
)
from benchmarks.scaling import measure_scaling
from benchmarks.single_flight import measure_single_flight

# Gap between events for the paced CPU measurement: long enough that the proxy handles every
# event on its own wake-up, as with any real model's token rate.
PACED_DELAY_S = 0.001
LABEL_WIDTH = 44
PHASES = ("inprocess", "latency", "load", "scaling", "single_flight")
JSON_KEYS = (
    "overhead_ms_p50",
    "overhead_ms_p99",
    "crypto_floor_us",
    "chunk_us",
    "chunks_per_s",
    "concurrent_streams",
    "errors",
    "ttft_added_ms_p99",
    "rss_mb",
    "attestation_verify_ms",
    "attestation_fetches",
)


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of everything to run."""

    crypto_blobs: int
    crypto_runs: int
    pipeline_tokens: int
    pipeline_runs: int
    attestation_runs: int
    overhead_tokens: int
    overhead_requests: int
    overhead_runs: int
    overhead_gap_s: float
    long_stream_tokens: int
    long_stream_runs: int
    paced_tokens: int
    load_streams: int
    load_duration_s: float
    load_rate: float
    load_runs: int
    # Streams start evenly over this many seconds. Half the streams' duration: all N are open
    # together for the second half, having arrived at 2N/duration per second (1,000 streams of
    # 20 s: 100 new requests/s). 1 s is a burst: N arrivals in one second, which on 2 cores
    # measures the proxy's per-request CPU queue, not its streaming.
    load_ramp_s: float
    single_flight_requests: int
    scaling_streams: int
    scaling_tokens: int
    scaling_rounds: int


FULL = Plan(
    crypto_blobs=2000,
    crypto_runs=7,
    pipeline_tokens=2000,
    pipeline_runs=7,
    attestation_runs=30,
    overhead_tokens=16,
    overhead_requests=200,
    overhead_runs=5,
    overhead_gap_s=0.01,
    long_stream_tokens=2000,
    long_stream_runs=5,
    paced_tokens=2000,
    load_streams=1000,
    load_duration_s=20.0,
    load_rate=10.0,
    load_runs=2,
    load_ramp_s=10.0,
    single_flight_requests=100,
    scaling_streams=32,
    scaling_tokens=500,
    scaling_rounds=4,
)
QUICK = Plan(
    crypto_blobs=1000,
    crypto_runs=5,
    pipeline_tokens=2000,
    pipeline_runs=3,
    attestation_runs=10,
    overhead_tokens=16,
    overhead_requests=30,
    overhead_runs=3,
    overhead_gap_s=0.01,
    long_stream_tokens=2000,
    long_stream_runs=2,
    paced_tokens=300,
    load_streams=200,
    load_duration_s=5.0,
    load_rate=10.0,
    load_runs=1,
    load_ramp_s=2.5,
    single_flight_requests=100,
    scaling_streams=16,
    scaling_tokens=300,
    scaling_rounds=2,
)


def with_overrides(plan: Plan, assignments: Sequence[str]) -> Plan:
    """``plan`` with ``FIELD=VALUE`` assignments applied (values typed like the field)."""
    changes: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep or name not in Plan.__dataclass_fields__:
            raise ValueError(f"--set {assignment!r}: expected FIELD=VALUE with a plan field")
        current = getattr(plan, name)
        changes[name] = type(current)(text)
    return replace(plan, **changes)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - fixed read-only git commands
            ["git", *args],  # noqa: S607 - git from PATH, as a developer runs it
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            cwd=Path(__file__).resolve().parents[1],
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "loadavg_at_start": _loadavg(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_files": len(_git("status", "--porcelain").splitlines()),
    }


class Results:
    """Headline figures and every detail, filled phase by phase."""

    def __init__(self, plan: Plan, quick: bool) -> None:
        self.headline: dict[str, float | int | None] = dict.fromkeys(JSON_KEYS)
        self.details: dict[str, Any] = {
            "mode": "quick" if quick else "full",
            "plan": asdict(plan),
            "machine": machine(),
        }

    def row(self, figure: str, value: str, goal: str = "", note: str = "") -> None:
        """Print one line of the results table."""
        print(f"  {figure:<{LABEL_WIDTH}} {value:>14}  {goal:<12} {note}", flush=True)


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def run_inprocess(plan: Plan, results: Results) -> None:
    floor = crypto_floor_us(plan.crypto_blobs, plan.crypto_runs)
    pipeline = pipeline_figures(plan.pipeline_tokens, plan.pipeline_runs)
    attestation = attestation_figures(plan.attestation_runs)
    budget = chunk_budget(plan.pipeline_tokens, plan.pipeline_runs)
    results.headline.update(
        crypto_floor_us=round(floor, 2),
        chunk_us=round(pipeline.chunk_us, 2),
        attestation_verify_ms=round(attestation.verify_ms, 3),
    )
    results.details["inprocess"] = {
        "crypto_floor_us": floor,
        "pipeline": asdict(pipeline),
        "attestation": asdict(attestation),
        "chunk_budget_us": budget,
    }
    ratio = pipeline.chunk_us / floor
    results.row("crypto_floor_us", _fmt(floor, 2), "", "ECDH + HKDF + AES-GCM, one field")
    results.row("chunk_us", _fmt(pipeline.chunk_us, 2), "<= 2x floor", f"{ratio:.2f}x floor")
    results.row("  pipeline, 64 KiB reads (us)", _fmt(pipeline.chunk_us_64k_reads, 2))
    results.row("  proxy.service.relay generators (us)", _fmt(pipeline.chunk_us_generators, 2))
    for step, micros in budget.items():
        results.row(f"  step: {step} (us)", _fmt(micros, 2))
    results.row(
        "attestation_verify_ms",
        _fmt(attestation.verify_ms, 3),
        "",
        "passed" if attestation.passed else "DID NOT PASS",
    )
    results.row("  dcap: collateral from_json (ms)", _fmt(attestation.dcap_collateral_ms, 3))
    results.row("  dcap: dcap_qvl.verify (ms)", _fmt(attestation.dcap_verify_ms, 3))


# Notes printed next to the comparisons of the latency phase that have a name of their own.
_COMPARISON_NOTES = {
    "proxy_plain_vs_direct_plain": "the bare hop",
    "relay_plain_vs_direct_plain": "the floor hop (byte relay)",
    "proxy_plain_vs_relay_plain": "proxy's HTTP + Python beyond the floor",
    "stack_plain_vs_direct_plain": "the stack floor hop (uvicorn + aiohttp)",
    "stack_plain_vs_relay_plain": "the chosen libraries beyond the floor",
    "proxy_plain_vs_stack_plain": "the proxy's own code beyond the stack",
}


async def run_latency(plan: Plan, results: Results, log_dir: Path) -> None:
    with (
        start_simulator(log_dir, token_delay_s=0.0) as simulator,
        start_proxy(log_dir, upstream_url=simulator.url + "/api/v1") as proxy,
        start_byte_relay(log_dir, simulator.url) as relay,
        start_stack_relay(log_dir, simulator.url) as stack,
    ):
        busy_before = system_busy_seconds()
        servers = (proxy, simulator, relay, stack)
        ours_before = sum(p.cpu_seconds() for p in servers) + time.process_time()
        wall_before = time.perf_counter()
        async with new_client(5) as client:
            key = await enclave_key(client, simulator.url, SIM_API_KEY)
            targets = [
                direct_target(simulator.url, SIM_API_KEY, "direct_plain", model_key=None),
                proxy_target(proxy.url, E2EE_MODEL, "proxy_e2ee"),
                direct_target(simulator.url, SIM_API_KEY, "direct_e2ee", model_key=key),
                proxy_target(proxy.url, PLAIN_MODEL, "proxy_plain"),
                # The relay is transparent: the simulator's own path and key, through its port.
                direct_target(relay.url, SIM_API_KEY, "relay_plain", model_key=None),
                # The stack relay forwards path, query and headers: the same request again.
                direct_target(stack.url, SIM_API_KEY, "stack_plain", model_key=None),
            ]
            overhead = await measure_overhead(
                client,
                targets,
                prompt_for_tokens(plan.overhead_tokens),
                requests_per_run=plan.overhead_requests,
                runs=plan.overhead_runs,
                gap_s=plan.overhead_gap_s,
            )
            long_stream = await measure_long_stream(
                client,
                targets,
                prompt_for_tokens(plan.long_stream_tokens),
                proxy=proxy,
                simulator=simulator,
                runs=plan.long_stream_runs,
                relay=relay,
                stack=stack,
            )
        proxy_rss = proxy.vm_hwm_mb()
        ours = sum(p.cpu_seconds() for p in servers) + time.process_time() - ours_before
        wall = time.perf_counter() - wall_before
        other = max(0.0, system_busy_seconds() - busy_before - ours) / wall
    headline = overhead.added["proxy_e2ee_vs_direct_plain"]
    results.headline.update(
        overhead_ms_p50=round(headline["ttlt_p50"], 3),
        overhead_ms_p99=round(headline["ttlt_p99"], 3),
        chunks_per_s=round(long_stream.chunks_per_s.get("proxy_e2ee", math.nan), 1),
    )
    results.details["latency"] = {
        "overhead": asdict(overhead),
        "long_stream": asdict(long_stream),
        "proxy_rss_mb_after_latency": proxy_rss,
        "other_cpu_share": other,
    }
    n = f"{overhead.answer_tokens}-token answers, {overhead.requests_per_run}x{overhead.runs}"
    results.row("overhead_ms_p50 (last token)", _fmt(headline["ttlt_p50"], 3), "< 1 ms", n)
    results.row("overhead_ms_p99 (last token)", _fmt(headline["ttlt_p99"], 3))
    results.row("  first token added, p50 (ms)", _fmt(headline["ttft_p50"], 3))
    results.row("  first token added, p99 (ms)", _fmt(headline["ttft_p99"], 3))
    for label, added in overhead.added.items():
        if label == "proxy_e2ee_vs_direct_plain":
            continue
        named = _COMPARISON_NOTES.get(label)
        results.row(
            f"  {label} (ms)",
            f"{_fmt(added['ttft_p50'], 3)} / {_fmt(added['ttlt_p50'], 3)}",
            "",
            "p50 first / last token" + (f": {named}" if named else ""),
        )
    for name, values in overhead.variants.items():
        results.row(
            f"  {name} p50 (ms)",
            f"{_fmt(values['ttft_p50'], 2)} / {_fmt(values['ttlt_p50'], 2)}",
            "",
            "first / last token",
        )
    results.row(
        "chunks_per_s (end to end)",
        _fmt(long_stream.chunks_per_s.get("proxy_e2ee"), 0),
        "",
        f"{long_stream.tokens}-token stream, no token delay",
    )
    for name, rate in long_stream.chunks_per_s.items():
        if name != "proxy_e2ee":
            results.row(f"  {name} chunks/s", _fmt(rate, 0))
    for name, micros in long_stream.proxy_cpu_us_per_chunk.items():
        results.row(f"  proxy CPU per chunk, {name} (us)", _fmt(micros, 1), "", "from /proc")
    for name, micros in long_stream.relay_cpu_us_per_chunk.items():
        system = long_stream.relay_system_us_per_chunk.get(name)
        results.row(
            f"  relay CPU per chunk, {name} (us)",
            _fmt(micros, 1),
            "",
            f"from /proc, {_fmt(system, 1)} in the kernel; many events per read",
        )
    for name, micros in long_stream.stack_cpu_us_per_chunk.items():
        system = long_stream.stack_system_us_per_chunk.get(name)
        results.row(
            f"  stack CPU per chunk, {name} (us)",
            _fmt(micros, 1),
            "",
            f"from /proc, {_fmt(system, 1)} in the kernel; many events per read",
        )
    for name, micros in long_stream.runtime_us_per_chunk.items():
        results.row(f"    same, {name}, scheduler's counter", _fmt(micros, 1), "", "ns resolution")
    for name, micros in long_stream.simulator_cpu_us_per_chunk.items():
        results.row(f"  simulator CPU/chunk, {name} (us)", _fmt(micros, 1))
    results.row("  other load on the machine (cores)", _fmt(other, 2), "0", "during this phase")
    if overhead.errors or long_stream.errors:
        results.row("  latency errors", str(overhead.errors + long_stream.errors), "0")
    budget = results.details.get("inprocess", {}).get("chunk_budget_us")
    if budget:
        total = long_stream.proxy_cpu_us_per_chunk.get("proxy_e2ee", math.nan)
        print_budget(results, budget, total)
    await run_paced(plan, results, log_dir)


async def run_paced(plan: Plan, results: Results, log_dir: Path) -> None:
    """Proxy CPU per chunk when every event arrives on its own (a simulator pacing tokens
    ``PACED_DELAY_S`` apart, as any real model does), for E2EE and for plaintext passthrough,
    and the byte relay's and the stack relay's for plaintext (the two floors).
    The proxy then sleeps and wakes once per event, which costs far more than the hot loop of
    the unpaced stream (wake-up, cold caches); that is the regime of few concurrent streams."""
    with (
        start_simulator(log_dir, token_delay_s=PACED_DELAY_S) as simulator,
        start_proxy(log_dir, upstream_url=simulator.url + "/api/v1") as proxy,
        start_byte_relay(log_dir, simulator.url) as relay,
        start_stack_relay(log_dir, simulator.url) as stack,
    ):
        async with new_client(3) as client:
            targets = [
                proxy_target(proxy.url, E2EE_MODEL, "proxy_e2ee"),
                proxy_target(proxy.url, PLAIN_MODEL, "proxy_plain"),
                direct_target(relay.url, SIM_API_KEY, "relay_plain", model_key=None),
                direct_target(stack.url, SIM_API_KEY, "stack_plain", model_key=None),
            ]
            for target in targets:
                await stream_once(client, target, prompt_for_tokens(8))
            paced = await measure_long_stream(
                client,
                targets,
                prompt_for_tokens(plan.paced_tokens),
                proxy=proxy,
                simulator=simulator,
                runs=plan.long_stream_runs,
                relay=relay,
                stack=stack,
            )
    results.details["paced"] = asdict(paced)
    note = f"{paced.tokens} tokens {PACED_DELAY_S * 1000:g} ms apart"
    for name, micros in paced.proxy_cpu_us_per_chunk.items():
        results.row(f"proxy CPU per chunk, paced, {name}", _fmt(micros, 1), "", note)
        system = paced.proxy_system_us_per_chunk.get(name)
        if system is not None:
            results.row("    of which in the kernel", _fmt(system, 1), "", "syscalls, wake-ups")
    for name, micros in paced.relay_cpu_us_per_chunk.items():
        results.row(f"relay CPU per chunk, paced, {name}", _fmt(micros, 1), "", "the floor")
        system = paced.relay_system_us_per_chunk.get(name)
        if system is not None:
            results.row("    of which in the kernel", _fmt(system, 1), "", "syscalls, wake-ups")
    for name, micros in paced.stack_cpu_us_per_chunk.items():
        results.row(f"stack CPU per chunk, paced, {name}", _fmt(micros, 1), "", "the stack floor")
        system = paced.stack_system_us_per_chunk.get(name)
        if system is not None:
            results.row("    of which in the kernel", _fmt(system, 1), "", "syscalls, wake-ups")
    for name, micros in paced.runtime_us_per_chunk.items():
        results.row(f"  same, {name}, scheduler's counter", _fmt(micros, 1), "", "ns resolution")
    if paced.errors:
        results.row("  paced errors", str(paced.errors), "0")


def print_budget(results: Results, budget: dict[str, float], total_us: float) -> None:
    """The proxy's CPU time per relayed E2EE chunk (end to end, from ``/proc``), split into the
    pipeline steps timed in-process and the remainder: HTTP machinery on both sides, the event
    loop, system calls, and the steps' own extra cost when caches are cold."""
    if not total_us or math.isnan(total_us):
        return
    shares = dict(budget)
    shares["remainder: http machinery, loop, syscalls"] = max(0.0, total_us - sum(budget.values()))
    results.details["chunk_budget_share"] = {
        name: {"us": micros, "percent": 100.0 * micros / total_us}
        for name, micros in shares.items()
    }
    results.row("per-chunk CPU budget (us)", _fmt(total_us, 1), "", "end to end, = 100%")
    for name, micros in sorted(shares.items(), key=lambda item: -item[1]):
        results.row(f"  {name}", _fmt(micros, 1), "", f"{100.0 * micros / total_us:.0f}%")


async def run_load(plan: Plan, results: Results, log_dir: Path) -> None:
    # Phala mode (one server ephemeral and one derived key per response, as Venice's Phala
    # backends do): with a fresh ECDH per token the simulator saturates long before the proxy.
    with start_simulator(log_dir, token_delay_s=1.0 / plan.load_rate, phala=True) as simulator:
        load = await measure_load(
            log_dir,
            simulator,
            streams=plan.load_streams,
            duration_s=plan.load_duration_s,
            rate=plan.load_rate,
            runs=plan.load_runs,
            ramp_s=plan.load_ramp_s,
        )
    results.headline.update(
        concurrent_streams=load.streams,
        errors=load.errors,
        ttft_added_ms_p99=round(load.ttft_added_ms_p99, 2),
        rss_mb=round(load.rss_mb, 1),
    )
    results.details["load"] = asdict(load)
    shape = (
        f"{load.rate:g} tok/s for {load.duration_s:g} s, {len(load.runs)} runs, Phala mode, "
        f"started over {plan.load_ramp_s:g} s ({load.streams / plan.load_ramp_s:.0f} arrivals/s)"
    )
    results.row("concurrent_streams", str(load.streams), str(plan.load_streams), shape)
    limit = f"; server.max_in_flight raised to {load.max_in_flight}" if load.max_in_flight else ""
    results.row("errors", str(load.errors), "0", f"baseline errors {load.baseline_errors}{limit}")
    results.row(
        "ttft_added_ms_p99", _fmt(load.ttft_added_ms_p99, 2), "", "vs the in-process E2EE client"
    )
    results.row("rss_mb (proxy VmHWM)", _fmt(load.rss_mb, 1), "< 150 MB")
    for index, ((direct, proxied), plaintext) in enumerate(
        zip(load.runs, load.plaintext_runs, strict=True), 1
    ):
        for run in (plaintext, direct, proxied):
            cpu = f"client {run.client_cpu_share:.2f} sim {run.simulator_cpu_share:.2f}"
            if run.proxy_cpu_share is not None:
                cpu += f" proxy {run.proxy_cpu_share:.2f}"
                cpu += f" ({_fmt(run.proxy_cpu_us_per_chunk, 0)} us/chunk)"
            cpu += f" other {run.other_cpu_share:.2f}"
            results.row(
                f"  run {index} {run.target} ttft p50/p99",
                f"{_fmt(run.ttft_p50_ms, 1)} / {_fmt(run.ttft_p99_ms, 1)}",
                "",
                f"tok/s med {_fmt(run.tokens_per_s_median, 1)} min "
                f"{_fmt(run.tokens_per_s_min, 1)}; CPU cores {cpu}",
            )


@dataclass(frozen=True, slots=True)
class Goal:
    """One goal of issue 16: the figure, the limit it must stay under, and the baseline.
    ``floor``: the same figure for the byte relay (the machine floor), ``stack``: for the stack
    relay (the stack floor), where one was measured."""

    name: str
    figure: float | None
    limit: float
    unit: str
    baseline: str = ""
    floor: float | None = None
    stack: float | None = None


def machine_floor(details: dict[str, Any]) -> dict[str, float]:
    """What the byte relay (``benchmarks.byte_relay``, a process that only copies bytes) cost in
    this run, for the goals it bounds:

    - ``first_token_added_ms_p50``, ``last_token_added_ms_p50``: ``relay_plain - direct_plain``;
    - ``paced_cpu_us_per_chunk`` and its kernel part ``paced_system_us_per_chunk`` (``/proc``,
      clock ticks), ``paced_runtime_us_per_chunk`` (the scheduler's counter, where there is one);
    - ``paced_cpu_plus_crypto_floor_us`` when the in-process phase ran: the paced figure (the
      scheduler's counter where there is one) plus ``crypto_floor_us``, the floor of an E2EE
      relay, which must open one field per chunk (derived, not measured in one process).

    Keys whose figures were not measured are left out."""
    return _floor(details, "relay")


def stack_floor(details: dict[str, Any]) -> dict[str, float]:
    """What the stack relay (``benchmarks.stack_relay``: uvicorn serving a raw ASGI callable that
    relays with aiohttp, both set up as the proxy has them) cost in this run: the keys of
    :func:`machine_floor`, from ``stack_plain - direct_plain`` and the paced ``stack_plain``
    figures. What the proxy's chosen libraries cost with none of its own code on top."""
    return _floor(details, "stack")


def _floor(details: dict[str, Any], kind: str) -> dict[str, float]:
    """The floor figures of the ``{kind}_plain`` target (see :func:`machine_floor`)."""
    floor: dict[str, float] = {}
    target = f"{kind}_plain"
    added = details.get("latency", {}).get("overhead", {}).get("added", {})
    hop = added.get(f"{target}_vs_direct_plain")
    if hop is not None:
        floor["first_token_added_ms_p50"] = hop["ttft_p50"]
        floor["last_token_added_ms_p50"] = hop["ttlt_p50"]
    paced = details.get("paced", {})
    for key, source in (
        ("paced_cpu_us_per_chunk", f"{kind}_cpu_us_per_chunk"),
        ("paced_system_us_per_chunk", f"{kind}_system_us_per_chunk"),
        ("paced_runtime_us_per_chunk", "runtime_us_per_chunk"),
    ):
        value = paced.get(source, {}).get(target)
        if value is not None:
            floor[key] = value
    crypto = details.get("inprocess", {}).get("crypto_floor_us")
    if crypto and "paced_cpu_us_per_chunk" in floor:
        paced_floor = floor.get("paced_runtime_us_per_chunk", floor["paced_cpu_us_per_chunk"])
        floor["paced_cpu_plus_crypto_floor_us"] = paced_floor + crypto
    return floor


def goals(results: Results) -> list[Goal]:
    """Every goal with its figure from this run (None when its phase did not run)."""
    details = results.details
    headline = results.headline
    relay_floor = machine_floor(details)
    stack = stack_floor(details)
    out: list[Goal] = []
    added = details.get("latency", {}).get("overhead", {}).get("added", {})
    for label, baseline in (
        ("proxy_e2ee_vs_direct_e2ee", "in-process client"),
        ("proxy_e2ee_vs_direct_plain", "plaintext client"),
    ):
        latency = added.get(label)
        if latency is not None:
            for token, key in (("last", "ttlt_p50"), ("first", "ttft_p50")):
                name = f"added to {token} token, p50"
                hop = f"{token}_token_added_ms_p50"
                out.append(
                    Goal(
                        name,
                        latency[key],
                        1.0,
                        "ms",
                        baseline,
                        floor=relay_floor.get(hop),
                        stack=stack.get(hop),
                    )
                )
    long_stream = details.get("latency", {}).get("long_stream", {})
    intervals = long_stream.get("interval_us", {})
    if "proxy_e2ee" in intervals and "direct_e2ee" in intervals:
        burst = intervals["proxy_e2ee"] - intervals["direct_e2ee"]
        out.append(Goal("added per chunk in bursts", burst, 30.0, "us", "in-process client"))
        floor = details.get("inprocess", {}).get("crypto_floor_us")
        if floor:
            out.append(Goal("  same, x crypto floor", burst / floor, 1.1, "x"))
    paced = details.get("paced", {}).get("proxy_cpu_us_per_chunk", {})
    if "proxy_e2ee" in paced:
        out.append(
            Goal(
                "proxy CPU per chunk, 1 ms pace",
                paced["proxy_e2ee"],
                60.0,
                "us",
                floor=relay_floor.get("paced_cpu_us_per_chunk"),
                stack=stack.get("paced_cpu_us_per_chunk"),
            )
        )
    if "load" in details:
        streams = f"{headline['concurrent_streams']} streams"
        out += [
            Goal(f"errors, {streams}", float(headline["errors"] or 0), 0.5, ""),
            Goal("peak RSS under load", headline["rss_mb"], 150.0, "MiB"),
            Goal("TTFT p99 added under load", headline["ttft_added_ms_p99"], 50.0, "ms"),
        ]
    verify_ms = headline.get("attestation_verify_ms")
    if verify_ms is not None:
        out.append(Goal("attestation verify, warm collateral", verify_ms, 5.0, "ms"))
    fetches = headline.get("attestation_fetches")
    if fetches is not None:
        out.append(Goal("fetches, 100 cold requests", float(fetches), 1.5, ""))
    return out


def print_goals(results: Results) -> None:
    """One line per goal: figure, limit, figure / limit, met or not, the machine floor (the
    same figure for the byte relay) and the stack floor (for the stack relay) where measured;
    then each floor in one line."""
    rows = goals(results)
    if not rows:
        return
    print(
        "goals (issue 16): figure, limit, figure / limit, met, baseline; machine floor; "
        "stack floor",
        flush=True,
    )
    table = []
    for goal in rows:
        if goal.figure is None or math.isnan(goal.figure):
            met, ratio = "n/a", "n/a"
        else:
            met = "yes" if goal.figure < goal.limit else "NO"
            ratio = f"{goal.figure / goal.limit:.2f}"
        limit = "0" if goal.name.startswith("errors") else f"< {goal.limit:g} {goal.unit}".strip()
        if goal.name.startswith("fetches"):
            limit = "1"
        vs = f"vs {goal.baseline}" if goal.baseline else ""
        if goal.floor is not None:
            vs += f"{'; ' if vs else ''}floor {_fmt(goal.floor, 3)} {goal.unit}"
        if goal.stack is not None:
            vs += f"{'; ' if vs else ''}stack {_fmt(goal.stack, 3)} {goal.unit}"
        results.row(goal.name, _fmt(goal.figure, 3), limit, f"{ratio:>5}  {met:<4} {vs}")
        table.append({**asdict(goal), "met": met})
    results.details["goals"] = table
    relay_floor = machine_floor(results.details)
    if relay_floor:
        results.details["machine_floor"] = relay_floor
        lead = "  floor on this machine (byte relay: a process that only copies bytes): "
        print(lead + _floor_line(relay_floor), flush=True)
    stack = stack_floor(results.details)
    if stack:
        results.details["stack_floor"] = stack
        lead = "  stack floor (stack relay: uvicorn + aiohttp as the proxy sets them up, no more): "
        print(lead + _floor_line(stack), flush=True)


def _floor_line(floor: dict[str, float]) -> str:
    """A floor (:func:`machine_floor`, :func:`stack_floor`) in one sentence, for the end of the
    goals block."""
    parts = []
    if "first_token_added_ms_p50" in floor:
        parts.append(
            f"added to first / last token {_fmt(floor['first_token_added_ms_p50'], 3)} / "
            f"{_fmt(floor.get('last_token_added_ms_p50'), 3)} ms (p50)"
        )
    if "paced_cpu_us_per_chunk" in floor:
        cpu = f"CPU per chunk at a {PACED_DELAY_S * 1000:g} ms pace "
        cpu += f"{_fmt(floor['paced_cpu_us_per_chunk'], 1)} us"
        extras = []
        if "paced_system_us_per_chunk" in floor:
            extras.append(f"{_fmt(floor['paced_system_us_per_chunk'], 1)} us in the kernel")
        if "paced_runtime_us_per_chunk" in floor:
            extras.append(f"scheduler's counter {_fmt(floor['paced_runtime_us_per_chunk'], 1)} us")
        parts.append(cpu + (f" ({'; '.join(extras)})" if extras else ""))
    if "paced_cpu_plus_crypto_floor_us" in floor:
        e2ee = _fmt(floor["paced_cpu_plus_crypto_floor_us"], 1)
        parts.append(f"with the crypto floor per chunk (E2EE) {e2ee} us")
    return ", ".join(parts)


async def run_scaling(plan: Plan, results: Results, log_dir: Path) -> None:
    figures = await measure_scaling(
        log_dir,
        streams=plan.scaling_streams,
        tokens=plan.scaling_tokens,
        rounds=plan.scaling_rounds,
    )
    results.details["scaling"] = asdict(figures)
    shape = f"{figures.streams} streams x {figures.tokens} tokens, {plan.scaling_rounds} rounds"
    results.row("workers 2 vs 1, relayed chunks/s", f"{figures.speedup:.2f}x", "", shape)
    for workers, rate in figures.chunks_per_s.items():
        errors = sum(r.errors for r in figures.rounds if r.workers == workers)
        results.row(
            f"  {workers} worker(s): chunks/s",
            _fmt(rate, 0),
            "",
            f"CPU cores proxy {figures.proxy_cores[workers]:.2f} "
            f"sim {figures.simulator_cores[workers]:.2f} "
            f"client {figures.client_cores[workers]:.2f} "
            f"other {figures.other_cores[workers]:.2f}; errors {errors}",
        )


async def run_single_flight(plan: Plan, results: Results, log_dir: Path) -> None:
    figures = await measure_single_flight(log_dir, requests=plan.single_flight_requests)
    results.headline.update(attestation_fetches=figures.attestation_fetches)
    results.details["single_flight"] = asdict(figures)
    results.row(
        "attestation_fetches",
        str(figures.attestation_fetches),
        "1",
        f"{figures.requests} concurrent cold requests, {figures.errors} failed, "
        f"/models fetched {figures.models_fetches}x",
    )


async def run_process_phases(
    plan: Plan, results: Results, phases: Sequence[str], log_dir: Path
) -> None:
    steps = (
        ("latency", "latency (client, proxy and simulator in separate processes)", run_latency),
        ("load", f"load ({plan.load_streams} streams)", run_load),
        ("scaling", "scaling (server.workers, Phala-mode simulator)", run_scaling),
        (
            "single_flight",
            "single flight (simulator in-thread, proxy in a subprocess)",
            run_single_flight,
        ),
    )
    for name, title, step in steps:
        if name in phases:
            print(title, flush=True)
            started = time.perf_counter()
            await step(plan, results, log_dir)
            results.details.setdefault("phase_seconds", {})[name] = time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--json", type=Path, help="write the headline figures here")
    parser.add_argument("--details", type=Path, help="write every figure measured here")
    parser.add_argument(
        "--only", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one field of the plan, e.g. --set load_streams=100 (repeatable)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' log files")
    args = parser.parse_args(argv)
    phases = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(unknown)}")
    plan = QUICK if args.quick else FULL
    try:
        plan = with_overrides(plan, args.set)
    except ValueError as exc:
        parser.error(str(exc))
    results = Results(plan, args.quick)
    info = results.details["machine"]
    print(
        f"venice-e2ee-proxy benchmarks ({results.details['mode']}): {info['nproc']} x "
        f"{info['cpu']}, Python {info['python']}, load average {info['loadavg_at_start']}",
        flush=True,
    )
    print(f"  {'figure':<{LABEL_WIDTH}} {'value':>14}  {'goal':<12} note", flush=True)
    started = time.perf_counter()
    log_dir = Path(tempfile.mkdtemp(prefix="venice-bench-"))
    try:
        if "inprocess" in phases:
            print("in-process", flush=True)
            phase_start = time.perf_counter()
            run_inprocess(plan, results)
            results.details["phase_seconds"] = {"inprocess": time.perf_counter() - phase_start}
        asyncio.run(run_process_phases(plan, results, phases, log_dir))
    finally:
        if args.keep_logs:
            print(f"server logs kept in {log_dir}", file=sys.stderr)
        else:
            for path in log_dir.iterdir():
                path.unlink()
            log_dir.rmdir()
    elapsed = time.perf_counter() - started
    results.details["elapsed_s"] = elapsed
    results.details["machine"]["loadavg_at_end"] = _loadavg()
    results.details["headline"] = results.headline
    print_goals(results)
    phase_times = ", ".join(
        f"{name} {seconds:.0f} s"
        for name, seconds in results.details.get("phase_seconds", {}).items()
    )
    print(f"done in {elapsed:.1f} s ({phase_times})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results.headline, indent=2) + "\n", encoding="utf-8")
    if args.details:
        args.details.write_text(
            json.dumps(results.details, indent=2, default=str) + "\n", encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
