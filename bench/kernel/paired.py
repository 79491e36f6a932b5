"""The MPS circuit's forms timed against each other in one process, interleaved (a shared machine's load hits
all of them alike).

Run from the repository root:

    python bench/kernel/paired.py --qubits 14,19,40 --forms xla,ffi-chains,ffi --pairs 40
    taskset -c 1 python bench/kernel/paired.py --pinned ...   # one core: time = CPU time

Each round times one value-and-gradient step (batch 32, 3 layers, float32) of every form in turn; reported
per form: min and median step, and against the first form the median of the per-round ratios (paired)
and the ratio of the minima. Forms (`heads.mps._expvals(chains=...)`): `xla` (XLA's chains), `ffi-chains`
(the kernel's chains alone, the last ring-and-rotation and the measurement in XLA: the previous kernel),
`ffi` (the last ring-and-rotation, the chains on the 4x-sparse sites and the measurement in one call).
Prints JSON (and writes it with `--out`).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cxrfeat import atomic  # noqa: E402
from heads import mps, mps_ffi  # noqa: E402


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def time_forms(n: int, forms: list[str], pairs: int, batch: int = 32, layers: int = 3) -> dict:
    rng = np.random.default_rng(n)
    a = jnp.asarray(rng.uniform(-1.5, 1.5, (batch, n)), jnp.float32)
    w = jnp.asarray(rng.uniform(-np.pi, np.pi, (layers, n)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(batch, n)), jnp.float32)

    def step(form):
        loss = lambda a, w: (mps._expvals(a, w, None, unroll=1, chains=form) * c).sum()  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, (0, 1)))

    steps = {f: step(f) for f in forms}
    for f in steps.values():
        for _ in range(3):
            jax.block_until_ready(f(a, w))
    ts = {f: [] for f in forms}
    for _ in range(pairs):
        for name, f in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(a, w))
            ts[name].append(time.perf_counter() - t0)
    base = np.asarray(ts[forms[0]])
    out = {}
    for name in forms:
        x = np.asarray(ts[name])
        out[name] = {
            "min_ms": round(1e3 * float(x.min()), 3),
            "median_ms": round(1e3 * float(np.median(x)), 3),
            "paired_ratio_median": round(float(np.median(base / x)), 3),
            "ratio_of_minima": round(float(base.min() / x.min()), 3),
        }
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qubits", default="14,19,40")
    ap.add_argument("--forms", default="xla,ffi-chains,ffi")
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--pinned", action="store_true", help="record that the process was pinned to one core")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    forms = args.forms.split(",")
    record = {
        "what": "value and gradient of the MPS circuit, batch 32, 3 layers, float32; forms interleaved",
        "machine": _machine(),
        "pinned_to_one_core": args.pinned,
        "affinity": sorted(os.sched_getaffinity(0)),
        "jax": jax.__version__,
        "isa": mps_ffi.isa(),
        "pairs": args.pairs,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average_before": os.getloadavg(),
        "results": {},
    }
    for n in (int(q) for q in args.qubits.split(",")):
        record["results"][str(n)] = time_forms(n, forms, args.pairs)
        print(n, json.dumps(record["results"][str(n)]), file=sys.stderr)
    record["load_average_after"] = os.getloadavg()
    text = json.dumps(record, indent=2)
    if args.out:
        atomic.write_text(args.out, text + "\n")  # whole or not at all, honouring the umask
    print(text)
    return record


if __name__ == "__main__":
    main()
