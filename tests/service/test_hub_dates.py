"""Hub dates keep their milliseconds: huggingface_hub 0.23 parses only ``%Y-%m-%dT%H:%M:%S.%fZ``."""

from __future__ import annotations

import datetime

from service.hub.dates import hub_date


def test_whole_second_keeps_its_fraction() -> None:
    ts = datetime.datetime(2026, 12, 7, 18, 0, 0, tzinfo=datetime.timezone.utc).timestamp()
    assert hub_date(ts) == "2026-12-07T18:00:00.000Z"
    datetime.datetime.strptime(hub_date(ts), "%Y-%m-%dT%H:%M:%S.%fZ")


def test_milliseconds_truncated() -> None:
    ts = datetime.datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=datetime.timezone.utc).timestamp()
    assert hub_date(ts) == "2026-01-02T03:04:05.678Z"
