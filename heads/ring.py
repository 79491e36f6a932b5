"""The CNOT ring of the DQC circuit as GF(2) algebra, shared by the simulators (`heads.quantum`, `heads.mps`).

One ring of PennyLane's `BasicEntanglerLayers` is 0→1, 1→2, …, n−2→n−1, n−1→0 for n ≥ 3 and one
CNOT 0→1 for n = 2 (a two-wire "ring" would apply the same pair twice). It maps the basis state b
to A·b over GF(2), A an n×n 0/1 matrix (`ring_matrix`); qubit 0 is the most significant bit of a
basis index (PennyLane's wire order).
"""

from __future__ import annotations

import functools

import numpy as np


def ring_pairs(n: int) -> list[tuple[int, int]]:
    """(control, target) of the CNOTs of one ring, in order, exactly as `BasicEntanglerLayers`."""
    return [(0, 1)] if n == 2 else [(i, (i + 1) % n) for i in range(n)]


@functools.cache
def ring_matrix(n: int) -> np.ndarray:
    """A (n×n over GF(2)) with ring|b⟩ = |A·b⟩; row k lists the bits whose parity becomes bit k."""
    a = np.eye(n, dtype=np.int64)
    for c, t in ring_pairs(n):
        a[t] ^= a[c]
    return a


@functools.cache
def ring_inverse(n: int) -> np.ndarray:
    """A⁻¹ over GF(2): row k lists the new bits whose parity was old bit k."""
    # Each CNOT is its own inverse: undo them in reverse order.
    a = np.eye(n, dtype=np.int64)
    for c, t in reversed(ring_pairs(n)):
        a[t] ^= a[c]
    return a
