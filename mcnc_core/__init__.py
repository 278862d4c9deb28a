"""MCNC: manifold-constrained neural compression — generator, training, bundles, reconstruction."""

from __future__ import annotations

from mcnc_core.bundle import Bundle, ReadLimits, export_bundle, load_bundle, save_bundle
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
    UnexpectedTensorError,
    UnsupportedVersionError,
)
from mcnc_core.fingerprint import state_digest
from mcnc_core.generator import Generator, GeneratorSpec
from mcnc_core.peft import check_vllm, export_peft, peft_adapter_files
from mcnc_core.recipe import param_groups
from mcnc_core.reconstruct import iter_reconstruct, reconstruct, reconstruct_into

__version__ = "0.1.0"

__all__ = [
    "BaseMismatchError",
    "Bundle",
    "BundleError",
    "BundleFormatError",
    "BundleLimitError",
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
    "UnexpectedTensorError",
    "UnsupportedVersionError",
    "base_state_dict",
    "check_vllm",
    "compress",
    "export_bundle",
    "export_peft",
    "iter_reconstruct",
    "load_bundle",
    "materialize",
    "param_groups",
    "peft_adapter_files",
    "reconstruct",
    "reconstruct_into",
    "save_bundle",
    "state_digest",
]
