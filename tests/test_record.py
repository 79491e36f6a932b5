"""The run record and the run-folder API: one schema written, every older layout read, and reading that
checks what it reads against where it stands (heads.record, heads.runs)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from reportdata import contract_config, fabricate_runs
from typer.testing import CliRunner

from analysis.cli import app as analysis_app
from analysis.collect import load_sweep
from cxrfeat.errors import UserError
from heads import runs
from heads.cli import app as heads_app
from heads.record import SCHEMA, Backbone, Data, RecordError, RunConfig, RunResults, Settings

LEGACY = Path(__file__).parent / "data" / "legacy"
ROWS = {"train": 90, "val": 30, "nih-cxr-lt": 60}


def _record(**kw) -> RunConfig:
    base = RunConfig(sweep="s", task="cxr-8", labels=("Atelectasis", "Cardiomegaly"), model="dqc", seed=2,
                     settings=Settings(mode="features", lr=1e-3, batch_size=32, max_epochs=5, patience=2,
                                       feature_norm="standardize", layers=2, backend="fast", circuit_init="uniform",
                                       seeds=3, views_from="augmented"),
                     data=Data(dataset="nih-cxr-lt", synthetic=True, rows={"train": 10}, views=4,
                               sources={"train": {"dataset": "nih-cxr-lt", "split": "train", "synthetic": True}},
                               test_sets=("nih-cxr-lt",), dim=24, features="features", external="mimic-cxr-lt"),
                     backbone=Backbone("random", True, 0), grid={"name": "lr-1e-3", "point": {"lr": 1e-3}},
                     param_counts={"quantum": 4}, trained_with=("lr-1e-3/seed-2",), versions={"jax": "x"},
                     devices=("cpu",), started="2026-01-01T00:00:00Z")
    return replace(base, **kw)


def test_config_round_trips_through_json_with_its_schema():
    rec = _record()
    text = json.dumps(rec.to_json())
    back = RunConfig.from_json(json.loads(text))
    assert back == rec and back.to_json()["schema"] == SCHEMA == 2
    assert back.config_name == "lr-1e-3" and back.point == {"lr": 1e-3} and back.train_dataset == "nih-cxr-lt"
    results = RunResults(task="cxr-8", model="dqc", seed=2, best_epoch=3, best_val_loss=0.5, epochs=5,
                         stopped_early=False, test_sets={"nih-cxr-lt": {"mean_auroc": 0.7}}, sanity={"ok": True},
                         validation={"loss": 0.5, "mean_auroc": 0.6}, train_seconds=1.0)
    assert RunResults.from_json(json.loads(json.dumps(results.to_json()))) == results


def test_every_older_config_layout_is_upgraded_to_one_settings_shape():
    # Schema 1 (no `schema` key): `settings` with `mode` beside `training` and `head`.
    old = contract_config(8, "dqc", 2, seeds=5, random_backbone=False, synthetic=True, rows=ROWS, lr=0.01)
    rec = RunConfig.from_json(old)
    assert rec.read_schema == 1 and rec.task == "cxr-8" and rec.model == "dqc" and rec.seed == 2
    assert rec.settings.lr == 0.01 and rec.settings.layers == 3 and rec.settings.seeds == 5
    assert rec.backbone == Backbone("microsoft/resnet-50", False, None, "abc123def4567890", "f" * 64)
    assert rec.data.synthetic is True and rec.data.rows == ROWS
    # Schema 0: keys spread over training, head, feature_norm, features and provenance.
    zero = {"task": 14, "model": "cdl", "seed": 1, "label_names": ["Effusion"], "training": {"lr": 3e-3, "patience": 4},
            "head": {"model": "cdl"}, "feature_norm": "none",
            "features": {"train": {"path": "features/nih-cxr-lt/train.zarr", "dataset": "nih-cxr-lt", "split": "train"}},
            "provenance": {"train": {"dataset": "nih-cxr-lt", "split": "train", "synthetic": False,
                                     "backbone": {"name": "random", "seed": 4}}}}
    rec = RunConfig.from_json(zero)
    assert rec.read_schema == 0 and rec.task == "cxr-14" and rec.labels == ("Effusion",)
    assert (rec.settings.mode, rec.settings.lr, rec.settings.patience, rec.settings.feature_norm) == (
        "features", 3e-3, 4, "none")
    assert rec.settings.layers is None and rec.backbone.random is True and rec.backbone.seed == 4
    assert rec.data.synthetic is False and rec.train_dataset == "nih-cxr-lt"
    # Fine-tune runs of schema 1 kept what a resume must match as `resume_settings`.
    ft = {**old, "model": "dqc-finetune", "finetune": {"limit": 16, "backbone_trained": False},
          "resume_settings": {"lr": 1e-4}, "image_caches": {"train": {"rows": 4}}}
    rec = RunConfig.from_json(ft)
    assert rec.finetune["resume"] == {"lr": 1e-4} and rec.finetune["image_caches"] == {"train": {"rows": 4}}
    assert rec.base_model == "dqc"
    # Not a run record, and a schema from the future: refused with a reason.
    for bad, why in (({"model": "cdl"}, "labels"), ({**_record().to_json(), "schema": 99}, "schema 99")):
        with pytest.raises(RecordError, match=why):
            RunConfig.from_json(bad)


def test_the_oldest_metrics_layout_is_read():
    got = RunResults.from_json({"nih-cxr-lt": {"mean": 0.5}}, _record())
    assert got.test_sets == {"nih-cxr-lt": {"mean": 0.5}} and (got.task, got.model, got.seed) == ("cxr-8", "dqc", 2)


def test_legacy_runs_read_as_records_in_both_layouts(tmp_path):
    found = list(runs.iter_runs(LEGACY / "runs" / "grid"))
    assert len(found) == 12 and {r.config_name for r in found if r.model == "cdl"} == {"lr-1e-3", "lr-3e-3"}
    for run in found:
        rec = run.config()
        assert rec.read_schema == 1 and rec.config_name == run.config_name and rec.point
        assert run.results(rec).validation is not None
    plain = {(r.task, r.model) for r in runs.iter_runs(LEGACY / "runs" / "plain")}
    assert ("cxr-8", "dqc-finetune") in plain and ("cxr-14", "cdl") in plain
    ft = runs.open_run(LEGACY / "runs" / "plain" / "cxr-8" / "dqc-finetune" / "seed-1").config()
    assert ft.settings.mode == "finetune" and ft.finetune["resume"] and ft.settings.layers == 3
    # The folder above sweeps holds no runs of its own (it is not taken for a grid of sweeps).
    assert list(runs.iter_runs(LEGACY / "runs")) == []


def _fab(tmp_path: Path) -> Path:
    return fabricate_runs(tmp_path, seeds=(1, 2))


def test_report_leaves_out_a_damaged_run_and_says_so(tmp_path):
    sweep = _fab(tmp_path)
    (sweep / "cxr-8" / "dqc" / "seed-2" / "metrics.json").unlink()  # DONE stays
    s = load_sweep(sweep)
    assert sorted(s.runs_of("cxr-8", "dqc")) == [1]
    assert any("cxr-8/dqc/seed-2: left out: marked DONE but lacks metrics.json" in n for n in s.notes), s.notes
    (sweep / "cxr-8" / "cdl" / "seed-1" / "metrics.json").write_text('{"task": ')  # truncated
    s = load_sweep(sweep)
    assert sorted(s.runs_of("cxr-8", "cdl")) == [2]
    assert any("cdl/seed-1/metrics.json: not valid JSON" in n for n in s.notes), s.notes
    out = tmp_path / "report"
    res = CliRunner().invoke(analysis_app, ["report", "--runs", str(sweep), "--out", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert "left out: marked DONE but lacks metrics.json" in md and "not valid JSON" in md
    # A damaged sweep.json: the runs carry their own records, so the report goes on and says so.
    (sweep / "sweep.json").write_text("{")
    s = load_sweep(sweep)
    assert sorted(s.runs_of("cxr-8", "dqc")) == [1] and s.meta is None
    assert any("sweep.json: left out" in n and "not valid JSON" in n for n in s.notes), s.notes


def test_a_run_moved_into_another_tasks_folder_is_not_reported_as_that_task(tmp_path):
    sweep = fabricate_runs(tmp_path, task=14, seeds=(1, 2))
    other = fabricate_runs(tmp_path / "b", task=8, seeds=(1, 2))
    victim = sweep / "cxr-14" / "cdl" / "seed-2"
    shutil.rmtree(victim)
    shutil.copytree(other / "cxr-8" / "cdl" / "seed-2", victim)
    with pytest.raises(UserError, match=r"cxr-14/cdl/seed-2/config.json: a run of another place: task 'cxr-8' "
                                        r"\(the folder says 'cxr-14'\)"):
        runs.open_run(victim).config()
    s = load_sweep(sweep)
    assert sorted(s.runs_of("cxr-14", "cdl")) == [1]
    assert any("seed-2: left out" in n and "task 'cxr-8'" in n for n in s.notes), s.notes
    # A seed folder renamed: its metrics and record say seed 1.
    shutil.rmtree(victim)
    shutil.copytree(sweep / "cxr-14" / "cdl" / "seed-1", victim)
    with pytest.raises(UserError, match="seed 1 .the folder says 2"):
        runs.open_run(victim).config()


def test_sweep_refuses_a_finished_run_that_belongs_elsewhere(tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(LEGACY / "features", legacy / "features")
    shutil.copytree(LEGACY / "runs" / "plain", legacy / "runs" / "plain")
    plain = legacy / "runs" / "plain"
    victim = plain / "cxr-14" / "cdl" / "seed-1"
    shutil.rmtree(victim)
    shutil.copytree(plain / "cxr-8" / "cdl" / "seed-1", victim)
    before = {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()}
    res = CliRunner().invoke(heads_app, ["sweep", "--tasks", "14", "--models", "cdl", "--seeds", "2", "--max-epochs",
                                         "3", "--lr", "3e-3", "--batch-size", "8", "--feature-norm", "standardize",
                                         "--features", str(legacy / "features"), "--runs", str(legacy / "runs"),
                                         "--name", "plain"])
    assert res.exit_code == 2, res.output
    assert "cxr-14/cdl/seed-1/config.json: a run of another place: task 'cxr-8'" in res.output
    assert "Traceback" not in res.output
    assert {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()} == before  # nothing lost


def test_finish_run_writes_in_order_and_the_record_reads_back(tmp_path):
    import numpy as np

    d = tmp_path / "s" / "cxr-8" / "dqc" / "seed-2"
    rec = _record(grid=None, labels=("Atelectasis", "Cardiomegaly"))
    runs.start(d, rec)
    y = np.array([[1, 0], [0, 1], [1, -1], [0, 0]], np.int8)
    p = np.array([[0.9, 0.2], [0.1, 0.7], [0.8, 0.5], [0.3, 0.4]], np.float32)
    history = [{"epoch": e, "train_loss": 0.5, "val_loss": v, "seconds": 0.1} for e, v in ((1, 0.6), (2, 0.5), (3, 0.55))]
    results = runs.finish_run(d, rec, params={"w": np.ones(2, np.float32)}, params_metadata={"seed": "2"},
                              tests={"nih-cxr-lt": runs.TestSet(np.array(["a", "b", "c", "d"]), y, p)},
                              validation=(y, p), history=history, best_epoch=2, best_val_loss=0.5, saturated=0.0,
                              train_seconds=1.23456)
    assert runs.is_done(d) and runs.damage(d, ["nih-cxr-lt"]) == []
    run = runs.open_run(d)
    assert run.config() == rec and run.results() == results
    assert results.test_sets["nih-cxr-lt"]["mean_auroc"] == 1.0 and results.validation["mean_auroc"] == 1.0
    assert results.epochs == 3 and results.stopped_early and results.train_seconds == 1.235
    assert json.loads((d / "metrics.json").read_text())["schema"] == SCHEMA
