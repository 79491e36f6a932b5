"""The report's trust: provenance banners from the runs, sanity flags instead of stars, CIs, AUPRC,
corrected p-values, .tex = .csv, Table III by machine, no absolute paths; one test trains for real."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from reportdata import fabricate_runs
from scipy.stats import false_discovery_control
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from analysis import figures
from analysis.bench import this_machine
from analysis.cli import app
from analysis.features import SYNTHETIC_SENTENCE

# Bootstrap resamples of every report here. The CI check recomputes each with scikit-learn (resamples x labels
# x seeds AUROCs), so the count is kept small: the equality it checks does not depend on it.
RESAMPLES = 50


def _report(runs: Path, out: Path, *extra) -> str:
    res = CliRunner().invoke(app, ["report", "--runs", str(runs), "--out", str(out), "--resamples", str(RESAMPLES),
                                   *map(str, extra)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return (out / "report.md").read_text()


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory):
    """A random-backbone, synthetic sweep whose DQC predicts a constant in 2 of 3 seeds (seed 3: only recorded)."""
    root = tmp_path_factory.mktemp("trust")
    sweep = fabricate_runs(root, constant={("dqc", 1): True, ("dqc", 2): True},
                           extra_flags={("dqc", 3): ["saturated_inputs"]})
    out = root / "reports" / "fab"
    marks: list[tuple] = []
    original = figures.stamp

    def spy(fig, m):
        marks.append(tuple(m))
        original(fig, m)

    figures.stamp = spy
    try:
        md = _report(sweep, out)
    finally:
        figures.stamp = original
    return root, sweep, out, md, marks


def test_flagged_dqc_row_shows_flag_not_stars(degenerate):
    _, _, out, md, _ = degenerate
    comps = _csv(out / "tables" / "comparisons.csv")
    assert len(comps) == 2
    for r in comps:
        assert r["stars"] == "⚠ flagged"
        assert r["p"] != "" and 0 <= float(r["p"]) <= 1  # the p-value is kept...
        assert "constant predictions in 2/3 seeds" in r["flag"] and "saturated circuit inputs in 1/3 seeds" in r["flag"]
    assert not re.search(r"\| cdl vs dqc \|.*\| \*+ \|", md)  # ...but no stars next to it
    means = {(r["test_set"], r["model"]): r for r in _csv(out / "tables" / "mean_auroc.csv")}
    assert means[("nih-cxr-lt", "cdl")]["sanity"] == ""
    assert means[("nih-cxr-lt", "dqc")]["sanity"].startswith("⚠ constant predictions in 2/3 seeds")
    assert "failed a sanity check" in md and "## Sanity checks" in md
    per_label = _csv(out / "tables" / "per_label.csv")
    assert per_label and all(r["stars"] == "⚠ flagged" for r in per_label)
    assert "⚠ constant predictions in 2/3 seeds" in md
    seeds = _csv(out / "tables" / "per_seed_auroc.csv")
    flagged = {(r["model"], r["seed"]) for r in seeds if "constant_predictions" in r["flags"]}
    assert flagged == {("dqc", "1"), ("dqc", "2")}


def test_constant_predictions_found_without_recorded_sanity(tmp_path):
    """Runs written before the `sanity` key: the report finds the constant head from its predictions."""
    sweep = fabricate_runs(tmp_path, constant={("dqc", 1): True}, record_sanity=False)
    out = tmp_path / "reports" / "fab"
    _report(sweep, out)
    comps = _csv(out / "tables" / "comparisons.csv")
    assert all(r["stars"] == "⚠ flagged" and "constant predictions in 1/3 seeds" in r["flag"] for r in comps)


def test_random_and_synthetic_banners_and_figure_marks(degenerate):
    _, _, out, md, marks = degenerate
    assert "RANDOM WEIGHTS" in md and "[!CAUTION]" in md.split("## Provenance")[0]
    assert SYNTHETIC_SENTENCE in md
    assert "**RANDOM weights (seed 0)**" in md
    t2 = _csv(out / "tables" / "table2_params.csv")
    assert all(r["backbone_weights"] == "RANDOM weights (seed 0)" for r in t2)
    assert "backbone parameters were RANDOM" in md
    figs = sorted((out / "figures").glob("*.png"))
    assert len(marks) == len(figs) > 0
    assert all(m == ("SYNTHETIC DATA", "RANDOM-WEIGHT BACKBONE") for m in marks)


def test_provenance_survives_copying_runs(degenerate, tmp_path, monkeypatch):
    """A copy of runs/ elsewhere, with no feature store anywhere: the same banners, settings and marks."""
    _, sweep, _, _, _ = degenerate
    copy = tmp_path / "elsewhere" / "fab"
    shutil.copytree(sweep, copy)
    monkeypatch.chdir(tmp_path)
    md = _report(copy, tmp_path / "r")
    assert "RANDOM WEIGHTS" in md and SYNTHETIC_SENTENCE in md
    assert "from config.json `data`" in md and "from config.json `backbone`" in md
    assert "| cxr-8 | dqc | 3/3 | nih-cxr-lt 60, mimic-cxr-lt 60 |" in md
    assert "standardize" in md and "0.003" in md  # the settings of the runs


def test_pretrained_real_data_has_no_banner(tmp_path):
    sweep = fabricate_runs(tmp_path, random_backbone=False, synthetic=False)
    md = _report(sweep, tmp_path / "r")
    assert "RANDOM WEIGHTS" not in md and "SYNTHETIC" not in md and "[!CAUTION]" not in md
    assert "pretrained `microsoft/resnet-50` revision `abc123def456`" in md
    assert "Every row passed every check." in md
    comps = _csv(tmp_path / "r" / "tables" / "comparisons.csv")
    assert all(r["stars"] in ("*", "**", "***", "ns") for r in comps)


def test_settings_column_when_rows_differ(tmp_path):
    """A smoke fine-tune row (1 seed, --limit 16) beside a full sweep cannot pass for a full one."""
    sweep = fabricate_runs(tmp_path)
    d = sweep / "cxr-8" / "dqc-finetune" / "seed-1"
    shutil.copytree(sweep / "cxr-8" / "dqc" / "seed-1", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"] = "dqc-finetune"
    cfg["settings"].update(mode="finetune", limit=16, seeds=1)
    cfg["data"]["limit"] = 16
    (d / "config.json").write_text(json.dumps(cfg))
    metrics = json.loads((d / "metrics.json").read_text())
    metrics["model"] = "dqc-finetune"
    (d / "metrics.json").write_text(json.dumps(metrics))
    md = _report(sweep, tmp_path / "r")
    means = {(r["test_set"], r["model"]): r for r in _csv(tmp_path / "r" / "tables" / "mean_auroc.csv")}
    ft = means[("nih-cxr-lt", "dqc-finetune")]
    assert ft["n_seeds"] == "1" and ft["test_images"] == "60"
    assert "mode finetune" in ft["settings"] and "limit 16" in ft["settings"]
    assert "mode features" in means[("nih-cxr-lt", "cdl")]["settings"]
    assert "**--limit 16**" in md


# ----------------------------------------------------------------------------- statistics
def _reference_ci(runs: list[Path], test_set: str, resamples: int, seed: int = 0) -> tuple[float, float]:
    """The documented bootstrap, computed naively with scikit-learn on explicitly resampled arrays."""
    zs = [np.load(r / "predictions" / f"{test_set}.npz") for r in runs]
    y = zs[0]["y_true"]
    total = np.zeros((len(zs), resamples))
    used = 0
    for j in range(y.shape[1]):
        pos, neg = np.flatnonzero(y[:, j] == 1), np.flatnonzero(y[:, j] == 0)
        if not pos.size or not neg.size:
            continue
        used += 1
        rng = np.random.default_rng((seed, j))
        ip, ineg = rng.integers(0, pos.size, (resamples, pos.size)), rng.integers(0, neg.size, (resamples, neg.size))
        t = np.r_[np.ones(pos.size), np.zeros(neg.size)]
        for k, z in enumerate(zs):
            p = z["y_prob"][:, j].astype(np.float64)
            for b in range(resamples):
                total[k, b] += roc_auc_score(t, np.r_[p[pos[ip[b]]], p[neg[ineg[b]]]])
    dist = (total / used).mean(axis=0)
    lo, hi = np.percentile(dist, [2.5, 97.5])
    return float(lo), float(hi)


def test_ci_and_auprc_equal_independent_computation(degenerate):
    _, sweep, out, md, _ = degenerate
    means = {(r["test_set"], r["model"]): r for r in _csv(out / "tables" / "mean_auroc.csv")}
    runs = sorted((sweep / "cxr-8" / "cdl").glob("seed-*"))
    row = means[("mimic-cxr-lt", "cdl")]
    lo, hi = _reference_ci(runs, "mimic-cxr-lt", RESAMPLES)
    assert float(row["ci_low"]) == pytest.approx(lo, abs=1e-12) and float(row["ci_high"]) == pytest.approx(hi, abs=1e-12)
    assert float(row["ci_low"]) < float(row["mean"]) < float(row["ci_high"])
    assert row["ci_resamples"] == str(RESAMPLES) and f"{RESAMPLES} resamples" in md
    # AUPRC: sklearn average precision per label over known rows, mean over labels, then over seeds.
    per_seed = []
    for r in runs:
        z = np.load(r / "predictions" / "mimic-cxr-lt.npz")
        vals = []
        for j in range(z["y_true"].shape[1]):
            known = z["y_true"][:, j] >= 0
            vals.append(average_precision_score(z["y_true"][known, j], z["y_prob"][known, j]))
        per_seed.append(np.mean(vals))
    assert float(row["auprc_mean"]) == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert float(row["auprc_sd"]) == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)


def _holm_by_hand(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, (m - k) * p[i])
        out[i] = min(1.0, running)
    return out


def test_corrected_pvalues_and_positives_per_label(tmp_path):
    sweep = fabricate_runs(tmp_path, random_backbone=False, synthetic=False)
    out = tmp_path / "r"
    _report(sweep, out)
    for ts in ("nih-cxr-lt", "mimic-cxr-lt"):
        rows = _csv(out / "tables" / f"per_label_cxr-8_{ts}.csv")
        p = [float(r["p"]) for r in rows]
        assert [float(r["p_bh"]) for r in rows] == pytest.approx(list(false_discovery_control(p, method="bh")),
                                                                 abs=1e-12)
        assert [float(r["p_holm"]) for r in rows] == pytest.approx(_holm_by_hand(p), abs=1e-12)
        z = np.load(sweep / "cxr-8" / "cdl" / "seed-1" / "predictions" / f"{ts}.npz")
        labels = [str(x) for x in z["label_names"]]
        for r in rows:
            j = labels.index(r["label"])
            assert int(r["test_positives"]) == int((z["y_true"][:, j] == 1).sum())
            assert int(r["test_known"]) == int((z["y_true"][:, j] >= 0).sum())
    md = (out / "report.md").read_text()
    assert "p Holm" in md and "p BH" in md and "Benjamini–Hochberg" in md


# ----------------------------------------------------------------------------- tables, paths, bench
def _tex_rows(path: Path) -> list[list[str]]:
    body = path.read_text().split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [line.removesuffix(" \\\\").split(" & ") for line in body.strip().splitlines() if line.strip()]


def test_tex_holds_the_csv_rows(degenerate):
    _, _, out, _, _ = degenerate
    csvs = sorted((out / "tables").glob("*.csv"))
    assert {p.stem for p in csvs} >= {"per_seed_auroc", "per_label", "mean_auroc", "comparisons", "long_tail"}
    for path in csvs:
        rows = _csv(path)
        tex = _tex_rows(path.with_suffix(".tex"))
        assert len(tex) == len(rows) > 0, path.name
        for t, r in zip(tex, rows, strict=True):  # same order: each LaTeX row's first cell is one of its CSV row's
            cell = t[0].replace("\\_", "_").replace("\\%", "%")
            assert cell in r.values(), (path.name, cell, r)
    per_seed = _tex_rows(out / "tables" / "per_seed_auroc.tex")
    assert len(per_seed) == 2 * 3 * 2 * 9  # models × seeds × test sets × (8 labels + mean)


def test_no_absolute_paths_anywhere(degenerate):
    root, _, out, md, _ = degenerate
    for path in [out / "report.md", *(out / "tables").iterdir()]:
        text = path.read_text()
        assert str(root) not in text, path.name
        assert not re.search(r"(?<![\w.~])/(tmp|home|work|root|Users)/", text), path.name
    assert "</summary>" in md and "</details>" in md and "…/" not in md  # HTML and relative paths untouched


def test_table3_only_this_machines_records(tmp_path, monkeypatch):
    sweep = fabricate_runs(tmp_path, random_backbone=False, synthetic=False)
    here = this_machine()
    bench = tmp_path / "bench"
    bench.mkdir()
    rec = [{"model": "dqc", "qubits": 8, "backend": "fast", "median_s": 0.0021, "sd_s": 0.0001},
           {"model": "dqc", "qubits": 16, "backend": "fast", "median_s": 0.015, "sd_s": 0.001},
           {"model": "cdl", "qubits": 8, "backend": "-", "median_s": 0.00015, "sd_s": 0.00001}]
    (bench / f"{here['slug']}.json").write_text(json.dumps({"machine": "this box", "machine_details": {
        "platform": "cpu", "cpu": here["cpu"], "cpu_cores": here["cores"]}, "records": rec}))
    (bench / "cpu-other-64c.json").write_text(json.dumps({"machine": "Other CPU, 64 cores", "machine_details": {
        "platform": "cpu", "cpu": "Other CPU", "cpu_cores": 64}, "records": rec}))
    (bench / "epoch-cpu.json").write_text(json.dumps({"what": "epochs", "results": [{"task": 8, "epoch_s": 1.0}]}))
    monkeypatch.chdir(tmp_path)
    md = _report(sweep, tmp_path / "r")  # default: bench/ of the working folder
    t3 = _csv(tmp_path / "r" / "tables" / "table3_bench.csv")
    assert {r["machine"] for r in t3} == {"this box"} and len(t3) == 3
    assert "**Other machines**" in md and "Other CPU, 64 cores: `cpu-other-64c.json`" in md
    assert "epoch-cpu.json: not a `heads bench` step-time file" in md
    assert "16 (no paper task)" in md and "cxr-16" not in md.lower()
    fast = [line for line in md.splitlines() if line.startswith("| this box |") and "dqc" in line]
    assert [c.split(" ± ")[0].strip() for c in (line.split("|")[4] for line in fast)] == ["2.1", "15.0"]  # one format per column: 2 significant digits of its smallest time
    # A file named with --bench is used as given, whichever machine it is from.
    md = _report(sweep, tmp_path / "r2", "--bench", bench / "cpu-other-64c.json")
    assert {r["machine"] for r in _csv(tmp_path / "r2" / "tables" / "table3_bench.csv")} == {"Other CPU, 64 cores"}


def test_volcano_axis_fitted_within_bounds():
    import matplotlib.pyplot as plt

    assert figures.volcano_scale([-12.0, 30.0]) == {"value": "linear"}
    sym = figures.volcano_scale([-3.0, 180.0])
    assert sym["value"] == "symlog" and sym["linthresh"] <= 2
    for xs, scale in (([-12.0, 30.0], {"value": "linear"}), ([-150.0, 199.0], sym), ([2.0, 5.0], {"value": "linear"})):
        fig, ax = plt.subplots()
        ax.set_xscale(**scale)
        lo, hi = figures._volcano_xlim(ax, xs)
        plt.close(fig)
        assert -200 <= lo < min(min(xs), 0) and max(max(xs), 0) < hi <= 200
        if scale["value"] == "linear":
            assert hi - lo < 2.5 * (max(max(xs), 0) - min(min(xs), 0)) + 1  # fitted, not ±1000 %


def test_loss_mean_only_while_two_seeds_train(degenerate):
    from analysis import summary
    from analysis.collect import load_sweep

    _, sweep, _, _, _ = degenerate
    cur = summary.loss_curves(load_sweep(sweep), "cxr-8", "cdl", "val_loss")
    assert sorted(cur["seeds"]) == [1, 2, 3] and [len(e) for e, _ in cur["seeds"].values()] == [9, 10, 11]
    assert cur["n"].tolist() == [3] * 9 + [2, 1]
    assert cur["mean"][9] == pytest.approx(np.mean([v[9] for s, (_, v) in cur["seeds"].items() if s > 1]))


def test_real_random_backbone_sweep_report(tmp_path, monkeypatch):
    """`heads sweep` trains on stores from a random backbone; its report says RANDOM from the runs alone."""
    from headsdata import SMALL, make_stores

    from heads.cli import app as heads_app

    features = make_stores(tmp_path / "features", **SMALL)
    res = CliRunner().invoke(heads_app, ["sweep", "--tasks", "8", "--seeds", "2", "--models", "cdl,dqc",
                                         "--features", str(features), "--runs", str(tmp_path / "runs"),
                                         "--name", "real", "--max-epochs", "2", "--lr", "0.01", "--patience", "2"])
    assert res.exit_code == 0, res.output
    shutil.rmtree(features)  # provenance must come from the runs
    monkeypatch.chdir(tmp_path)
    md = _report(tmp_path / "runs" / "real", tmp_path / "reports" / "real")
    assert "RANDOM WEIGHTS" in md and "[!CAUTION]" in md
    assert "backbone parameters were RANDOM" in md
    comps = _csv(tmp_path / "reports" / "real" / "tables" / "comparisons.csv")
    assert len(comps) == 2 and all(math.isfinite(float(r["mean_a"])) for r in comps)
    means = _csv(tmp_path / "reports" / "real" / "tables" / "mean_auroc.csv")
    assert {r["test_images"] for r in means} == {str(SMALL["n_test"])} and {r["n_seeds"] for r in means} == {"2"}
    assert str(tmp_path) not in md
