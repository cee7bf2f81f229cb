"""Noise generator "i2i-noise-v1" in numpy (the Rust engine implements the same; see docs/models.md).

SplitMix64 in counter form: draw k (k = 0, 1, 2, ...) of seed s, all arithmetic mod 2^64:

    z = s + (k + 1) * 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    z = z ^ (z >> 31)
    u_k = ((z >> 11) + 0.5) * 2^-53            (float64, strictly inside (0, 1))

Normal element j uses the pair p = j // 2: r = sqrt(-2 ln u_{2p}), th = 2 pi u_{2p+1};
g_j = r cos(th) for even j, r sin(th) for odd j; computed in float64, rounded to float32.
The init noise [n, 4, h, w] takes elements 0 .. n*4*h*w - 1 in C order (slot i does not depend on n).
The similarity filter's coin for its f-th frame is u_f of seed ^ 0x5EEDF11E5EEDF11E.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
FILTER_SEED_XOR = 0x5EEDF11E5EEDF11E
MASK64 = (1 << 64) - 1


def _u64(seed: int) -> np.uint64:
    if not 0 <= int(seed) <= MASK64:
        raise ValueError(f"seed {seed} is outside 0 .. 2^64-1")
    return np.uint64(int(seed))


def splitmix64(seed: int, start: int, count: int) -> np.ndarray:
    """Raw 64-bit outputs for draws k = start .. start+count-1 (uint64)."""
    k1 = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = _u64(seed) + k1 * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * MIX1
        z = (z ^ (z >> np.uint64(27))) * MIX2
        z = z ^ (z >> np.uint64(31))
    return z


def uniforms(seed: int, count: int, start: int = 0) -> np.ndarray:
    """u_k for k = start .. start+count-1, float64 in (0, 1)."""
    z = splitmix64(seed, start, count)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * (2.0 ** -53)


def normals(seed: int, count: int) -> np.ndarray:
    """Standard normal elements g_0 .. g_{count-1} (float32)."""
    pairs = (count + 1) // 2
    u = uniforms(seed, 2 * pairs)
    r = np.sqrt(-2.0 * np.log(u[0::2]))
    th = 2.0 * np.pi * u[1::2]
    g = np.empty(2 * pairs, dtype=np.float64)
    g[0::2] = r * np.cos(th)
    g[1::2] = r * np.sin(th)
    return g[:count].astype(np.float32)


def init_noise(seed: int, n: int, h: int, w: int) -> np.ndarray:
    """The fixed per-seed noise N of shape [n, 4, h, w]."""
    return normals(seed, n * 4 * h * w).reshape(n, 4, h, w)


def filter_coin(seed: int, f: int) -> float:
    """The similarity filter's uniform draw for the f-th frame it sees."""
    return float(uniforms(int(seed) ^ FILTER_SEED_XOR, 1, start=f)[0])
