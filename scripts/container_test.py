"""The container image built from the Dockerfile, unchanged, and run the way compose runs it.

Usage (as root, from the repository root; ``make container-test`` runs it)::

    .venv/bin/python scripts/container_test.py

Podman needs no daemon, so this runs where Docker cannot. What it does:

1. Installs what is missing: podman, runc, netavark, aardvark-dns, iptables (netavark uses it
   without depending on it) and debootstrap with apt, and podman-compose in its own virtual
   environment in the cache directory (``$VENICE_CONTAINER_TEST_CACHE``, default
   ``~/.cache/venice-e2ee-proxy``).
2. Writes a containers.conf to a temporary directory: runc, no default ulimits (raising an
   rlimit is forbidden on this project's machines), netavark (compose needs service-name DNS).
3. The base image: pulls ``python:3.11-slim-bookworm``. When no registry is reachable, imports a
   stand-in under that name, built once with ``debootstrap --variant=minbase`` from Debian
   bookworm (the mirror is the machine's own apt source) and cached as a tarball. The stand-in
   is a test device: the published image is built on the real base.
4. Builds the image (``--format docker`` keeps the HEALTHCHECK) and checks, printing one
   ``PASS``/``FAIL`` line each: the compose file (``check_compose.py``); the image run as the
   compose file runs it (read-only, capabilities dropped, port on 127.0.0.1 only): non-root,
   ``/healthz``, the image's own HEALTHCHECK, the offline demo answering a chat request, SIGTERM
   draining an in-flight stream and exiting 0, the Venice key read from a secret file and never
   in ``podman inspect`` or the logs; then the compose demo profile brought up with
   podman-compose and its example app's chat request going app-demo -> proxy-demo -> simulator.

The last line is ``N passed, M failed``; the exit status is 1 if any check failed. Containers
and networks it started are removed on the way out; the images stay as a build cache.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import check_compose

from proxy.simulator import SIMULATED_MEASUREMENTS

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

BASE = "python:3.11-slim-bookworm"  # the Dockerfile's FROM, resolved as podman resolves it
IMAGE = "localhost/venice-e2ee-proxy:local"  # the compose file's image name
APT_PACKAGES = ("podman", "runc", "netavark", "aardvark-dns", "iptables", "debootstrap")
PODMAN_COMPOSE = "podman-compose==1.6.0"
STANDIN_VERSION = "1"  # bump to rebuild cached stand-ins
STANDIN_LABEL = "venice-e2ee-proxy.test-stand-in"
STANDIN_PACKAGES = "python3.11,python3-pip,python3-venv,ca-certificates"
UID = "10001"
MODEL = "e2ee-simulated-near"

# As the compose file runs the proxy: read-only root, a tmpfs /tmp and nothing else writable
# (podman would add more tmpfs mounts by default; Docker does not), no capabilities.
HARDENING = (
    "--read-only",
    "--read-only-tmpfs=false",
    "--tmpfs",
    "/tmp",  # noqa: S108 - inside the container
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
)
ALLOWED_HOSTS = '["proxy","localhost","127.0.0.1"]'
SECRET_PATH = "/run/secrets/venice_api_key"  # noqa: S105 - a path, not a secret
# A simulated Venice that accepts only the key in the secret file (so a successful chat proves
# the proxy used that key), with slow tokens so a stream is still running when SIGTERM comes.
SIMULATOR_WITH_KEY = (
    "from pathlib import Path; "
    "from proxy.simulator import SimulatorState, run_simulator; "
    f"key = Path({SECRET_PATH!r}).read_text().strip(); "
    "run_simulator('127.0.0.1', 8001, state=SimulatorState(api_key=key, token_delay_s=0.2))"
)
WRONG_KEY_PROBE = (
    "import sys, urllib.error, urllib.request as u\n"
    "q = u.Request('http://127.0.0.1:8001/api/v1/models', "
    "headers={'Authorization': 'Bearer not-the-secret'})\n"
    "try:\n"
    "    u.build_opener(u.ProxyHandler({})).open(q, timeout=10)\n"
    "except urllib.error.HTTPError as exc:\n"
    "    sys.exit(0 if exc.code == 401 else 1)\n"
    "sys.exit(1)\n"
)


class SetupError(RuntimeError):
    """A step every later check depends on failed."""


# -- output -------------------------------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"PASS {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok


def note(message: str) -> None:
    print(f"--- {message}", flush=True)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- processes ----------------------------------------------------------------------------------


def run(
    args: Sequence[str], *, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; never raises on a non-zero exit."""
    try:
        return subprocess.run(  # noqa: S603 - argv built here from fixed parts
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return subprocess.CompletedProcess(list(args), 124, out, f"timed out after {timeout}s")


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run(["podman", "--runtime", "runc", *args], timeout=timeout)


def must(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        raise SetupError(f"{what} failed (exit {result.returncode}):\n{tail(result.stderr)}")
    return result.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- HTTP ---------------------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request(
    method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http:// only
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, http.client.HTTPException):
        return 0, b""


def wait_for_healthz(port: int, container: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if request("GET", f"http://127.0.0.1:{port}/healthz", timeout=5)[0] == 200:
            return True
        state = podman("inspect", "-f", "{{.State.Running}}", container).stdout.strip()
        if state == "false":
            return False
        time.sleep(0.3)
    return False


def chat(port: int, content: str, timeout: float = 60) -> tuple[int, dict[str, Any] | str]:
    status, raw = request(
        "POST",
        f"http://127.0.0.1:{port}/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": content}]},
        timeout=timeout,
    )
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:500]


def answer_of(completion: dict[str, Any] | str) -> str:
    if not isinstance(completion, dict):
        return ""
    try:
        return str(completion["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        return ""


class Stream(threading.Thread):
    """A streaming chat request read in the background."""

    def __init__(self, port: int, prompt: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.prompt = prompt
        self.started_streaming = threading.Event()
        self.status = 0
        self.content = ""
        self.done = False
        self.error = ""

    def run(self) -> None:
        body = json.dumps(
            {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": self.prompt}]}
        )
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(
                "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            self.status = response.status
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                self.started_streaming.set()
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    self.done = True
                    break
                for choice in json.loads(data).get("choices", []):
                    self.content += choice.get("delta", {}).get("content") or ""
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self.error = repr(exc)
        finally:
            connection.close()
            self.started_streaming.set()


# -- tools --------------------------------------------------------------------------------------


def ensure_apt_packages() -> None:
    missing = [
        package
        for package in APT_PACKAGES
        if "install ok installed"
        not in run(["dpkg-query", "-W", "-f=${Status}", package], timeout=30).stdout
    ]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SetupError(f"missing {' '.join(missing)}: install them (apt) or run as root")
    note(f"installing {' '.join(missing)}")
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    must(run([*env_prefix, "apt-get", "update", "-qq"], timeout=600), "apt-get update")
    must(
        run(
            [*env_prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            timeout=900,
        ),
        "apt-get install",
    )


def ensure_podman_compose(cache: Path) -> Path:
    venv = cache / ("venv-" + PODMAN_COMPOSE.replace("==", "-"))
    binary = venv / "bin" / "podman-compose"
    if binary.exists() and run([str(binary), "--version"], timeout=60).returncode == 0:
        return binary
    note(f"installing {PODMAN_COMPOSE} into {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    must(run([sys.executable, "-m", "venv", str(venv)], timeout=300), "python -m venv")
    must(
        run([str(venv / "bin" / "pip"), "install", "--quiet", PODMAN_COMPOSE], timeout=600),
        f"pip install {PODMAN_COMPOSE}",
    )
    return binary


def write_containers_conf(directory: Path) -> Path:
    path = directory / "containers.conf"
    path.write_text(
        "[containers]\n"
        "# Raising an rlimit is forbidden on this project's machines.\n"
        "default_ulimits = []\n"
        "[engine]\n"
        'runtime = "runc"\n'
        "[network]\n"
        'network_backend = "netavark"\n',
        encoding="utf-8",
    )
    return path


# -- the base image -----------------------------------------------------------------------------


def apt_mirror() -> str:
    """The Debian archive URI of this machine's own apt sources (not the security one)."""
    candidates: list[tuple[str, str]] = []  # (uri, suites)
    sources = Path("/etc/apt")
    one_line = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                candidates.append((words[1], words[2]))
    for path in sorted((sources / "sources.list.d").glob("*.sources")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
                continue
            for uri in fields.get("uris", "").split():
                candidates.append((uri, fields.get("suites", "")))
    for uri, suites in candidates:
        if "security" in uri or "security" in suites:
            continue
        if "debian" in uri.rstrip("/").rsplit("/", 1)[-1] or "bookworm" in suites:
            return uri
    raise SetupError("no Debian archive in /etc/apt/sources.list*: cannot debootstrap")


def build_standin_tarball(cache: Path) -> Path:
    tarball = cache / f"python-3.11-slim-bookworm-standin-v{STANDIN_VERSION}.tar"
    if tarball.exists():
        return tarball
    mirror = apt_mirror()
    note(f"building the stand-in base: debootstrap --variant=minbase bookworm from {mirror}")
    root = Path(tempfile.mkdtemp(prefix="standin-", dir=cache))
    try:
        must(
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={STANDIN_PACKAGES}",
                    "bookworm",
                    str(root),
                    mirror,
                ],
                timeout=1200,
            ),
            "debootstrap",
        )
        # Like the official image: python and pip on /usr/local/bin, and a Python that
        # `pip install .` may install into as root (Debian marks its own externally managed).
        (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        local_bin = root / "usr/local/bin"
        for name in ("python", "python3", "python3.11"):
            (local_bin / name).unlink(missing_ok=True)
            (local_bin / name).symlink_to("/usr/bin/python3.11")
        for name in ("pip", "pip3", "pip3.11"):
            (local_bin / name).write_text(
                '#!/bin/sh\nexec /usr/bin/python3.11 -m pip "$@"\n', encoding="utf-8"
            )
            (local_bin / name).chmod(0o755)
        # This machine's CA bundle, so pip in the build reaches the package index from here.
        bundle = os.environ.get("SSL_CERT_FILE") or ssl.get_default_verify_paths().cafile
        if bundle and Path(bundle).is_file():
            shutil.copyfile(bundle, root / "etc/ssl/certs/ca-certificates.crt")
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = tarball.with_suffix(".partial")
        must(
            run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], timeout=600),
            "tar",
        )
        partial.rename(tarball)
    finally:
        # debootstrap unmounts what it mounted, unless it was killed: never delete through
        # a mount (its /proc, /sys) that is still there.
        mounts = Path("/proc/mounts").read_text(encoding="utf-8").split("\n")
        inside = [f.split()[1] for f in mounts if f and f.split()[1].startswith(f"{root}/")]
        for mountpoint in sorted(inside, reverse=True):
            run(["umount", "--lazy", mountpoint], timeout=60)
        if not any(f"{root}/" in line for line in Path("/proc/mounts").read_text().split("\n")):
            shutil.rmtree(root, ignore_errors=True)
    return tarball


def base_image(cache: Path) -> str:
    """Make ``python:3.11-slim-bookworm`` available locally; say which one it is."""
    standin_ref = f"localhost/{BASE}"
    label_of = ("image", "inspect", "-f", f'{{{{index .Labels "{STANDIN_LABEL}"}}}}')
    if podman("pull", "--quiet", BASE, timeout=180).returncode == 0:
        # A stand-in left from an offline run would shadow the real base: drop it.
        if podman(*label_of, standin_ref).stdout.strip() not in ("", "<no value>"):
            podman("untag", standin_ref)
        return f"{BASE}, pulled from its registry"
    local = podman(*label_of, BASE)
    if local.returncode == 0 and local.stdout.strip() in ("", "<no value>"):
        return f"{BASE}, the real one already in local storage (pull failed)"
    if local.returncode == 0 and local.stdout.strip() == STANDIN_VERSION:
        return f"{BASE}, the debootstrap STAND-IN (no registry reachable; test device only)"
    tarball = build_standin_tarball(cache)
    must(
        podman(
            "import",
            "--quiet",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            f"LABEL {STANDIN_LABEL}={STANDIN_VERSION}",
            "--change",
            'CMD ["python3"]',
            str(tarball),
            standin_ref,
            timeout=600,
        ),
        "podman import",
    )
    return f"{BASE}, the debootstrap STAND-IN (no registry reachable; test device only)"


def build_image() -> None:
    previous = podman("image", "inspect", "-f", "{{.Id}}", IMAGE).stdout.strip()
    result = run(
        [
            "podman",
            "build",
            "--format",
            "docker",
            "--isolation=chroot",
            "--network=host",
            "--pull=never",
            "-t",
            IMAGE,
            "-f",
            str(DOCKERFILE),
            str(REPO),
        ],
        timeout=1200,
        cwd=REPO,
    )
    if result.returncode != 0:
        raise SetupError(f"podman build failed:\n{tail(result.stdout + result.stderr, 60)}")
    current = podman("image", "inspect", "-f", "{{.Id}}", IMAGE).stdout.strip()
    if previous and previous != current:
        podman("rmi", previous)  # the superseded build; fails harmlessly while still in use


# -- containers ---------------------------------------------------------------------------------


class Containers:
    """The containers this run started, on a bridge network of their own; removed at the end."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.network = prefix
        self.started: list[str] = []

    def start(self, suffix: str, *args: str) -> str:
        if podman("network", "exists", self.network).returncode != 0:
            must(podman("network", "create", self.network), "podman network create")
        name = f"{self.prefix}-{suffix}"
        self.started.append(name)
        if not any(arg.startswith("container:") for arg in args):
            args = ("--network", self.network, *args)
        must(podman("run", "-d", "--name", name, *args, timeout=120), f"podman run {name}")
        return name

    def remove_all(self) -> None:
        for name in reversed(self.started):
            podman("rm", "-f", "-t", "2", name, timeout=60)
        self.started.clear()
        if podman("network", "exists", self.network).returncode == 0:
            podman("network", "rm", "-f", self.network)


def inspect(name: str) -> dict[str, Any]:
    result = podman("inspect", name)
    if result.returncode != 0:
        return {}
    loaded = json.loads(result.stdout)
    return loaded[0] if isinstance(loaded, list) and loaded else {}


def proc_status(name: str) -> dict[str, str]:
    result = podman("exec", name, "cat", "/proc/1/status")
    fields: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key] = " ".join(value.split())
    return fields


def logs(name: str) -> str:
    result = podman("logs", name)
    return result.stdout + result.stderr


def stop(name: str, grace: int = 20) -> tuple[int, float]:
    """``podman stop -t grace``: (the container's exit code, seconds the stop took)."""
    began = time.monotonic()
    podman("stop", "-t", str(grace), name, timeout=grace + 60)
    took = time.monotonic() - began
    code = podman("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
    return (int(code) if code.lstrip("-").isdigit() else -1), took


def published_on_loopback(info: dict[str, Any]) -> bool:
    bindings = (info.get("HostConfig") or {}).get("PortBindings") or {}
    hosts = [b.get("HostIp") for entries in bindings.values() for b in entries or []]
    return bool(hosts) and all(host == "127.0.0.1" for host in hosts)


# -- the checks ---------------------------------------------------------------------------------


def check_image(results: Results) -> None:
    info = json.loads(podman("image", "inspect", IMAGE).stdout or "[{}]")[0]
    config = info.get("Config") or {}
    healthcheck = (info.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test")
    expected = ["CMD", *check_compose.dockerfile_healthcheck(DOCKERFILE)]
    results.check(
        "image: keeps the Dockerfile's HEALTHCHECK (docker format)",
        healthcheck == expected,
        f"image healthcheck {healthcheck!r}",
    )
    results.check(
        f"image: USER {UID}:{UID}",
        config.get("User") == f"{UID}:{UID}",
        f"User={config.get('User')!r}",
    )
    passwd = podman("run", "--rm", "--entrypoint", "getent", IMAGE, "passwd", "proxy", UID)
    results.check(
        "image: its own user venice-proxy (10001) besides Debian's proxy (13)",
        "venice-proxy:x:10001:10001:" in passwd.stdout and "proxy:x:13:13:" in passwd.stdout,
        passwd.stdout.strip() or passwd.stderr.strip(),
    )


def check_demo(results: Results, containers: Containers) -> None:
    """The compose file's ``proxy`` service without a key: the offline demo."""
    port = free_port()
    name = containers.start(
        "demo",
        *HARDENING,
        "-p",
        f"127.0.0.1:{port}:8000",
        "-e",
        f"VENICE_PROXY_SERVER__ALLOWED_HOSTS={ALLOWED_HOSTS}",
        "-e",
        "VENICE_API_KEY=",
        IMAGE,
    )
    healthy = wait_for_healthz(port, name)
    results.check(
        "demo: GET /healthz answers on the published 127.0.0.1 port",
        healthy,
        tail(logs(name)),
    )
    if not healthy:
        return
    info = inspect(name)
    results.check(
        "demo: the port is published on 127.0.0.1 only",
        published_on_loopback(info),
        json.dumps((info.get("HostConfig") or {}).get("PortBindings")),
    )
    status = proc_status(name)
    ids = f"{UID} {UID} {UID} {UID}"
    results.check(
        f"demo: the proxy process runs as uid/gid {UID}, not root",
        status.get("Uid") == ids and status.get("Gid") == ids,
        f"Uid {status.get('Uid')!r} Gid {status.get('Gid')!r}",
    )
    zero = "0" * 16
    results.check(
        "demo: no capabilities, no-new-privileges",
        all(status.get(key) == zero for key in ("CapPrm", "CapEff", "CapBnd", "CapAmb"))
        and status.get("NoNewPrivs") == "1",
        " ".join(f"{k}={status.get(k)}" for k in ("CapEff", "CapBnd", "NoNewPrivs")),
    )
    root_write = podman("exec", name, "touch", "/config/probe")
    tmp_write = podman("exec", name, "touch", "/tmp/probe")  # noqa: S108 - in the container
    results.check(
        "demo: read-only root filesystem (only the /tmp tmpfs is writable)",
        (info.get("HostConfig") or {}).get("ReadonlyRootfs") is True
        and root_write.returncode != 0
        and tmp_write.returncode == 0,
        f"touch /config: {root_write.returncode}, touch /tmp: {tmp_write.returncode}",
    )
    health = podman("healthcheck", "run", name, timeout=60)
    state = podman("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()
    results.check(
        "demo: the image's HEALTHCHECK passes inside the container",
        health.returncode == 0 and state == "healthy",
        f"exit {health.returncode}, status {state!r}: {health.stdout.strip()}",
    )
    results.check("demo: the log announces the offline demo", "DEMO MODE" in logs(name))
    status_code, raw = request("GET", f"http://127.0.0.1:{port}/v1/models")
    try:
        ids_listed = {m["id"] for m in json.loads(raw)["data"]}
    except (ValueError, KeyError, TypeError):
        ids_listed = set()
    results.check(
        f"demo: GET /v1/models lists {MODEL}",
        status_code == 200 and MODEL in ids_listed,
        f"HTTP {status_code}: {raw[:200]!r}",
    )
    code, completion = chat(port, "Hello from the container test!")
    results.check(
        "demo: a chat completion through the published port",
        code == 200 and "Hello from the container test!" in answer_of(completion),
        f"HTTP {code}: {completion!r:.300}",
    )
    exit_code, took = stop(name)
    results.check(
        "demo: SIGTERM (podman stop -t 20) drains and exits 0",
        exit_code == 0 and took < 20 and '"draining"' in logs(name),
        f"exit {exit_code} after {took:.1f}s",
    )


def check_secret_key_and_drain(results: Results, containers: Containers, workdir: Path) -> None:
    """A key in a secret file, a simulated Venice that accepts only it, SIGTERM mid-stream."""
    key = "sk-container-test-" + secrets.token_hex(16)
    key_file = workdir / "venice_api_key"
    key_file.write_text(key + "\n", encoding="utf-8")
    key_file.chmod(0o444)
    port = free_port()
    mount = f"{key_file}:{SECRET_PATH}:ro"
    proxy = containers.start(
        "key",
        *HARDENING,
        "-p",
        f"127.0.0.1:{port}:8000",
        "-v",
        mount,
        "-e",
        f"VENICE_PROXY_SERVER__ALLOWED_HOSTS={ALLOWED_HOSTS}",
        "-e",
        f"VENICE_PROXY_UPSTREAM__API_KEY_FILE={SECRET_PATH}",
        "-e",
        "VENICE_PROXY_UPSTREAM__BASE_URL=http://127.0.0.1:8001/api/v1",
        "-e",
        "VENICE_PROXY_ATTESTATION__DCAP=off",
        "-e",
        "VENICE_PROXY_ATTESTATION__NVIDIA=nonce",
        # The simulator's made-up TDX module and firmware are not real releases: accepted here
        # as the compose demo profile does (proxy.simulator.SIMULATED_MEASUREMENTS).
        "-e",
        f'VENICE_PROXY_ATTESTATION__EXTRA_MRSEAM=["{SIMULATED_MEASUREMENTS["mrseam"]}"]',
        "-e",
        f'VENICE_PROXY_ATTESTATION__EXTRA_MRTD=["{SIMULATED_MEASUREMENTS["mrtd"]}"]',
        IMAGE,
    )
    # The simulator shares the proxy's network namespace: upstream is 127.0.0.1:8001.
    simulator = containers.start(
        "sim",
        *HARDENING,
        "--no-healthcheck",
        "--network",
        f"container:{proxy}",
        "-v",
        mount,
        IMAGE,
        "python",
        "-c",
        SIMULATOR_WITH_KEY,
    )
    if not wait_for_healthz(port, proxy):
        results.check("secret: the proxy starts with the key file", False, tail(logs(proxy)))
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "Uvicorn running" not in logs(simulator):
        time.sleep(0.3)
    probe = podman("exec", simulator, "python", "-c", WRONG_KEY_PROBE)
    results.check(
        "secret: the simulated Venice refuses any other key (401)",
        probe.returncode == 0,
        probe.stderr.strip() or tail(logs(simulator)),
    )
    code, completion = chat(port, "Which key?")
    proxy_log = logs(proxy)
    results.check(
        f"secret: the proxy used the key from {SECRET_PATH} (chat answered upstream)",
        code == 200 and "Which key?" in answer_of(completion) and "demo_mode" not in proxy_log,
        f"HTTP {code}: {completion!r:.300}\n{tail(proxy_log, 10)}",
    )

    prompt = " ".join(f"word{n}" for n in range(25))  # ~35 chunks, 0.2 s apart
    stream = Stream(port, prompt)
    stream.start()
    stream.started_streaming.wait(30)
    stop_result: list[tuple[int, float]] = []
    stopping = threading.Thread(target=lambda: stop_result.append(stop(proxy)), daemon=True)
    stopping.start()
    readyz = 0
    while stream.is_alive() and readyz != 503:
        readyz = request("GET", f"http://127.0.0.1:{port}/readyz", timeout=2)[0]
        time.sleep(0.1)
    results.check(
        "drain: after SIGTERM /readyz answers 503 while a stream is in flight",
        readyz == 503,
        f"last /readyz status {readyz}",
    )
    stream.join(60)
    stopping.join(90)
    results.check(
        "drain: the in-flight stream completes with [DONE] and the whole answer",
        stream.status == 200 and stream.done and stream.content.startswith(f"You said: {prompt}"),
        f"HTTP {stream.status}, done={stream.done}, error={stream.error}, "
        f"content={stream.content[:80]!r}",
    )
    exit_code, took = stop_result[0] if stop_result else (-1, 0.0)
    results.check(
        "drain: podman stop -t 20 waits for it, then the proxy exits 0",
        exit_code == 0 and took < 20 and '"in_flight": 1' in logs(proxy),
        f"exit {exit_code} after {took:.1f}s",
    )

    inspected = podman("inspect", proxy, simulator)
    image_inspected = podman("image", "inspect", IMAGE)
    results.check(
        "secret: the key appears in no podman inspect output",
        inspected.returncode == 0 and key not in inspected.stdout + image_inspected.stdout,
    )
    all_logs = logs(proxy) + logs(simulator)
    results.check(
        "secret: the key appears in no container log",
        bool(all_logs.strip()) and key not in all_logs,
    )


def check_compose_file(results: Results) -> None:
    for name, problem in check_compose.checks(COMPOSE, DOCKERFILE):
        results.check(name, problem is None, problem or "")


def compose_containers(project: str, service: str) -> list[str]:
    result = podman(
        "ps",
        "-a",
        "--filter",
        f"label=com.docker.compose.project={project}",
        "--filter",
        f"label=com.docker.compose.service={service}",
        "--format",
        "{{.Names}}",
    )
    return result.stdout.split()


def check_compose_demo(results: Results, tool: Path, workdir: Path, project: str) -> None:
    """``docker compose --profile demo up``, with podman-compose, through the app's path."""
    # The file as it is, except the host ports (other programs on this machine may hold them).
    text = COMPOSE.read_text(encoding="utf-8")
    ports: dict[str, int] = {}

    def remap(match: re.Match[str]) -> str:
        host_port = ports.setdefault(match.group(1), free_port())
        return f'"127.0.0.1:{host_port}:{match.group(2)}"'

    compose_file = workdir / "compose" / COMPOSE.name
    compose_file.parent.mkdir()
    compose_file.write_text(
        re.sub(r'"127\.0\.0\.1:(\d+):(\d+)"', remap, text),
        encoding="utf-8",
    )
    base = [str(tool), "-p", project, "-f", str(compose_file), "--profile", "demo"]
    config = run([*base, "config"], timeout=120)
    results.check(
        "compose: podman-compose reads the file", config.returncode == 0, tail(config.stderr)
    )
    up = run([*base, "up", "-d", "--no-build", "simulator", "proxy-demo"], timeout=300)
    if not results.check(
        "compose: demo profile up (simulator, proxy-demo)",
        up.returncode == 0,
        tail(up.stdout + up.stderr),
    ):
        return
    # Podman 4.3 starts health checks with systemd timers, and podman-compose ignores
    # `condition: service_healthy` before podman 4.6: without systemd, this script is the
    # timer. It runs each service's own compose health check, in dependency order.
    healthy: dict[str, bool] = {}
    for service in ("simulator", "proxy-demo"):
        names = compose_containers(project, service)
        deadline = time.monotonic() + 60
        healthy[service] = False
        while names and time.monotonic() < deadline and not healthy[service]:
            healthy[service] = podman("healthcheck", "run", names[0]).returncode == 0
            if not healthy[service]:
                time.sleep(1)
    results.check(
        "compose: simulator, then proxy-demo, pass their compose health checks",
        all(healthy.values()),
        json.dumps(healthy),
    )
    demo = compose_containers(project, "proxy-demo")
    info = inspect(demo[0]) if demo else {}
    results.check(
        "compose: proxy-demo runs read-only, published on 127.0.0.1 only",
        (info.get("HostConfig") or {}).get("ReadonlyRootfs") is True
        and published_on_loopback(info),
        json.dumps((info.get("HostConfig") or {}).get("PortBindings")),
    )
    if not all(healthy.values()):
        return
    app = run([*base, "up", "-d", "--no-build", "--no-deps", "app-demo"], timeout=300)
    apps = compose_containers(project, "app-demo")
    if app.returncode != 0 or not apps:
        results.check("compose: app-demo starts", False, tail(app.stdout + app.stderr))
        return
    podman("wait", apps[0], timeout=120)
    exit_code = podman("inspect", "-f", "{{.State.ExitCode}}", apps[0]).stdout.strip()
    output = podman("logs", apps[0]).stdout
    results.check(
        "compose: app-demo's chat request went app-demo -> proxy-demo -> simulator",
        exit_code == "0" and '"chat.completion"' in output and "Hello through E2EE!" in output,
        f"exit {exit_code}: {tail(output, 5)}",
    )


# -- main ---------------------------------------------------------------------------------------


def compose_down(tool: Path, project: str, workdir: Path) -> None:
    compose_file = workdir / "compose" / COMPOSE.name
    if compose_file.exists():
        run(
            [str(tool), "-p", project, "-f", str(compose_file), "--profile", "demo", "down"],
            timeout=120,
        )
    leftovers = podman(
        "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"
    ).stdout.split()
    for container in leftovers:
        podman("rm", "-f", "-t", "2", container)
    if podman("network", "exists", f"{project}_default").returncode == 0:
        podman("network", "rm", "-f", f"{project}_default")


def _terminate(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    cache = Path(
        os.environ.get("VENICE_CONTAINER_TEST_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "venice-e2ee-proxy"
    )
    cache.mkdir(parents=True, exist_ok=True)
    results = Results()
    began = time.monotonic()
    prefix = f"vct-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="venice-container-test-") as tmp:
        workdir = Path(tmp)
        os.environ["CONTAINERS_CONF"] = str(write_containers_conf(workdir))
        containers = Containers(prefix)
        project = prefix.replace("-", "")
        try:
            check_compose_file(results)
            ensure_apt_packages()
            tool = ensure_podman_compose(cache)
            note(f"base image: {base_image(cache)}")
            build_began = time.monotonic()
            build_image()
            results.check(
                f"build: the Dockerfile builds unchanged ({time.monotonic() - build_began:.0f}s)",
                True,
            )
            check_image(results)
            try:
                check_demo(results, containers)
                check_secret_key_and_drain(results, containers, workdir)
            finally:
                containers.remove_all()
            try:
                check_compose_demo(results, tool, workdir, project)
            finally:
                compose_down(tool, project, workdir)
        except SetupError as exc:
            results.check("setup", False, str(exc))
        finally:
            containers.remove_all()
    note(f"container test took {time.monotonic() - began:.0f}s")
    print(f"{results.passed} passed, {results.failed} failed", flush=True)
    return 1 if results.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
