"""The ``ServiceError`` tree and the handlers that render every error as the JSON envelope.

::

    ServiceError                       500 internal_error
    ├── InvalidRequestError            400 invalid_request (422 for validation errors)
    ├── UnauthorizedError              401 unauthorized
    ├── ForbiddenError                 403 forbidden
    │   ├── HostNotAllowedError        403 host_not_allowed: a Host a tokenless loopback server does not answer
    │   └── CrossOriginError           403 cross_origin: a write from another site's page (its Origin)
    ├── NotFoundError                  404 not_found
    │   ├── BundleNotFoundError        404 bundle_not_found
    │   ├── ModelNotFoundError         404 model_not_found
    │   ├── BaseNotFoundError          404 base_not_found
    │   ├── FileNotStoredError         404 file_not_found: a sidecar file (POST /files) not stored
    │   ├── RepoNotFoundError          404 repo_not_found       (Hub routes; X-Error-Code RepoNotFound)
    │   ├── RevisionNotFoundError      404 revision_not_found   (Hub routes; X-Error-Code RevisionNotFound)
    │   └── EntryNotFoundError         404 entry_not_found      (Hub routes; X-Error-Code EntryNotFound)
    ├── RequestTimeoutError            408 request_timeout: the body stalled (MCNC_READ_TIMEOUT)
    ├── ConflictError                  409 conflict
    │   └── BaseMissingError           409 base_missing: a delta's base is not registered here
    ├── PayloadTooLargeError           413 payload_too_large
    ├── UnsupportedMediaTypeError      415 unsupported_media_type: an upload not sent as application/octet-stream
    ├── RangeNotSatisfiableError       416 range_not_satisfiable
    ├── InvalidBundleError             422 invalid_bundle
    ├── InvalidBaseError               422 invalid_base
    ├── LimitExceededError             422 limit_exceeded
    ├── FingerprintMismatchError       422 fingerprint_mismatch: the weights differ from the bundle's fingerprint
    ├── NotAnAdapterError              422 not_an_adapter: no exact PEFT LoRA form (full mode, rank 0)
    ├── RateLimitedError               429 rate_limited (Retry-After)
    ├── BusyError                      429 busy (Retry-After)
    ├── TooManyClientUploadsError      429 too_many_client_uploads (Retry-After): MCNC_MAX_CLIENT_UPLOADS
    ├── StorageUnavailableError        503 storage_unavailable: the database or blob store failed
    ├── InsufficientMemoryError        507 insufficient_memory: a tensor over the reconstruction memory budget
    ├── TooManyUploadsError            503 too_many_uploads (Retry-After): MCNC_MAX_CONCURRENT_UPLOADS
    ├── StagingFullError               507 staging_full (Retry-After): MCNC_STAGING_BYTES
    ├── BlobNotFoundError              a blob store has no such object (routes answer the 404 of
    │                                  the bundle or base it belongs to)
    ├── InsecureBindError              refused at startup: non-loopback host without tokens
    └── StoreConfigError               refused at startup: a bad store URL, or a database schema
        └── SchemaOutOfDateError         older (or newer) than this server: run ``mcnc db upgrade``

Every response body is ``{"error": {"code", "message", "request_id"}}`` and ``X-Error-Code``
repeats the code, except for the three Hub-route errors marked above: there ``X-Error-Code``
carries the Hugging Face Hub's name, from which ``huggingface_hub`` picks its exception class;
``X-Error-Message`` repeats the message for it too. On the Hub paths themselves (``is_hub_path``)
every error has the Hub's body, ``{"error": "<message>"}``, which every huggingface_hub reads.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

__all__ = [
    "ERROR_CODES",
    "BaseMissingError",
    "BaseNotFoundError",
    "BundleNotFoundError",
    "BlobNotFoundError",
    "BusyError",
    "ConflictError",
    "CrossOriginError",
    "EntryNotFoundError",
    "FileNotStoredError",
    "FingerprintMismatchError",
    "ForbiddenError",
    "HostNotAllowedError",
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
    "RequestTimeoutError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "SchemaOutOfDateError",
    "ServiceError",
    "StalledReaderError",
    "StagingFullError",
    "StorageUnavailableError",
    "StoreConfigError",
    "TooManyClientUploadsError",
    "TooManyUploadsError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "check_upload_type",
    "error_response",
    "install_error_handlers",
    "is_hub_path",
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


class HostNotAllowedError(ForbiddenError):
    code = "host_not_allowed"


class CrossOriginError(ForbiddenError):
    code = "cross_origin"


class NotFoundError(ServiceError):
    status, code = 404, "not_found"


class BundleNotFoundError(NotFoundError):
    code = "bundle_not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class BaseNotFoundError(NotFoundError):
    code = "base_not_found"


class FileNotStoredError(NotFoundError):
    code = "file_not_found"


class RepoNotFoundError(NotFoundError):
    code, hub_code = "repo_not_found", "RepoNotFound"


class RevisionNotFoundError(NotFoundError):
    code, hub_code = "revision_not_found", "RevisionNotFound"


class EntryNotFoundError(NotFoundError):
    code, hub_code = "entry_not_found", "EntryNotFound"


class RequestTimeoutError(ServiceError):
    status, code = 408, "request_timeout"


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


class TooManyClientUploadsError(ServiceError):
    status, code = 429, "too_many_client_uploads"


class StorageUnavailableError(ServiceError):
    status, code = 503, "storage_unavailable"


class InsufficientMemoryError(ServiceError):
    """A stored bundle holds a tensor this server's reconstruction memory budget cannot hold."""

    status, code = 507, "insufficient_memory"


class TooManyUploadsError(ServiceError):
    status, code = 503, "too_many_uploads"


class StagingFullError(ServiceError):
    status, code = 507, "staging_full"


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
        HostNotAllowedError,
        CrossOriginError,
        NotFoundError,
        BundleNotFoundError,
        ModelNotFoundError,
        BaseNotFoundError,
        FileNotStoredError,
        RepoNotFoundError,
        RevisionNotFoundError,
        EntryNotFoundError,
        RequestTimeoutError,
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
        TooManyUploadsError,
        StagingFullError,
        ServiceError,
    )
}
_STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found"}
_STATUS_CODES |= {405: "method_not_allowed", 413: "payload_too_large", 429: "rate_limited"}


def check_upload_type(content_type: str | None, what: str, route: str) -> None:
    """Uploads are the raw file as the body, sent as ``application/octet-stream`` (or with no
    ``Content-Type``); every other type is refused before the body is read, in particular the
    ones a web page can send cross-site without a preflight (``text/plain``, forms) and what
    ``curl --data-binary`` sends by default (``application/x-www-form-urlencoded``).

    Raises:
        UnsupportedMediaTypeError: naming the header and the command that sends the raw file.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in ("", "application/octet-stream"):
        return
    how = (
        f"send the {what} itself as the body with Content-Type: application/octet-stream, "
        f"e.g. curl --data-binary @file -H 'Content-Type: application/octet-stream' '<server>{route}'"
    )
    if media.startswith("multipart/"):
        raise UnsupportedMediaTypeError(f"multipart form uploads are not read: {how}")
    raise UnsupportedMediaTypeError(f"uploads with Content-Type {media!r} are not read: {how}")


# The Hub-compatible routes (service/routers/hub.py): /api/... and /{repo}/resolve/... (a name part
# cannot be "resolve", and the project's own routes start with these words).
_HUB_PATH = re.compile(r"^/(?:api/|(?!(?:models|bundles|bases|files|ui|health)/)[^/]+(?:/[^/]+)?/resolve/)")


def is_hub_path(path: str) -> bool:
    """True for the paths huggingface_hub requests (``/api/...``, ``/{repo}/resolve/...``)."""
    return _HUB_PATH.match(path) is not None


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, *, hub: bool = False
) -> JSONResponse:
    """The envelope ``{"error": {"code", "message", "request_id"}}`` with ``X-Error-Code``.

    ``hub``: the Hugging Face Hub's shape instead, ``{"error": "<message>"}`` plus ``X-Error-Code``
    and ``X-Error-Message``: huggingface_hub 0.23 and 0.25 read ``error`` as a string (a dict there
    raised ``TypeError`` / ``AttributeError`` instead of ``RepositoryNotFoundError``: 0.23
    ``utils/_errors.py HfHubHTTPError.__init__``, 0.25 ``utils/_http.py _format``).
    """
    request_id = uuid.uuid4().hex
    if hub:
        safe = message.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")
        extra = {"X-Error-Code": code, "X-Error-Message": safe, "X-Request-Id": request_id}
        return JSONResponse({"error": message}, status_code=status, headers={**(headers or {}), **extra})
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers={**(headers or {}), "X-Error-Code": code})


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if is_hub_path(request.url.path):
        return error_response(exc.status, exc.hub_code or exc.code, exc.message, exc.headers, hub=True)
    response = error_response(exc.status, exc.code, exc.message, exc.headers)
    if exc.hub_code is not None:
        response.headers["X-Error-Code"] = exc.hub_code
        response.headers["X-Error-Message"] = exc.message.encode("ascii", "replace").decode()
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    hub = is_hub_path(request.url.path)
    return error_response(422, "invalid_request", "; ".join(parts) or "invalid request", hub=hub)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method the app routes at this path (Starlette's 405 names only the methods of the first
    route that matched the path: ``HEAD`` of GET, HEAD and DELETE on ``/bundles/{id}``)."""
    routes = request.app.router.routes
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in routes):
            allowed.append(method)
    return allowed


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "internal_error" if exc.status_code >= 500 else "invalid_request")
    headers: dict[str, Any] = dict(exc.headers or {})
    message = str(exc.detail)
    if exc.status_code == 405:
        allowed = _allowed_methods(request) or [m.strip() for m in headers.get("Allow", "").split(",") if m.strip()]
        headers["Allow"] = ", ".join(allowed)
        message = f"{request.method} is not allowed on {request.url.path}; it takes {', '.join(allowed)}"
    return error_response(exc.status_code, code, message, headers, hub=is_hub_path(request.url.path))


class StalledReaderError(Exception):
    """A client stopped taking its response (``MCNC_WRITE_TIMEOUT``): the connection is ended; no
    answer can follow a started response, and the middleware that raised it logged one line."""


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StalledReaderError):
        log.exception("unhandled error", exc_info=exc)
    message = f"internal error ({type(exc).__name__})"
    return error_response(500, "internal_error", message, hub=is_hub_path(request.url.path))


def install_error_handlers(app: FastAPI) -> None:
    """Route every error (ours, validation, routing 404/405, unexpected) through the envelope."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
