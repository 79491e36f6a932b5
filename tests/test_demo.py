"""The README's demo, end to end, through the real Justfile at tiny sizes (the one slower test)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cxrfeat.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_just_demo_end_to_end(tmp_path):
    just = shutil.which("just")
    if just is None:
        pytest.skip("`just` is not installed (pip install -e '.[dev]')")
    # Offline: the pretrained weights cannot be fetched, so the demo must fall back loudly to random weights.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    sizes = ["n_train=16", "n_val=10", "n_test=12", "n_external=12", "image_size=96", "views=2", "seeds=2",
             "epochs=3"]
    proc = subprocess.run([just, "-f", str(REPO / "Justfile"), "-d", str(tmp_path), *sizes, "demo"],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FALLING BACK TO --weights random" in proc.stderr
    assert "RANDOM BACKBONE WEIGHTS" in proc.stderr
    for dataset, split, rows, views in (("nih-cxr-lt", "train", 16, 2), ("nih-cxr-lt", "val", 10, 1),
                                        ("nih-cxr-lt", "test", 12, 1), ("mimic-cxr-lt", "test", 12, 1)):
        store = FeatureStore.open(tmp_path / "features" / dataset / f"{split}.zarr")
        assert store.complete and store.views == views and store.n_rows == rows
        assert store.attrs["backbone"]["random"] is True and store.attrs["synthetic"] is True
    for task in (8, 14, 19):
        for model in ("cdl", "dqc"):
            configs = sorted(p.name for p in (tmp_path / "runs" / "demo" / f"cxr-{task}" / model).iterdir())
            assert configs == ["lr-1e-3", "lr-3e-3", "lr-3e-4"]  # the demo's learning-rate grid
            for config in configs:
                for seed in (1, 2):
                    run = tmp_path / "runs" / "demo" / f"cxr-{task}" / model / config / f"seed-{seed}"
                    assert (run / "DONE").exists(), run
                    metrics = json.loads((run / "metrics.json").read_text())
                    assert set(metrics["test_sets"]) == {"nih-cxr-lt", "mimic-cxr-lt"}
    report = (tmp_path / "reports" / "demo" / "report.md").read_text()
    assert "SYNTHETIC" in report.upper()
    assert "## Hyper-parameter grid and model selection" in report  # each model at its validation-selected lr
    assert any((tmp_path / "reports" / "demo" / "figures").glob("*.png"))
