"""Scaling out: extraction on every local device, `--part i/N` processes filling one store, and the
refusal of multi-process JAX launches."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RESNET

from cxrfeat.errors import UserError
from cxrfeat.extract import extract
from cxrfeat.store import FeatureStore, part_lock_path

HERE = os.path.dirname(__file__)


def _run(data, out, backbone, split="train", **kw):
    kw.setdefault("views", 3)
    kw.setdefault("announce", lambda m: None)
    return extract(dataset="nih-cxr-lt", split=split, data_dir=data / "nih-cxr-lt", out=out, backbone=backbone,
                   chunk_rows=2, batch_size=6, progress=False, **kw)


def _env(devices: int = 1) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
    return env


# A child process that extracts (part of) the train split with the tiny ResNet; argv: data out part sleep.
CHILD = textwrap.dedent(f"""
    import sys, time
    import jax
    from transformers import ResNetConfig
    import cxrfeat.preprocess as pp
    from cxrfeat.backbone import load_backbone
    from cxrfeat.extract import extract
    data, out, part, sleep = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    if sleep:
        slow = pp.load_and_preprocess
        def load(path):
            time.sleep(sleep)
            return slow(path)
        pp.load_and_preprocess = load
    bb = load_backbone("random", seed=0, config=ResNetConfig(**{TINY_RESNET!r}))
    _, timing = extract(dataset="nih-cxr-lt", split="train", data_dir=data, out=out, backbone=bb, views=3,
                        chunk_rows=2, batch_size=6, workers=1, progress=False, announce=print,
                        part=None if part == "-" else part)
    print("DEVICES", timing.devices, "IMAGES", timing.images)
""")


def _child(data, out, part="-", *, devices=1, sleep=0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(data / "nih-cxr-lt"), str(out), part, str(sleep)],
                            env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout=240) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def assert_same_store(a: Path, b: Path) -> None:
    """Every chunk file of every array equal, bit for bit (only creation times in zarr.json differ)."""
    sa, sb = FeatureStore.open(a), FeatureStore.open(b)
    for name in ("embeddings", "valid", "progress", "labels", "ids"):
        np.testing.assert_array_equal(np.asarray(sa.group[name][:]), np.asarray(sb.group[name][:]))
    ca = {k: v for k, v in sa.marker()["checksums"].items() if not k.endswith("zarr.json")}
    cb = {k: v for k, v in sb.marker()["checksums"].items() if not k.endswith("zarr.json")}
    assert ca == cb and any(k.startswith("embeddings/") for k in ca)


def test_two_devices_equal_one_device_bit_for_bit(data, backbone, tmp_path):
    one, timing = _run(data, tmp_path / "one", backbone)
    assert timing.devices == 1
    out = _finish(_child(data, tmp_path / "two", devices=2))
    assert "DEVICES 2 IMAGES 12" in out
    assert_same_store(one, tmp_path / "two" / "nih-cxr-lt" / "train.zarr")


@pytest.fixture(scope="module")
def reference(data, backbone, tmp_path_factory):
    """The train store made by one process, in one go."""
    path, _ = _run(data, tmp_path_factory.mktemp("reference"), backbone)
    return path


def test_parts_started_together_equal_one_process(data, reference, tmp_path):
    procs = [_child(data, tmp_path, part) for part in ("1/2", "2/2")]
    outs = [_finish(p) for p in procs]
    store = tmp_path / "nih-cxr-lt" / "train.zarr"
    assert sum("complete (finalised by part" in o for o in outs) == 1  # exactly one finaliser
    assert all("IMAGES 6" in o for o in outs)  # each part computed its own half only
    assert_same_store(reference, store)
    s = FeatureStore.open(store)
    assert [(r["part"], r["parts"], r["state"]) for r in s.parts()] == [(1, 2, "done"), (2, 2, "done")]
    assert set(s.marker()["timing"]["parts"]) == {"1/2", "2/2"}
    assert not part_lock_path(store, (1, 2)).exists() and not part_lock_path(store, (2, 2)).exists()


def test_part_killed_mid_way_resumes_and_equals(data, backbone, reference, tmp_path):
    from cxrfeat.info import render, summary

    store = tmp_path / "nih-cxr-lt" / "train.zarr"
    slow = _child(data, tmp_path, "2/2", sleep=1.5)  # 3 s a chunk
    fast = _child(data, tmp_path, "1/2")
    deadline = time.time() + 120
    while not (store.exists() and FeatureStore.open(store, require_complete=False).done_chunks()[3:].any()):
        assert slow.poll() is None and time.time() < deadline, slow.stderr.read()[-2000:]
        time.sleep(0.05)
    os.kill(slow.pid, signal.SIGKILL)
    slow.wait()
    out = _finish(fast)
    assert "part 1/2 done" in out and "still to write" in out
    info = summary(store)
    assert not info["complete"] and info["chunks_done"] < 6
    one, two = info["parts"]
    assert one["part"] == "1/2" and one["state"] == "done" and one["chunks_done"] == 3
    assert two["part"] == "2/2" and two["state"].startswith("stopped") and 1 <= two["chunks_done"] < 3
    from rich.console import Console

    console = Console(record=True, width=200)
    render(info, console)
    text = console.export_text()
    assert "part 2/2" in text and "stopped: re-run it with --part 2/2" in text
    _, timing = _run(data, tmp_path, backbone, part="2/2")  # the stale lock of the killed part is taken over
    assert 1 <= timing.images <= 4  # only part 2's unfinished chunks
    assert_same_store(reference, store)
    assert summary(store)["parts"][1]["state"] == "done"


def test_parts_in_turn_and_more_parts_than_chunks(data, backbone, reference, tmp_path):
    msgs = []
    for i in range(1, 9):  # 6 chunks in 8 parts: parts 1 and 5 have none
        _run(data, tmp_path, backbone, part=f"{i}/8", announce=msgs.append)
    assert sum("still to write" in m for m in msgs) == 7 and "finalised by part 8/8" in msgs[-1]
    assert_same_store(reference, tmp_path / "nih-cxr-lt" / "train.zarr")
    _run(data, tmp_path, backbone, part="3/8", announce=msgs.append)
    assert "already complete" in msgs[-1]


def test_part_refusals(data, backbone, tmp_path, monkeypatch):
    from cxrfeat import locks

    with pytest.raises(UserError, match="--part 1/2 and --overwrite exclude each other"):
        _run(data, tmp_path, backbone, part="1/2", overwrite=True)
    with pytest.raises(UserError, match="--part 1/2 and --repair exclude each other"):
        _run(data, tmp_path, backbone, part="1/2", repair=True)
    for bad in ("3/2", "0/2", "two", "1/0"):
        with pytest.raises(UserError, match="--part"):
            _run(data, tmp_path, backbone, part=bad)
    store = tmp_path / "nih-cxr-lt" / "train.zarr"
    store.parent.mkdir(parents=True)
    with locks.acquire(part_lock_path(store, (1, 3))):  # a live part of a 3-part partition
        with pytest.raises(UserError, match="another partition.*part 1/3"):
            _run(data, tmp_path, backbone, part="2/2")
        with pytest.raises(UserError, match="being filled in parts right now.*part 1/3"):
            _run(data, tmp_path, backbone)
        _run(data, tmp_path, backbone, part="2/3")  # the same partition is welcome
    monkeypatch.setattr("jax.process_count", lambda: 2)
    with pytest.raises(UserError, match="multi-process JAX launch.*cxrfeat extract.*--part i/N"):
        _run(data, tmp_path, backbone, part="1/3")


def test_cli_part(data, tmp_path):
    from typer.testing import CliRunner

    from cxrfeat.cli import app

    args = ["extract", "--split", "val", "--data-dir", str(data / "nih-cxr-lt"), "--out", str(tmp_path), "--weights",
            "random", "--limit", "2"]
    result = CliRunner().invoke(app, [*args, "--part", "x/2"])
    assert result.exit_code == 2 and "--part 'x/2': give i/N" in result.output
    result = CliRunner().invoke(app, ["extract", "--help"])
    assert "--part" in result.output


FINETUNE_TWO_DEVICES = textwrap.dedent(f"""
    import sys
    from pathlib import Path
    import jax, numpy as np
    from transformers import ResNetConfig
    from cxrfeat.backbone import load_backbone
    from cxrfeat.synth import write_synthetic
    from heads import finetune as ft, runs
    from heads.train import TrainConfig
    assert jax.local_device_count() == 2
    root = Path(sys.argv[1])
    write_synthetic(root / "data", n_train=4, n_val=2, n_test=2, n_external=2, image_size=32, seed=3)
    bb = load_backbone("random", seed=0, config=ResNetConfig(**{TINY_RESNET!r}))
    out = {{}}
    for name, devices in (("one", jax.devices()[:1]), ("two", jax.devices())):
        opts = ft.FinetuneOptions(task=8, model="cdl", seed=1, data_dir=root / "data" / "nih-cxr-lt",
                                  external_dir=None, runs=root / name, name="t", cache=root / "cache",
                                  train=TrainConfig(lr=1e-3, batch_size=3, max_epochs=1))
        out[name] = ft.finetune(opts, backbone=bb, devices=devices, say=lambda m: None)
    one, two = out["one"], out["two"]
    np.testing.assert_allclose(one.history[0]["train_loss"], two.history[0]["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(one.history[0]["val_loss"], two.history[0]["val_loss"], rtol=1e-5)
    assert one.history[0]["order_digest"] == two.history[0]["order_digest"]
    pa, pb = runs.load_params(one.path), runs.load_params(two.path)
    fa, fb = runs.flatten(pa), runs.flatten(pb)
    assert fa.keys() == fb.keys()
    init = runs.flatten({{"backbone": bb.params}})
    moved = max(float(np.abs(fa[k] - init[k]).max()) for k in init)
    assert moved > 1e-4  # the backbone was trained, so the comparison below means something
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], rtol=1e-4, atol=1e-6, err_msg=k)
    a, b = runs.load_predictions(one.path, "nih-cxr-lt"), runs.load_predictions(two.path, "nih-cxr-lt")
    np.testing.assert_allclose(a["y_prob"], b["y_prob"], rtol=1e-4, atol=1e-6)
    print("OK", moved)
""")


def test_finetune_on_two_devices_equals_one_device(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FINETUNE_TWO_DEVICES, str(tmp_path)], env=_env(2),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_finetune_takes_the_run_lock(data, backbone, tmp_path):
    from cxrfeat import locks
    from heads import finetune as ft
    from heads import runs
    from heads.train import TrainConfig

    opts = ft.FinetuneOptions(task=8, model="cdl", seed=1, data_dir=data / "nih-cxr-lt", runs=tmp_path, name="t",
                              cache=tmp_path / "cache", train=TrainConfig(batch_size=4, max_epochs=1))
    opts.run_dir.parent.mkdir(parents=True)
    held = locks.try_acquire(runs.run_lock_path(opts.run_dir))  # the lock `heads sweep` takes for a run
    with held, pytest.raises(UserError, match="run .*cxr-8/cdl-finetune/seed-1.*is locked"):
        ft.finetune(opts, backbone=backbone, say=lambda m: None, lock_timeout=0.1)


def test_finetune_refuses_a_multi_process_launch(data, tmp_path, monkeypatch):
    from heads import finetune as ft

    monkeypatch.setattr("jax.process_count", lambda: 4)
    opts = ft.FinetuneOptions(task=8, model="cdl", data_dir=data / "nih-cxr-lt", runs=tmp_path, cache=tmp_path / "c")
    with pytest.raises(UserError, match=r"multi-process JAX launch \(4 processes\): heads finetune .*per --task"):
        ft.finetune(opts, say=lambda m: None)
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "c").exists()
