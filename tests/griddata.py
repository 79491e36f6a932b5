"""Hyper-parameter grid folders for the report tests, from one real grid sweep (`heads.sweep`).

The layout the sweep writes (and the report reads):

- `runs/<sweep>/<task>/<model>/<config>/seed-<s>/`, `<config>` e.g. `lr-1e-2_layers-1`;
- config.json gains `"grid": {"name": <config>, "point": {only the varying settings}}`;
- metrics.json gains `"validation": {"loss", "mean_auroc", "per_label_auroc"}` (the best validation
  loss the run recorded, and the AUROC of its best parameters on the validation store, computed
  by the sweep);
- sweep.json gains `"grid": {"values", "varying", "configs", ...}`.

`tests/test_grid.py` checks those records against recomputations; here they are only produced.
"""

from __future__ import annotations

from pathlib import Path

from heads.plan import HeadConfig, SweepSpec
from heads.sweep import run_sweep
from heads.train import TrainConfig


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
