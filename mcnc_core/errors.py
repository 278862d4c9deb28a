"""The exception tree of ``mcnc_core``: every failure the library reports on purpose.

::

    MCNCError
    ├── ConfigError (ValueError)            an MCNCConfig / generator spec value is invalid
    ├── ModelError (ValueError)             compress/export/materialize called on the wrong model
    ├── BaseMismatchError (ValueError)      delta bundle: base missing, incomplete or wrong digest
    ├── FingerprintMismatchError            reconstructed weights do not match the bundle
    ├── ExportError (ValueError)            a delta bundle (or tensor) has no exact PEFT LoRA form
    ├── AdapterError (ValueError)           a PEFT adapter cannot be converted (DoRA, bias, layer kind, files)
    ├── DeviceUnavailableError (RuntimeError) the device asked for is not on this machine
    ├── RefError (ValueError)               a model reference (name, name:tag, digest) is malformed
    └── BundleError (ValueError)            a bundle file or object is unusable
        ├── BundleFormatError               not a safetensors file, truncated, bad header/JSON
        ├── UnsupportedVersionError         unknown format name or format version
        ├── BundleLimitError                declared sizes beyond the reader's limits
        ├── ManifestError                   inconsistent manifest, shapes or chunk layout
        │   ├── DuplicateTensorError        a tensor or manifest name appears twice
        │   ├── MissingTensorError          a tensor the manifest needs is absent
        │   └── UnexpectedTensorError       a tensor the manifest does not explain
        ├── NonFiniteError                  NaN/Inf in codes or raw tensors
        └── GeneratorMismatchError          regenerated generator weights differ from the bundle's

Every message names the offending value; nothing here is raised for programming errors
(those stay TypeError/AssertionError).
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "BaseMismatchError",
    "BundleError",
    "BundleFormatError",
    "BundleLimitError",
    "ConfigError",
    "DeviceUnavailableError",
    "DuplicateTensorError",
    "ExportError",
    "FingerprintMismatchError",
    "GeneratorMismatchError",
    "MCNCError",
    "ManifestError",
    "MissingTensorError",
    "ModelError",
    "NonFiniteError",
    "RefError",
    "UnexpectedTensorError",
    "UnsupportedVersionError",
]


class MCNCError(Exception):
    """Root of every error raised on purpose by ``mcnc_core``."""


class ConfigError(MCNCError, ValueError):
    """An ``MCNCConfig`` or generator-spec value is out of range or inconsistent."""


class ModelError(MCNCError, ValueError):
    """The model is not in the state the call needs (not compressed, compressed twice, ...)."""


class BaseMismatchError(MCNCError, ValueError):
    """A delta bundle's base is missing, lacks tensors, or its digest differs."""


class FingerprintMismatchError(MCNCError):
    """Reconstructed weights fall outside the bundle fingerprint's tolerance."""


class BundleError(MCNCError, ValueError):
    """A bundle (file, bytes or object) cannot be used."""


class BundleFormatError(BundleError):
    """Not a well-formed safetensors container: truncated, bad header, bad JSON, bad offsets."""


class UnsupportedVersionError(BundleError):
    """The file names a format or format version this reader does not implement."""


class BundleLimitError(BundleError):
    """A declared size (bytes, parameters, chunks, header) exceeds the reader's limits."""


class ManifestError(BundleError):
    """The manifest and the tensors disagree: shapes, dtypes, chunk ranges."""


class DuplicateTensorError(ManifestError):
    """A tensor name (in the header or the manifest) appears more than once."""


class MissingTensorError(ManifestError):
    """A tensor required by the manifest is not in the file."""


class UnexpectedTensorError(ManifestError):
    """The file holds a tensor that the manifest does not account for."""


class NonFiniteError(BundleError):
    """Codes or raw tensors contain NaN or Inf."""


class GeneratorMismatchError(BundleError):
    """The generator rebuilt from the recorded spec and seed has a different sha256."""


class ExportError(MCNCError, ValueError):
    """A bundle (or one of its tensors) has no exact PEFT LoRA form; the message names it and the fix."""


class AdapterError(MCNCError, ValueError):
    """A PEFT adapter cannot be converted exactly as described: DoRA, trained biases, a module kind
    the converter does not support, malformed or pickled files; the message names it."""


class DeviceUnavailableError(MCNCError, RuntimeError):
    """The device a reconstruction asked for (``"cuda"``, ``"cuda:3"``) is not on this machine."""


class RefError(MCNCError, ValueError):
    """A model reference (``name``, ``org/name:tag``, ``sha256:<hex>``) is malformed; names the rule."""
