"""Tests for the prime-lattice embedding initialisation."""

from __future__ import annotations

import numpy as np
import pytest

from crystalline.workers.lattice import lattice_embedding, nth_primes, ulam_coordinates


def _walk(n: int) -> list[tuple[int, int]]:
    """Positions of 1..n by literally walking the spiral: 1, 1, 2, 2, 3, 3, ... steps, turning left."""
    x = y = 0
    dx, dy = 1, 0
    out = [(0, 0)]
    run = 1
    while len(out) < n:
        for _ in range(2):
            for _ in range(run):
                x, y = x + dx, y + dy
                out.append((x, y))
            dx, dy = -dy, dx  # counter-clockwise turn
        run += 1
    return out[:n]


def test_first_primes() -> None:
    assert nth_primes(10).tolist() == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert nth_primes(10000)[-1] == 104729
    assert nth_primes(0).shape == (0,)
    assert nth_primes(10).dtype == np.int64


@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 100])
def test_small_counts_have_the_right_length(n: int) -> None:
    assert len(nth_primes(n)) == n


def test_primes_up_to_65536_match_a_reference_sieve() -> None:
    limit = 1_000_000
    ref = np.ones(limit + 1, dtype=bool)
    ref[:2] = False
    for i in range(2, 1001):
        ref[i * i :: i] = False
    assert np.array_equal(nth_primes(65536), np.flatnonzero(ref)[:65536])


def test_spiral_matches_step_by_step_walk() -> None:
    got = ulam_coordinates(np.arange(1, 2001))
    assert got.shape == (2000, 2)
    assert got.dtype == np.int64
    assert [tuple(p) for p in got.tolist()] == _walk(2000)
    assert ulam_coordinates(np.array([1, 2, 3, 4, 5, 10])).tolist() == [
        [0, 0], [1, 0], [1, 1], [0, 1], [-1, 1], [2, -1],
    ]  # fmt: skip


def test_spiral_rejects_values_below_one() -> None:
    with pytest.raises(ValueError):
        ulam_coordinates(np.array([0, 1]))


@pytest.mark.parametrize("vocab,dim", [(256, 128), (4096, 128), (256, 8), (300, 6), (300, 130)])
def test_embedding_statistics(vocab: int, dim: int) -> None:
    emb = lattice_embedding(vocab, dim, std=0.02)
    assert emb.shape == (vocab, dim)
    assert emb.dtype == np.float32
    assert abs(float(emb.std()) - 0.02) < 0.0002
    assert np.allclose(emb.mean(axis=0), 0.0, atol=1e-6)


@pytest.mark.parametrize("vocab,dim", [(256, 128), (4096, 128), (256, 8), (4096, 8)])
def test_embedding_rows_are_distinct(vocab: int, dim: int) -> None:
    emb = lattice_embedding(vocab, dim)
    assert len(np.unique(emb, axis=0)) == vocab


def test_embedding_is_deterministic_and_respects_std() -> None:
    assert np.array_equal(lattice_embedding(512, 64), lattice_embedding(512, 64))
    assert abs(float(lattice_embedding(512, 64, std=0.1).std()) - 0.1) < 0.001


def test_spiral_ring_corners_stay_exact_for_large_values() -> None:
    # (2m+1)^2 closes ring m at (m, -m) and the next integer opens ring m+1 at (m+1, -m).
    m = np.array([10**3, 10**5, 10**7, 10**8], dtype=np.int64)
    got = ulam_coordinates(np.concatenate([(2 * m + 1) ** 2, (2 * m + 1) ** 2 + 1]))
    assert got.tolist() == np.stack([np.concatenate([m, m + 1]), np.concatenate([-m, -m])], 1).tolist()
