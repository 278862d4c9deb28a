"""HTTP validators and byte ranges shared by the blob and weights routes (RFC 9110 subset)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from service.errors import RangeNotSatisfiableError

__all__ = ["etag_matches", "file_pieces", "parse_range", "validate_request"]


def parse_range(
    header: str | None, total: int, *, if_range: str | None = None, etag: str | None = None
) -> tuple[int, int] | None:
    """``[start, end)`` for a single ``bytes=`` range, None to send everything.

    Malformed or multi-range headers are ignored (a full 200 is a valid answer), and so is the
    range when ``If-Range`` does not name the current ``etag`` exactly (strong comparison; a date
    never matches): a client resuming bytes of another representation gets the whole new one
    instead of a splice of two.

    Raises:
        RangeNotSatisfiableError: the range starts at or past ``total`` (416, ``Content-Range: */N``).
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    if if_range is not None and if_range.strip() != f'"{etag}"':
        return None
    first, sep, last = header[6:].strip().partition("-")
    if not sep or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            raise _unsatisfiable(total)
        return max(0, total - n), total
    start = int(first)
    end = total if not last else min(total, int(last) + 1)
    if last and int(last) < start:
        return None
    if start >= total:
        raise _unsatisfiable(total)
    return start, end


def _unsatisfiable(total: int) -> RangeNotSatisfiableError:
    return RangeNotSatisfiableError(
        f"range not satisfiable for {total} bytes", headers={"Content-Range": f"bytes */{total}"}
    )


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """True when ``If-None-Match`` lists ``etag`` (quoted) or is ``*``."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or f'"{etag}"' in tags


def validate_request(
    request_headers: Mapping[str, str], total: int, etag: str, headers: dict[str, str]
) -> tuple[int, int, int] | None:
    """Apply ``If-None-Match`` and ``Range``/``If-Range`` to a representation of ``total`` bytes.

    Sets ``ETag``, ``Accept-Ranges`` and (unless 304) ``Content-Length`` and ``Content-Range`` in
    ``headers``.

    Returns:
        ``None`` when the client's copy is current (answer 304 with ``headers``), else
        ``(status, start, end)``: 200 or 206 and the byte range ``[start, end)`` to send.

    Raises:
        RangeNotSatisfiableError: as ``parse_range``.
    """
    headers.update({"ETag": f'"{etag}"', "Accept-Ranges": "bytes"})
    if etag_matches(request_headers.get("if-none-match"), etag):
        return None
    rng = parse_range(request_headers.get("range"), total, if_range=request_headers.get("if-range"), etag=etag)
    start, end = rng or (0, total)
    if rng is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
    headers["Content-Length"] = str(end - start)
    return (206 if rng is not None else 200), start, end


def file_pieces(path: Path, start: int, end: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """Read ``[start, end)`` of a file in pieces (a sync generator, run in a worker thread)."""
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            data = f.read(min(piece, left))
            if not data:
                raise OSError(f"{path} shrank while being sent")
            left -= len(data)
            yield data
