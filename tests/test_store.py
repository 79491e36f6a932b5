"""The Zarr feature store: creation, chunked writes, completion, refusal of incomplete/foreign stores."""

import shutil

import numpy as np
import pytest

from cxrfeat.errors import UserError
from cxrfeat.store import FeatureStore, check_compatible, ids_digest, layout_of, layout_path

NAMES = ["Infiltration", "Effusion", "Atelectasis"]


def _make(path, n=10, views=2, dim=4, chunk_rows=4, dtype="float32", backbone="random", dataset="nih-cxr-lt",
          split="train"):
    ids = [f"img{i:03d}.png" for i in range(n)]
    labels = np.random.default_rng(0).integers(-1, 2, size=(n, len(NAMES))).astype(np.int8)
    store = FeatureStore.create(
        path, ids=ids, labels=labels, label_names=NAMES, views=views, dim=dim, dtype=dtype,
        attrs={"dataset": dataset, "split": split, "backbone": {"name": backbone},
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


def test_layout_maps_dataset_and_split_to_a_path_and_back(tmp_path):
    path = layout_path(tmp_path / "features", "mimic-cxr-lt", "test")
    assert path == tmp_path / "features" / "mimic-cxr-lt" / "test.zarr"
    assert layout_of(path) == ("mimic-cxr-lt", "test")
    assert layout_of(tmp_path / "features" / "nih-cxr-lt" / "val.zarr.new") is None


def test_a_store_of_another_dataset_or_split_is_refused_naming_both(tmp_path):
    """The MIMIC test store copied in as features/nih-cxr-lt/val.zarr is not the NIH validation split."""
    store, _, _ = _make(tmp_path / "features" / "mimic-cxr-lt" / "test.zarr", dataset="mimic-cxr-lt", split="test")
    _fill(store)
    shutil.copytree(store.path, tmp_path / "features" / "nih-cxr-lt" / "val.zarr")
    copied = tmp_path / "features" / "nih-cxr-lt" / "val.zarr"
    with pytest.raises(UserError) as info:
        FeatureStore.open(copied, dataset="nih-cxr-lt", split="val")
    msg = str(info.value)
    assert msg.startswith(f"{copied}: this feature store holds mimic-cxr-lt test, not nih-cxr-lt val (copied or renamed?)")
    assert str(tmp_path / "features" / "mimic-cxr-lt" / "test.zarr") in msg and "\n" not in msg
    with pytest.raises(UserError, match="holds mimic-cxr-lt test, not val"):
        FeatureStore.open(copied, split="val")
    # The right expectation, or none, opens it; so does a store that does not record them (older versions).
    assert FeatureStore.open(copied, dataset="mimic-cxr-lt", split="test").load().ids.size == 10
    FeatureStore.open(copied)
    old, _, _ = _make(tmp_path / "old" / "nih-cxr-lt" / "val.zarr", dataset=None, split=None)
    FeatureStore.open(old.path, mode="r+", require_complete=False, dataset="nih-cxr-lt", split="val")


@pytest.mark.parametrize("chunk", ["embeddings/c/1/0/0", "labels/c/0/0", "ids/c/0", "valid/c/2"])
def test_load_refuses_a_damaged_store_however_it_was_opened(tmp_path, chunk):
    """Never fill values: `load` verifies the store itself when `open` did not (verify=False, incomplete)."""
    store, _, _ = _make(tmp_path / "s.zarr")
    _fill(store)
    (tmp_path / "s.zarr" / chunk).unlink()
    for opened in (lambda: FeatureStore.open(tmp_path / "s.zarr"),
                   lambda: FeatureStore.open(tmp_path / "s.zarr", verify=False).load(),
                   lambda: FeatureStore.open(tmp_path / "s.zarr", require_complete=False).load()):
        with pytest.raises(UserError, match=rf"damaged feature store: {chunk}: missing.*cxrfeat verify"):
            opened()
    # An incomplete store is never loaded either (its unwritten chunks are fill values).
    half, _, _ = _make(tmp_path / "half.zarr")
    half.write_chunk(0, np.zeros((4, 2, 4), np.float32))
    with pytest.raises(UserError, match="incomplete feature store"):
        FeatureStore.open(tmp_path / "half.zarr", require_complete=False).load()
