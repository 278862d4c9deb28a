"""``file_response``: a Hub file as ``ranged_response`` answers it, with adapter files kept on disk
sent zero-copy.

An adapter kept on the server's disk tier (``service/adapters.py``) is a plain file whose sha256 was
computed when it was written (its ETag): where the server serves ``ZEROCOPY``
(``service/http_server.py``: uvicorn's httptools protocol, no TLS) its bytes go from the page cache to
the socket with ``os.sendfile``, as nginx sends them, instead of 1 MiB reads through Python. The file
is opened before the status line (an eviction meanwhile cannot cut the body: POSIX unlink
semantics), and validators, ``Range``/206/416, 304 and HEAD are those of every other ranged route
(``service.ranges.validate_request``). Elsewhere (TestClient, the h11 protocol, a file in memory)
the body is streamed as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import anyio
from fastapi import Request, Response
from starlette.types import Receive, Scope, Send

from service.adapters import AdapterBody
from service.http_server import ZEROCOPY
from service.hub.files import HubFile
from service.ranges import ClosingStreamingResponse, closing_stream, validate_request

__all__ = ["FileBodyResponse", "file_response"]


class FileBodyResponse(Response):
    """The body ``body`` (a range of a file on disk) sent with ``ZEROCOPY`` where the server offers
    it, else streamed; the file is closed however the response ends."""

    def __init__(self, body: AdapterBody, status_code: int, headers: Mapping[str, str], media_type: str) -> None:
        super().__init__(None, status_code, dict(headers), media_type)
        self.file_body, self.plain_headers = body, dict(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.file_body
        span = body.file_range()
        if span is None or ZEROCOPY not in scope.get("extensions", {}):
            stream = closing_stream(body)
            fallback = ClosingStreamingResponse(stream, self.status_code, self.plain_headers, self.media_type)
            await fallback(scope, receive, send)
            return
        f, start, end = span
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": ZEROCOPY, "file": f, "offset": start, "count": end - start, "path": scope["path"]})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):
                body.close()


def file_response(request: Request, f: HubFile, headers: dict[str, str], media_type: str) -> Response:
    """``ranged_response`` for Hub file ``f`` (ETag/304, Range/206/416, HEAD), zero-copy for an
    adapter file kept on disk (module docstring).

    Raises:
        RangeNotSatisfiableError: as ``validate_request``; what ``f.open`` raises (before the status line).
    """
    headers = dict(headers)
    answer = validate_request(request.headers, f.size, f.etag, headers)
    if answer is None:
        return Response(status_code=304, headers=headers)
    status, start, end = answer
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    body: Iterator[bytes | memoryview] = f.open(start, end)
    if isinstance(body, AdapterBody) and body.file_range() is not None:
        return FileBodyResponse(body, status, headers, media_type)
    return ClosingStreamingResponse(closing_stream(body), status_code=status, headers=headers, media_type=media_type)
