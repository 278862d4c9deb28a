"""The Hub's date format, shared by every Hub route."""

from __future__ import annotations

import datetime

__all__ = ["hub_date"]


def hub_date(ts: float) -> str:
    """``ts`` (POSIX seconds) as the Hub writes dates, milliseconds always present: huggingface_hub
    0.23's ``parse_datetime`` accepts only ``%Y-%m-%dT%H:%M:%S.%fZ`` (a bare ``isoformat`` drops the
    fraction when the microseconds are zero)."""
    dt = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
