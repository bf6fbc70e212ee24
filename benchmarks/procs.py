"""Run the simulator and the proxy as separate OS processes, and read their resource use.

- The simulator runs ``python -m benchmarks.sim_main`` (the project's simulator with a chosen
  ``token_delay_s``; ``venice-e2ee-proxy simulate`` has no flag for it).
- The proxy runs ``python -m proxy serve --port P`` configured only through the environment, as
  a user would: ``VENICE_API_KEY``, ``VENICE_PROXY_UPSTREAM__BASE_URL``,
  ``VENICE_PROXY_ATTESTATION__DCAP=off`` (the simulator's quote has no Intel signature),
  ``VENICE_PROXY_ATTESTATION__NVIDIA=nonce`` (NRAS would be a network round trip) and
  ``VENICE_PROXY_PRIVACY__NON_E2EE=passthrough`` with ``simulated-plain`` in
  ``VENICE_PROXY_PRIVACY__PASSTHROUGH_MODELS`` (so the plaintext model can be relayed for the
  hop-only comparison; E2EE requests are unaffected). Any ``VENICE_*`` variable of the caller's
  environment is dropped first so a user's config cannot leak into the figures.
- The byte relay runs ``python -m benchmarks.byte_relay`` in front of the simulator (the machine
  floor: a process that only copies bytes between two sockets).
- The stack relay runs ``python -m benchmarks.stack_relay`` in front of the simulator (the stack
  floor: uvicorn and aiohttp configured as the proxy has them, relaying HTTP and nothing else).
- Each process's stdout and stderr go to a log file in a temporary directory (never a pipe
  nobody reads, which would block the process once full).

Resource figures come from ``/proc/<pid>``: ``VmHWM`` (peak resident set) from ``status`` and
user + system CPU time from ``stat`` (clock-tick resolution, 10 ms on Linux). Where the kernel
exposes ``/proc/<pid>/task/<tid>/sched``, the same CPU time is also read from the scheduler's
nanosecond counter (``se.sum_exec_runtime``), for figures too small for the tick.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import httpx

from proxy.http.loopback import free_port
from proxy.simulator import SIMULATED_MEASUREMENTS

SIM_API_KEY = "bench-sim-key"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_REPO = Path(__file__).resolve().parents[1]
# BENCH_PROXY_SRC=DIR runs the proxy under test from DIR (a checkout of another commit, for
# before/after figures with this harness); the simulator always runs from this checkout.
_PROXY_SRC = Path(os.environ.get("BENCH_PROXY_SRC") or _REPO)


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of ``pid`` in MiB (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmHWM for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system (kernel: syscalls, interrupts on its behalf) CPU seconds of ``pid``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name in field 2 may contain spaces; fields after its ")" are fixed.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS


def runtime_seconds(pid: int) -> float | None:
    """CPU seconds the live threads of ``pid`` have run, from the scheduler's nanosecond
    counter (``se.sum_exec_runtime`` of each ``/proc/<pid>/task/<tid>/sched``, in ms there).
    The same time as :func:`cpu_seconds` without its clock-tick resolution and without a user
    and system split; threads that have exited are not counted. None when the kernel has no
    such file (it comes with ``CONFIG_SCHED_DEBUG``) or its format is not the expected one."""
    total_ms = 0.0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        for task in tasks:
            for line in (task / "sched").read_text().splitlines():
                if line.startswith("se.sum_exec_runtime"):
                    total_ms += float(line.rpartition(":")[2])
                    break
            else:
                return None
    except (OSError, ValueError):
        return None
    return total_ms / 1000.0


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What to start and how to tell it is ready."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    port: int
    ready_path: str
    ready_headers: dict[str, str]


class ManagedProcess:
    """A child server process; use as a context manager so it is always stopped."""

    def __init__(self, spec: ProcessSpec, log_dir: Path, cwd: Path = _REPO) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}-{spec.port}.log"
        self._log = self.log_path.open("wb")
        self._popen = subprocess.Popen(  # noqa: S603 - argv built here from fixed parts
            list(spec.argv),
            env=spec.env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{spec.port}"

    @property
    def pid(self) -> int:
        return self._popen.pid

    def wait_ready(self, timeout_s: float = 30.0) -> ManagedProcess:
        """Poll the readiness path until it answers 200."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._popen.poll() is not None:
                    raise RuntimeError(f"{self.spec.name} exited early:\n{self.log_tail()}")
                try:
                    response = client.get(
                        self.url + self.spec.ready_path, headers=self.spec.ready_headers
                    )
                    if response.status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.spec.name} did not start:\n{self.log_tail()}")
                time.sleep(0.05)

    def pids(self) -> list[int]:
        """This process and its children (the workers of ``server.workers``)."""
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            children = []
        return [self.pid, *(int(child) for child in children)]

    def vm_hwm_mb(self) -> float:
        """Peak resident set, summed over the process and its workers."""
        return sum(vm_hwm_mb(pid) for pid in self.pids())

    def cpu_seconds(self) -> float:
        """CPU time of the process and its workers."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def system_seconds(self) -> float:
        """Kernel CPU time of the process and its workers (part of :meth:`cpu_seconds`)."""
        return sum(cpu_split(pid)[1] for pid in self.pids())

    def runtime_seconds(self) -> float | None:
        """:meth:`cpu_seconds` from the scheduler's nanosecond counter (see
        :func:`runtime_seconds`); None where the kernel does not expose it."""
        total = 0.0
        for pid in self.pids():
            seconds = runtime_seconds(pid)
            if seconds is None:
                return None
            total += seconds
        return total

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGINT (uvicorn's graceful stop), then SIGKILL if it lingers."""
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGINT)
            try:
                self._popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _clean_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VENICE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_simulator(log_dir: Path, *, token_delay_s: float, phala: bool = False) -> ManagedProcess:
    """A simulated Venice in its own process, ready to serve (``phala``: Phala legacy mode,
    one server ephemeral key per response)."""
    port = free_port()
    spec = ProcessSpec(
        name="simulator",
        argv=(
            sys.executable,
            "-m",
            "benchmarks.sim_main",
            "--port",
            str(port),
            "--token-delay",
            repr(token_delay_s),
            *(("--phala",) if phala else ()),
        ),
        env=_clean_env(),
        port=port,
        ready_path="/api/v1/models",
        ready_headers={"authorization": f"Bearer {SIM_API_KEY}"},
    )
    return ManagedProcess(spec, log_dir).wait_ready()


def start_proxy(
    log_dir: Path,
    *,
    upstream_url: str,
    max_in_flight: int | None = None,
    workers: int = 1,
    launcher: tuple[str, ...] = ("-m", "proxy"),
) -> ManagedProcess:
    """The proxy in its own process, in front of ``upstream_url`` (``.../api/v1``).

    ``max_in_flight`` raises ``server.max_in_flight`` (default 256) when a test needs more
    concurrent streams than that; otherwise the proxy's default applies. ``launcher`` is what
    runs ``serve`` (``benchmarks.profile`` runs it under its profiler).
    """
    port = free_port()
    env = _clean_env() | {
        "VENICE_API_KEY": SIM_API_KEY,
        "VENICE_PROXY_UPSTREAM__BASE_URL": upstream_url,
        "VENICE_PROXY_ATTESTATION__DCAP": "off",
        # NRAS is a network round trip to NVIDIA; the simulator's GPU evidence is synthetic.
        "VENICE_PROXY_ATTESTATION__NVIDIA": "nonce",
        "VENICE_PROXY_PRIVACY__NON_E2EE": "passthrough",
        "VENICE_PROXY_PRIVACY__PASSTHROUGH_MODELS": '["simulated-plain"]',
        "VENICE_PROXY_LOGGING__FORMAT": "json",
        # The simulator's made-up TDX module and firmware are no real releases: accepted here
        # as in the compose demo profile, else every E2EE request fails the measurement policy.
        "VENICE_PROXY_ATTESTATION__EXTRA_MRSEAM": json.dumps([SIMULATED_MEASUREMENTS["mrseam"]]),
        "VENICE_PROXY_ATTESTATION__EXTRA_MRTD": json.dumps([SIMULATED_MEASUREMENTS["mrtd"]]),
    }
    if max_in_flight is not None:
        env["VENICE_PROXY_SERVER__MAX_IN_FLIGHT"] = str(max_in_flight)
    if workers != 1:
        env["VENICE_PROXY_SERVER__WORKERS"] = str(workers)
    spec = ProcessSpec(
        name="proxy",
        argv=(sys.executable, *launcher, "serve", "--port", str(port)),
        env=env,
        port=port,
        ready_path="/healthz",
        ready_headers={},
    )
    return ManagedProcess(spec, log_dir, cwd=_PROXY_SRC).wait_ready()


def start_byte_relay(log_dir: Path, upstream_url: str) -> ManagedProcess:
    """The byte relay (``python -m benchmarks.byte_relay``) in its own process, in front of
    ``upstream_url`` (``http://HOST:PORT``, no path: the relay copies bytes and reads no URL).
    Ready as :func:`_start_relay` says."""
    host, port = _relay_upstream(upstream_url, "the byte relay forwards bytes, not paths")
    return _start_relay(log_dir, "byte-relay", "benchmarks.byte_relay", f"{host}:{port}")


def start_stack_relay(log_dir: Path, upstream_url: str) -> ManagedProcess:
    """The stack relay (``python -m benchmarks.stack_relay``) in its own process, in front of
    ``upstream_url`` (``http://HOST:PORT``, no path: the relay forwards each request's own path).
    Ready as :func:`_start_relay` says."""
    host, port = _relay_upstream(upstream_url, "the stack relay forwards each request's own path")
    return _start_relay(log_dir, "stack-relay", "benchmarks.stack_relay", f"http://{host}:{port}")


def _relay_upstream(upstream_url: str, why_no_path: str) -> tuple[str, int]:
    """``upstream_url``'s host and port; ``ValueError`` unless it is ``http://HOST:PORT``."""
    parsed = urlsplit(upstream_url)
    if parsed.scheme != "http" or parsed.hostname is None or parsed.port is None:
        raise ValueError(f"expected http://HOST:PORT, got {upstream_url!r}")
    if parsed.path not in ("", "/"):
        raise ValueError(f"{why_no_path}: {upstream_url!r}")
    return parsed.hostname, parsed.port


def _start_relay(log_dir: Path, name: str, module: str, upstream: str) -> ManagedProcess:
    """``python -m <module> --port P --upstream <upstream>`` in its own process.

    Ready when the simulator's ``/api/v1/models`` answers 200 through it, so the upstream must
    be the benchmark simulator; the readiness check thereby proves the whole relayed path.
    """
    port = free_port()
    spec = ProcessSpec(
        name=name,
        argv=(sys.executable, "-m", module, "--port", str(port), "--upstream", upstream),
        env=_clean_env(),
        port=port,
        ready_path="/api/v1/models",
        ready_headers={"authorization": f"Bearer {SIM_API_KEY}"},
    )
    return ManagedProcess(spec, log_dir).wait_ready()


def system_busy_seconds() -> float:
    """CPU seconds all processors spent busy since boot (``/proc/stat``; idle and iowait
    excluded). Compared with our own processes' CPU time it shows other load on the machine."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS
