"""The ``ServiceError`` tree and the handlers that render every error as the JSON envelope.

::

    ServiceError                       500 internal_error
    ├── InvalidRequestError            400 invalid_request (422 for validation errors)
    ├── UnauthorizedError              401 unauthorized
    ├── ForbiddenError                 403 forbidden
    ├── NotFoundError                  404 not_found
    │   ├── BundleNotFoundError        404 bundle_not_found
    │   ├── ModelNotFoundError         404 model_not_found
    │   ├── BaseNotFoundError          404 base_not_found
    │   ├── RepoNotFoundError          404 repo_not_found       (Hub routes; X-Error-Code RepoNotFound)
    │   ├── RevisionNotFoundError      404 revision_not_found   (Hub routes; X-Error-Code RevisionNotFound)
    │   └── EntryNotFoundError         404 entry_not_found      (Hub routes; X-Error-Code EntryNotFound)
    ├── ConflictError                  409 conflict
    │   └── BaseMissingError           409 base_missing: a delta's base is not registered here
    ├── PayloadTooLargeError           413 payload_too_large
    ├── UnsupportedMediaTypeError      415 unsupported_media_type: a multipart form instead of the raw file
    ├── RangeNotSatisfiableError       416 range_not_satisfiable
    ├── InvalidBundleError             422 invalid_bundle
    ├── InvalidBaseError               422 invalid_base
    ├── LimitExceededError             422 limit_exceeded
    ├── FingerprintMismatchError       422 fingerprint_mismatch: the weights differ from the bundle's fingerprint
    ├── NotAnAdapterError              422 not_an_adapter: no exact PEFT LoRA form (full mode, rank 0)
    ├── RateLimitedError               429 rate_limited (Retry-After)
    ├── BusyError                      429 busy (Retry-After)
    ├── StorageUnavailableError        503 storage_unavailable: the database or blob store failed
    ├── InsufficientMemoryError        507 insufficient_memory: a tensor over the reconstruction memory budget
    ├── BlobNotFoundError              a blob store has no such object (routes answer the 404 of
    │                                  the bundle or base it belongs to)
    ├── InsecureBindError              refused at startup: non-loopback host without tokens
    └── StoreConfigError               refused at startup: a bad store URL, or a database schema
        └── SchemaOutOfDateError         older (or newer) than this server: run ``mcnc db upgrade``

Every response body is ``{"error": {"code", "message", "request_id"}}`` and ``X-Error-Code``
repeats the code, except for the three Hub-route errors marked above: there ``X-Error-Code``
carries the Hugging Face Hub's name, from which ``huggingface_hub`` picks its exception class;
``X-Error-Message`` repeats the message for it too.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "ERROR_CODES",
    "BaseMissingError",
    "BaseNotFoundError",
    "BundleNotFoundError",
    "BlobNotFoundError",
    "BusyError",
    "ConflictError",
    "EntryNotFoundError",
    "FingerprintMismatchError",
    "ForbiddenError",
    "InsecureBindError",
    "InsufficientMemoryError",
    "InvalidBaseError",
    "InvalidBundleError",
    "InvalidRequestError",
    "LimitExceededError",
    "ModelNotFoundError",
    "NotAnAdapterError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RangeNotSatisfiableError",
    "RateLimitedError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "SchemaOutOfDateError",
    "ServiceError",
    "StorageUnavailableError",
    "StoreConfigError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "error_response",
    "refuse_multipart",
    "install_error_handlers",
]

log = logging.getLogger("mcnc.service")


class ServiceError(Exception):
    """Root of every error the service reports on purpose; carries status, code and headers."""

    status = 500
    code = "internal_error"
    hub_code: str | None = None  # the Hub's X-Error-Code for this error, on the Hub routes

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequestError(ServiceError):
    status, code = 400, "invalid_request"


class UnauthorizedError(ServiceError):
    status, code = 401, "unauthorized"


class ForbiddenError(ServiceError):
    status, code = 403, "forbidden"


class NotFoundError(ServiceError):
    status, code = 404, "not_found"


class BundleNotFoundError(NotFoundError):
    code = "bundle_not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class BaseNotFoundError(NotFoundError):
    code = "base_not_found"


class RepoNotFoundError(NotFoundError):
    code, hub_code = "repo_not_found", "RepoNotFound"


class RevisionNotFoundError(NotFoundError):
    code, hub_code = "revision_not_found", "RevisionNotFound"


class EntryNotFoundError(NotFoundError):
    code, hub_code = "entry_not_found", "EntryNotFound"


class ConflictError(ServiceError):
    status, code = 409, "conflict"


class BaseMissingError(ConflictError):
    code = "base_missing"


class PayloadTooLargeError(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    status, code = 415, "unsupported_media_type"


class RangeNotSatisfiableError(ServiceError):
    status, code = 416, "range_not_satisfiable"


class InvalidBundleError(ServiceError):
    status, code = 422, "invalid_bundle"


class InvalidBaseError(ServiceError):
    status, code = 422, "invalid_base"


class LimitExceededError(ServiceError):
    status, code = 422, "limit_exceeded"


class FingerprintMismatchError(ServiceError):
    """A bundle whose reconstruction does not match its own fingerprint: refused, never served."""

    status, code = 422, "fingerprint_mismatch"


class NotAnAdapterError(ServiceError):
    status, code = 422, "not_an_adapter"


class RateLimitedError(ServiceError):
    status, code = 429, "rate_limited"


class BusyError(ServiceError):
    status, code = 429, "busy"


class StorageUnavailableError(ServiceError):
    status, code = 503, "storage_unavailable"


class InsufficientMemoryError(ServiceError):
    """A stored bundle holds a tensor this server's reconstruction memory budget cannot hold."""

    status, code = 507, "insufficient_memory"


class BlobNotFoundError(ServiceError):
    """A blob store holds no object for ``(kind, digest)``; callers translate it into the 404 they mean."""

    status, code = 404, "not_found"


class StoreConfigError(ServiceError):
    """Startup refused: a store URL the server cannot use (unknown scheme, missing bucket, ...)."""

    code = "store_config"


class SchemaOutOfDateError(StoreConfigError):
    """Startup refused: the database schema is not the one this server needs (``mcnc db upgrade``)."""

    code = "schema_out_of_date"


class InsecureBindError(ServiceError):
    """Startup refused: a non-loopback host without API tokens (set MCNC_ALLOW_INSECURE=1 to override)."""

    code = "insecure_bind"


ERROR_CODES: dict[str, int] = {
    cls.code: cls.status
    for cls in (
        InvalidRequestError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        BundleNotFoundError,
        ModelNotFoundError,
        BaseNotFoundError,
        RepoNotFoundError,
        RevisionNotFoundError,
        EntryNotFoundError,
        ConflictError,
        BaseMissingError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        RangeNotSatisfiableError,
        InvalidBundleError,
        InvalidBaseError,
        LimitExceededError,
        FingerprintMismatchError,
        NotAnAdapterError,
        RateLimitedError,
        BusyError,
        StorageUnavailableError,
        InsufficientMemoryError,
        ServiceError,
    )
}
_STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found"}
_STATUS_CODES |= {405: "method_not_allowed", 413: "payload_too_large", 429: "rate_limited"}


def refuse_multipart(content_type: str | None, what: str, route: str) -> None:
    """Uploads are the raw file as the body; a multipart form (``curl -F``) would be read as a
    corrupt file with an absurd declared size, so it is refused up front.

    Raises:
        UnsupportedMediaTypeError: naming the command that sends the raw file.
    """
    if (content_type or "").lower().startswith("multipart/"):
        raise UnsupportedMediaTypeError(
            f"multipart form uploads are not read: send the {what} itself as the body, "
            f"e.g. curl --data-binary @file -H 'Content-Type: application/octet-stream' '<server>{route}'"
        )


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The envelope ``{"error": {"code", "message", "request_id"}}`` with ``X-Error-Code``."""
    body = {"error": {"code": code, "message": message, "request_id": uuid.uuid4().hex}}
    return JSONResponse(body, status_code=status, headers={**(headers or {}), "X-Error-Code": code})


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    response = error_response(exc.status, exc.code, exc.message, exc.headers)
    if exc.hub_code is not None:
        response.headers["X-Error-Code"] = exc.hub_code
        response.headers["X-Error-Message"] = exc.message.encode("ascii", "replace").decode()
    return response


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "internal_error" if exc.status_code >= 500 else "invalid_request")
    headers: dict[str, Any] = dict(exc.headers or {})
    return error_response(exc.status_code, code, str(exc.detail), headers)


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", f"internal error ({type(exc).__name__})")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error (ours, validation, routing 404/405, unexpected) through the envelope."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
