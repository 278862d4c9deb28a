"""Progress bars (tqdm) that are off without a TTY or with ``MCNC_DISABLE_PROGRESS_BARS``."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(enabled: bool, total: int | None, initial: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, leave=False)  # fmt: skip
