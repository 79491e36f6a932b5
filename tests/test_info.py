"""`cxrfeat synth` and `cxrfeat info` through the CLI: dataset folders and (in)complete stores."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrfeat.cli import app
from cxrfeat.labels import LABELS, NO_FINDING
from cxrfeat.store import FeatureStore

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    result = runner.invoke(app, ["synth", str(root), "--n-train", "30", "--n-val", "10", "--n-test", "12",
                                 "--n-external", "10", "--image-size", "48", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output and "Hernia" in result.output
    return root


def test_info_on_a_dataset_folder(data):
    result = runner.invoke(app, ["info", str(data / "nih-cxr-lt")], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "SYNTHETIC" in out and "nih-cxr-lt" in out
    assert all(name in out for name in LABELS) and NO_FINDING in out
    assert out.index("Infiltration") < out.index("Hernia")  # Table I order
    rows_line = next(line for line in out.splitlines() if "rows" in line and "30" in line)
    assert "10" in rows_line and "12" in rows_line and "52" in rows_line  # train, val, test, total

    result = runner.invoke(app, ["info", str(data / "mimic-cxr-lt"), "--json"])
    info = json.loads(result.output)
    assert info["dataset"] == "mimic-cxr-lt" and info["synthetic"] is True
    assert info["splits"]["test"]["rows"] == 10  # lateral rows dropped
    assert sum(info["splits"]["test"]["unknown"].values()) > 0


def _store(path, *, finish):
    ids = [f"img{i}.png" for i in range(6)]
    labels = np.zeros((6, 3), np.int8)
    labels[:4, 0] = 1
    labels[5, 1] = -1
    store = FeatureStore.create(path, ids=ids, labels=labels, label_names=["Effusion", "Hernia", NO_FINDING],
                                views=2, dim=8, dtype="float16", chunk_rows=3,
                                attrs={"dataset": "nih-cxr-lt", "split": "val", "synthetic": True,
                                       "backbone": {"name": "random", "random": True, "seed": 0}},
                                settings={})
    store.write_chunk(0, np.ones((3, 2, 8), np.float32))
    if finish:
        store.write_chunk(1, np.ones((3, 2, 8), np.float32), valid=np.array([True, True, False]))
        store.finalize(["img5.png"])
    return path


def test_info_on_an_incomplete_and_a_complete_store(tmp_path):
    half = _store(tmp_path / "features" / "nih-cxr-lt" / "half.zarr", finish=False)
    result = runner.invoke(app, ["info", str(half)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "INCOMPLETE" in result.output and "1/2 chunks" in result.output
    assert "RANDOM" in result.output and "2 x 8" in result.output and "float16" in result.output

    full = _store(tmp_path / "features" / "nih-cxr-lt" / "val.zarr", finish=True)
    info = json.loads(runner.invoke(app, ["info", str(full), "--json"]).output)
    assert info["complete"] is True and info["chunks_done"] == info["chunks_total"] == 2
    assert info["rows"] == 6 and info["valid_rows"] == 5 and info["skipped_ids"] == ["img5.png"]
    assert info["views"] == 2 and info["dim"] == 8 and info["dtype"] == "float16"
    assert info["positives"] == {"Effusion": 4, "Hernia": 0, NO_FINDING: 0}
    assert info["unknown"]["Hernia"] == 0  # the unknown label sits on the skipped row

    # A folder of stores: one table over the splits, then each store.
    result = runner.invoke(app, ["info", str(tmp_path / "features" / "nih-cxr-lt")], terminal_width=200)
    assert result.exit_code == 0 and "complete" in result.output and "img5.png" in result.output


def test_info_errors_are_one_clear_line(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such file or folder" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["info", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "neither a dataset folder" in result.output and "image cache" in result.output


def test_info_on_folders_of_stores_caches_and_datasets(data, tmp_path):
    """`cxrfeat info features` (stores two levels down, image caches three) and `cxrfeat info data`."""
    from cxrfeat.datasets import load_split
    from cxrfeat.imagecache import build_cache, cache_path

    features = tmp_path / "features"
    _store(features / "nih-cxr-lt" / "val.zarr", finish=True)
    _store(features / "nih-cxr-lt" / "half.zarr", finish=False)
    cache = cache_path(features / "images", "nih-cxr-lt", "train")
    build_cache(load_split("nih-cxr-lt", data / "nih-cxr-lt", "train"), cache, limit=4)

    # An image cache on its own: understood (it has zarr.json and `images`, not `embeddings`).
    result = runner.invoke(app, ["info", str(cache)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "image cache" in result.output and "complete" in result.output and "224 x 224 x 3" in result.output
    info = json.loads(runner.invoke(app, ["info", str(cache), "--json"]).output)
    assert info["kind"] == "image-cache" and info["rows"] == 4 and info["synthetic"] is True
    assert info["chunks_done"] == info["chunks_total"] and info["dataset"] == "nih-cxr-lt"
    ds = load_split("nih-cxr-lt", data / "nih-cxr-lt", "train")
    assert info["positives"] == {n: int((ds.labels[:4, j] == 1).sum()) for j, n in enumerate(ds.label_names)}

    # The whole features folder: both stores and the cache.
    found = json.loads(runner.invoke(app, ["info", str(features), "--json"]).output)
    assert [(i["kind"], i["split"]) for i in found] == [("image-cache", "train"), ("store", "val"), ("store", "val")]
    assert {i["path"] for i in found} == {str(cache), str(features / "nih-cxr-lt" / "half.zarr"),
                                          str(features / "nih-cxr-lt" / "val.zarr")}
    result = runner.invoke(app, ["info", str(features)], terminal_width=200)
    assert result.exit_code == 0 and "INCOMPLETE" in result.output and "image cache" in result.output, result.output

    # A folder of dataset folders.
    found = json.loads(runner.invoke(app, ["info", str(data), "--json"]).output)
    assert [(i["kind"], i["dataset"]) for i in found] == [("dataset", "mimic-cxr-lt"), ("dataset", "nih-cxr-lt")]
    result = runner.invoke(app, ["info", str(data)], terminal_width=200)
    assert result.exit_code == 0 and result.output.count("SYNTHETIC") >= 2


@pytest.mark.parametrize("damage", ["embeddings/c/1/0/0", "labels/c/0/0", "ids/c/0", "corrupt labels/c/0/0"])
def test_info_on_a_damaged_store_says_so_in_one_line_without_counts(tmp_path, damage):
    """A deleted chunk (or one that fails its checksum) of any array: no "complete", no counts from fill values."""
    path = _store(tmp_path / "features" / "nih-cxr-lt" / "val.zarr", finish=True)
    chunk = damage.split()[-1]
    if damage.startswith("corrupt"):
        (path / chunk).write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 9)
    else:
        (path / chunk).unlink()
    result = runner.invoke(app, ["info", str(path)], terminal_width=200)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: damaged feature store: {chunk}: ")
    assert ("missing" if chunk == damage else "checksum mismatch") in lines[0]
    assert f"cxrfeat verify {path}" in lines[0] and ("--repair" in lines[0] or "--overwrite" in lines[0])
    assert "complete" not in result.output and "Effusion" not in result.output
    # In a listing of a folder the damaged store is that line, the intact ones are shown, and the exit status is 2.
    _store(tmp_path / "features" / "nih-cxr-lt" / "test.zarr", finish=True)
    result = runner.invoke(app, ["info", str(tmp_path / "features")], terminal_width=200)
    assert result.exit_code == 2 and "test.zarr" in result.output and "Effusion" in result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == lines
    found = json.loads(runner.invoke(app, ["info", str(tmp_path / "features"), "--json"]).stdout)
    # listed val (the damaged one), then test: train, val, test is the order of every listing
    assert [i["kind"] for i in found] == ["error", "store"] and found[0]["error"] == lines[0][len("error: "):]


def test_info_on_a_damaged_incomplete_store(tmp_path):
    path = _store(tmp_path / "half.zarr", finish=False)
    (path / "labels/c/0/0").unlink()
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 2 and "labels/c/0/0: missing" in result.output and "Effusion" not in result.output


def test_info_on_a_damaged_image_cache(data, tmp_path):
    from cxrfeat.datasets import load_split
    from cxrfeat.imagecache import build_cache

    cache = build_cache(load_split("nih-cxr-lt", data / "nih-cxr-lt", "val"), tmp_path / "c.zarr", limit=2).path
    (cache / "labels/c/0/0").unlink()
    result = runner.invoke(app, ["info", str(cache)])
    assert result.exit_code == 2 and f"{cache}: damaged image cache: labels/c/0/0: missing" in result.output
    assert "heads finetune" in result.output and len(result.output.strip().splitlines()) == 1
    (cache / "images/zarr.json").write_text('{"shape": [2, ')
    result = runner.invoke(app, ["info", str(cache)])
    assert result.exit_code == 2 and "internal error" not in result.output, result.output
    assert f"error: {cache / 'images/zarr.json'}: not valid JSON (line 1 column 15)" in result.output
