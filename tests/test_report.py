"""`analysis report` end to end on a small, hand-built sweep, checked against sklearn/scipy recomputation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from analysis.bench import load_bench, this_machine
from analysis.cli import app
from analysis.features import SYNTHETIC_SENTENCE
from cxrfeat.labels import LABELS, NO_FINDING, TASKS
from cxrfeat.store import FeatureStore

TEST_SETS = ("nih-cxr-lt", "mimic-cxr-lt")
SIGNAL = {"cdl": 1.6, "dqc": 0.9, "cdl-finetune": 1.8, "dqc-finetune": 1.2}
PARAMS = {8: (16_392, 24, 72), 14: (28_686, 42, 210), 19: (38_931, 57, 380)}
# Training positives of the fixture's train store: Effusion is more common than Infiltration and
# Hernia more than Pneumonia, so "sorted by training occurrence" differs from the canonical order.
TRAIN_POS = {name: 60 - 3 * i for i, name in enumerate(LABELS)}
TRAIN_POS.update({"Effusion": 70, "Hernia": 40})


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _truth(rng, n: int, labels, test_set: str) -> np.ndarray:
    prevalence = np.linspace(0.4, 0.08, len(labels))
    y = (rng.random((n, len(labels))) < prevalence).astype(np.int64)
    y[:2], y[2:4] = 1, 0  # both classes everywhere...
    if test_set == "mimic-cxr-lt":
        y[rng.random(y.shape) < 0.15] = -1  # ...unknowns in the external set...
        if "Hernia" in labels:  # ...and one label with a single known class: AUROC undefined
            j = list(labels).index("Hernia")
            y[:, j] = np.where(rng.random(n) < 0.5, -1, 0)
    return y


def make_sweep(root: Path, tasks=(8, 14), models=("cdl", "dqc"), seeds=(1, 2, 3), n: int = 80,
               missing=(("cxr-14", "dqc", 3),), extra=(("cxr-8", "cdl-finetune", (1, 2)),
                                                        ("cxr-8", "dqc-finetune", (1,)))) -> Path:
    """runs/<sweep>/cxr-<n>/<model>/seed-<s>/ exactly as docs/design.md "Run layout" lays it out.

    `extra` adds finetune runs (seeds given); dqc-finetune seed 2 is left unfinished (no DONE).
    """
    sweep = root / "runs" / "demo"
    rng = np.random.default_rng(0)
    truths = {(t, ts): _truth(rng, n, TASKS[t], ts) for t in tasks for ts in TEST_SETS}
    grid = [(f"cxr-{t}", m, s) for t in tasks for m in models for s in seeds if (f"cxr-{t}", m, s) not in missing]
    grid += [(task, m, s) for task, m, ss in extra for s in ss]
    for task, model, seed in grid:
        t = int(task.split("-")[1])
        labels = TASKS[t]
        d = sweep / task / model / f"seed-{seed}"
        (d / "predictions").mkdir(parents=True)
        pre, q, post = PARAMS[t]
        quantum = model.startswith("dqc")
        config = {
            "task": t, "model": model, "seed": seed, "layers": 3, "label_names": list(labels),
            "param_counts": {"backbone": 23_508_032, "classical_preprocess": pre,
                             "quantum": q if quantum else 0, "classical_postprocess": post if quantum else 0},
            "features": {"train": {"path": "features/nih-cxr-lt/train.zarr", "dataset": "nih-cxr-lt",
                                   "split": "train"}},
        }
        (d / "config.json").write_text(json.dumps(config))
        epochs = 6 + seed + (4 if quantum else 0)
        best = epochs - 3
        hist = [{"epoch": e, "train_loss": 0.7 * math.exp(-e / (8 if quantum else 4)) + 0.01 * seed,
                 "val_loss": 0.6 - 0.03 * min(e, best) + 0.01 * max(0, e - best) + 0.005 * seed, "seconds": 1.5}
                for e in range(1, epochs + 1)]
        (d / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
        (d / "best.safetensors").write_bytes(b"")
        prng = np.random.default_rng(1000 * seed + len(model) + t)
        metrics = {}
        for ts in TEST_SETS:
            y = truths[(t, ts)]
            # Per-label quantum handicap (some labels favour DQC), so significance varies across labels.
            factor = np.array([0.6 + 1.2 * ((LABELS.index(lab) * 7) % 11) / 10 for lab in labels]) if quantum else 1.0
            strength = SIGNAL[model] * (1.0 + 0.15 * seed) * factor
            prob = _sigmoid(strength * (2 * (y == 1) - 1) + prng.normal(0, 1.5, y.shape))
            np.savez(d / "predictions" / f"{ts}.npz", ids=np.array([f"img{i}" for i in range(n)]), y_true=y,
                     y_prob=prob.astype(np.float32), label_names=np.array(labels))
            metrics[ts] = {"mean": 0.5}  # deliberately wrong: the report recomputes and says so
        (d / "metrics.json").write_text(json.dumps(metrics))
        if not (model == "dqc-finetune" and seed == 2):
            (d / "DONE").write_text("")
    unfinished = sweep / "cxr-8" / "dqc-finetune" / "seed-2"
    unfinished.mkdir(parents=True, exist_ok=True)
    (sweep / "sweep.json").write_text(json.dumps({"tasks": list(tasks), "models": list(models),
                                                  "seeds": len(seeds)}))
    return sweep


def make_features(root: Path, synthetic: bool = True) -> Path:
    """Tiny complete stores: nih-cxr-lt train/val/test and mimic-cxr-lt test, 19 labels + No Finding."""
    features = root / "features"
    names = [*LABELS, NO_FINDING]
    sizes = {("nih-cxr-lt", "train"): 90, ("nih-cxr-lt", "val"): 30, ("nih-cxr-lt", "test"): 40,
             ("mimic-cxr-lt", "test"): 30}
    rng = np.random.default_rng(5)
    for (ds, split), n in sizes.items():
        labels = np.zeros((n, len(names)), dtype=np.int8)
        for j, name in enumerate(names[:-1]):
            k = TRAIN_POS[name] if split == "train" else int(rng.integers(1, n // 2))
            labels[rng.choice(n, size=k, replace=False), j] = 1
        if ds == "mimic-cxr-lt":
            labels[:3, 0] = -1
        labels[:, -1] = (labels[:, :-1] != 1).all(1)
        attrs = {"dataset": ds, "split": split}
        if synthetic:
            attrs["synthetic"] = True
        store = FeatureStore.create(features / ds / f"{split}.zarr", ids=[f"{ds}-{i}" for i in range(n)],
                                    labels=labels, label_names=names, views=1, dim=4, dtype="float32",
                                    attrs=attrs, settings={}, chunk_rows=64)
        for i in range(store.n_chunks):
            a, b = store.chunk_bounds(i)
            store.write_chunk(i, np.zeros((b - a, 1, 4), np.float32))
        store.finalize([])
    return features


def make_bench(root: Path) -> Path:
    """This machine's `heads bench` file (as heads.bench names and describes it), another machine's, a broken one."""
    bench = root / "bench"
    bench.mkdir()
    recs = [{"model": m, "qubits": q, "backend": b, "median_s": 0.001 * q * (3 if b == "reference" else 1),
             "sd_s": 1e-5, "peak_memory_bytes": 1000 * q}
            for q in (8, 14, 19) for m, b in (("cdl", None), ("dqc", "fast"), ("dqc", "reference"))]
    here = this_machine()
    (bench / f"{here['slug']}.json").write_text(json.dumps({"machine": "test-cpu", "machine_details": {
        "platform": "cpu", "cpu": here["cpu"], "cpu_cores": here["cores"]}, "records": recs}))
    (bench / "cpu-elsewhere-8c.json").write_text(json.dumps({"machine": "elsewhere", "machine_details": {
        "platform": "cpu", "cpu": "Elsewhere CPU", "cpu_cores": 8}, "records": recs}))
    (bench / "broken.json").write_text("{not json")
    return bench


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    sweep = make_sweep(root)
    features = make_features(root)
    bench = make_bench(root)
    out = root / "reports" / "demo"
    res = CliRunner().invoke(app, ["report", "--runs", str(sweep), "--features", str(features),
                                   "--bench", str(bench), "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return root, sweep, out


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _f(s: str) -> float:
    return float(s) if s != "" else math.nan


def _reference_aurocs(sweep: Path, task: str, model: str, test_set: str) -> dict[int, np.ndarray]:
    """Independent recomputation: sklearn per label over known (0/1) rows, NaN for one class."""
    out = {}
    for d in sorted((sweep / task / model).glob("seed-*")):
        if not (d / "DONE").exists():
            continue
        z = np.load(d / "predictions" / f"{test_set}.npz")
        y, p = z["y_true"], z["y_prob"]
        vals = []
        for j in range(y.shape[1]):
            known = y[:, j] != -1
            yy = y[known, j]
            vals.append(roc_auc_score(yy, p[known, j]) if len(set(yy.tolist())) == 2 else math.nan)
        out[int(d.name.split("-")[1])] = np.array(vals)
    return out


def test_files_written(built):
    _, _, out = built
    assert (out / "report.md").is_file()
    for name in ("table1_labels", "table2_params", "table3_bench", "mean_auroc", "comparisons", "convergence",
                 "long_tail", "per_label_cxr-8_nih-cxr-lt"):
        assert (out / "tables" / f"{name}.csv").is_file(), name
        assert (out / "tables" / f"{name}.tex").is_file(), name
    assert (out / "tables" / "per_label.csv").is_file() and (out / "tables" / "per_seed_auroc.csv").is_file()
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"fig5_mean_auroc.png", "fig4_loss.png", "long_tail.png", "volcano_cxr8.png", "volcano_cxr14_added.png",
            "per_label_cxr-8_nih-cxr-lt.png", "per_label_cxr-14_mimic-cxr-lt.png",
            "per_label_cxr-8_nih-cxr-lt_finetune.png", "volcano_cxr8_finetune.png"} <= figs
    md = (out / "report.md").read_text()
    for fig in figs:  # every figure is embedded with a relative link
        assert f"(figures/{fig})" in md
    assert not list(out.parent.glob(".*tmp*"))


def test_comparisons_equal_recomputation(built):
    _, sweep, out = built
    rows = _csv(out / "tables" / "comparisons.csv")
    assert {(r["task"], r["test_set"], r["model_a"], r["model_b"]) for r in rows} == {
        (t, ts, "cdl", "dqc") for t in ("cxr-8", "cxr-14") for ts in TEST_SETS} | {
        ("cxr-8", ts, "cdl-finetune", "dqc-finetune") for ts in TEST_SETS}
    for r in rows:
        a = {s: np.nanmean(v) for s, v in _reference_aurocs(sweep, r["task"], r["model_a"], r["test_set"]).items()}
        b = {s: np.nanmean(v) for s, v in _reference_aurocs(sweep, r["task"], r["model_b"], r["test_set"]).items()}
        common = sorted(set(a) & set(b))
        assert r["paired_seeds"] == " ".join(map(str, common))
        assert _f(r["mean_a"]) == pytest.approx(np.mean(list(a.values())), abs=1e-12)
        assert _f(r["sd_a"]) == pytest.approx(np.std(list(a.values()), ddof=1), abs=1e-12)
        assert _f(r["mean_b"]) == pytest.approx(np.mean(list(b.values())), abs=1e-12)
        ma, mb = np.mean(list(a.values())), np.mean(list(b.values()))
        assert _f(r["pct_diff"]) == pytest.approx(200 * (ma - mb) / (ma + mb), abs=1e-9)
        if len(common) >= 2:
            ref = ttest_rel([a[s] for s in common], [b[s] for s in common])
            assert _f(r["p"]) == pytest.approx(ref.pvalue, rel=1e-9)
            assert _f(r["t"]) == pytest.approx(ref.statistic, rel=1e-9)
        else:  # dqc-finetune has only seed 1: no test
            assert r["p"] == "" and r["stars"] == "n/a"
    cxr14 = next(r for r in rows if r["task"] == "cxr-14" and r["model_a"] == "cdl")
    assert cxr14["paired_seeds"] == "1 2" and cxr14["n_a"] == "3" and cxr14["n_b"] == "2"


def test_per_label_order_values_and_undefined(built):
    _, sweep, out = built
    rows = _csv(out / "tables" / "per_label.csv")
    sel = [r for r in rows if r["task"] == "cxr-8" and r["test_set"] == "nih-cxr-lt" and r["model_a"] == "cdl"]
    expected = sorted(TASKS[8], key=lambda lab: (-TRAIN_POS[lab], LABELS.index(lab)))
    assert [r["label"] for r in sel] == expected  # sorted by training occurrence, not canonical order
    assert expected[0] == "Effusion"
    assert [int(r["train_positives"]) for r in sel] == [TRAIN_POS[lab] for lab in expected]
    ref_a = _reference_aurocs(sweep, "cxr-8", "cdl", "nih-cxr-lt")
    ref_b = _reference_aurocs(sweep, "cxr-8", "dqc", "nih-cxr-lt")
    for r in sel:
        j = TASKS[8].index(r["label"])
        va, vb = [ref_a[s][j] for s in (1, 2, 3)], [ref_b[s][j] for s in (1, 2, 3)]
        assert _f(r["mean_a"]) == pytest.approx(np.mean(va), abs=1e-12)
        assert _f(r["p"]) == pytest.approx(ttest_rel(va, vb).pvalue, rel=1e-9)
    hernia = next(r for r in rows if r["task"] == "cxr-14" and r["test_set"] == "mimic-cxr-lt"
                  and r["label"] == "Hernia")
    assert hernia["mean_a"] == "" and hernia["p"] == "" and hernia["stars"] == "n/a"
    assert "undefined" in (out / "report.md").read_text()


def test_per_seed_and_mean_tables(built):
    _, sweep, out = built
    per_seed = _csv(out / "tables" / "per_seed_auroc.csv")
    ref = _reference_aurocs(sweep, "cxr-14", "dqc", "mimic-cxr-lt")
    got = {int(r["seed"]): _f(r["auroc"]) for r in per_seed
           if (r["task"], r["model"], r["test_set"], r["label"]) == ("cxr-14", "dqc", "mimic-cxr-lt", "mean")}
    assert got.keys() == ref.keys() == {1, 2}
    for s in got:
        assert got[s] == pytest.approx(np.nanmean(ref[s]), abs=1e-12)
    means = _csv(out / "tables" / "mean_auroc.csv")
    models = {(r["task"], r["model"]) for r in means}
    assert ("cxr-8", "cdl-finetune") in models and ("cxr-8", "dqc-finetune") in models  # finetune rows
    ft = next(r for r in means if r["model"] == "dqc-finetune")
    assert ft["seeds"] == "1" and ft["sd"] == ""


def test_missing_and_unfinished_reported(built):
    _, _, out = built
    md = (out / "report.md").read_text()
    assert "cxr-14 / dqc: seed(s) 3 missing" in md
    assert "cxr-8 / dqc-finetune: seed(s) 2 unfinished" in md
    assert "mean AUROC(s) in the runs' metrics.json differ from those recomputed" in md
    assert "is 0.500000 there" in md


def test_tables_one_to_three(built):
    root, _, out = built
    t1 = {r["label"]: r for r in _csv(out / "tables" / "table1_labels.csv")}
    store = FeatureStore.open(root / "features" / "nih-cxr-lt" / "val.zarr")
    for j, name in enumerate(store.label_names):
        assert int(t1[name]["nih-cxr-lt val"]) == int((store.labels[:, j] == 1).sum())
    assert int(t1["Effusion"]["nih-cxr-lt train"]) == TRAIN_POS["Effusion"]
    total = sum(int(t1["Hernia"][f"nih-cxr-lt {s}"]) for s in ("train", "val", "test"))
    assert int(t1["Hernia"]["nih-cxr-lt total"]) == total
    assert int(t1["Images"]["mimic-cxr-lt test"]) == 30
    t2 = {(r["task"], r["model"]): r for r in _csv(out / "tables" / "table2_params.csv")}
    assert int(t2[("cxr-14", "dqc")]["classical_preprocess"]) == 28_686
    assert int(t2[("cxr-14", "dqc")]["quantum"]) == 42 and int(t2[("cxr-14", "dqc")]["head"]) == 28_686 + 42 + 210
    t3 = _csv(out / "tables" / "table3_bench.csv")
    assert len(t3) == 6 and {r["machine"] for r in t3} == {"test-cpu"}  # machine × qubits × model, back ends as columns
    dqc19 = next(r for r in t3 if r["qubits"] == "19" and r["model"] == "dqc")
    assert float(dqc19["fast_median_s"]) == pytest.approx(0.019) and float(dqc19["reference_median_s"]) == pytest.approx(0.057)
    md = (out / "report.md").read_text()
    assert "broken.json: unreadable JSON" in md
    assert "| test-cpu | 19 (CXR-19) | dqc |" in md
    assert "elsewhere: `cpu-elsewhere-8c.json`" in md  # another machine's file: listed, not tabled


def test_report_says_synthetic_and_scales(built):
    _, _, out = built
    md = (out / "report.md").read_text()
    assert SYNTHETIC_SENTENCE in md
    assert "symlog" in md and "p = 0.05" in md
    assert "head** (7 labels" in md  # rank terciles of the 19 training labels, stated


def test_not_a_runs_folder(tmp_path):
    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["report", "--runs", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "not a runs folder" in res.output and "empty" in res.output
    res = runner.invoke(app, ["report", "--runs", str(tmp_path / "absent")])
    assert res.exit_code == 2 and "absent" in res.output
    make_sweep(tmp_path)
    res = runner.invoke(app, ["report", "--runs", str(tmp_path / "runs")])  # the parent of the sweep
    assert res.exit_code == 2 and "runs/demo" in res.output


def test_partial_sweep_without_features_or_bench(tmp_path, monkeypatch):
    """One model finished only, no stores, no bench: still a report, in canonical order, saying so."""
    sweep = make_sweep(tmp_path, tasks=(8,), models=("cdl", "dqc"), seeds=(1, 2), missing=(), extra=())
    for d in (sweep / "cxr-8" / "dqc").glob("seed-*"):
        (d / "DONE").unlink()
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["report"])  # defaults: the only sweep under runs/, reports/<name>
    assert res.exit_code == 0, res.output
    md = (tmp_path / "reports" / "demo" / "report.md").read_text()
    assert "cxr-8 / dqc: seed(s) 1, 2 unfinished" in md
    assert "Table I left out" in md and "Table III left out" in md and "canonical order" in md
    assert "No task has both models" in md
    # A second report over the first replaces it; a foreign folder is refused.
    assert CliRunner().invoke(app, ["report"]).exit_code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    res = CliRunner().invoke(app, ["report", "--out", "mine"])
    assert res.exit_code == 2 and "not a report folder" in res.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_bench_reader_variants(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"model": "dqc", "task": "cxr-14", "backend": "fast",
                                                  "median_ms": 2.5, "std_ms": 0.1, "device": "H100"}]))
    (tmp_path / "b.json").write_text(json.dumps({"machine": {"gpu": "H200"}, "results": [
        {"model": "cdl", "n_qubits": 8, "median": 0.01}, {"nothing": 1}]}))
    recs, notes = load_bench(tmp_path)
    a = next(r for r in recs if r.source.name == "a.json")
    assert (a.qubits, a.backend, a.machine) == (14, "fast", "H100")
    assert a.median_s == pytest.approx(2.5e-3) and a.sd_s == pytest.approx(1e-4)
    b = next(r for r in recs if r.source.name == "b.json")
    assert (b.qubits, b.backend, b.median_s, b.machine) == (8, "-", 0.01, "gpu: H200") and math.isnan(b.sd_s)
    assert notes == []


def test_volcano_labels_do_not_overlap():
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from analysis.figures import place_labels

    rng = np.random.default_rng(1)
    xs, ys = rng.normal(5, 1.0, 16), rng.normal(2, 0.4, 16)  # a tight cluster, as real volcano plots have
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    ax.scatter(xs, ys)
    ax.set_xlim(-5, 15)
    ax.set_ylim(0, 4)
    anns = place_labels(ax, xs, ys, [f"Label {i}" for i in range(16)])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, renderer) for a in anns]  # the text only, not its leader line
    plt.close(fig)
    for i in range(len(boxes)):
        for j in range(i):
            assert not boxes[i].overlaps(boxes[j]), (anns[i].get_text(), anns[j].get_text())
