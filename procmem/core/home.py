"""PROCMEM_HOME: where models, memory, threads and adapters live."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from procmem.core.errors import ProcmemError

__all__ = ["ENV_VAR", "Home"]

ENV_VAR = "PROCMEM_HOME"
_MARKER = "procmem-home.json"
_LAYOUT_VERSION = 1


@dataclass(frozen=True)
class Home:
    """The data directory. Resolve it with :meth:`resolve`; create it with :meth:`ensure`."""

    root: Path

    @classmethod
    def resolve(cls, option: str | os.PathLike[str] | None = None) -> Home:
        """``--home`` wins over ``$PROCMEM_HOME``, which wins over ``~/.procmem``."""
        raw = option or os.environ.get(ENV_VAR) or Path.home() / ".procmem"
        return cls(Path(raw).expanduser().resolve())

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def chroma(self) -> Path:
        return self.root / "chroma"

    @property
    def threads_db(self) -> Path:
        return self.root / "threads.sqlite"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def ensure(self) -> Home:
        """Create the layout, or check that an existing directory is a procmem home."""
        if self.root.exists() and not self.root.is_dir():
            raise ProcmemError("is a file, not a directory", where=str(self.root),
                               fix=f"point --home or ${ENV_VAR} at a directory")
        marker = self.root / _MARKER
        if self.root.is_dir() and any(self.root.iterdir()) and not marker.exists():
            raise ProcmemError("exists but is not a procmem home (no procmem-home.json)", where=str(self.root),
                               fix=f"use an empty or new directory for --home / ${ENV_VAR}")
        try:
            for path in (self.root, self.models, self.chroma, self.adapters, self.locks):
                path.mkdir(parents=True, exist_ok=True)
            if not marker.exists():
                marker.write_text(json.dumps({"layout_version": _LAYOUT_VERSION}) + "\n")
            _probe_write(self.root)
        except OSError as err:
            raise ProcmemError(f"cannot write: {err.strerror}", where=str(self.root),
                               fix="choose a writable --home or fix its permissions") from err
        self._check_marker(marker)
        return self

    def _check_marker(self, marker: Path) -> None:
        try:
            layout = json.loads(marker.read_text())["layout_version"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ProcmemError("procmem-home.json is corrupted", where=str(marker),
                               fix='restore it, or write {"layout_version": 1} into it') from err
        if layout != _LAYOUT_VERSION:
            raise ProcmemError(f"home layout version {layout} is not supported (expected {_LAYOUT_VERSION})",
                               where=str(marker), fix="use a home made by this procmem version")


def _probe_write(directory: Path) -> None:
    """Fail now, with a clear message, rather than in the middle of recording: root ignores permission
    bits, so only an actual write tells whether a directory (e.g. on a read-only mount) is writable."""
    probe = directory / f".write-probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
