"""`heads sweep` / `heads train` end to end on tiny stores: layout, resume, metrics, refusals."""

import json
import shutil

import jax
import numpy as np
import pytest
from headsdata import cli_sweep, make_stores, synthetic_split, write_store
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from cxrfeat.labels import LABELS, task_labels
from cxrfeat.store import FeatureStore
from heads import runs
from heads.cli import app
from heads.metrics import auroc_report, label_auprc
from heads.models import make_model
from heads.plan import SweepSpec, parse_shard, shard_cells

FAST = ["--max-epochs", "3", "--lr", "0.01", "--patience", "2"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    return cli_sweep(tmp_path_factory.mktemp("sweep"), "t", *FAST)


def test_sweep_writes_the_run_layout(swept):
    root, _, first = swept
    sweep = root / "runs" / "t"
    record = json.loads((sweep / "sweep.json").read_text())
    assert record["tasks"] == ["cxr-8"] and record["models"] == ["cdl", "dqc"] and record["seeds"] == 2
    assert record["settings"]["training"]["max_epochs"] == 3
    for model in ("cdl", "dqc"):
        for seed in (1, 2):
            d = sweep / "cxr-8" / model / f"seed-{seed}"
            assert runs.is_done(d)
            config = json.loads((d / "config.json").read_text())
            assert config["seed"] == seed and config["model"] == model and config["labels"] == list(task_labels(8))
            assert config["schema"] == 2 and config["stores"]["train"]["backbone"] == {"name": "random", "seed": 0}
            assert config["param_counts"]["classical_preprocess"] == 32 * 8 + 8
            metrics = runs.read_metrics(d)
            history = runs.read_history(d)
            assert len(history) == metrics["epochs"] and {"train_loss", "val_loss", "seconds", "order_digest"} <= set(history[0])
            assert set(metrics["test_sets"]) == {"nih-cxr-lt", "mimic-cxr-lt"}
    # Same seed, same batches, whatever the head.
    digests = [[h["order_digest"] for h in runs.read_history(sweep / "cxr-8" / m / "seed-1")] for m in ("cdl", "dqc")]
    assert digests[0] == digests[1]
    assert "CXR-8" in first.output and "mimic-cxr-lt" in first.output  # the summary table


def test_metrics_match_sklearn_and_predictions_match_saved_parameters(swept):
    root, _, _ = swept
    names = list(task_labels(8))
    for model in ("cdl", "dqc"):
        d = root / "runs" / "t" / "cxr-8" / model / "seed-2"
        metrics = runs.read_metrics(d)
        for test_set in ("nih-cxr-lt", "mimic-cxr-lt"):
            p = runs.load_predictions(d, test_set)
            assert list(p["label_names"]) == names and p["y_prob"].shape == (120, 8)
            m = metrics["test_sets"][test_set]
            for j, name in enumerate(names):
                known = p["y_true"][:, j] >= 0
                want = roc_auc_score(p["y_true"][known, j], p["y_prob"][known, j])
                assert m["per_label"][name] == pytest.approx(want)
                want_pr = average_precision_score(p["y_true"][known, j], p["y_prob"][known, j])
                assert m["per_label_auprc"][name] == pytest.approx(want_pr)
            assert m["mean_auroc"] == pytest.approx(np.mean(list(m["per_label"].values())))
            assert m["mean_auprc"] == pytest.approx(np.mean(list(m["per_label_auprc"].values())))
        assert metrics["test_sets"]["nih-cxr-lt"]["mean_auroc"] > 0.6  # the heads learn the signal
        # The saved best parameters reproduce the saved predictions.
        saved = runs.load_predictions(d, "nih-cxr-lt")
        x = FeatureStore.open(root / "features" / "nih-cxr-lt" / "test.zarr").load().embeddings[:, 0]
        probs = jax.nn.sigmoid(make_model(model, 8).apply({"params": runs.load_params(d)}, x))
        np.testing.assert_allclose(probs, saved["y_prob"], rtol=1e-5, atol=1e-6)


def test_second_sweep_skips_finished_runs_and_redoes_unfinished_ones(swept):
    root, args, _ = swept
    sweep = root / "runs" / "t" / "cxr-8"
    stamp = {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file()}
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") >= 2
    assert stamp == {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file()}

    # An interrupted run: no DONE, a stale file. Only it is trained again, alone, to the same result.
    victim = sweep / "cdl" / "seed-2"
    before = runs.read_metrics(victim)
    (victim / runs.DONE).unlink()
    (victim / "metrics.json").write_text("{half")
    third = invoke(*args)
    assert third.exit_code == 0, third.output
    assert runs.is_done(victim)
    after = runs.read_metrics(victim)
    assert after["epochs"] == before["epochs"]
    assert after["test_sets"]["nih-cxr-lt"]["mean_auroc"] == pytest.approx(before["test_sets"]["nih-cxr-lt"]["mean_auroc"], abs=1e-5)
    untouched = [p for p in stamp if victim not in p.parents]
    assert all(p.stat().st_mtime_ns == stamp[p] for p in untouched)


def test_train_command_and_changed_settings(swept):
    root, _, _ = swept
    common = ["--features", root / "features", "--runs", root / "runs"]
    # `heads train` is one (task, model) of the same folder: all finished, so nothing to do.
    ok = invoke("train", "--task", "8", "--model", "cdl", "--seeds", "2", "--name", "t", *common, *FAST)
    assert ok.exit_code == 0 and "skipped" in ok.output, ok.output
    other = invoke("train", "--task", "8", "--model", "cdl", "--seeds", "2", "--name", "t", *common,
                   "--max-epochs", "4", "--lr", "0.01", "--patience", "2")
    assert other.exit_code == 2 and "other settings" in other.output
    # The refusal names the setting and both values: the folder's and the command's.
    assert "training.max_epochs: 3 there, 4 now" in " ".join(other.output.split()), other.output


def test_config_records_data_backbone_and_settings(swept):
    """docs/design.md "Run record": config.json `data`, `backbone`, `settings` of every run."""
    root, _, first = swept
    for model in ("cdl", "dqc"):
        config = json.loads((root / "runs" / "t" / "cxr-8" / model / "seed-1" / "config.json").read_text())
        data = config["data"]
        assert data["dataset"] == "nih-cxr-lt" and data["views"] == 2 and data["limit"] is None
        assert data["rows"] == {"train": 240, "val": 80, "nih-cxr-lt": 120, "mimic-cxr-lt": 120}
        assert set(data["sources"]) == {"train", "val", "nih-cxr-lt", "mimic-cxr-lt"}
        assert data["sources"]["mimic-cxr-lt"] == {"dataset": "mimic-cxr-lt", "split": "test", "synthetic": None}
        assert data["synthetic"] is None  # these stores predate the attribute: unknown, not "real"
        assert config["backbone"] == {"name": "random", "random": True, "seed": 0, "revision": None, "sha256": None}
        settings = config["settings"]
        assert set(settings) == {"lr", "batch_size", "max_epochs", "patience", "feature_norm", "layers", "backend",
                                 "circuit_init", "seeds", "mode", "freeze_backbone", "limit", "views_from",
                                 "noise", "noise_scale", "trajectories", "noise_model"}
        assert settings["noise"] is None and settings["noise_model"] is None  # trained on the ideal circuit
        assert settings["lr"] == 0.01 and settings["max_epochs"] == 3 and settings["patience"] == 2
        assert settings["batch_size"] == 32 and settings["seeds"] == 2 and settings["feature_norm"] == "none"
        assert settings["mode"] == "features" and settings["freeze_backbone"] is None and settings["limit"] is None
        dqc = model == "dqc"
        assert (settings["layers"], settings["backend"], settings["circuit_init"]) == (
            (3, "fast", "uniform") if dqc else (None, None, None))
    # The summary says where it wrote.
    assert f"runs written to {root / 'runs' / 't'}" in " ".join(first.output.split())


def test_sanity_record_of_every_run(swept):
    root, _, first = swept
    for model in ("cdl", "dqc"):
        metrics = runs.read_metrics(root / "runs" / "t" / "cxr-8" / model / "seed-1")
        check = metrics["sanity"]
        assert set(check) == {"ok", "flags", "details", "messages"}
        assert check["ok"] == (not check["flags"]) and len(check["messages"]) == len(check["flags"])
        assert "constant_predictions" not in check["flags"] and "nan_loss" not in check["flags"]
        d = check["details"]
        assert d["epochs"] == metrics["epochs"] and d["best_epoch"] == metrics["best_epoch"] and d["max_epochs"] == 3
        assert ("still_improving" in check["flags"]) == (metrics["best_epoch"] == metrics["epochs"])
        assert d["saturation_threshold"] == 0.5 and d["nan"] is False and d["constant_labels"] == {}
        if model == "cdl":
            assert d["saturated_fraction"] is None
        else:
            assert 0.0 <= d["saturated_fraction"] <= 0.5 and "saturated_inputs" not in check["flags"]
    assert "Sanity" in first.output


def test_auroc_report_leaves_out_unknown_and_single_class_labels():
    y = np.array([[1, 0, -1], [0, 0, 1], [1, -1, 0], [0, 0, 1]], np.int8)
    p = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.6, 0.9, 0.1], [0.4, 0.2, 0.7]], np.float32)
    r = auroc_report(y, p, ["a", "b", "c"])
    assert r["per_label"]["b"] is None and r["undefined"] == ["b"] and r["labels_used"] == 2
    assert r["per_label"]["c"] == pytest.approx(roc_auc_score([1, 0, 1], [0.8, 0.1, 0.7]))
    assert r["mean_auroc"] == pytest.approx((1.0 + r["per_label"]["c"]) / 2)
    assert r["known"]["c"] == 3 and r["positives"]["a"] == 2
    assert r["per_label_auprc"]["b"] is None
    assert r["per_label_auprc"]["c"] == pytest.approx(average_precision_score([1, 0, 1], [0.8, 0.1, 0.7]))
    assert r["mean_auprc"] == pytest.approx((r["per_label_auprc"]["a"] + r["per_label_auprc"]["c"]) / 2)


def test_auprc_by_hand():
    # Ranked 0.9 (pos), 0.8 (neg), 0.3 (pos), 0.1 (neg): precision 1 at recall 1/2, 2/3 at recall 1.
    assert label_auprc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1])) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # An unknown entry is left out; one class, or a NaN prediction: undefined.
    assert label_auprc(np.array([1, -1, 0]), np.array([0.2, 0.9, 0.1])) == pytest.approx(1.0)
    assert label_auprc(np.array([1, 1, -1]), np.array([0.2, 0.9, 0.1])) is None
    assert label_auprc(np.array([1, 0]), np.array([np.nan, 0.1])) is None


def test_shards_partition_the_grid():
    spec = SweepSpec(tasks=[8, 14, 19], models=["cdl", "dqc"], seeds=1)
    full = [(c.task, c.model) for c in shard_cells(spec)]
    parts = [[(c.task, c.model) for c in shard_cells(SweepSpec(tasks=[8, 14, 19], models=["cdl", "dqc"], seeds=1,
                                                               shard=(i, 4)))] for i in range(1, 5)]
    assert sorted(p for part in parts for p in part) == sorted(full) and sum(map(len, parts)) == len(full) == 6
    assert parse_shard("2/4") == (2, 4)


@pytest.fixture
def tiny(tmp_path):
    return make_stores(tmp_path / "features", n_train=40, n_val=16, n_test=16, external=False), tmp_path / "runs"


@pytest.mark.parametrize(
    "extra, words",
    [(["--seeds", "0"], "--seeds"), (["--batch-size", "0"], "--batch-size"), (["--shard", "3/2"], "--shard"),
     (["--shard", "x"], "--shard"), (["--models", "cdl,svm"], "--models"), (["--backend", "gpu"], "--backend"),
     (["--tasks", "8,9"], "--tasks"), (["--circuit-init", "zero"], "--circuit-init")],
)
def test_impossible_options_fail_cleanly(tiny, extra, words):
    features, runs_dir = tiny
    result = invoke("sweep", "--features", features, "--runs", runs_dir, "--max-epochs", "1", *extra)
    assert result.exit_code == 2 and words in result.output, result.output
    assert not runs_dir.exists()


def test_missing_store_names_the_extract_command(tiny):
    features, runs_dir = tiny
    shutil.rmtree(features / "nih-cxr-lt" / "val.zarr")
    result = invoke("sweep", "--features", features, "--runs", runs_dir, "--tasks", "8")
    assert result.exit_code == 2 and "val.zarr" in result.output and "cxrfeat extract --split val" in result.output
    assert not runs_dir.exists()


def test_task_labels_missing_from_a_store(tiny):
    features, runs_dir = tiny
    rng = np.random.default_rng(1)
    x, y = synthetic_split(rng, 16, 1, 32, rng.normal(size=(len(LABELS), 32)))
    shutil.rmtree(features / "nih-cxr-lt" / "test.zarr")
    eight = list(task_labels(8))
    write_store(features / "nih-cxr-lt" / "test.zarr", x, y[:, [LABELS.index(n) for n in eight]],
                dataset="nih-cxr-lt", split="test", label_names=eight)
    result = invoke("sweep", "--features", features, "--runs", runs_dir, "--tasks", "8,14", "--max-epochs", "1")
    assert result.exit_code == 2 and "test.zarr" in result.output and "Hernia" in result.output, result.output
    assert not runs_dir.exists()


def test_stores_from_different_backbones_are_refused(tiny):
    features, runs_dir = tiny
    rng = np.random.default_rng(2)
    x, y = synthetic_split(rng, 16, 1, 32, rng.normal(size=(len(LABELS), 32)))
    shutil.rmtree(features / "nih-cxr-lt" / "val.zarr")
    write_store(features / "nih-cxr-lt" / "val.zarr", x, y, dataset="nih-cxr-lt", split="val",
                backbone={"name": "microsoft/resnet-50", "revision": "abc"})
    result = invoke("sweep", "--features", features, "--runs", runs_dir, "--tasks", "8", "--max-epochs", "1")
    assert result.exit_code == 2 and "backbone" in result.output
    assert not runs_dir.exists()


def test_non_finite_features_are_refused(tiny):
    features, runs_dir = tiny
    rng = np.random.default_rng(3)
    x, y = synthetic_split(rng, 16, 1, 32, rng.normal(size=(len(LABELS), 32)))
    x[5, 0, 3] = np.nan
    shutil.rmtree(features / "nih-cxr-lt" / "test.zarr")
    write_store(features / "nih-cxr-lt" / "test.zarr", x, y, dataset="nih-cxr-lt", split="test")
    result = invoke("sweep", "--features", features, "--runs", runs_dir, "--tasks", "8", "--max-epochs", "1")
    assert result.exit_code == 2 and "NaN" in result.output and "test.zarr" in result.output, result.output
    assert not runs_dir.exists()


def test_feature_norm_standardize_scales_inputs_and_is_recorded(tmp_path):
    """Badly scaled (random-backbone-like) features: `--feature-norm standardize` z-scores them with the
    training split's statistics, saves those constants beside the parameters, and the DQC learns."""
    rng = np.random.default_rng(3)
    signal = rng.normal(size=(len(LABELS), 32)) * 0.8
    offset = rng.uniform(300, 500, size=32)  # a huge shared offset, like random ResNet-50 embeddings
    for split, n, v in (("train", 240, 2), ("val", 80, 1), ("test", 120, 1)):
        x, y = synthetic_split(rng, n, v, 32, signal)
        write_store(tmp_path / "f" / "nih-cxr-lt" / f"{split}.zarr", x * 20 + offset, y,
                    dataset="nih-cxr-lt", split=split, backbone={"name": "random", "random": True, "seed": 0})
    common = ["--tasks", "8", "--seeds", "2", "--models", "dqc", "--features", tmp_path / "f", "--runs",
              tmp_path / "runs", "--max-epochs", "8", "--lr", "0.01", "--patience", "8"]
    plain = invoke("sweep", *common, "--name", "plain")
    assert plain.exit_code == 0 and "--feature-norm standardize" in plain.output  # the warning
    normed = invoke("sweep", *common, "--name", "normed", "--feature-norm", "standardize")
    assert normed.exit_code == 0, normed.output
    d = tmp_path / "runs" / "normed" / "cxr-8" / "dqc" / "seed-1"
    assert json.loads((d / "config.json").read_text())["settings"]["feature_norm"] == "standardize"
    stats = np.load(d / "feature_norm.npz")
    train = FeatureStore.open(tmp_path / "f" / "nih-cxr-lt" / "train.zarr").load().embeddings
    np.testing.assert_allclose(stats["mean"], train.mean(axis=(0, 1)), rtol=1e-4)
    np.testing.assert_allclose(stats["sd"], train.std(axis=(0, 1)), rtol=1e-3)
    metrics = {name: runs.read_metrics(tmp_path / "runs" / name / "cxr-8" / "dqc" / "seed-1")
               for name in ("plain", "normed")}
    auroc = {name: m["test_sets"]["nih-cxr-lt"]["mean_auroc"] for name, m in metrics.items()}
    assert auroc["plain"] == pytest.approx(0.5, abs=0.02)  # saturated tanh: constant predictions
    assert auroc["normed"] > 0.6
    # The saturated DQC is flagged in metrics.json, in the summary table and by a warning line; the
    # standardized one is not saturated. Saturation recomputed here from the saved parameters.
    plain = metrics["plain"]["sanity"]
    assert not plain["ok"] and {"saturated_inputs", "constant_predictions"} <= set(plain["flags"])
    params = runs.load_params(tmp_path / "runs" / "plain" / "cxr-8" / "dqc" / "seed-1")
    x = FeatureStore.open(tmp_path / "f" / "nih-cxr-lt" / "test.zarr").load().embeddings[:, 0].astype(np.float64)
    pre = x @ params["pre"]["kernel"] + params["pre"]["bias"]
    assert plain["details"]["saturated_fraction"] == pytest.approx(np.mean(np.abs(np.tanh(pre)) > 0.99), abs=1e-6)
    assert plain["details"]["constant_labels"]["nih-cxr-lt"]  # at least one constant label
    again = invoke("sweep", *common, "--name", "plain")  # finished: skipped, then the summary again
    flat = " ".join(again.output.split())
    assert "SATURATED 2/2" in flat and "saturated DQC inputs" in flat
    for seed in (1, 2):
        assert f"warning: {tmp_path / 'runs' / 'plain' / 'cxr-8' / 'dqc' / f'seed-{seed}'}: " in flat
    normed_check = metrics["normed"]["sanity"]
    assert "saturated_inputs" not in normed_check["flags"] and "constant_predictions" not in normed_check["flags"]
    assert normed_check["details"]["saturated_fraction"] < 0.5
    bad = invoke("sweep", *common, "--name", "x", "--feature-norm", "l2")
    assert bad.exit_code == 2 and "--feature-norm" in bad.output
