"""Counter-based PRNG (Philox4x32-10) and the exact uint32 → float mapping used for generators.

Why our own: PyTorch and NumPy do not promise the same random stream across releases,
platforms or devices, and a bundle must rebuild the same generator everywhere, forever.
Everything here is integer arithmetic plus one exact int → float step, so the result is
bit-identical on every platform, device, thread count and library version.

Specification (normative; ``docs/bundle-format.md`` repeats it):

* **Philox4x32-10** (Salmon et al., SC'11, as in Random123): a 128-bit counter
  ``(c0, c1, c2, c3)`` and a 64-bit key ``(k0, k1)``, all uint32. One round maps
  ``(c0, c1, c2, c3)`` to ``(hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0))``
  with ``M0 = 0xD2511F53``, ``M1 = 0xCD9E8D57``; between rounds the key is bumped by
  ``W0 = 0x9E3779B9``, ``W1 = 0xBB67AE85`` (mod 2**32). Ten rounds; output is the final counter.
* **Streams**: ``seed`` (0 ≤ seed < 2**64) gives the key ``k0 = seed & 0xFFFFFFFF``,
  ``k1 = seed >> 32``. A stream id ``s`` (0 ≤ s < 2**32) and a block index ``i``
  (0 ≤ i < 2**64) give the counter ``(i & 0xFFFFFFFF, i >> 32, s, 0)``. Block ``i`` yields
  four words; word ``j`` of block ``i`` is element ``4*i + j`` of the stream.
* **Uniforms**: word ``x`` maps to ``u = (x >> 8) * 2**-24`` in ``[0, 1)`` (exact in float32),
  and ``U(-b, b)`` samples are ``float32(b * (2*u - 1))`` computed in float64, where ``b`` is
  itself a correctly rounded float64 (``+ - * / sqrt`` only, never a transcendental function).
"""

from __future__ import annotations

import numpy as np

__all__ = ["philox4x32", "random_uint32", "uniform", "uniform_symmetric"]

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)
_ROUNDS = 10


def philox4x32(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Apply Philox4x32-10 to a batch of counters.

    Args:
        counter: ``(n, 4)`` array of uint32-range integers (any integer dtype).
        key: ``(k0, k1)``, each in ``[0, 2**32)``.

    Returns:
        ``(n, 4)`` uint32 array, the ten-round output for each counter.
    """
    c = np.asarray(counter, dtype=np.uint64) & _MASK32
    if c.ndim != 2 or c.shape[1] != 4:
        raise ValueError(f"counter must have shape (n, 4), got {c.shape}")
    c0, c1, c2, c3 = (c[:, j].copy() for j in range(4))
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for r in range(_ROUNDS):
        if r:
            k0 = (k0 + _W0) & 0xFFFFFFFF
            k1 = (k1 + _W1) & 0xFFFFFFFF
        # 32x32 -> 64-bit products are exact in uint64.
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0),
            p1 & _MASK32,
            (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1),
            p0 & _MASK32,
        )
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def _check_seed(seed: int) -> None:
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")


def random_uint32(seed: int, stream: int, n: int, offset: int = 0) -> np.ndarray:
    """Return elements ``[offset, offset + n)`` of stream ``stream`` under ``seed`` as uint32.

    Args:
        seed: 64-bit seed, ``0 <= seed < 2**64``.
        stream: stream id, ``0 <= stream < 2**32``; distinct streams are independent.
        n: number of words (``>= 0``).
        offset: first element index (``>= 0``).

    Returns:
        ``(n,)`` uint32 array.
    """
    _check_seed(seed)
    if not 0 <= stream < 2**32:
        raise ValueError(f"stream must be in [0, 2**32), got {stream}")
    if n < 0 or offset < 0:
        raise ValueError(f"n and offset must be >= 0, got n={n}, offset={offset}")
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    first, last = offset // 4, (offset + n - 1) // 4
    blocks = np.arange(first, last + 1, dtype=np.uint64)
    counter = np.stack(
        [
            blocks & _MASK32,
            blocks >> np.uint64(32),
            np.full_like(blocks, stream),
            np.zeros_like(blocks),
        ],
        axis=1,
    )
    words = philox4x32(counter, (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)
    start = offset - 4 * first
    return words[start : start + n]


def uniform(seed: int, stream: int, n: int, offset: int = 0) -> np.ndarray:
    """Uniform float32 samples in ``[0, 1)``: ``(x >> 8) * 2**-24`` of each word (exact)."""
    words = random_uint32(seed, stream, n, offset)
    return ((words >> np.uint32(8)).astype(np.float64) * 2.0**-24).astype(np.float32)


def uniform_symmetric(seed: int, stream: int, n: int, bound: float) -> np.ndarray:
    """``(n,)`` float32 samples of ``U(-bound, bound)``: ``float32(bound * (2u - 1))``.

    ``2u - 1`` is exact in float64 and the single multiply is correctly rounded, so the
    result depends only on ``bound``'s float64 value.
    """
    u = (random_uint32(seed, stream, n) >> np.uint32(8)).astype(np.float64) * 2.0**-24
    return (np.float64(bound) * (2.0 * u - 1.0)).astype(np.float32)
