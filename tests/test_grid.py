"""Hyper-parameter grids in `heads sweep`: layout, records, validation metrics, members equal to
configurations swept alone, resume, and seed-level shards whose union is the unsharded sweep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from headsdata import SMALL, cli_sweep, make_stores
from test_sweep_reliability import assert_same_sweep
from typer.testing import CliRunner

from cxrfeat.labels import task_labels
from cxrfeat.store import FeatureStore
from heads import runs
from heads.cli import app
from heads.grid import format_value, parse_values
from heads.metrics import auroc_report
from heads.models import make_model
from heads.plan import SweepSpec, plan, shard_cells
from heads.sweep import run_sweep
from heads.train import TrainConfig

FAST = ["--max-epochs", "2", "--patience", "2"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    return cli_sweep(tmp_path_factory.mktemp("grid"), "g", "--lr", "0.01,3e-2", "--layers", "1,2", *FAST, **SMALL)


def test_grid_layout_and_records(grid_sweep):
    root, _, result = grid_sweep
    sweep = root / "runs" / "g"
    record = json.loads((sweep / "sweep.json").read_text())
    assert record["grid"]["varying"] == ["lr", "layers"]
    assert record["grid"]["values"]["lr"] == ["0.01", "0.03"] and record["grid"]["values"]["layers"] == ["1", "2"]
    # CDL has no circuit: its configurations vary the learning rate only.
    assert record["grid"]["configs"] == {"cdl": ["lr-0.01", "lr-0.03"],
                                         "dqc": ["lr-0.01_layers-1", "lr-0.01_layers-2", "lr-0.03_layers-1",
                                                 "lr-0.03_layers-2"]}
    assert record["settings"]["training"]["lr"] == [0.01, 0.03] and record["settings"]["head"]["layers"] == [1, 2]
    assert record["settings"]["views_from"] == "augmented"  # the default: one augmented view per example
    for model, names in record["grid"]["configs"].items():
        for name in names:
            for seed in (1, 2):
                d = sweep / "cxr-8" / model / name / f"seed-{seed}"
                assert runs.is_done(d), d
                config = json.loads((d / "config.json").read_text())
                point = {"lr": float(name.split("_")[0].removeprefix("lr-"))}
                if model == "dqc":
                    point["layers"] = int(name.split("layers-")[1])
                assert config["grid"] == {"name": name, "point": point}
                assert config["settings"]["lr"] == point["lr"] and config["settings"]["patience"] == 2
                assert config["settings"]["layers"] == point.get("layers")
                assert config["settings"]["views_from"] == "augmented"
                if model == "dqc":
                    assert config["param_counts"]["quantum"] == 8 * point["layers"]
    assert [r.config_name for r in runs.iter_runs(sweep) if r.model == "cdl"] == ["lr-0.01"] * 2 + ["lr-0.03"] * 2
    assert "lr-0.03_layers-2" in result.output  # the summary has a row per configuration


def test_validation_metrics_come_from_the_best_parameters(grid_sweep):
    root, _, _ = grid_sweep
    val = FeatureStore.open(root / "features" / "nih-cxr-lt" / "val.zarr").load(list(task_labels(8)))
    for model, name in (("cdl", "lr-0.03"), ("dqc", "lr-0.01_layers-2")):
        d = root / "runs" / "g" / "cxr-8" / model / name / "seed-2"
        metrics = runs.read_metrics(d)
        head = make_model(model, 8, layers=2)
        logits = np.asarray(head.apply({"params": runs.load_params(d)}, val.embeddings[:, 0]))
        want = auroc_report(val.labels, 1 / (1 + np.exp(-logits)), list(task_labels(8)))
        assert metrics["validation"]["loss"] == metrics["best_val_loss"]
        assert metrics["validation"]["mean_auroc"] == pytest.approx(want["mean_auroc"], abs=1e-6)
        assert metrics["validation"]["per_label_auroc"] == pytest.approx(want["per_label"], abs=1e-6)


def _results_only(src: Path, dst: Path) -> Path:
    """A run folder's results: everything but config.json (whose `grid` record names the configuration)."""
    shutil.copytree(src, dst)
    (dst / "config.json").unlink()
    return dst


def test_a_configuration_swept_alone_equals_its_place_in_the_grid(grid_sweep, tmp_path):
    root, _, _ = grid_sweep
    result = invoke("sweep", "--tasks", "8", "--seeds", "2", "--models", "dqc", "--features", root / "features",
                    "--runs", tmp_path / "runs", "--name", "one", "--lr", "0.03", "--layers", "2", *FAST)
    assert result.exit_code == 0, result.output
    alone = tmp_path / "runs" / "one" / "cxr-8" / "dqc"
    config = json.loads((alone / "seed-2" / "config.json").read_text())
    assert config["grid"] is None  # a single configuration keeps the plain layout
    for seed in (1, 2):
        a = _results_only(alone / f"seed-{seed}", tmp_path / "a" / str(seed))
        b = _results_only(root / "runs" / "g" / "cxr-8" / "dqc" / "lr-0.03_layers-2" / f"seed-{seed}",
                          tmp_path / "b" / str(seed))
        assert_same_sweep(a, b)


def test_rerunning_a_grid_skips_finished_configurations(grid_sweep):
    root, args, _ = grid_sweep
    sweep = root / "runs" / "g"
    stamps = {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file() and p.name != "sweep.json"}
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "finished already, skipped" in result.output
    assert stamps == {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file() and p.name != "sweep.json"}


def _cdl_grid(root: Path, runs_dir: Path, **kw) -> SweepSpec:
    return SweepSpec(tasks=[8], models=["cdl"], seeds=3, features=root / "features", runs=runs_dir, name="s",
                     train=TrainConfig(lr=0.01, max_epochs=3, patience=2),
                     grid={"lr": [0.01, 0.03], "feature_norm": ["none", "standardize"]}, **kw)


def test_the_union_of_seed_level_shards_equals_the_unsharded_sweep(tmp_path):
    make_stores(tmp_path / "features", **SMALL)
    full = _cdl_grid(tmp_path, tmp_path / "one")
    cells = plan(full)
    assert len(cells) == 12  # 2 lr x 2 feature norms x 3 seeds
    parts = [shard_cells(_cdl_grid(tmp_path, tmp_path / "x", shard=(i, 5))) for i in range(1, 6)]
    assert [c for p in parts for c in p] == cells and all(len(p) in (2, 3) for p in parts)
    # Slices of 12 cells into 5: 2, 2, 3, 2, 3 cells; the second spans two configurations.
    assert [(c.config.name, c.seed) for c in parts[1]] == [("lr-0.01_feature-norm-none", 3),
                                                           ("lr-0.01_feature-norm-standardize", 1)]
    run_sweep(full)
    for i in range(1, 6):
        run_sweep(_cdl_grid(tmp_path, tmp_path / "sharded", shard=(i, 5)))
    assert_same_sweep(tmp_path / "one" / "s", tmp_path / "sharded" / "s")
    # The standardized configuration (standardized copies beside the raw embeddings) equals a sweep
    # of that configuration alone (standardized in place).
    alone = SweepSpec(tasks=[8], models=["cdl"], seeds=3, features=tmp_path / "features", runs=tmp_path / "alone",
                      name="s", train=TrainConfig(lr=0.03, max_epochs=3, patience=2), feature_norm="standardize")
    run_sweep(alone)
    for seed in (1, 3):
        a = _results_only(tmp_path / "alone" / "s" / "cxr-8" / "cdl" / f"seed-{seed}", tmp_path / "ra" / str(seed))
        b = _results_only(tmp_path / "one" / "s" / "cxr-8" / "cdl" / "lr-0.03_feature-norm-standardize" / f"seed-{seed}",
                          tmp_path / "rb" / str(seed))
        assert_same_sweep(a, b)
        assert (a / "feature_norm.npz").exists()


def test_grid_values_are_parsed_and_named_stably():
    assert parse_values("lr", "1e-4,0.0001,3e-4") == [1e-4, 3e-4]
    assert [format_value(v) for v in (1e-4, 3e-4, 1e-3, 0.01, 0.1)] == ["1e-4", "3e-4", "1e-3", "0.01", "0.1"]
    assert parse_values("layers", "1,3,5") == [1, 3, 5] and parse_values("circuit_init", "uniform,normal") == ["uniform", "normal"]


@pytest.mark.parametrize("extra, words", [(["--lr", "1e-3,x"], "--lr"), (["--layers", "0,1"], "--layers"),
                                          (["--batch-size", "16,"], "--batch-size"),
                                          (["--feature-norm", "none,zscore"], "--feature-norm"),
                                          (["--circuit-init", "uniform,zero"], "--circuit-init"),
                                          (["--views-from", "first"], "--views-from")])
def test_bad_grid_values_fail_cleanly(tmp_path, extra, words):
    result = invoke("sweep", "--features", tmp_path / "features", "--runs", tmp_path / "runs", *extra)
    assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["train", "finetune", "extract"])
def test_a_multi_process_launch_is_refused_by_every_training_and_extraction_command(tmp_path, monkeypatch, command):
    import jax

    from cxrfeat.cli import app as cxrfeat_app

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    args = {"train": ["train", "--features", tmp_path / "features", "--runs", tmp_path / "runs"],
            "finetune": ["finetune", "--weights", "random", "--data-dir", tmp_path / "data", "--runs", tmp_path / "runs",
                         "--cache", tmp_path / "cache"],
            "extract": ["extract", "--split", "val", "--data-dir", tmp_path / "data", "--out", tmp_path / "features",
                        "--weights", "random"]}[command]
    result = CliRunner().invoke(cxrfeat_app if command == "extract" else app, [str(a) for a in args])
    assert result.exit_code == 2 and "multi-process" in result.output, result.output
    assert ("--shard" if command == "train" else "independent") in result.output
    assert not any((tmp_path / d).exists() for d in ("runs", "cache", "features"))


def test_concurrent_shards_of_one_grid_end_like_the_unsharded_sweep(tmp_path):
    """Two shard jobs started together on one folder (sweep.json merged under its lock, one lock
    per run, a slice splitting a configuration's seeds) end with the files of one unsharded job."""
    import subprocess

    from test_sweep_reliability import _env, _heads

    make_stores(tmp_path / "features", **SMALL, external=False)
    common = ["sweep", "--tasks", "8", "--models", "cdl", "--seeds", "3", "--lr", "0.01,0.03",
              "--features", tmp_path / "features", "--name", "t", "--max-epochs", "2", "--patience", "2"]
    procs = [subprocess.Popen(_heads(*common, "--runs", tmp_path / "both", "--shard", f"{i}/2"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for i in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    one = invoke(*common, "--runs", tmp_path / "one")  # the unsharded job, alone (in this process: no start-up)
    assert one.exit_code == 0, one.output
    assert_same_sweep(tmp_path / "one" / "t", tmp_path / "both" / "t")


def test_the_console_groups_a_grid_group_s_runs_per_configuration():
    from heads.sweepview import _seeds

    runs_ = [f"lr-1e-3/seed-{s}" for s in range(1, 6)] + ["lr-3e-3/seed-1", "lr-3e-3/seed-5"]
    assert _seeds(runs_) == "lr-1e-3 1-5; lr-3e-3 1,5"
    assert _seeds([1, 2, 3]) == "1-3" and _seeds([2, 4]) == "2,4"
