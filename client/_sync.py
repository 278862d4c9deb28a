# Generated from client/_async.py by scripts/unasync.py (make unasync): do not edit.
"""``Client``: the synchronous MCNC client, generated from ``AsyncClient`` (``client/_async.py``).

Edit ``client/_async.py`` and run ``make unasync``: the two clients differ only in I/O.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from client._base import (
    Ref,
    buffered,
    declared_int,
    expect_bundle,
    expect_safetensors,
    expect_weights,
    parse_ref,
    retry_delay,
)
from client._bounds import BoundedBody, Deadline, Expect, StreamCheck
from client._config import ClientLimits, resolve_config
from client._exceptions import (
    BaseNotFoundError,
    ConnectionFailedError,
    IntegrityError,
    MCNCClientError,
    NotFoundError,
    RangeNotSatisfiableError,
    RateLimitError,
    ServerError,
)
from client._io import blocking, lock, sleep
from client._models import TransferReport
from client._progress import progress_bar
from client._sync_repo import RepoMixin
from client._transfer import Partial, bundle_metadata, finish_download

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import Tensor, nn

__all__ = ["Client"]

_PAGE = 1000  # the server's largest page of GET /models


class Client(RepoMixin):
    """Talks to an MCNC server; reconstructs locally from tiny bundles.

    Args:
        base_url: server URL (default ``MCNC_ENDPOINT``, else ``http://127.0.0.1:8000``).
        token: bearer token (default ``MCNC_TOKEN``, else ``$MCNC_HOME/token``).
        cache_dir: local cache (default ``MCNC_CACHE_DIR``, else ``$MCNC_HOME/hub``).
        timeout: seconds per network operation (default ``MCNC_DOWNLOAD_TIMEOUT`` or 10).
        transport: an ``httpx`` transport (tests, throttling, proxies).
        offline: never open a socket; serve from the cache (default ``MCNC_OFFLINE``).
        progress: show progress bars (default: on a TTY unless ``MCNC_DISABLE_PROGRESS_BARS``).
        retries: retries for connection errors, 503 and 429.
        limits: what the client accepts from the server (default ``ClientLimits.from_env()``:
            the ``MCNC_MAX_*`` and ``MCNC_*_DEADLINE`` variables; docs/client.md "Limits").

    Every ``load`` / ``download_weights`` records a ``TransferReport`` in ``last_report``. Uploads
    and records (``push``, ``push_base``, ``info``, ``list``, ``delete``) come from ``RepoMixin``
    (``client/_async_repo.py``).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
        offline: bool | None = None,
        progress: bool | None = None,
        retries: int = 3,
        limits: ClientLimits | None = None,
    ) -> None:
        super().__init__(resolve_config(base_url, token, cache_dir, offline, timeout, progress, retries, limits))
        self._transport = transport
        self._http: httpx.Client | None = None
        self.last_report: TransferReport | None = None

    # -- plumbing -------------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:  # created on first use: offline clients never build one
            self._http = httpx.Client(base_url=self.base_url, timeout=self.config.timeout, transport=self._transport)
        return self._http

    def close(self) -> None:
        """Close the connection pool."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        stream: bool = False,
        retries: int | None = None,
        deadline: Deadline | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """One request with retries (``retries``, default the client's); errors become exceptions.

        Within ``deadline`` (default ``MCNC_REQUEST_DEADLINE`` for this request), waits included.
        Without ``stream`` the body is read here, at most ``MCNC_MAX_JSON_BYTES``; an error body
        at most ``MCNC_MAX_ERROR_BYTES`` (``ResponseTooLargeError`` beyond either, unread).
        """
        self._check_online(f"{method} {path}")
        kw["headers"] = self._headers(kw.get("headers"))
        retries = self.config.retries if retries is None else retries
        limits = self.config.limits
        if deadline is None:
            deadline = Deadline(limits.request_deadline, f"{method} {path}", "MCNC_REQUEST_DEADLINE")
        attempt = 0
        while True:
            deadline.check()
            request = self._client().build_request(
                method, path, timeout=deadline.read_timeout(self.config.timeout), **kw
            )
            err: MCNCClientError
            try:
                resp = self._client().send(request, stream=True)
                try:
                    if resp.status_code < 400:
                        if stream:
                            return resp
                        body = self._read(resp, limits.max_json_bytes, "MCNC_MAX_JSON_BYTES", deadline)
                        return buffered(resp, body)
                    body = self._read(resp, limits.max_error_bytes, "MCNC_MAX_ERROR_BYTES", deadline)
                finally:
                    if not stream or resp.status_code >= 400:
                        resp.close()
            except httpx.TransportError as exc:
                delay = retry_delay(attempt, retries, None, None)
                err = ConnectionFailedError(
                    f"cannot reach {self.base_url} ({type(exc).__name__}: {exc}); is the server running? "
                    "(set the URL with MCNC_ENDPOINT or --endpoint)"
                )
                err.__cause__ = exc
            else:
                api = self._api_error(resp.status_code, resp.headers, body, f"{method} {path}")
                after = getattr(api, "retry_after", None)
                delay = retry_delay(attempt, retries, resp.status_code, after, limits.max_retry_after)
                if isinstance(api, RateLimitError) and after is not None and after > limits.max_retry_after:
                    cap = limits.max_retry_after
                    api = api.with_hint(
                        f"the server asks to wait {after:g} s, more than MCNC_MAX_RETRY_AFTER={cap:g} s the client "
                        "waits for: try again later"
                    )
                err = api
            if delay is None:
                raise err
            if not deadline.allows(delay):
                raise deadline.error() from err
            sleep(delay)
            attempt += 1

    def _read(self, resp: httpx.Response, limit: int, setting: str, deadline: Deadline) -> bytes:
        """The body of ``resp``, at most ``limit`` bytes, within ``deadline``."""
        body = BoundedBody(f"{resp.request.method} {resp.request.url.path}", limit, setting, resp.headers)
        for block in resp.iter_bytes():
            body.feed(block)
            deadline.check()
        return body.value()

    def _fetch(
        self, path: str, partial: Partial, expect: Expect, *, params: dict[str, str] | None = None, desc: str
    ) -> tuple[int, str]:
        """Download ``path`` into ``partial``, resuming with Range/If-Range, checking every block
        against ``expect`` before it is written (``StreamCheck``), all within
        ``MCNC_DOWNLOAD_DEADLINE``.

        Returns:
            ``(bytes received, sha256 of the whole file)``.

        Raises:
            ResponseTooLargeError, IntegrityError: the body breaks ``expect`` (the partial file is
                deleted, nothing is retried); DeadlineExceededError (the partial file stays, to
                resume); ConnectionFailedError.
        """
        received = 0
        deadline = Deadline(self.config.limits.download_deadline, f"download of {path}", "MCNC_DOWNLOAD_DEADLINE")
        for attempt in range(self.config.retries + 1):
            try:
                resp = self._send(
                    "GET", path, params=params, headers=partial.request_headers(), stream=True, deadline=deadline
                )
                try:
                    with (
                        partial.open(resp.status_code, resp.headers) as f,
                        progress_bar(self.config.progress, partial.total, partial.size, desc) as bar,
                    ):
                        check = StreamCheck(expect, partial.total)
                        if partial.appending:  # what an earlier try left: checked and hashed like the rest
                            blocking(check.feed_file, partial.path)
                        for block in resp.iter_bytes():
                            check.feed(block)  # raises before an offending block is written
                            blocking(f.write, block)  # async: in a thread (a slow disk never stalls the loop)
                            received += len(block)
                            bar.update(len(block))
                            deadline.check()
                finally:
                    resp.close()
                partial.check_complete()
                return received, check.finish()
            except RangeNotSatisfiableError:
                partial.discard()  # a stale partial (server-side change): start over
            except IntegrityError:
                partial.discard()  # never kept, never resumed: the server sent what it must not
                raise
            except (httpx.TransportError, httpx.StreamError) as exc:
                if attempt == self.config.retries:
                    raise ConnectionFailedError(f"download of {path} failed: {exc}") from exc
                delay = retry_delay(attempt, self.config.retries, None, None) or 0
                if not deadline.allows(delay):
                    raise deadline.error() from exc
                sleep(delay)
        raise ConnectionFailedError(f"download of {path} did not complete")

    def _resolve(self, ref: Ref) -> str:
        """The digest ``ref`` names (see ``_resolve_declared``)."""
        return (self._resolve_declared(ref))[0]

    def _resolve_declared(self, ref: Ref) -> tuple[str, dict[str, Any]]:
        """The digest ``ref`` names and what the server declared about it (``size``,
        ``num_params``; empty when no request was made): no request for digests (or offline);
        else ``GET /models/{ref}``, whose error body carries the server's message. A 404 for a
        name lists the tags it has; a server that cannot be reached (or fails with 5xx) falls
        back on the cached ref with a ``CacheFallbackWarning``, after one try (no retries: the
        cache answers at once). The cached ref is written by the caller, once the blob is in."""
        digest = self._local_digest(ref)
        if digest is not None:
            return digest, {}
        cached = self._cached_ref(ref)
        try:
            resp = self._send("GET", self._model_path(ref), retries=0 if cached else None)
        except (ConnectionFailedError, ServerError) as exc:
            if cached is None:
                raise
            return self._fall_back(ref, cached, exc), {}
        except NotFoundError as exc:
            raise self._with_404_hint(exc, ref, self._tags_of(ref)) from exc
        data = resp.json()
        digest = self._digest_of(data, ref)
        return digest, {k: declared_int(data, k) for k in ("size", "num_params")}

    def _blob(self, kind: str, digest: str, report: TransferReport, expect: Expect, *, digest_of: str) -> Path:
        """The cached blob ``digest``, downloaded first if needed: streamed into its ``.incomplete``
        file under ``expect``'s bounds, hashed as it arrives, and moved into ``blobs/`` only once
        its digest checked out (``digest_of``: ``"file"`` sha256, or a base's ``"state"`` digest)."""
        if self.cache.has(digest):
            report.cached.append(kind)
            self.cache.touch(digest)
            return self.cache.blob(digest)
        if self.config.offline:
            raise self._offline_miss(f"the {kind} sha256:{digest}")
        with lock(self.cache, digest):
            if not self.cache.has(digest):
                partial = Partial(self.cache.incomplete(digest))
                desc = f"{kind} {digest[:12]}"
                received, sha256 = self._fetch(f"/{kind}s/{digest}", partial, expect, desc=desc)
                report.bytes_received += received
                try:  # a base's state digest reads its tensors: in a thread
                    blocking(self.cache.commit, digest, partial.path, digest_of=digest_of, sha256=sha256)
                finally:
                    partial.discard_sidecar()
        return self.cache.blob(digest)

    def _bundle(self, ref: Ref, report: TransferReport) -> Path:
        """Resolve ``ref`` and bring its bundle into the cache (bounded by the size the server
        declared and ``MCNC_MAX_BUNDLE_BYTES``); the ref is written only then."""
        report.digest, declared = self._resolve_declared(ref)
        expect = expect_bundle(report.digest, declared.get("size"), self.config.limits)
        path = self._blob("bundle", report.digest, report, expect, digest_of="file")
        self._remember(ref, report.digest)
        return path

    # -- public API -----------------------------------------------------------------------------

    def load(
        self,
        ref: str,
        *,
        device: str = "cpu",
        dtype: Any = None,
        model: nn.Module | None = None,
        base: Mapping[str, Tensor] | nn.Module | None = None,
        verify: bool = True,
    ) -> dict[str, Tensor]:
        """Download the bundle (if not cached) and reconstruct the weights locally.

        One request when the bundle is cached (resolving the ref); none for a cached digest ref or
        offline. A delta bundle's base is fetched once and cached for all its deltas, unless the
        caller passes it as ``base``: then it is checked and never downloaded.

        Args:
            ref: ``name``, ``name:tag``, ``sha256:<hex>`` or a 64-hex digest.
            device: where to reconstruct (``"cpu"``, ``"cuda"``).
            dtype: output dtype for floating tensors (``"float16"``, ``torch.bfloat16``, ...).
            model: if given, the weights are loaded into it with ``strict=True``; without a
                ``dtype`` they are decoded straight into its tensors (no second copy) and the
                returned dict is ``model.state_dict()``, aliasing them. If verification fails
                then, the tensors up to the one named have been overwritten.
            base: a delta bundle's base that the caller already holds: a state dict or a module
                (its ``state_dict()``; ``model`` itself works: its base values are read before they
                are overwritten). Its ``mcnc_core.state_digest`` over exactly the tensors the bundle
                reads must equal the bundle's base digest; extra tensors are ignored.
            verify: check the reconstruction against the bundle's fingerprint.

        Returns:
            The state dict (also loaded into ``model`` if given).

        Raises:
            OfflineError, NotFoundError and other APIError subclasses, IntegrityError,
            BaseMismatchError (``base`` is not the delta's base; names both digests, nothing written),
            StateDictMismatchError (``model`` has other keys; lists missing and unexpected),
            InvalidArgumentError (``base`` given for a full-mode bundle, an unknown ``dtype``),
            RefError (a malformed ``ref``).
        """
        from client._local import check_given_base, given_base, plan_load, reconstruct_local

        report = TransferReport(ref)
        start = time.perf_counter()
        bundle_path = self._bundle(parse_ref(ref), report)
        # Before anything else is downloaded or allocated: does the reconstruction fit here?
        plan = blocking(
            plan_load,
            bundle_path,
            device=device,
            dtype=dtype,
            into_model=model is not None and dtype is None,
            given_base=base is not None,
            limit=self.config.limits.max_load_bytes,
        )
        base_path, given = None, None
        if base is not None:  # the caller's base: checked here, never downloaded
            given = given_base(base)
            blocking(check_given_base, bundle_path, given)  # hashes the base
        elif plan.base_digest is not None and plan.base is not None:
            # A base enters the cache only after its state digest checked out; while it streams in,
            # its header must list exactly the tensors the bundle reads, and no byte more comes.
            what = f"base sha256:{plan.base_digest[:16]}"
            expect = expect_safetensors(what, plan.base, "what the bundle's manifest implies")
            try:
                base_path = self._blob("base", plan.base_digest, report, expect, digest_of="state")
            except BaseNotFoundError as exc:
                raise exc.with_hint(
                    "the server holds only the delta: pass the base you have, load(ref, base=...)"
                ) from exc
        report.seconds_network = time.perf_counter() - start
        state, report.seconds_reconstruct = blocking(
            reconstruct_local,
            bundle_path,
            base_path,
            device=device,
            dtype=dtype,
            model=model,
            verify=verify,
            base=given,
        )
        report.full_weights_bytes = sum(t.numel() * t.element_size() for t in state.values())
        self.last_report = report
        return state

    def download_adapter(
        self,
        ref: str,
        out_dir: str | os.PathLike[str],
        *,
        dtype: str = "bfloat16",
        base_model_name_or_path: str | None = None,
    ) -> Path:
        """Download a delta bundle (if not cached) and write it as a PEFT LoRA adapter directory.

        Only the bundle crosses the network (its base is not needed); ``mcnc_core.export_peft``
        writes ``adapter_config.json`` and ``adapter_model.safetensors``, which
        ``peft.PeftModel.from_pretrained(base_model, out_dir)`` and vLLM load.
        ``last_report.full_weights_bytes`` is then the size of the adapter files.

        Args:
            ref: ``name``, ``name:tag``, ``sha256:<hex>`` or a 64-hex digest.
            out_dir: the adapter directory (created if needed; files replaced atomically).
            dtype: dtype of the LoRA factors (``"bfloat16"``, ``"float16"``, ``"float32"``: exact).
            base_model_name_or_path: recorded in ``adapter_config.json`` (default: the bundle's base name).

        Returns:
            ``out_dir`` as a ``Path``.

        Raises:
            OfflineError, NotFoundError and other APIError subclasses, IntegrityError,
            AdapterExportError (a full-mode or rank-0 bundle, raw tensors PEFT cannot save),
            InsufficientMemoryError (the factors would not fit in memory; checked first).
        """
        from client._local import export_adapter

        report = TransferReport(ref)
        start = time.perf_counter()
        bundle_path = self._bundle(parse_ref(ref), report)
        report.seconds_network = time.perf_counter() - start
        start = time.perf_counter()
        report.full_weights_bytes = blocking(
            export_adapter,
            bundle_path,
            Path(out_dir),
            dtype=dtype,
            base_model_name_or_path=base_model_name_or_path,
            limit=self.config.limits.max_load_bytes,
        )
        report.seconds_reconstruct = time.perf_counter() - start
        self.last_report = report
        return Path(out_dir)

    def download_weights(
        self, ref: str, path: str | os.PathLike[str], *, dtype: str | None = None, verify: bool = True
    ) -> TransferReport:
        """Stream the server-side reconstruction to ``path`` (safetensors), resumably.

        An interrupted download resumes from ``<path>.incomplete`` with Range/If-Range and
        restarts if the server's ETag changed. Whatever ``verify`` says, the file must end exactly
        where its safetensors header says (a body cut short is refused, chunked or not); the
        sha256 is checked when the server sends ``X-MCNC-Weights-Digest``. With ``verify`` the
        bundle is fetched first: the header must list exactly its tensors, and every tensor is
        checked against its fingerprint. Only then is the file renamed to ``path``: never a
        partial file there.
        """
        from client._local import weights_layout

        report = TransferReport(ref)
        start = time.perf_counter()
        parsed = parse_ref(ref)
        if verify:
            bundle_path: Path | None = self._bundle(parsed, report)
            assert bundle_path is not None
            what = f"weights of sha256:{report.digest[:16]}"
            layout = blocking(weights_layout, bundle_path, dtype)
            expect = expect_safetensors(what, layout, "what the bundle's manifest implies")
        else:
            bundle_path = None
            report.digest, declared = self._resolve_declared(parsed)
            expect = expect_weights(report.digest, declared.get("num_params"))
        params = {"dtype": dtype} if dtype else None
        partial = Partial(Path(f"{os.fspath(path)}.incomplete"))
        received, sha256 = self._fetch(
            f"/models/{report.digest}/weights", partial, expect, params=params, desc=f"weights {report.digest[:12]}"
        )
        report.bytes_received += received
        report.full_weights_bytes = partial.total or partial.size
        report.seconds_network = time.perf_counter() - start
        report.seconds_reconstruct = blocking(finish_download, partial, Path(path), bundle_path, sha256)
        self.last_report = report
        return report

    def bundle_metadata(self, ref: str) -> dict[str, str]:
        """The bundle's ``__metadata__`` (format version, config, ``x-`` keys ...), string to string.

        Downloads the bundle into the cache if it is not there (bundles are small; ``load`` then
        needs no download); reads only its header, without torch.
        """
        report = TransferReport(ref)
        return blocking(bundle_metadata, self._bundle(parse_ref(ref), report))
