"""How much memory this process may use (cgroup-aware), and a byte budget that reconstructions share.

A server in a container sees the host's RAM in ``/proc/meminfo`` but is killed at its cgroup's
limit; the budget must come from the smaller of the two.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["ByteBudget", "process_memory_limit"]

_CGROUP_FILES = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2 (the process's own cgroup is mounted here in containers)
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def _cgroup_limit() -> int | None:
    for path in _CGROUP_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "no limit", v2 "max"
            return int(text)
    return None


def process_memory_limit() -> int:
    """Bytes this process may use: the cgroup limit when one is set, else the machine's RAM."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cgroup = _cgroup_limit()
    return min(ram, cgroup) if cgroup is not None else ram


class ByteBudget:
    """A counting semaphore over bytes: ``acquire(n)`` blocks until ``n`` more fit in ``total``.

    A request larger than ``total`` can never fit; callers refuse it up front (``fits``).
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._cond = threading.Condition()

    def fits(self, n: int) -> bool:
        return n <= self.total

    def acquire(self, n: int, timeout: float) -> bool:
        """Reserve ``n`` bytes, waiting up to ``timeout`` seconds; False when they never freed up."""
        if not self.fits(n):
            return False
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + n <= self.total, timeout=timeout):
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()
