"""Cost of a 4-lr x 5-seed grid trained together vs the same 4 configurations one sweep at a time.

Run from the repository root: `python bench/grid_cost.py /tmp/gridcost` (tiny synthetic stores:
400 training rows x 3 views x 64 dims, CXR-8, 10 epochs, no early stop). Prints JSON; wall
seconds include compilation, loading the stores and writing the runs. One order (one at a time
first), one process, so both see the same machine load as nearly as possible.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, "tests")

from headsdata import make_stores  # noqa: E402

from heads.sweep import SweepSpec, run_sweep  # noqa: E402
from heads.train import TrainConfig  # noqa: E402

LRS = [1e-4, 3e-4, 1e-3, 3e-3]


def main(root: Path) -> dict:
    make_stores(root / "features", n_train=400, n_val=100, n_test=100, views=3, dim=64)
    out = {}
    for model in ("cdl", "dqc"):
        base = dict(tasks=[8], models=[model], seeds=5, features=root / "features", feature_norm="standardize")
        t = time.perf_counter()
        for lr in LRS:
            run_sweep(SweepSpec(**base, runs=root / f"alone-{model}", name=f"lr{lr}",
                                train=TrainConfig(lr=lr, max_epochs=10, patience=50)))
        alone = time.perf_counter() - t
        t = time.perf_counter()
        run_sweep(SweepSpec(**base, runs=root / f"grid-{model}", name="g", train=TrainConfig(max_epochs=10, patience=50),
                            grid={"lr": LRS}))
        together = time.perf_counter() - t
        out[model] = {"one_at_a_time_s": round(alone, 2), "together_s": round(together, 2),
                      "ratio": round(alone / together, 2)}
        print(model, out[model], file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
