"""HTTP validators, byte ranges (RFC 9110 subset) and the body iterator shared by the blob and weights routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.errors import RangeNotSatisfiableError

__all__ = ["ClosingStreamingResponse", "closing_stream", "etag_matches", "parse_range", "validate_request"]


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


_END = b""


async def closing_stream(gen: Iterator[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    """Iterate a sync stream in worker threads and close it even when the client goes away.

    Closing at once (not at garbage collection) leaves a single-flight job and frees the
    reconstruction slot as soon as the client disconnects.
    """
    try:
        while True:
            piece = await anyio.to_thread.run_sync(next, gen, _END)
            if piece is _END:
                return
            yield piece
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(gen.close)  # type: ignore[attr-defined]


class ClosingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that closes its body iterator however the response ends (the client
    left, a send timed out, an error): Starlette leaves a half-consumed iterator to the garbage
    collector, which may be much later (a logged traceback keeps it alive), and the iterator may hold
    a reconstruction and its admission place (``closing_stream``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
