"""requirements.lock: the image's runtime dependencies, pinned with hashes (``make lock``).

Checked without a network: every runtime dependency named in pyproject.toml (for Linux, where
the image runs) is pinned in the lock at a version its lower bound allows, every pin carries at
least one sha256 hash (``pip install --require-hashes`` refuses anything else), no dev-only tool
slipped in, and the lock says how to refresh it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
# The image: python:3.11-slim on x86_64 Linux.
IMAGE_ENVIRONMENT: dict[str, str] = {
    "implementation_version": "3.11.0",
    "platform_release": "",
    "platform_version": "",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements(entries: object) -> list[Requirement]:
    assert isinstance(entries, list)
    return [Requirement(str(entry)) for entry in entries]


def _locked() -> dict[str, tuple[Version, list[str]]]:
    """Name -> (pinned version, its hashes), from the lock's logical lines."""
    text = LOCK.read_text(encoding="utf-8").replace("\\\n", " ")
    locked: dict[str, tuple[Version, list[str]]] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _PIN.match(stripped)
        assert match, f"not a hash-pinned requirement: {stripped[:80]}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})\b", stripped)
        name = canonicalize_name(match["name"])
        assert name not in locked, f"{name} is pinned twice"
        locked[name] = (Version(match["version"]), hashes)
    return locked


def test_every_runtime_dependency_is_pinned_within_its_bounds() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    locked = _locked()
    for requirement in _requirements(project["dependencies"]):
        if requirement.marker is not None and not requirement.marker.evaluate(IMAGE_ENVIRONMENT):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is a runtime dependency missing from requirements.lock"
        version, _ = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} does not satisfy pyproject's {requirement.specifier}"
        )


def test_every_pin_has_a_hash() -> None:
    locked = _locked()
    assert len(locked) >= 13  # the direct dependencies and what they need
    for name, (_, hashes) in locked.items():
        assert hashes, f"{name} has no --hash (pip install --require-hashes would refuse it)"


def test_no_dev_dependency_is_locked_for_the_image() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    locked = _locked()
    runtime = {canonicalize_name(r.name) for r in _requirements(project["dependencies"])}
    for requirement in _requirements(extras["dev"]):
        name = canonicalize_name(requirement.name)
        if name not in runtime:
            assert name not in locked, f"the dev tool {name} is in the image's lock"


def test_the_lock_says_how_it_was_made() -> None:
    head = LOCK.read_text(encoding="utf-8").splitlines()[:3]
    assert any("make lock" in line for line in head)
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "\nlock:" in makefile
    assert "--generate-hashes" in makefile
