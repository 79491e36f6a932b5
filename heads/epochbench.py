"""Time whole training epochs at the NIH-CXR-LT size and project the paper's sweep.

For each (task, model): synthetic features of the NIH training size (78,506 rows × 8 views ×
2048, generated on the device) and validation size (12,533 rows), all seeds together through the
real training program (`heads.train.train_seeds`, one epoch after compilation). Reported: seconds
per epoch (training pass + validation), compile seconds, and the projected time of the whole sweep
= Σ over (task, model) of compile + `epochs` × epoch seconds — an upper bound, since early
stopping usually ends runs sooner. With `rows` below the NIH size (slow machines), training and
validation rows shrink by the same fraction and the epoch time is scaled back up by it
(labelled `scaled`).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from cxrfeat.labels import task_labels
from heads.models import make_model
from heads.train import TrainConfig, TrainData, train_seeds

NIH_TRAIN_ROWS = 78_506
NIH_VAL_ROWS = 12_533


def synthetic_data(rows: int, val_rows: int, views: int, dim: int, labels: int, seed: int = 0) -> TrainData:
    """Gaussian features made on the device (no host copy of gigabytes), long-tailed 0/1 labels."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.2, 0.005, labels)
    return TrainData(
        train_x=jax.random.normal(k1, (rows, views, dim), np.float32),
        train_y=(rng.random((rows, labels)) < prevalence).astype(np.int8),
        val_x=np.asarray(jax.random.normal(k2, (val_rows, dim), np.float32)),
        val_y=(rng.random((val_rows, labels)) < prevalence).astype(np.int8),
    )


def time_epochs(*, tasks=(8, 14, 19), models=("cdl", "dqc"), seeds: int = 5, rows: int = NIH_TRAIN_ROWS,
                views: int = 8, dim: int = 2048, batch_size: int = 32, epochs: int = 50, backend: str = "fast",
                layers: int = 3, on_result=None) -> dict:
    """One timed epoch per (task, model); returns the JSON-ready record (see module docstring)."""
    rows = min(rows, NIH_TRAIN_ROWS)
    scale = NIH_TRAIN_ROWS / rows
    val_rows = max(1, round(NIH_VAL_ROWS / scale))
    steps = -(-rows // batch_size)
    results = []
    for task in tasks:
        n = len(task_labels(task))
        data = synthetic_data(rows, val_rows, views, dim, n, seed=task)
        for model_name in models:
            model = make_model(model_name, n, layers=layers, backend=backend)
            config = TrainConfig(batch_size=batch_size, max_epochs=1, patience=1)
            r = train_seeds(model, data, list(range(1, seeds + 1)), config)
            epoch_s = round(r.train_seconds, 6)  # the projection is made from the recorded figure
            projected_epoch = epoch_s * scale
            row = {"task": task, "model": model_name, "seeds": seeds, "rows": rows, "steps": steps,
                   "compile_s": round(r.compile_seconds, 3), "epoch_s": epoch_s,
                   "epoch_s_nih": round(projected_epoch, 4), "scaled": rows < NIH_TRAIN_ROWS,
                   "run_s_nih": round(r.compile_seconds + epochs * projected_epoch, 2)}
            results.append(row)
            if on_result:
                on_result(row)
        del data
    devices = jax.local_devices()
    return {
        "what": "seconds per training epoch (all seeds together, + validation) and the projected sweep",
        "device": f"{devices[0].platform}: {devices[0].device_kind}" + (f" x{len(devices)}" if len(devices) > 1 else ""),
        "host": platform.node(), "cpu_count": os.cpu_count(),
        "jax": jax.__version__, "backend": backend, "layers": layers, "views": views, "dim": dim,
        "batch_size": batch_size, "rows": rows, "val_rows": val_rows, "scale": round(scale, 4), "epochs": epochs,
        "nih_train_rows": NIH_TRAIN_ROWS, "nih_val_rows": NIH_VAL_ROWS,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
        "projected_sweep_s": round(sum(r["run_s_nih"] for r in results), 1),
    }


def run_epoch_bench(*, tasks, models, seeds: int, rows: int, views: int, dim: int, epochs: int, backend: str,
                    layers: int, out: Path | None, console) -> Path:
    """`heads bench-epoch`: time every (task, model), print the table and the projected sweep, write the JSON
    (default `bench/epoch-<platform>.json`); returns its path."""
    from rich.table import Table

    from cxrfeat import atomic
    from cxrfeat.console import print_table
    from cxrfeat.errors import UserError

    if min(seeds, rows, views, dim, epochs) < 1:
        raise UserError("--seeds, --rows, --views, --dim and --epochs must be at least 1")
    record = time_epochs(tasks=tasks, models=models, seeds=seeds, rows=rows, views=views, dim=dim, epochs=epochs,
                         backend=backend, layers=layers,
                         on_result=lambda r: console.print(f"CXR-{r['task']} {r['model'].upper()}: {r['epoch_s']:.2f} "
                                                           f"s/epoch ({r['rows']} rows), compile {r['compile_s']:.1f} s"))
    table = Table(title=f"One epoch, {seeds} seeds together, on {record['device']}"
                  + (f" (timed on {record['rows']} rows, scaled x{record['scale']:.1f})" if record["scale"] > 1 else ""))
    for col in ("Task", "Model", "Compile s", "Epoch s (NIH size)", f"{epochs} epochs + compile, s"):
        table.add_column(col, justify="left" if col in ("Task", "Model") else "right")
    for r in record["results"]:
        table.add_row(f"CXR-{r['task']}", r["model"].upper(), f"{r['compile_s']:.1f}", f"{r['epoch_s_nih']:.1f}",
                      f"{r['run_s_nih']:.0f}")
    print_table(console, table)
    console.print(f"projected sweep ({len(record['results'])} runs x {seeds} seeds, {epochs} epochs, no early stop): "
                  f"{record['projected_sweep_s'] / 3600:.2f} h")
    out = Path(out) if out is not None else Path("bench") / f"epoch-{jax.devices()[0].platform}.json"
    atomic.write_json(out, record)
    console.print(f"wrote {out}")
    return out
