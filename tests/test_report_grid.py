"""`analysis report` of a hyper-parameter grid (selection on validation data only) and of `heads shots` results.

The grid is trained for real by one small grid sweep (`tests/griddata.py`: `heads sweep --lr
0.01,0.03 --layers 1,2`); `heads shots` runs for real on its DQCs. Every number is checked against a recomputation from the run files
(scikit-learn AUROC, scipy `ttest_rel`, the JSON files themselves).
"""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from griddata import make_grid
from headsdata import SMALL, make_stores
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from analysis.cli import app
from analysis.collect import load_sweep
from analysis.grid import select
from analysis.report import build_report
from cxrfeat.errors import UserError
from heads.cli import app as heads_app

TEST_SETS = ("nih-cxr-lt", "mimic-cxr-lt")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """CDL over lr {0.01, 0.03}, DQC over lr {0.01, 0.03} x layers {1, 2}; CXR-8, 2 seeds, 2 epochs.

    `heads shots` measures the selected DQC configuration (as one would after selection).
    """
    root = tmp_path_factory.mktemp("grid")
    features = make_stores(root / "features", **SMALL)  # tests/test_grid.py's grid: the same compiled programs
    sweep = make_grid(root, features)
    config = sweep / "cxr-8" / "dqc" / _reference_selection(sweep)["dqc"]
    r = CliRunner().invoke(heads_app, ["shots", str(config), "--shots", "10,1000", "--repeats", "2", "--seed", "3",
                                       "--features", str(features)])
    assert r.exit_code == 0, r.output
    return root, features, sweep


@pytest.fixture(scope="module")
def built(grid):
    root, features, sweep = grid
    out = root / "reports" / "grid"
    build_report(runs=sweep, features=features, out=out, resamples=20)
    return root, sweep, out


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _metrics(d: Path) -> dict:
    return json.loads((d / "metrics.json").read_text())


def _mean_val(sweep: Path, model: str, config: str, key: str) -> float:
    return float(np.mean([_metrics(d)["validation"][key] for d in sorted((sweep / "cxr-8" / model / config).glob("seed-*"))]))


def _reference_selection(sweep: Path, key: str = "loss") -> dict[str, str]:
    """model -> the configuration folder with the best mean validation `key`, from the JSON files alone."""
    out = {}
    for model_dir in sorted((sweep / "cxr-8").iterdir()):
        means = {c.name: _mean_val(sweep, model_dir.name, c.name, key) for c in model_dir.iterdir()}
        out[model_dir.name] = (min if key == "loss" else max)(sorted(means), key=means.get)
    return out


def _mean_test_auroc(run: Path, test_set: str) -> float:
    with np.load(run / "predictions" / f"{test_set}.npz") as z:
        y, p = z["y_true"], z["y_prob"]
    values = []
    for j in range(y.shape[1]):
        known = y[:, j] >= 0
        if len(set(y[known, j])) == 2:
            values.append(roc_auc_score(y[known, j], p[known, j]))
    return float(np.mean(values))


def test_both_layouts_are_read(grid, tmp_path):
    _, _, sweep = grid
    s = load_sweep(sweep)
    assert s.is_grid and len(s.runs) == 12
    assert s.configs("cxr-8", "cdl") == ["lr-0.01", "lr-0.03"]
    assert s.configs("cxr-8", "dqc") == ["lr-0.01_layers-1", "lr-0.01_layers-2", "lr-0.03_layers-1", "lr-0.03_layers-2"]
    run = s.runs_of("cxr-8", "dqc", "lr-0.03_layers-1")[2]
    assert run.point == {"lr": 0.03, "layers": 1} and run.seed == 2
    # Without config.json `grid.point`, the point is what the model's configurations differ in.
    copy = tmp_path / "grid"
    shutil.copytree(sweep / "cxr-8" / "dqc", copy / "cxr-8" / "dqc")
    for cfg in copy.glob("cxr-8/dqc/*/seed-*/config.json"):
        c = json.loads(cfg.read_text())
        del c["grid"]["point"]
        cfg.write_text(json.dumps(c))
    bare = load_sweep(copy)
    assert bare.runs_of("cxr-8", "dqc", "lr-0.03_layers-1")[2].point == {"lr": 0.03, "layers": 1}
    # The plain layout is no grid.
    plain = tmp_path / "plain"
    shutil.copytree(sweep / "cxr-8" / "cdl" / "lr-0.01", plain / "cxr-8" / "cdl")
    p = load_sweep(plain)
    assert not p.is_grid and p.configs("cxr-8", "cdl") == [""] and sorted(p.runs_of("cxr-8", "cdl")) == [1, 2]
    # The folder above a sweep is no grid whose tasks are sweeps: refused, naming the sweep inside.
    with pytest.raises(UserError, match="not a runs folder.*pass --runs"):
        load_sweep(sweep.parent)


def test_selection_is_the_best_mean_validation_number(grid):
    _, _, sweep = grid
    s = load_sweep(sweep)
    by_loss = select(s, "val-loss")
    assert by_loss == {("cxr-8", m): c for m, c in _reference_selection(sweep, "loss").items()}
    by_auroc = select(s, "val-auroc")
    assert by_auroc == {("cxr-8", m): c for m, c in _reference_selection(sweep, "mean_auroc").items()}
    # metrics.json validation AUROC is that of the saved parameters on the validation store: a real number.
    assert all(0 < _mean_val(sweep, "dqc", c, "mean_auroc") < 1 for c in s.configs("cxr-8", "dqc"))


def test_report_of_the_selected_configurations_equals_recomputation(built):
    _, sweep, out = built
    chosen = _reference_selection(sweep)
    sel = {r["model"]: r for r in _csv(out / "tables" / "grid_selection.csv")}
    assert {m: r["selected"] for m, r in sel.items()} == chosen
    for r in _csv(out / "tables" / "comparisons.csv"):
        a = {s: _mean_test_auroc(sweep / "cxr-8" / "cdl" / chosen["cdl"] / f"seed-{s}", r["test_set"]) for s in (1, 2)}
        b = {s: _mean_test_auroc(sweep / "cxr-8" / "dqc" / chosen["dqc"] / f"seed-{s}", r["test_set"]) for s in (1, 2)}
        assert float(r["mean_a"]) == pytest.approx(np.mean(list(a.values())), abs=1e-9)
        assert float(r["mean_b"]) == pytest.approx(np.mean(list(b.values())), abs=1e-9)
        assert float(r["p"]) == pytest.approx(ttest_rel([a[1], a[2]], [b[1], b[2]]).pvalue, rel=1e-9)
        assert float(sel["dqc"][f"test_auroc_mean_{r['test_set']}"]) == pytest.approx(np.mean(list(b.values())))
    # Every configuration's validation and test numbers in the grid table.
    rows = _csv(out / "tables" / "grid.csv")
    assert len(rows) == 6 and sum(r["selected"] == "True" for r in rows) == 2
    for r in rows:
        d = sweep / "cxr-8" / r["model"] / r["configuration"]
        assert float(r["val_loss_mean"]) == pytest.approx(_mean_val(sweep, r["model"], r["configuration"], "loss"))
        assert float(r["test_auroc_mean_nih-cxr-lt"]) == pytest.approx(
            np.mean([_mean_test_auroc(d / f"seed-{s}", "nih-cxr-lt") for s in (1, 2)]))
    tex = (out / "tables" / "grid.tex").read_text()
    assert tex.count("\\\\") - 1 == len(rows)  # header + one line per CSV row
    md = (out / "report.md").read_text()
    assert "## Hyper-parameter grid and model selection" in md and "figures/grid_cxr-8.png" in md
    assert (out / "figures" / "grid_cxr-8.png").read_bytes()[:4] == b"\x89PNG"
    # The later sections are the selected configurations' own, with their settings beside each row.
    means = _csv(out / "tables" / "mean_auroc.csv")
    assert len(means) == 4 and all(r["n_seeds"] == "2" for r in means)


def test_corrupted_test_predictions_do_not_change_the_selection(grid, tmp_path):
    """Every configuration but the selected one gets perfect test predictions: a test-leaking choice would move."""
    _, features, sweep = grid
    copy = tmp_path / "grid"
    shutil.copytree(sweep, copy)
    before = {by: select(load_sweep(copy), by) for by in ("val-loss", "val-auroc")}
    keep = before["val-loss"]
    for npz in copy.glob("cxr-8/*/*/seed-*/predictions/*.npz"):
        model, config = npz.parents[2].parent.name, npz.parents[2].name
        if keep[("cxr-8", model)] == config:
            continue
        with np.load(npz) as z:
            arrays = dict(z)
        arrays["y_prob"] = np.clip(arrays["y_true"], 0, 1).astype(np.float32)  # AUROC 1 on every test set
        np.savez(npz, **arrays)
    after = load_sweep(copy)
    assert {by: select(after, by) for by in before} == before
    # The corruption is real: the other configurations now look perfect on test.
    other = next(c for c in after.configs("cxr-8", "dqc") if c != keep[("cxr-8", "dqc")])
    assert after.select({("cxr-8", "dqc"): other}).mean_aurocs("cxr-8", "dqc", "nih-cxr-lt") == {1: 1.0, 2: 1.0}
    out = build_report(runs=copy, features=features, out=tmp_path / "report", resamples=5)
    sel = {r["model"]: r["selected"] for r in _csv(out.parent / "tables" / "grid_selection.csv")}
    assert sel == {m: c for (_, m), c in keep.items()}


def test_select_option(grid, tmp_path):
    _, features, sweep = grid
    r = CliRunner().invoke(app, ["report", "--runs", str(sweep), "--select", "val-aucroc"])
    assert r.exit_code != 0 and "val-auroc" in r.output  # the parser lists the valid values
    help_text = CliRunner().invoke(app, ["report", "--help"]).output
    assert "--select" in help_text and "validation" in help_text
    # Without validation AUROCs, --select val-auroc is refused with a one-line reason; val-loss falls back.
    copy = tmp_path / "grid"
    shutil.copytree(sweep / "cxr-8" / "cdl", copy / "cxr-8" / "cdl")
    for m in copy.glob("cxr-8/cdl/*/seed-*/metrics.json"):
        doc = json.loads(m.read_text())
        del doc["validation"]
        m.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"--select val-auroc needs .*--select val-loss"):
        select(load_sweep(copy), "val-auroc")
    assert select(load_sweep(copy), "val-loss") == {("cxr-8", "cdl"): _reference_selection(sweep)["cdl"]}
    r = CliRunner().invoke(app, ["report", "--runs", str(copy), "--select", "val-auroc", "--out", str(tmp_path / "r")])
    assert r.exit_code != 0 and "cxr-8/cdl: no configuration" in r.output and "Traceback" not in r.output


def test_grid_report_of_the_selection_equals_the_plain_report(built, tmp_path):
    """The selected configurations laid out as a plain sweep give the same AUROC tables, without a grid section."""
    root, sweep, out = built
    chosen = _reference_selection(sweep)
    plain = tmp_path / "runs" / "grid"
    for model, config in chosen.items():
        shutil.copytree(sweep / "cxr-8" / model / config, plain / "cxr-8" / model)
    shutil.copy(sweep / "sweep.json", plain / "sweep.json")
    p = build_report(runs=plain, features=root / "features", out=tmp_path / "plain", resamples=20)
    md = p.read_text()
    assert "Hyper-parameter grid" not in md and "## Measurement shots and effective width" in md
    for name in ("comparisons", "per_label", "per_seed_auroc", "convergence", "mean_auroc", "long_tail"):
        a, b = _csv(out / "tables" / f"{name}.csv"), _csv(p.parent / "tables" / f"{name}.csv")
        drop = {"settings"}
        assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
            [{k: v for k, v in r.items() if k not in drop} for r in b], name


def test_shots_and_width_in_the_report(built, grid):
    _, sweep, out = built
    md = (out / "report.md").read_text()
    assert "## Measurement shots and effective width" in md
    assert "figures/shots.png" in md and "figures/width.png" in md
    rows = _csv(out / "tables" / "shots.csv")
    assert len(rows) == 2 * 2  # the selected DQC configuration: test sets x shot counts
    chosen = _reference_selection(sweep)["dqc"]
    for r in rows:
        docs = [json.loads((d / "shots.json").read_text())["test_sets"][r["test_set"]]
                for d in sorted((sweep / "cxr-8" / "dqc" / r["configuration"]).glob("seed-*"))]
        cell = [next(c for c in e["shots"] if c["shots"] == int(r["shots"])) for e in docs]
        assert float(r["auroc_mean"]) == pytest.approx(np.mean([v for c in cell for v in c["auroc"]]))
        assert int(r["draws"]) == 4 and int(r["seeds"]) == 2
        exact = [_metrics(d)["test_sets"][r["test_set"]]["mean_auroc"]
                 for d in sorted((sweep / "cxr-8" / "dqc" / r["configuration"]).glob("seed-*"))]
        assert float(r["exact_auroc"]) == pytest.approx(np.mean(exact), abs=1e-6)
        assert r["selected"] == "True" and r["configuration"] == chosen
    widths = _csv(out / "tables" / "width.csv")
    assert len(widths) == 2
    for r in widths:
        docs = [json.loads((d / "width.json").read_text())["test_sets"][r["test_set"]]
                for d in sorted((sweep / "cxr-8" / "dqc" / r["configuration"]).glob("seed-*"))]
        sd = np.mean([d["sd"] for d in docs], axis=0)
        assert [float(v) for v in r["sd_per_qubit"].split(";")] == pytest.approx(sd.tolist())
        thr = float(r["threshold"])
        assert float(r["above_mean"]) == pytest.approx(np.mean([sum(v > thr for v in d["sd"]) for d in docs]))
        assert math.isclose(thr, 1e-2)
    for name in ("shots", "width"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_heatmap_axes_and_fixed_settings():
    """layers x lr when both vary; else the two settings with the most values; the rest held at the selection."""
    from analysis.grid import ConfigStat, heatmap_axes, sort_values
    from analysis.report_grid import heatmap_rows

    def stat(model, point, loss):
        name = "_".join(f"{k}-{v}" for k, v in point.items())
        return ConfigStat("cxr-8", model, name, point, {1: loss, 2: loss}, {1: 0.6, 2: 0.6},
                          {"nih-cxr-lt": {1: 0.7, 2: 0.7}})

    dqc = [stat("dqc", {"lr": lr, "layers": layers, "circuit_init": init}, loss=lr * layers + (init == "normal"))
           for lr in (3e-3, 1e-4, 1e-3) for layers in (5, 1, 3) for init in ("uniform", "normal")]
    assert heatmap_axes(dqc) == ("layers", "lr")
    no_layers = [c for c in dqc if c.point["layers"] == 1]
    assert heatmap_axes(no_layers) == ("circuit_init", "lr")  # lr has 3 values, circuit init 2
    assert heatmap_axes([c for c in no_layers if c.point["circuit_init"] == "normal"]) == (None, "lr")
    assert sort_values([3e-3, 1e-4, 1e-3, 1e-4]) == [1e-4, 1e-3, 3e-3]
    cdl = [stat("cdl", {"lr": lr}, loss=lr) for lr in (3e-3, 1e-4)]
    chosen = {("cxr-8", "dqc"): "lr-0.0001_layers-1_circuit_init-uniform", ("cxr-8", "cdl"): "lr-0.0001"}
    rows, notes = heatmap_rows(dqc + cdl, chosen, "val-loss", "cxr-8", ["nih-cxr-lt"])
    panel = rows[0][0]
    assert panel["row_values"] == [1, 3, 5] and panel["col_values"] == [1e-4, 1e-3, 3e-3]
    assert panel["selected"] == (0, 0) and "selection" in panel["label"]
    # circuit init is held at the selected value: every cell is the uniform configuration's loss.
    expected = np.array([[lr * layers for lr in (1e-4, 1e-3, 3e-3)] for layers in (1, 3, 5)])
    np.testing.assert_allclose(panel["values"], expected)
    assert notes == ["DQC: circuit init uniform (the selected values)"]
    assert rows[1][0]["row_key"] is None and rows[1][0]["values"].shape == (1, 2)
