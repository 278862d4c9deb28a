"""Sidecar files of Hub repos (config.json, tokenizer files, README.md): upload and attachment rules.

Wire contract (docs/service.md): ``POST /files`` stores a file by its sha256 (at most
``MCNC_MAX_FILE_BYTES``); ``POST /bundles?name=N&tag=T&file=<filename>:<sha256>`` (repeatable, at
most ``MCNC_MAX_FILES``) attaches stored files to that tag in the tag's own transaction.
"""

from __future__ import annotations

import hashlib
import re

from service.config import Settings
from service.errors import InvalidRequestError
from service.storage import FileRecord, Staged, Store, validate_filename

__all__ = ["git_blob_oid", "parse_file_params", "store_file"]

_SHA = re.compile(r"[0-9a-f]{64}")


def git_blob_oid(path: str) -> str:
    """The git blob id (``git hash-object``) of a file: what the Hub's tree lists as ``oid``."""
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def parse_file_params(values: list[str], settings: Settings) -> dict[str, str]:
    """``file=<filename>:<sha256>`` query values as ``{filename: sha256}``; the digest may carry the
    ``sha256:`` prefix the server prints elsewhere (``config.json:sha256:<hex>``).

    Raises:
        InvalidRequestError: a malformed value, a reserved or invalid file name, a name given twice,
            or more than ``MCNC_MAX_FILES`` files.
    """
    if len(values) > settings.max_files:
        raise InvalidRequestError(f"{len(values)} files given, over the limit of {settings.max_files} (MCNC_MAX_FILES)")
    out: dict[str, str] = {}
    for value in values:
        name, sep, sha = value.rpartition(":")
        if name.lower().endswith(":sha256"):  # <filename>:sha256:<hex>
            name = name[: -len(":sha256")]
        sha = sha.lower()
        if not sep or not _SHA.fullmatch(sha):
            raise InvalidRequestError(f"file={value!r}: expected <filename>:<sha256> (the sha256 POST /files answered)")
        validate_filename(name)
        if name in out:
            raise InvalidRequestError(f"file {name!r} given twice")
        out[name] = sha
    return out


def store_file(store: Store, tmp: Staged, settings: Settings) -> tuple[FileRecord, bool]:
    """Store a staged sidecar (a worker thread: it hashes the bytes); its record and whether it is new."""
    try:
        sha = tmp.finish()
        return store.add_file(tmp, sha, git_blob_oid(str(tmp.path)))
    finally:
        tmp.discard()
