"""Expectation values of the DQC circuit (naive state-vector version; to be replaced by the fast simulator).

Circuit (DESIGN "The models"): H on every qubit, RY(angles_i) on qubit i, then `layers` x
[RY(weights_l,i) on every qubit, CNOT ring 0->1, ..., n-2->n-1, n-1->0], output <Z_i>.
Qubit 0 is the most significant bit of the basis index (PennyLane's convention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _ry(theta):
    c, s = jnp.cos(theta / 2), jnp.sin(theta / 2)
    return jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)


def _apply_1q(state, mat, q, n):
    # state: (2,)*n tensor; apply mat (2,2) on axis q
    state = jnp.tensordot(mat, state, axes=[[1], [q]])
    return jnp.moveaxis(state, 0, q)


def _cnot(state, c, t):
    # flip target where control == 1
    s1 = jnp.take(state, 1, axis=c)
    tt = t if t < c else t - 1
    s1 = jnp.flip(s1, axis=tt)
    s0 = jnp.take(state, 0, axis=c)
    return jnp.stack([s0, s1], axis=c)


def _single(angles, weights):
    n = angles.shape[0]
    state = jnp.ones((2,) * n, dtype=angles.dtype) / jnp.sqrt(2.0) ** n
    for q in range(n):
        state = _apply_1q(state, _ry(angles[q]), q, n)
    for layer in range(weights.shape[0]):
        for q in range(n):
            state = _apply_1q(state, _ry(weights[layer, q]), q, n)
        for q in range(n):
            state = _cnot(state, q, (q + 1) % n)
    probs = state**2
    out = []
    for q in range(n):
        p = jnp.moveaxis(probs, q, 0).reshape(2, -1).sum(1)
        out.append(p[0] - p[1])
    return jnp.stack(out)


def expvals(angles, weights, *, backend: str = "fast"):
    """<Z_i> of the circuit for angles (B, n) and weights (layers, n) -> (B, n)."""
    del backend
    return jax.vmap(_single, in_axes=(0, None))(angles, weights)
