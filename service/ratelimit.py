"""``RateLimiter``: requests per identity over a moving window, shared by every replica through Redis.

Built on ``limits`` (its moving-window strategy; in Redis an atomic Lua script): ``rate`` requests
per second with bursts of ``burst`` become *at most ``burst`` requests in any window of
``burst / rate`` seconds* (rounded to whole seconds, at least 1). With ``MCNC_REDIS_URL`` the
counters live in Redis under ``<MCNC_REDIS_PREFIX>ratelimit``, so N replicas allow the rate once,
not N times; without Redis, or while Redis fails, they live in this process (bounded: each
identity's entries expire with its window).
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter

from service.errors import RateLimitedError

__all__ = ["RateLimiter"]

log = logging.getLogger("mcnc.service.ratelimit")
_REDIS_RETRY_S = 2.0  # after a Redis failure, count locally this long before trying Redis again


class RateLimiter:
    """Throttle identities to ``rate`` requests/s in bursts of ``burst``; off when ``rate`` is 0.

    Args:
        redis_url: share the counters with every replica using this Redis (None: this process only).
        prefix: the key prefix in Redis (``MCNC_REDIS_PREFIX``).
    """

    def __init__(self, rate: float, burst: int, *, redis_url: str | None = None, prefix: str = "mcnc:") -> None:
        self.rate, self.burst = rate, burst
        self.window = max(1, round(burst / rate)) if rate > 0 else 1
        self.item = RateLimitItemPerSecond(burst, self.window, namespace="mcnc")
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        if rate > 0 and redis_url:
            storage = RedisStorage(
                redis_url if redis_url.startswith("redis") else f"redis+{redis_url}",
                key_prefix=f"{prefix}ratelimit",
                wrap_exceptions=True,  # every Redis failure arrives as limits' StorageError
                socket_connect_timeout=0.5,
                socket_timeout=1.0,
            )
            self._shared = MovingWindowRateLimiter(storage)
        self._shared_down_until = 0.0

    def _hit(self, identity: str) -> tuple[bool, float]:
        """Count one request; (allowed, seconds until a request is allowed again)."""
        limiter = self._local
        if self._shared is not None and time.monotonic() >= self._shared_down_until:
            limiter = self._shared
        try:
            allowed = limiter.hit(self.item, identity)
            reset = limiter.get_window_stats(self.item, identity).reset_time if not allowed else 0.0
        except StorageError as exc:
            self._shared_down_until = time.monotonic() + _REDIS_RETRY_S
            log.warning("rate limits: Redis failed (%s); counting in this process for %.0fs", exc, _REDIS_RETRY_S)
            allowed = self._local.hit(self.item, identity)
            reset = self._local.get_window_stats(self.item, identity).reset_time if not allowed else 0.0
        return allowed, reset - time.time()

    def check(self, identity: str) -> None:
        """Count a request of ``identity`` (an authenticated token's id, else the client address).

        Raises:
            RateLimitedError: over the limit; carries ``Retry-After``, ``RateLimit`` and ``RateLimit-Policy``.
        """
        if self.rate <= 0:
            return
        allowed, wait_s = self._hit(identity)
        if allowed:
            return
        wait = max(1, math.ceil(wait_s))
        raise RateLimitedError(
            f"rate limit of {self.burst} requests per {self.window}s exceeded; retry in {wait}s",
            headers={
                "Retry-After": str(wait),
                "RateLimit": f"limit={self.burst}, remaining=0, reset={wait}",
                "RateLimit-Policy": f"{self.burst};w={self.window}",
            },
        )
