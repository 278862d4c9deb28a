"""The ``MCNCClientError`` tree and the one table mapping server error codes to it.

::

    MCNCClientError
    ├── InvalidArgumentError (ValueError) an argument the client cannot use (names it and the fix)
    ├── OfflineError                 offline mode and the cache lacks what is needed
    ├── ConnectionFailedError        the server could not be reached (after retries)
    │   └── DeadlineExceededError    a request or download overran its deadline (a dripping server)
    ├── IntegrityError               size, sha256 or fingerprint check failed
    │   ├── BaseMismatchError        load(base=...): the given base is not the one the delta was trained on
    │   └── ResponseTooLargeError    a body over a client cap or its declared size (names cap and setting)
    ├── InsufficientMemoryError      load / download_adapter would allocate more than this process can get
    ├── AdapterExportError           download_adapter: the bundle has no exact PEFT LoRA form
    ├── StateDictMismatchError       load(model=...): missing/unexpected keys, other shapes, meta tensors
    └── APIError                     the server answered with an error envelope
        ├── BadRequestError          400/422 invalid_request
        │   ├── InvalidBundleError   422 invalid_bundle
        │   ├── InvalidBaseError     422 invalid_base
        │   ├── LimitExceededError   422 limit_exceeded
        │   ├── NotAnAdapterError    422 not_an_adapter
        │   └── BaseNotRegisteredError 422 base_not_registered (servers before bundles without bases)
        ├── AuthenticationError      401 unauthorized
        ├── PermissionDeniedError    403 forbidden
        ├── NotFoundError            404 not_found
        │   ├── BundleNotFoundError  404 bundle_not_found
        │   ├── ModelNotFoundError   404 model_not_found
        │   └── BaseNotFoundError    404 base_not_found (also repo/revision/entry_not_found: NotFoundError)
        ├── ConflictError            409 conflict
        │   └── BaseMissingError     409 base_missing: server-side weights of a delta whose base it lacks
        ├── PayloadTooLargeError     413 payload_too_large
        ├── UnsupportedMediaTypeError 415 unsupported_media_type (multipart upload: send the raw file)
        ├── RangeNotSatisfiableError 416 range_not_satisfiable
        ├── RateLimitError           429 rate_limited / busy (retry_after)
        └── ServerError              5xx

    CacheFallbackWarning (UserWarning)  the server was unreachable: a cached copy was used

Every exception here is also what the ``mcnc`` command reports, in one line with its exit code.
``APIError`` messages are the server's, with a hint appended where the client knows the fix
(``with_hint``): the tags a missing name does have, how to pass a token.
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "AdapterExportError",
    "AuthenticationError",
    "BadRequestError",
    "BaseMismatchError",
    "BaseMissingError",
    "BaseNotFoundError",
    "BaseNotRegisteredError",
    "BundleNotFoundError",
    "CacheFallbackWarning",
    "ConflictError",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "InsufficientMemoryError",
    "IntegrityError",
    "InvalidArgumentError",
    "InvalidBaseError",
    "InvalidBundleError",
    "LimitExceededError",
    "MCNCClientError",
    "ModelNotFoundError",
    "NotAnAdapterError",
    "NotFoundError",
    "OfflineError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RangeNotSatisfiableError",
    "RateLimitError",
    "ResponseTooLargeError",
    "ServerError",
    "StateDictMismatchError",
    "UnsupportedMediaTypeError",
    "error_for",
]


class MCNCClientError(Exception):
    """Root of every error the client raises on purpose."""


class CacheFallbackWarning(UserWarning):
    """The server could not be reached (or failed with 5xx) and a cached copy of the ref was used,
    as ``huggingface_hub`` does; filter it with ``warnings.simplefilter("ignore", CacheFallbackWarning)``."""


class InvalidArgumentError(MCNCClientError, ValueError):
    """An argument the client cannot use: a dtype, a ``base`` for a full-mode bundle, an ambiguous
    digest prefix. Malformed refs raise ``mcnc_core.RefError`` (also a ``ValueError``)."""


class OfflineError(MCNCClientError):
    """Offline mode (``MCNC_OFFLINE=1``) and the local cache does not hold what is needed."""


class ConnectionFailedError(MCNCClientError):
    """The server could not be reached, after the configured retries."""


class DeadlineExceededError(ConnectionFailedError):
    """A request or download did not finish within its deadline (``MCNC_REQUEST_DEADLINE``,
    ``MCNC_DOWNLOAD_DEADLINE``), retries and back-off included: the server sends too slowly."""


class IntegrityError(MCNCClientError):
    """Downloaded or reconstructed data failed its size, sha256 or fingerprint check."""


class ResponseTooLargeError(IntegrityError):
    """A response body is larger than a client cap (``limit`` bytes, set by ``setting``) or than
    the size the server declared for it. Nothing past the cap was read, nothing entered the cache."""

    def __init__(self, message: str, *, limit: int, setting: str | None) -> None:
        super().__init__(message)
        self.limit, self.setting = limit, setting


class InsufficientMemoryError(MCNCClientError):
    """Reconstructing would allocate ``needed`` bytes, more than the ``available`` ones
    (``MCNC_MAX_LOAD_BYTES``, else what this process can get); nothing was allocated."""

    def __init__(self, message: str, *, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed, self.available = needed, available


class BaseMismatchError(IntegrityError):
    """``load(ref, base=...)``: the given base lacks tensors the delta reads or has another digest."""


class AdapterExportError(MCNCClientError):
    """``download_adapter``: the bundle cannot be written as a PEFT LoRA adapter (full mode, rank 0, ...)."""


class StateDictMismatchError(MCNCClientError):
    """``load(model=...)``: the reconstructed keys or shapes do not match the model's, or the model
    has meta tensors (nothing to write into)."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[str] | None = None,
        meta: list[str] | None = None,
    ) -> None:
        self.missing, self.unexpected = missing, unexpected
        self.mismatched, self.meta = mismatched or [], meta or []
        shapes = f", shapes differ for {self.mismatched[:10]}" if self.mismatched else ""
        ghosts = f", on the meta device (no memory; materialise with to_empty): {self.meta[:10]}" if self.meta else ""
        super().__init__(
            f"reconstructed state dict does not fit the model: missing keys {missing[:10]}, "
            f"unexpected keys {unexpected[:10]}{shapes}{ghosts}"
        )


class APIError(MCNCClientError):
    """The server answered with an error. ``code`` is the stable snake_case error code."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None) -> None:
        self.status, self.code, self.message, self.request_id = status, code, message, request_id
        super().__init__(f"{status} {code}: {message}")

    def with_hint(self, hint: str) -> APIError:
        """A copy of this error (same class, status, code, request id) whose message ends with ``hint``."""
        new = type(self).__new__(type(self))  # no __init__: subclasses take other arguments
        new.__dict__.update(self.__dict__)
        new.message = f"{self.message}; {hint}" if self.message else hint
        new.args = (f"{self.status} {self.code}: {new.message}",)
        return new


class BadRequestError(APIError):
    pass


class InvalidBundleError(BadRequestError):
    pass


class InvalidBaseError(BadRequestError):
    pass


class LimitExceededError(BadRequestError):
    pass


class BaseNotRegisteredError(BadRequestError):
    pass


class NotAnAdapterError(BadRequestError):
    pass


class AuthenticationError(APIError):
    pass


class PermissionDeniedError(APIError):
    pass


class NotFoundError(APIError):
    pass


class BundleNotFoundError(NotFoundError):
    pass


class ModelNotFoundError(NotFoundError):
    pass


class BaseNotFoundError(NotFoundError):
    pass


class ConflictError(APIError):
    pass


class BaseMissingError(ConflictError):
    pass


class PayloadTooLargeError(APIError):
    pass


class UnsupportedMediaTypeError(APIError):
    pass


class RangeNotSatisfiableError(APIError):
    pass


class RateLimitError(APIError):
    """429. ``retry_after``: seconds the server asked to wait (``None`` if it did not say)."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None,
                 retry_after: float | None = None) -> None:  # fmt: skip
        super().__init__(status, code, message, request_id)
        self.retry_after = retry_after


class ServerError(APIError):
    pass


# The one table: server error code -> exception class.
_ERROR_CODES: dict[str, type[APIError]] = {
    "invalid_request": BadRequestError,
    "invalid_bundle": InvalidBundleError,
    "invalid_base": InvalidBaseError,
    "limit_exceeded": LimitExceededError,
    "base_not_registered": BaseNotRegisteredError,
    "not_an_adapter": NotAnAdapterError,
    "unauthorized": AuthenticationError,
    "forbidden": PermissionDeniedError,
    "not_found": NotFoundError,
    "bundle_not_found": BundleNotFoundError,
    "model_not_found": ModelNotFoundError,
    "base_not_found": BaseNotFoundError,
    "repo_not_found": NotFoundError,
    "revision_not_found": NotFoundError,
    "entry_not_found": NotFoundError,
    "conflict": ConflictError,
    "base_missing": BaseMissingError,
    "payload_too_large": PayloadTooLargeError,
    "unsupported_media_type": UnsupportedMediaTypeError,
    "range_not_satisfiable": RangeNotSatisfiableError,
    "rate_limited": RateLimitError,
    "busy": RateLimitError,
    "internal_error": ServerError,
}
# Fallback when the code is unknown (a newer server): by status.
_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError, 413: PayloadTooLargeError, 415: UnsupportedMediaTypeError, 416: RangeNotSatisfiableError,
    422: BadRequestError,
    429: RateLimitError,
}  # fmt: skip


def error_for(status: int, code: str, message: str, request_id: str | None = None,
              retry_after: float | None = None) -> APIError:  # fmt: skip
    """The exception for an error response: by code, else by status, else by status class."""
    cls = _ERROR_CODES.get(code) or _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    if issubclass(cls, RateLimitError):
        return cls(status, code, message, request_id, retry_after=retry_after)
    return cls(status, code, message, request_id)
