"""Soak test (not part of CI): minutes of mixed traffic with faults against a proxy subprocess.

Usage (from the repository root)::

    .venv/bin/python scripts/soak.py [--minutes 2] [--concurrency 16] [--seed N] [--json FILE]

What runs:

- the built-in simulator in this process (uvicorn on a free loopback port, its own thread);
- the proxy as a real subprocess (``python -m proxy serve``) in front of it, DCAP off and the
  NVIDIA nonce check (the simulator's quote carries no Intel signature), JSON logs to a file;
- ``--concurrency`` client tasks sending chat requests in a loop: streaming and not, sometimes
  ``n = 2`` or ``stream_options.include_usage``, every prompt carrying a canary;
- a fault toggler that, every 0.2-1.5 s, switches the simulator to a random mix: healthy (most of
  the time), injected 429/502/503 for one or a few requests, a stream cut mid-way, a plaintext or
  corrupted chunk, Venice's in-band error, a slower token rate, and now and then an enclave key
  rotation (re-attestation).

What it reports: requests and requests/s, outcomes by kind (``ok``, ``http <status> <code>``,
``in-band <code>``, ``client <exception>``), answers that were wrong (must be 0), streams that
ended without ``[DONE]`` (must be 0), the canary seen in plaintext upstream, in the proxy's logs
or in ``/metrics`` (must be 0), a clean request after the faults stop (must succeed), and the
proxy's RSS: after warm-up, peak, at the end. Exit status 1 when a must-be-0 figure is not.

Deliberately not here: timing targets (see ``benchmarks/``), and faults the simulator cannot
make (the byte-level ones live in ``tests/fake_upstream.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from proxy.http.loopback import ThreadedServer, free_port
from proxy.simulator import Faults, SimulatorState, create_simulator_app

CANARY = "CANARY-soak-5e1d-secret-prompt"
SIM_API_KEY = "sim-soak-key-9f8e7d"
MODEL = "e2ee-simulated-near"
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "ünïcode", "🦊"]


class ProxyProcess:
    """``python -m proxy serve`` in front of the simulator, logs to a file."""

    def __init__(self, sim_url: str, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {
            **os.environ,
            "VENICE_API_KEY": SIM_API_KEY,
            "VENICE_PROXY_UPSTREAM__BASE_URL": sim_url + "/api/v1",
            "VENICE_PROXY_ATTESTATION__DCAP": "off",
            "VENICE_PROXY_ATTESTATION__NVIDIA": "nonce",
            "VENICE_PROXY_LOGGING__FORMAT": "json",
            "VENICE_PROXY_LOGGING__LEVEL": "info",
        }
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "proxy", "serve", "--port", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the proxy exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("the proxy did not become healthy")

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


# -- faults ------------------------------------------------------------------------------------

FAULT_MENU: list[tuple[float, str]] = [
    (12.0, "healthy"),
    (1.0, "status_429"),
    (1.0, "status_503"),
    (0.5, "status_502_always"),
    (1.0, "cut_stream"),
    (0.7, "plaintext_chunk"),
    (0.7, "corrupt_ciphertext"),
    (0.7, "midstream_error"),
    (1.0, "slow_tokens"),
    (0.2, "rotate_key"),
]


def apply_fault(state: SimulatorState, name: str, rng: random.Random) -> None:
    state.token_delay_s = 0.0
    if name == "rotate_key":
        state.rotate_key()
        state.faults = Faults()
        return
    faults = {
        "healthy": Faults(),
        "status_429": Faults(fail_status=429, fail_times=rng.randint(1, 3)),
        "status_503": Faults(fail_status=503, fail_times=rng.randint(1, 3)),
        "status_502_always": Faults(fail_status=502, fail_times=-1),
        "cut_stream": Faults(cut_stream_after=rng.randint(0, 6)),
        "plaintext_chunk": Faults(plaintext_chunk=True, fault_at_token=rng.randint(0, 4)),
        "corrupt_ciphertext": Faults(corrupt_ciphertext=True, fault_at_token=rng.randint(0, 4)),
        "midstream_error": Faults(midstream_error=True),
        "slow_tokens": Faults(),
    }[name]
    if name == "slow_tokens":
        state.token_delay_s = rng.uniform(0.002, 0.02)
    state.faults = faults


async def toggle_faults(
    state: SimulatorState, rng: random.Random, stop: asyncio.Event, counts: collections.Counter[str]
) -> None:
    weights = [weight for weight, _ in FAULT_MENU]
    names = [name for _, name in FAULT_MENU]
    while not stop.is_set():
        name = rng.choices(names, weights)[0]
        apply_fault(state, name, rng)
        counts[name] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0.2, 1.5))
    apply_fault(state, "healthy", rng)


# -- traffic -----------------------------------------------------------------------------------


@dataclass
class Tally:
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    wrong_answers: int = 0
    missing_done: int = 0
    requests: int = 0


def _prompt(rng: random.Random, index: int) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    return f"{CANARY} {index} {words}"


def _check_answer(text: str, prompt: str, choice: int, n: int) -> bool:
    prefix = f"[{choice}] " if n > 1 else ""
    return text.startswith(f"{prefix}You said: {prompt}")


async def one_request(client: httpx.AsyncClient, url: str, rng: random.Random, index: int) -> str:
    """Send one chat request; the outcome kind, with ``WRONG`` / ``NO_DONE`` for failures."""
    prompt = _prompt(rng, index)
    stream = rng.random() < 0.6
    n = 2 if rng.random() < 0.1 else 1
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
        "n": n,
    }
    if stream and rng.random() < 0.3:
        body["stream_options"] = {"include_usage": True}
    if not stream:
        response = await client.post(url, json=body)
        if response.status_code != 200:
            return f"http {response.status_code} {response.json()['error'].get('code')}"
        choices = response.json()["choices"]
        ok = all(
            _check_answer(c["message"]["content"] or "", prompt, c["index"], n) for c in choices
        )
        return "ok" if ok and len(choices) == n else "WRONG"
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return f"http {response.status_code} {response.json()['error'].get('code')}"
        texts: dict[int, str] = collections.defaultdict(str)
        done = False
        error: str | None = None
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if done or error is not None:
                return "EVENT_AFTER_END"
            if "error" in event:
                error = f"in-band {event['error'].get('code')}"
                continue
            for choice in event.get("choices") or []:
                texts[choice["index"]] += choice["delta"].get("content") or ""
        if not done:
            return "NO_DONE"
        if error is not None:
            return error
        ok = len(texts) == n and all(_check_answer(t, prompt, i, n) for i, t in texts.items())
        return "ok" if ok else "WRONG"


async def worker(
    client: httpx.AsyncClient,
    url: str,
    rng: random.Random,
    stop: asyncio.Event,
    tally: Tally,
) -> None:
    while not stop.is_set():
        tally.requests += 1
        try:
            kind = await one_request(client, url, rng, tally.requests)
        except Exception as exc:  # any client-side failure is an outcome to count, not a crash
            kind = f"client {type(exc).__name__}"
        if kind in ("WRONG", "EVENT_AFTER_END"):
            tally.wrong_answers += 1
        elif kind == "NO_DONE":
            tally.missing_done += 1
        tally.outcomes[kind] += 1


def canary_leaks(state: SimulatorState) -> int:
    """Upstream requests that carried the canary in plaintext (then forget them: bounded)."""
    leaks = 0
    for recorded in state.requests:
        text = recorded.body.decode("utf-8", errors="replace") + json.dumps(recorded.headers)
        leaks += CANARY in text or CANARY in recorded.query
    state.requests.clear()
    return leaks


def _child(rng: random.Random) -> random.Random:
    """An independent generator seeded from ``rng`` (reproducible with ``--seed``)."""
    return random.Random(rng.random())  # noqa: S311 - traffic shapes, not secrets


async def soak(args: argparse.Namespace, log_file: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)  # noqa: S311 - traffic shapes, not secrets
    state = SimulatorState(api_key=SIM_API_KEY)
    simulator = ThreadedServer(create_simulator_app(state), log_level="critical", lifespan="off")
    simulator.start()
    proxy = ProxyProcess(simulator.url, log_file)
    report: dict[str, Any] = {"minutes": args.minutes, "concurrency": args.concurrency}
    try:
        proxy.wait_ready()
        url = proxy.url + "/v1/chat/completions"
        limits = httpx.Limits(max_connections=args.concurrency * 2)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            # Warm up: attest and fill the pools, then take the baseline RSS.
            for index in range(20):
                await one_request(client, url, rng, index)
            rss_start = proxy.rss_bytes()
            rss_peak = rss_start
            rss_samples: list[int] = []
            tally = Tally()
            faults: collections.Counter[str] = collections.Counter()
            leaks = canary_leaks(state)
            stop = asyncio.Event()
            tasks = [
                asyncio.create_task(worker(client, url, _child(rng), stop, tally))
                for _ in range(args.concurrency)
            ]
            toggler = asyncio.create_task(toggle_faults(state, _child(rng), stop, faults))
            started = time.monotonic()
            deadline = started + args.minutes * 60
            while time.monotonic() < deadline:
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                rss_samples.append(proxy.rss_bytes())
                rss_peak = max(rss_peak, rss_samples[-1])
                leaks += canary_leaks(state)
                print(
                    f"\r{time.monotonic() - started:6.0f} s  {tally.requests:7d} requests  "
                    f"rss {proxy.rss_bytes() / 2**20:6.1f} MiB",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            stop.set()
            await asyncio.gather(*tasks, toggler)
            elapsed = time.monotonic() - started
            print(file=sys.stderr)
            # After the storm: a clean request must work.
            state.faults = Faults()
            final = await one_request(client, url, rng, -1)
            metrics = await client.get(proxy.url + "/metrics")
            rss_end = proxy.rss_bytes()
        leaks += canary_leaks(state)
    finally:
        proxy.stop()
        simulator.stop()
    report.update(
        {
            "requests": tally.requests,
            "requests_per_s": round(tally.requests / elapsed, 1),
            "outcomes": dict(tally.outcomes.most_common()),
            "fault_switches": dict(faults.most_common()),
            "wrong_answers": tally.wrong_answers,
            "streams_without_done": tally.missing_done,
            "canary_upstream_plaintext": leaks,
            "canary_in_metrics": metrics.text.count(CANARY),
            "final_clean_request": final,
            "rss_mib_after_warmup": round(rss_start / 2**20, 1),
            "rss_mib_peak": round(rss_peak / 2**20, 1),
            "rss_mib_end": round(rss_end / 2**20, 1),
            "rss_growth_mib": round((rss_end - rss_start) / 2**20, 1),
            # At 25, 50, 75 and 100 % of the run: a leak climbs, a warm-up flattens.
            "rss_mib_quarters": [
                round(rss_samples[max(0, len(rss_samples) * q // 4 - 1)] / 2**20, 1)
                for q in (1, 2, 3, 4)
            ]
            if rss_samples
            else [],
        }
    )
    return report


def add_log_figures(report: dict[str, Any], log_file: Path) -> None:
    """What the proxy's log says: the canary and the upstream key must never be in it."""
    logged = log_file.read_text(encoding="utf-8", errors="replace")
    report["canary_in_logs"] = logged.count(CANARY)
    report["upstream_key_in_logs"] = logged.count(SIM_API_KEY)
    report["log_lines"] = logged.count("\n")


def failures(report: dict[str, Any]) -> list[str]:
    """The must-be-zero figures that are not."""
    problems = [
        name
        for name in (
            "wrong_answers",
            "streams_without_done",
            "canary_upstream_plaintext",
            "canary_in_logs",
            "upstream_key_in_logs",
            "canary_in_metrics",
        )
        if report[name]
    ]
    if report["final_clean_request"] != "ok":
        problems.append("final_clean_request")
    return problems


def print_report(report: dict[str, Any]) -> None:
    print(f"soak: {report['minutes']} min, {report['concurrency']} concurrent clients")
    print(f"  {'requests':<28}{report['requests']} ({report['requests_per_s']}/s)")
    print("  outcomes")
    for kind, count in report["outcomes"].items():
        print(f"    {count:7d}  {kind}")
    print(
        f"  {'fault switches':<28}"
        + ", ".join(f"{k} {v}" for k, v in report["fault_switches"].items())
    )
    for name in (
        "wrong_answers",
        "streams_without_done",
        "canary_upstream_plaintext",
        "canary_in_logs",
        "upstream_key_in_logs",
        "canary_in_metrics",
        "final_clean_request",
    ):
        print(f"  {name:<28}{report[name]}")
    print(
        f"  {'proxy RSS':<28}{report['rss_mib_after_warmup']} MiB after warm-up, "
        f"{report['rss_mib_peak']} peak, {report['rss_mib_end']} at the end "
        f"({report['rss_growth_mib']:+} MiB)"
    )
    quarters = ", ".join(f"{value}" for value in report["rss_mib_quarters"])
    print(f"  {'proxy RSS by quarter (MiB)':<28}{quarters}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    # The simulator's cut streams make asyncio warn about writes to closed sockets.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    handle, name = tempfile.mkstemp(prefix="soak-proxy-", suffix=".log")
    os.close(handle)
    log_file = Path(name)
    try:
        report = asyncio.run(soak(args, log_file))
        add_log_figures(report, log_file)
    finally:
        log_file.unlink(missing_ok=True)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    problems = failures(report)
    if problems:
        print("FAILED: " + ", ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
