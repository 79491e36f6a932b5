"""Hyper-parameter grid folders for the report tests, from real small sweeps.

EMULATES THE GRID SWEEP (`heads sweep --lr a,b --layers c,d`, being built elsewhere): every
configuration is trained by a real `heads sweep` of one setting each (the Python API), and the
result is arranged into the grid layout of the contract:

- `runs/<sweep>/<task>/<model>/<config>/seed-<s>/`, `<config>` e.g. `lr-1e-2_layers-1`;
- config.json gains `"grid": {"name": <config>, "point": {only the varying settings}}`;
- metrics.json gains `"validation": {"loss", "mean_auroc", "per_label_auroc"}` (the best validation
  loss the run recorded, and the AUROC of its best parameters on the validation store, computed
  here from the saved parameters);
- sweep.json gains `"grid": {setting: [values]}`.
Only the grid keys are written here; everything else is what the real sweep wrote.
"""

from __future__ import annotations

import json
import shutil
from itertools import product
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
              grid: dict[str, dict[str, list]] | None = None, max_epochs: int = 2, feature_norm: str = "standardize") -> Path:
    """Train every configuration of `grid` (model -> {setting: values}; settings: lr, layers) and lay them out.

    Returns `root/runs/<name>`.
    """
    grid = grid or {"cdl": {"lr": [0.01, 0.03]}, "dqc": {"lr": [0.01, 0.03], "layers": [1, 2]}}
    sweep = root / "runs" / name
    scratch = root / "scratch"
    values: dict[str, list] = {}
    meta = None
    for model, axes in grid.items():
        for k, v in axes.items():
            values.setdefault(k, [])
            values[k] += [x for x in v if x not in values[k]]
        for combo in product(*axes.values()):
            point = dict(zip(axes, combo, strict=True))
            cfg = config_name(point)
            layers = int(point.get("layers", 3))
            spec = SweepSpec(tasks=[task], models=[model], seeds=seeds, features=features, runs=scratch,
                             name=f"{model}-{cfg}",
                             train=TrainConfig(lr=float(point.get("lr", 1e-4)), max_epochs=max_epochs, patience=2),
                             head=HeadConfig(layers=layers), feature_norm=feature_norm)
            run_sweep(spec)
            src = scratch / spec.name / f"cxr-{task}" / model
            meta = meta or json.loads((scratch / spec.name / "sweep.json").read_text())
            for seed_dir in sorted(src.glob("seed-*")):
                c = json.loads((seed_dir / "config.json").read_text())
                c["grid"] = {"name": cfg, "point": point}
                (seed_dir / "config.json").write_text(json.dumps(c))
                m = runs.read_metrics(seed_dir)
                m["validation"] = validation_record(seed_dir, features, model, layers)
                (seed_dir / "metrics.json").write_text(json.dumps(m))
            dest = sweep / f"cxr-{task}" / model / cfg
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dest))
    meta = {**meta, "name": name, "models": list(grid), "grid": values}
    (sweep / "sweep.json").write_text(json.dumps(meta))
    shutil.rmtree(scratch)
    return sweep
