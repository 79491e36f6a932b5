"""A trained DQC measured with finitely many shots, and the effective width of its quantum layer.

The paper (and `heads train`) uses exact expectation values ⟨Z_i⟩. Hardware estimates them from N
shots per example: every shot measures qubit i as ±1, with P(−1) = (1 − ⟨Z_i⟩)/2, and the estimate
is the mean of the N outcomes. `heads shots RUN_DIR` evaluates a finished DQC run that way:

    embedding → (standardize, if the run did) → pre Dense → tanh → ×π/2 → circuit → ⟨Z⟩ exact
              → ẑ from N sampled shots (optionally with readout error) → post Dense → sigmoid

and writes `shots.json` (AUROC and AUPRC per test set and shot count, mean ± sd over repeated
draws, beside the exact values) and `width.json` (below) into the run folder. Training is exact;
only evaluation is sampled.

Sampling (`sampling=`):
- `marginal` (the default): each qubit's count of −1 outcomes is drawn on
  its own, k_i ~ Binomial(N, q_i), ẑ_i = 1 − 2 k_i / N. With readout error p every outcome is
  flipped with probability p, so q_i = p + (1 − 2p)(1 − ⟨Z_i⟩)/2 and E[ẑ_i] = (1 − 2p)⟨Z_i⟩.
  This ignores the correlations between qubits. Precisely: on hardware all n qubits are read in
  the same shot, so the n estimates from one set of N shots are correlated,
  Cov(ẑ_i, ẑ_j) = (⟨Z_i Z_j⟩ − ⟨Z_i⟩⟨Z_j⟩)/N (times (1 − 2p)² with independent readout flips).
  Marginal sampling gets every ẑ_i's distribution exactly right (mean and variance
  (1 − ⟨Z_i⟩²)/N, with p: 1 − (1 − 2p)²⟨Z_i⟩²) but sets these covariances to zero. Because the
  post layer is linear, logit_j = Σ_k W_kj ẑ_k + b_j keeps the exact mean whatever the
  correlations, but its shot noise Var(logit_j) = Σ_k Σ_l W_kj W_lj Cov(ẑ_k, ẑ_l) has cross terms
  that marginal sampling drops: the logits' noise, and so the AUROC at finite N, can be over- or
  under-estimated (a per-label AUROC depends on its own logit only, so only correlations *within*
  one logit's qubit mixture matter, not those between labels). Correlations change nothing in
  the N → ∞ limit. The ring makes ⟨Z_k⟩ a prefix parity, so these correlations are not small.
- `joint`: whole n-bit strings are drawn from the circuit's exact output distribution (one
  multinomial over 2^n outcomes per example, from a small float64 state-vector simulation here,
  checked against `heads.quantum`), then readout flips are applied to the per-qubit counts
  (given the true count m_i, the observed one is Binomial(m_i, 1 − p) + Binomial(N − m_i, p),
  independently per qubit). This is what hardware does; it costs 2^n per example, so it is
  limited to `JOINT_MAX_QUBITS` qubits.

Readout mitigation (dividing every ẑ_i by 1 − 2p) is not offered: it turns each logit
Σ_k W_kj ẑ_k + b_j into Σ_k W_kj ẑ_k/(1 − 2p) + b_j, a positive affine map of the unmitigated
logit, and AUROC and AUPRC are rank statistics of one label's scores, so neither would change.

Draws are seeded: repeat r of shot count N on test set t of the run with seed s uses
`numpy.random.default_rng([seed, s, r, N, crc32(t)])`, so every number is reproducible and no two
cells share a stream.

Effective width (`width.json`): for the ring ansatz ⟨Z_k⟩ after the last ring is the expectation
of a parity of k+1 bits before it, so later qubits may carry exponentially little signal. Per
test set we record the standard deviation over the test examples (population sd, ddof=0) of each
exact ⟨Z_k⟩, its mean, and how many qubits have sd > `threshold` (default 1e-2). A qubit with
sd ≈ 0 is a constant the post layer folds into its bias. `shots_to_resolve` is, per qubit, the
shot count at which the mean shot-noise variance E[1 − ⟨Z_k⟩²]/N equals the signal variance sd²:
fewer shots than that and the qubit's variation across examples is mostly noise.
"""

from __future__ import annotations

import math
import statistics
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrfeat import __version__, atomic
from cxrfeat.errors import UserError
from heads import runs
from heads.record import RunConfig

DEFAULT_SHOTS = (10, 100, 1000, 10000)
DEFAULT_REPEATS = 5
DEFAULT_THRESHOLD = 1e-2
SAMPLINGS = ("marginal", "joint")
JOINT_MAX_QUBITS = 14
SHOTS_FILE = "shots.json"
WIDTH_FILE = "width.json"
FORMAT = 1
# Saved predictions and the ones recomputed here come from the same float32 arithmetic in a
# different batching; anything beyond this means the feature store is not the one the run used.
_PREDICTION_TOLERANCE = 1e-4


# ---------------------------------------------------------------- sampling
def readout_probability(z: np.ndarray, readout_error: float = 0.0) -> np.ndarray:
    """P(an outcome reads −1) for exact ⟨Z⟩ = z when each outcome is flipped with probability p."""
    z = np.asarray(z, np.float64)
    q = (1.0 - z) / 2.0
    return readout_error + (1.0 - 2.0 * readout_error) * q


def sample_marginal(z: np.ndarray, shots: int, rng: np.random.Generator, readout_error: float = 0.0) -> np.ndarray:
    """ẑ (same shape as z) from `shots` outcomes per entry, every qubit drawn on its own (see module doc)."""
    q = np.clip(readout_probability(z, readout_error), 0.0, 1.0)
    k = rng.binomial(shots, q)
    return 1.0 - 2.0 * k / shots


def flip_counts(minus: np.ndarray, shots: int, rng: np.random.Generator, readout_error: float) -> np.ndarray:
    """Observed −1 counts when each of `shots` outcomes per entry (true −1 count `minus`) flips with p."""
    if readout_error == 0.0:
        return minus
    minus = np.asarray(minus, np.int64)
    return rng.binomial(minus, 1.0 - readout_error) + rng.binomial(shots - minus, readout_error)


def sample_joint(probs: np.ndarray, shots: int, rng: np.random.Generator, readout_error: float = 0.0) -> np.ndarray:
    """ẑ (B, n) from `shots` whole bit strings per example drawn from probs (B, 2^n), qubit 0 = MSB."""
    probs = np.asarray(probs, np.float64)
    b, size = probs.shape
    n = int(round(math.log2(size)))
    probs = np.clip(probs, 0.0, None)
    probs /= probs.sum(axis=1, keepdims=True)
    counts = rng.multinomial(shots, probs)  # (B, 2^n)
    bits = (np.arange(size)[:, None] >> np.arange(n - 1, -1, -1)) & 1  # (2^n, n): 1 means outcome −1
    minus = counts @ bits
    minus = flip_counts(minus, shots, rng, readout_error)
    return 1.0 - 2.0 * minus / shots


def shot_rng(seed: int, run_seed: int, repeat: int, shots: int, test_set: str) -> np.random.Generator:
    """The generator of one draw (module doc: every cell its own reproducible stream)."""
    return np.random.default_rng([seed, run_seed, repeat, shots, zlib.crc32(test_set.encode())])


# ---------------------------------------------------------------- a small exact state vector (joint sampling)
def circuit_probabilities(angles: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """|amplitude|² of the 2^n outcomes (B, 2^n) of the DQC circuit, qubit 0 most significant.

    Plain float64 state vector: H and RY(angles) per qubit, then per layer RY(θ_l) and the CNOT
    ring of `heads.ring.ring_pairs` (PennyLane's `BasicEntanglerLayers`).
    """
    from heads.ring import ring_pairs

    angles = np.asarray(angles, np.float64)
    theta = np.asarray(theta, np.float64)
    b, n = angles.shape
    # RY(a)H|0> = (cos(a/2 + π/4), sin(a/2 + π/4))
    phi = angles / 2 + math.pi / 4
    psi = np.ones((b, 1))
    for i in range(n):
        q = np.stack([np.cos(phi[:, i]), np.sin(phi[:, i])], axis=1)
        psi = (psi[:, :, None] * q[:, None, :]).reshape(b, -1)
    psi = psi.reshape((b,) + (2,) * n)
    for layer in theta:
        for i, t in enumerate(layer):
            c, s = math.cos(t / 2), math.sin(t / 2)
            ry = np.array([[c, -s], [s, c]])
            psi = np.moveaxis(np.tensordot(psi, ry, axes=([i + 1], [1])), -1, i + 1)
        for control, target in ring_pairs(n):
            sel = [slice(None)] * (n + 1)
            sel[control + 1] = 1
            sub = psi[tuple(sel)]  # target axis index shifts by one if it comes after control
            axis = target + 1 - (1 if target > control else 0)
            psi[tuple(sel)] = np.flip(sub, axis=axis).copy()
    return (psi**2).reshape(b, -1)


# ---------------------------------------------------------------- a finished DQC run
@dataclass
class DQCRun:
    path: Path
    record: RunConfig
    params: dict
    norm: dict | None

    @property
    def seed(self) -> int:
        return self.record.seed

    @property
    def labels(self) -> list[str]:
        return list(self.record.labels)

    @property
    def n(self) -> int:
        return len(self.labels)


def open_run(path: str | Path, *, purpose: str = "measurement shots apply") -> DQCRun:
    """A finished DQC run folder, or a one-line error saying why it cannot be evaluated."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path}: not a run folder (no config.json); give runs/<sweep>/cxr-<task>/dqc/seed-<s> or a sweep folder")
    record = runs.read_config(path)  # what the run says it is: a run folder may be given wherever it lies
    if record.model != "dqc":
        raise UserError(f"{path}: a {record.model.upper()} run; {purpose} to DQC runs only")
    if not runs.is_done(path):
        raise UserError(f"{path}: unfinished run (no {runs.DONE}); finish it by re-running its `heads sweep` command")
    if not (path / "best.safetensors").exists():
        raise UserError(f"{path}: no best.safetensors")
    params = runs.load_params(path)
    missing = [k for k in ("pre", "circuit", "post") if k not in params]
    if missing:
        raise UserError(f"{path / 'best.safetensors'}: not DQC parameters (missing {', '.join(missing)})")
    norm = None
    if record.settings.feature_norm == "standardize":
        npz = path / "feature_norm.npz"
        if not npz.exists():
            raise UserError(f"{path}: the run used --feature-norm standardize but has no feature_norm.npz")
        with np.load(npz) as z:
            norm = {"mean": z["mean"].astype(np.float32), "sd": z["sd"].astype(np.float32)}
    return DQCRun(path, record, params, norm)


def find_dqc_runs(paths: Iterable[str | Path], *, warn: Callable[[str], None] | None = None) -> list[Path]:
    """Run folders to evaluate: each path is a run folder (kept as given: errors come from
    `open_run`) or a folder holding runs (every finished DQC run under it; unfinished ones are skipped
    with a warning)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such folder")
        if (p / "config.json").exists():
            out.append(p)
            continue
        found = []
        for run in runs.runs_under(p):
            if run.model != "dqc":
                continue
            if not run.done:
                if warn:
                    warn(f"warning: {run.path}: unfinished run (no {runs.DONE}), skipped")
                continue
            found.append(run.path)
        if not found:
            raise UserError(f"{p}: no finished DQC run in it (looked for .../dqc/[<config>/]seed-*/ with DONE)")
        out.extend(found)
    return list(dict.fromkeys(out))


def _test_store(run: DQCRun, test_set: str, features: Path | None) -> Path:
    from heads.stores import store_path

    data = run.record.data
    root = Path(features) if features is not None else Path(data.features or "features")
    return store_path(root, data.dataset if test_set == data.dataset else test_set, "test")


def test_sets(run: DQCRun) -> list[str]:
    sets = list(run.record.data.test_sets)
    if not sets:
        sets = [p.stem for p in runs.open_run(run.path).prediction_files()]
    if not sets:
        raise UserError(f"{run.path}: no test sets recorded (config.json data.test_sets) and no predictions/")
    return sets


@dataclass
class TestInputs:
    """One test set of a run: its exact circuit outputs and what the post layer needs."""

    name: str
    store: Path
    y_true: np.ndarray  # (N, L) int8, -1 unknown
    angles: np.ndarray  # (N, n) circuit inputs
    z: np.ndarray  # (N, n) exact ⟨Z⟩ (float64 from float32 simulation)
    exact_prob: np.ndarray  # (N, L)
    ids: np.ndarray | None = None  # (N,) row ids (with keep_embeddings)
    embeddings: np.ndarray | None = None  # (N, D) the store's view 0, before any normalisation (with keep_embeddings)


def _exact_z(angles: np.ndarray, theta: np.ndarray, backend: str, chunk: int = 1024) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    from heads.quantum import expvals

    fn = jax.jit(lambda a, t: expvals(a, t, backend=backend))
    out = []
    for start in range(0, angles.shape[0], chunk):
        out.append(np.asarray(fn(jnp.asarray(angles[start:start + chunk]), jnp.asarray(theta))))
    return np.concatenate(out).astype(np.float64)


def trained_noise_z(run: DQCRun, angles: np.ndarray, theta: np.ndarray, chunk: int = 256) -> np.ndarray:
    """⟨Z⟩ (N, n) of a run trained under noise (`heads sweep --noise`) as its predictions were made:
    its noise model at its scale, the trajectories of evaluation (`heads.train.noise_keys(seed, 0, row)`),
    or the exact density matrix for a run trained with `--backend density`."""
    import jax.numpy as jnp

    from heads.noise import NoiseModel, density_expvals, trajectory_expvals
    from heads.train import EVAL_EPOCH, noise_keys

    s = run.record.settings
    try:
        model = NoiseModel.from_json({**(s.noise_model or {}), "name": s.noise or "?"}).scaled(float(s.noise_scale))
    except (TypeError, UserError) as e:
        raise UserError(f"{run.path / 'config.json'}: its noise model cannot be read ({e})") from None
    out = []
    for start in range(0, angles.shape[0], chunk):
        a = jnp.asarray(angles[start:start + chunk])
        if s.backend == "density":
            out.append(np.asarray(density_expvals(a, jnp.asarray(theta), model)))
        else:
            keys = noise_keys(run.seed, EVAL_EPOCH, jnp.arange(start, start + a.shape[0]))
            out.append(np.asarray(trajectory_expvals(a, jnp.asarray(theta), model, keys, int(s.trajectories or 1))[0]))
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, angles.shape[1]))


def circuit_inputs(run: DQCRun, x: np.ndarray) -> np.ndarray:
    """The circuit's input angles (N, n) for embeddings x (N, D), as `heads.models.DQC` computes them."""
    x = np.asarray(x, np.float32)
    if run.norm is not None:
        x = (x - run.norm["mean"]) / run.norm["sd"]
    from heads.models import dqc_angles

    return dqc_angles(run.params, x, np.float32)


def post(run: DQCRun, z: np.ndarray) -> np.ndarray:
    """Probabilities (N, L) from ⟨Z⟩ estimates (N, n): the post Dense and the sigmoid."""
    p = run.params["post"]
    logits = np.asarray(z, np.float64) @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)
    return 1.0 / (1.0 + np.exp(-logits))


def load_test(run: DQCRun, test_set: str, features: Path | None = None, *, keep_embeddings: bool = False) -> TestInputs:
    """Embeddings of one test set through the pre layer and the exact circuit; checked against the
    run's saved predictions (same rows, same probabilities), so a changed store is refused.
    `keep_embeddings`: also return the rows' ids and embeddings."""
    from cxrfeat.store import FeatureStore

    store = _test_store(run, test_set, features)
    if not (store / "zarr.json").exists():
        raise UserError(f"{store}: no feature store for test set {test_set!r} of {run.path} "
                        f"(give the features folder the run was trained on with --features)")
    f = FeatureStore.open(store, dataset=store.parent.name, split="test").load()
    pred_file = run.path / "predictions" / f"{test_set}.npz"
    if not pred_file.exists():
        raise UserError(f"{pred_file}: missing (the run has no predictions for {test_set!r})")
    saved = runs.load_predictions(run.path, test_set)
    if len(saved["ids"]) != len(f.ids) or not np.array_equal(saved["ids"], np.asarray(f.ids, dtype=str)):
        raise UserError(f"{store}: its rows are not those of {pred_file} (another store than the run was evaluated on)")
    angles = circuit_inputs(run, f.embeddings[:, 0])
    layers = run.record.settings.layers
    theta = np.asarray(run.params["circuit"], np.float32)
    if theta.shape != (int(layers if layers is not None else theta.shape[0]), run.n):
        raise UserError(f"{run.path / 'best.safetensors'}: circuit shape {theta.shape} does not fit config.json")
    z = _exact_z(angles, theta, "fast")  # exact whatever back end trained the run
    prob = post(run, z)
    predicted = post(run, trained_noise_z(run, angles, theta)) if run.record.settings.noise_scale else prob
    worst = float(np.max(np.abs(predicted - saved["y_prob"]))) if prob.size else 0.0
    if not worst <= _PREDICTION_TOLERANCE:
        raise UserError(f"{store}: the run's parameters on this store differ from its saved predictions by {worst:.2g} "
                        f"(another store, or other feature normalisation, than the run was trained with)")
    kept = (np.asarray(saved["ids"]), np.asarray(f.embeddings[:, 0], np.float32)) if keep_embeddings else (None, None)
    return TestInputs(test_set, store, np.asarray(saved["y_true"]), angles, z, prob, *kept)


# ---------------------------------------------------------------- metrics
def _label_metrics(y_true: np.ndarray, prob: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    aurocs, auprcs = [], []
    for j in range(y_true.shape[1]):
        known = y_true[:, j] >= 0
        t = y_true[known, j]
        if t.size == 0 or t.min() == t.max():
            aurocs.append(None)
            auprcs.append(None)
            continue
        aurocs.append(float(roc_auc_score(t, prob[known, j])))
        auprcs.append(float(average_precision_score(t, prob[known, j])))
    return aurocs, auprcs


def _mean(values: Sequence[float | None]) -> float | None:
    used = [v for v in values if v is not None]
    return float(np.mean(used)) if used else None


def _sd(values: Sequence[float]) -> float | None:
    return float(statistics.stdev(values)) if len(values) > 1 else None


def width(z: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Effective width of the quantum layer from exact ⟨Z⟩ (N, n) over a test set (module doc)."""
    z = np.asarray(z, np.float64)
    sd = z.std(axis=0)
    noise = (1.0 - z**2).mean(axis=0)
    resolve = np.where(sd > 1e-12, noise / np.maximum(sd, 1e-12) ** 2, np.inf)  # a constant is never resolved
    return {
        "qubits": int(z.shape[1]), "threshold": float(threshold), "above": int((sd > threshold).sum()),
        "qubits_above": [int(k) for k in np.flatnonzero(sd > threshold)],
        "sd": [float(v) for v in sd], "mean": [float(v) for v in z.mean(axis=0)],
        "shots_to_resolve": [float(v) if math.isfinite(v) else None for v in resolve],
    }


@dataclass
class ShotSettings:
    shots: Sequence[int] = DEFAULT_SHOTS
    repeats: int = DEFAULT_REPEATS
    readout_error: float = 0.0
    seed: int = 0
    sampling: str = "marginal"
    threshold: float = DEFAULT_THRESHOLD
    width_only: bool = False
    features: Path | None = None

    def check(self) -> None:
        if not self.shots or any(int(s) < 1 for s in self.shots):
            raise UserError(f"--shots: give positive shot counts, e.g. 10,100,1000 (got {list(self.shots)})")
        if self.repeats < 1:
            raise UserError(f"--repeats must be at least 1, not {self.repeats}")
        if not 0.0 <= self.readout_error < 0.5:
            raise UserError(f"--readout-error must be in [0, 0.5), not {self.readout_error} (at 0.5 outcomes carry no information)")
        if self.sampling not in SAMPLINGS:
            raise UserError(f"--sampling {self.sampling!r}: choose from {', '.join(SAMPLINGS)}")
        if not self.threshold >= 0:
            raise UserError(f"--width-threshold must be non-negative, not {self.threshold}")
        if self.seed < 0:
            raise UserError(f"--seed must be non-negative, not {self.seed}")

    def record(self) -> dict:
        return {"shots": [int(s) for s in self.shots], "repeats": self.repeats, "readout_error": self.readout_error,
                "seed": self.seed, "sampling": self.sampling}


def parse_shots(spec: str) -> list[int]:
    """'10,100,1e3' -> [10, 100, 1000] (sorted, unique)."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"--shots {spec!r}: {part!r} is not a number") from None
        if value < 1 or value != int(value):
            raise UserError(f"--shots {spec!r}: {part!r} is not a positive whole number")
        out.append(int(value))
    if not out:
        raise UserError("--shots is empty: give e.g. 10,100,1000,10000")
    return sorted(set(out))


def evaluate_test(run: DQCRun, t: TestInputs, settings: ShotSettings, *, step: Callable[[], None] | None = None) -> dict:
    """shots.json's entry for one test set: exact metrics and, per shot count, metrics over repeats."""
    exact_auroc, exact_auprc = _label_metrics(t.y_true, t.exact_prob)
    probs = None
    if settings.sampling == "joint":
        if run.n > JOINT_MAX_QUBITS:
            raise UserError(f"--sampling joint: {run.n} qubits is above {JOINT_MAX_QUBITS} (2^n outcomes per example); use marginal")
        probs = circuit_probabilities(t.angles, np.asarray(run.params["circuit"], np.float64))
    rows = []
    for shots in settings.shots:
        aurocs, auprcs, per_label = [], [], []
        for r in range(settings.repeats):
            rng = shot_rng(settings.seed, run.seed, r, shots, t.name)
            if probs is None:
                zhat = sample_marginal(t.z, shots, rng, settings.readout_error)
            else:
                zhat = sample_joint(probs, shots, rng, settings.readout_error)
            a, p = _label_metrics(t.y_true, post(run, zhat))
            aurocs.append(_mean(a))
            auprcs.append(_mean(p))
            per_label.append(a)
            if step:
                step()
        per = {name: _mean([pl[j] for pl in per_label]) for j, name in enumerate(run.labels)}
        am = [v for v in aurocs if v is not None]
        pm = [v for v in auprcs if v is not None]
        rows.append({"shots": int(shots), "auroc_mean": float(np.mean(am)) if am else None, "auroc_sd": _sd(am),
                     "auroc": aurocs, "auprc_mean": float(np.mean(pm)) if pm else None, "auprc_sd": _sd(pm),
                     "auprc": auprcs, "per_label_auroc_mean": per})
    return {"n": int(t.y_true.shape[0]), "store": str(t.store),
            "labels_used": sum(v is not None for v in exact_auroc),
            "exact": {"mean_auroc": _mean(exact_auroc), "mean_auprc": _mean(exact_auprc),
                      "per_label_auroc": dict(zip(run.labels, exact_auroc, strict=True))},
            "shots": rows}


@dataclass
class RunOutcome:
    path: Path
    task: str
    seed: int
    shots: dict | None = None
    width: dict = field(default_factory=dict)


def _header(run: DQCRun) -> dict:
    c = run.record
    s = c.settings
    return {"task": c.task, "task_name": c.task, "model": "dqc", "seed": run.seed, "labels": run.labels,
            "head": {"model": "dqc", "layers": s.layers, "backend": s.backend, "circuit_init": s.circuit_init},
            "feature_norm": s.feature_norm or "none", "sweep": c.sweep, "grid": c.grid}


def evaluate_run(path: str | Path, settings: ShotSettings, *, step: Callable[[], None] | None = None) -> RunOutcome:
    """Evaluate one finished DQC run; writes width.json and (unless width_only) shots.json into it."""
    settings.check()
    run = open_run(path)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    inputs = {key: load_test(run, key, settings.features) for key in test_sets(run)}
    width_doc = {"format": FORMAT, "run": _header(run), "created": now, "package_version": __version__,
                 "test_sets": {key: width(t.z, settings.threshold) for key, t in inputs.items()}}
    atomic.write_json(run.path / WIDTH_FILE, width_doc)
    out = RunOutcome(run.path, run.record.task, run.seed, width=width_doc)
    if settings.width_only:
        return out
    doc = {"format": FORMAT, "run": _header(run), "settings": settings.record(), "created": now,
           "package_version": __version__,
           "test_sets": {key: evaluate_test(run, t, settings, step=step) for key, t in inputs.items()}}
    atomic.write_json(run.path / SHOTS_FILE, doc)
    out.shots = doc
    return out


def steps_per_run(path: Path, settings: ShotSettings) -> int:
    """Progress units (draws) of one run: test sets × shot counts × repeats (0 when width only)."""
    if settings.width_only:
        return 0
    try:
        n_sets = len(runs.read_config(path).data.test_sets) or 1
    except UserError:
        n_sets = 1
    return n_sets * len(settings.shots) * settings.repeats


def run_label(o: RunOutcome) -> str:
    """`CXR-19 seed 2`, or `CXR-19 lr-3e-3_layers-2 seed 2` for a run of a grid configuration; a task of
    the user's own labels by its name (`CLINIC-3 seed 2`), an old record's task number as `CXR-<n>`."""
    from cxrfeat.labels import task_name

    task = task_name(o.task).upper()
    config = o.path.parent.name
    return f"{task} {'' if config == 'dqc' else config + ' '}seed {o.seed}"


def shots_tables(outcomes: Sequence[RunOutcome], settings: ShotSettings) -> list:
    """The console tables of `heads shots`: AUROC against shots (unless width only) and the effective width."""
    from rich.table import Table

    tables = []
    if not settings.width_only:
        table = Table(title=f"AUROC with finite shots ({settings.sampling} sampling, readout error "
                            f"{settings.readout_error:g}, mean ± sd over {settings.repeats} draws)")
        for col in ("Run", "Test set", "Exact", *(f"{n:,} shots" for n in settings.shots)):
            table.add_column(col, justify="left" if col in ("Run", "Test set") else "right")
        for o in outcomes:
            for key, entry in o.shots["test_sets"].items():
                cells = []
                for row in entry["shots"]:
                    m, s = row["auroc_mean"], row["auroc_sd"]
                    cells.append("undefined" if m is None else f"{m:.4f}" + ("" if s is None else f" ± {s:.4f}"))
                exact = entry["exact"]["mean_auroc"]
                table.add_row(run_label(o), key, "undefined" if exact is None else f"{exact:.4f}", *cells)
        tables.append(table)
    wtable = Table(title=f"Effective width: qubits whose exact <Z_k> varies over the test set by sd > "
                         f"{settings.threshold:g}")
    for col in ("Run", "Test set", "Qubits above", "sd of <Z_k>, k = 0..n-1"):
        wtable.add_column(col, justify="left" if col != "Qubits above" else "right")
    for o in outcomes:
        for key, w in o.width["test_sets"].items():
            wtable.add_row(run_label(o), key, f"{w['above']}/{w['qubits']}", " ".join(f"{v:.1e}" for v in w["sd"]))
    tables.append(wtable)
    return tables


def run_shots(run_dirs: Sequence[str | Path], settings: ShotSettings) -> list[RunOutcome]:
    """`heads shots`: evaluate every finished DQC run found under `run_dirs` (progress on stderr: a bar on a
    terminal, lines in a log; `cxrfeat.console`), print the tables and say what was written."""
    import sys

    from cxrfeat.console import make_console, print_table, progress

    settings.check()
    err = make_console(stderr=True)
    paths = find_dqc_runs(run_dirs, warn=lambda m: err.print(m, markup=False))
    total = sum(steps_per_run(p, settings) for p in paths)
    outcomes = []
    with progress(err, unit="draw", transient=True) as bars:
        bar = bars.add_task("shot draws", total=total)
        for p in paths:
            bars.update(bar, description=f"shot draws ({p})")
            outcomes.append(evaluate_run(p, settings, step=lambda: bars.advance(bar)))
    out = make_console()
    for table in shots_tables(outcomes, settings):
        print_table(out, table)
    files = "width.json" if settings.width_only else "shots.json and width.json"
    print(f"wrote {files} into {len(outcomes)} run folder(s)", file=sys.stderr)
    return outcomes
