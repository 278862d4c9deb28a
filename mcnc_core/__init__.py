"""MCNC: manifold-constrained neural compression — generator, training, bundles, reconstruction.

Public names load on first use (PEP 562), so ``import mcnc_core`` and torch-free modules such as
``mcnc_core.refs`` or the ``mcnc`` command's parser do not import torch; ``from mcnc_core import
compress`` works as usual. Submodules are reachable as attributes too (``mcnc_core.recipe``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcnc_core.backend import Backend, CPUBackend, CUDABackend, backend_for
    from mcnc_core.bundle import Bundle, ReadLimits, load_bundle, peak_decode_bytes, save_bundle
    from mcnc_core.compress import base_state_dict, compress, materialize
    from mcnc_core.config import MCNCConfig
    from mcnc_core.errors import (
        BaseMismatchError,
        BundleError,
        BundleFormatError,
        BundleLimitError,
        ConfigError,
        DeviceUnavailableError,
        DuplicateTensorError,
        ExportError,
        FingerprintMismatchError,
        GeneratorMismatchError,
        ManifestError,
        MCNCError,
        MissingTensorError,
        ModelError,
        NonFiniteError,
        RefError,
        UnexpectedTensorError,
        UnsupportedVersionError,
    )
    from mcnc_core.export import export_bundle
    from mcnc_core.fingerprint import state_digest
    from mcnc_core.generator import Generator, GeneratorSpec
    from mcnc_core.peft import check_vllm, export_peft, peft_adapter_files
    from mcnc_core.recipe import param_groups
    from mcnc_core.reconstruct import iter_reconstruct, reconstruct, reconstruct_into

__version__ = "0.3.0"

__all__ = [
    "Backend",
    "BaseMismatchError",
    "Bundle",
    "BundleError",
    "BundleFormatError",
    "BundleLimitError",
    "CPUBackend",
    "CUDABackend",
    "ConfigError",
    "DeviceUnavailableError",
    "DuplicateTensorError",
    "ExportError",
    "FingerprintMismatchError",
    "Generator",
    "GeneratorMismatchError",
    "GeneratorSpec",
    "MCNCConfig",
    "MCNCError",
    "ManifestError",
    "MissingTensorError",
    "ModelError",
    "NonFiniteError",
    "ReadLimits",
    "RefError",
    "UnexpectedTensorError",
    "UnsupportedVersionError",
    "backend_for",
    "base_state_dict",
    "check_vllm",
    "compress",
    "export_bundle",
    "export_peft",
    "iter_reconstruct",
    "load_bundle",
    "materialize",
    "param_groups",
    "peak_decode_bytes",
    "peft_adapter_files",
    "reconstruct",
    "reconstruct_into",
    "save_bundle",
    "state_digest",
]

# public name -> the module that defines it (what the TYPE_CHECKING imports above say)
_LAZY = {
    "Backend": "mcnc_core.backend",
    "CPUBackend": "mcnc_core.backend",
    "CUDABackend": "mcnc_core.backend",
    "backend_for": "mcnc_core.backend",
    "BaseMismatchError": "mcnc_core.errors",
    "Bundle": "mcnc_core.bundle",
    "BundleError": "mcnc_core.errors",
    "BundleFormatError": "mcnc_core.errors",
    "BundleLimitError": "mcnc_core.errors",
    "ConfigError": "mcnc_core.errors",
    "DeviceUnavailableError": "mcnc_core.errors",
    "DuplicateTensorError": "mcnc_core.errors",
    "ExportError": "mcnc_core.errors",
    "FingerprintMismatchError": "mcnc_core.errors",
    "Generator": "mcnc_core.generator",
    "GeneratorMismatchError": "mcnc_core.errors",
    "GeneratorSpec": "mcnc_core.generator",
    "MCNCConfig": "mcnc_core.config",
    "MCNCError": "mcnc_core.errors",
    "ManifestError": "mcnc_core.errors",
    "MissingTensorError": "mcnc_core.errors",
    "ModelError": "mcnc_core.errors",
    "NonFiniteError": "mcnc_core.errors",
    "ReadLimits": "mcnc_core.bundle",
    "RefError": "mcnc_core.errors",
    "UnexpectedTensorError": "mcnc_core.errors",
    "UnsupportedVersionError": "mcnc_core.errors",
    "base_state_dict": "mcnc_core.compress",
    "check_vllm": "mcnc_core.peft",
    "compress": "mcnc_core.compress",
    "export_bundle": "mcnc_core.export",
    "export_peft": "mcnc_core.peft",
    "iter_reconstruct": "mcnc_core.reconstruct",
    "load_bundle": "mcnc_core.bundle",
    "materialize": "mcnc_core.compress",
    "param_groups": "mcnc_core.recipe",
    "peak_decode_bytes": "mcnc_core.bundle",
    "peft_adapter_files": "mcnc_core.peft",
    "reconstruct": "mcnc_core.reconstruct",
    "reconstruct_into": "mcnc_core.reconstruct",
    "save_bundle": "mcnc_core.bundle",
    "state_digest": "mcnc_core.fingerprint",
}


def __getattr__(name: str) -> Any:
    """Import the defining module of a public name (or a submodule) on first access."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("__"):
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``compress`` and ``reconstruct`` the functions when their submodules load.

    Importing ``mcnc_core.compress`` binds the submodule as an attribute of the package; the eager
    ``from mcnc_core.compress import compress`` used to overwrite it right after. Here the
    function (the name the submodule defines) is bound instead, as before.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
