"""The trust level each model was attested at, remembered across restarts (no silent downgrade).

File: ``<attestation.state_dir>/trust_levels.json`` (``serve`` defaults the directory to
``$XDG_STATE_HOME/venice-e2ee-proxy``, else ``~/.local/state/venice-e2ee-proxy``)::

    {"format": "venice-e2ee-proxy trust state v1",
     "models": {"<model id>": {"level": "enclave" | "gateway", "first_seen": <unix s>,
                               "last_seen": <unix s>, "accepted_at": <unix s> | null}}}

- After every accepted attestation the service records the level it saw (:meth:`record`).
- Before verifying, the level remembered for the model is handed to the checks
  (``trust_not_downgraded``): ``enclave`` remembered and ``gateway`` seen is refused.
- ``venice-e2ee-proxy trust accept MODEL`` (:meth:`accept`) records ``gateway`` on purpose,
  with ``accepted_at``, which lets that model's next gateway attestation through the downgrade
  check (``attestation.gateway_models`` or ``attestation.trust_levels`` must still allow gateway
  trust).

Writes are atomic (a temporary file in the same directory, fsync, ``os.replace``), so a crash
never leaves half a file; the file is re-read before every use, so an ``accept`` from the CLI
applies to a running proxy at its next attestation. Without a directory (library use, tests) the
levels live in memory for the life of the object. A file that cannot be read as this format is
an error (:class:`TrustStateError`), never silently an empty memory: forgetting would turn a
downgrade into a first sighting.

Deliberately NOT here: deciding anything (that is :mod:`proxy.attestation.trust`).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, cast

from proxy.attestation.policy import TRUST_LEVELS, TrustLevel
from proxy.core.errors import AttestationError

STATE_FILE: Final = "trust_levels.json"
FORMAT: Final = "venice-e2ee-proxy trust state v1"
APP_DIR: Final = "venice-e2ee-proxy"


class TrustStateError(AttestationError):
    """The trust state file cannot be read or written."""

    default_code = "trust_state_unreadable"


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/venice-e2ee-proxy``, else ``~/.local/state/venice-e2ee-proxy``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / APP_DIR


def writable_problem(directory: Path) -> str | None:
    """Why trust levels cannot be kept in ``directory`` (None when they can)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".probe.", dir=directory)
        os.close(handle)
        Path(probe).unlink()
    except OSError as exc:
        return f"cannot write to {directory}: {exc.strerror}"
    return None


class TrustState:
    """Remembered trust levels, in a file under ``directory`` or in memory when it is None."""

    def __init__(self, directory: Path | None, *, clock: Callable[[], float] = time.time) -> None:
        self.path = directory / STATE_FILE if directory is not None else None
        self._memory: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    @property
    def where(self) -> str:
        """Where the levels are kept, for messages."""
        return str(self.path) if self.path is not None else "memory (no attestation.state_dir)"

    def models(self) -> dict[str, dict[str, Any]]:
        """Every remembered model and its record."""
        with self._lock:
            return {model: dict(entry) for model, entry in self._load().items()}

    def get(self, model: str) -> TrustLevel | None:
        """The level remembered for ``model``, or None."""
        entry = self.models().get(model)
        level = entry.get("level") if entry else None
        return cast("TrustLevel", level) if level in TRUST_LEVELS else None

    def record(self, model: str, level: TrustLevel) -> None:
        """Remember that ``model`` was just attested at ``level``."""
        self._update(model, level, accepted=False)

    def accept(self, model: str, level: TrustLevel = "gateway") -> None:
        """Record ``level`` for ``model`` on the user's say-so (``trust accept``)."""
        self._update(model, level, accepted=True)

    def _update(self, model: str, level: TrustLevel, *, accepted: bool) -> None:
        now = int(self._clock())
        with self._lock:
            models = self._load()
            entry = models.get(model, {"first_seen": now, "accepted_at": None})
            entry = {**entry, "level": level, "last_seen": now}
            if accepted:
                entry["accepted_at"] = now
            models[model] = entry
            self._store(models)

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return {model: dict(entry) for model, entry in self._memory.items()}
        try:
            data = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as exc:
            raise TrustStateError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            # Not UTF-8 (UnicodeDecodeError) is not this format either, like bad JSON.
            document = json.loads(data.decode("utf-8"))
        except ValueError:
            document = None
        models = document.get("models") if isinstance(document, dict) else None
        if not isinstance(models, dict) or document.get("format") != FORMAT:
            raise TrustStateError(
                f"{self.path} is not a trust state file ({FORMAT}); move it away to start over"
            )
        return {
            str(model): dict(entry)
            for model, entry in models.items()
            if isinstance(entry, dict) and entry.get("level") in TRUST_LEVELS
        }

    def _store(self, models: dict[str, dict[str, Any]]) -> None:
        if self.path is None:
            self._memory = models
            return
        document = {"format": FORMAT, "models": dict(sorted(models.items()))}
        data = json.dumps(document, indent=2) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(
                prefix=".trust_levels.", suffix=".tmp", dir=self.path.parent
            )
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise TrustStateError(f"cannot write {self.path}: {exc.strerror}") from None
