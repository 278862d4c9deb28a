"""``Reconstructor``: the one owner of decode memory and compute. Every decode the server runs —
weights, verification, PEFT adapter export — goes through it and reserves what it will really allocate.

It holds the device backend, the compute slots (``MCNC_MAX_CONCURRENT_RECONSTRUCTIONS``), the byte
budget (``MCNC_RECONSTRUCTION_MEMORY_BYTES``) and admission (``MCNC_MAX_QUEUED_RECONSTRUCTIONS``).
A reservation is counted from the manifest alone (``mcnc_core.manifest.decode_bytes``: the output,
cast scratch, low-rank factors and their product, a delta's base tensor) plus the output once more
(the tensor a consumer is still sending while the next one decodes), and never less than
``WORKING_SET_PER_PARAM`` bytes per parameter. A bundle whose largest reservation is over the whole
budget can never run: ``check_fits`` refuses it (507) before any status line, and at upload.

It never touches a store: callers hand it the parsed bundle and, for deltas, the base tensors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

import mcnc_core
from mcnc_core.backend import backend_for
from mcnc_core.bundle import Bundle, ReadLimits
from mcnc_core.generator import cpu_gemm_kernel
from mcnc_core.hostmem import OutputRecycler
from mcnc_core.manifest import TensorEntry, decode_bytes
from mcnc_core.peft import peft_adapter_files
from mcnc_core.reconstruct import iter_reconstruct, output_dtype
from mcnc_core.safetensors_io import ITEMSIZE, TORCH_TO_DTYPE
from service.config import Settings
from service.errors import BusyError, InsufficientMemoryError
from service.memory import ByteBudget
from service.metrics import Metrics

__all__ = ["OUTPUT_DTYPES", "WORKING_SET_PER_PARAM", "Reconstructor", "numerics_profile"]

# Bytes a tensor needs per parameter, at least, while it is built and sent: its float32 output, a
# cast's scratch, and the previous tensor still being sent (the floor under the exact count).
WORKING_SET_PER_PARAM = 12
# The output dtypes a weights request may ask for (None: each tensor's own).
OUTPUT_DTYPES: tuple[torch.dtype | None, ...] = (None, torch.float32, torch.float16, torch.bfloat16)


def numerics_profile(device: torch.device) -> str:
    """What decides the last bits of a reconstruction: device kind/name, on CPU the vector ISA torch
    dispatches (its kernels, MKL's among them, differ by ISA) and the output GEMM's kernel
    (``native`` where mcnc_core's own is built and the CPU has AVX-512F), and the torch and mcnc
    versions."""
    mcnc = f"mcnc-{mcnc_core.__version__}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"cuda/{name}/cuda-{torch.version.cuda}/torch-{torch.__version__}/{mcnc}"
    isa = torch.backends.cpu.get_cpu_capability()
    return f"cpu/torch-{torch.__version__}/{isa}/{cpu_gemm_kernel()}/{mcnc}"


def _code(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else TORCH_TO_DTYPE[dtype]


class Reconstructor:
    """Device, slots, memory budget and admission for every decode; runs in worker threads only."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        # CPU: one recycler for all reconstructions: a request reuses the memory of tensors that
        # earlier ones dropped (three per stream: the one sent, the one being built, a cast's scratch).
        # CUDA: tensors reach host memory through pinned buffers on a copy stream, overlapped with
        # the next decode.
        device = "auto" if settings.device == "auto" else settings.device
        probe = backend_for(device)
        recycler = None
        if probe.device.type == "cpu" and settings.recycle_bytes > 0:
            keep = 3 * settings.max_concurrent_reconstructions
            recycler = OutputRecycler(keep=keep, max_bytes=settings.recycle_bytes)
            probe = backend_for("cpu", recycler=recycler)
        self.backend = probe
        self.device = probe.device
        self.profile = numerics_profile(self.device)
        self.budget = ByteBudget(settings.resolved_reconstruction_memory())
        self._slots = threading.BoundedSemaphore(settings.max_concurrent_reconstructions)
        self._lock = threading.Lock()
        self._pending = 0

    # what a decode costs
    @property
    def pending(self) -> int:
        """Decodes running or waiting for a slot or memory."""
        with self._lock:
            return self._pending

    def reservation(self, bundle: Bundle, entry: TensorEntry, dtype: torch.dtype | None) -> int:
        """Bytes reserved while ``entry`` is decoded (to ``dtype``) and handed on (module docstring)."""
        code = _code(output_dtype(entry, dtype))
        exact = decode_bytes(entry, code, chunk_size=bundle.spec.chunk_size, delta=bundle.base is not None)
        out = entry.numel * ITEMSIZE[code or entry.dtype]
        return max(exact + out, entry.numel * WORKING_SET_PER_PARAM)

    def largest(self, bundle: Bundle, dtypes: tuple[torch.dtype | None, ...] = OUTPUT_DTYPES) -> int:
        """The largest reservation any tensor of ``bundle`` needs, over ``dtypes``."""
        return max((self.reservation(bundle, e, d) for e in bundle.manifest for d in dtypes), default=0)

    def check_fits(self, bundle: Bundle, dtypes: tuple[torch.dtype | None, ...] = OUTPUT_DTYPES) -> None:
        """Raises InsufficientMemoryError (507) when a tensor of ``bundle`` cannot fit the budget."""
        need = self.largest(bundle, dtypes)
        if need > self.budget.total:
            worst = max(bundle.manifest, key=lambda e: max(self.reservation(bundle, e, d) for d in dtypes))
            raise InsufficientMemoryError(
                f"tensor {worst.name!r} (shape {list(worst.shape)}, rank {worst.rank}) needs {need:,} bytes to "
                f"reconstruct, over this server's budget of {self.budget.total:,} (MCNC_RECONSTRUCTION_MEMORY_BYTES); "
                "raise it, or load the bundle where more memory is available (client.load)"
            )

    def read_limits(self) -> ReadLimits:
        """The strict reader's bounds for uploads: sizes no reservation under this budget could hold
        are refused while the manifest is parsed, before anything proportional to them exists."""
        s = self.settings
        return ReadLimits(
            max_bytes=s.max_upload_bytes,
            max_params=s.max_params,
            max_tensor_params=max(1, self.budget.total // WORKING_SET_PER_PARAM),
            # every generated factor number is float32, held twice (decoded blocks and their concatenation)
            max_factor_params=max(1, self.budget.total // 8),
        )

    def adapter_bytes(self, bundle: Bundle, dtype: torch.dtype) -> int:
        """Bytes ``peft_adapter_files`` holds at its peak: every tensor's decoded factors (float32, whole
        chunks), one more tensor's blocks, the cast factors and raw tensors twice (tensors, then the file)."""
        chunk = bundle.spec.chunk_size
        lowrank = [e for e in bundle.manifest if e.storage == "mcnc"]
        held = sum(e.chunks * chunk * 4 for e in lowrank)
        blocks = max((e.chunks * chunk * 4 for e in lowrank), default=0)
        cast = sum(e.factor_params * ITEMSIZE[TORCH_TO_DTYPE[dtype]] for e in lowrank)
        raw = sum(t.numel() * t.element_size() for t in bundle.raw.values())
        return held + blocks + 2 * (cast + raw)

    # admission
    def admit(self) -> None:
        """Refuse (429) when too many decodes are already running or queued."""
        limit = self.settings.max_concurrent_reconstructions + self.settings.max_queued_reconstructions
        pending = self.pending
        if pending >= limit:
            raise BusyError(
                f"{pending} reconstructions running or queued (limit {limit}); retry later",
                headers={"Retry-After": "1"},
            )

    def _enter(self) -> None:
        with self._lock:
            self._pending += 1

    def _leave(self) -> None:
        with self._lock:
            self._pending -= 1

    def _reserve(self, need: int) -> None:
        if not self.budget.fits(need):
            raise InsufficientMemoryError(
                f"a decode needs {need:,} bytes, over this server's budget of {self.budget.total:,} "
                "(MCNC_RECONSTRUCTION_MEMORY_BYTES)"
            )
        timeout = self.settings.load_timeout
        if not self.budget.acquire(need, timeout):
            raise TimeoutError(f"no reconstruction memory ({need:,} bytes) within {timeout}s")

    # decodes
    def reconstruct(
        self,
        bundle: Bundle,
        base: Mapping[str, Tensor] | None,
        *,
        names: list[str] | None = None,
        dtype: torch.dtype | None = None,
        kind: str,
        verify: bool = False,
    ) -> Iterator[tuple[str, Tensor]]:
        """``iter_reconstruct`` of ``names`` (None: all) as host tensors, each under its reservation.

        Each tensor takes a slot and its reservation, and gives both back before it is yielded: a
        consumer slow to send never holds compute or budget others wait for.

        Raises:
            InsufficientMemoryError: a tensor over the whole budget (``check_fits`` first avoids it).
            TimeoutError: no slot or memory within ``MCNC_LOAD_TIMEOUT``.
            mcnc_core errors: ``BaseMismatchError``, ``FingerprintMismatchError`` (with ``verify``).
        """
        self._enter()
        try:
            self.metrics.reconstructions.labels(kind).inc()
            t0 = time.perf_counter()
            wanted = None if names is None else set(names)
            sizes = [self.reservation(bundle, e, dtype) for e in bundle.manifest if wanted is None or e.name in wanted]
            decoded = iter_reconstruct(
                bundle, base, self.device, dtype, verify=verify, verify_base=False, names=names, backend=self.backend
            )
            tensors = self.backend.to_host(decoded)
            timeout = self.settings.load_timeout
            try:
                for need in sizes:
                    self._reserve(need)
                    try:
                        if not self._slots.acquire(timeout=timeout):
                            raise TimeoutError(f"no reconstruction slot within {timeout}s")
                        try:
                            item = next(tensors)
                        finally:
                            self._slots.release()
                    finally:
                        self.budget.release(need)
                    yield item
            finally:
                tensors.close()  # type: ignore[attr-defined]
                decoded.close()  # type: ignore[attr-defined]
            self.metrics.reconstruction_seconds.labels(kind).observe(time.perf_counter() - t0)
        finally:
            self._leave()

    def verify(self, bundle: Bundle, base: Mapping[str, Tensor] | None) -> None:
        """Decode every tensor and check it against the bundle's fingerprint (nothing is kept).

        Raises:
            InsufficientMemoryError: a tensor over the budget.
            mcnc_core.FingerprintMismatchError, mcnc_core.BaseMismatchError: the check failed.
        """
        self.check_fits(bundle, (None,))
        for _name, _t in self.reconstruct(bundle, base, kind="verify", verify=True):
            pass

    def adapter_files(self, bundle: Bundle, dtype: torch.dtype) -> dict[str, bytes]:
        """``peft_adapter_files`` of ``bundle`` under one slot and its whole reservation.

        Raises:
            InsufficientMemoryError: the export needs more than the whole budget.
            BusyError: too many decodes running or queued.
            mcnc_core.ExportError: the bundle has no PEFT LoRA form.
        """
        need = self.adapter_bytes(bundle, dtype)
        if not self.budget.fits(need):
            raise InsufficientMemoryError(
                f"exporting this adapter needs {need:,} bytes, over this server's budget of {self.budget.total:,} "
                "(MCNC_RECONSTRUCTION_MEMORY_BYTES); raise it, or export it where more memory is available "
                "(mcnc pull --format peft)"
            )
        self.admit()
        self._enter()
        try:
            self._reserve(need)
            try:
                timeout = self.settings.load_timeout
                if not self._slots.acquire(timeout=timeout):
                    raise TimeoutError(f"no reconstruction slot within {timeout}s")
                try:
                    start = time.perf_counter()
                    files = peft_adapter_files(bundle, dtype=dtype, device=self.device)
                    self.metrics.reconstructions.labels("adapter").inc()
                    self.metrics.reconstruction_seconds.labels("adapter").observe(time.perf_counter() - start)
                    return files
                finally:
                    self._slots.release()
            finally:
                self.budget.release(need)
        finally:
            self._leave()
