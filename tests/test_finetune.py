"""`heads finetune`: the image cache, the joint training step, the run, its resume, and the CLI.

A tiny ResNet (basic blocks, 8-24 channels) on a dozen synthetic images keeps this file fast; the
compiled programs are shared between runs of one configuration (`heads.finetune._programs`).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

import heads.finetune as ft
from cxrfeat.datasets import load_split
from cxrfeat.errors import UserError
from cxrfeat.imagecache import ImageCache, build_cache, cache_path, prefetch
from heads import runs
from heads.models import make_model
from heads.train import TrainConfig

FAST = TrainConfig(lr=1e-3, batch_size=5, max_epochs=3, patience=3)  # 12 rows: 3 steps, the last padded




def _opts(data, runs_dir, **kw):
    kw.setdefault("train", FAST)
    return ft.FinetuneOptions(task=8, model=kw.pop("model", "cdl"), seed=kw.pop("seed", 1), data_dir=data / "nih-cxr-lt",
                              runs=runs_dir, name="t", cache=data / "cache", **kw)


def _run(data, runs_dir, backbone, **kw):
    return ft.finetune(_opts(data, runs_dir, **kw), backbone=backbone, say=lambda m: None)


@pytest.fixture(scope="module")
def finished(data, backbone, tmp_path_factory):
    """An uninterrupted CDL run and a DQC run with the same seed."""
    out = tmp_path_factory.mktemp("runs")
    return {"cdl": _run(data, out, backbone), "dqc": _run(data, out, backbone, model="dqc",
                                                          train=TrainConfig(lr=1e-3, batch_size=5, max_epochs=2))}


def _flat(tree):
    return {k: np.asarray(v) for k, v in runs.flatten(jax.device_get(tree)).items()}


# ---------------------------------------------------------------- the image cache
def test_cache_holds_preprocessed_images_and_resumes(data, tmp_path, monkeypatch):
    from cxrfeat.preprocess import load_and_preprocess

    ds = load_split("nih-cxr-lt", data / "nih-cxr-lt", "train")
    clean = build_cache(ds, tmp_path / "clean.zarr", chunk_rows=4, workers=2)
    assert clean.complete and clean.n_chunks == 3 and clean.images.dtype == np.float16
    assert list(clean.ids) == ds.ids and clean.label_names == ds.label_names
    np.testing.assert_array_equal(clean.labels, ds.labels)
    ref = load_and_preprocess(ds.paths[5])
    np.testing.assert_allclose(clean.read_rows([5])[0], ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(clean.read_rows([7, 2]), np.stack([clean.read_rows([7])[0], clean.read_rows([2])[0]]))

    # Killed after its second shard: the reader refuses it; the same call resumes and equals the clean cache.
    calls = {"n": 0}
    original = ImageCache.write_chunk

    def dying(self, i, images, valid=None):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        original(self, i, images, valid)

    monkeypatch.setattr(ImageCache, "write_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        build_cache(ds, tmp_path / "cut.zarr", chunk_rows=4, workers=2)
    monkeypatch.setattr(ImageCache, "write_chunk", original)
    with pytest.raises(UserError, match="incomplete image cache .*2/3 shards.*again"):
        ImageCache.open(tmp_path / "cut.zarr")
    resumed = build_cache(ds, tmp_path / "cut.zarr", chunk_rows=4, workers=2)
    np.testing.assert_array_equal(resumed.images[:], clean.images[:])

    # A cache of other rows is refused, not mixed; a feature store is not an image cache.
    with pytest.raises(UserError, match="different settings .*rows"):
        build_cache(ds, tmp_path / "clean.zarr", chunk_rows=4, limit=5)
    assert cache_path("c", "nih-cxr-lt", "val", 5).as_posix() == "c/nih-cxr-lt/val-first5.zarr"


def test_cache_names_the_bad_image(data, tmp_path):
    ds = load_split("nih-cxr-lt", data / "nih-cxr-lt", "val")
    ds.paths[3] = tmp_path / "missing.png"
    with pytest.raises(UserError, match=r"missing.png.*id .*line 5"):
        build_cache(ds, tmp_path / "bad.zarr", chunk_rows=2, workers=1)
    assert ImageCache.open(tmp_path / "bad.zarr", require_complete=False).done_chunks().tolist()[0]


def test_prefetch_keeps_order_and_raises_where_taken():
    assert list(prefetch(lambda i: i * i, range(10), depth=3, workers=3)) == [i * i for i in range(10)]

    def load(i):
        if i == 4:
            raise ValueError("bad item 4")
        return i

    got = []
    with pytest.raises(ValueError, match="bad item 4"):
        for x in prefetch(load, range(8)):
            got.append(x)
    assert got == [0, 1, 2, 3]


# ---------------------------------------------------------------- the step
def _batch(data, n=6):
    ds = load_split("nih-cxr-lt", data / "nih-cxr-lt", "train")
    cache = build_cache(ds, cache_path(data / "cache", "nih-cxr-lt", "train"))
    labels = cache.labels[:n][:, [cache.label_names.index(x) for x in ft.task_labels(8)]]
    return jnp.asarray(cache.read_rows(range(n))), jnp.asarray(labels), ft.augment_keys(1, 1, n)


@pytest.mark.parametrize("freeze", [False, True])
def test_step_trains_weights_not_batch_stats(data, backbone, freeze):
    head = make_model("cdl", 8)
    images, labels, keys = _batch(data, FAST.batch_size)
    stats_before = _flat(backbone.batch_stats)
    params = ft.init_params(backbone, head, seed=1)
    start = _flat(params)
    # `make_step` as the runs of this file use it (memoised: compiled once for all of them).
    opt, step, _ = ft._programs(backbone.module, head, FAST.lr, freeze)
    opt_state = opt.init(ft.trainable(params, freeze))
    losses = []
    for _ in range(10):  # one fixed batch, fixed augmentation
        params, opt_state, loss = step(params, opt_state, backbone.batch_stats, images, labels, keys)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.05, losses
    end = _flat(params)
    changed = {k for k in start if not np.array_equal(start[k], end[k])}
    assert {k for k in changed if k.startswith("head/")} == {k for k in start if k.startswith("head/")}
    backbone_keys = {k for k in start if k.startswith("backbone/")}
    if freeze:
        assert not changed & backbone_keys
    else:
        assert changed & backbone_keys == backbone_keys  # every conv kernel and BN scale/bias moved
    # The running statistics are an input only: unchanged, and the backbone's own weights are intact.
    for k, v in _flat(backbone.batch_stats).items():
        np.testing.assert_array_equal(v, stats_before[k])
    np.testing.assert_array_equal(_flat(backbone.params)["embedder/embedder/convolution/kernel"],
                                  start["backbone/embedder/embedder/convolution/kernel"])


def test_frozen_step_differentiates_only_the_head(data, backbone):
    """Frozen: the program holds only the forward convolutions (no conv gradients at all)."""
    import optax

    head = make_model("cdl", 8)
    images, labels, keys = _batch(data, 2)
    params = ft.init_params(backbone, head, seed=1)
    counts = {}
    for freeze in (False, True):
        opt = optax.adam(1e-3)
        step = ft.make_step(backbone, head, opt, freeze_backbone=freeze)
        text = step.lower(params, opt.init(ft.trainable(params, freeze)), backbone.batch_stats, images, labels,
                          keys).as_text()
        counts[freeze] = text.count("stablehlo.convolution")
    n_convs = sum(1 for k in _flat(backbone.params) if k.endswith("convolution/kernel"))
    assert counts[True] == n_convs
    assert counts[False] > 2 * n_convs


def test_batches_depend_only_on_seed_and_epoch():
    perm = np.asarray(ft.epoch_order(1, 1, 12, 1)[0])
    same = ft.batch_digest(perm, ft.augment_keys(1, 1, 12))
    assert same == ft.batch_digest(np.asarray(ft.epoch_order(1, 1, 12, 1)[0]), ft.augment_keys(1, 1, 12))
    assert same != ft.batch_digest(perm, ft.augment_keys(2, 1, 12))
    assert same != ft.batch_digest(np.asarray(ft.epoch_order(1, 2, 12, 1)[0]), ft.augment_keys(1, 2, 12))
    # A position's key does not depend on how many positions the epoch has (padding changes nothing).
    np.testing.assert_array_equal(jax.random.key_data(ft.augment_keys(1, 1, 15)[:12]),
                                  jax.random.key_data(ft.augment_keys(1, 1, 12)))


# ---------------------------------------------------------------- the run
def test_run_layout_and_outputs(finished, backbone):
    res = finished["cdl"]
    path = res.path
    assert path.parts[-4:] == ("t", "cxr-8", "cdl-finetune", "seed-1")
    for name in ("config.json", "history.jsonl", "best.safetensors", "metrics.json", "DONE",
                 "predictions/nih-cxr-lt.npz", "predictions/mimic-cxr-lt.npz"):
        assert (path / name).exists(), name
    assert not (path / ft.CHECKPOINT).exists()
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model"] == "cdl-finetune" and cfg["labels"] == list(ft.task_labels(8))
    assert cfg["param_counts"]["head"] == 24 * 8 + 8 and cfg["param_counts"]["backbone"] > 0
    assert cfg["schema"] == 2 and cfg["finetune"]["image_caches"]["train"]["synthetic"] is True
    # The run record (heads.record), as for runs on cached features.
    assert cfg["data"]["test_sets"] == ["nih-cxr-lt", "mimic-cxr-lt"]
    assert {k: cfg["data"][k] for k in ("dataset", "synthetic", "views", "limit", "rows", "sources")} == {"dataset": "nih-cxr-lt", "synthetic": True, "views": None, "limit": None,
                           "rows": {"train": 12, "val": 6, "nih-cxr-lt": 6, "mimic-cxr-lt": 6},
                           "sources": {"train": {"dataset": "nih-cxr-lt", "split": "train", "synthetic": True},
                                       "val": {"dataset": "nih-cxr-lt", "split": "val", "synthetic": True},
                                       "nih-cxr-lt": {"dataset": "nih-cxr-lt", "split": "test", "synthetic": True},
                                       "mimic-cxr-lt": {"dataset": "mimic-cxr-lt", "split": "test", "synthetic": True}}}
    assert cfg["backbone"] == {"name": "random", "random": True, "seed": 0, "revision": None, "sha256": None}
    assert cfg["settings"] == {"lr": 1e-3, "batch_size": 5, "max_epochs": 3, "patience": 3, "feature_norm": None,
                               "layers": None, "backend": None, "circuit_init": None, "seeds": None,
                               "mode": "finetune", "freeze_backbone": False, "limit": None, "views_from": None,
                               "noise": None, "noise_scale": None, "trajectories": None, "noise_model": None}
    history = runs.read_history(path)
    assert [h["epoch"] for h in history] == [1, 2, 3] == [h["epoch"] for h in res.history]
    pred = runs.load_predictions(path, "nih-cxr-lt")
    assert pred["y_prob"].shape == (6, 8) and ((pred["y_prob"] > 0) & (pred["y_prob"] < 1)).all()
    metrics = runs.read_metrics(path)
    assert set(metrics["test_sets"]) == {"nih-cxr-lt", "mimic-cxr-lt"} and metrics["best_epoch"] == res.best_epoch
    assert "mean_auprc" in metrics["test_sets"]["nih-cxr-lt"]
    # The best parameters on the validation split, as for runs on cached features (same record type).
    assert metrics["schema"] == 2 and metrics["validation"]["n"] == 6
    assert metrics["validation"]["loss"] == metrics["best_val_loss"] == min(h["val_loss"] for h in history)
    check = metrics["sanity"]
    assert check["ok"] == (not check["flags"]) and check["details"]["saturated_fraction"] is None
    assert ("still_improving" in check["flags"]) == (res.best_epoch == 3) and check["details"]["epochs"] == 3
    # best.safetensors: the trained backbone, the unchanged running statistics, the head.
    best = load_file(path / "best.safetensors")
    orig_p, orig_s = _flat(backbone.params), _flat(backbone.batch_stats)
    assert not np.array_equal(best["backbone/embedder/embedder/convolution/kernel"],
                              orig_p["embedder/embedder/convolution/kernel"])
    for k, v in orig_s.items():
        np.testing.assert_array_equal(best[f"batch_stats/{k}"], v)
    assert {k for k in best if k.startswith("head/")} == {"head/linear/kernel", "head/linear/bias"}


def test_cdl_and_dqc_see_identical_batches(finished):
    cdl, dqc = finished["cdl"].history, finished["dqc"].history
    assert [h["order_digest"] for h in dqc] == [h["order_digest"] for h in cdl[:2]]
    assert cdl[0]["order_digest"] != cdl[1]["order_digest"]
    cfg = json.loads((finished["dqc"].path / "config.json").read_text())
    assert cfg["model"] == "dqc-finetune"
    assert (cfg["settings"]["layers"], cfg["settings"]["backend"], cfg["settings"]["circuit_init"]) == (3, "fast", "uniform")
    # The DQC's saturation: its pre Dense on the backbone's embeddings of the test images, recomputed here.
    metrics = runs.read_metrics(finished["dqc"].path)
    fraction = metrics["sanity"]["details"]["saturated_fraction"]
    assert 0.0 <= fraction <= 1.0
    assert ("saturated_inputs" in metrics["sanity"]["flags"]) == (fraction > 0.5)


def test_interrupted_run_resumes_and_equals_uninterrupted(finished, data, backbone, tmp_path, monkeypatch):
    clean = finished["cdl"]
    original = ft.save_checkpoint
    calls = {"n": 0}

    def dying(*args, **kw):
        original(*args, **kw)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed right after epoch 2 was committed

    monkeypatch.setattr(ft, "save_checkpoint", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(data, tmp_path, backbone)
    monkeypatch.setattr(ft, "save_checkpoint", original)
    cut = _opts(data, tmp_path).run_dir
    assert not runs.is_done(cut) and json.loads((cut / ft.CHECKPOINT / "state.json").read_text())["epoch"] == 2

    resumed = _run(data, tmp_path, backbone)
    assert resumed.resumed_from == 2 and len(resumed.history) == 3
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(clean.history)
    a, b = load_file(clean.path / "best.safetensors"), load_file(resumed.path / "best.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(runs.load_predictions(cut, "mimic-cxr-lt")["y_prob"],
                                  runs.load_predictions(clean.path, "mimic-cxr-lt")["y_prob"])
    # Finished: running it again does nothing.
    assert _run(data, tmp_path, backbone).skipped


def _heads_train_run(path, model="cdl", labels=None, dim=24):
    """A finished run folder as `heads train` writes it (heads.sweep): config.json, best.safetensors, DONE."""
    rng = np.random.default_rng(0)
    params = {"linear": {"kernel": 3 + rng.normal(size=(dim, 8)).astype(np.float32), "bias": np.zeros(8, np.float32)}}
    runs.start(path, {"task": 8, "model": model, "seed": 1, "labels": labels or list(ft.task_labels(8)),
                      "provenance": {"train": {"backbone": {"name": "random", "random": True, "seed": 0}}}})
    runs.save_params(path, params)
    runs.finish(path)
    return params


def test_frozen_backbone_from_a_trained_head(data, backbone, tmp_path):
    source = tmp_path / "sweep" / "cxr-8" / "cdl" / "seed-1"
    start = _heads_train_run(source)["linear"]["kernel"]
    res = _run(data, tmp_path, backbone, freeze_backbone=True, init_head_from=source,
               train=TrainConfig(lr=1e-3, batch_size=5, max_epochs=1))
    best = load_file(res.path / "best.safetensors")
    for k, v in _flat(backbone.params).items():
        np.testing.assert_array_equal(best[f"backbone/{k}"], v)
    # Trained on (3 Adam steps of 1e-3) from the loaded head, not from a fresh one.
    assert not np.array_equal(best["head/linear/kernel"], start)
    np.testing.assert_allclose(best["head/linear/kernel"], start, atol=3.1e-3)
    assert json.loads((res.path / "config.json").read_text())["finetune"]["backbone_trained"] is False

    with pytest.raises(UserError, match="a 'cdl' run, but --model is 'dqc'"):
        _run(data, tmp_path, backbone, model="dqc", init_head_from=source)
    other = tmp_path / "other"
    _heads_train_run(other, labels=list(ft.task_labels(14))[:8][::-1])
    with pytest.raises(UserError, match="trained for labels .*not task cxr-8"):
        _run(data, tmp_path, backbone, seed=2, init_head_from=other)
    _heads_train_run(tmp_path / "wide", dim=2048)
    with pytest.raises(UserError, match="do not fit this head"):
        _run(data, tmp_path, backbone, seed=2, init_head_from=tmp_path / "wide")
    with pytest.raises(UserError, match="not a run folder"):
        _run(data, tmp_path, backbone, seed=2, init_head_from=tmp_path)


def test_changed_settings_are_not_mixed_into_an_unfinished_run(data, backbone, tmp_path, monkeypatch):
    monkeypatch.setattr(ft, "save_checkpoint", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _run(data, tmp_path, backbone)
    with pytest.raises(UserError, match=r"different settings \(lr: 0\.001 there, 0\.0005 now\)"):
        _run(data, tmp_path, backbone, train=TrainConfig(lr=5e-4, batch_size=5, max_epochs=3, patience=3))


# ---------------------------------------------------------------- the CLI
def test_cli_end_to_end_with_a_checkpoint_folder(data, backbone, tmp_path):
    from cxrfeat.weights import save_checkpoint
    from heads.cli import app

    save_checkpoint(backbone, tmp_path / "ckpt")
    args = ["finetune", "--task", "8", "--model", "cdl", "--seed", "3", "--data-dir", str(data / "nih-cxr-lt"),
            "--weights", str(tmp_path / "ckpt"), "--runs", str(tmp_path / "runs"), "--name", "cli",
            "--cache", str(tmp_path / "cache"), "--limit", "5", "--batch-size", "5", "--max-epochs", "1", "--lr", str(FAST.lr)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "cli" / "cxr-8" / "cdl-finetune" / "seed-3"
    assert runs.is_done(run) and "mean AUROC" in result.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["rows"]["val"] == 5 and cfg["data"]["limit"] == 5 and cfg["settings"]["limit"] == 5
    assert cfg["backbone"]["random"] is False and len(cfg["backbone"]["sha256"]) == 64
    flat = " ".join(result.output.split())
    assert f"run written to {run}" in flat and "still improving" in flat  # 1 epoch: flagged undertrained


def test_task_all_is_every_training_label_and_tasks_file_is_read(data, tmp_path):
    from cxrfeat.labels import NO_FINDING
    from heads.cli import app

    opts = ft.resolve_task(ft.FinetuneOptions(task="all", model="cdl", data_dir=data / "nih-cxr-lt", runs=tmp_path))
    names = load_split("nih-cxr-lt", data / "nih-cxr-lt", "train").label_names
    assert opts.task.labels == tuple(n for n in names if n != NO_FINDING) and opts.task == "cxr-19"
    assert opts.run_dir == tmp_path / "sweep" / "cxr-19" / "cdl-finetune" / "seed-1"
    (tmp_path / "t.txt").write_text("Effusion\nNo Finding\n")
    result = CliRunner().invoke(app, ["finetune", "--tasks-file", str(tmp_path / "t.txt"), "--runs", str(tmp_path)])
    assert result.exit_code == 2 and "'No Finding' is never a task label" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "0"], "--seed must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--model", "svm"], "--model must be one of cdl, dqc"),
    (["--task", "7"], "unknown task"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--data-dir", "/nonexistent/nih"], "no such folder"),
    (["--task", "all", "--data-dir", "/nonexistent/nih"], "no such folder"),  # `all` is accepted
    (["--tasks-file", "/nonexistent/t.txt"], "--tasks-file /nonexistent/t.txt: cannot read it"),
])
def test_cli_rejects_bad_options(tmp_path, args, message):
    from heads.cli import app

    result = CliRunner().invoke(app, ["finetune", "--runs", str(tmp_path / "runs"), "--weights", "random", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "runs").exists()
