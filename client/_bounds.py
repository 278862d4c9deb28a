"""What the client accepts from a server it does not trust: deadlines, capped bodies, and a check
of each download as its bytes arrive (size, sha256, safetensors framing).

Pure and I/O-free apart from ``time``: ``_async.py`` (and the generated ``_sync.py``) feed bytes
in, these objects decide. Nothing here buffers more than its cap: an over-long body is refused at
the block that crosses the cap, before it is kept or written.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client._exceptions import DeadlineExceededError, IntegrityError, ResponseTooLargeError

__all__ = [
    "MAX_HEADER",
    "BoundedBody",
    "Deadline",
    "Expect",
    "StreamCheck",
    "bundle_check",
    "declared_length",
    "layout_check",
]

MAX_HEADER = 32 << 20  # a safetensors JSON header (mcnc_core.ReadLimits.max_header_bytes)


def _mib(n: int) -> str:
    return f"{n:,} B ({n / (1 << 20):.1f} MiB)"


class Deadline:
    """A wall-clock bound on one request or download, retries and back-off included.

    Checked after every block received (a read itself waits at most the client's ``timeout``,
    and never past the deadline: ``read_timeout`` gives what is left for the next request).
    """

    def __init__(self, seconds: float, what: str, setting: str) -> None:
        self.seconds, self.what, self.setting = seconds, what, setting
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def read_timeout(self, timeout: float) -> float:
        """The per-operation timeout for the next request: ``timeout``, less if the deadline is nearer."""
        return max(min(timeout, self.remaining()), 0.001)

    def allows(self, delay: float) -> bool:
        """Whether sleeping ``delay`` seconds still leaves time before the deadline."""
        return delay < self.remaining()

    def error(self) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"{self.what} did not finish within {self.seconds:g} s (retries included): the server sends too "
            f"slowly or not at all; raise {self.setting} for a slow link"
        )

    def check(self) -> None:
        if time.monotonic() >= self.end:
            raise self.error()


def declared_length(headers: Any) -> int | None:
    """The ``Content-Length`` a response declares, or ``None`` (absent or not a number)."""
    text = headers.get("content-length")
    return int(text) if text is not None and text.strip().isdigit() else None


def _too_large(
    what: str, size: int, limit: int, setting: str | None, source: str = "the size the server declared"
) -> ResponseTooLargeError:
    bound = f"the client's cap of {_mib(limit)} ({setting})" if setting else f"{_mib(limit)}, {source}"
    fix = f"; raise {setting} if the server is right" if setting else "; the server sends more than it said"
    return ResponseTooLargeError(f"{what}: {size:,} B or more is over {bound}{fix}", limit=limit, setting=setting)


class BoundedBody:
    """An API response body read into memory, at most ``limit`` bytes (setting ``setting``)."""

    def __init__(self, what: str, limit: int, setting: str, headers: Any) -> None:
        self.what, self.limit, self.setting = what, limit, setting
        self.parts: list[bytes] = []
        self.size = 0
        declared = declared_length(headers)
        if declared is not None and declared > limit:
            raise _too_large(f"{what} declares a body of {declared:,} B", declared, limit, setting)

    def feed(self, block: bytes) -> None:
        self.size += len(block)
        if self.size > self.limit:
            self.parts.clear()
            raise _too_large(f"the body of {self.what}", self.size, self.limit, self.setting)
        self.parts.append(block)

    def value(self) -> bytes:
        return b"".join(self.parts)


@dataclass(frozen=True)
class Expect:
    """What a download must be.

    Attributes:
        what: the thing downloaded, for messages (``"bundle sha256:ab12…"``).
        limit: bytes it may have at most.
        setting: the setting behind ``limit``; ``None`` when the bound comes from elsewhere
            (``source``: the size ``GET /models/{ref}`` declared, what the bundle's manifest implies).
        framed: a safetensors file, which must end exactly where its header says (a body cut
            short, chunked or not, is refused whatever ``verify`` says).
        on_header: called with the parsed header; raises ``IntegrityError`` for one that cannot be
            right (not a bundle, tensors the bundle does not read), before the data is downloaded.
    """

    what: str
    limit: int
    setting: str | None
    source: str = "the size the server declared"
    framed: bool = True
    on_header: Callable[[dict[str, Any]], None] | None = None


class StreamCheck:
    """Checks one download as its bytes arrive: at most ``expect.limit`` bytes, the sha256 as it
    goes and, for a safetensors file, its framing: once its header is in, the total it declares
    must fit the limit (and equal a declared ``Content-Length``), and not one byte more is taken.

    ``feed`` raises before the offending block is written; ``finish`` raises for a file that
    ended early, and returns the sha256 otherwise.
    """

    def __init__(self, expect: Expect, declared_total: int | None) -> None:
        self.expect, self.declared = expect, declared_total
        if declared_total is not None and declared_total > expect.limit:
            raise _too_large(
                f"{expect.what} declares {declared_total:,} B",
                declared_total,
                expect.limit,
                expect.setting,
                expect.source,
            )
        self.size = 0
        self.sha = hashlib.sha256()
        self.head = bytearray()
        self.end: int | None = None  # where a safetensors file ends, once its header is in

    def feed(self, block: bytes) -> None:
        new = self.size + len(block)
        if new > self.expect.limit:
            raise _too_large(self.expect.what, new, self.expect.limit, self.expect.setting, self.expect.source)
        if self.expect.framed and self.end is None:
            self._frame(block)
        if self.end is not None and new > self.end:
            raise IntegrityError(f"{self.expect.what}: more bytes than the {self.end:,} its header declares")
        self.sha.update(block)
        self.size = new

    def feed_file(self, path: Path) -> None:
        """Feed what a resumed download already holds on disk."""
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                self.feed(block)

    def _frame(self, block: bytes) -> None:
        self.head += block[: max(0, 8 + MAX_HEADER - len(self.head))]  # never more than a header's worth
        if len(self.head) < 8:
            return
        n = int.from_bytes(self.head[:8], "little")
        what = self.expect.what
        if n > MAX_HEADER:
            raise IntegrityError(f"{what}: not a safetensors file (a header of {n:,} B, over {_mib(MAX_HEADER)})")
        if len(self.head) < 8 + n:
            return
        try:
            header = json.loads(bytes(self.head[8 : 8 + n]))
        except ValueError as exc:
            raise IntegrityError(f"{what}: not a safetensors file (its header is not JSON: {exc})") from None
        end = 8 + n + _data_end(header, what)
        if end > self.expect.limit:
            e = self.expect
            raise _too_large(f"{what} declares {end:,} B in its header", end, e.limit, e.setting, e.source)
        if self.declared is not None and end != self.declared:
            raise IntegrityError(f"{what}: its header declares {end:,} B, the response {self.declared:,} B")
        if self.expect.on_header is not None:
            self.expect.on_header(header)
        self.end, self.head = end, bytearray()

    def finish(self) -> str:
        """The sha256 of everything fed, once the file is whole.

        Raises:
            IntegrityError: a safetensors file that ended before its header said it would.
        """
        if self.expect.framed:
            if self.end is None:
                raise IntegrityError(f"{self.expect.what} ended after {self.size:,} B, inside its header")
            if self.size != self.end:
                raise IntegrityError(
                    f"{self.expect.what} ended at {self.size:,} of the {self.end:,} B its header declares "
                    "(the body was cut short)"
                )
        return self.sha.hexdigest()


def _data_end(header: Any, what: str) -> int:
    """Where a safetensors header's data ends (relative to the data's start)."""
    if not isinstance(header, dict):
        raise IntegrityError(f"{what}: not a safetensors file (its header is not an object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        ok = isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        if not ok or not 0 <= offsets[0] <= offsets[1]:
            raise IntegrityError(f"{what}: not a safetensors file (tensor {name!r} has no valid data_offsets)")
        end = max(end, offsets[1])
    return end


def layout_check(what: str, want: Mapping[str, tuple[str, tuple[int, ...]]]) -> Callable[[dict[str, Any]], None]:
    """An ``on_header`` that wants exactly the tensors ``want`` (name -> (dtype, shape))."""

    def check(header: dict[str, Any]) -> None:
        got = {k: v for k, v in header.items() if k != "__metadata__"}
        if set(got) != set(want):
            missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
            raise IntegrityError(
                f"{what}: its tensors differ from the bundle's: missing {missing[:5]}, extra {extra[:5]}"
            )
        for name, (dtype, shape) in want.items():
            info = got[name]
            if info.get("dtype") != dtype or tuple(info.get("shape") or ()) != shape:
                raise IntegrityError(
                    f"{what}: tensor {name!r} is {info.get('dtype')}{info.get('shape')}, the bundle says "
                    f"{dtype}{list(shape)}"
                )

    return check


def bundle_check(what: str) -> Callable[[dict[str, Any]], None]:
    """An ``on_header`` that wants an MCNC bundle's header (``__metadata__.format``)."""

    def check(header: dict[str, Any]) -> None:
        meta = header.get("__metadata__")
        if not isinstance(meta, dict) or meta.get("format") != "mcnc-bundle":
            raise IntegrityError(f"{what}: not an MCNC bundle (its header has no format 'mcnc-bundle')")

    return check
