"""Device names and float32 precision: what every decode path (reconstruction, backends, PEFT export) shares.

Kept apart from ``mcnc_core.reconstruct`` and ``mcnc_core.backend`` so that neither imports the other
to reach them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

from mcnc_core.errors import ConfigError, DeviceUnavailableError

__all__ = ["exact_float32", "resolve_device"]

_PRECISION_LOCK = threading.Lock()


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Full IEEE float32 matmuls inside the block.

    A no-op when the process already runs them (PyTorch's default, and every server): nothing
    global changes. Otherwise the setting is raised and restored under a lock; other threads of
    the process see "highest" meanwhile (raising precision never breaks a caller).
    """
    if torch.get_float32_matmul_precision() == "highest":
        yield
        return
    with _PRECISION_LOCK:
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists here (CUDA with its index).

    Raises:
        ConfigError: not a device string/object torch knows.
        DeviceUnavailableError: a CUDA device this machine does not have.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device {device!r} is not a device torch knows (use 'cpu', 'cuda' or 'cuda:N'): {exc}"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceUnavailableError(f"device {device!r}: no CUDA device is available here; use device='cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= count:
            raise DeviceUnavailableError(f"device {device!r}: this machine has {count} CUDA device(s)")
    return dev
