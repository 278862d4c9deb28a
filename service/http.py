"""What routes share: upload staging, the one ranged/conditional response builder, content-type checks.

Routes import this module, never each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool

from service.config import Settings
from service.errors import InvalidRequestError, PayloadTooLargeError, RequestTimeoutError, check_upload_type
from service.http_guard import UploadBudget, UploadSlot
from service.ranges import ClosingStreamingResponse, closing_stream, validate_request
from service.storage import Staged, Store

__all__ = ["check_upload_type", "ranged_response", "receive_body", "staged_upload"]

_BUFFER = 1 << 20


async def receive_body(request: Request, store: Store, settings: Settings, slot: UploadSlot) -> Staged:
    """Stream the request body into a staged temp file, refusing past ``MCNC_MAX_UPLOAD_BYTES`` (413),
    past the staging budget ``slot`` draws on (507: reserved as bytes arrive, so a large declared
    ``Content-Length`` sent slowly holds only what it sent; one over the whole budget is refused at once),
    when no byte comes for ``MCNC_READ_TIMEOUT``, or when
    the whole body has not come within ``MCNC_UPLOAD_DEADLINE`` (408)."""
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        if int(declared) > limit:
            raise PayloadTooLargeError(f"body is {declared} bytes, over the limit of {limit} (MCNC_MAX_UPLOAD_BYTES)")
        slot.check_declared(int(declared))  # one that could never fit: refused before a byte is written
    loop = asyncio.get_running_loop()
    tmp = await run_in_threadpool(store.stage)
    try:
        buf = bytearray()
        chunks = request.stream()
        # The read timeout bounds each pause; the deadline bounds the whole body, so a client dripping a
        # byte just inside each pause cannot hold an upload slot and its staging space for good (N3).
        deadline = loop.time() + settings.upload_deadline
        while True:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                chunk = await asyncio.wait_for(anext(chunks), min(settings.read_timeout, left))
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
                got = tmp.size + len(buf)
                if loop.time() >= deadline:
                    raise RequestTimeoutError(
                        f"the body was not complete {settings.upload_deadline:g} s after the upload began "
                        f"({got} bytes received; MCNC_UPLOAD_DEADLINE): send it faster, or ask the operator "
                        "to raise MCNC_UPLOAD_DEADLINE"
                    ) from None
                raise RequestTimeoutError(
                    f"no body bytes for {settings.read_timeout:g} s after {got} "
                    "(MCNC_READ_TIMEOUT): the upload was abandoned; send the body without pauses"
                ) from None
            if tmp.size + len(buf) + len(chunk) > limit:
                raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes (MCNC_MAX_UPLOAD_BYTES)")
            buf += chunk
            if len(buf) >= _BUFFER:
                slot.reserve_total(tmp.size + len(buf))
                await run_in_threadpool(tmp.write, bytes(buf))
                buf.clear()
        if buf:
            slot.reserve_total(tmp.size + len(buf))
            await run_in_threadpool(tmp.write, bytes(buf))
        if tmp.size == 0:
            raise InvalidRequestError("empty body: send the file as application/octet-stream")
    except BaseException:
        await run_in_threadpool(tmp.discard)
        raise
    return tmp


@asynccontextmanager
async def staged_upload(request: Request, store: Store, settings: Settings) -> AsyncIterator[Staged]:
    """The request body staged on local disk, within the upload budgets (``receive_body``); the
    upload's slot and staging bytes are released on exit, when the caller has stored or refused it."""
    budget: UploadBudget = request.app.state.uploads
    with budget.slot(request.client.host if request.client else None) as slot:
        tmp = await receive_body(request, store, settings, slot)
        try:
            yield tmp
        finally:
            await run_in_threadpool(tmp.discard)


def ranged_response(
    request: Request,
    *,
    total: int,
    etag: str,
    headers: dict[str, str],
    open_body: Callable[[int, int], Iterator[bytes | memoryview]],
    media_type: str = "application/octet-stream",
) -> Response:
    """A representation of ``total`` bytes with ETag/304, Range/206/416 and HEAD.

    ``open_body(start, end)`` runs only for a GET that sends bytes, and before the status line: a blob
    deleted meanwhile (404) or a refused admission (429) is answered as such, never as a 200 cut short.
    The iterator it returns is closed however the response ends.
    """
    headers = dict(headers)
    answer = validate_request(request.headers, total, etag, headers)
    if answer is None:
        return Response(status_code=304, headers=headers)
    status, start, end = answer
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    body = closing_stream(open_body(start, end))
    return ClosingStreamingResponse(body, status_code=status, headers=headers, media_type=media_type)
