"""The Zarr feature store: creation, chunked writes, completion, refusal of incomplete/foreign stores."""

import numpy as np
import pytest

from cxrfeat.errors import UserError
from cxrfeat.store import FeatureStore, check_compatible, ids_digest

NAMES = ["Infiltration", "Effusion", "Atelectasis"]


def _make(path, n=10, views=2, dim=4, chunk_rows=4, dtype="float32", backbone="random"):
    ids = [f"img{i:03d}.png" for i in range(n)]
    labels = np.random.default_rng(0).integers(-1, 2, size=(n, len(NAMES))).astype(np.int8)
    store = FeatureStore.create(
        path, ids=ids, labels=labels, label_names=NAMES, views=views, dim=dim, dtype=dtype,
        attrs={"dataset": "nih-cxr-lt", "split": "train", "backbone": {"name": backbone},
               "preprocessing": {"crop": 224}},
        settings={"x": 1}, chunk_rows=chunk_rows,
    )
    return store, ids, labels


def _fill(store, rng=np.random.default_rng(1)):
    full = rng.normal(size=(store.n_rows, store.views, 4)).astype(np.float32)
    for i in range(store.n_chunks):
        a, b = store.chunk_bounds(i)
        store.write_chunk(i, full[a:b])
    store.finalize([])
    return full


def test_roundtrip(tmp_path):
    store, ids, labels = _make(tmp_path / "s.zarr")
    assert store.n_chunks == 3 and store.chunk_bounds(2) == (8, 10)
    full = _fill(store)
    feats = FeatureStore.open(tmp_path / "s.zarr").load()
    np.testing.assert_array_equal(feats.embeddings, full)
    np.testing.assert_array_equal(feats.labels, labels)
    assert list(feats.ids) == ids and feats.label_names == NAMES
    sub = FeatureStore.open(tmp_path / "s.zarr").load(["Atelectasis", "Infiltration"])
    np.testing.assert_array_equal(sub.labels, labels[:, [2, 0]])


def test_incomplete_store_refused_with_instructions(tmp_path):
    store, _, _ = _make(tmp_path / "s.zarr")
    store.write_chunk(0, np.zeros((4, 2, 4), np.float32))
    assert store.done_chunks().tolist() == [True, False, False]
    with pytest.raises(UserError, match="incomplete feature store .*1/3.*run.*again"):
        FeatureStore.open(tmp_path / "s.zarr")
    with pytest.raises(RuntimeError):
        store.finalize([])


def test_missing_label_and_foreign_store(tmp_path):
    store, _, _ = _make(tmp_path / "s.zarr")
    _fill(store)
    with pytest.raises(UserError, match="no label.*Hernia"):
        FeatureStore.open(tmp_path / "s.zarr").load(["Hernia"])
    with pytest.raises(UserError, match="no feature store"):
        FeatureStore.open(tmp_path / "nothing.zarr")


def test_invalid_rows_dropped_and_nan_refused(tmp_path):
    store, ids, _ = _make(tmp_path / "s.zarr", n=4, chunk_rows=4)
    emb = np.ones((4, 2, 4), np.float32)
    store.write_chunk(0, emb, valid=np.array([True, False, True, True]))
    store.finalize([ids[1]])
    feats = FeatureStore.open(tmp_path / "s.zarr").load()
    assert list(feats.ids) == [ids[0], ids[2], ids[3]]

    bad, _, _ = _make(tmp_path / "nan.zarr", n=4, chunk_rows=4)
    emb[2, 1, 0] = np.nan
    bad.write_chunk(0, emb)
    bad.finalize([])
    with pytest.raises(UserError, match="NaN or Inf.*img002"):
        FeatureStore.open(tmp_path / "nan.zarr").load()


def test_check_compatible(tmp_path):
    a, _, _ = _make(tmp_path / "a.zarr")
    b, _, _ = _make(tmp_path / "b.zarr", backbone="microsoft/resnet-50")
    _fill(a)
    _fill(b)
    with pytest.raises(UserError, match="differ in backbone"):
        check_compatible([FeatureStore.open(tmp_path / "a.zarr").load(), FeatureStore.open(tmp_path / "b.zarr").load()])


def test_ids_digest_order_sensitive():
    assert ids_digest(["a", "b"]) != ids_digest(["b", "a"])
    assert ids_digest(["ab", "c"]) != ids_digest(["a", "bc"])
