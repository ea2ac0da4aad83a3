"""``procmem distill --every 6h``: run distillation on a schedule, one scheduler per home.

A failed tick is logged to ``<home>/distill/log.jsonl`` and retried (resumed) at the next one.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

from filelock import FileLock, Timeout
from rich.console import Console
from rich.markup import escape

from procmem.core import Home, ProcmemError, redact, utc_now
from procmem.distill._run import DistillBusy, DistillDeps, DistillResult, default_deps, run_distillation
from procmem.distill._storage import distill_dir
from procmem.distill.config import DistillConfig

__all__ = ["parse_interval", "run_every"]

_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_interval(text: str) -> float:
    """``'6h'``, ``'30m'``, ``'90s'``, ``'1d'`` or plain seconds -> seconds."""
    match = _INTERVAL.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ProcmemError(f"not an interval: {text!r}", where="--every", fix="use e.g. 6h, 30m, 90s or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_every(config: DistillConfig, home: Home, interval_s: float, *,
              deps_factory: Callable[[], DistillDeps] | None = None, max_ticks: int | None = None,
              force: bool = False, sleep: Callable[[float], None] = time.sleep, console: Console | None = None,
              quiet: bool = False, on_result: Callable[[DistillResult], None] | None = None) -> list[DistillResult]:
    """Run :func:`~procmem.distill._run.run_distillation` every ``interval_s`` seconds (forever unless ``max_ticks``).

    Only one scheduler per home (a second one exits with :class:`DistillBusy`). Each tick builds its
    dependencies afresh (``deps_factory``, default :func:`default_deps`), so it sees new episodes. A
    tick that is skipped (too few new episodes), finds another job running, or fails is logged to
    ``<home>/distill/log.jsonl``; a failed run is retried (resumed) at the next tick.
    """
    console = console or Console(stderr=True, quiet=quiet)
    home.ensure()
    scheduler = FileLock(str(home.locks / "distill-scheduler.lock"))
    try:
        scheduler.acquire(timeout=0)
    except Timeout:
        raise DistillBusy("another `procmem distill --every` scheduler is running for this home",
                          where=str(home.locks / "distill-scheduler.lock"), fix="stop it first") from None
    results: list[DistillResult] = []
    try:
        tick = 0
        while max_ticks is None or tick < max_ticks:
            started = time.monotonic()
            result = _tick(config, home, deps_factory or (lambda: default_deps(config, home)), force, console, quiet,
                           interval_s)
            if result is not None:
                results.append(result)
                if on_result is not None:
                    on_result(result)
            tick += 1
            if max_ticks is not None and tick >= max_ticks:
                break
            sleep(max(0.0, interval_s - (time.monotonic() - started)))
    finally:
        scheduler.release()
    return results


def _tick(config: DistillConfig, home: Home, deps_factory: Callable[[], DistillDeps], force: bool,
          console: Console, quiet: bool, every_s: float | None = None) -> DistillResult | None:
    try:
        result = run_distillation(config, home, deps=deps_factory, force=force, console=console, quiet=quiet)
    except DistillBusy as err:
        console.print(f"[yellow]tick skipped: {escape(redact(str(err)))}[/]")
        _log_tick(home, event="busy", message=str(err), every_s=every_s)
        return None
    except Exception as err:  # a failed run must not stop the scheduler; it is retried next tick
        console.print(f"[red]distill run failed: {type(err).__name__}: {escape(redact(str(err)))} "
                      "(retried at the next tick)[/]")
        _log_tick(home, event="failed", error=f"{type(err).__name__}: {err}", every_s=every_s)
        return None
    _log_tick(home, event=result.status, result=result.to_dict(), every_s=every_s)
    return result


def _log_tick(home: Home, **entry: Any) -> None:
    """Append one line to ``<home>/distill/log.jsonl`` (the scheduler's record of every tick, with its interval
    ``every_s``: the console tells from it when the next run is due)."""
    path = distill_dir(home) / "log.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = redact(json.dumps({"at": utc_now(), **entry}, sort_keys=True, default=str))  # errors may quote keys
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
