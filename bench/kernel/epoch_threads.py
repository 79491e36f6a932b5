"""Training epochs with the MPS kernel's calls on one thread against calls that share an idle core, paired.

Run from the repository root:

    python bench/kernel/epoch_threads.py --tasks 14,19 --rounds 4 --epochs 3 --out /tmp/epoch-threads.json

Five seeds of a DQC train in blocks of one member, one block per core (`heads.train`); on 2 cores that is
2 + 2 + 1 blocks per epoch, so for a third of the epoch one core has nothing to run. A `measure` call that
finds a core idle shares its examples with a helper thread (`heads.mps_ffi.set_threads`): this script
trains the same members (synthetic NIH-like features, `heads.epochbench.synthetic_data`, `--rows` rows)
with the kernel limited to 1 thread and with the default (the usable cores), alternating the order every
round so that the machine's load hits both alike, and checks that both give every member the same losses
bit for bit. Reported per task and setting: seconds per epoch (the training pass and validation), min and
median over the rounds, and the paired ratio. Prints JSON (and writes it with `--out`).
"""

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired import _machine  # noqa: E402

from cxrfeat import atomic  # noqa: E402
from cxrfeat.labels import task_labels  # noqa: E402
from heads import mps_ffi  # noqa: E402
from heads.epochbench import synthetic_data  # noqa: E402
from heads.models import make_model  # noqa: E402
from heads.train import TrainConfig, train_seeds, usable_cores  # noqa: E402


def time_task(task: int, rounds: int, epochs: int, rows: int, seeds: int) -> dict:
    n = len(task_labels(task))
    data = synthetic_data(rows, max(1, round(rows / 6.264)), 8, 2048, n, seed=task)
    model = make_model("dqc", n, layers=3, backend="fast")
    config = TrainConfig(batch_size=32, max_epochs=epochs, patience=epochs + 1)
    settings = {"one thread": 1, "shared": usable_cores()}
    seconds = {k: [] for k in settings}
    losses = {}
    for r in range(rounds):
        for name in list(settings)[:: 1 if r % 2 == 0 else -1]:
            before = mps_ffi.set_threads(settings[name])
            try:
                out = train_seeds(model, data, list(range(1, seeds + 1)), config)
            finally:
                mps_ffi.set_threads(before)
            seconds[name].append(out.train_seconds / epochs)
            got = [[(h["train_loss"], h["val_loss"]) for h in s.history] for s in out.results]
            if losses.setdefault(name, got) != got:
                raise SystemExit(f"CXR-{task}: the {name} runs differ from each other")
    if losses["one thread"] != losses["shared"]:
        raise SystemExit(f"CXR-{task}: sharing the kernel's calls changed the losses")
    ratios = [a / b for a, b in zip(seconds["one thread"], seconds["shared"], strict=True)]
    return {
        "epoch_s": {k: {"min": min(v), "median": float(np.median(v)), "all": v} for k, v in seconds.items()},
        "paired_ratio_median": float(np.median(ratios)),
        "same_losses": True,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="14,19")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    record = {
        "what": "seconds per DQC training epoch (5 seeds, blocks of 1, one per core; training pass + validation), "
        "the MPS kernel on one thread vs sharing idle cores; settings interleaved",
        "machine": _machine(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "jax": jax.__version__,
        "isa": mps_ffi.isa(),
        "rows": args.rows,
        "seeds": args.seeds,
        "epochs_per_run": args.epochs,
        "rounds": args.rounds,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average_before": os.getloadavg(),
        "results": {},
    }
    for task in (int(t) for t in args.tasks.split(",")):
        record["results"][str(task)] = time_task(task, args.rounds, args.epochs, args.rows, args.seeds)
        print(task, json.dumps(record["results"][str(task)]), file=sys.stderr)
    record["load_average_after"] = os.getloadavg()
    text = json.dumps(record, indent=2)
    if args.out:
        atomic.write_text(args.out, text + "\n")  # whole or not at all, honouring the umask
    print(text)
    return record


if __name__ == "__main__":
    main()
