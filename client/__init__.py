"""Python client for an MCNC server: ``Client(...).load("name")`` downloads only the tiny bundle
and reconstructs the weights locally. Importing this package does not import torch."""

from __future__ import annotations

from client._async import AsyncClient
from client._exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BaseNotFoundError,
    BaseNotRegisteredError,
    BundleNotFoundError,
    ConflictError,
    ConnectionFailedError,
    IntegrityError,
    InvalidBaseError,
    InvalidBundleError,
    LimitExceededError,
    MCNCClientError,
    ModelNotFoundError,
    NotFoundError,
    OfflineError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RangeNotSatisfiableError,
    RateLimitError,
    ServerError,
    StateDictMismatchError,
)
from client._models import BaseInfo, ModelInfo, TagInfo, TransferReport
from client._sync import Client

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BaseInfo",
    "BaseNotFoundError",
    "BaseNotRegisteredError",
    "BundleNotFoundError",
    "Client",
    "ConflictError",
    "ConnectionFailedError",
    "IntegrityError",
    "InvalidBaseError",
    "InvalidBundleError",
    "LimitExceededError",
    "MCNCClientError",
    "ModelInfo",
    "ModelNotFoundError",
    "NotFoundError",
    "OfflineError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RangeNotSatisfiableError",
    "RateLimitError",
    "ServerError",
    "StateDictMismatchError",
    "TagInfo",
    "TransferReport",
]
