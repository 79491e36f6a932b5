"""A trained DQC head as circuits other tools run: OpenQASM 3, Qiskit and PennyLane (docs/export.md).

The circuit is `heads.quantum`'s, gate for gate: H on every qubit; RY(angle_k) on qubit k (the n
input angles); then per layer l RY(weights[l, k]) on every qubit k and the CNOT ring of
`heads.ring.ring_pairs` (0→1, 1→2, …, n−1→0; one CNOT 0→1 for n = 2); every qubit measured in Z
into bit c[k]. Qubit k is the k-th qubit of the register `q`, the k-th input of the post layer, and
qubit 0 is the most significant bit of our basis index (PennyLane's wire order); in Qiskit's count
strings it is the rightmost character (`expvals_from_counts`).

- `to_qasm3(weights, angles=None)`: OpenQASM 3 text. Without angles the inputs are
  `input float[64] angle_k;` declarations (zero-padded, so sorting the names sorts the qubits), which
  Qiskit's importer (`qiskit.qasm3.loads`, package qiskit-qasm3-import) reads as circuit Parameters
  and PennyLane's (`qml.from_qasm3`) as keyword arguments; with angles every number is bound. Numbers
  are written with 17 significant digits, so the float32 values of a run are exact.
- `pennylane_source(text)`: the same text without `include "stdgates.inc";` — PennyLane 0.45's
  interpreter knows the standard gates itself and refuses the include, Qiskit's needs it.
- `to_qiskit(...)` / `to_pennylane(weights)`: the same circuit built directly in Qiskit (a
  `QuantumCircuit` with measurements) and PennyLane (a quantum function returning ⟨Z_k⟩).

`export_run` (`heads export`) writes a finished run's circuit, its classical parts and per-image
circuits with our ⟨Z⟩ and probabilities (`heads.export_run` module docstring).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cxrfeat.errors import UserError
from heads.ring import ring_pairs

FORMATS = ("qasm3", "qiskit", "pennylane")
INCLUDE = 'include "stdgates.inc";'


def input_names(n: int) -> list[str]:
    """Names of the n input angles: angle_0 … angle_{n−1}, zero-padded (angle_00 … angle_18 at 19)."""
    width = len(str(n - 1))
    return [f"angle_{k:0{width}d}" for k in range(n)]


def weight_names(layers: int, n: int) -> list[list[str]]:
    """Names of symbolic circuit weights (routing of an untrained circuit): theta_<layer>_<qubit>."""
    wl, wq = len(str(layers - 1)), len(str(n - 1))
    return [[f"theta_{lay:0{wl}d}_{k:0{wq}d}" for k in range(n)] for lay in range(layers)]


def gates(weights, angles=None, *, n: int | None = None, layers: int | None = None) -> list[tuple]:
    """The circuit in order, as (gate, qubits, angle): gate 'h', 'ry' or 'cx'; angle a float, the name
    of a symbolic parameter, or None.

    weights (layers, n): trained RY angles (None: symbolic `weight_names`, with n and layers given);
    angles (n,): bound input angles (None: the symbolic inputs `input_names`).
    """
    if weights is None:
        if n is None or layers is None:
            raise ValueError("symbolic weights need n and layers")
        table = weight_names(layers, n)
    else:
        w = np.asarray(weights, np.float64)
        if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 2:
            raise ValueError(f"weights must have shape (layers >= 1, qubits >= 2), not {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite")
        layers, n = w.shape
        table = [[float(t) for t in row] for row in w]
    if angles is None:
        inputs = input_names(n)
    else:
        a = np.asarray(angles, np.float64)
        if a.shape != (n,) or not np.all(np.isfinite(a)):
            raise ValueError(f"angles must be {n} finite numbers, not shape {a.shape}")
        inputs = [float(x) for x in a]
    ops = [("h", (k,), None) for k in range(n)]
    ops += [("ry", (k,), inputs[k]) for k in range(n)]
    for row in table:
        ops += [("ry", (k,), row[k]) for k in range(n)]
        ops += [("cx", pair, None) for pair in ring_pairs(n)]
    return ops


def _number(x: float) -> str:
    return repr(float(x))  # shortest text that reads back to the same float64: float32 values are exact


def to_qasm3(weights, angles=None, *, comment: str = "", include: bool = True) -> str:
    """The circuit as OpenQASM 3 (module docstring); `comment` lines go at the top as `//` comments."""
    ops = gates(weights, angles)
    n = 1 + max(q for _, qubits, _ in ops for q in qubits)
    lines = ["OPENQASM 3.0;"] + ([INCLUDE] if include else [])
    lines += [f"// {line}" if line else "//" for line in comment.splitlines()]
    if angles is None:
        lines += [f"input float[64] {name};" for name in input_names(n)]
    lines += [f"qubit[{n}] q;", f"bit[{n}] c;"]
    for gate, qubits, angle in ops:
        args = "" if angle is None else f"({angle if isinstance(angle, str) else _number(angle)})"
        lines.append(f"{gate}{args} {', '.join(f'q[{k}]' for k in qubits)};")
    lines.append("c = measure q;")
    return "\n".join(lines) + "\n"


def pennylane_source(text: str) -> str:
    """OpenQASM 3 text as PennyLane's `qml.from_qasm3` reads it: without the stdgates include."""
    return "".join(line for line in text.splitlines(keepends=True) if line.strip() != INCLUDE)


def to_qiskit(weights, angles=None, *, n: int | None = None, layers: int | None = None):
    """The circuit as a Qiskit `QuantumCircuit` (registers q and c, measurements included); symbolic
    inputs and weights (`gates`) become `Parameter`s of the same names."""
    from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
    from qiskit.circuit import Parameter

    ops = gates(weights, angles, n=n, layers=layers)
    width = 1 + max(q for _, qubits, _ in ops for q in qubits)
    q, c = QuantumRegister(width, "q"), ClassicalRegister(width, "c")
    qc = QuantumCircuit(q, c, name="dqc")
    params: dict[str, Parameter] = {}
    for gate, qubits, angle in ops:
        if gate == "h":
            qc.h(q[qubits[0]])
        elif gate == "cx":
            qc.cx(q[qubits[0]], q[qubits[1]])
        else:
            value = params.setdefault(angle, Parameter(angle)) if isinstance(angle, str) else angle
            qc.ry(value, q[qubits[0]])
    qc.measure(q, c)
    return qc


def to_pennylane(weights):
    """The circuit as a PennyLane quantum function `circuit(angles)` → [⟨Z_0⟩, …, ⟨Z_{n−1}⟩] on wires
    0..n−1; angles (n,) or a batch (B, n) (parameter broadcasting). Wrap it in a QNode:
    `qml.QNode(to_pennylane(w), qml.device("default.qubit", wires=n))(angles)`."""
    import pennylane as qml

    ops = gates(weights, None)
    n = np.asarray(weights).shape[1]
    names = input_names(n)

    def circuit(angles):
        for gate, qubits, angle in ops:
            if gate == "h":
                qml.Hadamard(wires=qubits[0])
            elif gate == "cx":
                qml.CNOT(wires=list(qubits))
            else:
                value = angles[..., names.index(angle)] if isinstance(angle, str) else angle
                qml.RY(value, wires=qubits[0])
        return [qml.expval(qml.PauliZ(k)) for k in range(n)]

    return circuit


def expvals_from_counts(counts: Mapping[str, int], n: int) -> np.ndarray:
    """⟨Z_k⟩ (n,) from Qiskit counts {bit string: count}: bit c[k] is character n−1−k of the string
    (Qiskit writes c[0] rightmost) and ⟨Z_k⟩ = (#0 − #1)/shots on it."""
    total, ones = 0, np.zeros(n)
    for key, count in counts.items():
        bits = key.replace(" ", "")
        if len(bits) != n or set(bits) - {"0", "1"}:
            raise ValueError(f"count key {key!r} is not a {n}-bit string")
        ones += count * (np.array([int(b) for b in bits[::-1]]))
        total += count
    if total == 0:
        raise ValueError("no shots in counts")
    return 1.0 - 2.0 * ones / total


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return fmt
