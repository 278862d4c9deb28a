"""Hub commit ids of bundles: 40 hex digits derived from the bundle digest, stable forever.

``huggingface_hub`` treats a revision as a commit only when it is 40 lowercase hex digits
(``REGEX_COMMIT_HASH``): only then does it store the snapshot under that name and find it again with
``HF_HUB_OFFLINE=1``. A bundle digest has 64, so the Hub routes answer ``commit_id(digest)``:
the first 40 hex digits of ``sha256("mcnc-commit/1\\0" + digest)`` (the digest as its 64 ASCII hex
digits). The prefix names the rule's version: a commit id never changes for a stored bundle.

A commit id cannot be turned back into its digest; ``CommitIndex`` remembers the commits this
process has answered (bounded), and the caller falls back to scanning a bounded number of the
name's tags (see ``service.routers.hub.resolve_revision``).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict

__all__ = ["COMMIT_RE", "CommitIndex", "commit_id"]

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_PREFIX = b"mcnc-commit/1\0"


def commit_id(digest: str) -> str:
    """The Hub commit id (40 lowercase hex digits) of the bundle with sha256 ``digest`` (64 hex digits)."""
    return hashlib.sha256(_PREFIX + digest.encode("ascii")).hexdigest()[:40]


class CommitIndex:
    """``commit -> digest`` for the last ``capacity`` commits computed through ``commit``; thread-safe.

    A hit is only a candidate: the caller still checks that the repo names that digest.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._map: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def commit(self, digest: str) -> str:
        """``commit_id(digest)``, remembered."""
        cid = commit_id(digest)
        with self._lock:
            self._map[cid] = digest
            self._map.move_to_end(cid)
            while len(self._map) > self.capacity:
                self._map.popitem(last=False)
        return cid

    def digest(self, commit: str) -> str | None:
        with self._lock:
            return self._map.get(commit)
