"""How much memory a local reconstruction may allocate here, and the check made before it starts.

A bundle of a few kilobytes can declare billions of parameters (or low-rank factors far larger
than its tensors); the client counts what a decode really allocates (``mcnc_core.decode_bytes``,
the server's count) and refuses before allocating anything, instead of being killed by the
kernel's OOM killer half-way.
"""

from __future__ import annotations

import os
from pathlib import Path

from client._exceptions import InsufficientMemoryError

__all__ = ["available_bytes", "check_fits"]

_CGROUP_V2 = Path("/sys/fs/cgroup")  # in a container, the process's own cgroup is mounted here
_CGROUP_V1 = Path("/sys/fs/cgroup/memory")
_UNLIMITED = 1 << 60


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) < _UNLIMITED else None  # "max" or a huge v1 number: none


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _own_cgroup_v2() -> Path:
    """This process's cgroup v2 directory (``/proc/self/cgroup``'s ``0::<path>``), else the mount root."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = _CGROUP_V2 / line[3:].strip().lstrip("/")
                if (own / "memory.max").is_file():
                    return own
    except OSError:
        pass
    return _CGROUP_V2


def _cgroup_headroom() -> int | None:
    """The cgroup's limit less what it uses now (v2, else v1), or ``None`` without a limit."""
    v2 = _own_cgroup_v2()
    for limit, usage in (
        (v2 / "memory.max", v2 / "memory.current"),
        (_CGROUP_V1 / "memory.limit_in_bytes", _CGROUP_V1 / "memory.usage_in_bytes"),
    ):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None:
            return max(cap - (used or 0), 0)
    return None


def _address_space_headroom() -> int | None:
    """``RLIMIT_AS`` less the address space this process maps now, or ``None`` without a limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return soft
    return max(soft - pages * os.sysconf("SC_PAGE_SIZE"), 0)


def available_bytes(device: str = "cpu") -> int:
    """Bytes this process can allocate now on ``device``.

    CPU: the least of free memory (``MemAvailable``), the cgroup's headroom and the ``RLIMIT_AS``
    headroom, the ones that exist (else the machine's RAM). CUDA: the device's free memory.
    """
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    found = [n for n in (_meminfo("MemAvailable"), _cgroup_headroom(), _address_space_headroom()) if n is not None]
    if found:
        return min(found)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(what: str, needed: int, *, device: str, limit: int | None) -> None:
    """Refuse ``what`` when it would allocate more than ``limit`` (``MCNC_MAX_LOAD_BYTES``), else
    than ``available_bytes(device)``.

    Raises:
        InsufficientMemoryError: naming both figures and the setting.
    """
    available = limit if limit is not None else available_bytes(device)
    if needed > available:
        source = "MCNC_MAX_LOAD_BYTES" if limit is not None else f"free memory on {device}; MCNC_MAX_LOAD_BYTES"
        raise InsufficientMemoryError(
            f"{what} needs {needed:,} B ({needed / (1 << 30):.2f} GiB, outputs and the decode's peak, low-rank "
            f"factors included), more than the {available:,} B ({available / (1 << 30):.2f} GiB) it may use "
            f"({source} sets a bound); nothing was allocated. Reconstruct on a bigger machine, or stream the "
            "server's reconstruction with download_weights",
            needed=needed,
            available=available,
        )
