"""What the DQC's CNOT ring costs on real device layouts: two-qubit gates and depth after routing.

The ring (`heads.ring.ring_pairs`) couples qubit n−1 back to qubit 0, so it needs all-to-all
connectivity or SWAPs. Here the exported circuit (`heads.export.to_qiskit`, measurements included)
is compiled by Qiskit's transpiler onto the coupling map of a named layout:

- `all-to-all`: every pair coupled (trapped ions): no SWAPs, the unrouted circuit;
- `line`: qubits 0–1–2–…–(n−1) (`CouplingMap.from_line(n)`);
- `grid`: the smallest near-square r×c grid with r·c ≥ n, r = ⌈√n⌉ (`CouplingMap.from_grid`);
- `heavy-hex`: IBM's heavy-hexagon lattice of the smallest odd code distance d whose
  (5d² − 2d − 1)/2 qubits hold n (`CouplingMap.from_heavy_hex(d)`: 19 qubits at d = 3, 57 at d = 5).

Every layout is compiled the same way: `transpile(..., basis_gates=BASIS, optimization_level=1,
seed_transpiler=0)`. Level 1 lays the circuit out (a perfect embedding when one exists: an even
ring fits a grid's or a heavy-hex lattice's cycles), routes with SABRE and merges single-qubit
gates, but does not resynthesise two-qubit blocks, so the all-to-all count is exactly the ring's
n·layers CNOTs (layers for n = 2) and every CNOT above it comes from routing (a SWAP is three).

The noise model of `heads.noise` depolarizes after every CNOT with probability p2, so a routed
circuit meets each such error `two_qubit_gates` times: the table gives
P(no two-qubit error) = (1 − p2)^two_qubit_gates under a named preset (its p2 only: single-qubit,
relaxation and readout errors come on top).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from cxrfeat import __version__
from cxrfeat.errors import UserError

LAYOUTS = ("all-to-all", "line", "grid", "heavy-hex")
BASIS = ("cx", "rz", "sx", "x")
OPTIMIZATION_LEVEL = 1
SEED_TRANSPILER = 0
DEFAULT_NOISE = "sycamore-2019"
FORMAT = 1


def parse_layouts(spec: str | Sequence[str]) -> list[str]:
    """'line,grid' -> ['line', 'grid']; an unknown name is a one-line error naming it and the known ones."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    for name in names:
        if name not in LAYOUTS:
            raise UserError(f"--layouts: unknown layout {name!r} (choose from {', '.join(LAYOUTS)})")
    return list(dict.fromkeys(names))


def heavy_hex_distance(n: int) -> int:
    """The smallest odd d whose heavy-hex lattice, (5d² − 2d − 1)/2 qubits, holds n."""
    d = 3
    while (5 * d * d - 2 * d - 1) // 2 < n:
        d += 2
    return d


def coupling_map(layout: str, n: int):
    """(Qiskit CouplingMap, a short description) of `layout` large enough for n qubits."""
    from qiskit.transpiler import CouplingMap

    if layout == "all-to-all":
        return CouplingMap.from_full(n), f"all-to-all, {n} qubits"
    if layout == "line":
        return CouplingMap.from_line(n), f"line of {n}"
    if layout == "grid":
        rows = math.ceil(math.sqrt(n))
        cols = math.ceil(n / rows)
        return CouplingMap.from_grid(rows, cols), f"{rows}×{cols} grid"
    if layout == "heavy-hex":
        d = heavy_hex_distance(n)
        return CouplingMap.from_heavy_hex(d), f"heavy-hex d={d}, {(5 * d * d - 2 * d - 1) // 2} qubits"
    raise UserError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")


def route(circuit, layout: str):
    """The circuit compiled onto `layout` (module docstring: basis, level, seed)."""
    from qiskit import transpile

    cmap, _ = coupling_map(layout, circuit.num_qubits)
    return transpile(circuit, coupling_map=cmap, basis_gates=list(BASIS), optimization_level=OPTIMIZATION_LEVEL,
                     seed_transpiler=SEED_TRANSPILER)


def two_qubit_gates(circuit) -> int:
    return sum(1 for inst in circuit.data if inst.operation.num_qubits == 2)


def two_qubit_depth(circuit) -> int:
    return circuit.depth(lambda inst: inst.operation.num_qubits == 2)


def routing_row(circuit, layout: str, p2: float) -> dict:
    """Two-qubit gates and depth of `circuit` routed onto `layout`, and P(no two-qubit error) at p2."""
    _, description = coupling_map(layout, circuit.num_qubits)
    start = time.perf_counter()
    routed = route(circuit, layout)
    seconds = time.perf_counter() - start
    count = two_qubit_gates(routed)
    return {"layout": layout, "device": description, "two_qubit_gates": count,
            "added_two_qubit_gates": count - two_qubit_gates(circuit), "depth": routed.depth(),
            "two_qubit_depth": two_qubit_depth(routed), "p_no_two_qubit_error": (1.0 - p2) ** count,
            "transpile_seconds": round(seconds, 3)}


def routing_doc(circuits: dict[int, object], layers: int, layouts: Sequence[str], noise: str = DEFAULT_NOISE) -> dict:
    """routing.json: a row per (width, layout) for circuits {n: QuantumCircuit} of `layers` layers."""
    import qiskit

    from heads.noise import NoiseModel

    model = NoiseModel.load(noise)
    if model.qubits:
        raise UserError(f"noise model {model.name} has per-qubit rates: a routed circuit's CNOTs and SWAPs act on the "
                        f"device's physical qubits, which rates per circuit qubit do not describe; give --noise a "
                        f"model with one p2 (e.g. sycamore-2019)")
    rows = []
    for n, circuit in circuits.items():
        for layout in layouts:
            rows.append({"qubits": int(n), "layers": int(layers), "ring_cnots": two_qubit_gates(circuit),
                         **routing_row(circuit, layout, model.p2)})
    return {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "package_version": __version__, "qiskit_version": qiskit.__version__,
            "transpiler": {"basis_gates": list(BASIS), "optimization_level": OPTIMIZATION_LEVEL,
                           "seed_transpiler": SEED_TRANSPILER, "routing": "Qiskit preset pass manager (SABRE)"},
            "noise": {"model": model.name, "source": model.source, "p2": model.p2,
                      "p_no_two_qubit_error": "(1 - p2) ** two_qubit_gates (two-qubit depolarizing only)"},
            "rows": rows}


def widths_doc(widths: Sequence[int], layers: int, layouts: Sequence[str], noise: str = DEFAULT_NOISE) -> dict:
    """routing.json for the DQC at each width (trained weights do not change the routing: symbolic ones)."""
    from heads.export import to_qiskit

    if layers < 1:
        raise UserError(f"--layers must be at least 1, not {layers}")
    bad = [w for w in widths if w < 2]
    if bad or not widths:
        raise UserError(f"--qubits: give widths of at least 2 qubits, e.g. 8,14,19,40 (got {list(widths)})")
    return routing_doc({n: to_qiskit(None, n=n, layers=layers) for n in widths}, layers, layouts, noise)


def markdown(doc: dict, machine: str | None = None) -> str:
    """The routing table as Markdown (one row per width and layout)."""
    t, noise = doc["transpiler"], doc["noise"]
    lines = [f"Qiskit {doc['qiskit_version']} transpiler, optimization level {t['optimization_level']}, "
             f"seed_transpiler {t['seed_transpiler']}, basis {', '.join(t['basis_gates'])}"
             + (f"; measured on {machine}" if machine else "") + f" ({doc['created'][:10]}).",
             f"P(no 2q error): (1 − p2)^(two-qubit gates) with p2 = {noise['p2']} ({noise['model']}; "
             "two-qubit depolarizing only).", "",
             "| qubits | layers | layout | device | two-qubit gates | added by routing | depth | two-qubit depth "
             "| P(no 2q error) |", "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in doc["rows"]:
        lines.append(f"| {r['qubits']} | {r['layers']} | {r['layout']} | {r['device']} | {r['two_qubit_gates']} "
                     f"| {r['added_two_qubit_gates']} | {r['depth']} | {r['two_qubit_depth']} "
                     f"| {r['p_no_two_qubit_error']:.3f} |")
    return "\n".join(lines) + "\n"


def table(doc: dict):
    """The routing table as a rich table (the console output of `heads routing` and `heads export`)."""
    from rich.table import Table

    noise = doc["noise"]
    layers = sorted({r["layers"] for r in doc["rows"]})
    depth = f"{layers[0]}-layer DQC" if len(layers) == 1 else "DQC"
    out = Table(title=f"Routing cost of the {depth} (Qiskit {doc['qiskit_version']}, optimization level "
                      f"{doc['transpiler']['optimization_level']}, seed {doc['transpiler']['seed_transpiler']}); "
                      f"P(no 2q error) at p2 = {noise['p2']} ({noise['model']})")
    columns = ["Qubits", *(["Layers"] if len(layers) > 1 else []), "Layout", "Device", "2q gates", "Added",
               "Depth", "2q depth", "P(no 2q error)"]
    for col in columns:
        # a layout's name never breaks (all-to-all, heavy-hex); the device's description wraps at spaces
        out.add_column(col, justify="left" if col in ("Layout", "Device") else "right", no_wrap=col == "Layout")
    for r in doc["rows"]:
        out.add_row(str(r["qubits"]), *([str(r["layers"])] if len(layers) > 1 else []), r["layout"], r["device"],
                    str(r["two_qubit_gates"]), str(r["added_two_qubit_gates"]), str(r["depth"]),
                    str(r["two_qubit_depth"]), f"{r['p_no_two_qubit_error']:.3f}")
    return out
