"""Facts about the machine a job runs on, as the benchmarks under ``eval/`` report them beside their figures."""

from __future__ import annotations

import os

__all__ = ["load_average"]


def load_average() -> float | None:
    """The 1-minute load average, rounded to 2 places; None where the platform does not report one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None
