"""The report's circuit section: the drawing is the exported circuit gate for gate, one drawing per
width and depth, the routing table of the exports it finds or is given, and the noise figure's legend."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from reportdata import fabricate_runs

from analysis import circuit as C
from analysis import figures as F
from analysis.report import build_report
from cxrfeat.errors import UserError
from cxrfeat.labels import TASKS


@pytest.fixture
def figs(monkeypatch):
    """Every figure a test draws, kept open and not written (its artists are what is checked)."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        return Path(path)

    monkeypatch.setattr(F, "save", keep)
    yield kept
    for fig in kept:
        F.plt.close(fig)


def _drawn_gates(fig) -> list[tuple[float, str, tuple[int, ...], str | None, int]]:
    """(x in inches, name, qubits, parameter, step) of every gate artist the figure holds (gid `gate:...`)."""
    out = []
    for artist in [*fig.axes[0].patches, *fig.axes[0].lines]:
        gid = artist.get_gid() or ""
        if not gid.startswith("gate:"):
            continue
        _, step, name, qubits, param = gid.split(":")
        if hasattr(artist, "get_xdata"):  # a CNOT's vertical line
            x = float(artist.get_xdata()[0])
        else:
            x = artist.get_x() + artist.get_width() / 2
        out.append((x, name, tuple(int(q) for q in qubits.split(",")), param or None, int(step)))
    return out


def _per_wire(ops) -> dict[int, list[tuple]]:
    """Each qubit's gates in time order: two circuits with the same per-wire sequences are the same circuit."""
    wires = defaultdict(list)
    for name, qubits, param in ops:
        for q in qubits:
            wires[q].append((name, qubits, param))
    return dict(wires)


def _qiskit_ops(n: int, layers: int) -> list[tuple]:
    pytest.importorskip("qiskit")
    from heads.export import to_qiskit

    qc = to_qiskit(None, n=n, layers=layers)
    ops = []
    for inst in qc.data:
        qubits = tuple(qc.find_bit(q).index for q in inst.qubits)
        params = [p.name for p in inst.operation.params if hasattr(p, "name")]
        ops.append((inst.operation.name, qubits, params[0] if params else None))
    return ops


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("n", [2, 3, 8])
def test_the_drawn_circuit_is_the_exported_qiskit_circuit(figs, tmp_path, n, layers):
    labels = list(TASKS[8])[:n]
    C.circuit_figure(labels, layers, tmp_path / "c.png")
    drawn = sorted(_drawn_gates(figs[-1]), key=lambda g: (g[0], g[2]))
    expected = _qiskit_ops(n, layers)
    assert len(drawn) == len(expected) == n * (3 + layers) + layers * (1 if n == 2 else n)
    # the same gates, parameters included, in the same order on every wire: the same circuit
    assert _per_wire([g[1:4] for g in drawn]) == _per_wire(expected)
    # the data structure drawn is that circuit too, each step on distinct qubits, drawn left to right
    steps = C.columns(n, layers)
    assert _per_wire([(g.name, g.qubits, g.param) for s in steps for g in s]) == _per_wire(expected)
    step_x = [{x for x, *gate, step in drawn if step == i} for i in range(len(steps))]
    assert [sorted(g[1:4] for g in drawn if g[4] == i) for i in range(len(steps))] == [
        sorted((g.name, g.qubits, g.param) for g in s) for s in steps]
    assert all(len(s) == 1 for s in step_x)  # a step's gates are drawn in one column
    assert all(len({q for g in step for q in g.qubits}) == sum(len(g.qubits) for g in step) for step in steps)
    assert [next(iter(s)) for s in step_x] == sorted(next(iter(s)) for s in step_x)
    # post-layer outputs named in the task's label order
    texts = {t.get_gid(): t.get_text() for t in figs[-1].axes[0].texts if (t.get_gid() or "").startswith("label:")}
    assert [texts[f"label:{j}"] for j in range(n)] == labels


def test_symbols_are_the_export_names():
    assert C.symbol("angle_07") == r"$R_Y(\alpha_{7})$"
    assert C.symbol("theta_2_18") == r"$R_Y(\theta_{2,18})$"
    with pytest.raises(ValueError):
        C.symbol("phi_1")
    with pytest.raises(ValueError):
        C.columns(1, 3)


def _export_folder(folder: Path, run_dir: Path, layouts=("all-to-all", "line")) -> dict:
    """An export folder as `heads export` leaves it, for a fabricated run (whose weights are not real):
    the manifest's keys the report reads, and the routing table of the run's width."""
    from heads import routing
    from heads.record import RunConfig

    config = json.loads((run_dir / "config.json").read_text())
    n = len(config["labels"])
    folder.mkdir(parents=True)
    doc = routing.widths_doc([n], 3, list(layouts))
    (folder / "routing.json").write_text(json.dumps(doc))
    manifest = {"format": 1, "kind": "heads export",
                "run": {"path": str(run_dir.resolve()), "config": RunConfig.from_json(config).to_json()},
                "labels": config["labels"], "circuit": {"qubits": n, "layers": 3}, "images": {"count": 4},
                "check": {"simulator": "Qiskit Statevector (qiskit.qasm3.loads)", "images": 4, "worst": 3e-8,
                          "tolerance": 1e-5, "passed": True}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return doc


def _section(text: str) -> str:
    return text.split("## The DQC circuit (paper Fig. 2)")[1].split("\n## ")[0]


def test_the_report_draws_each_width_and_depth_once_and_finds_the_sweeps_exports(tmp_path, monkeypatch):
    pytest.importorskip("qiskit")
    monkeypatch.chdir(tmp_path)
    sweep = fabricate_runs(tmp_path, task=8, seeds=(1, 2))
    other = fabricate_runs(tmp_path / "elsewhere", name="other", task=14, seeds=(1,))
    doc = _export_folder(tmp_path / "exports" / "mine", sweep / "cxr-8" / "dqc" / "seed-1")
    _export_folder(tmp_path / "exports" / "theirs", other / "cxr-14" / "dqc" / "seed-1")
    (tmp_path / "exports" / "broken").mkdir()
    (tmp_path / "exports" / "broken" / "manifest.json").write_text("{not json")

    text = build_report(runs=sweep, out=tmp_path / "report", resamples=10, test_sets=["nih-cxr-lt"]).read_text()
    section = _section(text)
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").glob("circuit_*.png"))
    assert figures == ["circuit_8q_3l.png"]  # two seeds, one width and depth: one drawing
    assert "![DQC circuit of CXR-8: 8 qubits, 3 layers (paper Fig. 2)](figures/circuit_8q_3l.png)" in section
    rows = [line for line in section.splitlines() if line.startswith("| 8 | 3 |")]
    by_layout = {r["layout"]: r for r in doc["rows"]}
    assert len(rows) == 2
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        r = by_layout[cells[2]]
        assert cells[4:8] == [str(r["two_qubit_gates"]), str(r["added_two_qubit_gates"]), str(r["depth"]),
                              str(r["two_qubit_depth"])]
        assert "export of cxr-8/dqc seed 1 (`exports/mine`)" in cells[-1]
    assert by_layout["all-to-all"]["two_qubit_gates"] == 24 and by_layout["line"]["added_two_qubit_gates"] > 0
    assert "optimization level 1" in section
    assert "holds 1 export(s) of runs this report does not show" in section
    assert "Left out: exports/broken/manifest.json: unreadable" in section
    assert "| 14 |" not in section
    csv = (tmp_path / "report" / "tables" / "routing.csv").read_text().splitlines()
    assert csv[0].startswith("qubits,layers,layout,device,two_qubit_gates") and len(csv) == 3
    assert str(tmp_path) not in text  # no absolute path

    # named: a `heads routing --out` folder and another run's export, each shown as given
    shutil.rmtree(tmp_path / "exports" / "broken")
    (tmp_path / "bench-routing").mkdir()
    from heads import routing

    (tmp_path / "bench-routing" / "routing.json").write_text(json.dumps(routing.widths_doc([19], 3, ["grid"])))
    text = build_report(runs=sweep, out=tmp_path / "report", resamples=10, test_sets=["nih-cxr-lt"],
                        routing=[tmp_path / "bench-routing", tmp_path / "exports" / "theirs"]).read_text()
    section = _section(text)
    assert "| 19 | 3 | grid |" in section and "`heads routing` (`bench-routing/routing.json`)" in section
    assert "| 14 | 3 | all-to-all |" in section and "export of a run this report does not show (cxr-14)" in section
    assert "| 8 | 3 |" not in section


def test_routing_paths_that_hold_no_routing_table_are_refused_in_one_line(tmp_path):
    sweep = fabricate_runs(tmp_path, task=8, seeds=(1,))
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text(json.dumps({"rows": "no"}))
    for given, message in ((tmp_path / "missing", "--routing .*missing: no such file or folder"),
                           (tmp_path / "empty", "--routing .*empty: holds no routing.json"),
                           (tmp_path / "bad.json", "bad.json: not a routing table")):
        with pytest.raises(UserError, match=message) as e:
            build_report(runs=sweep, out=tmp_path / "report", resamples=10, routing=[given])
        assert "\n" not in str(e.value)
    assert not (tmp_path / "report").exists()


def test_a_report_without_dqc_or_routing_has_no_circuit_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = fabricate_runs(tmp_path, task=8, models=("cdl",), seeds=(1,))
    text = build_report(runs=sweep, out=tmp_path / "report", resamples=10, test_sets=["nih-cxr-lt"]).read_text()
    assert "## The DQC circuit" not in text


def test_the_noise_legend_names_lines_drawn_only_in_a_later_panel(figs, tmp_path):
    from analysis.noise import noise_figure

    def row(task, test_set, trained="ideal"):
        return {"task": task, "configuration": "", "model": "m", "test_set": test_set, "scale": 1.0,
                "auroc_mean": 0.7, "auroc_sd": 0.01, "exact_auroc": 0.72, "cdl_auroc": 0.75, "trained": trained}

    rows = [row("cxr-8", "nih-cxr-lt"), row("cxr-8", "mimic-cxr-lt"), row("cxr-14", "mimic-cxr-lt"),
            row("cxr-8", "mimic-cxr-lt", trained="m ×2, 2 traj.") | {"configuration": "noisy"}]
    noise_figure(rows, tmp_path / "n.png")
    legend = figs[-1].legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    # the first panel draws only CXR-8 ideal; the legend names every line, in the lines' order
    # ... then the two horizontal references, each in a style no trained line uses (dashed: noise-trained)
    assert labels == ["CXR-8, trained ideal", "CXR-14, trained ideal", "CXR-8, trained m ×2, 2 traj.",
                      "noiseless circuit (scale 0), ideal-trained DQC", "CDL"]
    styles = [str(h.get_linestyle()) for h in legend.legend_handles]
    assert len(set(styles[-2:])) == 2 and not set(styles[-2:]) & set(styles[:-2])
