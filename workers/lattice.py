"""The "prime lattice" embedding initialisation, kept from the C original as an option.

The C project mapped token id -> n-th prime -> position on the Ulam spiral -> features.
Nothing says that geometry helps a language model, so here it is only an alternative
*initialisation* of the token embedding, scaled to look like the usual normal(0, std)
init; whether it helps is measured on validation loss by a benchmark, not assumed.
"""

from __future__ import annotations

import math

import numpy as np


def nth_primes(n: int) -> np.ndarray:
    """The first ``n`` primes as int64, by a numpy sieve of Eratosthenes."""
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # Rosser's bound p_n < n(ln n + ln ln n) holds for n >= 6; p_5 = 11 covers the rest.
    limit = int(n * (math.log(n) + math.log(math.log(n)))) + 1 if n >= 6 else 12
    is_prime = np.ones(limit + 1, dtype=bool)
    is_prime[:2] = False
    for i in range(2, math.isqrt(limit) + 1):
        if is_prime[i]:
            is_prime[i * i :: i] = False  # one vectorised strike-out per prime below sqrt(limit)
    return np.flatnonzero(is_prime)[:n].astype(np.int64)


def ulam_coordinates(values: np.ndarray) -> np.ndarray:
    """(x, y) of each integer k >= 1 on the counter-clockwise Ulam spiral, 1 at the origin.

    Ring m holds k in ((2m-1)^2, (2m+1)^2]; it starts just right of the corner (m-1, -(m-1))
    and runs up the right side, left along the top, down the left, right along the bottom,
    each side 2m long. Returns an (len(values), 2) int64 array.
    """
    k = np.asarray(values, dtype=np.int64).reshape(-1)
    if k.size and k.min() < 1:
        raise ValueError("Ulam spiral positions start at 1")
    m = np.ceil((np.sqrt(k.astype(np.float64)) - 1.0) / 2.0).astype(np.int64)
    # The float sqrt can be off by one ulp at perfect squares: nudge m into its ring exactly.
    m += (2 * m + 1) ** 2 < k
    m -= (m > 0) & ((2 * m - 1) ** 2 >= k)
    t = k - (2 * m - 1) ** 2 - 1  # offset along ring m, in [0, 8m)
    side = np.where(m > 0, t // np.maximum(2 * m, 1), 0)
    x = np.select([side == 0, side == 1, side == 2], [m, 3 * m - t - 1, -m], t - 7 * m + 1)
    y = np.select([side == 0, side == 1, side == 2], [t - m + 1, m, 5 * m - t - 1], -m)
    out = np.stack([x, y], axis=1)
    out[m == 0] = 0  # k = 1 is the centre
    return out


def lattice_embedding(vocab_size: int, dim: int, std: float = 0.02) -> np.ndarray:
    """A deterministic (vocab_size, dim) float32 embedding init from the prime lattice.

    Token i goes to the (i+1)-th prime p, its Ulam spiral position (x, y) and polar form
    (r, theta). Column 0 is log p (scaled to a sinusoid's variance); then, for frequency
    j = 0, 1, ..., four columns sin/cos(theta * (j+1)) and sin/cos(r * w_j), with w_j
    geometric from 1 down to 1/r_max like transformer positional encodings, cut off at
    exactly ``dim`` columns. Each column is centred and the whole matrix scaled so its
    standard deviation is ``std``: a drop-in for normal(0, std). Distinct tokens get
    distinct rows because log p is strictly increasing. No RNG is used.

    This is only an initialisation: its value against normal(0, std) is measured on
    validation loss, not assumed. With vocab_size == 1 every centred column is zero.
    """
    if vocab_size < 1 or dim < 1:
        raise ValueError(f"vocab_size and dim must be at least 1, got {vocab_size} and {dim}")
    primes = nth_primes(vocab_size)
    xy = ulam_coordinates(primes).astype(np.float64)
    r = np.hypot(xy[:, 0], xy[:, 1])
    theta = np.arctan2(xy[:, 1], xy[:, 0])

    log_p = np.log(primes.astype(np.float64))
    spread = log_p.std()
    columns = [(log_p - log_p.mean()) / spread * math.sqrt(0.5) if spread > 0 else log_p]
    n_freq = -(-(dim - 1) // 4)  # ceil: enough groups of four for the remaining columns
    r_max = max(float(r.max()), 1.0)
    for j in range(n_freq):
        w = r_max ** (-j / max(n_freq - 1, 1))  # 1 resolves neighbouring rings, 1/r_max the whole spiral
        columns += [np.sin(theta * (j + 1)), np.cos(theta * (j + 1)), np.sin(r * w), np.cos(r * w)]
    emb = np.stack(columns[:dim], axis=1)

    emb -= emb.mean(axis=0)  # zero column means, as a normal init has in expectation
    total = emb.std()
    if total > 0:
        emb *= std / total
    return emb.astype(np.float32)
