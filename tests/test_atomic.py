"""Files the toolkit writes honour the umask (shared results folders): atomic writes and whole run folders."""

import contextlib
import os
import stat
import threading

import pytest
from headsdata import SMALL, make_stores
from typer.testing import CliRunner

from cxrfeat import atomic
from heads.cli import app


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                              (0o077, 0o600, 0o700)])
def test_atomic_write_honours_the_umask(tmp_path, mask, file_mode, dir_mode):
    with umask(mask):
        assert atomic.current_umask() == mask
        atomic.write_json(tmp_path / "new" / "deeper" / "a.json", {"x": 1})
        atomic.write_text(tmp_path / "new" / "b.txt", "b")
        atomic.write_text(tmp_path / "new" / "b.txt", "replaced")  # a replaced file gets the mode again
    assert mode(tmp_path / "new" / "deeper" / "a.json") == file_mode
    assert mode(tmp_path / "new" / "b.txt") == file_mode and (tmp_path / "new" / "b.txt").read_text() == "replaced"
    assert mode(tmp_path / "new") == dir_mode and mode(tmp_path / "new" / "deeper") == dir_mode
    assert not list((tmp_path / "new").glob(".*.tmp"))  # no temporary file left behind


def test_reading_the_umask_never_changes_it_under_threads(tmp_path):
    with umask(0o022):
        errors = []

        def work(i):
            for k in range(50):
                atomic.write_text(tmp_path / f"t{i}-{k}.txt", "x")
                if atomic.current_umask() != 0o022:
                    errors.append(k)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert os.umask(0o022) == 0o022
    assert not errors and {mode(p) for p in tmp_path.glob("t*.txt")} == {0o644}


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_a_sweeps_run_folder_is_readable_by_the_group(tmp_path, mask, file_mode, dir_mode):
    features = make_stores(tmp_path / "features", **SMALL, external=False)
    with umask(mask):
        result = CliRunner().invoke(app, [str(a) for a in (
            "sweep", "--tasks", "8", "--seeds", "1", "--models", "cdl", "--features", features,
            "--runs", tmp_path / "runs", "--name", "shared", "--max-epochs", "1")])
    assert result.exit_code == 0, result.output
    sweep = tmp_path / "runs" / "shared"
    files = [p for p in sweep.rglob("*") if p.is_file()]
    folders = [sweep, *(p for p in sweep.rglob("*") if p.is_dir())]
    assert {"sweep.json", "config.json", "metrics.json", "history.jsonl", "best.safetensors", "DONE",
            "nih-cxr-lt.npz"} <= {p.name for p in files}
    assert {p.name: mode(p) for p in files} == {p.name: file_mode for p in files}
    assert {str(p): mode(p) for p in folders} == {str(p): dir_mode for p in folders}
