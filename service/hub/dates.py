"""The Hub's date format and the ModelInfo fields shared by every Hub route."""

from __future__ import annotations

import datetime

__all__ = ["hub_date", "info_fields"]


def hub_date(ts: float) -> str:
    """``ts`` (POSIX seconds) as the Hub writes dates, milliseconds always present: huggingface_hub
    0.23's ``parse_datetime`` accepts only ``%Y-%m-%dT%H:%M:%S.%fZ`` (a bare ``isoformat`` drops the
    fraction when the microseconds are zero)."""
    dt = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def info_fields(repo: str, commit: str, created: float, updated: float) -> dict[str, object]:
    """The ModelInfo fields every Hub answer about a repo carries, whichever route (model info, listing):
    huggingface_hub 0.23.x reads ``downloads``, ``likes``, ``private`` (and ``tags``, added by the caller)
    with no default (hf_api.py ``ModelInfo.__init__``), which LoRAX's first call needs."""
    return {
        "_id": commit[:24],
        "id": repo,
        "modelId": repo,
        "author": repo.partition("/")[0] if "/" in repo else None,
        "sha": commit,
        "private": False,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "createdAt": hub_date(created),
        "lastModified": hub_date(updated),
    }
