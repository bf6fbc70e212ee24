"""The Kubernetes manifests (deploy/kubernetes), rendered by kustomize, checked for what schema
validation and checkov (``make kubernetes-check``) cannot know: that they fit this proxy.

Probes and their Host header, shutdown timing against ``server.shutdown_grace_s``, the Venice
key as a mounted file, the Host allowlist against the Service's names, local tokens from a
Secret (and the placeholder failing closed), the NetworkPolicy's egress, the sidecar's wiring
and the demo's upstream. The demo overlay is then run for real as local processes (simulator,
proxy, the client Job's script, the sidecar's example app) with the rendered commands,
environment, settings file and Secrets, which is what the pods would run minus Kubernetes.

Rendering uses the kubectl that ``make kubernetes-check`` installs at ``.venv-tools/bin/kubectl``;
``make test`` runs that check before pytest.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from proxy.http.guard import HostGuardMiddleware
from proxy.http.loopback import free_socket
from proxy.settings import Settings, SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = REPO / "deploy" / "kubernetes" / "overlays"
KUBECTL = REPO / ".venv-tools" / "bin" / "kubectl"
PROXY = "venice-e2ee-proxy"
SHARED_LIKE = ["shared", "demo"]  # the overlays built on the shared Deployment of base/
ALL = ["shared", "sidecar", "demo"]

Resource = dict[str, Any]


# -- rendering and lookups ------------------------------------------------------------------------


@cache
def _rendered_text(overlay: str) -> str:
    if not KUBECTL.exists():
        pytest.fail(
            f"{KUBECTL.relative_to(REPO)} is missing: run `make kubernetes-check` first "
            "(it installs kubectl and renders the overlays)"
        )
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(OVERLAYS / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(overlay: str) -> list[Resource]:
    import yaml  # the PyYAML dev dependency

    docs = [doc for doc in yaml.safe_load_all(_rendered_text(overlay)) if doc]
    assert docs
    return docs


def generated(name: str, actual: str) -> bool:
    """Whether ``actual`` is ``name`` or kustomize's hash-suffixed ``name-<hash>``."""
    return re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", actual) is not None


def find(docs: list[Resource], kind: str, name: str) -> Resource:
    found = [d for d in docs if d["kind"] == kind and generated(name, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def namespace_of(docs: list[Resource]) -> str:
    name: str = find_kind(docs, "Namespace")[0]["metadata"]["name"]
    return name


def find_kind(docs: list[Resource], kind: str) -> list[Resource]:
    return [d for d in docs if d["kind"] == kind]


def pod_spec(docs: list[Resource], deployment: str) -> Resource:
    spec: Resource = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def container(docs: list[Resource], deployment: str, name: str) -> Resource:
    spec = pod_spec(docs, deployment)
    every: list[Resource] = [*spec.get("initContainers", []), *spec["containers"]]
    found = [c for c in every if c["name"] == name]
    assert len(found) == 1, f"{deployment}: expected one container {name}"
    return found[0]


def proxy_container(overlay: str) -> tuple[list[Resource], Resource, Resource]:
    """The rendered documents, the pod spec and the proxy container of an overlay."""
    docs = render(overlay)
    deployment = "example-app" if overlay == "sidecar" else PROXY
    return docs, pod_spec(docs, deployment), container(docs, deployment, PROXY)


def secret_value(docs: list[Resource], name: str, key: str) -> str:
    secret = find(docs, "Secret", name)
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    return base64.b64decode(secret["data"][key]).decode("utf-8")


def env_of(docs: list[Resource], item: Resource) -> dict[str, str]:
    """A container's environment as the kubelet would build it: fieldRef, secretKeyRef from the
    rendered Secrets, and $(VAR) references to variables defined before."""
    namespace = namespace_of(docs)
    env: dict[str, str] = {}
    for entry in item.get("env", []):
        if "value" in entry:
            value = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                str(entry["value"]),
            )
        elif "fieldRef" in entry["valueFrom"]:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
            value = namespace
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            value = secret_value(docs, ref["name"], ref["key"])
        env[entry["name"]] = value
    return env


def mounted_file(docs: list[Resource], spec: Resource, item: Resource, path: str) -> Resource:
    """The volume (with its mount) that provides the file ``path`` in a container."""
    for mount in item.get("volumeMounts", []):
        directory = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(directory):
            (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
            return {"mount": mount, "volume": volume, "relative": path[len(directory) :]}
    raise AssertionError(f"nothing is mounted at {path}")


def config_toml(docs: list[Resource]) -> str:
    text: str = find(docs, "ConfigMap", f"{PROXY}-config")["data"]["config.toml"]
    return text


def load_rendered_settings(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, real_tokens: bool = False
) -> Settings:
    """The proxy's settings from the rendered settings file and the container's environment
    (with ``real_tokens``, a valid server.api_keys in place of a placeholder Secret)."""
    docs, _, proxy = proxy_container(overlay)
    config = tmp_path / "config.toml"
    config.write_text(config_toml(docs), encoding="utf-8")
    for variable in list(os.environ):
        if variable.startswith("VENICE_"):
            monkeypatch.delenv(variable)
    for variable, value in env_of(docs, proxy).items():
        if variable.startswith("VENICE_PROXY_") and variable != "VENICE_PROXY_CONFIG":
            monkeypatch.setenv(variable, value)
    if real_tokens and "VENICE_PROXY_SERVER__API_KEYS" in os.environ:
        monkeypatch.setenv("VENICE_PROXY_SERVER__API_KEYS", '["a-real-token"]')
    return load_settings(config, environ={})


def sleep_seconds(item: Resource) -> float:
    """The preStop pause of a container (0 without one)."""
    pre_stop = item.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0.0
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


# -- every overlay --------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL)
def test_overlay_renders_into_its_own_namespace(overlay: str) -> None:
    docs = render(overlay)
    namespace = namespace_of(docs)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]
    assert (
        find_kind(docs, "Namespace")[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        == "restricted"
    )


@pytest.mark.parametrize("overlay", ALL)
def test_termination_grace_covers_the_pause_and_the_drain(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, spec, proxy = proxy_container(overlay)
    settings = load_rendered_settings(overlay, tmp_path, monkeypatch, real_tokens=True)
    grace_s = settings.server.shutdown_grace_s
    assert grace_s > 0
    # In the sidecar the proxy stops after the app, whose own preStop pause comes first.
    pauses = [sleep_seconds(c) for c in [*spec.get("initContainers", []), *spec["containers"]]]
    assert max(pauses) >= 1, "a preStop pause, so the Service stops sending before the drain"
    assert spec["terminationGracePeriodSeconds"] >= max(pauses) + grace_s
    if overlay != "sidecar":
        assert sleep_seconds(proxy) >= 1


@pytest.mark.parametrize("overlay", ALL)
def test_venice_key_is_a_mounted_secret_file(overlay: str) -> None:
    docs, spec, proxy = proxy_container(overlay)
    env = env_of(docs, proxy)
    assert "VENICE_API_KEY" not in env, "the key comes from a file, never the environment"
    key_file = env["VENICE_PROXY_UPSTREAM__API_KEY_FILE"]
    found = mounted_file(docs, spec, proxy, key_file)
    assert found["mount"].get("readOnly") is True
    secret = found["volume"]["secret"]
    assert generated("venice-api-key", secret["secretName"])
    assert {"key": "api_key", "path": found["relative"]} in secret["items"]
    assert secret_value(docs, secret["secretName"], "api_key")
    config = mounted_file(docs, spec, proxy, env["VENICE_PROXY_CONFIG"])
    assert generated(f"{PROXY}-config", config["volume"]["configMap"]["name"])


@pytest.mark.parametrize("overlay", ALL)
def test_rendered_settings_are_valid_with_a_warm_up(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shared overlay's token Secret is a placeholder that must not start a proxy (below).
    settings = load_rendered_settings(overlay, tmp_path, monkeypatch, real_tokens=True)
    # Readiness means "attested": /readyz waits for the warm-up models.
    assert settings.attestation.warm_up


@pytest.mark.parametrize("overlay", ALL)
def test_network_policy_lets_the_proxy_out_to_dns_and_https_only(overlay: str) -> None:
    docs, _, _ = proxy_container(overlay)
    selected = "example-app" if overlay == "sidecar" else PROXY
    policy = find(docs, "NetworkPolicy", selected)
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": selected}
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ports = {
        (port["port"], port.get("protocol", "TCP"))
        for rule in policy["spec"]["egress"]
        for port in rule["ports"]
    }
    assert ports == {(53, "UDP"), (53, "TCP"), (443, "TCP")}
    for rule in policy["spec"]["egress"]:
        assert rule.get("ports"), "every egress rule names its ports"
    assert all(rule.get("from") for rule in policy["spec"]["ingress"]), "no open ingress"


# -- the shared deployment ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", SHARED_LIKE)
def test_probes_readyz_and_healthz_with_an_allowed_host(overlay: str) -> None:
    _, _, proxy = proxy_container(overlay)
    (port,) = proxy["ports"]
    assert port["containerPort"] == 8000
    assert proxy["command"][-4:] == ["--host", "0.0.0.0", "--port", "8000"]
    guard = HostGuardMiddleware(lambda *_: None, [])  # type: ignore[arg-type]
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        get = proxy[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in (port["name"], port["containerPort"]), probe
        # The kubelet would send the pod IP as Host, which the proxy refuses (421).
        headers = {h["name"].lower(): h["value"] for h in get.get("httpHeaders", [])}
        assert guard.allows(headers.get("host")), probe


@pytest.mark.parametrize("overlay", SHARED_LIKE)
def test_allowed_hosts_admit_the_service_names(overlay: str) -> None:
    docs, _, proxy = proxy_container(overlay)
    namespace = namespace_of(docs)
    service = find(docs, "Service", PROXY)
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": PROXY}
    port = service["spec"]["ports"][0]["port"]
    allowed = json.loads(env_of(docs, proxy)["VENICE_PROXY_SERVER__ALLOWED_HOSTS"])
    guard = HostGuardMiddleware(lambda *_: None, allowed)  # type: ignore[arg-type]
    for name in (PROXY, f"{PROXY}.{namespace}", f"{PROXY}.{namespace}.svc"):
        assert guard.allows(f"{name}:{port}"), name
    assert guard.allows(f"{PROXY}.{namespace}.svc.cluster.local:{port}")
    assert not guard.allow_all
    assert not guard.allows(f"attacker.example:{port}")


def test_shared_local_tokens_come_from_a_secret_and_the_placeholder_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, _, proxy = proxy_container("shared")
    (entry,) = [e for e in proxy["env"] if e["name"] == "VENICE_PROXY_SERVER__API_KEYS"]
    assert "value" not in entry
    assert entry["valueFrom"]["secretKeyRef"].get("optional") is not True
    assert secret_value(docs, "venice-api-key", "api_key") == "REPLACE-ME"
    assert env_of(docs, proxy)["VENICE_PROXY_SERVER__API_KEYS"] == "REPLACE-ME"
    with pytest.raises(SettingsError):
        load_rendered_settings("shared", tmp_path, monkeypatch)


def test_shared_pod_disruption_budget_and_autoscaler_match_the_deployment() -> None:
    docs = render("shared")
    deployment = find(docs, "Deployment", PROXY)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    budget = find(docs, "PodDisruptionBudget", PROXY)
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    autoscaler = find(docs, "HorizontalPodAutoscaler", PROXY)
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == PROXY
    assert 2 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
    # New replicas attest on their own; scale-up stays at one pod a minute.
    (policy,) = autoscaler["spec"]["behavior"]["scaleUp"]["policies"]
    assert (policy["type"], policy["value"], policy["periodSeconds"]) == ("Pods", 1, 60)
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


# -- the sidecar ----------------------------------------------------------------------------------


def test_sidecar_app_uses_the_proxy_on_the_pods_loopback() -> None:
    docs, spec, proxy = proxy_container("sidecar")
    app = container(docs, "example-app", "app")
    assert env_of(docs, app)["OPENAI_BASE_URL"] == "http://127.0.0.1:8000/v1"
    assert proxy in spec["initContainers"], "a native sidecar: starts before the app"
    assert proxy["restartPolicy"] == "Always"
    assert proxy["command"][-4:] == ["--host", "127.0.0.1", "--port", "8000"]
    assert "ports" not in proxy
    assert all(s["spec"]["ports"][0]["targetPort"] != 8000 for s in find_kind(docs, "Service")), (
        "nothing outside the pod reaches the proxy"
    )


def test_sidecar_probes_run_inside_the_container() -> None:
    _, _, proxy = proxy_container("sidecar")
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        command = proxy[probe]["exec"]["command"]
        assert command[:2] == ["python", "-c"], probe
        assert f"'http://127.0.0.1:8000{path}'" in command[2], probe


# -- the demo -------------------------------------------------------------------------------------


def test_demo_upstream_is_the_simulator() -> None:
    docs, _, proxy = proxy_container("demo")
    env = env_of(docs, proxy)
    upstream = urlsplit(env["VENICE_PROXY_UPSTREAM__BASE_URL"])
    service = find(docs, "Service", upstream.hostname or "")
    simulator = find(docs, "Deployment", "venice-simulator")
    labels = simulator["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert upstream.scheme == "http"
    assert upstream.port == port["port"]
    assert upstream.path == "/api/v1"
    (sim,) = simulator["spec"]["template"]["spec"]["containers"]
    (sim_port,) = sim["ports"]
    assert port["targetPort"] in (sim_port["name"], sim_port["containerPort"])
    assert sim["command"] == [
        "venice-e2ee-proxy",
        "simulate",
        "--host",
        "0.0.0.0",
        "--port",
        str(sim_port["containerPort"]),
    ]
    # Relaxed for the simulator only, as in docker-compose.yml's demo profile.
    assert env["VENICE_PROXY_ATTESTATION__DCAP"] == "off"
    assert env["VENICE_PROXY_ATTESTATION__NVIDIA"] == "nonce"
    shared_env = env_of(*proxy_container("shared")[::2])
    assert not any("ATTESTATION" in name or "UPSTREAM__BASE_URL" in name for name in shared_env)
    # The extra NetworkPolicy opens exactly the simulator's port to the proxy.
    extra = find(docs, "NetworkPolicy", "venice-e2ee-proxy-to-simulator")
    (rule,) = extra["spec"]["egress"]
    assert rule["ports"] == [{"port": sim_port["containerPort"], "protocol": "TCP"}]
    assert rule["to"] == [{"podSelector": {"matchLabels": labels}}]


def _free_port() -> int:
    sock = free_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VENICE_", "OPENAI_"))}
    return {**env, **extra}


def _local(command: list[str], port: int) -> list[str]:
    """A container command as a local process: this interpreter, loopback, a free port."""
    assert command[0] == "venice-e2ee-proxy"
    assert command[-4] == "--host"
    assert command[-2] == "--port"
    return [
        sys.executable,
        "-m",
        "proxy",
        *command[1:-4],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_for(url: str, headers: dict[str, str], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"exited before ready: {err[-2000:]}")
        try:
            if _get(url, headers)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered 200")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in reversed(started):
        process.terminate()
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_demo_runs_for_real(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    docs, spec, proxy = proxy_container("demo")
    namespace = namespace_of(docs)
    sim_port, proxy_port, app_port = _free_port(), _free_port(), _free_port()

    (sim,) = find(docs, "Deployment", "venice-simulator")["spec"]["template"]["spec"]["containers"]
    simulator = subprocess.Popen(
        _local(sim["command"], sim_port),
        env=_child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(simulator)

    # The proxy with the rendered environment, settings file and Secret, files where they
    # would be mounted moved under tmp_path, the simulator's Service name pointed at loopback.
    env = env_of(docs, proxy)
    for variable in ("VENICE_PROXY_CONFIG", "VENICE_PROXY_UPSTREAM__API_KEY_FILE"):
        found = mounted_file(docs, spec, proxy, env[variable])
        local = tmp_path / found["relative"]
        if "configMap" in found["volume"]:
            local.write_text(config_toml(docs), encoding="utf-8")
        else:
            local.write_text(secret_value(docs, "venice-api-key", "api_key"), encoding="utf-8")
        env[variable] = str(local)
    upstream = urlsplit(env["VENICE_PROXY_UPSTREAM__BASE_URL"])
    env["VENICE_PROXY_UPSTREAM__BASE_URL"] = env["VENICE_PROXY_UPSTREAM__BASE_URL"].replace(
        upstream.netloc, f"127.0.0.1:{sim_port}"
    )
    server = subprocess.Popen(
        _local(proxy["command"], proxy_port),
        cwd=tmp_path,
        env=_child_env(**env, VENICE_PROXY_LOGGING__LEVEL="warning"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(server)
    base = f"http://127.0.0.1:{proxy_port}"

    # What the readiness probe sees: ready only once the warm-up model is attested.
    probe = proxy["readinessProbe"]["httpGet"]
    probe_headers = {h["name"]: h["value"] for h in probe["httpHeaders"]}
    _wait_for(base + probe["path"], probe_headers, server)
    status, body = _get(base + probe["path"], probe_headers)
    assert status == 200
    assert json.loads(body)["ready"] is True

    # Clients name the Service; they must send a local token; other Host names are refused.
    token = json.loads(env["VENICE_PROXY_SERVER__API_KEYS"])[0]
    service_host = f"{PROXY}.{namespace}.svc:8000"
    bearer = {"Authorization": f"Bearer {token}"}
    assert _get(base + "/v1/models", {"Host": service_host, **bearer})[0] == 200
    assert _get(base + "/v1/models", {"Host": service_host})[0] == 401
    assert _get(base + "/v1/models", {"Host": "attacker.example", **bearer})[0] == 421

    # The demo client Job's script, its Service URL pointed at the local proxy.
    job = find(docs, "Job", "demo-client")
    (client,) = job["spec"]["template"]["spec"]["containers"]
    assert client["command"][:2] == ["python", "-c"]
    client_env = env_of(docs, client)
    assert urlsplit(client_env["OPENAI_BASE_URL"]).hostname == PROXY
    client_env["OPENAI_BASE_URL"] = f"{base}/v1"
    result = subprocess.run(
        [sys.executable, "-c", client["command"][2]],
        env=_child_env(**client_env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    completion = json.loads(result.stdout.strip().splitlines()[-1])
    assert completion["object"] == "chat.completion"
    assert "Hello through E2EE on Kubernetes!" in completion["choices"][0]["message"]["content"]

    # The sidecar overlay's example app, as rendered, against the same proxy.
    sidecar = render("sidecar")
    app = container(sidecar, "example-app", "app")
    source = find(sidecar, "ConfigMap", "example-app")["data"]["example_app.py"]
    (tmp_path / "example_app.py").write_text(source, encoding="utf-8")
    app_env = env_of(sidecar, app)
    assert app["command"] == ["python", "/app/example_app.py"]
    app_env.update(
        OPENAI_BASE_URL=f"{base}/v1",
        OPENAI_API_KEY=token,
        EXAMPLE_MODEL="e2ee-simulated-near",
        PORT=str(app_port),
    )
    example = subprocess.Popen(
        [sys.executable, str(tmp_path / "example_app.py")],
        env=_child_env(**app_env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(example)
    _wait_for(f"http://127.0.0.1:{app_port}/healthz", {}, example)
    status, body = _get(f"http://127.0.0.1:{app_port}/")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["object"] == "chat.completion"
    assert "Hello from the example app!" in answer["choices"][0]["message"]["content"]
