"""The noisy DQC circuit in two independent simulators: PennyLane `default.mixed` and Qiskit Aer.

The same circuit as `heads.quantum` (Hadamards, RY embedding, layers of RY and the CNOT ring of
`heads.ring.ring_pairs`) and the same channels as `heads.noise`, written in each library's own terms:

- PennyLane (`pennylane_mixed`): `DepolarizingChannel(p1)` after every single-qubit gate, the 15
  Pauli pairs with probability p2/15 after every CNOT as a `QubitChannel`, `AmplitudeDamping(γ)` and
  `PhaseDamping(λ)` from T1, T2 and the gate time; the exact density matrix, jittable and
  differentiable through the JAX interface (backprop); a batch by parameter broadcasting.
- Qiskit Aer (`aer_expvals`): `depolarizing_error(4·p1/3, 1)` on `h` and `ry`, `depolarizing_error(16·p2/15, 2)`
  on `cx`, each composed with `thermal_relaxation_error(T1, T2, gate time)` on every qubit the gate acts on;
  `method="density_matrix"` is exact, `method="statevector"` samples one noise trajectory per shot
  (Kraus operators drawn by their weight: exact for amplitude damping too, unlike the Pauli twirl of
  `heads.noise`'s trajectories). Aer gives values only (no gradients).

Per-qubit models (`NoiseModel.qubits`) are applied qubit by qubit, a CNOT's two-qubit error from its
control's p2. Readout error is applied to the exact ⟨Z⟩ afterwards (`NoiseModel.readout`), as in
`heads.noise`: both libraries' readout errors act on sampled bits, not on expectation values.
These are the timed anchors of `heads bench --noise ... --anchors` (`heads.noise_bench`) and the
references of tests/test_noise_anchors.py.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

from heads.noise import NoiseModel
from heads.ring import ring_pairs

_PAULIS = [np.eye(2), np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.diag([1, -1])]


def _pair_kraus(p2: float) -> list[np.ndarray]:
    """Two-qubit depolarizing: √(1 − p2)·I⊗I and √(p2/15)·P⊗Q for the 15 non-identity pairs."""
    return [math.sqrt(1 - p2) * np.eye(4, dtype=complex)] + [
        math.sqrt(p2 / 15) * np.kron(a, b) for i, a in enumerate(_PAULIS) for j, b in enumerate(_PAULIS) if i or j]


# ---------------------------------------------------------------- PennyLane default.mixed


def pennylane_mixed(n: int, model: NoiseModel, interface: str = "jax"):
    """f(angles (B, n), weights (layers, n)) → measured ⟨Z_i⟩ (B, n) on PennyLane `default.mixed`:
    with the JAX interface (backprop) jit it and differentiate it; `interface="numpy"` runs the same
    circuit on NumPy arrays (much faster for one small call: no per-gate JAX dispatch)."""
    import jax.numpy as jnp

    qnode = _pennylane_qnode(n, model, interface)
    xp = jnp if interface == "jax" else np

    def f(angles, weights):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Explicitly requested dtype")
            z = xp.stack(qnode(angles, weights), axis=-1)
        return model.readout(xp.real(z).astype(xp.result_type(angles, weights)))

    return f


@functools.cache
def _pennylane_qnode(n: int, model: NoiseModel, interface: str):
    import pennylane as qml

    model.check_width(n)
    device = qml.device("default.mixed", wires=n)

    def after(q, qubits):
        m = model.at(q)
        if qubits == 1 and m.p1:
            qml.DepolarizingChannel(m.p1, wires=q)
        gamma, lam = m.relaxation(qubits)
        if gamma or lam:
            qml.AmplitudeDamping(gamma, wires=q)
            qml.PhaseDamping(lam, wires=q)

    @qml.qnode(device, interface=interface, diff_method="backprop" if interface == "jax" else "best")
    def circuit(angles, weights):
        for q in range(n):
            qml.Hadamard(q)
            after(q, 1)
            qml.RY(angles[..., q], wires=q)
            after(q, 1)
        for layer in range(weights.shape[0]):
            for q in range(n):
                qml.RY(weights[layer, q], wires=q)
                after(q, 1)
            for c, t in ring_pairs(n):
                qml.CNOT(wires=[c, t])
                if model.at(c).p2:
                    qml.QubitChannel(_pair_kraus(model.at(c).p2), wires=[c, t])
                after(c, 2)
                after(t, 2)
        return [qml.expval(qml.PauliZ(q)) for q in range(n)]

    return circuit


# ---------------------------------------------------------------- Qiskit Aer


def aer_noise_model(model: NoiseModel, n: int):
    """The model as a `qiskit_aer.noise.NoiseModel` on n qubits (errors on h, ry and cx)."""
    from qiskit_aer.noise import NoiseModel as AerNoise
    from qiskit_aer.noise import depolarizing_error, pauli_error, thermal_relaxation_error

    model.check_width(n)

    def relax(m: NoiseModel, gate_ns: float):
        if m.t1_us is None or gate_ns == 0:
            return None
        return thermal_relaxation_error(m.t1_us * 1e3, m.t2_us * 1e3, gate_ns)  # all in ns

    def compose(*errors):
        errors = [e for e in errors if e is not None]
        out = errors[0] if errors else None
        for e in errors[1:]:
            out = out.compose(e)
        return out

    aer = AerNoise(basis_gates=["h", "ry", "cx"])
    for q in range(n):
        m = model.at(q)
        err = compose(depolarizing_error(4 * m.p1 / 3, 1) if m.p1 else None, relax(m, m.gate_ns_1q))
        if err is not None:
            aer.add_quantum_error(err, ["h", "ry"], [q])
    for c, t in ring_pairs(n):
        mc, mt = model.at(c), model.at(t)
        rc, rt = relax(mc, model.gate_ns_2q), relax(mt, model.gate_ns_2q)
        both = None
        if rc is not None or rt is not None:  # tensor: its argument acts on the gate's first qubit (c)
            both = (rt or pauli_error([("I", 1.0)])).tensor(rc or pauli_error([("I", 1.0)]))
        err = compose(depolarizing_error(16 * mc.p2 / 15, 2) if mc.p2 else None, both)
        if err is not None:
            aer.add_quantum_error(err, ["cx"], [c, t])
    return aer


def aer_circuits(angles, weights, *, pershot: bool = False) -> list:
    """One Qiskit circuit per example, saving ⟨Z_q⟩ of every qubit as `z<q>` (per shot with `pershot`)."""
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import Pauli

    angles, weights = np.asarray(angles, np.float64), np.asarray(weights, np.float64)
    n = angles.shape[1]
    out = []
    for x in angles:
        qc = QuantumCircuit(n)
        for q in range(n):
            qc.h(q)
            qc.ry(float(x[q]), q)
        for layer in weights:
            for q in range(n):
                qc.ry(float(layer[q]), q)
            for c, t in ring_pairs(n):
                qc.cx(c, t)
        for q in range(n):
            qc.save_expectation_value(Pauli("Z"), [q], label=f"z{q}", pershot=pershot)
        out.append(qc)
    return out


def aer_simulator(model: NoiseModel, n: int, method: str):
    """`AerSimulator(method=...)` with the model: "density_matrix" (exact) or "statevector" (trajectories)."""
    from qiskit_aer import AerSimulator

    return AerSimulator(method=method, noise_model=aer_noise_model(model, n))


def aer_run(simulator, circuits, model: NoiseModel, *, shots: int = 1, seed: int = 0, pershot: bool = False):
    """Run prepared circuits: measured ⟨Z⟩ (B, n) averaged over the shots, and with `pershot` the
    per-shot (trajectory) values before readout error (shots, B, n)."""
    result = simulator.run(circuits, shots=shots, seed_simulator=seed).result()
    n = circuits[0].num_qubits
    if pershot:
        per = np.array([[np.real(result.data(i)[f"z{q}"]) for q in range(n)] for i in range(len(circuits))])
        per = per.transpose(2, 0, 1)  # (shots, B, n)
        return np.asarray(model.readout(per.mean(0))), per
    z = np.array([[np.real(result.data(i)[f"z{q}"]) for q in range(n)] for i in range(len(circuits))])
    return np.asarray(model.readout(z)), None


def aer_expvals(angles, weights, model: NoiseModel, *, method: str = "density_matrix", shots: int = 1,
                seed: int = 0, pershot: bool = False):
    """Measured ⟨Z_i⟩ (B, n) of the noisy circuit on Qiskit Aer (and per-shot values with `pershot`)."""
    n = np.asarray(angles).shape[1]
    return aer_run(aer_simulator(model, n, method), aer_circuits(angles, weights, pershot=pershot), model,
                   shots=shots, seed=seed, pershot=pershot)
