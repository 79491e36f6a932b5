"""Sweeps that are interrupted, resumed, regrouped, run twice at once or damaged end with the same files.

"The same files" (`assert_same_sweep`): the same set of files; every tensor (`.npz`, `.safetensors`)
bit for bit; every JSON value equal except the fields that record *when* or *how fast* something ran
or how the work happened to be grouped — `started`, `created`, `updated`, `seconds`, `compile_seconds`,
`train_seconds`, `seeds_trained_together`, the requested seed count `settings.seeds` — and the time stamp inside `DONE`. A `.safetensors`
file is compared as its header's JSON (whose key order the writer does not fix) and its tensor bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from unittest import mock

import jax
import numpy as np
import pytest
from headsdata import SMALL, make_stores
from typer.testing import CliRunner

from cxrfeat import locks
from heads import runs
from heads.cli import app
from heads.plan import SweepSpec
from heads.sweep import run_sweep
from heads.train import TrainConfig

# When or how fast it ran, or how the seeds happened to be grouped: not results.
NOT_RESULTS = {"started", "created", "updated", "seconds", "compile_seconds", "train_seconds",
               "trained_with"}  # how the work was grouped, not what it gave
FAST = TrainConfig(lr=0.01, max_epochs=3, patience=2)
CLI_FAST = ["--max-epochs", "3", "--lr", "0.01", "--patience", "2"]


def _drop(value):
    if isinstance(value, dict):
        out = {k: _drop(v) for k, v in value.items() if k not in NOT_RESULTS}
        if isinstance(out.get("settings"), dict):  # the seed count requested: how the work was grouped
            out["settings"] = {k: v for k, v in out["settings"].items() if k != "seeds"}
        return out
    if isinstance(value, list):
        return [_drop(v) for v in value]
    return value


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_sweep(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    assert not [f for f in fa if f.endswith(".lock")], "a lock file was left behind"
    for rel, pa in fa.items():
        pb = fb[rel]
        if pa.suffix == ".json":
            assert _drop(json.loads(pa.read_text())) == _drop(json.loads(pb.read_text())), rel
        elif pa.suffix == ".jsonl":
            la, lb = ([_drop(json.loads(x)) for x in p.read_text().splitlines()] for p in (pa, pb))
            assert la == lb, rel
        elif pa.suffix == ".npz":
            with np.load(pa) as za, np.load(pb) as zb:
                assert za.files == zb.files, rel
                for k in za.files:
                    np.testing.assert_array_equal(za[k], zb[k], err_msg=f"{rel}:{k}")
        elif pa.name == runs.DONE:
            continue  # its content is the time it was written
        elif pa.suffix == ".safetensors":  # the header's JSON (key order varies), then the tensor bytes
            ha, da = _safetensors_parts(pa)
            hb, db = _safetensors_parts(pb)
            assert ha == hb and da == db, rel
        else:
            assert pa.read_bytes() == pb.read_bytes(), rel


def _safetensors_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def spec(root: Path, runs_dir: Path, seeds: int, **kw) -> SweepSpec:
    return SweepSpec(tasks=[8], models=["cdl", "dqc"], seeds=seeds, features=root / "features", runs=runs_dir,
                     name="t", train=FAST, **kw)


class InterruptAt:
    """A reporter that presses Ctrl-C at `epoch` of the group of `model` (and records nothing else)."""

    def __init__(self, model: str, epoch: int):
        self.model, self.at, self.current = model, epoch, None

    def sweep_start(self, *a): ...
    def skipped(self, *a): ...
    def group_end(self, *a): ...

    def group_start(self, task, model, seeds, max_epochs):
        self.current = model

    def epoch(self, info):
        if self.current == self.model and info["epoch"] == self.at:
            raise KeyboardInterrupt


def resume_scenario(root: Path) -> None:
    """Uninterrupted `--seeds 3` against: `--seeds 1`, then `--seeds 3` killed before seed 2's DONE,
    then resumed and killed in the middle of the DQC's training, then resumed to the end."""
    make_stores(root / "features", **SMALL)
    run_sweep(spec(root, root / "a", 3))

    b = root / "b"
    run_sweep(spec(root, b, 1))
    real_finish, calls = runs.finish, []

    def finish_then_die(path):
        calls.append(path)
        if len(calls) == 1:  # seed 1 was done before; seed 2's files are written, its DONE is not
            raise KeyboardInterrupt
        real_finish(path)

    with mock.patch.object(runs, "finish", finish_then_die), pytest.raises(KeyboardInterrupt):
        run_sweep(spec(root, b, 3))
    cdl = b / "t" / "cxr-8" / "cdl"
    assert [runs.is_done(cdl / f"seed-{s}") for s in (1, 2, 3)] == [True, False, False]
    assert (cdl / "seed-2" / "metrics.json").exists()  # looks finished, but is not: no DONE
    assert not list(cdl.glob(".*.lock"))  # Ctrl-C released the runs' locks

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec(root, b, 3), reporter=InterruptAt("dqc", 2))
    dqc = b / "t" / "cxr-8" / "dqc"
    assert runs.is_done(dqc / "seed-1") and not runs.is_done(dqc / "seed-2")
    assert len(runs.read_history(dqc / "seed-2")) == 2  # interrupted after epoch 2 of 3

    run_sweep(spec(root, b, 3))
    assert_same_sweep(root / "a" / "t", b / "t")


def test_resumed_and_regrouped_sweep_equals_an_uninterrupted_one(tmp_path):
    resume_scenario(tmp_path)


def _env(**extra) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    return env


def test_resumed_sweep_equals_uninterrupted_on_two_devices(tmp_path):
    script = textwrap.dedent(f"""
        import jax
        from pathlib import Path
        from test_sweep_reliability import resume_scenario
        assert jax.local_device_count() == 2
        resume_scenario(Path({str(tmp_path)!r}))
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    config = json.loads((tmp_path / "b" / "t" / "cxr-8" / "cdl" / "seed-1" / "config.json").read_text())
    assert len(config["devices"]) == 2


def _heads(*args) -> list[str]:
    return [sys.executable, "-c", "from heads.cli import app; app()", *map(str, args)]


def test_two_sweeps_at_once_end_like_one(tmp_path):
    make_stores(tmp_path / "features", **SMALL)
    common = ["sweep", "--tasks", "8", "--models", "cdl,dqc", "--seeds", "2", "--features", tmp_path / "features",
              "--name", "t", *CLI_FAST]
    procs = [subprocess.Popen(_heads(*common, "--runs", tmp_path / "both"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    # The same sweep alone, in this process (no interpreter start-up; the programs are the same).
    one = CliRunner().invoke(app, [str(a) for a in (*common, "--runs", tmp_path / "one")])
    assert one.exit_code == 0, one.output
    assert_same_sweep(tmp_path / "one" / "t", tmp_path / "both" / "t")


def test_a_locked_run_is_skipped_never_cleared_then_taken_over_when_its_owner_dies(tmp_path):
    make_stores(tmp_path / "features", **SMALL)
    runs_dir = tmp_path / "runs"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lock = runs.run_lock_path(runs.seed_dir(runs_dir, "t", 8, "cdl", 1))
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"host": locks.HOST, "pid": other.pid, "started": "now"}))
        work = runs.seed_dir(runs_dir, "t", 8, "cdl", 1) / "history.jsonl"  # the other process's work in progress
        work.parent.mkdir()
        work.write_text("{}\n")
        seen = {}

        def the_other_process_dies():
            dqc = runs.seed_dir(runs_dir, "t", 8, "dqc", 2) / runs.DONE
            while not dqc.exists():
                time.sleep(0.05)
            time.sleep(0.3)
            seen["work kept while its owner lived"] = work.exists()
            other.kill()
            other.wait()

        t = threading.Thread(target=the_other_process_dies)
        t.start()
        result = CliRunner().invoke(app, ["sweep", "--tasks", "8", "--models", "cdl,dqc", "--seeds", "2",
                                          "--features", tmp_path / "features", "--runs", runs_dir, "--name", "t",
                                          *CLI_FAST])
        t.join(timeout=600)
    finally:
        other.kill()
        other.wait()
    assert result.exit_code == 0, result.output
    assert seen == {"work kept while its owner lived": True}
    assert "moving on" in result.output and f"pid {other.pid}" in result.output
    assert "taking over the stale lock" in result.output
    assert all(runs.is_done(runs.seed_dir(runs_dir, "t", 8, m, s)) for m in ("cdl", "dqc") for s in (1, 2))
    assert not lock.exists()


def test_runs_start_never_clears_a_finished_run_or_without_its_lock(tmp_path):
    d = runs.seed_dir(tmp_path, "t", 8, "cdl", 1)
    with locks.acquire(runs.run_lock_path(d)) as lock:
        runs.start(d, {"seed": 1}, lock=lock)
        runs.finish(d)
        with pytest.raises(RuntimeError, match="finished"):
            runs.start(d, {"seed": 1}, lock=lock)
    assert runs.is_done(d)
    with pytest.raises(RuntimeError, match="lock"):
        runs.start(runs.seed_dir(tmp_path, "t", 8, "cdl", 2), {}, lock=lock)  # released


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    make_stores(root / "features", **SMALL)
    args = ["sweep", "--tasks", "8,8", "--models", "cdl", "--seeds", "2", "--features", root / "features",
            "--runs", root / "runs", "--name", "t", *CLI_FAST]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return root, [str(a) for a in args]


def test_repeated_tasks_are_recorded_once(finished):
    root, _ = finished
    assert json.loads((root / "runs" / "t" / "sweep.json").read_text())["tasks"] == ["cxr-8"]


@pytest.mark.parametrize("lost", ["metrics.json", "best.safetensors", "predictions/mimic-cxr-lt.npz"])
def test_a_finished_run_with_a_lost_file_is_reported_and_redone(finished, lost, tmp_path):
    root, args = finished
    d = runs.seed_dir(root / "runs", "t", 8, "cdl", 2)
    shutil.copytree(d, tmp_path / "before")
    (d / lost).unlink()
    sibling = runs.seed_dir(root / "runs", "t", 8, "cdl", 1)
    stamp = {p: p.stat().st_mtime_ns for p in sibling.rglob("*")}
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "damaged" in result.output and lost in result.output and str(d) in result.output.replace("\n", "")
    assert runs.is_done(d)
    assert_same_sweep(tmp_path / "before", d)  # redone alone, to the same bits
    assert stamp == {p: p.stat().st_mtime_ns for p in sibling.rglob("*")}  # the intact seed was left alone


def test_an_empty_shard_says_so_and_writes_nothing(tmp_path):
    make_stores(tmp_path / "features", n_train=40, n_val=16, n_test=16, external=False)
    result = CliRunner().invoke(app, ["sweep", "--tasks", "8", "--models", "cdl,dqc", "--seeds", "1", "--shard", "3/4",
                                      "--features", str(tmp_path / "features"), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "--shard 3/4" in result.output and "only 2 cell(s)" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_multi_process_jax_launch_is_refused(tmp_path, monkeypatch):
    make_stores(tmp_path / "features", n_train=40, n_val=16, n_test=16, external=False)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    result = CliRunner().invoke(app, ["sweep", "--tasks", "8", "--features", str(tmp_path / "features"),
                                      "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "multi-process" in result.output and "--shard" in result.output
    assert not (tmp_path / "runs").exists()


def test_finetune_checks_init_head_from_before_building_caches(tmp_path):
    cache = tmp_path / "cache"
    result = CliRunner().invoke(app, ["finetune", "--init-head-from", str(tmp_path / "nonexistent"),
                                      "--data-dir", str(tmp_path / "data"), "--cache", str(cache),
                                      "--runs", str(tmp_path / "runs"), "--weights", "random"])
    assert result.exit_code == 2 and "--init-head-from" in result.output and "nonexistent" in result.output
    assert not cache.exists() and not (tmp_path / "runs").exists()


def test_a_sweep_started_with_another_block_resumes_with_its_own(tmp_path):
    # Bits depend on the member block, so a folder keeps the block it recorded when the default changes.
    make_stores(tmp_path / "features", **SMALL)
    cdl = dict(tasks=[8], models=["cdl"], features=tmp_path / "features", name="t", train=FAST)
    run_sweep(SweepSpec(seeds=3, runs=tmp_path / "a", seed_block=2, **cdl))
    run_sweep(SweepSpec(seeds=1, runs=tmp_path / "b", seed_block=2, **cdl))
    assert SweepSpec(seeds=3, **cdl).seed_block == 1  # today's default
    run_sweep(SweepSpec(seeds=3, runs=tmp_path / "b", **cdl))
    assert json.loads((tmp_path / "b" / "t" / "sweep.json").read_text())["settings"]["seed_block"] == 2
    assert_same_sweep(tmp_path / "a" / "t", tmp_path / "b" / "t")
