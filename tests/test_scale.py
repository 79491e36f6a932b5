"""Scaling out: extraction on every local device, `--part i/N` processes filling one store, and the
refusal of multi-process JAX launches."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from conftest import TINY_RESNET

from cxrfeat.extract import extract
from cxrfeat.store import FeatureStore

HERE = os.path.dirname(__file__)


def _run(data, out, backbone, split="train", **kw):
    kw.setdefault("views", 3)
    return extract(dataset="nih-cxr-lt", split=split, data_dir=data / "nih-cxr-lt", out=out, backbone=backbone,
                   chunk_rows=2, batch_size=6, progress=False, announce=lambda m: None, **kw)


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
