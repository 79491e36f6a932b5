"""`heads export` and `heads.export`: the trained DQC as OpenQASM 3 / Qiskit / PennyLane circuits, checked
against Qiskit's and PennyLane's importers and simulators, Qiskit Aer end to end, and routed onto device layouts."""

import json
import math
import shutil

import numpy as np
import pennylane as qml
import pytest
from headsdata import make_stores
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from heads import export as ex
from heads import routing, runs
from heads import shots as sh
from heads.cli import app
from heads.quantum import expvals

qiskit = pytest.importorskip("qiskit")
pytest.importorskip("qiskit_qasm3_import")  # qiskit.qasm3.loads needs it (the test extra)
from qiskit.qasm3 import loads  # noqa: E402
from qiskit.quantum_info import Operator, Statevector  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _random(rng, b, n, layers):
    return (rng.uniform(-math.pi / 2, math.pi / 2, (b, n)).astype(np.float32),
            rng.uniform(0, 2 * math.pi, (layers, n)).astype(np.float32))


def _z_qiskit(circuit) -> np.ndarray:
    """⟨Z_k⟩ of a Qiskit circuit by its exact state vector (Qiskit's order: qubit k is bit k of the index)."""
    c = circuit.remove_final_measurements(inplace=False)
    n = c.num_qubits
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    return Statevector(c).probabilities() @ (1 - 2 * bits)


def _bind(circuit, angles):
    names = ex.input_names(len(angles))
    return circuit.assign_parameters({p: float(angles[names.index(p.name)]) for p in circuit.parameters})


# ---------------------------------------------------------------- round trip through the importers
CASES = [(2, 1), (2, 5), (3, 2), (4, 4), (5, 3), (6, 1), (7, 5), (8, 3), (9, 2), (10, 5), (13, 1), (14, 3)]


@pytest.mark.parametrize("n,layers", CASES)
def test_qiskit_importer_reproduces_our_expectations(n, layers):
    angles, weights = _random(np.random.default_rng(100 * n + layers), 2, n, layers)
    ours = np.asarray(expvals(angles, weights, backend="statevector"), np.float64)
    template = loads(ex.to_qasm3(weights))
    assert sorted(p.name for p in template.parameters) == ex.input_names(n)
    assert dict(template.count_ops()) == {"h": n, "ry": n * (layers + 1), "cx": layers * (1 if n == 2 else n),
                                          "measure": n}
    for a, want in zip(angles, ours, strict=True):
        np.testing.assert_allclose(_z_qiskit(_bind(template, a)), want, atol=1e-6)  # parameterised
        np.testing.assert_allclose(_z_qiskit(loads(ex.to_qasm3(weights, a))), want, atol=1e-6)  # fully bound
        np.testing.assert_allclose(_z_qiskit(ex.to_qiskit(weights, a)), want, atol=1e-6)  # built directly
    direct = np.asarray(qml.QNode(ex.to_pennylane(weights), qml.device("default.qubit", wires=n))(angles.astype(np.float64))).T
    np.testing.assert_allclose(direct, ours, atol=1e-6)


@pytest.mark.parametrize("n,layers", [(2, 1), (3, 5), (5, 2), (8, 3)])
def test_pennylane_importer_reproduces_our_expectations(n, layers):
    angles, weights = _random(np.random.default_rng(7 * n + layers), 2, n, layers)
    ours = np.asarray(expvals(angles, weights, backend="statevector"), np.float64)
    text = ex.to_qasm3(weights)
    with pytest.raises(NotImplementedError, match="Include"):  # why the PennyLane dialect drops the include
        qml.from_qasm3(text)()
    source = ex.pennylane_source(text)
    names = ex.input_names(n)

    @qml.qnode(qml.device("default.qubit"))  # no fixed wires: the n measurements are deferred onto n more
    def circuit(a):
        qml.map_wires(qml.from_qasm3(source), {f"q[{k}]": k for k in range(n)})(**dict(zip(names, a, strict=True)))
        return [qml.expval(qml.PauliZ(k)) for k in range(n)]

    for a, want in zip(angles.astype(np.float64), ours, strict=True):
        np.testing.assert_allclose(np.asarray(circuit(a)), want, atol=1e-6)


def test_two_qubits_one_layer_in_closed_form():
    """RY(x+θ)H|0⟩ per qubit, then CNOT 0→1: ⟨Z_0⟩ = −sin(x0+θ0), ⟨Z_1⟩ = ⟨Z_0 Z_1⟩ before = sin(x0+θ0)·sin(x1+θ1)."""
    x, w = np.array([0.3, -1.1]), np.array([[2.0, 0.4]])
    s = np.sin(x + w[0])
    np.testing.assert_allclose(_z_qiskit(loads(ex.to_qasm3(w, x))), [-s[0], s[0] * s[1]], atol=1e-12)


def test_operators_of_imported_and_direct_circuits_are_equal():
    rng = np.random.default_rng(3)
    for n, layers in ((2, 3), (3, 2), (5, 2)):
        a, w = _random(rng, 1, n, layers)
        imported = loads(ex.to_qasm3(w, a[0])).remove_final_measurements(inplace=False)
        direct = ex.to_qiskit(w, a[0]).remove_final_measurements(inplace=False)
        assert Operator(imported).equiv(Operator(direct))


def test_numbers_are_written_exactly_and_bad_circuits_refused():
    w = np.array([[np.float32(0.1), np.float32(-3e-8)], [np.float32(6.2), np.float32(1e-5)]], np.float32)
    text = ex.to_qasm3(w, np.array([0.5, -0.25], np.float32))
    got = [inst.operation.params[0] for inst in loads(text).data if inst.operation.name == "ry"]
    assert got == [0.5, -0.25, *map(float, w.ravel())]  # float32 values read back bit for bit
    assert "input" not in text and ex.to_qasm3(w).count("input float[64]") == 2
    assert ex.input_names(19)[:2] == ["angle_00", "angle_01"] and ex.input_names(10)[-1] == "angle_9"
    for bad in (np.zeros((1, 1)), np.zeros((0, 3)), np.array([[np.nan, 0.0]])):
        with pytest.raises(ValueError):
            ex.to_qasm3(bad)
    with pytest.raises(ValueError, match="angles"):
        ex.to_qasm3(np.zeros((1, 3)), np.zeros(2))


def test_counts_become_expectations_in_qiskits_bit_order():
    # "01": c[0] = 1, c[1] = 0 (Qiskit writes c[0] rightmost)
    np.testing.assert_allclose(ex.expvals_from_counts({"01": 3, "00": 1}, 2), [-0.5, 1.0])
    with pytest.raises(ValueError):
        ex.expvals_from_counts({"011": 1}, 2)
    aer = pytest.importorskip("qiskit_aer")
    a, w = _random(np.random.default_rng(4), 1, 4, 2)
    shots = 20_000
    counts = aer.AerSimulator().run(ex.to_qiskit(w, a[0]), shots=shots, seed_simulator=1).result().get_counts()
    exact = np.asarray(expvals(a, w, backend="statevector"))[0]
    sd = np.sqrt((1 - exact**2) / shots)
    assert np.max(np.abs(ex.expvals_from_counts(counts, 4) - exact) / sd) < 4.5


# ---------------------------------------------------------------- routing
def test_routed_circuits_are_equivalent_and_all_to_all_adds_nothing():
    rng = np.random.default_rng(5)
    for n, layers in ((2, 2), (3, 2), (4, 3)):
        a, w = _random(rng, 1, n, layers)
        circuit = ex.to_qiskit(w, a[0])
        logical = circuit.remove_final_measurements(inplace=False)
        exact = np.asarray(expvals(a, w, backend="statevector"), np.float64)[0]
        for layout in routing.LAYOUTS:
            routed = routing.route(circuit, layout)
            bare = routed.remove_final_measurements(inplace=False)
            if bare.num_qubits == n:  # the whole unitary, layouts and final permutation included
                assert Operator.from_circuit(bare).equiv(Operator(logical)), (n, layout)
            final = routed.layout.final_index_layout()  # virtual qubit k sits on physical qubit final[k]
            placed = qiskit.QuantumCircuit(bare.num_qubits).compose(logical, qubits=final)  # spare qubits stay |0>
            state = Statevector(bare)
            assert state.equiv(Statevector(placed)), (n, layout)
            bits = (np.arange(2**bare.num_qubits)[:, None] >> np.asarray(final)) & 1
            np.testing.assert_allclose(state.probabilities() @ (1 - 2 * bits), exact, atol=1e-6, err_msg=f"{n} {layout}")
        ring = layers * (1 if n == 2 else n)
        unrouted = qiskit.transpile(circuit, basis_gates=list(routing.BASIS),
                                    optimization_level=routing.OPTIMIZATION_LEVEL, seed_transpiler=0)
        assert routing.two_qubit_gates(routing.route(circuit, "all-to-all")) == routing.two_qubit_gates(unrouted) == ring
        assert routing.two_qubit_depth(routing.route(circuit, "all-to-all")) == routing.two_qubit_depth(unrouted)


def test_routing_table_and_its_command(tmp_path, monkeypatch):
    doc = routing.widths_doc([8, 9], 3, routing.LAYOUTS)
    rows = {(r["qubits"], r["layout"]): r for r in doc["rows"]}
    assert rows[(8, "all-to-all")]["two_qubit_gates"] == 24 and rows[(8, "all-to-all")]["added_two_qubit_gates"] == 0
    assert rows[(8, "grid")]["two_qubit_gates"] == 24  # an even ring is a cycle of the 3×3 grid: no SWAP
    assert rows[(9, "grid")]["added_two_qubit_gates"] > 0  # a grid has no odd cycle
    assert rows[(8, "line")]["two_qubit_gates"] > 24 and rows[(8, "heavy-hex")]["device"].startswith("heavy-hex d=3")
    p2 = doc["noise"]["p2"]
    for r in doc["rows"]:
        assert r["p_no_two_qubit_error"] == pytest.approx((1 - p2) ** r["two_qubit_gates"])
    assert routing.heavy_hex_distance(19) == 3 and routing.heavy_hex_distance(20) == 5
    r = invoke("routing", "--qubits", "4,5", "--layers", "2", "--layouts", "line,grid", "--out", tmp_path / "rt")
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "rt" / "routing.json").read_text())
    assert [(x["qubits"], x["layout"]) for x in saved["rows"]] == [(4, "line"), (4, "grid"), (5, "line"), (5, "grid")]
    assert saved["transpiler"]["optimization_level"] == 1 and saved["qiskit_version"] == qiskit.__version__
    assert "| 4 | 2 | line |" in (tmp_path / "rt" / "routing.md").read_text()
    monkeypatch.setenv("COLUMNS", "80")  # an 80-column log: the table fits, no layout name broken
    r = invoke("routing", "--qubits", "8,19", "--layers", "3")
    assert r.exit_code == 0 and max(len(line) for line in r.stdout.splitlines()) <= 80, r.stdout
    assert all(f" {name} " in r.stdout for name in routing.LAYOUTS), r.stdout
    r = invoke("routing", "--layouts", "line,ring")
    assert r.exit_code != 0 and "unknown layout 'ring'" in r.output and len(r.output.strip().splitlines()) == 1
    r = invoke("routing", "--qubits", "1")
    assert r.exit_code != 0 and "--qubits" in r.output
    per_qubit = tmp_path / "dev.toml"
    per_qubit.write_text('name = "dev"\np2 = 0.01\n[[qubits]]\np2 = 0.02\n[[qubits]]\np2 = 0.03\n')
    r = invoke("routing", "--qubits", "2", "--noise", str(per_qubit), "--out", tmp_path / "pq")
    assert r.exit_code == 2 and "per-qubit rates" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "pq").exists()


# ---------------------------------------------------------------- a trained run, exported
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny sweep (CXR-8: 8 qubits, dim 16, 120 test rows) of CDL and DQC, 1 seed, standardized features."""
    root = tmp_path_factory.mktemp("export")
    features = make_stores(root / "features", n_train=60, n_val=20, n_test=120, dim=16)
    r = invoke("sweep", "--tasks", "8", "--seeds", "1", "--models", "cdl,dqc", "--features", features,
               "--runs", root / "runs", "--name", "t", "--max-epochs", "2", "--lr", "0.01", "--patience", "2",
               "--feature-norm", "standardize")
    assert r.exit_code == 0, r.output
    return root


def _run_dir(trained):
    return trained / "runs" / "t" / "cxr-8" / "dqc" / "seed-1"


def _aer_expvals(circuit) -> np.ndarray:
    """⟨Z_k⟩ from Qiskit Aer's exact state vector."""
    aer = pytest.importorskip("qiskit_aer")
    c = circuit.remove_final_measurements(inplace=False)
    c.save_statevector()
    sv = np.asarray(aer.AerSimulator(method="statevector").run(c).result().get_statevector())
    n = c.num_qubits
    return (np.abs(sv) ** 2) @ (1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1))


def test_export_reproduces_the_runs_predictions_from_its_files_alone(trained, tmp_path):
    out = tmp_path / "dqc8"
    r = invoke("export", _run_dir(trained), "--test-set", "nih-cxr-lt", "--limit", "6", "--out", out)
    assert r.exit_code == 0, r.output
    assert "check: Qiskit Statevector" in r.output and "heavy-hex" in r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["check"]["passed"] and manifest["check"]["images"] == 6
    assert manifest["labels"] == list(runs.read_config(_run_dir(trained)).labels)
    assert manifest["run"]["config"]["model"] == "dqc" and manifest["classical"]["feature_norm"] == "standardize"
    # Independently of heads: the files, Aer's exact simulator and the manifest's formulas.
    head = dict(np.load(out / "head.npz"))
    images = dict(np.load(out / "images.npz"))
    x = (images["embeddings"] - head["norm_mean"]) / head["norm_sd"]
    angles = np.tanh(x.astype(np.float64) @ head["pre_kernel"] + head["pre_bias"]) * math.pi / 2
    template = loads((out / manifest["circuit"]["file"]).read_text())
    saved = runs.load_predictions(_run_dir(trained), "nih-cxr-lt")
    row = {i: k for k, i in enumerate(saved["ids"])}
    assert list(images["ids"]) == list(saved["ids"][:6])
    for k, (image, file) in enumerate(zip(images["ids"], manifest["images"]["files"], strict=True)):
        z = _aer_expvals(loads((out / file).read_text()))
        np.testing.assert_allclose(z, _aer_expvals(_bind(template, angles[k])), atol=1e-6)
        prob = 1 / (1 + np.exp(-(z @ head["post_kernel"] + head["post_bias"])))
        np.testing.assert_allclose(prob, saved["y_prob"][row[image]], atol=1e-5)
        np.testing.assert_allclose(z, images["expvals"][k], atol=1e-6)
    assert json.loads((out / "routing.json").read_text())["rows"][0]["qubits"] == 8


def test_aer_shots_agree_with_heads_shots(trained, tmp_path):
    aer = pytest.importorskip("qiskit_aer")
    out = tmp_path / "all"
    r = invoke("export", _run_dir(trained), "--limit", "1000", "--out", out, "--layouts", "", "--no-check")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    head, images = dict(np.load(out / "head.npz")), dict(np.load(out / "images.npz"))
    assert manifest["images"]["count"] == 120 and manifest["routing"] is None and manifest["check"] is None
    shots = 100
    circuits = [loads((out / f).read_text()) for f in manifest["images"]["files"]]
    result = aer.AerSimulator().run(circuits, shots=shots, seed_simulator=11).result()
    z = np.stack([ex.expvals_from_counts(result.get_counts(k), 8) for k in range(len(circuits))])
    prob = 1 / (1 + np.exp(-(z @ head["post_kernel"] + head["post_bias"])))
    y = images["y_true"]
    aer_auroc = np.mean([roc_auc_score(y[:, j], prob[:, j]) for j in range(8) if len(set(y[:, j])) == 2])
    settings = sh.ShotSettings(shots=[shots], repeats=10, sampling="joint")
    run = sh.open_run(_run_dir(trained))
    ours = sh.evaluate_test(run, sh.load_test(run, "nih-cxr-lt"), settings)["shots"][0]
    assert abs(aer_auroc - ours["auroc_mean"]) < 4 * ours["auroc_sd"] * math.sqrt(1 + 1 / 10)
    assert ours["auroc_sd"] > 0


@pytest.mark.parametrize("fmt", ["qiskit", "pennylane"])
def test_other_formats_pass_their_own_check(trained, tmp_path, fmt):
    out = tmp_path / fmt
    ids = runs.load_predictions(_run_dir(trained), "mimic-cxr-lt")["ids"][:2]
    r = invoke("export", _run_dir(trained), "--format", fmt, "--images", ",".join(ids[::-1]), "--test-set",
               "mimic-cxr-lt", "--out", out, "--layouts", "all-to-all")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["check"]["passed"] and m["images"]["test_sets"] == ["mimic-cxr-lt"]
    assert list(np.load(out / "images.npz")["ids"]) == list(ids[::-1])  # in the order asked for
    assert ("PennyLane" if fmt == "pennylane" else "qiskit.qpy") in m["check"]["simulator"]
    suffix = ".qpy" if fmt == "qiskit" else ".qasm"
    assert all(f.endswith(suffix) and (out / f).exists() for f in m["images"]["files"])
    if fmt == "pennylane":
        assert ex.INCLUDE not in (out / "circuit.qasm").read_text()


def test_re_export_replaces_its_own_files_and_refuses_other_folders(trained, tmp_path):
    out = tmp_path / "e"
    assert invoke("export", _run_dir(trained), "--limit", "3", "--out", out, "--layouts", "").exit_code == 0
    first = json.loads((out / "manifest.json").read_text())["images"]["files"]
    r = invoke("export", _run_dir(trained), "--limit", "1", "--out", out, "--layouts", "")
    assert r.exit_code == 0, r.output
    assert all((out / f).exists() == (k == 0) for k, f in enumerate(first))
    stranger = tmp_path / "s"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    r = invoke("export", _run_dir(trained), "--out", stranger)
    assert r.exit_code != 0 and "not an export" in r.output and (stranger / "notes.txt").read_text() == "mine"
    other = tmp_path / "other-run"
    shutil.copytree(_run_dir(trained), other)
    r = invoke("export", other, "--out", out, "--layouts", "")
    assert r.exit_code != 0 and "holds the export of" in r.output


def test_refusals_name_the_fault(trained, tmp_path):
    sweep = trained / "runs" / "t" / "cxr-8"

    def refused(*args, says, one_line=True):
        r = invoke("export", *args)
        assert r.exit_code != 0 and says in r.output, r.output
        assert not one_line or len(r.output.strip().splitlines()) == 1, r.output  # one line, no traceback

    refused(sweep / "cdl" / "seed-1", "--out", tmp_path / "x", says="a CDL run; export applies to DQC runs only")
    unfinished = tmp_path / "seed-1"
    shutil.copytree(_run_dir(trained), unfinished)
    (unfinished / runs.DONE).unlink()
    refused(unfinished, "--out", tmp_path / "x", says="unfinished run")
    other = make_stores(tmp_path / "other", n_train=60, n_val=20, n_test=120, dim=16, seed=1)
    refused(_run_dir(trained), "--out", tmp_path / "x", "--features", other, says="differ from its saved predictions")
    refused(_run_dir(trained), "--out", tmp_path / "x", "--layouts", "ring", says="unknown layout 'ring'")
    refused(_run_dir(trained), "--out", tmp_path / "x", "--images", "nope.png", says="--images: nope.png not in")
    refused(_run_dir(trained), "--out", tmp_path / "x", "--test-set", "chexpert", says="not a test set of")
    refused(_run_dir(trained), "--out", tmp_path / "x", "--format", "quil", says="quil", one_line=False)  # Typer's usage message
    assert not (tmp_path / "x").exists()  # nothing written by a refused export


def test_the_report_draws_the_exported_circuit_and_finds_its_routing_table(trained, tmp_path, monkeypatch):
    """`heads export` into exports/ of the working folder: `analysis report` finds it without being told,
    draws the run's circuit (the gates of the exported circuit, tests/test_report_circuit.py) and shows the
    export's routing table and check."""
    from analysis.report import build_report

    monkeypatch.chdir(tmp_path)
    r = invoke("export", _run_dir(trained), "--limit", "3", "--layouts", "all-to-all,line", "--out", "exports/dqc8")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "exports" / "dqc8" / "routing.json").read_text())
    text = build_report(runs=trained / "runs" / "t", out=tmp_path / "report", resamples=10,
                        test_sets=["nih-cxr-lt"]).read_text()
    section = text.split("## The DQC circuit (paper Fig. 2)")[1].split("\n## ")[0]
    layers = doc["rows"][0]["layers"]
    assert f"(figures/circuit_8q_{layers}l.png)" in section
    assert (tmp_path / "report" / "figures" / f"circuit_8q_{layers}l.png").stat().st_size > 0
    assert "`exports/dqc8`: export of cxr-8/dqc seed 1, 8 qubits" in section and "(passed)" in section
    for row in doc["rows"]:
        assert (f"| 8 | {layers} | {row['layout']} | {row['device']} | {row['two_qubit_gates']} "
                f"| {row['added_two_qubit_gates']} | {row['depth']} |") in section
