"""Where the proxy's CPU goes per request: the running proxy under cProfile, by area.

Usage (from the repository root; not part of ``make bench``)::

    .venv/bin/python -m benchmarks.profile [--model e2ee|plain] [--requests N] [--tokens T]
                                           [--top K] [--token-delay S] [--save FILE]
                                           [--syscalls]

It starts the simulator (no token delay unless ``--token-delay``: events that far apart wake
the proxy one by one, as a real token pace does) and the proxy in separate processes exactly as
``make bench`` does, except that the proxy runs under :mod:`cProfile` with a **CPU-time** clock
(``time.process_time``), so time the process spends descheduled on a busy machine is not
counted. Profiling covers only the measured requests: it is switched on by ``SIGUSR1`` after a
warm-up and written out by ``SIGUSR2`` after the last request (the background signature check
of the last answer included). Then it prints:

- the proxy's CPU per request measured from ``/proc`` **without** the profiler's clock in the
  way (a first, unprofiled round of the same requests), the figure to compare with others;
- the profiled self time of each **area** (a built-in function's time counted in the areas of
  its callers) (upstream wire, HTTP server and framework, relay
  pipeline, crypto, signatures and attestation, logs and metrics, event loop and the rest), in
  percent: cProfile inflates Python code more than C code, so read the shares as "where to
  look", not as microseconds;
- the ``K`` functions with the most self time (``--save FILE`` keeps the raw profile for
  :mod:`pstats`);
- with ``--syscalls`` (needs ``strace``), one more unprofiled round with ``strace -c`` attached
  to the proxy: its system calls per request and per token, by name (counts are exact where
  times are not on a shared machine).

Requests are sequential streamed chat requests for a ``T``-token answer (16 by default) to the
E2EE model or, with ``--model plain``, to the plaintext model relayed through passthrough.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from benchmarks import procs
from benchmarks.client import (
    E2EE_MODEL,
    PLAIN_MODEL,
    new_client,
    prompt_for_tokens,
    proxy_target,
    stream_once,
)

# Areas by where a function is defined (first match wins); everything else is "event loop and
# the rest" (asyncio, uvloop's Python side, the standard library).
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("crypto", ("coincurve", "cryptography", "proxy/core/crypto.py", "_cffi")),
    (
        "signatures and attestation",
        ("proxy/attestation/", "proxy/service/signatures.py", "proxy/service/enclave_keys.py"),
    ),
    (
        "relay pipeline (SSE, JSON, rebuild, stop, encode)",
        (
            "proxy/core/",
            "proxy/service/relay.py",
            "proxy/service/chat.py",
            "proxy/service/emulation.py",
            "orjson",
        ),
    ),
    (
        "upstream wire (httpx API, aiohttp, yarl)",
        ("/httpx/", "/httpcore/", "/h11/", "/aiohttp/", "/yarl/", "/multidict/", "proxy/venice/"),
    ),
    ("logs and metrics", ("structlog", "prometheus_client", "proxy/observability/")),
    (
        "HTTP server and framework (uvicorn, Starlette, FastAPI, guards)",
        ("/uvicorn/", "/starlette/", "/fastapi/", "/anyio/", "proxy/http/"),
    ),
)
OTHER = "event loop and the rest"


def _serve_profiled(out: str) -> None:
    """Run ``proxy serve`` with a CPU-clock profiler switched by SIGUSR1 (on) / SIGUSR2 (off
    and write ``out``)."""
    profiler = cProfile.Profile(time.process_time)

    def start(*_: object) -> None:
        profiler.enable()

    def stop(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["proxy", *sys.argv[1:]]
    runpy.run_module("proxy", run_name="__main__", alter_sys=True)


def area_of(filename: str) -> str:
    for area, markers in AREAS:
        if any(marker in filename for marker in markers):
            return area
    return OTHER


async def _requests(url: str, model: str, tokens: int, count: int) -> None:
    prompt = prompt_for_tokens(tokens)
    target = proxy_target(url, model, model)
    async with new_client(4) as client:
        for _ in range(count):
            result = await stream_once(client, target, prompt, expected=prompt.answer)
            if not result.ok:
                raise RuntimeError(f"a request failed: {result.error}")
            await asyncio.sleep(0.003)  # let the background signature check run between
        await asyncio.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("e2ee", "plain"), default="e2ee")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--save", type=Path, help="keep the raw cProfile file here (pstats)")
    parser.add_argument(
        "--syscalls", action="store_true", help="count the proxy's system calls (strace -c)"
    )
    parser.add_argument(
        "--token-delay", type=float, default=0.0, help="seconds between the simulator's events"
    )
    args = parser.parse_args()
    model = E2EE_MODEL if args.model == "e2ee" else PLAIN_MODEL

    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        log_dir = Path(tmp)
        out = log_dir / "proxy.prof"
        os.environ["BENCH_PROFILE_OUT"] = str(out)
        with procs.start_simulator(log_dir, token_delay_s=args.token_delay) as sim:
            launcher = ("-m", "benchmarks.profile", "--serve-profiled")
            with procs.start_proxy(
                log_dir, upstream_url=sim.url + "/api/v1", launcher=launcher
            ) as proxy:
                asyncio.run(_requests(proxy.url, model, args.tokens, 20))  # warm-up
                if args.syscalls:
                    counts = _syscalls(
                        proxy.pid,
                        log_dir / "strace.txt",
                        lambda: asyncio.run(
                            _requests(proxy.url, model, args.tokens, args.requests)
                        ),
                    )
                before = proxy.cpu_seconds()
                asyncio.run(_requests(proxy.url, model, args.tokens, args.requests))
                plain_cpu_ms = (proxy.cpu_seconds() - before) / args.requests * 1000
                os.kill(proxy.pid, signal.SIGUSR1)
                asyncio.run(_requests(proxy.url, model, args.tokens, args.requests))
                os.kill(proxy.pid, signal.SIGUSR2)
                deadline = time.monotonic() + 30
                while not out.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
        stats = pstats.Stats(str(out))
        if args.save is not None:
            stats.dump_stats(str(args.save))
    _report(stats, args, plain_cpu_ms)
    if args.syscalls:
        _report_syscalls(counts, args)


def _syscalls(pid: int, out: Path, run: Callable[[], None]) -> dict[str, int]:
    """System calls of process ``pid`` (all its threads) while ``run`` runs, by name."""
    strace = shutil.which("strace")
    if strace is None:
        raise SystemExit("--syscalls needs strace (apt-get install strace)")
    tracer = subprocess.Popen(  # noqa: S603 - strace from PATH, our own arguments
        [strace, "-c", "-f", "-o", str(out), "-p", str(pid)], stderr=subprocess.DEVNULL
    )
    time.sleep(1.0)  # attached before the first request
    try:
        run()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"; skip headers and totals
        if len(parts) in (5, 6) and parts[3].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3])
    return counts


def _report_syscalls(counts: dict[str, int], args: argparse.Namespace) -> None:
    tokens = args.requests * args.tokens
    print(
        f"system calls (strace -c, an unprofiled round of {args.requests} requests): "
        f"{sum(counts.values()) / args.requests:.1f} per request, "
        f"{sum(counts.values()) / tokens:.2f} per token"
    )
    for name, calls in sorted(counts.items(), key=lambda item: -item[1]):
        print(
            f"  {name:16s} {calls / args.requests:8.2f} per request {calls / tokens:7.3f} per token"
        )


def _report(stats: pstats.Stats, args: argparse.Namespace, cpu_ms: float) -> None:
    entries = stats.stats  # type: ignore[attr-defined]
    by_area: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _line, _name), (_cc, _nc, tottime, _ct, callers) in entries.items():
        total += tottime
        if filename == "~" and callers:
            # A built-in (isinstance, dict.get, a C extension's method): its time goes to the
            # areas of the functions that called it, in proportion.
            for (caller_file, _l, _n), caller_stats in callers.items():
                by_area[area_of(caller_file)] += caller_stats[2]
        else:
            by_area[area_of(filename)] += tottime
    print(
        f"{args.model} model, {args.requests} sequential streamed requests of {args.tokens} "
        f"tokens, events {args.token_delay * 1000:g} ms apart: proxy CPU per request "
        f"{cpu_ms:.2f} ms (unprofiled, from /proc)"
    )
    print("profiled self time by area (shares; cProfile inflates Python more than C):")
    for area, seconds in sorted(by_area.items(), key=lambda item: -item[1]):
        print(f"  {seconds / total * 100:5.1f}%  {area}")
    print(f"top {args.top} functions by self time:")
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-profiled":
        del sys.argv[1]
        _serve_profiled(os.environ["BENCH_PROFILE_OUT"])
    else:
        main()
