"""`heads export`: a finished DQC run as files a quantum computer (or anyone's simulator) can run.

`export_run(RUN_DIR, settings)` opens the run the way `heads shots` does (`heads.shots.open_run`,
`load_test`: a CDL run, an unfinished run, or a feature store that no longer reproduces the run's
saved predictions is a one-line error) and writes into `settings.out`:

- `circuit.qasm` (`--format qasm3`, the default): the trained circuit in OpenQASM 3 with the n input
  angles as `input float[64] angle_k;` and the trained weights bound (`heads.export.to_qasm3`);
  `--format pennylane` writes the same text without the stdgates include (what `qml.from_qasm3`
  reads), `--format qiskit` Qiskit's QPY (`circuit.qpy`, `qiskit.qpy.load`).
- `head.npz`: the classical parts as trained — `norm_mean`, `norm_sd` (only when the run used
  `--feature-norm standardize`), `pre_kernel` (D, n), `pre_bias`, `weights` (layers, n),
  `post_kernel` (n, L), `post_bias`.
- `images/<test set>/<image id>.qasm` (or `.qpy`): one fully bound circuit per requested image
  (`--images ID,...`, or the first `--limit` rows of `--test-set`), and `images.npz` with, row-aligned,
  `ids`, `test_sets`, `files`, `embeddings` (the store's, before normalisation), `angles`,
  `expvals` (our exact ⟨Z⟩, `heads.quantum`), `probabilities` (ours) and `run_probabilities`
  (the run's `predictions/<test set>.npz`) and `y_true`.
- `routing.json`: the circuit's two-qubit gates and depth routed onto each `--layouts` layout
  (`heads.routing`).
- `manifest.json`, written last: label order, qubit ↔ post-layer map, observable per qubit, how
  counts become ⟨Z⟩, the formulas of the classical parts, the run's whole `config.json` (provenance)
  and the result of `verify`.

`verify(out)` then reads only those files: it simulates every image's circuit exactly in Qiskit
(`Statevector`; PennyLane for `--format pennylane`) and the parameterised circuit at the angles it
recomputes from `embeddings` and `head.npz`, applies the post layer, and compares ⟨Z⟩ and the
probabilities with `images.npz` (ours and the run's own). More than `TOLERANCE` apart is an error.
"""

from __future__ import annotations

import io
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrfeat import __version__, atomic
from cxrfeat.errors import UserError
from heads import export, routing, runs, shots
from heads.ring import ring_pairs

MANIFEST = "manifest.json"
HEAD_FILE = "head.npz"
IMAGES_FILE = "images.npz"
ROUTING_FILE = "routing.json"
IMAGES_DIR = "images"
FORMAT = 1
TOLERANCE = 1e-5  # probabilities; our float32 simulation against a float64 one of the exported files
QISKIT_CHECK_MAX_QUBITS = 20  # Statevector: 2^20 amplitudes
PENNYLANE_CHECK_MAX_QUBITS = 10  # qml.from_qasm3 defers the n measurements onto n more wires
_SUFFIX = {"qasm3": ".qasm", "pennylane": ".qasm", "qiskit": ".qpy"}


@dataclass
class ExportSettings:
    out: Path
    format: str = "qasm3"
    images: Sequence[str] = ()
    test_set: str | None = None
    limit: int = 10
    features: Path | None = None
    layouts: Sequence[str] = routing.LAYOUTS
    noise: str = routing.DEFAULT_NOISE
    check: bool = True

    def validate(self) -> None:
        export.check_format(self.format)
        if self.limit < 0:
            raise UserError(f"--limit must be at least 0, not {self.limit}")
        routing.parse_layouts(self.layouts)


def parse_ids(spec: str | None) -> list[str]:
    """'a.png, b.png' -> ['a.png', 'b.png'] (order kept, duplicates dropped)."""
    return list(dict.fromkeys(s.strip() for s in (spec or "").split(",") if s.strip()))


@dataclass
class Selection:
    """The exported images: row-aligned arrays over every chosen row of every test set."""

    ids: list[str] = field(default_factory=list)
    test_sets: list[str] = field(default_factory=list)
    arrays: dict[str, list] = field(default_factory=dict)

    def add(self, t: shots.TestInputs, rows: Sequence[int], run_prob: np.ndarray) -> None:
        for name, values in (("embeddings", t.embeddings), ("angles", t.angles), ("expvals", t.z),
                             ("probabilities", t.exact_prob), ("run_probabilities", run_prob), ("y_true", t.y_true)):
            self.arrays.setdefault(name, []).extend(values[list(rows)])
        self.ids += [str(t.ids[r]) for r in rows]
        self.test_sets += [t.name] * len(rows)


def _select(run: shots.DQCRun, s: ExportSettings) -> Selection:
    sets = shots.test_sets(run)
    if s.test_set is not None and s.test_set not in sets:
        raise UserError(f"--test-set {s.test_set!r}: not a test set of {run.path} (its test sets: {', '.join(sets)})")
    out = Selection()

    def load(name: str) -> tuple[shots.TestInputs, np.ndarray]:
        t = shots.load_test(run, name, s.features, keep_embeddings=True)
        return t, runs.load_predictions(run.path, name)["y_prob"]

    if s.images:
        missing = list(s.images)
        for name in [s.test_set] if s.test_set else sets:
            t, run_prob = load(name)
            where = {str(i): r for r, i in enumerate(t.ids)}
            found = [i for i in missing if i in where]
            out.add(t, [where[i] for i in found], run_prob)
            missing = [i for i in missing if i not in where]
            if not missing:
                break
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise UserError(f"--images: {shown} not in test set(s) {', '.join([s.test_set] if s.test_set else sets)} "
                            f"of {run.path}")
    elif s.limit:
        t, run_prob = load(s.test_set or sets[0])
        out.add(t, range(min(s.limit, len(t.ids))), run_prob)
    return out


def _file_names(sel: Selection, suffix: str) -> list[str]:
    """images/<test set>/<id><suffix>, the id made file-safe (a clash gets the row's position)."""
    names, seen = [], set()
    for k, (i, t) in enumerate(zip(sel.ids, sel.test_sets, strict=True)):
        name = f"{IMAGES_DIR}/{t}/{re.sub(r'[^A-Za-z0-9._-]', '_', i).lstrip('.') or 'image'}"
        if name in seen:
            name += f"-{k}"
        seen.add(name)
        names.append(name + suffix)
    return names


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _circuit_bytes(fmt: str, weights: np.ndarray, angles=None, comment: str = "") -> bytes:
    if fmt == "qiskit":
        from qiskit import qpy

        buf = io.BytesIO()
        qpy.dump(export.to_qiskit(weights, angles), buf)
        return buf.getvalue()
    text = export.to_qasm3(weights, angles, comment=comment)
    return (export.pennylane_source(text) if fmt == "pennylane" else text).encode()


def _prepare_out(out: Path, run_path: Path) -> list[str]:
    """Check that --out is new, empty or an earlier export of this run; returns that export's files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return []
    manifest = out / MANIFEST
    if not manifest.exists():
        raise UserError(f"--out {out}: not empty and not an export (no {MANIFEST}); give a new or empty folder")
    doc = atomic.read_json(manifest, what="an export manifest", remedy="delete the folder and export again")
    other = (doc.get("run") or {}).get("path")
    if other != str(run_path.resolve()):
        raise UserError(f"--out {out}: holds the export of {other}; give another folder")
    return [str(f) for f in (doc.get("images") or {}).get("files", [])]


def _manifest(run: shots.DQCRun, s: ExportSettings, sel: Selection, files: list[str], circuit_file: str,
              has_routing: bool) -> dict:
    n, layers = run.n, int(np.asarray(run.params["circuit"]).shape[0])
    norm = run.norm is not None
    return {
        "format": FORMAT, "kind": "heads export", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "package_version": __version__,
        "run": {"path": str(run.path.resolve()), "config": run.record.to_json()},
        "labels": run.labels,
        "circuit": {
            "file": circuit_file, "format": s.format, "qubits": n, "layers": layers,
            "inputs": export.input_names(n),
            "gates": "h q[k] on every qubit; ry(angle_k) q[k]; then per layer: ry(weights[l, k]) q[k] on every "
                     "qubit, the CNOT ring; c = measure q",
            "ring": [list(p) for p in ring_pairs(n)],
            "qubit_order": "qubit k is q[k], measured into c[k]; qubit 0 is the most significant bit of a basis "
                           "index (PennyLane's wire order); Qiskit prints c[0] as the rightmost character of a "
                           "count string",
        },
        "qubits": [{"qubit": k, "register": f"q[{k}]", "bit": f"c[{k}]", "observable": "Z",
                    "post_input": k} for k in range(n)],
        "qubit_to_label": "qubit k's <Z_k> is input k of the post layer; label j is output j "
                          "(probability = sigmoid(sum_k <Z_k> post_kernel[k, j] + post_bias[j])): every label "
                          "mixes every qubit, no qubit is one label's score",
        "counts_to_expval": "<Z_k> = (N(c[k] = 0) - N(c[k] = 1)) / shots; in a Qiskit count string of n "
                            "characters, c[k] is character n-1-k (heads.export.expvals_from_counts)",
        "classical": {
            "file": HEAD_FILE,
            "pre": ("x' = (x - norm_mean) / norm_sd; " if norm else "x' = x (the run did not normalise "
                    "features); ") + "angle = tanh(x' @ pre_kernel + pre_bias) * pi / 2",
            "post": "probability = sigmoid(z @ post_kernel + post_bias), z = (<Z_0>, ..., <Z_{n-1}>)",
            "feature_norm": run.record.settings.feature_norm or "none",
        },
        "images": {"file": IMAGES_FILE, "count": len(sel.ids), "files": files,
                   "test_sets": sorted(set(sel.test_sets)),
                   "selection": {"images": list(s.images)} if s.images
                   else {"test_set": sel.test_sets[0] if sel.test_sets else s.test_set, "limit": s.limit}},
        "routing": ROUTING_FILE if has_routing else None,
    }


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    routing: dict | None


def export_run(path: str | Path, s: ExportSettings) -> ExportResult:
    """Export one finished DQC run into `s.out` (module docstring); verified unless `s.check` is off."""
    s.validate()
    layouts = routing.parse_layouts(s.layouts)
    run = shots.open_run(path, purpose="export applies")
    sel = _select(run, s)
    out = Path(s.out)
    old_files = _prepare_out(out, run.path)
    (out / MANIFEST).unlink(missing_ok=True)  # an export is complete only once its manifest is back
    weights = np.asarray(run.params["circuit"], np.float32)
    suffix = _SUFFIX[s.format]
    files = _file_names(sel, suffix)
    for old in set(old_files) - set(files):
        (out / old).unlink(missing_ok=True)
    circuit_file = "circuit" + suffix
    about = f"DQC head of {run.path} ({run.record.task}, {run.n} qubits, {weights.shape[0]} layers)"
    atomic.write_bytes(out / circuit_file, _circuit_bytes(s.format, weights, comment=about))
    for name, image, test_set, angles in zip(files, sel.ids, sel.test_sets, sel.arrays.get("angles", []), strict=True):
        atomic.write_bytes(out / name, _circuit_bytes(s.format, weights, angles, f"{about}\nimage {image} ({test_set})"))
    head = {"pre_kernel": run.params["pre"]["kernel"], "pre_bias": run.params["pre"]["bias"], "weights": weights,
            "post_kernel": run.params["post"]["kernel"], "post_bias": run.params["post"]["bias"]}
    if run.norm is not None:
        head |= {"norm_mean": run.norm["mean"], "norm_sd": run.norm["sd"]}
    atomic.write_bytes(out / HEAD_FILE, _npz(**{k: np.asarray(v, np.float32) for k, v in head.items()}))
    arrays = {k: np.asarray(v) for k, v in sel.arrays.items()}
    if not sel.ids:
        arrays = {"embeddings": np.zeros((0, np.asarray(run.params["pre"]["kernel"]).shape[0]), np.float32),
                  **{k: np.zeros((0, run.n)) for k in ("angles", "expvals", "probabilities", "run_probabilities")},
                  "y_true": np.zeros((0, run.n), np.int8)}
    atomic.write_bytes(out / IMAGES_FILE, _npz(ids=np.asarray(sel.ids, dtype=str), test_sets=np.asarray(sel.test_sets, dtype=str),
                                               files=np.asarray(files, dtype=str), **arrays))
    route_doc = None
    if layouts:
        route_doc = routing.routing_doc({run.n: export.to_qiskit(weights)}, weights.shape[0], layouts, s.noise)
        atomic.write_json(out / ROUTING_FILE, route_doc)
    else:
        (out / ROUTING_FILE).unlink(missing_ok=True)
    manifest = _manifest(run, s, sel, files, circuit_file, bool(layouts))
    manifest["check"] = None
    atomic.write_json(out / MANIFEST, manifest)
    if s.check:
        manifest["check"] = verify(out)
        atomic.write_json(out / MANIFEST, manifest)
        if manifest["check"].get("passed") is False:
            raise UserError(f"{out}: the exported files reproduce the head only to {manifest['check']['worst']:.2g} "
                            f"(tolerance {TOLERANCE:g}); see 'check' in {out / MANIFEST}")
    return ExportResult(out, manifest, route_doc)


# ---------------------------------------------------------------- reading an export back
def _z_from_probabilities(probs: np.ndarray, n: int, qubit0_msb: bool) -> np.ndarray:
    shifts = np.arange(n - 1, -1, -1) if qubit0_msb else np.arange(n)
    bits = (np.arange(2**n)[:, None] >> shifts) & 1
    return probs @ (1 - 2 * bits)


def _qiskit_expvals(circuit) -> np.ndarray:
    from qiskit.quantum_info import Statevector

    c = circuit.remove_final_measurements(inplace=False)
    return _z_from_probabilities(Statevector(c).probabilities(), c.num_qubits, qubit0_msb=False)


def _load_qiskit(path: Path, fmt: str):
    if fmt == "qiskit":
        from qiskit import qpy

        with open(path, "rb") as f:
            return qpy.load(f)[0]
    try:
        from qiskit.qasm3 import loads
    except ImportError as e:  # pragma: no cover - qiskit is in the test extra
        raise UserError(f"checking the export needs Qiskit ({e}); install it or give --no-check") from None
    try:
        return loads(path.read_text())
    except Exception as e:  # the importer package missing, or a file it cannot read
        raise UserError(f"{path}: Qiskit's OpenQASM 3 importer failed ({type(e).__name__}: {str(e)[:200]}); "
                        f"`pip install qiskit-qasm3-import`, or give --no-check") from None


def _pennylane_expvals(text: str, n: int, inputs: dict | None = None) -> np.ndarray:
    import pennylane as qml

    @qml.qnode(qml.device("default.qubit"))
    def circuit():
        qml.map_wires(qml.from_qasm3(text), {f"q[{k}]": k for k in range(n)})(**(inputs or {}))
        return [qml.expval(qml.PauliZ(k)) for k in range(n)]

    return np.asarray(circuit(), np.float64)


def verify(out: str | Path) -> dict:
    """Recompute ⟨Z⟩ and probabilities from the export folder's files alone (module docstring)."""
    out = Path(out)
    manifest = atomic.read_json(out / MANIFEST, what="an export manifest", remedy="export again")
    c = manifest["circuit"]
    n, fmt = int(c["qubits"]), c["format"]
    limit = PENNYLANE_CHECK_MAX_QUBITS if fmt == "pennylane" else QISKIT_CHECK_MAX_QUBITS
    if n > limit:
        return {"skipped": f"{n} qubits: an exact check simulates 2^{n if fmt != 'pennylane' else 2 * n} amplitudes "
                           f"(limit {limit} qubits)"}
    with np.load(out / HEAD_FILE) as h:
        head = {k: h[k].astype(np.float64) for k in h.files}
    with np.load(out / IMAGES_FILE) as z:
        images = {k: z[k] for k in z.files}
    x = images["embeddings"].astype(np.float64)
    if "norm_mean" in head:
        x = (x - head["norm_mean"]) / head["norm_sd"]
    angles = np.tanh(x @ head["pre_kernel"] + head["pre_bias"]) * (math.pi / 2)
    names = c["inputs"]
    from_images, from_template = [], []
    if fmt == "pennylane":
        template = (out / c["file"]).read_text()
        for name, a in zip(images["files"], angles, strict=True):
            from_images.append(_pennylane_expvals((out / str(name)).read_text(), n))
            from_template.append(_pennylane_expvals(template, n, dict(zip(names, map(float, a), strict=True))))
        simulator = "PennyLane default.qubit (qml.from_qasm3)"
    else:
        template = _load_qiskit(out / c["file"], fmt)
        for name, a in zip(images["files"], angles, strict=True):
            from_images.append(_qiskit_expvals(_load_qiskit(out / str(name), fmt)))
            values = dict(zip(names, map(float, a), strict=True))
            from_template.append(_qiskit_expvals(template.assign_parameters({p: values[p.name] for p in template.parameters})))
        simulator = "Qiskit Statevector (" + ("qiskit.qpy" if fmt == "qiskit" else "qiskit.qasm3.loads") + ")"
    zi = np.asarray(from_images).reshape(-1, n)
    zt = np.asarray(from_template).reshape(-1, n)
    prob = 1.0 / (1.0 + np.exp(-(zi @ head["post_kernel"] + head["post_bias"])))

    def worst(a, b) -> float | None:
        return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if len(a) else None

    diffs = {"max_abs_expval_difference": worst(zi, images["expvals"]),
             "max_abs_template_difference": worst(zt, zi),
             "max_abs_probability_difference": worst(prob, images["probabilities"]),
             "max_abs_run_probability_difference": worst(prob, images["run_probabilities"])}
    top = max((v for v in diffs.values() if v is not None), default=0.0)
    return {"simulator": simulator, "versions": _versions(), "images": int(len(zi)), **diffs,
            "tolerance": TOLERANCE, "worst": top, "passed": bool(top <= TOLERANCE)}


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for package in ("qiskit", "qiskit-qasm3-import", "pennylane"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out
