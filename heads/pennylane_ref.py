"""The reference back end: the DQC circuit in PennyLane `default.qubit` with the JAX interface.

Gates are written as the paper's circuit: Hadamards, RY embedding, `BasicEntanglerLayers` with RY
rotations (whose ring PennyLane defines: one CNOT for two wires), ⟨Z_i⟩ of every wire. The batch
is PennyLane parameter broadcasting; gradients are JAX backprop through the simulator, so the whole
thing is jittable and vmappable like the fast back end (only much slower: tests/test_quantum.py
checks the fast back end against this one).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp


@functools.cache
def _qnode(n: int):
    import pennylane as qml

    device = qml.device("default.qubit", wires=n)

    @qml.qnode(device, interface="jax", diff_method="backprop")
    def circuit(angles, weights):
        for i in range(n):
            qml.Hadamard(wires=i)
        for i in range(n):
            qml.RY(angles[:, i], wires=i)
        qml.BasicEntanglerLayers(weights, wires=range(n), rotation=qml.RY)
        return [qml.expval(qml.PauliZ(i)) for i in range(n)]

    return circuit


@jax.jit
def expvals(angles, weights):
    """⟨Z_i⟩ for angles (B, n) and weights (layers, n) → (B, n), computed by PennyLane."""
    dtype = jnp.promote_types(jnp.result_type(angles, weights), jnp.float32)
    with warnings.catch_warnings():  # PennyLane asks for complex128 even when x64 is off; complex64 is meant
        warnings.filterwarnings("ignore", message="Explicitly requested dtype complex128")
        out = _qnode(angles.shape[1])(angles.astype(dtype), weights.astype(dtype))
    return jnp.stack(out, axis=-1).astype(dtype)
