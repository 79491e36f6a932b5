"""`heads noise`: finished DQC heads evaluated under a device noise model, at several error scales.

For every finished DQC run (as `heads shots` finds them) and test set:

    embedding → (standardize, if the run did) → pre Dense → tanh → ×π/2 → noisy circuit ⟨Z⟩
              → post Dense → sigmoid → AUROC and AUPRC

with the noise model (`heads.noise.NoiseModel`, a TOML file or a preset) multiplied by each scale
(`--scale 0,0.1,0.3,1,3`; 0 is the noiseless circuit, computed exactly as the "exact" column). Writes `noise.json` into the run folder:
per test set the exact (noiseless) metrics and, per scale, the mean AUROC and AUPRC over labels,
per-label AUROC, how ⟨Z⟩ was computed, and — for trajectories — the mean standard error of the
estimated ⟨Z⟩ over the examples. Training is untouched.

Methods (`--method`): `density` (exact, registers up to `DENSITY_MAX_QUBITS`), `mps` (K trajectories
per example, `--trajectories`), `auto` (density up to `AUTO_DENSITY_QUBITS` qubits, where it is cheap:
at 8 qubits it took 60 ms per example on 2 cores, trajectories far less; else trajectories). Trajectory keys:
example i of test set t of the run with seed s uses key(0) folded with --seed, s, crc32(t) and i,
the same draws at every scale (common random numbers, so AUROC against scale is not jagged by
sampling), and whatever the chunking.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrfeat import __version__, atomic
from cxrfeat.errors import UserError
from heads import runs
from heads import shots as sh
from heads.noise import NoiseModel

NOISE_FILE = "noise.json"
FORMAT = 1
METHODS = ("auto", "density", "mps")
DENSITY_MAX_QUBITS = 10  # --method density: 4^n numbers per example (heads.noise allows 12)
AUTO_DENSITY_QUBITS = 6  # --method auto: exact up to here (measured: 60 ms per example at 8 qubits on 2 cores)
DEFAULT_SCALES = (0.0, 0.1, 0.3, 1.0, 3.0)
CHUNK = 256  # examples per simulator call (× trajectories)


@dataclass
class NoiseSettings:
    model: NoiseModel
    scales: Sequence[float] = DEFAULT_SCALES
    trajectories: int = 32
    method: str = "auto"
    seed: int = 0
    features: Path | None = None

    def check(self) -> None:
        if not self.scales or any(not (s >= 0) for s in self.scales):
            raise UserError(f"--scale: give error scales >= 0, e.g. 0,0.1,1 (got {list(self.scales)})")
        if self.trajectories < 1:
            raise UserError(f"--trajectories must be at least 1, not {self.trajectories}")
        if self.method not in METHODS:
            raise UserError(f"--method {self.method!r}: choose from {', '.join(METHODS)}")
        if self.seed < 0:
            raise UserError(f"--seed must be non-negative, not {self.seed}")
        for s in self.scales:
            self.model.scaled(s).check(where=f"the noise model {self.model.name} at scale {s:g}")

    def record(self) -> dict:
        return {"model": self.model.to_json(), "scales": [float(s) for s in self.scales],
                "trajectories": self.trajectories, "method": self.method, "seed": self.seed}


def parse_scales(spec: str) -> list[float]:
    """'0,0.1,1' -> [0.0, 0.1, 1.0] (sorted, unique)."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"--scale {spec!r}: {part!r} is not a number") from None
        if not value >= 0:
            raise UserError(f"--scale {spec!r}: {part!r} is negative")
        out.append(value)
    if not out:
        raise UserError("--scale is empty: give e.g. 0,0.1,0.3,1,3")
    return sorted(set(out))


def method_for(n: int, method: str) -> str:
    if method == "auto":
        return "density" if n <= AUTO_DENSITY_QUBITS else "mps"
    if method == "density" and n > DENSITY_MAX_QUBITS:
        raise UserError(f"--method density: {n} qubits is above {DENSITY_MAX_QUBITS} (4^n numbers per example); "
                        f"use mps (trajectories) or auto")
    return method


def noisy_z(angles: np.ndarray, theta: np.ndarray, model: NoiseModel, method: str, *, trajectories: int,
            key_seed: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """(measured ⟨Z⟩ (N, n), standard error (N, n) or None for the exact method), in chunks."""
    import jax
    import jax.numpy as jnp

    from heads import noise as nz

    base = jax.random.key(0)
    for part in key_seed:
        base = jax.random.fold_in(base, int(part) & 0xFFFFFFFF)
    theta = jnp.asarray(theta, jnp.float32)
    zs, ses = [], []
    for start in range(0, angles.shape[0], CHUNK):
        a = jnp.asarray(angles[start:start + CHUNK], jnp.float32)
        if method == "density":
            zs.append(np.asarray(nz.density_expvals(a, theta, model), np.float64))
            continue
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(start, start + a.shape[0]))
        mean, se = nz.trajectory_expvals(a, theta, model, keys, trajectories)
        zs.append(np.asarray(mean, np.float64))
        ses.append(np.asarray(se, np.float64))
    return np.concatenate(zs), (np.concatenate(ses) if ses else None)


def evaluate_test(run: sh.DQCRun, t: sh.TestInputs, settings: NoiseSettings, *,
                  step: Callable[[], None] | None = None) -> dict:
    exact_auroc, exact_auprc = sh._label_metrics(t.y_true, t.exact_prob)
    method = method_for(run.n, settings.method)
    theta = np.asarray(run.params["circuit"], np.float32)
    rows = []
    for scale in settings.scales:
        model = settings.model.scaled(scale)
        if model.is_zero:  # the noiseless circuit: the run's own exact ⟨Z⟩ (the same bits as "exact")
            z, se, how = t.z, None, "exact"
        else:
            z, se = noisy_z(t.angles, theta, model, method, trajectories=settings.trajectories,
                            key_seed=[settings.seed, run.seed, zlib.crc32(t.name.encode())])
            how = method
        aurocs, auprcs = sh._label_metrics(t.y_true, sh.post(run, z))
        rows.append({"scale": float(scale), "method": how,
                     "trajectories": settings.trajectories if how == "mps" else None,
                     "auroc_mean": sh._mean(aurocs), "auprc_mean": sh._mean(auprcs),
                     "per_label_auroc": dict(zip(run.labels, aurocs, strict=True)),
                     "z_stderr_mean": float(se.mean()) if se is not None else None,
                     "z_shift_mean": float(np.abs(z - t.z).mean())})
        if step:
            step()
    return {"n": int(t.y_true.shape[0]), "store": str(t.store),
            "exact": {"mean_auroc": sh._mean(exact_auroc), "mean_auprc": sh._mean(exact_auprc)},
            "scales": rows}


def evaluate_run(path: str | Path, settings: NoiseSettings, *, step: Callable[[], None] | None = None) -> dict:
    """Evaluate one finished DQC run under the noise model; writes noise.json into it and returns it."""
    settings.check()
    run = sh.open_run(path, purpose="noise models apply")
    inputs = {key: sh.load_test(run, key, settings.features) for key in sh.test_sets(run)}
    doc = {"format": FORMAT, "run": sh._header(run), "settings": settings.record(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "package_version": __version__,
           "test_sets": {key: evaluate_test(run, t, settings, step=step) for key, t in inputs.items()}}
    atomic.write_json(run.path / NOISE_FILE, doc)
    return doc


def noise_table(docs: Sequence[tuple[Path, dict]], settings: NoiseSettings):
    from rich.table import Table

    m = settings.model
    table = Table(title=f"AUROC under the noise model {m.name} ({m.source or 'no source given'}) × scale")
    for col in ("Run", "Test set", "Exact", *(f"× {s:g}" for s in settings.scales)):
        table.add_column(col, justify="left" if col in ("Run", "Test set") else "right")
    for path, doc in docs:
        label = sh.run_label(sh.RunOutcome(path, doc["run"]["task"], doc["run"]["seed"]))
        for key, entry in doc["test_sets"].items():
            exact = entry["exact"]["mean_auroc"]
            cells = ["undefined" if r["auroc_mean"] is None else f"{r['auroc_mean']:.4f}" for r in entry["scales"]]
            table.add_row(label, key, "undefined" if exact is None else f"{exact:.4f}", *cells)
    return table


def _test_set_count(path: Path) -> int:
    try:
        return len(runs.read_config(path).data.test_sets) or 1
    except UserError:
        return 1  # open_run names the fault when the run is evaluated


def run_noise(run_dirs: Sequence[str | Path], settings: NoiseSettings) -> list[tuple[Path, dict]]:
    """`heads noise`: every finished DQC run under `run_dirs` (progress on stderr: a bar on a terminal, lines
    in a log; `cxrfeat.console`), then the table."""
    import sys

    from cxrfeat.console import make_console, print_table, progress

    settings.check()
    err = make_console(stderr=True)
    paths = sh.find_dqc_runs(run_dirs, warn=lambda msg: err.print(msg, markup=False))
    docs = []
    with progress(err, unit="scale", transient=True) as bars:
        bar = bars.add_task("noise scales", total=sum(_test_set_count(p) for p in paths) * len(settings.scales))
        for p in paths:
            bars.update(bar, description=f"noise scales ({p})")
            docs.append((Path(p), evaluate_run(p, settings, step=lambda: bars.advance(bar))))
    print_table(make_console(), noise_table(docs, settings))
    print(f"wrote {NOISE_FILE} into {len(docs)} run folder(s)", file=sys.stderr)
    return docs
