"""Cost of a 4-lr x 5-seed grid trained together vs the same 4 configurations one sweep at a time.

Run from the repository root: `python bench/grid_cost.py /tmp/gridcost` (tiny synthetic stores:
400 training rows x 3 views x 64 dims, CXR-8, 10 epochs, no early stop). Prints JSON.
"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, "tests")
from headsdata import make_stores
from heads.sweep import SweepSpec, run_sweep
from heads.train import TrainConfig

root = Path(sys.argv[1]); make_stores(root / "features", n_train=400, n_val=100, n_test=100, views=3, dim=64)
LRS = [1e-4, 3e-4, 1e-3, 3e-3]
out = {}
for model in ("cdl", "dqc"):
    base = dict(tasks=[8], models=[model], seeds=5, features=root / "features", feature_norm="standardize")
    cfg = TrainConfig(max_epochs=10, patience=50)
    t = time.perf_counter()
    for lr in LRS:
        run_sweep(SweepSpec(**base, runs=root / f"alone-{model}", name=f"lr{lr}", train=TrainConfig(lr=lr, max_epochs=10, patience=50)))
    alone = time.perf_counter() - t
    t = time.perf_counter()
    run_sweep(SweepSpec(**base, runs=root / f"grid-{model}", name="g", train=cfg, grid={"lr": LRS}))
    together = time.perf_counter() - t
    out[model] = {"one_at_a_time_s": round(alone, 2), "together_s": round(together, 2), "ratio": round(alone / together, 2)}
    print(model, out[model], flush=True)
print(json.dumps(out))
