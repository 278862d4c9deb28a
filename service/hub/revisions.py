"""Which content a Hub ``repo@revision`` names: the one resolver every Hub route asks.

A repo is a bundle name (it has tags) or a base's repo name (``POST /bases?name=``). A revision of
a bundle repo is, in this order: a tag of that name (a tag called ``main`` wins), ``main`` (the tag
``main`` if there is one, else the tag pushed most recently), a commit id (40 hex), or a bundle
digest the name points at (``sha256:<hex>`` or 64 hex). A base repo has one revision: ``main``,
its commit id or its base digest.

Exact tensors on request: ``<revision>:float32`` (``main:float32``, ``v1:float32``) serves an
adapter's LoRA factors, or a full model's weights, in float32. Such a revision has its own commit
id: the plain one with its last hex digit ``1`` instead of ``0`` (``refs.commit_id``), so a
client's cache never mixes the two, and a pin by that commit keeps meaning float32.

Every lookup is a point query (issue 11 D9): no route loads all of a name's tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from service.errors import InvalidRequestError, RepoNotFoundError, RevisionNotFoundError
from service.storage import BundleRecord, FileRecord, Store, TagRecord, parse_ref, validate_name
from service.storage.hub_state import RevisionState

__all__ = ["EXACT_SUFFIX", "MAIN", "Revision", "resolve", "state"]

MAIN = "main"  # huggingface_hub's default revision
EXACT_SUFFIX = ":float32"
_COMMIT = re.compile(r"[0-9a-f]{40}")
Kind = Literal["adapter", "model", "base"]


@dataclass(frozen=True)
class Revision:
    """One resolved revision of a Hub repo.

    Attributes:
        repo: the repo id (``name`` or ``org/name``).
        kind: ``adapter`` (a delta bundle, served as a PEFT adapter), ``model`` (a full-mode
            bundle, served as ``model.safetensors``) or ``base`` (a base registered by name).
        digest: the bundle digest, or the base's digest.
        commit: the Hub commit id served (``X-Repo-Commit``, ``sha``), 40 hex.
        tag: the tag it came from (None for a base repo).
        pinned: the request named an immutable revision (a commit or a digest).
        exact: float32 tensors (``:float32``).
        files: the sidecar files.
        updated_at: when the tag (or base name) last moved.
        bundle: the bundle's record (None for a base repo).
    """

    repo: str
    kind: Kind
    digest: str
    commit: str
    tag: str | None
    pinned: bool
    exact: bool
    files: tuple[FileRecord, ...]
    updated_at: float
    bundle: BundleRecord | None


def _commit(stored: str, exact: bool) -> str:
    return stored[:39] + ("1" if exact else "0")


def _repo_missing(repo_id: str) -> RepoNotFoundError:
    return RepoNotFoundError(
        f"no repository {repo_id!r} here: push a bundle with `mcnc push FILE --name {repo_id}` "
        f"(POST /bundles?name={repo_id}) or register a base with `mcnc push-base FILE --name {repo_id}`"
    )


def resolve(store: Store, repo_id: str, revision: str | None) -> Revision:
    """The content ``repo_id@revision`` names (``None``: ``main``).

    Raises:
        RepoNotFoundError: no repo ``repo_id`` (or not a valid name).
        RevisionNotFoundError: no such revision, naming some that exist.
    """
    try:
        validate_name(repo_id)
    except InvalidRequestError as exc:
        raise RepoNotFoundError(f"no repository {repo_id!r}: {exc.message}") from exc
    revision = revision or MAIN
    exact = revision.endswith(EXACT_SUFFIX)
    base_rev = revision[: -len(EXACT_SUFFIX)] if exact else revision
    if store.meta.tags_named(repo_id, limit=1):
        return _bundle_revision(store, repo_id, revision, base_rev, exact)
    named = store.meta.base_name(repo_id)
    if named is None:
        raise _repo_missing(repo_id)
    pinned = base_rev in (named.commit, named.digest, f"sha256:{named.digest}")
    if exact or not (pinned or base_rev == MAIN):
        raise RevisionNotFoundError(
            f"base repo {repo_id!r} has no revision {revision!r}: its revisions are 'main', its commit "
            f"{named.commit} and its digest sha256:{named.digest} (a base is served as stored)"
        )
    return Revision(
        repo_id,
        "base",
        named.digest,
        named.commit,
        None,
        pinned,
        False,
        tuple(store.meta.base_files(repo_id)),
        named.updated_at,
        None,
    )


def _bundle_revision(store: Store, repo_id: str, revision: str, base_rev: str, exact: bool) -> Revision:
    tag: TagRecord | None = store.meta.get_tag(repo_id, base_rev) if len(base_rev) <= 128 else None
    pinned = False
    if tag is None and base_rev == MAIN:
        tag = store.meta.main_tag(repo_id)
    if tag is None and _COMMIT.fullmatch(base_rev) and base_rev[39] in "01":
        tag = store.meta.tag_by_commit(repo_id, base_rev[:39] + "0")
        exact, pinned = exact or base_rev[39] == "1", tag is not None
    if tag is None:
        try:
            ref = parse_ref(base_rev)
        except InvalidRequestError:
            ref = None
        if ref is not None and ref.digest is not None:
            found = store.meta.tags_named(repo_id, limit=1, digest=ref.digest)
            tag, pinned = (found[0], True) if found else (None, False)
    if tag is None:
        some = ", ".join(t.tag for t in store.meta.tags_named(repo_id, limit=10))
        raise RevisionNotFoundError(
            f"{repo_id!r} has no revision {revision!r} (tags: {some}; 'main' is the tag main, else the newest push; "
            f"a commit id or a bundle digest; add {EXACT_SUFFIX} for float32)"
        )
    rec = store.meta.get_bundle(tag.digest)
    if rec is None:  # pragma: no cover - a tag always points at a stored bundle (foreign key)
        raise RevisionNotFoundError(f"{repo_id}@{revision} points at a missing bundle")
    return Revision(
        repo_id,
        "adapter" if rec.mode == "delta" else "model",
        rec.digest,
        _commit(tag.commit, exact),
        tag.tag,
        pinned,
        exact,
        tuple(store.meta.tag_files(repo_id, tag.tag)),
        tag.updated_at,
        rec,
    )


def state(store: Store, repo_id: str, revision: str | None) -> RevisionState | None:
    """What the answer about bundle revision ``repo_id@revision`` depends on, read in one statement
    by ``resolve``'s rules (a tag of that name first, then by the revision's form: ``main``, a commit
    id, a digest); None where ``resolve`` would not find a bundle tag (a base repo, an unknown
    revision: ask ``resolve`` for the answer or the error)."""
    revision = revision or MAIN
    base_rev = revision.removesuffix(EXACT_SUFFIX)
    tag = base_rev if len(base_rev) <= 128 else ""
    if base_rev == MAIN:
        return store.meta.revision_state(repo_id, tag, "newest")
    if _COMMIT.fullmatch(base_rev) and base_rev[39] in "01":
        return store.meta.revision_state(repo_id, tag, "commit", commit=base_rev[:39] + "0")
    try:
        ref = parse_ref(base_rev)
    except InvalidRequestError:
        ref = None
    if ref is not None and ref.digest is not None:
        return store.meta.revision_state(repo_id, tag, "digest", digest=ref.digest)
    return store.meta.revision_state(repo_id, tag) if tag else None
