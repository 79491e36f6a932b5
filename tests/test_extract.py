"""Extraction through the real pipeline: synthetic PNGs -> decode -> views -> tiny Flax ResNet -> Zarr."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RESNET
from transformers import ResNetConfig

from cxrfeat.datasets import load_split
from cxrfeat.errors import UserError
from cxrfeat.extract import export_h5, extract
from cxrfeat.store import FeatureStore


def _run(data, out, backbone, split="train", **kw):
    kw.setdefault("views", 3)
    return extract(dataset="nih-cxr-lt", split=split, data_dir=data / "nih-cxr-lt", out=out, backbone=backbone,
                   chunk_rows=4, batch_size=6, progress=False, announce=lambda m: None, **kw)


def test_extract_store_contents(data, backbone, tmp_path):
    path, timing = _run(data, tmp_path, backbone)
    assert path == tmp_path / "nih-cxr-lt" / "train.zarr"
    feats = FeatureStore.open(path).load()
    ds = load_split("nih-cxr-lt", data / "nih-cxr-lt", "train")
    assert feats.embeddings.shape == (12, 3, 24)
    assert list(feats.ids) == ds.ids and feats.label_names == ds.label_names
    np.testing.assert_array_equal(feats.labels, ds.labels)
    attrs = feats.attrs
    assert attrs["complete"] and attrs["views"] == 3 and attrs["synthetic"] is True
    assert attrs["backbone"]["random"] is True and attrs["dtype"] == "float16"
    assert attrs["preprocessing"] and attrs["augmentation"]
    assert timing.images == 12 and timing.forwards == 36
    # View 0 is the plain image: it equals the backbone on the preprocessed image itself.
    from cxrfeat.preprocess import load_and_preprocess

    x = np.stack([load_and_preprocess(p) for p in ds.paths[:2]])
    ref = np.asarray(backbone.embed(x))
    np.testing.assert_allclose(feats.embeddings[:2, 0], ref, rtol=2e-3, atol=2e-3)
    # Augmented views differ from the plain one.
    assert np.abs(feats.embeddings[:, 1] - feats.embeddings[:, 0]).max() > 1e-3


def test_interrupted_run_resumes_to_identical_store(data, backbone, tmp_path, monkeypatch):
    clean, _ = _run(data, tmp_path / "clean", backbone)
    calls = {"n": 0}
    original = FeatureStore.write_chunk

    def dying_write(self, i, emb, valid=None):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        original(self, i, emb, valid)

    monkeypatch.setattr(FeatureStore, "write_chunk", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _run(data, tmp_path / "cut", backbone)
    monkeypatch.setattr(FeatureStore, "write_chunk", original)
    with pytest.raises(UserError, match="incomplete"):
        FeatureStore.open(tmp_path / "cut" / "nih-cxr-lt" / "train.zarr").load()
    resumed, timing = _run(data, tmp_path / "cut", backbone)
    assert timing.images == 4  # only the unfinished chunk was redone
    a, b = FeatureStore.open(clean), FeatureStore.open(resumed)
    np.testing.assert_array_equal(np.asarray(a.group["embeddings"][:]), np.asarray(b.group["embeddings"][:]))


def test_kill_9_then_resume(data, tmp_path):
    """A real SIGKILL in the middle of writing; the rerun finishes and equals an uninterrupted run."""
    script = textwrap.dedent(f"""
        import time, sys
        from transformers import ResNetConfig
        import cxrfeat.preprocess as pp
        from cxrfeat.backbone import load_backbone
        from cxrfeat.extract import extract
        slow = pp.load_and_preprocess
        def load(path):
            time.sleep(0.15)
            return slow(path)
        pp.load_and_preprocess = load
        bb = load_backbone("random", seed=0, config=ResNetConfig(**{TINY_RESNET!r}))
        extract(dataset="nih-cxr-lt", split="train", data_dir=sys.argv[1], out=sys.argv[2], backbone=bb,
                views=3, chunk_rows=4, batch_size=6, workers=1, progress=False, announce=print)
    """)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", script, str(data / "nih-cxr-lt"), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store_path = out / "nih-cxr-lt" / "train.zarr"
    deadline = time.time() + 120
    while time.time() < deadline:
        if store_path.exists():
            try:
                if FeatureStore.open(store_path, require_complete=False).done_chunks().sum() >= 1:
                    break
            except Exception:  # noqa: BLE001 - the store may be mid-creation
                pass
        if proc.poll() is not None:
            pytest.fail(f"extraction ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not FeatureStore.open(store_path, require_complete=False).complete
    from cxrfeat.backbone import load_backbone

    bb = load_backbone("random", seed=0, config=ResNetConfig(**TINY_RESNET))
    _run(data, out, bb, workers=1)
    clean, _ = _run(data, tmp_path / "clean", bb)
    np.testing.assert_array_equal(np.asarray(FeatureStore.open(clean).group["embeddings"][:]),
                                  np.asarray(FeatureStore.open(store_path).group["embeddings"][:]))


def test_settings_mismatch_refused_then_overwrite(data, backbone, tmp_path):
    _run(data, tmp_path, backbone, split="val", views=1)
    with pytest.raises(UserError, match="different settings.*views.*--overwrite"):
        _run(data, tmp_path, backbone, split="val", views=2)
    path, _ = _run(data, tmp_path, backbone, split="val", views=2, overwrite=True)
    assert FeatureStore.open(path).load().embeddings.shape[1] == 2
    # Same settings again: nothing to do.
    _, timing = _run(data, tmp_path, backbone, split="val", views=2)
    assert timing.images == 0


def test_bad_image_names_file_and_row_or_is_skipped(data, backbone, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data / "nih-cxr-lt", copy)
    ds = load_split("nih-cxr-lt", copy, "test")
    Path(ds.paths[5]).write_bytes(b"not a png")
    with pytest.raises(UserError, match=rf"{Path(ds.paths[5]).name}.*line {ds.rows[5]}.*--skip-bad"):
        extract(dataset="nih-cxr-lt", split="test", data_dir=copy, out=tmp_path / "f", backbone=backbone,
                chunk_rows=4, progress=False, announce=lambda m: None)
    # The first chunk was written and kept.
    store = FeatureStore.open(tmp_path / "f" / "nih-cxr-lt" / "test.zarr", require_complete=False)
    assert store.done_chunks().tolist() == [True, False]
    messages = []
    path, timing = extract(dataset="nih-cxr-lt", split="test", data_dir=copy, out=tmp_path / "f", backbone=backbone,
                           chunk_rows=4, progress=False, announce=messages.append, skip_bad=True)
    assert timing.skipped == [ds.ids[5]]
    assert any(ds.ids[5] in m for m in messages)
    feats = FeatureStore.open(path).load()
    assert len(feats.ids) == 5 and ds.ids[5] not in feats.ids
    assert FeatureStore.open(path).attrs["skipped_ids"] == [ds.ids[5]]


def test_export_h5(data, backbone, tmp_path):
    import h5py

    path, _ = _run(data, tmp_path, backbone, split="val", views=1, dtype="float32")
    out = export_h5(path, tmp_path / "val.h5")
    store = FeatureStore.open(path)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["embeddings"][:], np.asarray(store.group["embeddings"][:]))
        np.testing.assert_array_equal(f["labels"][:], store.labels)
        assert [s.decode() for s in f["ids"][:]] == list(store.ids)
        assert f.attrs["split"] == "val" and "random" in f.attrs["backbone"]


def test_cli_extract_and_export_with_checkpoint_folder(data, backbone, tmp_path):
    from typer.testing import CliRunner

    from cxrfeat.cli import app
    from cxrfeat.weights import save_checkpoint

    ckpt = save_checkpoint(backbone, tmp_path / "ckpt")
    runner = CliRunner()
    args = ["extract", "--split", "val", "--data-dir", str(data / "nih-cxr-lt"), "--out", str(tmp_path / "f"),
            "--weights", str(ckpt), "--workers", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output
    store = FeatureStore.open(tmp_path / "f" / "nih-cxr-lt" / "val.zarr")
    assert store.views == 1 and store.attrs["backbone"]["sha256"]
    # The checkpoint folder gives the same embeddings as the backbone it was saved from.
    ref, _ = _run(data, tmp_path / "ref", backbone, split="val", views=1)
    np.testing.assert_allclose(np.asarray(store.group["embeddings"][:], np.float32),
                               np.asarray(FeatureStore.open(ref).group["embeddings"][:], np.float32), atol=1e-3)
    result = runner.invoke(app, ["export", str(tmp_path / "f" / "nih-cxr-lt" / "val.zarr"), str(tmp_path / "v.h5")])
    assert result.exit_code == 0 and (tmp_path / "v.h5").exists()
    # Bad options are clear errors naming the option.
    result = runner.invoke(app, args + ["--views", "0"])
    assert result.exit_code == 2 and "--views" in result.output
    result = runner.invoke(app, ["extract", "--split", "val", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "nowhere" in result.output
