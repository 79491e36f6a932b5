"""A user's own CSV dataset, named as theirs: its stores and test set after the data (or `--name`), a task of
its own labels after the data (or `--task-name`), and a report with none of the paper's names in it."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from headsdata import write_store
from typer.testing import CliRunner

from analysis.cli import app as analysis_app
from cxrfeat.datasets import dataset_name, image_index
from cxrfeat.errors import UserError
from cxrfeat.extract import extract
from cxrfeat.labels import LABELS, Task, default_task_name, parse_task_specs, resolve_tasks
from cxrfeat.store import FeatureStore
from heads.cli import app as heads_app

# Any of the paper's names: its label sets (CXR-8/14/19, and any CXR-N), datasets and challenge.
PAPER_NAME = re.compile(r"cxr-?\d|nih|mimic|cxr-lt", re.IGNORECASE)
# The user's three labels, drawn from three synthetic findings so that the heads have something to learn.
OWN = {"Scoliosis": "Infiltration", "Pacemaker": "Effusion", "Chest Drain": "Atelectasis"}


def _clinic(data, root):
    """root/clinic/{train,val,test}.csv: absolute image paths and the three own labels (no paper label)."""
    src = data / "nih-cxr-lt"
    index = image_index(src)
    clinic = root / "clinic"
    clinic.mkdir()
    for split in ("train", "val", "test"):
        with open(src / f"miccai2023_nih-cxr-lt_labels_{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        with open(clinic / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", *OWN])
            w.writerows([str(index[r["id"]]), *(r[v] for v in OWN.values())] for r in rows)
    return clinic


def test_a_sweep_on_own_csv_labels_reports_none_of_the_papers_names(data, backbone, tmp_path, monkeypatch):
    """3-label CSV -> extract -> `heads sweep --tasks all` -> `analysis report`: the stores, the test set and
    the task are named after the data (clinic, clinic-3), and no file of the report, nor any text drawn in
    its figures, names the paper's label sets or datasets."""
    clinic = _clinic(data, tmp_path)
    said = []
    for split in ("train", "val", "test"):
        path, _ = extract(dataset="csv", split=split, data_dir=clinic, label_columns=list(OWN), out=tmp_path / "features",
                          backbone=backbone, views=2 if split == "train" else 1, chunk_rows=8, batch_size=8,
                          progress=False, announce=said.append)
        assert path == tmp_path / "features" / "clinic" / f"{split}.zarr"
        attrs = FeatureStore.open(path).attrs
        assert attrs["dataset"] == "clinic" and attrs["extract_args"]["name"] == "clinic"
    assert not said, said  # a CSV of its own labels is not warned about the paper's tasks

    sweep_args = ["sweep", "--dataset", "clinic", "--external", "none", "--tasks", "all", "--models", "cdl,dqc",
                  "--seeds", "2", "--features", str(tmp_path / "features"), "--runs", str(tmp_path / "runs"),
                  "--name", "own", "--max-epochs", "2", "--lr", "0.01", "--feature-norm", "standardize"]
    result = CliRunner().invoke(heads_app, sweep_args)
    assert result.exit_code == 0, result.output
    sweep = tmp_path / "runs" / "own"
    record = json.loads((sweep / "sweep.json").read_text())
    assert record["tasks"] == ["clinic-3"] and record["task_labels"] == {"clinic-3": list(OWN)}
    config = json.loads((sweep / "clinic-3" / "dqc" / "seed-1" / "config.json").read_text())
    assert config["task"] == "clinic-3" and config["labels"] == list(OWN) and config["data"]["test_sets"] == ["clinic"]
    assert (sweep / "clinic-3" / "dqc" / "seed-1" / "predictions" / "clinic.npz").is_file()

    figure_texts = []
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    savefig = Figure.savefig

    def spy(fig, *args, **kwargs):  # every text drawn in every figure: titles, legends, axes, footnotes
        figure_texts.extend(t.get_text() for t in fig.findobj(Text) if t.get_text())
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    out = tmp_path / "report"
    bench = Path(__file__).parents[1] / "bench" / "cpu-intel-xeon-processor-2c.json"  # Table III at 8, 14, 19 qubits
    result = CliRunner().invoke(analysis_app, ["report", "--runs", str(sweep), "--out", str(out), "--resamples", "20",
                                               "--bench", str(bench)])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "not marked synthetic" in md and "CLINIC-3" in md.upper()
    assert "Table III" in md and (out / "tables" / "table3_bench.csv").is_file()
    assert any("CLINIC-3" in t for t in figure_texts) and any("CLINIC" == t for t in figure_texts)
    files = [out / "report.md", *sorted((out / "tables").iterdir())]
    for f in files:
        hits = PAPER_NAME.findall(f.read_text())
        assert not hits, (f.name, hits)
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "per_label_clinic-3_clinic.png" in figures and "volcano_clinic-3.png" in figures
    assert not [n for n in figures if PAPER_NAME.search(n)], figures
    assert figure_texts and not [t for t in figure_texts if PAPER_NAME.search(t)]
    with open(out / "tables" / "mean_auroc.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["task"], r["test_set"]) for r in rows} == {("clinic-3", "clinic")}

    # The same command again continues the sweep: same task, nothing retrained.
    again = CliRunner().invoke(heads_app, sweep_args)
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["clinic-3"]


def test_dataset_names_come_from_the_user_or_the_data_folder(tmp_path):
    assert dataset_name("nih-cxr-lt", tmp_path) == "nih-cxr-lt"
    assert dataset_name("csv", tmp_path / "Clinic Data") == "clinic-data"
    assert dataset_name("csv", tmp_path / "images", csv=tmp_path / "ward-7" / "train.csv") == "ward-7"  # the CSV's folder
    assert dataset_name("csv", tmp_path / "x", name="st-marys") == "st-marys"
    assert dataset_name("csv") == "csv"  # data/csv, the default folder: as before
    with pytest.raises(UserError, match=r"--name 'nih-cxr-lt': that name is the paper's"):
        dataset_name("csv", tmp_path, name="nih-cxr-lt")
    with pytest.raises(UserError, match=r"that folder's name mimic-cxr-lt is the paper's dataset's: name yours with --name"):
        dataset_name("csv", tmp_path / "mimic-cxr-lt")
    with pytest.raises(UserError, match=r"--name 'clinic' is for --dataset csv"):
        dataset_name("nih-cxr-lt", tmp_path, name="clinic")


def test_default_task_names_never_take_a_paper_name_for_other_labels():
    own = ("Scoliosis", "Pacemaker", "Chest Drain")
    assert default_task_name(own, "clinic") == "clinic-3"
    assert default_task_name(own, "nih-cxr-lt") == "cxr-3"  # the paper's datasets: as before (cxr-40, ...)
    assert default_task_name(LABELS, "clinic") == "cxr-19"  # the paper's very labels keep their name
    assert default_task_name(LABELS[:8], "clinic") == "clinic-8"
    (named,) = resolve_tasks(parse_task_specs("all", task_name="ward-3"), [*own, "No Finding"], "clinic")
    assert named == "ward-3" and named.labels == own and named.named == "ward-3"


def test_task_name_renames_a_tasks_file_task_and_only_it(tmp_path):
    f = tmp_path / "pleura.txt"
    f.write_text("Effusion\nPneumothorax\n")
    tasks = parse_task_specs("8", f, task_name="pleural")
    assert tasks == ["cxr-8", "pleural"] and tasks[1].labels == ("Effusion", "Pneumothorax")
    assert isinstance(tasks[1], Task) and tasks[1].named == "pleural"


@pytest.mark.parametrize(("args", "message"), [
    (["--tasks", "all", "--task-name", ""], "--task-name is empty: give a name such as clinic-3"),
    (["--tasks", "all", "--task-name", "   "], "--task-name is empty"),
    (["--tasks", "all", "--task-name", "CXR-8"], "--task-name 'CXR-8': that name is the paper's or the toolkit's"),
    (["--tasks", "all", "--task-name", "cxr-3"], "--task-name 'cxr-3': that name is the paper's"),
    (["--tasks", "all", "--task-name", "14"], "--task-name '14'"),
    (["--tasks", "all", "--task-name", "nih-cxr-lt"], "--task-name 'nih-cxr-lt': that name is the paper's"),
    (["--tasks", "all", "--task-name", "ALL"], "--task-name 'ALL': that name is the paper's or the toolkit's"),
    (["--tasks", "all", "--task-name", "ward/3"], "--task-name 'ward/3': it names a folder, so use only letters"),
    (["--tasks", "all", "--task-name", ".."], "--task-name '..': it names a folder"),
    (["--tasks", "all", "--task-name", "my task"], "--task-name 'my task': it names a folder"),
    (["--tasks", "8,14", "--task-name", "mine"], "--task-name names the one task made from your data's own labels"),
])
def test_a_bad_task_name_is_a_one_line_error_and_writes_nothing(tmp_path, args, message):
    result = CliRunner().invoke(heads_app, ["sweep", *args, "--features", str(tmp_path / "features"),
                                            "--runs", str(tmp_path / "runs"), "--seeds", "1"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1, result.output
    assert not (tmp_path / "runs").exists()


def test_task_name_and_all_plus_a_tasks_file_is_refused(tmp_path):
    f = tmp_path / "pleura.txt"
    f.write_text("Effusion\nPneumothorax\n")
    result = CliRunner().invoke(heads_app, ["sweep", "--tasks", "all", "--tasks-file", str(f), "--task-name", "x1",
                                            "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "this command makes 2 (all and pleura-2)" in result.output, result.output


def _own_stores(root, names, dataset="ward", seed=0, dim=8):
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(len(names), dim))
    for split, n in (("train", 40), ("val", 16), ("test", 16)):
        y = (rng.random((n, len(names))) < 0.4).astype(np.int8)
        x = (rng.normal(size=(n, dim)) + y @ signal)[:, None, :].astype(np.float32)
        write_store(root / dataset / f"{split}.zarr", x, y, dataset=dataset, split=split, label_names=list(names))
    return root


def test_a_sweep_keeps_the_name_it_gave_a_label_set(tmp_path):
    """`--task-name` names the folder once; the same command without it continues that task (no second
    folder for the same labels), and a sweep made before sweep.json recorded its tasks' labels too."""
    features = _own_stores(tmp_path / "features", ["Scoliosis", "Pacemaker"])
    base = ["sweep", "--dataset", "ward", "--external", "none", "--tasks", "all", "--models", "cdl", "--seeds", "1",
            "--features", str(features), "--runs", str(tmp_path / "runs"), "--name", "w", "--max-epochs", "1"]
    first = CliRunner().invoke(heads_app, [*base, "--task-name", "implants"])
    assert first.exit_code == 0, first.output
    sweep = tmp_path / "runs" / "w"
    done = (sweep / "implants" / "cdl" / "seed-1" / "DONE").stat().st_mtime_ns
    record = json.loads((sweep / "sweep.json").read_text())
    del record["task_labels"]  # as an older sweep wrote it: the labels are read from the runs
    (sweep / "sweep.json").write_text(json.dumps(record))
    again = CliRunner().invoke(heads_app, base)
    assert again.exit_code == 0, again.output
    assert "are the sweep's task implants; continuing under that name" in again.output
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["implants"]
    assert (sweep / "implants" / "cdl" / "seed-1" / "DONE").stat().st_mtime_ns == done  # not retrained
    assert json.loads((sweep / "sweep.json").read_text())["task_labels"] == {"implants": ["Scoliosis", "Pacemaker"]}


def test_a_csv_store_begun_under_csv_is_continued_there(data, backbone, tmp_path):
    """Stores of own data made before they were named after it (`<out>/csv/`) are found by the same command."""
    clinic = _clinic(data, tmp_path)
    kw = dict(dataset="csv", split="val", data_dir=clinic, label_columns=list(OWN), out=tmp_path / "features",
              backbone=backbone, views=1, chunk_rows=8, batch_size=8, progress=False)
    old, _ = extract(name="csv", **kw)
    said = []
    path, timing = extract(announce=said.append, **kw)
    assert path == old == tmp_path / "features" / "csv" / "val.zarr" and not timing.images
    assert any("continuing this store of the same CSV" in m and "--name clinic" in m for m in said), said
    assert not (tmp_path / "features" / "clinic").exists()


def test_info_names_an_own_csv_folder_and_counts_its_own_labels(data, tmp_path):
    """`cxrfeat info` on a folder of own {split}.csv files: the dataset goes by the name its stores will
    (the folder's, or --name), its own labels are counted with --label-columns (the csv module's count),
    and without them the one-line error says to name them."""
    from cxrfeat.cli import app as cxrfeat_app

    clinic = _clinic(data, tmp_path)
    runner = CliRunner()
    res = runner.invoke(cxrfeat_app, ["info", str(clinic), "--json", "--label-columns", ",".join(OWN)])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["dataset"] == "clinic" and info["reader"] == "csv"
    for split in ("train", "val", "test"):
        with open(clinic / f"{split}.csv", newline="") as f:
            table = list(csv.DictReader(f))
        got = info["splits"][split]
        assert got["rows"] == len(table) and got["label_names"] == list(OWN)
        assert got["positives"] == {k: sum(r[k] == "1" for r in table) for k in OWN}
    res = runner.invoke(cxrfeat_app, ["info", str(clinic), "--json", "--label-columns", ",".join(OWN),
                                      "--name", "ward-7"])
    assert res.exit_code == 0 and json.loads(res.stdout)["dataset"] == "ward-7"
    res = runner.invoke(cxrfeat_app, ["info", str(clinic)])
    assert res.exit_code == 2 and "--label-columns" in res.output and "Traceback" not in res.output
