"""Datasets beyond the paper through the real extraction, and input faults the extraction names.

CXR-LT 2023 (MIMIC-CXR-LT with `fpath`, 26 classes, a `development` split) as a training set end to
end: synthetic images -> tiny ResNet -> stores -> `heads sweep --dataset mimic-cxr-lt --tasks all`.
"""

import json
import shutil

import numpy as np
import pytest
from test_datasets import CXR_LT_2023_COLUMNS
from typer.testing import CliRunner

from cxrfeat.cli import app as cxrfeat_app
from cxrfeat.errors import UserError
from cxrfeat.extract import extract
from cxrfeat.labels import LABEL_SETS, NO_FINDING
from cxrfeat.store import FeatureStore
from heads import runs
from heads.cli import app as heads_app


def _cxr_lt_2023_from(data, root):
    """The synthetic images laid out as a CXR-LT 2023 release: files/p10/p<subject>/s<study>/<dicom>.png,
    train.csv / development.csv / test.csv with fpath and the 26 classes (each row 2 positives, cycling)."""
    src = data / "nih-cxr-lt"
    findings = [c for c in CXR_LT_2023_COLUMNS if c != NO_FINDING]
    k = 0
    for split, ours in (("train", "train"), ("development", "val"), ("test", "test")):
        csv = (src / f"miccai2023_nih-cxr-lt_labels_{ours}.csv").read_text().splitlines()
        lines = ["dicom_id,subject_id,study_id,fpath," + ",".join(CXR_LT_2023_COLUMNS)]
        for row in csv[1:]:
            image = row.split(",", 1)[0]
            found = next(src.rglob(image))
            subject, study, dicom = f"1{k:07d}", f"5{k:07d}", f"d{k:04d}"
            rel = f"files/p1{subject[1]}/p{subject}/s{study}/{dicom}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(found, root / rel)
            positives = {findings[k % 25], findings[(3 * k + 1) % 25]}
            cells = ["1" if c in positives else "0" for c in CXR_LT_2023_COLUMNS]
            lines.append(f"{dicom},{subject},{study},{rel}," + ",".join(cells))
            k += 1
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_cxr_lt_2023_trains_end_to_end_with_all_its_labels(data, backbone, tmp_path):
    root = _cxr_lt_2023_from(data, tmp_path / "cxr-lt-2023")
    features = tmp_path / "features"
    for split, source in (("train", None), ("val", "development"), ("test", None)):
        extract(dataset="mimic-cxr-lt", split=split, source_split=source, data_dir=root, out=features,
                backbone=backbone, views=2 if split == "train" else 1, chunk_rows=4, batch_size=6,
                progress=False, announce=lambda m: None)
    val = FeatureStore.open(features / "mimic-cxr-lt" / "val.zarr").load()
    assert val.attrs["extract_args"]["source_split"] == "development" and val.attrs["split"] == "val"
    assert val.attrs["source"].endswith("development.csv") and len(val.ids) == 6
    train = FeatureStore.open(features / "mimic-cxr-lt" / "train.zarr").load()
    assert train.label_names == list(LABEL_SETS["cxr-lt-2023"])
    result = CliRunner().invoke(heads_app, [
        "sweep", "--dataset", "mimic-cxr-lt", "--tasks", "all", "--models", "cdl", "--seeds", "1",
        "--features", str(features), "--runs", str(tmp_path / "runs"), "--name", "lt23", "--max-epochs", "1"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "lt23" / "cxr-25" / "cdl" / "seed-1"
    assert runs.is_done(run)
    config = json.loads((run / "config.json").read_text())
    assert config["labels"] == [n for n in LABEL_SETS["cxr-lt-2023"] if n != NO_FINDING]
    with np.load(run / "predictions" / "mimic-cxr-lt.npz") as z:
        assert z["y_prob"].shape == (6, 25)
    assert list(json.loads((run / "metrics.json").read_text())["test_sets"]) == ["mimic-cxr-lt"]
    empty = CliRunner().invoke(heads_app, [  # `all` is one cell once resolved: slice 1 of 2 is empty
        "sweep", "--dataset", "mimic-cxr-lt", "--tasks", "all", "--models", "cdl", "--seeds", "1", "--shard", "1/2",
        "--features", str(features), "--runs", str(tmp_path / "runs"), "--name", "lt23b", "--max-epochs", "1"])
    assert empty.exit_code == 2 and "slice 1 of 2 is empty" in empty.output, empty.output


def test_extraction_warns_about_missing_task_labels_and_stores_named_extra_columns(data, backbone, tmp_path):
    src = data / "nih-cxr-lt"
    rows = (src / "miccai2023_nih-cxr-lt_labels_train.csv").read_text().splitlines()[1:5]
    lines = ["id,Hernia,Scoliosis"] + [f"{r.split(',', 1)[0]},{k % 2},{(k + 1) % 2}" for k, r in enumerate(rows)]
    (src.parent / "mine").mkdir()
    csv = src.parent / "mine" / "train.csv"
    csv.write_text("\n".join(lines) + "\n")
    said = []
    path, _ = extract(dataset="csv", split="train", data_dir=src, csv=csv, label_columns=["Scoliosis"],
                      out=tmp_path, backbone=backbone, views=1, chunk_rows=4, batch_size=4, progress=False,
                      announce=said.append)
    assert any(f"warning: {csv} has no column for 18 of the 19 task labels" in m and "CXR-8" in m for m in said), said
    feats = FeatureStore.open(path).load()
    assert feats.label_names == ["Hernia", "Scoliosis"]
    np.testing.assert_array_equal(feats.labels, [[0, 1], [1, 0], [0, 1], [1, 0]])
    assert feats.attrs["extract_args"]["label_columns"] == ["Scoliosis"]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--workers", "0", "--workers must be >= 1 (decode threads), got 0"),
    ("--views", "0", "--views must be >= 1, got 0"),
    ("--batch-size", "-1", "--batch-size must be >= 1, got -1"),
])
def test_impossible_extraction_options_are_one_line_errors(tmp_path, option, value, message):
    result = CliRunner().invoke(cxrfeat_app, ["extract", "--split", "train", "--data-dir", str(tmp_path),
                                              "--out", str(tmp_path / "f"), "--weights", "random", option, value])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "f").exists()


def test_a_store_without_checksums_is_refused_with_the_command_that_rebuilds_it(data, backbone, tmp_path):
    """A store written before the integrity sidecars (or with them deleted) cannot be verified: refused."""
    path, _ = extract(dataset="nih-cxr-lt", split="val", data_dir=data / "nih-cxr-lt", out=tmp_path, backbone=backbone,
                      views=1, chunk_rows=4, batch_size=4, progress=False, announce=lambda m: None)
    FeatureStore.open(path).load()
    shutil.rmtree(path / "checksums")
    with pytest.raises(UserError, match=r"val.zarr: feature store without checksums .*Rebuild it with: "
                                        r"cxrfeat extract --dataset nih-cxr-lt --split val .*--overwrite"):
        FeatureStore.open(path).load()
