"""Noisy DQC circuits (`heads.noise`): the exact density matrix against PennyLane `default.mixed` and
Qiskit Aer, trajectories on the MPS against the exact values (z-scores of a seeded estimate) and a
closed form at 40 qubits, the model files, and the keys' independence of batching."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrfeat.errors import UserError
from heads import noise as nz
from heads.quantum import expvals
from heads.ring import ring_pairs

CHANNELS = {
    "p1": nz.NoiseModel(p1=0.05),
    "p2": nz.NoiseModel(p2=0.08),
    "relaxation": nz.NoiseModel(t1_us=20.0, t2_us=15.0, gate_ns_1q=300.0, gate_ns_2q=900.0),
    "readout": nz.NoiseModel(readout_p01=0.04, readout_p10=0.09),
}
CHANNELS["all"] = nz.NoiseModel(p1=0.03, p2=0.05, t1_us=20.0, t2_us=15.0, gate_ns_1q=300.0, gate_ns_2q=900.0,
                                readout_p01=0.04, readout_p10=0.09)


def _inputs(seed, b, n, layers):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-np.pi / 2, np.pi / 2, (b, n)), rng.uniform(0, 2 * np.pi, (layers, n)))


# ---------------------------------------------------------------- the exact method against PennyLane


def _pennylane(x, w, model: nz.NoiseModel):
    import pennylane as qml

    n, layers = len(x), len(w)
    paulis = [np.eye(2), np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.diag([1, -1])]
    pair_kraus = [math.sqrt(1 - model.p2) * np.eye(4)] + [
        math.sqrt(model.p2 / 15) * np.kron(a, b) for i, a in enumerate(paulis) for j, b in enumerate(paulis) if i or j]
    dev = qml.device("default.mixed", wires=n)

    def after(q, qubits):
        if qubits == 1 and model.p1:
            qml.DepolarizingChannel(model.p1, wires=q)
        gamma, lam = model.relaxation(qubits)
        if gamma or lam:
            qml.AmplitudeDamping(gamma, wires=q)
            qml.PhaseDamping(lam, wires=q)

    @qml.qnode(dev)
    def circuit():
        for q in range(n):
            qml.Hadamard(q)
            after(q, 1)
            qml.RY(x[q], wires=q)
            after(q, 1)
        for layer in range(layers):
            for q in range(n):
                qml.RY(w[layer, q], wires=q)
                after(q, 1)
            for c, t in ring_pairs(n):
                qml.CNOT(wires=[c, t])
                if model.p2:
                    qml.QubitChannel(pair_kraus, wires=[c, t])
                after(c, 2)
                after(t, 2)
        return [qml.expval(qml.PauliZ(q)) for q in range(n)]

    return model.readout(np.asarray(circuit(), float))


@pytest.mark.parametrize("channel", list(CHANNELS))
@pytest.mark.parametrize("n,layers", [(2, 1), (3, 2), (4, 3)])
def test_density_matrix_equals_pennylane_default_mixed(channel, n, layers):
    model = CHANNELS[channel]
    x, w = _inputs(n * 10 + layers, 2, n, layers)
    with jax.enable_x64(True):
        got = np.asarray(nz.density_expvals(jnp.asarray(x), jnp.asarray(w), model))
    want = np.stack([_pennylane(x[b], w, model) for b in range(2)])
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_density_gradients_equal_pennylanes():
    import pennylane as qml  # noqa: F401  (the reference is PennyLane's own derivative)

    model = CHANNELS["all"]
    x, w = _inputs(5, 1, 3, 2)

    def ours(w):
        return jnp.sum(nz.density_expvals(jnp.asarray(x), w, model) * jnp.arange(1, 4))

    with jax.enable_x64(True):
        g = np.asarray(jax.grad(ours)(jnp.asarray(w)))
        eps = 1e-6  # PennyLane's default.mixed values at w ± eps: a central difference of the reference
        num = np.zeros_like(w)
        for i in np.ndindex(w.shape):
            d = np.zeros_like(w)
            d[i] = eps
            num[i] = np.sum((_pennylane(x[0], w + d, model) - _pennylane(x[0], w - d, model)) * np.arange(1, 4)) / (2 * eps)
    np.testing.assert_allclose(g, num, atol=1e-7)


def test_density_matrix_equals_qiskit_aer():
    pytest.importorskip("qiskit_aer")
    from qiskit import QuantumCircuit
    from qiskit_aer import AerSimulator
    from qiskit_aer.noise import NoiseModel as AerNoise
    from qiskit_aer.noise import depolarizing_error

    n, layers = 4, 3
    model = nz.NoiseModel(p1=0.04, p2=0.06)
    x, w = _inputs(11, 1, n, layers)
    qc = QuantumCircuit(n)
    for q in range(n):
        qc.h(q)
        qc.ry(x[0, q], q)
    for layer in range(layers):
        for q in range(n):
            qc.ry(w[layer, q], q)
        for c, t in ring_pairs(n):
            qc.cx(c, t)
    qc.save_density_matrix()
    aer_noise = AerNoise()
    aer_noise.add_all_qubit_quantum_error(depolarizing_error(4 * model.p1 / 3, 1), ["h", "ry"])
    aer_noise.add_all_qubit_quantum_error(depolarizing_error(16 * model.p2 / 15, 2), ["cx"])
    sim = AerSimulator(method="density_matrix", noise_model=aer_noise)
    rho = np.asarray(sim.run(qc).result().data()["density_matrix"])
    probs = np.real(np.diag(rho))  # Qiskit: qubit 0 is the least significant bit
    idx = np.arange(2**n)
    want = np.array([probs @ (1 - 2 * ((idx >> q) & 1)) for q in range(n)])
    with jax.enable_x64(True):
        got = np.asarray(nz.density_expvals(jnp.asarray(x), jnp.asarray(w), model))[0]
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_zero_noise_is_the_noiseless_circuit():
    x, w = _inputs(3, 3, 5, 3)
    clean = np.asarray(expvals(x, w, backend="statevector"))
    np.testing.assert_allclose(nz.density_expvals(x, w, nz.NoiseModel()), clean, atol=2e-6)
    zero = expvals(x, w, noise=nz.NoiseModel(), key=jax.random.key(0), trajectories=2)
    np.testing.assert_allclose(zero, clean, atol=2e-6)
    assert nz.NoiseModel(p1=0.1, p2=0.2, readout_p01=0.1).scaled(0).is_zero


# ---------------------------------------------------------------- trajectories


@pytest.mark.parametrize("channel", ["p1", "p2", "readout", "all_pauli"])
def test_trajectory_mean_is_the_exact_value_within_its_standard_error(channel):
    model = CHANNELS["all"] if channel == "all_pauli" else CHANNELS[channel]
    if channel == "all_pauli":  # every Pauli channel together (relaxation is twirled: its own test)
        model = nz.NoiseModel(p1=model.p1, p2=model.p2, readout_p01=0.04, readout_p10=0.09)
    n, layers, k = 5, 3, 600
    x, w = _inputs(21, 3, n, layers)
    mean, stderr = nz.trajectory_expvals(x.astype(np.float32), w.astype(np.float32), model, jax.random.key(7), k)
    with jax.enable_x64(True):
        exact = np.asarray(nz.density_expvals(jnp.asarray(x), jnp.asarray(w), model))
    err, se = np.abs(np.asarray(mean) - exact), np.asarray(stderr)
    assert np.all(err <= 4.5 * se + 1e-5), (np.max(err / np.maximum(se, 1e-9)), channel)  # a z-score under 4.5
    assert np.all(se > 0) or channel == "readout"  # readout alone draws nothing: applied to the mean exactly


def test_relaxation_trajectories_are_its_pauli_twirl_and_the_twirl_is_measured():
    # Trajectories sample the relaxation's Pauli twirl: their mean is that channel's exact value (the
    # density matrix with the twirl) within its standard error. The twirl's own error against the exact
    # channel is measured: at these strong rates (0.3/0.9 µs gates on T1 = 20 µs) it is large (0.15 in
    # ⟨Z⟩), at device-like ones (50/400 ns gates, T1 = 100 µs, T2 = 80 µs) about 0.011.
    model = CHANNELS["relaxation"]
    n, layers, k = 4, 2, 600
    x, w = _inputs(31, 3, n, layers)
    mean, stderr = nz.trajectory_expvals(x.astype(np.float32), w.astype(np.float32), model, jax.random.key(3), k)
    with jax.enable_x64(True):
        twirled = np.asarray(nz.density_expvals(jnp.asarray(x), jnp.asarray(w), model, twirled=True))
        exact = np.asarray(nz.density_expvals(jnp.asarray(x), jnp.asarray(w), model))
        device = nz.NoiseModel(t1_us=100.0, t2_us=80.0, gate_ns_1q=50.0, gate_ns_2q=400.0)
        gap = np.abs(np.asarray(nz.density_expvals(jnp.asarray(x), jnp.asarray(w), device, twirled=True))
                     - np.asarray(nz.density_expvals(jnp.asarray(x), jnp.asarray(w), device)))
    assert np.all(np.abs(np.asarray(mean) - twirled) <= 4.5 * np.asarray(stderr))
    assert np.abs(twirled - exact).max() > 0.05  # the twirl is no substitute at strong damping ...
    assert gap.max() < 0.02  # ... and within about 0.01 at device-like rates (measured: 0.011)


def test_one_layer_at_40_qubits_matches_its_closed_form():
    # One layer: a product state before the only ring, so with single-qubit depolarizing after each of
    # the 3 gates every Bloch vector shrinks by (1 - 4 p1 / 3)^3 and ⟨Z_k⟩ is a product over row k.
    from heads.ring import ring_matrix

    n, p1, k = 40, 0.02, 300
    model = nz.NoiseModel(p1=p1, readout_p01=0.03, readout_p10=0.01)
    x, w = _inputs(40, 2, n, 1)
    rows = ring_matrix(n)
    shrink = (1 - 4 * p1 / 3) ** 3
    z1 = -np.sin(x + w[0]) * shrink
    want = model.readout(np.prod(np.where(rows[None] > 0, z1[:, None, :], 1.0), axis=-1))
    mean, stderr = nz.trajectory_expvals(x.astype(np.float32), w.astype(np.float32), model, jax.random.key(1), k)
    z = np.abs(np.asarray(mean) - want) / np.maximum(np.asarray(stderr), 1e-6)
    assert z.max() < 4.5


def test_an_examples_draws_do_not_depend_on_its_batch():
    model = CHANNELS["all"]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(9), i))(jnp.arange(4))
    all_ops = nz.trajectory_ops(keys, 4, 3, model)
    one = nz.trajectory_ops(keys[2:3], 4, 3, model)
    np.testing.assert_array_equal(all_ops[2:3], one)
    x, w = _inputs(2, 4, 4, 3)
    batch = nz.trajectory_samples(x.astype(np.float32), w.astype(np.float32), model, keys, 3)
    alone = nz.trajectory_samples(x[2:3].astype(np.float32), w.astype(np.float32), model, keys[2:3], 3)
    np.testing.assert_allclose(batch[:, 2:3], alone, atol=1e-6)
    again = nz.trajectory_samples(x.astype(np.float32), w.astype(np.float32), model, keys, 3)
    np.testing.assert_array_equal(batch, again)


# ---------------------------------------------------------------- the model files


@pytest.mark.parametrize("n", [2, 3, 4])
def test_the_rings_pauli_frame_equals_conjugation_by_the_cnot_matrices(n):
    """`ring_frame_matrix`: an error inserted after CNOT j of the ring, moved back to before the ring,
    is the Pauli C_0 ... C_j E C_j ... C_0 (up to phase), computed here with 2^n × 2^n matrices."""
    x_, z_ = np.array([[0, 1], [1, 0]]), np.diag([1, -1])

    def pauli(xb, zb):
        out = np.eye(1)
        for xq, zq in zip(xb, zb, strict=True):
            out = np.kron(out, np.linalg.matrix_power(x_, xq) @ np.linalg.matrix_power(z_, zq))
        return out

    def cnot(c, t):
        m = np.zeros((2**n, 2**n))
        for b in range(2**n):
            bits = [(b >> (n - 1 - q)) & 1 for q in range(n)]
            bits[t] ^= bits[c]
            m[sum(v << (n - 1 - q) for q, v in enumerate(bits)), b] = 1
        return m

    pairs = ring_pairs(n)
    a = nz.ring_frame_matrix(n)
    for j, (c, t) in enumerate(pairs):
        for r, (q, is_z) in enumerate(((c, 0), (c, 1), (t, 0), (t, 1))):
            xb, zb = np.zeros(n, int), np.zeros(n, int)
            (zb if is_z else xb)[q] = 1
            e = pauli(xb, zb)
            for cc, tt in reversed(pairs[: j + 1]):
                e = cnot(cc, tt) @ e @ cnot(cc, tt)
            frame = pauli(a[4 * j + r, :n], a[4 * j + r, n:])
            overlap = abs(np.trace(frame.conj().T @ e)) / 2**n
            assert overlap == pytest.approx(1.0), (j, r)


def test_one_uniform_categorical_draws_its_probabilities_and_never_an_impossible_outcome():
    """`_categorical` (inverse CDF of one uniform per draw): frequencies within 4.5 standard errors of
    the probabilities (200,000 draws per row), and an outcome of probability 0 never drawn."""
    probs = np.array([[0.9, 0.05, 0.05, 0.0], [0.25, 0.25, 0.25, 0.25], [0.999, 0.0, 0.0, 0.001]])
    with np.errstate(divide="ignore"):
        logp = jnp.asarray(np.log(probs), jnp.float32)
    draws = np.asarray(nz._categorical(jax.random.key(3), logp, (200_000, 3)))
    for row, p in enumerate(probs):
        freq = np.bincount(draws[:, row], minlength=4) / draws.shape[0]
        se = np.sqrt(p * (1 - p) / draws.shape[0])
        assert np.all(np.abs(freq - p) <= 4.5 * se + 1e-12), (row, freq, p)
        assert np.all(freq[p == 0] == 0)


def test_presets_load_and_scale(tmp_path):
    assert "sycamore-2019" in nz.presets()
    m = nz.NoiseModel.load("sycamore-2019")
    assert m.p2 == 0.0062 and m.source.startswith("Arute")
    s = m.scaled(0.5)
    assert s.p1 == m.p1 / 2 and s.readout_p10 == m.readout_p10 / 2
    relax = nz.NoiseModel(t1_us=100.0, t2_us=80.0, gate_ns_1q=50.0).scaled(2)
    assert relax.t1_us == 50.0 and relax.t2_us == 40.0
    path = tmp_path / "dev.toml"
    path.write_text('source = "a test"\np1 = 0.001\np2 = 0.01\n')
    assert nz.NoiseModel.load(path) == nz.NoiseModel(name="dev", source="a test", p1=0.001, p2=0.01)


@pytest.mark.parametrize("text,message", [
    ("p1 = 1.5\n", "p1 = 1.5 is not a probability"),
    ("p2 = 0.1\nspeed = 3\n", "unknown key(s) speed"),
    ("t1_us = 10.0\n", "give both t1_us and t2_us"),
    ("t1_us = 10.0\nt2_us = 30.0\n", "exceeds 2·t1_us"),
    ("p1 = [\n", "not a readable TOML file"),
])
def test_bad_model_files_are_refused_in_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        nz.NoiseModel.load(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="no such file"):
        nz.NoiseModel.load(tmp_path / "missing.toml")


def test_the_density_matrix_refuses_registers_it_cannot_hold():
    x, w = _inputs(1, 1, 13, 1)
    with pytest.raises(UserError, match="13 qubits is above 12"):
        expvals(x, w, backend="density", noise=CHANNELS["p1"])
