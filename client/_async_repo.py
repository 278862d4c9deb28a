"""``AsyncRepoMixin``: what ``AsyncClient`` sends to and asks of the server's records, without
reconstructing: ``push`` and ``push_base`` (with their sidecar files), ``info``, ``list``, ``delete``.

``client/_sync_repo.py`` (``RepoMixin``, used by ``Client``) is generated from this file by
``scripts/unasync.py``, as ``_sync.py`` is from ``_async.py``. The methods call ``self._send``, the
request flow ``AsyncClient`` defines (retries, deadlines, typed errors).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from client._base import BaseClient, Ref, base_bytes, bundle_bytes, parse_ref
from client._exceptions import APIError, IntegrityError, InvalidArgumentError, MCNCClientError, NotFoundError
from client._io import ablocking
from client._models import BaseInfo, ModelInfo, TagInfo
from client._uploads import Sidecar, check_base_file, check_bundle_file, read_sidecars

__all__ = ["AsyncRepoMixin"]

_PAGE = 1000  # the server's largest page of GET /models

_OCTETS = {"Content-Type": "application/octet-stream"}
Files = Iterable[str | os.PathLike[str] | tuple[str, bytes]] | None


class AsyncRepoMixin(BaseClient):
    """Uploads and records; mixed into ``AsyncClient``, which provides ``_send``."""

    _send: Any  # AsyncClient._send

    async def _upload_sidecars(self, sidecars: list[Sidecar]) -> list[str]:
        """Make sure the server holds every sidecar's bytes: ``HEAD /files/{sha256}`` first, and
        ``POST /files`` only for those it lacks (404; a server without that route answers 404 or
        405: the bytes are sent). Returns the ``file=`` values for the push.

        Raises:
            IntegrityError: the server stored other bytes than sent (its sha256 differs).
        """
        for s in sidecars:
            try:
                await self._send("HEAD", f"/files/{s.sha256}")
                continue  # already there: no bytes sent
            except NotFoundError:
                pass
            except APIError as exc:
                if exc.status != 405:
                    raise
            resp = await self._send("POST", "/files", content=s.data, headers=_OCTETS)
            got = resp.json().get("sha256") if isinstance(resp.json(), dict) else None
            if got != s.sha256:
                raise IntegrityError(f"the server stored {s.name} as sha256:{got}, not sha256:{s.sha256}")
        return [s.param for s in sidecars]

    async def push(
        self, path_or_bundle: Any, *, name: str | None = None, tag: str | None = None, files: Files = None
    ) -> ModelInfo:
        """Upload a bundle (a path, bytes or an ``mcnc_core.Bundle``); returns what the server stored.

        ``files``: sidecar files for the tag (``config.json``, tokenizer files, ``README.md``), as paths
        (sent under their file name) or ``(name, bytes)`` pairs. They are read and hashed locally,
        uploaded with ``POST /files`` unless the server holds them already, and attached to
        ``name:tag`` in the tag's own transaction: a push defines the tag's files (none without
        ``files``). The bytes also go into the local cache, so loading them back downloads nothing.

        Raises:
            InvalidArgumentError: ``tag`` or ``files`` without ``name``, a bad sidecar, a path that is not
                a bundle (a PEFT adapter's weights, a plain safetensors file: the message says what to run);
                all before any request.
            InvalidBundleError (422): the server's strict reader refused the bundle.
            ConflictError (409): ``name`` is a base's repo name.
        """
        params: dict[str, Any] = dict(self._push_params(name, tag))
        sidecars = await ablocking(read_sidecars, files)
        if sidecars and name is None:
            raise InvalidArgumentError("push(files=...) needs a name=: sidecar files are attached to a name:tag")
        if isinstance(path_or_bundle, (str, os.PathLike)):
            check_bundle_file(path_or_bundle, name)  # a PEFT adapter or a base given here: the hint, no request
        data = await ablocking(bundle_bytes, path_or_bundle)
        if sidecars:
            params["file"] = await self._upload_sidecars(sidecars)
        resp = await self._send("POST", "/bundles", params=params, content=data, headers=_OCTETS)
        info = ModelInfo.from_json(resp.json(), created=resp.status_code == 201)
        digest = await ablocking(self.cache.put_bytes, data)
        if name:
            self.cache.write_ref(name, tag or "latest", digest)
        return info

    async def push_base(self, path_or_state_dict: Any, *, name: str | None = None, files: Files = None) -> BaseInfo:
        """Register a base model (a safetensors path, bytes or a state dict) for delta bundles.

        With ``name`` (``org/base``) the server also serves it as a whole-model Hub repo of that name,
        with the sidecar ``files`` (as in ``push``); registering a name again moves it to this base
        and replaces its files.

        Raises:
            InvalidArgumentError: ``files`` without ``name``, a bad name or sidecar, a path that is an MCNC
                bundle or not safetensors (before any request).
            InvalidBaseError (422): not a safetensors file of tensors.
            ConflictError (409): ``name`` is a bundle repo (it has tags).
        """
        params: dict[str, Any] = {}
        if name is not None:
            params["name"] = self._push_params(name, None)["name"]
        sidecars = await ablocking(read_sidecars, files)
        if sidecars and name is None:
            raise InvalidArgumentError("push_base(files=...) needs a name=: sidecar files belong to a repo name")
        if isinstance(path_or_state_dict, (str, os.PathLike)):
            check_base_file(path_or_state_dict, name)  # a bundle given here: the hint, no request
        data = await ablocking(base_bytes, path_or_state_dict)
        if sidecars:
            params["file"] = await self._upload_sidecars(sidecars)
        resp = await self._send("POST", "/bases", params=params or None, content=data, headers=_OCTETS)
        return BaseInfo.from_json(resp.json(), created=resp.status_code == 201)

    async def _tags_of(self, ref: Ref) -> list[TagInfo]:
        """The server's tags of ``ref``'s name, for a hint (the first 10 pages of 1000 tags);
        nothing when they cannot be listed."""
        found: list[TagInfo] = []
        if ref.name is None:
            return found
        try:
            for offset in range(0, 10 * _PAGE, _PAGE):
                page = await self.list(limit=_PAGE, offset=offset)
                found += [t for t in page if t.name == ref.name]
                if len(page) < _PAGE:
                    break
        except MCNCClientError:
            pass  # only a hint: the 404 stands without it
        return found

    async def info(self, ref: str) -> ModelInfo:
        """Metadata of a stored model: sizes, parameters, ratio, mode, base, tags, loaded tiers.

        Raises:
            NotFoundError (listing the tags the name has), other APIError subclasses, RefError.
        """
        parsed = parse_ref(ref)
        try:
            resp = await self._send("GET", self._model_path(parsed))
        except NotFoundError as exc:
            raise self._with_404_hint(exc, parsed, await self._tags_of(parsed)) from exc
        return ModelInfo.from_json(resp.json())

    async def list(self, *, limit: int = 100, offset: int = 0) -> list[TagInfo]:
        """Names and tags on the server (one page of at most ``limit``, at most 1000)."""
        data = (await self._send("GET", "/models", params={"limit": limit, "offset": offset})).json()
        return [TagInfo.from_json(t) for t in data["items"]]

    async def delete(self, ref: str, *, force: bool = False) -> None:
        """Remove a model from the server (admin scope).

        A name or ``name:tag`` removes that tag (the bundle stays, other names keep it); a digest
        removes the bundle itself, which the server refuses (409) while names point at it unless
        ``force``.
        """
        parsed = parse_ref(ref)
        if parsed.digest is not None:
            await self._send("DELETE", f"/bundles/{parsed.digest}", params={"force": "true"} if force else None)
        else:
            await self._send("DELETE", self._model_path(parsed))
