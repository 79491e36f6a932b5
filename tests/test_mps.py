"""The MPS back end (`heads.mps`) and how `fast` chooses: PennyLane, the state vector, closed forms, quimb.

The PennyLane grid (n = 2..14 × layers 1..5, stored by tests/make_pennylane_reference.py) and
the helpers come from tests/test_quantum.py. Beyond state-vector reach the MPS is checked against
closed forms at 30–60 qubits and against an exact tensor-network contraction by quimb.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_quantum import _reference, _reference_cases, assert_close, random_inputs, value_and_grads

from heads import mps, quantum, ring
from heads.quantum import expvals

# ---------------------------------------------------------------- the tables


def test_folded_sites_cover_every_qubit_once_and_tables_are_permutations():
    for n in range(2, 121):
        layout = mps.sites(n)
        qubits = sorted(q for pair in layout for q in pair if q is not None)
        assert qubits == list(range(n)) and len(layout) == (n + 1) // 2
        tab = mps.ring_tables(n)  # raises if a ring reads beyond a neighbour
        # for fixed carried bits (x_in, y_out), new index -> old index is a bijection of the site's states
        maps = tab.sum((2, 4))  # (S, x_in, p_new, y_out, p_old), summed over the masks' own bits
        assert set(np.unique(maps)) <= {0.0, 1.0}
        assert len(mps.measurement_plan(n)) == n


# ---------------------------------------------------------------- against PennyLane and the state vector


@pytest.mark.parametrize("case", _reference_cases())
def test_mps_matches_pennylane_values_and_gradients(case):
    ref = _reference(case)
    x, w, g = (ref[k].astype(np.float32) for k in ("angles", "weights", "cotangent"))
    assert_close(value_and_grads("mps", x, w, g), (ref["expvals"], ref["grad_angles"], ref["grad_weights"]))


# Widths 15..24, odd and even. 17 and 20 are the widths of the next test: for up to 3 layers `fast` runs
# the MPS there and up to 4 both compare with the same state-vector program, so the two tests share
# their compiled programs (the suite's persistent compilation cache) instead of compiling twice as many.
@pytest.mark.parametrize("n,layers", [(n, layers) for n in (15, 17, 20, 24) for layers in (1, 2, 3, 4)])
def test_mps_matches_the_state_vector_beyond_the_stored_grid(n, layers):
    x, w, g = random_inputs(np.random.default_rng(10 * n + layers), 1, n, layers)
    assert_close(value_and_grads("mps", x, w, g), value_and_grads("statevector", x, w, g))


@pytest.mark.parametrize("n,layers", [(n, layers) for n in (17, 20) for layers in range(1, 7)])
def test_fast_matches_the_state_vector_at_every_depth(n, layers):
    x, w, g = random_inputs(np.random.default_rng(100 + 10 * n + layers), 1, n, layers)
    assert_close(value_and_grads("fast", x, w, g), value_and_grads("statevector", x, w, g))


@pytest.mark.parametrize("n,layers", [(5, 6), (6, 5), (7, 6)])
def test_deep_mps_on_small_registers(n, layers):
    # 5 and 6 layers (bond 256 and 1024) stay exact; small n keeps the test fast
    x, w, g = random_inputs(np.random.default_rng(7 * n + layers), 1, n, layers)
    assert_close(value_and_grads("mps", x, w, g), value_and_grads("statevector", x, w, g))


# ---------------------------------------------------------------- beyond state-vector reach


def one_layer_closed_form(x, w):
    """⟨Z_k⟩ for one layer: the product over the bits of row k of the ring matrix of −sin(x_i + θ_i)."""
    z = -jnp.sin(x + w[0])
    rows = jnp.asarray(ring.ring_matrix(x.shape[1]), x.dtype)
    return jnp.prod(jnp.where(rows[None] > 0, z[:, None, :], 1.0), axis=-1)


@pytest.mark.parametrize("n", [31, 48, 60])
def test_one_layer_is_a_product_at_any_width(n):
    x, w, g = random_inputs(np.random.default_rng(n), 3, n, 1)
    want = value_and_grads(None, x, w, g, fn=one_layer_closed_form)
    assert_close(value_and_grads("mps", x, w, g), want)
    assert_close(value_and_grads("fast", x, w, g), want)


@pytest.mark.parametrize("layers", [2, 3, 4])
def test_the_zero_state_stays_at_z_equals_one(layers):
    # angles −π/2 with zero weights: every qubit starts in |0⟩ and the rings fix |0…0⟩
    n = 40
    x, w = np.full((2, n), -np.pi / 2, np.float32), np.zeros((layers, n), np.float32)
    np.testing.assert_allclose(expvals(x, w, backend="mps"), 1.0, atol=1e-5)


def quimb_expvals(x, w, qubits):
    """⟨Z_k⟩ of one example by an exact quimb tensor-network contraction (no truncation)."""
    import quimb as qu
    import quimb.tensor as qtn

    n = len(x)
    circ = qtn.Circuit(n)
    for i in range(n):
        circ.apply_gate("H", i)
        circ.apply_gate("RY", float(x[i]), i)
    for layer in w:
        for i in range(n):
            circ.apply_gate("RY", float(layer[i]), i)
        for c, t in ring.ring_pairs(n):
            circ.apply_gate("CNOT", c, t)
    return np.array([circ.local_expectation(qu.pauli("Z"), k, optimize="greedy", simplify_sequence="ADCRS").real
                     for k in qubits])


@pytest.mark.parametrize("n,layers", [(30, 2), (37, 2)])
def test_mps_matches_an_exact_quimb_contraction(n, layers):
    pytest.importorskip("quimb")
    x, w, _ = random_inputs(np.random.default_rng(n), 1, n, layers)
    qubits = [0, n // 2, n - 1]  # each a full contraction, a few seconds
    got = np.asarray(jax.jit(lambda x, w: expvals(x, w, backend="mps"))(x, w))[0, qubits]
    np.testing.assert_allclose(got, quimb_expvals(x[0], w, qubits), atol=1e-5)


# ---------------------------------------------------------------- JAX behaviour


def test_float64_when_x64_is_on():
    ref = _reference("n10_l3")
    with jax.enable_x64(True):
        x, w, g = (jnp.asarray(ref[k], jnp.float64) for k in ("angles", "weights", "cotangent"))
        got = value_and_grads("mps", x, w, g)
        assert all(a.dtype == jnp.float64 for a in got)
        assert_close(got, (ref["expvals"], ref["grad_angles"], ref["grad_weights"]), atol=1e-10)


def test_second_call_does_not_recompile():
    rng = np.random.default_rng(5)
    x, w, _ = random_inputs(rng, 4, 13, 3)
    expvals(x, w, backend="mps")
    before = mps._expvals._cache_size()
    for _ in range(2):
        x, w, _ = random_inputs(rng, 4, 13, 3)
        jax.block_until_ready(expvals(x, w, backend="mps"))
    assert mps._expvals._cache_size() == before


def test_memory_at_100_qubits_is_well_under_a_gigabyte():
    # XLA's buffer plan of value + gradient at batch 32, 3 layers (compiled, not run)
    x, w, g = random_inputs(np.random.default_rng(6), 32, 100, 3)

    def step(x, w):
        return jax.value_and_grad(lambda x, w: jnp.vdot(expvals(x, w, backend="mps"), g), argnums=(0, 1))(x, w)

    m = jax.jit(step).lower(x, w).compile().memory_analysis()
    assert m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes < 256 * 2**20


# ---------------------------------------------------------------- the choice


def test_fast_runs_the_method_it_names():
    assert {quantum.method(n, layers) for n in range(2, 130) for layers in range(1, 9)} <= {"mps", "halves", "statevector"}
    assert quantum.method(19, 3) == "mps" and quantum.method(100, 3) == "mps"
    rng = np.random.default_rng(8)
    for n, layers in ((4, 2), (19, 3), (9, 6), (30, 1)):
        x, w, _ = random_inputs(rng, 2, n, layers)
        chosen = quantum.method(n, layers)
        np.testing.assert_array_equal(expvals(x, w), expvals(x, w, backend=chosen))
