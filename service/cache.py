"""Tier 1: an in-process, byte-budget LRU of reconstructed tensors (tier 2 is ``service.redis_cache``).

Keys never go stale: they are the model key ``<bundle digest>:<dtype>:<profile>``, never a name.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor

from service.metrics import Metrics

__all__ = ["MemoryCache"]


@dataclass
class _ModelStat:
    nbytes: int = 0
    tensors: int = 0
    last_used: float = 0.0


class MemoryCache:
    """Thread-safe LRU of ``(model_key, tensor name) -> tensor`` bounded by ``budget`` bytes."""

    def __init__(self, budget: int, metrics: Metrics) -> None:
        self.budget, self.metrics = budget, metrics
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], Tensor] = OrderedDict()
        self._models: dict[str, _ModelStat] = {}
        self.nbytes = 0

    @staticmethod
    def _size(t: Tensor) -> int:
        return t.numel() * t.element_size()

    def get(self, key: str, name: str) -> Tensor | None:
        with self._lock:
            t = self._items.get((key, name))
            if t is not None:
                self._items.move_to_end((key, name))
                self._models[key].last_used = time.time()
            return t

    def has_all(self, key: str, names: list[str]) -> bool:
        with self._lock:
            return all((key, n) in self._items for n in names)

    def put(self, key: str, name: str, t: Tensor) -> bool:
        """Insert, evicting least recently used tensors; False if ``t`` alone exceeds the budget."""
        size = self._size(t)
        if size > self.budget:
            return False
        with self._lock:
            if (key, name) in self._items:
                self._items.move_to_end((key, name))
                return True
            while self.nbytes + size > self.budget and self._items:
                (k, _n), old = self._items.popitem(last=False)
                self._account(k, -self._size(old), -1)
                self.metrics.evictions.labels("memory").inc()
            self._items[(key, name)] = t
            self._account(key, size, 1)
            return True

    def _account(self, key: str, nbytes: int, count: int) -> None:
        stat = self._models.setdefault(key, _ModelStat())
        stat.nbytes += nbytes
        stat.tensors += count
        stat.last_used = time.time()
        self.nbytes += nbytes
        if stat.tensors == 0:
            del self._models[key]
        self.metrics.cache_bytes.labels("memory").set(self.nbytes)

    def drop_digest(self, digest: str) -> None:
        with self._lock:
            for k, n in [kn for kn in self._items if kn[0].startswith(digest + ":")]:
                self._account(k, -self._size(self._items.pop((k, n))), -1)

    def loaded(self) -> dict[str, _ModelStat]:
        with self._lock:
            return {k: _ModelStat(v.nbytes, v.tensors, v.last_used) for k, v in self._models.items()}
