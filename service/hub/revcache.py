"""``RevisionCache``: the files of adapter revisions the Hub routes answered, by ``(repo, revision)``.

Every request of a ``snapshot_download`` (model info, tree, HEAD and GET of each file) needs the
same ``RepoFiles``; rebuilding it cost eight or nine point queries (tag, bundle, sidecars, base,
base names...) per request. An entry is kept with the ``RevisionState`` it was built under and is
used only while a fresh read of that state (one statement, ``MetadataStore.revision_state``) is
equal: a tag that moves, a bundle verified or failed (here or by another replica), a base stored
or named, a tag or bundle deleted — each changes the state or removes it, and the next request
rebuilds. So replicas need no invalidation message: each checks the database per request. Bounded
(LRU, ``capacity`` entries of a few kB); only adapter revisions are kept (a full model's entry
would pin its parsed bundle).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.hub.files import RepoFiles
    from service.storage.hub_state import RevisionState

__all__ = ["RevisionCache"]

Key = tuple[str, str]


class RevisionCache:
    """Thread-safe LRU of ``(repo, revision) -> (state, RepoFiles)``."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[Key, tuple[RevisionState, RepoFiles]] = OrderedDict()

    def get(self, key: Key, state: RevisionState) -> RepoFiles | None:
        """The files cached for ``key`` if they were built under ``state``, else None."""
        with self._lock:
            hit = self._items.get(key)
            if hit is None or hit[0] != state:
                return None
            self._items.move_to_end(key)
            return hit[1]

    def put(self, key: Key, state: RevisionState, repo: RepoFiles) -> None:
        with self._lock:
            self._items[key] = (state, repo)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def forget(self, digest: str) -> None:
        """Drop the entries of revisions of bundle ``digest`` (deleted: nothing may keep it alive)."""
        with self._lock:
            for key in [k for k, (_, repo) in self._items.items() if repo.rev.digest == digest]:
                del self._items[key]

    def __len__(self) -> int:
        return len(self._items)
