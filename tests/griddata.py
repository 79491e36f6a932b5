"""Hyper-parameter grid folders for the report tests, from one real grid sweep (`heads.sweep`).

The layout the sweep writes (and the report reads):

- `runs/<sweep>/<task>/<model>/<config>/seed-<s>/`, `<config>` e.g. `lr-1e-2_layers-1`;
- config.json gains `"grid": {"name": <config>, "point": {only the varying settings}}`;
- metrics.json gains `"validation": {"loss", "mean_auroc", "per_label_auroc"}` (the best validation
  loss the run recorded, and the AUROC of its best parameters on the validation store, computed
  here from the saved parameters);
- sweep.json gains `"grid": {"values", "varying", "configs", ...}`.
`validation_record` recomputes a run's `validation` block from its saved parameters (a reference).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cxrfeat.store import load_features
from heads import runs
from heads.metrics import auroc_report
from heads.models import make_model
from heads.sweep import HeadConfig, SweepSpec, run_sweep
from heads.train import TrainConfig


def config_name(point: dict) -> str:
    """`lr-1e-2_layers-1`: the varying settings, in the grid's key order."""
    return "_".join(f"{k.replace('_', '-')}-{_fmt(v)}" for k, v in point.items())


def _fmt(v) -> str:
    return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e") if isinstance(v, float) else str(v)


def validation_record(run_dir: Path, features: Path, model: str, layers: int) -> dict:
    """metrics.json `validation`: best val loss and the best parameters' AUROC on the val store."""
    config = json.loads((run_dir / "config.json").read_text())
    metrics = runs.read_metrics(run_dir)
    names = config["labels"]
    val = load_features(features / "nih-cxr-lt" / "val.zarr")
    cols = [list(val.label_names).index(n) for n in names]
    x = np.asarray(val.embeddings[:, 0], np.float32)
    if (run_dir / "feature_norm.npz").exists():
        with np.load(run_dir / "feature_norm.npz") as f:
            x = ((x - f["mean"]) / f["sd"]).astype(np.float32)
    params = runs.load_params(run_dir)
    logits = np.asarray(make_model(model, len(names), layers=layers).apply({"params": params}, x), np.float64)
    report = auroc_report(np.asarray(val.labels)[:, cols], 1 / (1 + np.exp(-logits)), names)
    return {"loss": metrics["best_val_loss"], "mean_auroc": report["mean_auroc"], "per_label_auroc": report["per_label"]}


def make_grid(root: Path, features: Path, *, name: str = "grid", task: int = 8, seeds: int = 2,
              grid: dict[str, list] | None = None, max_epochs: int = 2, feature_norm: str = "standardize") -> Path:
    """Train every configuration of `grid` (setting -> values; CDL ignores layers) with ONE real grid sweep
    (`heads sweep --lr 0.01,0.03 --layers 1,2`). Returns `root/runs/<name>`."""
    grid = grid or {"lr": [0.01, 0.03], "layers": [1, 2]}
    spec = SweepSpec(tasks=[task], models=["cdl", "dqc"], seeds=seeds, features=features, runs=root / "runs",
                     name=name, train=TrainConfig(max_epochs=max_epochs, patience=2), head=HeadConfig(),
                     feature_norm=feature_norm, grid=grid)
    run_sweep(spec)
    return root / "runs" / name
