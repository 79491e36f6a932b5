"""Tasks as label lists: the paper's three, `--tasks all`, `--tasks-file`, and label sets beyond 19."""

import json

import numpy as np
import pytest
from headsdata import write_store
from typer.testing import CliRunner

from cxrfeat.errors import UserError
from cxrfeat.labels import (
    KNOWN_LABELS,
    LABEL_SETS,
    LABELS,
    NO_FINDING,
    TASKS,
    Task,
    parse_task_specs,
    read_tasks_file,
    resolve_tasks,
    task_labels,
    task_name,
)
from heads import runs
from heads.cli import app


def test_paper_tasks_keep_their_meaning_and_names():
    tasks = parse_task_specs("8,14,19,8,cxr-14")
    assert tasks == ["cxr-8", "cxr-14", "cxr-19"]  # duplicates dropped
    assert [t.labels for t in tasks] == [TASKS[8], TASKS[14], TASKS[19]]
    assert json.loads(json.dumps(tasks)) == ["cxr-8", "cxr-14", "cxr-19"]
    assert task_name(8) == "cxr-8" and task_name(tasks[1]) == "cxr-14" and task_labels(tasks[2]) == LABELS
    with pytest.raises(ValueError, match="unknown task '9'"):
        parse_task_specs("8,9")


def test_all_resolves_against_the_store_labels_in_their_order():
    (task,) = parse_task_specs("all")
    assert task == "all" and task.labels is None
    wide = resolve_tasks([task], [*KNOWN_LABELS, NO_FINDING])
    assert wide == ["cxr-40"] and wide[0].labels == KNOWN_LABELS  # No Finding is never a task label
    assert resolve_tasks(parse_task_specs("19,all"), [*LABELS, NO_FINDING]) == ["cxr-19"]  # the same set: once
    # Another set of 8 labels never takes the paper's CXR-8 name.
    other = resolve_tasks([Task("all")], list(KNOWN_LABELS[20:28]))
    assert other == ["labels-8"] and other[0].labels == KNOWN_LABELS[20:28]


def test_tasks_file_labels_aliases_and_label_sets(tmp_path):
    f = tmp_path / "pleura.txt"
    f.write_text("# pleural findings\nEffusion\nPleural_Thickening\n\nPneumothorax  # air\n")
    t = read_tasks_file(f)
    assert t == "pleura-3" and t.labels == ("Effusion", "Pleural Thickening", "Pneumothorax")
    (tmp_path / "paper.txt").write_text("\n".join(TASKS[8]))
    assert read_tasks_file(tmp_path / "paper.txt") == "cxr-8"
    (tmp_path / "lt.txt").write_text("cxr-lt-2023\n")
    lt = read_tasks_file(tmp_path / "lt.txt")
    assert lt.n == 25 and NO_FINDING not in lt.labels and set(lt.labels) < set(LABEL_SETS["cxr-lt-2023"])
    (tmp_path / "one.txt").write_text("Hernia\n")
    with pytest.raises(UserError, match="at least 2 labels"):
        read_tasks_file(tmp_path / "one.txt")
    with pytest.raises(UserError, match="cannot read it"):
        read_tasks_file(tmp_path / "missing.txt")


def _stores(root, names, *, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(len(names), dim))
    for split, n, views in (("train", 96, 2), ("val", 32, 1), ("test", 48, 1)):
        y = (rng.random((n, len(names))) < np.linspace(0.5, 0.2, len(names))).astype(np.int8)
        x = rng.normal(size=(n, dim)) + y @ signal
        x = (x[:, None, :] + 0.3 * rng.normal(size=(n, views, dim))).astype(np.float32)
        write_store(root / "nih-cxr-lt" / f"{split}.zarr", x, y, dataset="nih-cxr-lt", split=split,
                    label_names=list(names))
    return root


def test_sweep_tasks_all_and_tasks_file_on_a_wider_label_set(tmp_path):
    """A store with labels beyond the paper's (CXR-LT findings): `--tasks all` trains a CDL and a DQC
    with one qubit per label, in the store's label order, and a tasks file picks a subset."""
    names = [*LABELS[:3], *KNOWN_LABELS[19:22], NO_FINDING]
    features = _stores(tmp_path / "features", names)
    (tmp_path / "mine.txt").write_text("Fracture\nEffusion\n")
    result = CliRunner().invoke(app, [
        "sweep", "--tasks", "all", "--tasks-file", str(tmp_path / "mine.txt"), "--seeds", "1",
        "--models", "cdl,dqc", "--features", str(features), "--runs", str(tmp_path / "runs"), "--name", "wide",
        "--external", "none", "--max-epochs", "2", "--lr", "0.01"])
    assert result.exit_code == 0, result.output
    sweep = tmp_path / "runs" / "wide"
    assert json.loads((sweep / "sweep.json").read_text())["tasks"] == ["cxr-6", "mine-2"]
    for task, labels in (("cxr-6", names[:6]), ("mine-2", ["Fracture", "Effusion"])):
        for model in ("cdl", "dqc"):
            d = sweep / task / model / "seed-1"
            assert runs.is_done(d), (task, model)
            config = json.loads((d / "config.json").read_text())
            assert config["labels"] == labels and config["task"] == task
            with np.load(d / "predictions" / "nih-cxr-lt.npz") as z:
                assert z["y_prob"].shape == (48, len(labels)) and list(z["label_names"]) == labels
    assert json.loads((sweep / "cxr-6" / "dqc" / "seed-1" / "config.json").read_text())["param_counts"]["quantum"] == 3 * 6
    assert [r.task for r in runs.iter_runs(sweep)] == ["mine-2"] * 2 + ["cxr-6"] * 2
