"""``Bundle``: a compressed model in memory, and bundle file I/O (format v1).

``export_bundle`` (a trained model to a ``Bundle``) lives in ``mcnc_core.export``: this format
module imports neither training nor decoding.

The file format is specified in ``docs/bundle-format.md``; this module is its reference
implementation. Reading is strict and bounded: every size is checked against the buffer and
``ReadLimits`` before anything proportional to it is allocated.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mcnc_core.config import MCNCConfig
from mcnc_core.errors import (
    BundleError,
    BundleFormatError,
    BundleLimitError,
    ConfigError,
    GeneratorMismatchError,
    ManifestError,
    MissingTensorError,
    NonFiniteError,
    UnexpectedTensorError,
    UnsupportedVersionError,
)
from mcnc_core.fingerprint import FINGERPRINT_ALGORITHM, N_SAMPLES
from mcnc_core.generator import (
    GENERATOR_FAMILY,
    INIT_RULES,
    GeneratorSpec,
    generator_sha256,
    verified_generator_sha256,
)
from mcnc_core.manifest import (
    FLOAT_DTYPES,
    BaseRef,
    TensorEntry,
    decode_bytes,
    manifest_from_json,
    manifest_to_json,
)
from mcnc_core.safetensors_io import (
    DTYPE_TO_TORCH,
    ITEMSIZE,
    TORCH_TO_DTYPE,
    HeaderEntry,
    build_header,
    parse_header,
    tensor_bytes,
)

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "Bundle",
    "ReadLimits",
    "load_bundle",
    "peak_decode_bytes",
    "save_bundle",
]

BUNDLE_FORMAT = "mcnc-bundle"
BUNDLE_FORMAT_VERSION = 1
ALPHA, BETA, RAW_PREFIX = "mcnc.alpha", "mcnc.beta", "raw."
_REQUIRED_KEYS = {
    "format",
    "format_version",
    "generator",
    "generator_sha256",
    "config",
    "mode",
    "rank",
    "manifest",
    "fingerprint",
}


@dataclass(frozen=True)
class ReadLimits:
    """Bounds a reader enforces before allocating; a bundle beyond any is a ``BundleLimitError``.

    Attributes:
        max_bytes: whole file (default 2 GiB).
        max_header_bytes: safetensors JSON header (default 32 MiB).
        max_params: parameters the manifest may declare in all (default 1e11).
        max_tensor_params: parameters of any single tensor (default 2**34).
        max_tensors: manifest entries (default 1,000,000).
        max_generator_numel: numbers in the generator's weights, which a reader must build to
            check the bundle (default 2**24: 64 MiB of float32, ~3 s of PRNG on one core; the
            paper's largest generators hold ~1.1M).
        max_generator_macs: multiply-adds of the generator's Gram matrix, ``width² · chunk_size``
            (default 2**33: a few seconds on one core; width 1024 with chunk_size 8192).
        max_factor_params: numbers the decode of any single tensor generates, ``(rows + cols) ·
            rank`` for low-rank factors (``numel`` at rank 0); ``None``: ``max_tensor_params``. A
            tiny tensor at a huge rank would otherwise decode gigabytes of factors.
    """

    max_bytes: int = 2 << 30
    max_header_bytes: int = 32 << 20
    max_params: int = 10**11
    max_tensor_params: int = 2**34
    max_tensors: int = 1_000_000
    max_generator_numel: int = 2**24
    max_generator_macs: int = 2**33
    max_factor_params: int | None = None


@dataclass(eq=False)
class Bundle:
    """A compressed model: generator spec, codes, raw tensors, manifest, base reference, fingerprint.

    Attributes:
        spec: the generator (with its seed).
        config: the ``MCNCConfig`` it was trained with (informational beyond mode and rank).
        manifest: every output tensor, in state_dict order.
        alpha: ``(N, k)`` float32 codes of all compressed tensors, in manifest order.
        beta: ``(N,)`` float32 scales.
        raw: tensors stored verbatim, by output name.
        base: delta mode: the base reference; ``None`` in full mode.
        fingerprint: per floating-point output tensor, ``[l2, sum, s_0..s_7]`` (see ``fingerprint``).
        metadata: extra ``x-`` metadata carried verbatim.
    """

    spec: GeneratorSpec
    config: MCNCConfig
    manifest: tuple[TensorEntry, ...]
    alpha: Tensor
    beta: Tensor
    raw: dict[str, Tensor]
    base: BaseRef | None
    fingerprint: dict[str, list[float]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def num_params(self) -> int:
        """Parameters of the reconstructed state dict."""
        return sum(e.numel for e in self.manifest)

    @property
    def reconstructed_nbytes(self) -> int:
        """Bytes of the reconstructed tensors at their manifest dtypes (safetensors data size)."""
        return sum(e.numel * ITEMSIZE[e.dtype] for e in self.manifest)

    @property
    def stored_numbers(self) -> int:
        """Numbers the bundle stores: codes, scales and raw tensors."""
        return self.alpha.numel() + self.beta.numel() + sum(t.numel() for t in self.raw.values())

    def entry(self, name: str) -> TensorEntry:
        for e in self.manifest:
            if e.name == name:
                return e
        raise KeyError(name)

    def header_metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of this bundle's file."""
        meta = {
            "format": BUNDLE_FORMAT,
            "format_version": str(BUNDLE_FORMAT_VERSION),
            "generator": _dumps(self.spec.to_dict()),
            "generator_sha256": generator_sha256(self.spec),
            "config": _dumps(self.config.to_dict()),
            "mode": self.mode,
            "rank": str(self.config.rank),
            "manifest": _dumps(manifest_to_json(self.manifest)),
            "fingerprint": _dumps({"algorithm": FINGERPRINT_ALGORITHM, "tensors": self.fingerprint}),
        }
        if self.base is not None:
            meta["base"] = _dumps(self.base.to_json())
        meta.update(self.metadata)
        return meta

    def to_bytes(self) -> bytes:
        """Serialise (deterministically) and check the result with the strict reader.

        Raises:
            BundleError: if the bundle is inconsistent (the same errors ``from_bytes`` raises).
        """
        tensors = [(ALPHA, self.alpha), (BETA, self.beta)]
        tensors += [
            (RAW_PREFIX + e.name, self.raw[e.name]) for e in self.manifest if e.storage == "raw" and e.name in self.raw
        ]
        prefix, _ = build_header([(n, _dtype_code(n, t), tuple(t.shape)) for n, t in tensors], self.header_metadata())
        data = b"".join([prefix, *(tensor_bytes(t) for _, t in tensors)])
        Bundle.from_bytes(data)  # a writer must never produce what the reader refuses
        return data

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, *, limits: ReadLimits | None = None) -> Bundle:
        """Parse and fully validate a bundle (see ``docs/bundle-format.md``, "Reader requirements").

        Raises:
            BundleFormatError, UnsupportedVersionError, BundleLimitError, ManifestError (and its
            Duplicate/Missing/UnexpectedTensorError), NonFiniteError, GeneratorMismatchError.
        """
        limits = limits or ReadLimits()
        if len(data) > limits.max_bytes:
            raise BundleLimitError(f"bundle is {len(data)} bytes, over the limit of {limits.max_bytes}")
        meta, entries, data_start = parse_header(
            data, max_header_bytes=limits.max_header_bytes, max_numel=limits.max_tensor_params
        )
        spec, config, manifest, base, fingerprint, extra = _parse_metadata(meta, limits)
        tensors = _read_tensors(data, data_start, entries, spec, manifest)
        bundle = cls(spec, config, manifest, tensors.pop(ALPHA), tensors.pop(BETA), tensors, base, fingerprint, extra)
        expected = meta["generator_sha256"]
        actual = verified_generator_sha256(spec, expected)  # a mismatching generator is not cached
        if actual != expected:
            raise GeneratorMismatchError(
                f"generator rebuilt from the spec has sha256 {actual}, the bundle records {expected}; "
                "the file was altered or written by an incompatible implementation"
            )
        return bundle


def peak_decode_bytes(bundle: Bundle, dtype: Any = None) -> int:
    """Bytes the decode of the bundle's largest tensor allocates (``manifest.decode_bytes``): what
    ``iter_reconstruct`` needs at once besides the tensors its consumer still holds.

    Args:
        bundle: the bundle (its manifest, chunk size and mode are read; nothing is decoded).
        dtype: the output dtype asked for (``torch.dtype``, safetensors code, or ``None``).
    """
    delta = bundle.base is not None
    chunk = bundle.spec.chunk_size
    return max((decode_bytes(e, dtype, chunk_size=chunk, delta=delta) for e in bundle.manifest), default=0)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False)


def _dtype_code(name: str, t: Tensor) -> str:
    if t.dtype not in TORCH_TO_DTYPE:
        raise BundleError(f"tensor {name!r} has dtype {t.dtype}, which bundles cannot store")
    return TORCH_TO_DTYPE[t.dtype]


def _json(meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except (ValueError, RecursionError) as exc:
        raise BundleFormatError(f"metadata {key!r} is not valid JSON: {exc}") from exc


def _parse_metadata(
    meta: dict[str, str], limits: ReadLimits
) -> tuple[GeneratorSpec, MCNCConfig, tuple[TensorEntry, ...], BaseRef | None, dict[str, list[float]], dict[str, str]]:
    if meta.get("format") != BUNDLE_FORMAT:
        raise UnsupportedVersionError(f"format {meta.get('format')!r} is not {BUNDLE_FORMAT!r}: not an MCNC bundle")
    if meta.get("format_version") != str(BUNDLE_FORMAT_VERSION):
        raise UnsupportedVersionError(
            f"bundle format_version {meta.get('format_version')!r} is not supported "
            f"(this reader implements {BUNDLE_FORMAT_VERSION})"
        )
    missing = sorted(_REQUIRED_KEYS - set(meta))
    if missing:
        raise BundleFormatError(f"metadata lacks required keys {missing}")
    allowed = _REQUIRED_KEYS | {"base"}
    unknown = sorted(k for k in meta if k not in allowed and not k.startswith("x-"))
    if unknown:
        raise BundleFormatError(f"unknown metadata keys {unknown} (extensions must start with 'x-')")
    extra = {k: v for k, v in meta.items() if k.startswith("x-")}

    gen = _json(meta, "generator")
    if isinstance(gen, dict) and (
        gen.get("family") != GENERATOR_FAMILY
        or type(gen.get("version")) is not int
        or gen.get("version") not in INIT_RULES
    ):
        raise UnsupportedVersionError(
            f"generator {gen.get('family')!r} version {gen.get('version')!r} is not supported "
            f"(this reader implements {GENERATOR_FAMILY!r} versions {sorted(INIT_RULES)}); upgrade mcnc"
        )
    try:
        spec = GeneratorSpec.from_dict(gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # training-only keys from newer writers do not matter here
            config = MCNCConfig.from_dict(_json(meta, "config"))
    except ConfigError as exc:
        raise BundleFormatError(f"invalid generator or config metadata: {exc}") from exc
    # Building the generator is the one cost a reader pays before it can check anything else:
    # bound it before any weight is drawn.
    if spec.numel > limits.max_generator_numel:
        raise BundleLimitError(
            f"generator k={spec.k} width={spec.width} depth={spec.depth} chunk_size={spec.chunk_size} has "
            f"{spec.numel} weights, over the limit of {limits.max_generator_numel} (ReadLimits.max_generator_numel)"
        )
    if spec.gram_macs > limits.max_generator_macs:
        raise BundleLimitError(
            f"generator width={spec.width} chunk_size={spec.chunk_size} needs {spec.gram_macs} multiply-adds for "
            f"its Gram matrix, over the limit of {limits.max_generator_macs} (ReadLimits.max_generator_macs)"
        )
    mode = meta["mode"]
    if mode not in ("full", "delta") or mode != config.mode:
        raise ManifestError(f"mode {mode!r} is invalid or disagrees with the config's {config.mode!r}")
    if meta["rank"] != str(config.rank):
        raise ManifestError(f"rank {meta['rank']!r} disagrees with the config's {config.rank}")
    if config.generator_spec() != spec:
        raise ManifestError("generator spec disagrees with the config's k/chunk_size/width/depth/bound/seed")
    manifest_json = _json(meta, "manifest")
    if isinstance(manifest_json, list) and len(manifest_json) > limits.max_tensors:
        raise BundleLimitError(f"manifest lists {len(manifest_json)} tensors, over the limit of {limits.max_tensors}")
    manifest = manifest_from_json(
        manifest_json,
        mode=mode,
        chunk_size=spec.chunk_size,
        max_params=limits.max_params,
        max_tensor_params=limits.max_tensor_params,
        max_factor_params=limits.max_factor_params,
    )
    if mode == "delta":
        if "base" not in meta:
            raise BundleFormatError("delta bundle lacks the 'base' metadata key")
        base: BaseRef | None = BaseRef.from_json(_json(meta, "base"))
    elif "base" in meta:
        raise BundleFormatError("full-mode bundle must not carry a 'base' key")
    else:
        base = None
    return spec, config, manifest, base, _parse_fingerprint(_json(meta, "fingerprint"), manifest), extra


def _parse_fingerprint(fp: Any, manifest: tuple[TensorEntry, ...]) -> dict[str, list[float]]:
    if not isinstance(fp, dict) or set(fp) != {"algorithm", "tensors"} or not isinstance(fp["tensors"], dict):
        raise BundleFormatError("fingerprint must be an object with exactly 'algorithm' and 'tensors'")
    if fp["algorithm"] != FINGERPRINT_ALGORITHM:
        raise UnsupportedVersionError(f"fingerprint algorithm {fp['algorithm']!r} is not {FINGERPRINT_ALGORITHM!r}")
    tensors = fp["tensors"]
    expected = {e.name for e in manifest if e.dtype in FLOAT_DTYPES}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors))[:5], sorted(set(tensors) - expected)[:5]
        raise ManifestError(
            f"fingerprint tensors differ from the manifest's floating tensors: missing {missing}, unexpected {extra}"
        )
    for name, values in tensors.items():
        if not (
            isinstance(values, list)
            and len(values) == 2 + N_SAMPLES
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        ):
            raise BundleFormatError(f"fingerprint of {name!r} must be {2 + N_SAMPLES} finite numbers, got {values!r}")
    return {k: [float(v) for v in vs] for k, vs in tensors.items()}


def _read_tensors(
    data: bytes | bytearray | memoryview,
    start: int,
    entries: dict[str, HeaderEntry],
    spec: GeneratorSpec,
    manifest: tuple[TensorEntry, ...],
) -> dict[str, Tensor]:
    raw_entries = {RAW_PREFIX + e.name: e for e in manifest if e.storage == "raw"}
    expected = {ALPHA, BETA, *raw_entries}
    missing = sorted(expected - set(entries))
    if missing:
        raise MissingTensorError(f"bundle lacks tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    unexpected = sorted(set(entries) - expected)
    if unexpected:
        raise UnexpectedTensorError(f"bundle holds tensors the manifest does not list: {unexpected[:5]}")
    n_chunks = sum(e.chunks for e in manifest if e.storage == "mcnc")
    want = {ALPHA: ("F32", (n_chunks, spec.k)), BETA: ("F32", (n_chunks,))}
    want.update({name: (e.dtype, e.shape) for name, e in raw_entries.items()})
    view = memoryview(data)
    out: dict[str, Tensor] = {}
    for name, (dtype, shape) in want.items():
        h = entries[name]
        if (h.dtype, h.shape) != (dtype, shape):
            raise ManifestError(f"tensor {name!r} is {h.dtype}{list(h.shape)}, the manifest needs {dtype}{list(shape)}")
        t = _frombuffer(view[start + h.begin : start + h.end], DTYPE_TO_TORCH[dtype], shape)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).reshape(-1).nonzero()[0])
            raise NonFiniteError(f"tensor {name!r} holds a non-finite value at flat index {bad}")
        out[name[len(RAW_PREFIX) :] if name.startswith(RAW_PREFIX) else name] = t
    return out


def _frombuffer(buf: memoryview, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    if len(buf) == 0:
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only buffer: we clone at once
        return torch.frombuffer(buf, dtype=dtype).reshape(shape).clone()


def load_bundle(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview, *, limits: ReadLimits | None = None
) -> Bundle:
    """Read a bundle from a path or bytes, strictly (the file size is checked before reading).

    Raises:
        BundleError subclasses (see ``Bundle.from_bytes``); ``FileNotFoundError`` for a missing path.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return Bundle.from_bytes(source, limits=limits)
    limits = limits or ReadLimits()
    path = Path(source)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise BundleLimitError(f"{path} is {size} bytes, over the limit of {limits.max_bytes}")
    return Bundle.from_bytes(path.read_bytes(), limits=limits)


def save_bundle(bundle: Bundle, path: str | os.PathLike[str]) -> int:
    """Write ``bundle`` atomically (temp file in the same directory, fsync, rename).

    Returns:
        The number of bytes written.
    """
    data = bundle.to_bytes()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)
