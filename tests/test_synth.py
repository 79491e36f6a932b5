"""The synthetic dataset: layouts the readers accept, long-tailed co-occurring labels, learnable images."""

import csv
import re

import numpy as np
import pytest
from PIL import Image

from cxrfeat.datasets import load_split
from cxrfeat.errors import UserError
from cxrfeat.labels import LABELS, NO_FINDING
from cxrfeat.synth import (
    GROUPS,
    NIH_TRAIN,
    NIH_TRAIN_ROWS,
    draw_labels,
    positives_per_label,
    prevalence,
    write_synthetic,
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summary = write_synthetic(root, n_train=60, n_val=20, n_test=30, n_external=24, image_size=64, seed=5)
    return root, summary


def test_nih_layout(synth):
    root, summary = synth
    nih = root / "nih-cxr-lt"
    assert "SYNTHETIC" in (nih / "README.txt").read_text() and summary["synthetic"] is True
    for split, n in (("train", 60), ("val", 20), ("test", 30)):
        with open(nih / f"miccai2023_nih-cxr-lt_labels_{split}.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["id", *LABELS, NO_FINDING, "subj_id"]
        assert len(rows) == n + 1
        assert all(re.fullmatch(r"\d{8}_\d{3}\.png", r[0]) and re.fullmatch(r"\d{8}", r[-1]) for r in rows[1:])
        assert all(r[0].startswith(r[-1]) for r in rows[1:])
        ds = load_split("nih-cxr-lt", nih, split)
        assert len(ds) == n and all(p.is_file() for p in ds.paths)
        assert all(re.fullmatch(r"images_\d{3}", p.parent.parent.name) and p.parent.name == "images" for p in ds.paths)
        assert ds.label_names == [*LABELS, NO_FINDING]
        np.testing.assert_array_equal(ds.labels[:, -1] == 1, ds.labels[:, :-1].sum(1) == 0)
        assert summary["nih-cxr-lt"][split]["rows"] == n
    # Patients never cross splits.
    subjects = [set(load_split("nih-cxr-lt", nih, s).ids[k][:8] for k in range(5)) for s in ("train", "val", "test")]
    assert not (subjects[0] & subjects[1]) and not (subjects[1] & subjects[2])
    modes = {Image.open(p).mode for p in load_split("nih-cxr-lt", nih, "train").paths}
    assert modes == {"L", "RGBA"}  # mostly grey, a few RGBA as in the NIH download
    assert Image.open(load_split("nih-cxr-lt", nih, "val").paths[0]).size == (64, 64)


def test_mimic_layout(synth):
    root, summary = synth
    mimic = root / "mimic-cxr-lt"
    assert "SYNTHETIC" in (mimic / "README.txt").read_text()
    with open(mimic / "miccai2023_mimic-cxr-lt_labels_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    views = [r["ViewPosition"] for r in rows]
    assert "LATERAL" in views and len(rows) == 24 + views.count("LATERAL")
    cells = [r[name] for r in rows for name in LABELS]
    assert "" in cells and "-1.0" in cells  # unknown labels, both spellings
    assert all(re.fullmatch(r"files/p\d\d/p\d{8}/s5\d{7}/[0-9a-f-]+\.jpg", r["path"]) for r in rows)
    ds = load_split("mimic-cxr-lt", mimic, "test")
    assert len(ds) == 24 and all(p.is_file() and p.suffix == ".jpg" for p in ds.paths)
    assert (ds.labels == -1).any()
    im = Image.open(ds.paths[0])
    assert im.format == "JPEG" and im.mode == "L" and im.size[1] > im.size[0]  # a taller field of view
    assert summary["mimic-cxr-lt"]["test"]["positives"] == {n: c for n, c in ds.label_counts().items() if n in LABELS}


def test_every_label_has_positives_in_every_split(synth):
    root, _ = synth
    for dataset, split in [("nih-cxr-lt", "train"), ("nih-cxr-lt", "val"), ("nih-cxr-lt", "test"),
                           ("mimic-cxr-lt", "test")]:
        ds = load_split(dataset, root / dataset, split)
        counts = ds.label_counts()
        assert min(counts[n] for n in LABELS) >= 3, (dataset, split, counts)
        negatives = (ds.labels[:, : len(LABELS)] == 0).sum(0)
        assert negatives.min() >= 3


def test_labels_are_long_tailed_and_co_occur():
    prev = prevalence(NIH_TRAIN, NIH_TRAIN_ROWS)
    y = draw_labels(4000, prev, np.random.default_rng(0))
    counts = y.sum(0)
    assert counts.tolist() == list(positives_per_label(4000, prev).values())
    # The order of Table I survives (up to its own near-ties), and the head outnumbers the tail.
    assert np.corrcoef(np.argsort(np.argsort(-counts)), np.arange(19))[0, 1] > 0.95
    assert counts[0] > 8 * counts[-1]
    # Findings of a group co-occur more than chance; so do findings in general (latent sickness).
    i, j = LABELS.index("Cardiomegaly"), LABELS.index("Edema")
    assert np.corrcoef(y[:, i], y[:, j])[0, 1] > 0.15
    c = np.corrcoef(y.T.astype(float))
    assert c[np.triu_indices(19, 1)].mean() > 0.02
    assert all(name in LABELS for group in GROUPS for name in group)


def test_same_seed_same_data_and_refuses_to_overwrite_real_data(tmp_path):
    a = write_synthetic(tmp_path / "a", n_train=8, n_val=4, n_test=4, n_external=4, image_size=48, seed=1)
    b = write_synthetic(tmp_path / "b", n_train=8, n_val=4, n_test=4, n_external=4, image_size=48, seed=1)
    assert a["nih-cxr-lt"]["train"] == b["nih-cxr-lt"]["train"]
    for rel in ("nih-cxr-lt/miccai2023_nih-cxr-lt_labels_train.csv", "mimic-cxr-lt/miccai2023_mimic-cxr-lt_labels_test.csv"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    first = load_split("nih-cxr-lt", tmp_path / "a" / "nih-cxr-lt", "train").paths[0]
    assert first.read_bytes() == (tmp_path / "b" / first.relative_to(tmp_path / "a")).read_bytes()
    # A second run replaces an earlier synthetic dataset (no stale files).
    write_synthetic(tmp_path / "a", n_train=4, n_val=2, n_test=2, n_external=2, image_size=48, seed=2)
    assert len(list((tmp_path / "a" / "nih-cxr-lt").rglob("*.png"))) == 8
    # A folder that is not synthetic is never touched.
    real = tmp_path / "real" / "nih-cxr-lt"
    real.mkdir(parents=True)
    (real / "miccai2023_nih-cxr-lt_labels_train.csv").write_text("id\n")
    with pytest.raises(UserError, match="not a synthetic dataset"):
        write_synthetic(tmp_path / "real", n_train=4, n_val=2, n_test=2, n_external=2)
    assert (real / "miccai2023_nih-cxr-lt_labels_train.csv").read_text() == "id\n"
    with pytest.raises(UserError, match="--n-val must be at least 2"):
        write_synthetic(tmp_path / "c", n_val=1)


def _random_conv_features(paths):
    """Pooled features of a two-layer random-weight ReLU conv net (a cheap stand-in for a random ResNet)."""
    import jax
    import jax.numpy as jnp

    from cxrfeat.preprocess import load_and_preprocess

    x = jnp.asarray(np.stack([load_and_preprocess(p) for p in paths]))
    k1, k2 = jax.random.split(jax.random.key(0))
    w1 = jax.random.normal(k1, (7, 7, 3, 64)) * np.sqrt(2 / (49 * 3))
    w2 = jax.random.normal(k2, (3, 3, 64, 128)) * np.sqrt(2 / (9 * 64))
    dn = ("NHWC", "HWIO", "NHWC")
    h1 = jax.nn.relu(jax.lax.conv_general_dilated(x, w1, (4, 4), "SAME", dimension_numbers=dn))
    h2 = jax.nn.relu(jax.lax.conv_general_dilated(h1, w2, (2, 2), "SAME", dimension_numbers=dn))
    return np.concatenate([h1.mean((1, 2)), h2.mean((1, 2))], 1)


def test_labels_are_learnable_from_random_conv_features(tmp_path):
    """A linear head on random-network pooled features separates every label (the demo's premise)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    write_synthetic(tmp_path, n_train=200, n_val=2, n_test=100, n_external=100, image_size=128, seed=1)
    tr, te = (load_split("nih-cxr-lt", tmp_path / "nih-cxr-lt", s) for s in ("train", "test"))
    ex = load_split("mimic-cxr-lt", tmp_path / "mimic-cxr-lt", "test")
    xtr, xte, xex = (_random_conv_features(d.paths) for d in (tr, te, ex))
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    auc_test, auc_ext = [], []
    for j in range(len(LABELS)):
        clf = LogisticRegression(C=0.1, max_iter=3000).fit((xtr - mean) / std, tr.labels[:, j])
        auc_test.append(roc_auc_score(te.labels[:, j], clf.decision_function((xte - mean) / std)))
        known = ex.labels[:, j] >= 0
        auc_ext.append(roc_auc_score(ex.labels[known, j], clf.decision_function((xex[known] - mean) / std)))
    assert np.mean(auc_test) > 0.85 and min(auc_test) > 0.6, np.round(auc_test, 2)
    assert np.mean(auc_ext) > 0.75, np.round(auc_ext, 2)  # shifted, but still learnable


def test_wide_label_sets_read_back_in_canonical_order(tmp_path):
    """`--labels 40`: the 19 then the CXR-LT findings, in both layouts, each with positives in every split;
    the first 19 columns are the same draws as the default 19-label data."""
    from cxrfeat.labels import KNOWN_LABELS, LABEL_SETS

    assert LABEL_SETS["cxr-lt-2024"] == KNOWN_LABELS and len(KNOWN_LABELS) == 40
    assert len(LABEL_SETS["cxr-lt-2023"]) == 26 and LABEL_SETS["cxr-lt-2023"][-1] == NO_FINDING
    wide = write_synthetic(tmp_path / "wide", n_train=60, n_val=20, n_test=30, n_external=24, image_size=32,
                           seed=5, n_labels=40)
    assert wide["labels"] == list(KNOWN_LABELS)
    for split in ("train", "val", "test"):
        ds = load_split("nih-cxr-lt", tmp_path / "wide" / "nih-cxr-lt", split)
        assert ds.label_names == [*KNOWN_LABELS, NO_FINDING]
        assert (ds.labels[:, :40] == 1).sum(0).min() >= 3
    ext = load_split("mimic-cxr-lt", tmp_path / "wide" / "mimic-cxr-lt", "test")
    assert ext.label_names == [*KNOWN_LABELS, NO_FINDING]
    assert ((ext.labels[:, :40] == 1).sum(0) >= 1).all()
    write_synthetic(tmp_path / "narrow", n_train=60, n_val=20, n_test=30, n_external=24, image_size=32,
                             seed=5)
    a = load_split("nih-cxr-lt", tmp_path / "narrow" / "nih-cxr-lt", "train")
    b = load_split("nih-cxr-lt", tmp_path / "wide" / "nih-cxr-lt", "train")
    np.testing.assert_array_equal(a.labels[:, :19], b.labels[:, :19])
    with pytest.raises(UserError, match="--labels must be between 2 and 40"):
        write_synthetic(tmp_path / "x", n_labels=41)
