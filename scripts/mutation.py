"""Mutation testing, module by module (``make mutation``; not in ``make test``).

Usage (from the repository root)::

    .venv/bin/python scripts/mutation.py [--jobs N] [MODULE ...]

For each module listed in ``mutation/targets.toml`` (or only the ``MODULE`` paths given), it
runs mutmut 3 against that module's own fast tests only, then prints one table: mutants,
killed (a test failed, or the mutant looped until its time limit), survived, the score
(killed / mutants) and how many survivors are accepted. It lists every survivor that
``mutation/survivors.toml`` does not accept (a new one: kill it with a test, or accept it there
with its reason) and every accepted entry that no longer survives (stale: delete it).

How: mutmut reads its settings from ``[tool.mutmut]`` in the ``pyproject.toml`` of the folder it
runs in and keeps its state in ``mutants/`` there. So each module gets a fresh folder
``mutants/<module>/`` holding links to ``proxy/``, ``tests/``, ``README.md`` (the field
policy's test compares its table with the README) and ``config.example.toml`` (the settings'
test loads it) and a copy of the project's ``pyproject.toml``
with that module's ``[tool.mutmut]`` table appended; nothing is cached
between runs, so a test added since the last run always counts. Hypothesis runs under the
``mutation`` profile (``tests/conftest.py``: derandomized, no example database), so the same
mutants survive on every run.

A survivor is named stably, without mutmut's per-run number: module, function, and the mutated
line before and after (whitespace collapsed), e.g. ``proxy.core.sse  SSEDecoder.feed
if cr + 1 < end_of_buf: => if cr + 1 <= end_of_buf:``. Identical mutations of one function
count by number (``count`` in the accepted list).

Exit status: 0 when every survivor is accepted, 1 when there is a new one, 2 on a usage or
tool error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS_FILE = ROOT / "mutation" / "targets.toml"
SURVIVORS_FILE = ROOT / "mutation" / "survivors.toml"
WORK_DIR = ROOT / "mutants"
MUTMUT = Path(sys.executable).parent / "mutmut"

# mutmut's statuses (``mutmut results --all true``), sorted into the table's columns.
KILLED_STATUSES = frozenset({"killed", "timeout", "caught by type check", "segfault"})
SURVIVED_STATUSES = frozenset({"survived", "no tests", "suspicious"})

# Every test run: Hypothesis's fixed-example profile (tests/conftest.py), no pytest cache.
PYTEST_ARGS = ["--hypothesis-profile=mutation", "-p", "no:cacheprovider"]

_MUTANT_NAME = re.compile(r"^(?P<module>.+)\.x(?:ǁ(?P<cls>[^ǁ]+)ǁ|_)(?P<func>.+)__mutmut_\d+$")
_RESULT_LINE = re.compile(r"^\s*(?P<name>\S+): (?P<status>[a-z ]+)$")


@dataclass(frozen=True, slots=True)
class Target:
    """One module and the test files that are its own."""

    path: str
    tests: tuple[str, ...]

    @property
    def module(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")


@dataclass(frozen=True, slots=True, order=True)
class SurvivorKey:
    """A survivor named without mutmut's run-dependent number."""

    module: str
    function: str
    mutation: str

    def __str__(self) -> str:
        return f"{self.module}  {self.function}  {self.mutation}"


@dataclass(slots=True)
class Outcome:
    """What one module's run found."""

    target: Target
    statuses: Counter[str] = field(default_factory=Counter)
    survivors: Counter[SurvivorKey] = field(default_factory=Counter)
    seconds: float = 0.0
    error: str | None = None

    @property
    def mutants(self) -> int:
        return sum(self.statuses.values())

    @property
    def killed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status in KILLED_STATUSES)

    @property
    def survived(self) -> int:
        return self.mutants - self.killed


@dataclass(frozen=True, slots=True)
class Settings:
    timeout_multiplier: float
    timeout_constant: float


def load_targets(path: Path = TARGETS_FILE) -> tuple[Settings, list[Target]]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    settings = data.get("settings", {})
    targets = [Target(module, tuple(tests)) for module, tests in data["targets"].items()]
    return (
        Settings(
            timeout_multiplier=float(settings.get("timeout_multiplier", 3.0)),
            timeout_constant=float(settings.get("timeout_constant", 2.0)),
        ),
        targets,
    )


# equivalent: no input tells the mutant apart; message: only unpinned wording changes;
# import-time: the mutated code runs only while the module is imported, before mutmut switches a
# mutant on, so mutmut cannot test it at all (what it builds is pinned by other tests).
REASON_KINDS = ("equivalent", "message", "import-time")


@dataclass(slots=True)
class Accepted:
    """The accepted survivors: how many of each key, and the kind of reason for each."""

    counts: Counter[SurvivorKey] = field(default_factory=Counter)
    kinds: dict[SurvivorKey, str] = field(default_factory=dict)

    def of_kind(self, survivors: Counter[SurvivorKey], kind: str) -> int:
        """How many of ``survivors`` are accepted with a reason of ``kind``."""
        return sum(
            min(count, self.counts[key])
            for key, count in survivors.items()
            if self.kinds.get(key) == kind
        )


def load_accepted(path: Path = SURVIVORS_FILE) -> Accepted:
    """The accepted survivors; each reason starts with "equivalent:", "message:" or
    "import-time:"."""
    accepted = Accepted()
    if not path.exists():
        return accepted
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    for entry in data.get("survivor", []):
        kind = str(entry.get("reason", "")).partition(":")[0]
        if kind not in REASON_KINDS:
            kinds = " or ".join(f'"{kind}:"' for kind in REASON_KINDS)
            raise SystemExit(f"{path}: a reason must start with {kinds}: {entry}")
        key = SurvivorKey(entry["module"], entry["function"], entry["mutation"])
        accepted.counts[key] += int(entry.get("count", 1))
        accepted.kinds[key] = kind
    return accepted


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _toml_list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(_toml_string(value) for value in values) + "]"


def mutmut_table(target: Target, settings: Settings) -> str:
    """The ``[tool.mutmut]`` table for one target."""
    lines = [
        "[tool.mutmut]",
        f"source_paths = {_toml_list(['proxy'])}",
        f"only_mutate = {_toml_list([target.path])}",
        f"pytest_add_cli_args_test_selection = {_toml_list(target.tests)}",
        f"pytest_add_cli_args = {_toml_list(PYTEST_ARGS)}",
        f"timeout_multiplier = {settings.timeout_multiplier}",
        f"timeout_constant = {settings.timeout_constant}",
        "use_git_change_detection = false",
        f"also_copy = {_toml_list(['README.md', 'config.example.toml'])}",
    ]
    return "\n".join(lines) + "\n"


def prepare(target: Target, settings: Settings) -> Path:
    """A fresh folder for one target: links to the code and tests, its own pyproject.toml."""
    project = ROOT / "pyproject.toml"
    text = project.read_text(encoding="utf-8")
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml has a [tool.mutmut] table; targets live in mutation/")
    folder = WORK_DIR / target.module
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in ("proxy", "tests"):
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    (folder / "README.md").symlink_to(ROOT / "README.md")  # the field table's own test reads it
    # The settings' test loads the example file and compares it with the defaults.
    (folder / "config.example.toml").symlink_to(ROOT / "config.example.toml")
    (folder / "pyproject.toml").write_text(
        text.rstrip("\n") + "\n\n" + mutmut_table(target, settings), encoding="utf-8"
    )
    return folder


def _mutmut(folder: Path, *args: str, log: Path | None = None) -> str:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if log is None:
        done = subprocess.run(  # noqa: S603 - the venv's own mutmut
            [str(MUTMUT), *args], cwd=folder, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"mutmut {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout
    with log.open("w", encoding="utf-8") as out:
        code = subprocess.run(  # noqa: S603 - the venv's own mutmut
            [str(MUTMUT), *args], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"mutmut {' '.join(args)} failed (log {log}):\n{tail}")
    return ""


def parse_results(text: str) -> dict[str, str]:
    """``mutmut results --all true`` -> {mutant name: status}."""
    results: dict[str, str] = {}
    for line in text.splitlines():
        match = _RESULT_LINE.match(line)
        if match:
            results[match["name"]] = match["status"]
    return results


def _collapse(line: str) -> str:
    return " ".join(line.split())


def survivor_key(name: str, diff: str) -> SurvivorKey:
    """A survivor's stable name from mutmut's mutant name and ``mutmut show`` diff."""
    match = _MUTANT_NAME.match(name)
    if match is None:
        raise ValueError(f"unexpected mutant name {name!r}")
    function = f"{match['cls']}.{match['func']}" if match["cls"] else match["func"]
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "#"))]
    before = [_collapse(line[1:]) for line in body if line.startswith("-")]
    after = [_collapse(line[1:]) for line in body if line.startswith("+")]
    mutation = f"{' / '.join(before)} => {' / '.join(after)}"
    return SurvivorKey(match["module"], function, mutation)


def run_target(target: Target, settings: Settings, jobs: int) -> Outcome:
    outcome = Outcome(target)
    started = time.monotonic()
    try:
        folder = prepare(target, settings)
        _mutmut(folder, "run", "--max-children", str(jobs), log=folder / "run.log")
        statuses = parse_results(_mutmut(folder, "results", "--all", "true"))
        outcome.statuses = Counter(statuses.values())
        for name, status in sorted(statuses.items()):
            if status in SURVIVED_STATUSES:
                outcome.survivors[survivor_key(name, _mutmut(folder, "show", name))] += 1
    except RuntimeError as exc:
        outcome.error = str(exc)
    outcome.seconds = time.monotonic() - started
    return outcome


def accepted_block(key: SurvivorKey, count: int) -> str:
    """A ready-to-edit entry for mutation/survivors.toml."""
    lines = [
        "[[survivor]]",
        f"module = {_toml_string(key.module)}",
        f"function = {_toml_string(key.function)}",
        f"mutation = {_toml_string(key.mutation)}",
    ]
    if count > 1:
        lines.append(f"count = {count}")
    lines.append('reason = "equivalent: ... | message: ... | import-time: ..."')
    return "\n".join(lines)


def report(outcomes: list[Outcome], accepted: Accepted, total_seconds: float) -> int:
    """Print the table and the lists; return the exit status."""
    header = (
        f"{'module':<30} {'mutants':>7} {'killed':>6} {'survived':>8} {'equiv':>5} "
        f"{'message':>7} {'import':>6} {'new':>4} {'score':>6} {'time':>6}"
    )
    print(header)
    print("-" * len(header))
    new: list[tuple[SurvivorKey, int]] = []
    stale: list[tuple[SurvivorKey, int]] = []
    for outcome in outcomes:
        if outcome.error is not None:
            print(f"{outcome.target.module:<30} ERROR (see below)")
            continue
        fresh = outcome.survivors - accepted.counts
        new += sorted(fresh.items())
        equivalent = accepted.of_kind(outcome.survivors, "equivalent")
        message = accepted.of_kind(outcome.survivors, "message")
        untestable = accepted.of_kind(outcome.survivors, "import-time")
        # The usual mutation score: killed / (mutants - equivalent mutants), with the mutants
        # mutmut cannot switch on (import-time) left out like the equivalent ones.
        tested = outcome.mutants - equivalent - untestable
        score = 100.0 * outcome.killed / tested if tested else 100.0
        print(
            f"{outcome.target.module:<30} {outcome.mutants:>7} {outcome.killed:>6} "
            f"{outcome.survived:>8} {equivalent:>5} {message:>7} {untestable:>6} "
            f"{fresh.total():>4} {score:>5.1f}% {outcome.seconds:>5.0f}s"
        )
        for key, count in sorted(accepted.counts.items()):
            if key.module == outcome.target.module and outcome.survivors[key] < count:
                stale.append((key, count - outcome.survivors[key]))
    print(f"\nwall time {total_seconds:.0f}s")
    status = 0
    for outcome in outcomes:
        if outcome.error is not None:
            print(f"\n{outcome.target.module}: {outcome.error}")
            status = 2
    if new:
        status = max(status, 1)
        print(f"\n{sum(n for _, n in new)} new survivor(s): kill each with a test, or accept it")
        print(f"in {SURVIVORS_FILE.relative_to(ROOT)} with its reason:\n")
        for key, count in new:
            print(accepted_block(key, count) + "\n")
    if stale:
        print(f"\n{len(stale)} accepted survivor(s) no longer survive; delete them:\n")
        for key, count in stale:
            print(f"  {key}" + (f"  (x{count})" if count > 1 else ""))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("modules", nargs="*", help="module paths (default: every target)")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 2, help="mutants tested at once"
    )
    args = parser.parse_args(argv)
    if not MUTMUT.exists():
        print(f"mutmut not found at {MUTMUT}: install the dev extra", file=sys.stderr)
        return 2
    settings, targets = load_targets()
    if args.modules:
        known = {target.path: target for target in targets}
        unknown = [module for module in args.modules if module not in known]
        if unknown:
            print(f"not in {TARGETS_FILE.relative_to(ROOT)}: {', '.join(unknown)}", file=sys.stderr)
            return 2
        targets = [known[module] for module in args.modules]
    accepted = load_accepted()
    started = time.monotonic()
    outcomes: list[Outcome] = []
    for target in targets:
        print(f"mutating {target.path} against {' '.join(target.tests)} ...", flush=True)
        outcomes.append(run_target(target, settings, args.jobs))
        last = outcomes[-1]
        print(
            f"  {last.mutants} mutants, {last.survived} survived, {last.seconds:.0f}s", flush=True
        )
    print()
    return report(outcomes, accepted, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
