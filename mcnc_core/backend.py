"""Device backends: where a reconstruction runs, and how its tensors reach host memory.

A server (or any long-lived caller) keeps one ``Backend`` and asks it for host tensors::

    backend = mcnc_core.backend_for("cuda")      # or "cpu", "auto"
    for name, t in backend.reconstruct(bundle, dtype=torch.float16):
        send(t)                                  # a CPU tensor, on either backend

``CPUBackend`` decodes with the block-parallel worker pool (``mcnc_core.decode``) into memory from
its ``OutputRecycler`` (no page faults for memory a consumer has dropped). ``CUDABackend`` decodes
on the device's current stream and copies each finished tensor to pinned host memory on a second
stream, while the next tensor decodes: the consumer gets host tensors, and no copy waits for a
decode or a decode for a copy.

Neither flips a process-wide setting per tensor: both run float32 matmuls at full precision,
which is PyTorch's default. A process that lowered it (``torch.set_float32_matmul_precision``
"high", i.e. TF32 on CUDA, or bf16 passes on CPU) has it raised around each call and restored
(``exact_float32``): a fingerprint needs IEEE float32 products.
"""

from __future__ import annotations

import functools
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping

import torch
from torch import Tensor

from mcnc_core.devices import exact_float32, resolve_device
from mcnc_core.hostmem import OutputRecycler

__all__ = ["Backend", "CPUBackend", "CUDABackend", "backend_for", "exact_float32"]


def _cuda_empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, *, device: torch.device) -> Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


class Backend(ABC):
    """One device's reconstruction: outputs allocated there, results handed over in host memory.

    Thread-safe: several reconstructions may run at once.
    """

    device: torch.device

    @abstractmethod
    def allocator(self) -> Callable[..., Tensor]:
        """``empty(shape, dtype=torch.float32)`` for the outputs of one reconstruction, on ``device``."""

    @abstractmethod
    def to_host(self, items: Iterator[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
        """The same ``(name, tensor)`` items with each tensor in host memory, in order.

        Consumes ``items`` lazily (one ahead at most): producing the next item overlaps with
        handing over the previous one where the device allows it.
        """

    def reconstruct(
        self,
        bundle: object,
        base: Mapping[str, Tensor] | None = None,
        dtype: torch.dtype | str | None = None,
        *,
        names: Collection[str] | None = None,
        verify: bool = False,
        verify_base: bool = True,
    ) -> Iterator[tuple[str, Tensor]]:
        """``iter_reconstruct`` on this backend, yielding host (CPU) tensors in manifest order.

        Same arguments and errors as ``mcnc_core.iter_reconstruct``.
        """
        from mcnc_core.reconstruct import iter_reconstruct

        items = iter_reconstruct(
            bundle,  # type: ignore[arg-type]
            base,
            self.device,
            dtype,
            verify=verify,
            verify_base=verify_base,
            names=names,
            backend=self,
        )
        return self.to_host(items)


class CPUBackend(Backend):
    """Decoding on the CPU's worker pool into recycled host memory (host tensors as produced).

    Args:
        recycler: where large outputs get their memory; a long-lived one (a server's) reuses the
            memory of tensors dropped after earlier calls too. ``None``: a new one per
            reconstruction, which reuses memory within that reconstruction only.
    """

    def __init__(self, recycler: OutputRecycler | None = None) -> None:
        self.device = torch.device("cpu")
        self.recycler = recycler

    def allocator(self) -> Callable[..., Tensor]:
        return (self.recycler or OutputRecycler()).empty

    def to_host(self, items: Iterator[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
        return items


class CUDABackend(Backend):
    """Decoding on a CUDA device; tensors reach the host through pinned memory on a copy stream.

    For each tensor the decode is enqueued on the device's current stream; an event marks its end,
    the copy stream waits for that event only and copies into pinned host memory (PyTorch's
    caching host allocator, so pinned blocks are reused), and the tensor is handed over once its
    copy has finished, by which time the next tensor's decode is already queued. The device
    tensor's memory is not reused before its copy ends (``record_stream``).

    Args:
        device: a CUDA device (``"cuda"``, ``"cuda:1"``, a ``torch.device``).

    Raises:
        DeviceUnavailableError: no such CUDA device here.
    """

    def __init__(self, device: str | torch.device = "cuda") -> None:
        self.device = resolve_device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CUDABackend needs a CUDA device, got {self.device}")
        self._copy_streams: dict[int, torch.cuda.Stream] = {}
        self._lock = threading.Lock()

    def allocator(self) -> Callable[..., Tensor]:
        return functools.partial(_cuda_empty, device=self.device)

    def _copy_stream(self) -> torch.cuda.Stream:
        # one per calling thread: concurrent reconstructions never queue behind each other's copies
        key = threading.get_ident()
        with self._lock:
            stream = self._copy_streams.get(key)
            if stream is None:
                stream = self._copy_streams[key] = torch.cuda.Stream(self.device)
            return stream

    def to_host(self, items: Iterator[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
        copy = self._copy_stream()
        pending: tuple[str, Tensor, torch.cuda.Event] | None = None
        for name, t in items:
            if t.device.type == "cuda":
                produced = torch.cuda.Event()
                produced.record(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(copy):
                    copy.wait_event(produced)
                    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                    host.copy_(t, non_blocking=True)
                    t.record_stream(copy)  # its memory is not reused until the copy is done
                    copied = torch.cuda.Event()
                    copied.record(copy)
            else:  # a tensor already on the host (none today; kept correct if one appears)
                host, copied = t, torch.cuda.Event()
                copied.record(copy)
            del t
            if pending is not None:
                pending[2].synchronize()
                yield pending[0], pending[1]
            pending = (name, host, copied)
        if pending is not None:
            pending[2].synchronize()
            yield pending[0], pending[1]


def backend_for(device: str | torch.device = "auto", *, recycler: OutputRecycler | None = None) -> Backend:
    """The backend for ``device``: ``"auto"`` is CUDA when available, else the CPU.

    Raises:
        DeviceUnavailableError: a CUDA device this machine does not have.
        ConfigError: not a device torch knows.
    """
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = resolve_device(device)
    if dev.type == "cuda":
        return CUDABackend(dev)
    if dev.type != "cpu":
        from mcnc_core.errors import ConfigError

        raise ConfigError(f"no reconstruction backend for device {dev}; use 'cpu' or 'cuda'")
    return CPUBackend(recycler)
