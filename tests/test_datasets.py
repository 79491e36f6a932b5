"""Dataset readers: the real NIH-CXR-LT label files (Table I), image layouts, MIMIC rules, errors."""

from pathlib import Path

import numpy as np
import pytest

from cxrfeat.datasets import DATASETS, image_index, load_split
from cxrfeat.errors import UserError
from cxrfeat.labels import LABEL_SETS, LABELS, NO_FINDING

# The repository is cloned with shared/ beside it.
REAL_NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-cxr-lt"

# The paper's Table I, NIH-CXR-LT Val and Test columns (canonical label order).
TABLE_I_VAL = (1996, 1663, 1272, 667, 764, 764, 544, 485, 318, 272, 269, 221, 183, 173, 49, 32, 33, 22, 35)
TABLE_I_TEST = (5159, 3735, 2700, 1305, 1329, 2106, 1497, 902, 868, 917, 751, 813, 365, 452, 95, 55, 69, 143, 62)

HEADER = "id," + ",".join(LABELS) + ",No Finding,subj_id\n"


@pytest.mark.skipif(not REAL_NIH.is_dir(), reason=f"the real NIH-CXR-LT label files are not at {REAL_NIH}")
@pytest.mark.parametrize(("split", "rows", "expected"), [("val", 12533, TABLE_I_VAL), ("test", 21081, TABLE_I_TEST)])
def test_real_nih_label_counts_equal_table_i(split, rows, expected):
    ds = load_split("nih-cxr-lt", REAL_NIH, split)
    assert len(ds) == rows == len(ds.paths) == len(ds.rows) == ds.labels.shape[0]
    assert ds.label_names == [*LABELS, NO_FINDING]
    assert ds.labels.dtype == np.int8 and set(np.unique(ds.labels)) <= {0, 1}
    counts = ds.label_counts()
    assert tuple(counts[name] for name in LABELS) == expected
    assert ds.rows[0] == 2 and ds.ids[0].endswith(".png")
    assert ds.source == REAL_NIH / f"miccai2023_nih-cxr-lt_labels_{split}.csv"
    # No Finding is exactly the rows without any of the 19 labels.
    np.testing.assert_array_equal(ds.labels[:, -1] == 1, ds.labels[:, :-1].sum(1) == 0)


def _nih(tmp_path, lines, split="train", header=HEADER):
    (tmp_path / f"miccai2023_nih-cxr-lt_labels_{split}.csv").write_text(header + "".join(lines))
    return tmp_path


def _row(name, positives=(), no_finding=None, subj="00000001"):
    cells = ["1" if label in positives else "0" for label in LABELS]
    nf = no_finding if no_finding is not None else ("0" if positives else "1")
    return f"{name},{','.join(cells)},{nf},{subj}\n"


@pytest.mark.parametrize("layout", ["flat", "images", "nested"])
def test_nih_finds_images_in_every_layout(tmp_path, layout):
    names = ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    folders = {
        "flat": [tmp_path] * 3,
        "images": [tmp_path / "images"] * 3,
        "nested": [tmp_path / "images_001" / "images"] * 2 + [tmp_path / "images_002" / "images"],
    }[layout]
    for folder, name in zip(folders, names, strict=True):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    _nih(tmp_path, [_row(n, ["Hernia"] if k == 1 else []) for k, n in enumerate(names)])
    ds = load_split("nih-cxr-lt", tmp_path, "train")
    assert ds.paths == [f / n for f, n in zip(folders, names, strict=True)]
    assert ds.ids == names and ds.rows == [2, 3, 4]
    assert ds.label_counts()["Hernia"] == 1 and ds.label_counts()[NO_FINDING] == 2


def test_missing_image_keeps_a_path_for_the_error_message(tmp_path):
    _nih(tmp_path, [_row("00000009_000.png")])
    ds = load_split("nih-cxr-lt", tmp_path, "train")
    assert ds.paths == [tmp_path / "00000009_000.png"] and not ds.paths[0].exists()


def test_image_index_prefers_nothing_twice(tmp_path):
    (tmp_path / "images_002" / "images").mkdir(parents=True)
    (tmp_path / "images_002" / "images" / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    assert image_index(tmp_path) == {"a.png": tmp_path / "images_002" / "images" / "a.png", "b.png": tmp_path / "b.png"}


def test_aliases_and_column_order_map_to_canonical(tmp_path):
    # Alphabetical columns (as in the real files) with alias spellings and only some labels.
    header = "id,Atelectasis,Pleural_Thickening,Pleural Effusion,No_Finding,subj_id\n"
    _nih(tmp_path, ["a.png,1,0,1,0,1\n", "b.png,0,1,,0,2\n"], header=header)
    ds = load_split("nih-cxr-lt", tmp_path, "train")
    assert ds.label_names == ["Effusion", "Atelectasis", "Pleural Thickening", NO_FINDING]
    np.testing.assert_array_equal(ds.labels, [[1, 1, 0, 0], [-1, 0, 1, 0]])  # blank -> -1 (unknown)


@pytest.mark.parametrize(
    ("lines", "header", "message"),
    [
        ([_row("a.png"), _row("a.png")], HEADER, r"duplicate id 'a.png' on lines 2 and 3"),
        ([_row("a.png"), _row("b.png").replace(",0,", ",2,", 1)], HEADER, r"line 3, column 'Infiltration': label value '2'"),
        ([_row("a.png").replace(",0,", ",yes,", 1)], HEADER, r"line 2, column 'Infiltration'.*'yes'"),
        (["a.png,1\n"], HEADER, r"line 2: 2 fields, the header has 22"),
        (["a.png,1\n"], "name,Hernia\n", r"missing column\(s\): needs id; it has name, Hernia"),
        (["a.png,1\n"], "id,Fractured Elbow\n", r"no label columns found"),
        (["a.png,1,0\n"], "id,Effusion,Pleural Effusion\n", r"both name the label 'Effusion'"),
    ],
)
def test_bad_csv_errors_name_file_line_and_column(tmp_path, lines, header, message):
    _nih(tmp_path, lines, header=header)
    with pytest.raises(UserError, match=message) as info:
        load_split("nih-cxr-lt", tmp_path, "train")
    assert "miccai2023_nih-cxr-lt_labels_train.csv" in str(info.value)


def test_missing_csv_and_unknown_dataset(tmp_path):
    with pytest.raises(UserError, match=r"miccai2023_nih-cxr-lt_labels_val.csv: label CSV not found"):
        load_split("nih-cxr-lt", tmp_path, "val")
    with pytest.raises(UserError, match=r"unknown --dataset 'chexpert'"):
        load_split("chexpert", tmp_path, "val")
    assert DATASETS == ("nih-cxr-lt", "mimic-cxr-lt", "csv")


MIMIC_HEADER = "dicom_id,subject_id,study_id,path,ViewPosition,Effusion,Cardiomegaly,No Finding,Support Devices\n"
MIMIC_ROWS = [
    "d1,10000032,50414267,files/p10/p10000032/s50414267/d1.jpg,PA,1.0,0.0,0.0,1\n",
    "d2,10000032,50414267,files/p10/p10000032/s50414267/d2.jpg,LATERAL,1.0,1.0,0.0,0\n",
    "d3,10000033,50414268,files/p10/p10000033/s50414268/d3.jpg,AP,,-1.0,0.0,0\n",
    "d4,10000034,50414269,files/p10/p10000034/s50414269/d4.jpg, ap ,0,1,0,1\n",
]


@pytest.mark.parametrize("name", ["miccai2023_mimic-cxr-lt_labels_test.csv", "mimic-cxr-lt_test.csv", "labels.csv"])
def test_mimic_frontal_only_unknowns_and_all_task_labels(tmp_path, name):
    (tmp_path / name).write_text(MIMIC_HEADER + "".join(MIMIC_ROWS))
    ds = load_split("mimic-cxr-lt", tmp_path, "test")
    assert ds.name == "mimic-cxr-lt" and ds.source == tmp_path / name
    assert ds.ids == ["d1", "d3", "d4"] and ds.rows == [2, 4, 5]  # the LATERAL row is dropped
    assert ds.paths[0] == tmp_path / "files/p10/p10000032/s50414267/d1.jpg"
    assert ds.label_names == [*LABELS, "Support Devices", NO_FINDING]  # absent task labels kept, all unknown; CXR-LT findings read
    col = {n: ds.labels[:, j].tolist() for j, n in enumerate(ds.label_names)}
    assert col["Effusion"] == [1, -1, 0] and col["Cardiomegaly"] == [0, -1, 1]
    assert col["Hernia"] == [-1, -1, -1] and col[NO_FINDING] == [0, 0, 0]


def test_mimic_builds_paths_without_a_path_column_and_keeps_all_views_without_viewposition(tmp_path):
    (tmp_path / "mimic-cxr-lt_test.csv").write_text("dicom_id,subject_id,study_id,Edema\nd1,10000032,50414267,1\n")
    ds = load_split("mimic-cxr-lt", tmp_path, "test")
    assert ds.paths == [tmp_path / "files/p10/p10000032/s50414267/d1.jpg"]
    (tmp_path / "mimic-cxr-lt_test.csv").write_text("dicom_id,Edema\nd1,1\n")
    with pytest.raises(UserError, match=r"needs path or fpath or subject_id\+study_id"):
        load_split("mimic-cxr-lt", tmp_path, "test")


def test_mimic_without_a_unique_csv_says_what_it_looked_for(tmp_path):
    with pytest.raises(UserError, match=r"looked for miccai2023_mimic-cxr-lt_labels_test.csv.*found no CSV"):
        load_split("mimic-cxr-lt", tmp_path, "test")
    (tmp_path / "a.csv").write_text("x\n")
    (tmp_path / "b.csv").write_text("x\n")
    with pytest.raises(UserError, match=r"found a.csv, b.csv"):
        load_split("mimic-cxr-lt", tmp_path, "test")


def test_generic_csv_with_path_or_id_column(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(b"")
    (tmp_path / "test.csv").write_text("path,age,Hernia,Pleural_Thickening\nimgs/x.png,54,1,0\n/abs/y.png,60,0,-1\n")
    ds = load_split("csv", tmp_path, "test")
    assert ds.name == "csv" and ds.ids == ["imgs/x.png", "/abs/y.png"]
    assert ds.paths == [tmp_path / "imgs/x.png", Path("/abs/y.png")]
    assert ds.label_names == ["Pleural Thickening", "Hernia"]
    np.testing.assert_array_equal(ds.labels, [[0, 1], [-1, 0]])
    other = tmp_path / "elsewhere.csv"
    other.write_text("id,Mass\nx.png,1\n")
    ds = load_split("csv", tmp_path / "imgs", "whatever", csv=other)
    assert ds.paths == [tmp_path / "imgs" / "x.png"] and ds.source == other
    other.write_text("name,Mass\nx.png,1\n")
    with pytest.raises(UserError, match=r"needs id or path"):
        load_split("csv", tmp_path, "test", csv=other)


CXR_LT_2023_COLUMNS = (
    "Atelectasis", "Calcification of the Aorta", "Cardiomegaly", "Consolidation", "Edema", "Emphysema",
    "Enlarged Cardiomediastinum", "Fibrosis", "Fracture", "Hernia", "Infiltration", "Lung Lesion", "Lung Opacity",
    "Mass", "No Finding", "Nodule", "Pleural Effusion", "Pleural Other", "Pleural Thickening", "Pneumomediastinum",
    "Pneumonia", "Pneumoperitoneum", "Pneumothorax", "Subcutaneous Emphysema", "Support Devices", "Tortuous Aorta")


def _cxr_lt_2023(tmp_path, split, rows):
    """A CXR-LT 2023 label file: dicom_id, subject_id, study_id, fpath and the 26 classes (No Finding incl.),
    spelled and ordered as in the release."""
    classes = CXR_LT_2023_COLUMNS
    lines = ["dicom_id,subject_id,study_id,fpath," + ",".join(classes)]
    for k, positives in enumerate(rows):
        cells = ["1" if c in positives else "0" for c in classes]
        lines.append(f"{split[:3]}{k},1000{k:04d},5000{k:04d},files/p10/p1000{k:04d}/s5000{k:04d}/{split[:3]}{k}.jpg,"
                     + ",".join(cells))
    (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")


def test_cxr_lt_2023_trains_from_fpath_with_its_26_classes_and_maps_development_to_val(tmp_path):
    _cxr_lt_2023(tmp_path, "train", [{"Atelectasis"}, {"Calcification of the Aorta", "Pleural Effusion"}, {"No Finding"}])
    _cxr_lt_2023(tmp_path, "development", [{"Lung Opacity"}, {"Tortuous Aorta"}])
    ds = load_split("mimic-cxr-lt", tmp_path, "train")
    assert ds.split == "train" and ds.source == tmp_path / "train.csv" and len(ds) == 3
    assert ds.paths[1] == tmp_path / "files/p10/p10000001/s50000001/tra1.jpg"
    assert ds.label_names == list(LABEL_SETS["cxr-lt-2023"])  # canonical spelling and order
    assert ds.label_names[-1] == NO_FINDING and ds.missing_labels == []
    col = {n: ds.labels[:, j].tolist() for j, n in enumerate(ds.label_names)}
    assert col["Effusion"] == [0, 1, 0] and col["Calcification of the Aorta"] == [0, 1, 0] and col[NO_FINDING] == [0, 0, 1]
    with pytest.raises(UserError, match=r"found development.csv, train.csv.*--source-split development"):
        load_split("mimic-cxr-lt", tmp_path, "val")
    val = load_split("mimic-cxr-lt", tmp_path, "val", source_split="development")
    assert val.split == "val" and val.source == tmp_path / "development.csv" and val.ids == ["dev0", "dev1"]
    assert val.label_names == ds.label_names


def test_generic_csv_takes_named_extra_label_columns_after_the_known_ones(tmp_path):
    (tmp_path / "train.csv").write_text("fpath,Implant,Mass,age,Scoliosis\na.png,1,0,50,0\nb.png,0,1,61,-1\n")
    ds = load_split("csv", tmp_path, "train", label_columns=["Scoliosis", "Implant", "Mass"])
    assert ds.ids == ["a.png", "b.png"] and ds.paths == [tmp_path / "a.png", tmp_path / "b.png"]
    assert ds.label_names == ["Mass", "Scoliosis", "Implant"]  # known labels first, then the named ones in order
    np.testing.assert_array_equal(ds.labels, [[0, 0, 1], [1, -1, 0]])
    assert load_split("csv", tmp_path, "train").label_names == ["Mass"]
    with pytest.raises(UserError, match=r"--label-columns 'Lordosis': .*train.csv has no such column"):
        load_split("csv", tmp_path, "train", label_columns=["Lordosis"])
    with pytest.raises(UserError, match=r"train.csv line 2, column 'age': label value '50'"):
        load_split("csv", tmp_path, "train", label_columns=["age"])
    with pytest.raises(UserError, match=r"--label-columns is for --dataset csv"):
        load_split("nih-cxr-lt", tmp_path, "train", label_columns=["Scoliosis"])


def test_non_utf8_byte_is_reported_by_line_not_byte_offset(tmp_path):
    """A bad byte on line 30002 of a 40,000-row CSV is reported there (not at a position in a read buffer)."""
    rows = [_row(f"{k:08d}.png") for k in range(40_000)]
    raw = (HEADER + "".join(rows)).encode()
    lines = raw.split(b"\n")
    lines[30001] = lines[30001].replace(b".png", b".p\xe9g", 1)  # line 30002 of the file (header = line 1)
    (tmp_path / "miccai2023_nih-cxr-lt_labels_train.csv").write_bytes(b"\n".join(lines))
    with pytest.raises(UserError, match=r"labels_train.csv line 30002, column 11: byte 0xe9 is not UTF-8") as info:
        load_split("nih-cxr-lt", tmp_path, "train")
    assert "position" not in str(info.value)
