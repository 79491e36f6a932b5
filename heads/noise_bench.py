"""`heads bench --noise MODEL --anchors ...`: our noisy simulators timed against PennyLane and Qiskit Aer.

Per width n, in ONE process (so the ratios share the machine's load), the same noisy DQC circuit
(`heads.noise_anchors`; batch B, L layers, inputs drawn as `heads bench` draws them) is timed:

- ours: `density` (the exact density matrix, `heads.noise.density_expvals`) and `mps` (K trajectories
  per example on the MPS, `heads.noise.trajectory_expvals`), each as a value and as value + gradient
  (in angles and weights, the training step's circuit part);
- `default.mixed`: PennyLane's exact density matrix, JAX interface, jitted, value and value + gradient;
- `aer-density`: Qiskit Aer's `density_matrix` method, values (Aer has no gradients);
- `aer-statevector`: Aer's `statevector` method with the noise model, K shots per example, each shot
  one noise trajectory, values.

A method runs at width n only up to its limit (`LIMITS`, memory: a density matrix holds 4^n numbers
per example); above it the record says `skipped`. The median of up to `steps` calls after `warmup`
calls is recorded with the first call's time (compiling, for the jitted ones; a first call over
`max_seconds` is the only one, `first_call_only`), and every record is
checked against the exact value of the same circuit: a density method's ⟨Z⟩ against ours (max |Δ|
within `DENSITY_TOL`), a trajectory method's by the t-statistic over the B examples of its
deviation from the exact value (or, where no density matrix fits, from the other trajectory
method: two independent unbiased estimates), `agrees` when every qubit's |t| is under `T_BOUND`.
Speed is reported as ratios within the run: each record's median over ours (`x_density`, `x_mps`).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cxrfeat.errors import UserError

ANCHORS = ("default.mixed", "aer-density", "aer-statevector")
OURS = ("density", "mps")
SIMULATOR = {"density": "ours", "mps": "ours", "default.mixed": "pennylane", "aer-density": "qiskit-aer",
             "aer-statevector": "qiskit-aer"}
# The widest register each method is run at here: 4^n numbers per example for the density matrices
# (batch 32, gradients on top for ours and PennyLane's), 2^n per trajectory for Aer's state vector.
LIMITS = {"density": 10, "default.mixed": 8, "aer-density": 10, "mps": 1000, "aer-statevector": 24}
DENSITY_TOL = 1e-4  # float32 (ours, PennyLane's JAX) against float64 (Aer)
T_BOUND = 4.5  # |t| over 32 examples (31 degrees of freedom): P > 4.5 is about 1e-4 per qubit
FORMAT = "heads-noise-anchors/1"


@dataclass(frozen=True)
class AnchorSettings:
    noise: str  # a model file or preset
    widths: tuple[int, ...] = (4, 8, 12)
    anchors: tuple[str, ...] = ANCHORS
    trajectories: int = 1
    batch_size: int = 32
    layers: int = 3
    warmup: int = 1
    steps: int = 5
    max_seconds: float = 60.0

    def check(self) -> None:
        from heads.noise import NoiseModel

        model = NoiseModel.load(self.noise)
        for n in self.widths:
            if n < 2:
                raise UserError("--tasks: the circuit needs at least 2 qubits")
            model.check_width(n)
        bad = [a for a in self.anchors if a not in ANCHORS]
        if bad or not self.anchors:
            raise UserError(f"--anchors: {', '.join(bad) or 'nothing given'} — choose from {', '.join(ANCHORS)}")
        for name, value in (("--trajectories", self.trajectories), ("--batch-size", self.batch_size),
                            ("--layers", self.layers), ("--steps", self.steps)):
            if value < 1:
                raise UserError(f"{name} must be at least 1, not {value}")
        if self.batch_size < 2:
            raise UserError("--batch-size: the agreement check of trajectories needs at least 2 examples")


def _time(fn, warmup: int, steps: int, max_seconds: float) -> dict:
    """Median seconds of fn() (its result blocked on), after the first call (reported) and warm-up calls."""
    import jax

    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    if first > max_seconds:  # one call is over the budget: it is the only one (compiling included, for JAX)
        return {"median_s": first, "sd_s": 0.0, "timed_steps": 0, "first_call_s": first, "first_call_only": True}, out
    spent = 0.0
    for _ in range(warmup):
        if spent > max_seconds / 4:
            break
        t = time.perf_counter()
        jax.block_until_ready(fn())
        spent += time.perf_counter() - t
    times = []
    while len(times) < steps and (not times or sum(times) < max_seconds):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return {"median_s": float(np.median(times)), "sd_s": float(np.std(times, ddof=1)) if len(times) > 1 else 0.0,
            "timed_steps": len(times), "first_call_s": first}, out


def t_statistic(estimate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per qubit, the t-statistic of the mean over examples of estimate − reference (B, n): 0 where
    the deviations are all zero."""
    d = np.asarray(estimate, np.float64) - np.asarray(reference, np.float64)
    mean, sd = d.mean(0), d.std(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (sd / math.sqrt(d.shape[0]))
    return np.where(sd > 0, t, np.where(mean == 0, 0.0, np.inf))


def run_width(n: int, s: AnchorSettings, *, on_record=None) -> list[dict]:
    """Every method's records at width n (module docstring), timed in this process."""
    import jax
    import jax.numpy as jnp

    from heads import noise as nz
    from heads import noise_anchors as na

    model = nz.NoiseModel.load(s.noise)
    rng = np.random.default_rng(0)  # the inputs `heads bench` times
    b = s.batch_size
    angles = jnp.asarray(rng.uniform(-math.pi / 2, math.pi / 2, (b, n)), jnp.float32)
    weights = jnp.asarray(rng.uniform(0, 2 * math.pi, (s.layers, n)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(b, n)), jnp.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(b))
    k = s.trajectories

    def with_grad(f):
        return jax.jit(jax.value_and_grad(lambda x, w: jnp.vdot(f(x, w), cotangent), argnums=(0, 1)))

    circuits = {  # the jittable ones: (angles, weights) -> measured ⟨Z⟩
        "density": lambda x, w: nz.density_expvals(x, w, model),
        "mps": lambda x, w: nz.trajectory_expvals(x, w, model, keys, k)[0],
        "default.mixed": lambda x, w: na.pennylane_mixed(n, model)(x, w),
    }
    records, values, grads = [], {}, {}
    base = {"qubits": n, "noise": model.name, "trajectories": k, "batch_size": b, "layers": s.layers}

    def emit(record):
        records.append(record)
        if on_record:
            on_record(record)

    for method in [m for m in ("density", "mps", "default.mixed", "aer-density", "aer-statevector")
                   if m in OURS or m in s.anchors]:
        kind = "trajectories" if method in ("mps", "aer-statevector") else "exact"
        head = {**base, "simulator": SIMULATOR[method], "method": method, "kind": kind}
        if n > LIMITS[method]:
            emit({**head, "operation": "value", "status": f"skipped: above {LIMITS[method]} qubits"})
            continue
        try:
            if method.startswith("aer"):
                sim = na.aer_simulator(model, n, "density_matrix" if method == "aer-density" else "statevector")
                prepared = na.aer_circuits(np.asarray(angles), np.asarray(weights))  # built once, as our inputs
                shots = 1 if method == "aer-density" else k
                timing, out = _time(functools.partial(na.aer_run, sim, prepared, model, shots=shots, seed=0),
                                    s.warmup, s.steps, s.max_seconds)
                values[method] = np.asarray(out[0])
                emit({**head, "operation": "value", "status": "ok", **timing})
                continue
            f = circuits[method]
            value = jax.jit(f)
            timing, out = _time(functools.partial(value, angles, weights), s.warmup, s.steps, s.max_seconds)
            values[method] = np.asarray(out)
            emit({**head, "operation": "value", "status": "ok", **timing})
            grad = with_grad(f)
            timing, (_, g) = _time(functools.partial(grad, angles, weights), s.warmup, s.steps, s.max_seconds)
            grads[method] = np.concatenate([np.ravel(g[0]), np.ravel(g[1])])
            emit({**head, "operation": "value+grad", "status": "ok", **timing})
        except Exception as e:  # one failing simulator (memory, a missing package) must not lose the others
            if isinstance(e, UserError):
                raise
            emit({**head, "operation": "value", "status": f"error: {type(e).__name__}: {e}"[:300]})
    twirled = None
    if "density" in values and any(model.at(q).relaxation(1) != (0, 0) or model.at(q).relaxation(2) != (0, 0)
                                   for q in range(n)):
        twirled = np.asarray(nz.density_expvals(angles, weights, model, twirled=True))
    check(records, values, twirled, grads)
    add_ratios(records)
    return records


def check(records: list[dict], values: dict[str, np.ndarray], twirled: np.ndarray | None = None,
          grads: dict[str, np.ndarray] | None = None) -> None:
    """Each record's agreement with the exact value of the same circuit (module docstring), in place.
    `twirled`: ours exact with relaxation Pauli-twirled, what our trajectories estimate; `grads`: the
    exact methods' gradients (flattened), compared where two of them ran."""
    exact_name = next((m for m in ("density", "aer-density", "default.mixed") if m in values), None)
    grads = grads or {}
    for r in records:
        m = r["method"]
        if r["status"] != "ok" or m not in values:
            continue
        if r["operation"] == "value+grad":
            other = {"density": "default.mixed", "default.mixed": "density"}.get(m)
            if m in grads and other in grads:
                diff = float(np.max(np.abs(grads[m] - grads[other])))
                tol = DENSITY_TOL * max(1.0, float(np.max(np.abs(grads[other]))))
                r.update(reference=other, max_abs_grad_diff=diff, agrees=diff <= tol)
            continue
        if r["kind"] == "exact":
            ref = "density" if m != "density" else next((x for x in ("aer-density", "default.mixed") if x in values), None)
            if ref is None:
                continue
            diff = float(np.max(np.abs(values[m] - values[ref])))
            r.update(reference=ref, max_abs_diff=diff, agrees=diff <= DENSITY_TOL)
            continue
        if exact_name is not None:
            ref_name, ref = exact_name, values[exact_name]
            if m == "mps" and twirled is not None:
                ref_name, ref = "density (relaxation twirled)", twirled
        else:
            other = "aer-statevector" if m == "mps" else "mps"
            if other not in values:
                continue
            ref_name, ref = other, values[other]
        t = float(np.max(np.abs(t_statistic(values[m], ref))))
        r.update(reference=ref_name, max_abs_t=t, agrees=t < T_BOUND,
                 max_abs_diff=float(np.max(np.abs(values[m] - ref))))


def add_ratios(records: list[dict]) -> None:
    """`x_density`, `x_mps`: a record's median over ours for the same width and operation."""
    ours = {(r["method"], r["operation"]): r["median_s"] for r in records if r["status"] == "ok" and r["method"] in OURS}
    for r in records:
        if r["status"] != "ok":
            continue
        for method in OURS:
            if (method, r["operation"]) in ours:
                r[f"x_{method}"] = r["median_s"] / ours[(method, r["operation"])]


def run_anchor_bench(s: AnchorSettings, out, *, console=None):
    """`heads bench --noise ... --anchors ...`: every width, then <out>/<machine>-anchors.json and .md."""
    from cxrfeat.atomic import write_json, write_text
    from heads import bench

    s.check()
    machine = bench.describe_machine()
    try:
        import qiskit_aer

        machine["details"]["qiskit_aer"] = qiskit_aer.__version__
    except ImportError:
        pass

    def progress(r):
        if console is not None:
            what = f"{r['qubits']:>3} qubits {r['method']:<16} {r['operation']:<10}"
            console.print(f"  {what} {_cell(r)}")

    records = []
    for n in s.widths:
        records += run_width(n, s, on_record=progress)
    doc = {"format": FORMAT, "machine": machine["name"], "machine_details": {**machine["details"],
           "load_average_end": bench._load()}, "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "settings": asdict(s), "records": records}
    path = Path(out) / f"{machine['slug']}-anchors.json"
    write_json(path, doc)
    write_text(path.with_suffix(".md"), markdown(doc))
    return path, doc


def _cell(r: dict) -> str:
    if r["status"] != "ok":
        return r["status"]
    from heads.bench import _duration

    return f"median {_duration(r['median_s'])}, first call {r['first_call_s']:.1f} s" + (
        f", {_agreement(r)}" if "agrees" in r else "")


def _agreement(r: dict) -> str:
    if "max_abs_grad_diff" in r:
        what = f"max |Δ gradient| {r['max_abs_grad_diff']:.1e} vs {r['reference']}"
    elif "max_abs_t" in r:
        what = f"|t| ≤ {r['max_abs_t']:.1f} vs {r['reference']}"
    else:
        what = f"max |Δ⟨Z⟩| {r['max_abs_diff']:.1e} vs {r['reference']}"
    return ("agrees: " if r["agrees"] else "DISAGREES: ") + what


def markdown(doc: dict) -> str:
    """The run as a Markdown table."""
    from heads.bench import _duration

    s = doc["settings"]
    lines = [f"Measured by `heads bench --noise {s['noise']} --anchors` on {doc['machine']}, {doc['date'][:10]}: "
             f"batch {s['batch_size']}, {s['layers']} layers, trajectories per example: {s['trajectories']} "
             f"(ours: MPS; Aer: statevector shots), median of up to {s['steps']} calls after the first and up to "
             f"{s['warmup']} warm-up calls, every simulator in one process per width.", "",
             "| qubits | simulator | method | operation | median | SD | calls | first call | × ours density | × ours MPS | agreement |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["records"]:
        head = f"| {r['qubits']} | {r['simulator']} | {r['method']} | {r['operation']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']} | | | | | | |")
            continue
        ratio = {m: f"{r[f'x_{m}']:.3g}" if f"x_{m}" in r else "" for m in OURS}
        median = _duration(r["median_s"]) + (" (first call only)" if r.get("first_call_only") else "")
        lines.append(f"{head} {median} | {_duration(r['sd_s'])} | {r['timed_steps']} | "
                     f"{r['first_call_s']:.1f} s | {ratio['density']} | {ratio['mps']} | "
                     f"{_agreement(r) if 'agrees' in r else ''} |")
    lines += ["", "× ours: this median over ours (same width and operation; > 1: ours is faster). Agreement: a density "
              f"method's max |Δ⟨Z⟩| against another's (tolerance {DENSITY_TOL:g}; gradients: ours against PennyLane's, "
              f"relative to the largest); a trajectory method's largest "
              f"per-qubit |t| over the {s['batch_size']} examples of its deviation from the exact value (or from the "
              f"other trajectory method where no density matrix fits; bound {T_BOUND:g})."]
    return "\n".join(lines) + "\n"
