"""Cost of a hyper-parameter grid trained together vs the same configurations one sweep at a time.

Run from the repository root:

    python bench/grid_cost.py /tmp/gridcost                 # tiny synthetic stores (the default grid)
    python bench/grid_cost.py /tmp/gc --features features --tasks 8 --models dqc \\
        --lr 1e-4,3e-4,1e-3,3e-3 --layers 1,3,5 --circuit-init uniform,normal --max-epochs 30

Without `--features` it makes tiny synthetic stores (400 training rows x 3 views x 64 dims) and
times a 4-lr grid on CXR-8 for 10 epochs. "Together" is one `heads sweep` of the whole grid;
"one at a time" is one sweep per (model, configuration), over the same tasks and seeds. Wall
seconds include compilation, loading the stores and writing the runs; one process, one order (one
at a time first), so both see the same machine load as nearly as possible. Early stopping is off
(patience > epochs) unless `--patience` is given, so both do the same epochs. Prints JSON.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, "tests")

from headsdata import make_stores  # noqa: E402

from heads.plan import HeadConfig, SweepSpec  # noqa: E402
from heads.sweep import run_sweep  # noqa: E402
from heads.train import TrainConfig  # noqa: E402


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",")]


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="work folder (runs are written under it)")
    ap.add_argument("--features", type=Path, help="existing feature stores (default: tiny synthetic ones)")
    ap.add_argument("--tasks", default="8")
    ap.add_argument("--models", default="cdl,dqc")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--lr", type=_floats, default=[1e-4, 3e-4, 1e-3, 3e-3])
    ap.add_argument("--layers", type=lambda s: [int(v) for v in s.split(",")], default=[3])
    ap.add_argument("--circuit-init", type=lambda s: s.split(","), default=["uniform"])
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=None, help="default: larger than --max-epochs (no early stop)")
    ap.add_argument("--feature-norm", default="standardize")
    a = ap.parse_args(argv)

    features = a.features
    if features is None:
        features = make_stores(a.out / "features", n_train=400, n_val=100, n_test=100, views=3, dim=64)
    grid = {"lr": a.lr, "layers": a.layers, "circuit_init": a.circuit_init}
    train = TrainConfig(max_epochs=a.max_epochs, patience=a.patience or a.max_epochs + 1)
    base = SweepSpec(tasks=[int(t) for t in a.tasks.split(",")], models=[], seeds=a.seeds, features=features,
                     runs=a.out, name="", train=train, head=HeadConfig(), feature_norm=a.feature_norm, grid=grid)
    out = {"machine": _machine(), "script": "bench/grid_cost.py", "argv": sys.argv[1:] if argv is None else argv,
           "results": {}}
    for model in a.models.split(","):
        spec = replace(base, models=[model])
        configs = spec.configs(model)
        t = time.perf_counter()
        for config in configs:
            run_sweep(replace(spec.at(config), runs=a.out / f"alone-{model}", name=config.name or "default"))
        alone = time.perf_counter() - t
        t = time.perf_counter()
        run_sweep(replace(spec, runs=a.out / f"grid-{model}", name="g"))
        together = time.perf_counter() - t
        out["results"][model] = {"configs": len(configs), "one_at_a_time_s": round(alone, 2),
                                 "together_s": round(together, 2), "ratio": round(alone / together, 2)}
        print(model, out["results"][model], file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
