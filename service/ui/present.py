"""How the pages write numbers (bytes, savings, dates, durations) and the geometry of their SVG bars.

The picture a page draws: the bytes a model costs to fetch as a bundle against its full weights,
and how long each takes on a 100 Mbit/s and a 1 Gbit/s link (bytes x 8 / rate: the transfer alone;
reconstruction is extra and measured in docs/benchmarks.md). Pure functions, no I/O.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

__all__ = ["LINKS", "Bar", "TransferChart", "duration", "human_bytes", "saving", "timestamp", "transfer_chart"]

LINKS = (("100 Mbit/s", 100e6), ("1 Gbit/s", 1e9))
BAR_WIDTH = 300  # px of the longest bar
MIN_BAR = 2  # px: a bar never vanishes, however small next to the other


def human_bytes(n: int | None) -> str:
    """``1234567`` -> ``"1.23 MB"`` (decimal units, as download speeds are quoted)."""
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def saving(full: int, stored: int) -> str:
    """``"123\u00d7"`` (times sign): how many times smaller the stored bytes are than the full weights."""
    ratio = full / max(stored, 1)
    return f"{ratio:.3g}\u00d7" if ratio < 1000 else f"{ratio:,.0f}\u00d7"


def timestamp(ts: float | None) -> str:
    """``"2026-12-07 13:45 UTC"``, or ``"—"``."""
    if ts is None:
        return "—"
    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float) -> str:
    """A short duration: ``"40 µs"``, ``"3.2 ms"``, ``"2.5 s"``, ``"4 min 10 s"``, ``"2 h 5 min"``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


@dataclass(frozen=True)
class Bar:
    label: str
    nbytes: int
    width: int  # px
    times: tuple[str, ...]  # one per LINKS entry


@dataclass(frozen=True)
class TransferChart:
    bars: tuple[Bar, ...]
    saving: str
    links: tuple[str, ...] = tuple(label for label, _ in LINKS)


def transfer_chart(
    stored: int, full: int, *, stored_label: str = "bundle", full_label: str = "full weights"
) -> TransferChart:
    """Two bars on one linear scale: ``stored`` bytes against ``full`` bytes, with transfer times."""
    top = max(stored, full, 1)

    def bar(label: str, n: int) -> Bar:
        width = max(MIN_BAR, round(BAR_WIDTH * n / top))
        return Bar(label, n, width, tuple(duration(n * 8 / rate) for _, rate in LINKS))

    return TransferChart((bar(stored_label, stored), bar(full_label, full)), saving(full, stored))
