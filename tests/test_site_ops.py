"""Per-example single-qubit operators inside the MPS circuit (`heads.mps.expvals(..., ops)`): the hook
for noise trajectories. Checked against an independent dense simulation written here (values and
gradients) and against PennyLane with the same operators as `QubitUnitary` gates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heads.quantum import expvals

X = np.array([[0.0, 1.0], [1.0, 0.0]])
Z = np.diag([1.0, -1.0])
PAULIS = np.stack([np.eye(2), X, X @ Z, Z])  # I, X, Y up to a global phase (real), Z


def _ry(theta):
    c, s = jnp.cos(theta / 2), jnp.sin(theta / 2)
    return jnp.array([[c, -s], [s, c]])


def _one_qubit(psi, gate, q):
    return jnp.moveaxis(jnp.tensordot(gate, psi, axes=([1], [q])), 0, q)


def _ring(psi, n):
    pairs = [(0, 1)] if n == 2 else [(i, (i + 1) % n) for i in range(n)]
    for c, t in pairs:  # CNOT: flip the target where the control is 1
        flipped = jnp.flip(psi, axis=t)
        idx = [slice(None)] * n
        idx[c] = 1
        psi = psi.at[tuple(idx)].set(flipped[tuple(idx)])
    return psi


def dense(x, w, ops):
    """⟨Z_k⟩ of one example, gate by gate on the 2^n amplitudes (independent of heads.*)."""
    n, layers = x.shape[0], w.shape[0]
    h = jnp.array([[1.0, 1.0], [1.0, -1.0]]) / jnp.sqrt(2.0)
    psi = jnp.zeros((2,) * n).at[(0,) * n].set(1.0)
    for q in range(n):
        psi = _one_qubit(psi, h, q)
        psi = _one_qubit(psi, ops[0, q], q)
        psi = _one_qubit(psi, _ry(x[q]), q)
        psi = _one_qubit(psi, ops[1, q], q)
    for layer in range(layers):
        for q in range(n):
            psi = _one_qubit(psi, _ry(w[layer, q]), q)
            psi = _one_qubit(psi, ops[2 + layer, q], q)
        psi = _ring(psi, n)
    prob = psi**2
    return jnp.stack([jnp.sum(prob.take(0, axis=k)) - jnp.sum(prob.take(1, axis=k)) for k in range(n)])


def _inputs(rng, b, n, layers, paulis=False):
    x = rng.uniform(-np.pi / 2, np.pi / 2, (b, n)).astype(np.float32)
    w = rng.uniform(0, 2 * np.pi, (layers, n)).astype(np.float32)
    if paulis:
        ops = PAULIS[rng.integers(0, 4, (b, layers + 2, n))]
    else:
        ops = rng.normal(size=(b, layers + 2, n, 2, 2)) / np.sqrt(2)
    return x, w, ops.astype(np.float32), rng.normal(size=(b, n)).astype(np.float32)


@pytest.mark.parametrize("n,layers", [(2, 1), (3, 2), (5, 3)])
def test_mps_with_operators_matches_a_dense_simulation(n, layers):
    x, w, ops, g = _inputs(np.random.default_rng(10 * n + layers), 3, n, layers)

    def loss_mps(x, w):
        return jnp.vdot(expvals(x, w, backend="mps", ops=ops), g)

    def loss_dense(x, w):
        return jnp.vdot(jax.vmap(dense, in_axes=(0, None, 0))(x, w, jnp.asarray(ops)), g)

    got = jax.value_and_grad(loss_mps, argnums=(0, 1))(x, w)
    with jax.default_matmul_precision("highest"):
        want = jax.jit(jax.value_and_grad(loss_dense, argnums=(0, 1)))(x, w)
    values = expvals(x, w, backend="mps", ops=ops)
    np.testing.assert_allclose(values, jax.vmap(dense, in_axes=(0, None, 0))(x, w, jnp.asarray(ops)), atol=2e-5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-4)


def test_identity_operators_give_the_noiseless_circuit():
    x, w, _, _ = _inputs(np.random.default_rng(3), 4, 19, 3)
    eye = np.broadcast_to(np.eye(2, dtype=np.float32), (4, 5, 19, 2, 2))
    np.testing.assert_allclose(expvals(x, w, ops=eye), expvals(x, w), atol=2e-6)


def test_pauli_operators_match_pennylane():
    pytest.importorskip("pennylane")
    import pennylane as qml

    n, layers = 5, 3
    x, w, ops, _ = _inputs(np.random.default_rng(7), 2, n, layers, paulis=True)
    dev = qml.device("default.qubit", wires=n)

    @qml.qnode(dev)
    def circuit(xb, opsb):
        for q in range(n):
            qml.Hadamard(q)
            qml.QubitUnitary(opsb[0, q], wires=q)
            qml.RY(xb[q], wires=q)
            qml.QubitUnitary(opsb[1, q], wires=q)
        for layer in range(layers):
            for q in range(n):
                qml.RY(w[layer, q], wires=q)
                qml.QubitUnitary(opsb[2 + layer, q], wires=q)
            for q in range(n):
                qml.CNOT(wires=[q, (q + 1) % n])
        return [qml.expval(qml.PauliZ(q)) for q in range(n)]

    want = np.array([np.asarray(circuit(x[b].astype(np.float64), ops[b].astype(np.float64))) for b in range(2)])
    np.testing.assert_allclose(expvals(x, w, ops=ops), want, atol=2e-5)


def test_operators_of_the_wrong_shape_or_back_end_are_refused():
    x, w, ops, _ = _inputs(np.random.default_rng(1), 2, 4, 2)
    with pytest.raises(ValueError, match="layers \\+ 2"):
        expvals(x, w, ops=ops[:, :3])
    with pytest.raises(ValueError, match="mps back end"):
        expvals(x, w, backend="statevector", ops=ops)
