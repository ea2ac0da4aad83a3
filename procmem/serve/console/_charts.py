"""The console's charts: small PNGs drawn with matplotlib (Agg, the object API: safe from worker threads), cached
by their data so that a page that polls redraws nothing until the data changes."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

__all__ = ["ChartCache", "learning_png", "loss_png", "traffic_png"]

_SIZE = (7.2, 2.6)
_DPI = 100
_INK, _MUTED, _ACCENT, _GOOD = "#1f2933", "#7b8794", "#2f6fde", "#2f9e6e"


class ChartCache:
    """PNG bytes by (chart, data); the last few kept."""

    def __init__(self, size: int = 64) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    @staticmethod
    def key(name: str, data: Any) -> str:
        return name + ":" + hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def get(self, key: str) -> bytes | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: str, png: bytes) -> None:
        with self._lock:
            self._items[key] = png
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _figure() -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=_SIZE, dpi=_DPI)
    axes = figure.add_subplot(1, 1, 1)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.tick_params(colors=_MUTED, labelsize=8)
    for side in ("left", "bottom"):
        axes.spines[side].set_color(_MUTED)
    return figure, axes


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _empty(axes: Any, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", color=_MUTED, transform=axes.transAxes, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])


def traffic_png(hours: Sequence[str], calls: Sequence[int], verified: Sequence[int], feedback: Sequence[int]) -> bytes:
    """Calls per hour (bars), with the verified ones and those with feedback."""
    figure, axes = _figure()
    if not hours or not any(calls):
        _empty(axes, "no calls in the last 48 hours")
        return _png(figure)
    x = range(len(hours))
    axes.bar(x, calls, color="#cbd2d9", label="calls")
    axes.bar(x, verified, color=_ACCENT, width=0.5, label="verified")
    axes.plot(x, feedback, color=_GOOD, marker="o", markersize=3, linewidth=1.5, label="with feedback")
    step = max(1, len(hours) // 8)
    axes.set_xticks(list(x)[::step], [h[5:].replace("T", " ") + "h" for h in hours][::step])
    axes.set_ylabel("calls per hour", color=_INK, fontsize=9)
    axes.legend(fontsize=8, frameon=False, loc="upper left")
    return _png(figure)


def learning_png(series: dict[str, list[tuple[str, float, int]]]) -> bytes:
    """Pass rate of judged calls per day, one line per adapter version: the served model's learning curve."""
    figure, axes = _figure()
    if not series:
        _empty(axes, "no judged calls yet: send feedback or name a verifier")
        return _png(figure)
    days = sorted({day for points in series.values() for day, _, _ in points})
    index = {day: i for i, day in enumerate(days)}
    for version, points in series.items():
        axes.plot([index[d] for d, _, _ in points], [100.0 * rate for _, rate, _ in points], marker="o",
                  markersize=4, linewidth=1.8, label=version)
    step = max(1, len(days) // 8)
    axes.set_xticks(list(range(len(days)))[::step], [d[5:] for d in days][::step])
    axes.set_ylim(-3, 103)
    axes.set_ylabel("passed (% of judged)", color=_INK, fontsize=9)
    axes.legend(fontsize=8, frameon=False, title="adapter", title_fontsize=8, loc="best")
    return _png(figure)


def loss_png(losses: Sequence[float]) -> bytes:
    """Training loss per optimizer step."""
    figure, axes = _figure()
    if not losses:
        _empty(axes, "no loss curve in this manifest")
        return _png(figure)
    from matplotlib.ticker import MaxNLocator

    axes.plot(range(1, len(losses) + 1), list(losses), color=_ACCENT, marker="o", markersize=3, linewidth=1.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    axes.set_xlabel("optimizer step", color=_INK, fontsize=9)
    axes.set_ylabel("training loss", color=_INK, fontsize=9)
    return _png(figure)
