"""Device noise for the DQC circuit: the model, its exact simulation, and trajectories at any width.

The circuit is `heads.quantum`'s (docs/design.md "The models"). A noise model (`NoiseModel`, a TOML
file) adds, each optional:

- `p1`: single-qubit depolarizing after EVERY single-qubit gate — the Hadamards, the embedding RY
  and every trained RY: X, Y, Z each with probability p1/3 (PennyLane's `DepolarizingChannel(p1)`).
- `p2`: two-qubit depolarizing after every CNOT of every ring: each of the 15 non-identity Pauli
  pairs with probability p2/15 (Qiskit's `depolarizing_error(16·p2/15, 2)`).
- relaxation from `t1_us`, `t2_us` (T2 ≤ 2·T1) and the gate durations `gate_ns_1q`, `gate_ns_2q`:
  after every gate, on each qubit it acts on, amplitude damping γ = 1 − exp(−t/T1) then phase
  damping λ with (1 − γ)(1 − λ) = exp(−2t/T2), so populations relax with T1 and coherences decay
  with T2 (PennyLane's `AmplitudeDamping(γ)` and `PhaseDamping(λ)`). Idle qubits are not modelled.
- readout: P(1|0) = `readout_p01`, P(0|1) = `readout_p10`, so the measured ⟨Z⟩ is
  (1 − p01 − p10)·⟨Z⟩ + (p10 − p01).

`NoiseModel.scaled(s)` multiplies p1, p2, the readout errors and the relaxation rates (1/T1, 1/T2)
by s: "how good must the hardware get".

Two simulations, behind `heads.quantum.expvals(..., noise=...)`:

- `density_expvals`: the exact density matrix (real: every gate and Kraus operator here is real up to
  a global phase), jittable and differentiable; 4^n numbers per example, so for n up to ~10.
- `trajectory_expvals`: quantum trajectories on the MPS (`heads.mps.expvals(..., ops)`): every
  channel is sampled as Pauli operators per example and trajectory (relaxation through its Pauli
  twirl, below), each inserted as a single-qubit operator, so one trajectory costs one noiseless
  evaluation at any width. A Pauli error after a CNOT is carried back through the earlier CNOTs of
  its ring (Clifford: X on a control spreads to the target, Z on a target to the control) to sit
  before the ring. The mean over trajectories is unbiased for the Pauli channels; for relaxation it
  is the exact value of the Pauli-twirled channel (X, Y with probability (1 − e^(−t/T1))/4 each, Z
  with (1 + e^(−t/T1) − 2e^(−t/T2))/4), an approximation (it makes amplitude damping unital) whose
  error against the exact density matrix is measured in tests/test_noise.py: up to 0.011 in ⟨Z⟩ at
  device-like rates (50/400 ns gates, T1 = 100 µs, T2 = 80 µs; 4 qubits, 2 layers), 0.15 at strong
  damping (T1 = 20 µs, 0.3/0.9 µs gates). `density_expvals(..., twirled=True)` is the twirled
  channel exactly. Readout error is applied to the mean exactly.
  Randomness: trajectory k of example b draws from `fold_in(fold_in(key_b, k), slot)`, so the draws
  depend only on (the example's key, k) — never on the batch, its order or how it was split.
"""

from __future__ import annotations

import functools
import json
import math
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cxrfeat.errors import UserError
from heads.ring import ring_pairs

PRESETS_DIR = Path(__file__).with_name("noise_models")
DENSITY_MAX_QUBITS = 12  # 4^12 = 16.8 M numbers per example

_X = np.array([[0.0, 1.0], [1.0, 0.0]])
_Z = np.diag([1.0, -1.0])
# I, X, Y, Z as real matrices (Y = i·X·Z: the global phase i cancels in ρ → YρY†)
PAULIS = np.stack([np.eye(2), _X, _X @ _Z, _Z])


PER_QUBIT_KEYS = ("p1", "p2", "t1_us", "t2_us", "readout_p01", "readout_p10")


@dataclass(frozen=True)
class QubitNoise:
    """One qubit's own rates in a per-qubit model; a key left None takes the model's value. `p2` is the
    two-qubit depolarizing of the ring's CNOT whose control is this qubit (q → q + 1 mod n)."""

    p1: float | None = None
    p2: float | None = None
    t1_us: float | None = None
    t2_us: float | None = None
    readout_p01: float | None = None
    readout_p10: float | None = None

    def given(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class NoiseModel:
    """A device noise model (module docstring). Probabilities per gate; times in µs and ns.
    `qubits`: per-qubit rates (calibration data), one `QubitNoise` per qubit; empty: every qubit alike."""

    name: str = "custom"
    source: str = ""
    p1: float = 0.0
    p2: float = 0.0
    t1_us: float | None = None
    t2_us: float | None = None
    gate_ns_1q: float = 0.0
    gate_ns_2q: float = 0.0
    readout_p01: float = 0.0
    readout_p10: float = 0.0
    qubits: tuple[QubitNoise, ...] = ()

    def __post_init__(self) -> None:
        self.check()

    def check(self, where: str = "noise model") -> None:
        _check_rates(asdict(self), where)
        for q, rates in enumerate(self.qubits):
            _check_rates({**asdict(self), **rates.given()}, f"{where}: qubits[{q}]")

    def at(self, q: int) -> NoiseModel:
        """Qubit q's rates as a model of identical qubits (the model itself when it has no per-qubit rates)."""
        return _at(self, q) if self.qubits else self

    def check_width(self, n: int) -> None:
        """A per-qubit model fits only a circuit of as many qubits."""
        if self.qubits and len(self.qubits) != n:
            raise UserError(f"noise model {self.name}: per-qubit rates for {len(self.qubits)} qubits, but the circuit "
                            f"has {n}")

    @classmethod
    def load(cls, path: str | Path) -> NoiseModel:
        """A model from a TOML (or JSON) file, or a shipped preset by name (`presets()`)."""
        p = Path(path)
        if not p.exists() and (PRESETS_DIR / f"{path}.toml").exists():
            p = PRESETS_DIR / f"{path}.toml"
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        try:
            text = p.read_text()
            data = json.loads(text) if kind == "JSON" else tomllib.loads(text)
        except FileNotFoundError:
            raise UserError(f"noise model {path}: no such file (presets: {', '.join(presets())})") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"noise model {p}: not a readable {kind} file ({e})") from None
        if not isinstance(data, dict):
            raise UserError(f"noise model {p}: the file must hold a table of keys, not a {type(data).__name__}")
        return cls.from_json({"name": p.stem, **data}, where=f"noise model {p}")

    @classmethod
    def from_json(cls, d: dict, where: str = "noise model") -> NoiseModel:
        """The model from `to_json`'s dict (or a model file's keys); a bad key or value is a one-line
        UserError naming `where` and the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        per_qubit = d.get("qubits", [])
        if not isinstance(per_qubit, list | tuple) or not all(isinstance(e, dict) for e in per_qubit):
            raise UserError(f"{where}: qubits must be a list of tables, one per qubit ([[qubits]] in TOML)")
        rates = []
        for q, entry in enumerate(per_qubit):
            bad = sorted(set(entry) - set(PER_QUBIT_KEYS))
            if bad:
                raise UserError(f"{where}: qubits[{q}]: unknown key(s) {', '.join(bad)} "
                                f"(per-qubit keys: {', '.join(PER_QUBIT_KEYS)})")
            rates.append(QubitNoise(**entry))
        try:
            return cls(**{**d, "qubits": tuple(rates)})
        except UserError as e:
            raise UserError(str(e).replace("noise model", where, 1)) from None
        except TypeError as e:
            raise UserError(f"{where}: {e}") from None

    def scaled(self, s: float) -> NoiseModel:
        """p1, p2, readout errors and relaxation rates multiplied by s (s = 0: noiseless), per qubit too."""
        if not (isinstance(s, int | float) and s >= 0):
            raise UserError(f"noise scale {s!r} must be ≥ 0")
        try:
            return replace(self, **_scaled_rates(asdict(self), s),
                           qubits=tuple(QubitNoise(**_scaled_rates(q.given(), s)) for q in self.qubits))
        except UserError as e:
            raise UserError(f"{self.name} scaled by {s:g}: {str(e).removeprefix('noise model: ')}") from None

    def to_json(self) -> dict:
        """The model's keys; `qubits` (per-qubit rates, each with its given keys only) when it has them."""
        d = asdict(self)
        d.pop("qubits")
        return {**d, "qubits": [q.given() for q in self.qubits]} if self.qubits else d

    @property
    def is_zero(self) -> bool:
        if self.qubits:
            return all(self.at(q).is_zero for q in range(len(self.qubits)))
        return not (self.p1 or self.p2 or self.readout_p01 or self.readout_p10 or any(self.relaxation(1) + self.relaxation(2)))

    def relaxation(self, qubits: int) -> tuple[float, float]:
        """(γ, λ) of amplitude and phase damping after a gate on `qubits` qubits (0, 0 without T1/T2)."""
        t_ns = self.gate_ns_1q if qubits == 1 else self.gate_ns_2q
        if self.t1_us is None or t_ns == 0:
            return 0.0, 0.0
        t = t_ns * 1e-3  # µs
        gamma = 1 - math.exp(-t / self.t1_us)
        lam = 1 - math.exp(-2 * t / self.t2_us) / (1 - gamma)
        return gamma, max(lam, 0.0)

    def twirled_relaxation(self, qubits: int) -> tuple[float, float, float]:
        """(p_x, p_y, p_z) of the Pauli twirl of the relaxation after a gate on `qubits` qubits."""
        gamma, lam = self.relaxation(qubits)
        e1, e2 = 1 - gamma, math.sqrt((1 - gamma) * (1 - lam))
        return (1 - e1) / 4, (1 - e1) / 4, (1 + e1 - 2 * e2) / 4

    def readout(self, z):
        """The measured ⟨Z⟩ from the exact one (..., n): per qubit with per-qubit readout errors."""
        if self.qubits:
            p01, p10 = (np.array([getattr(self.at(q), k) for q in range(len(self.qubits))])
                        for k in ("readout_p01", "readout_p10"))
            return (1 - p01 - p10) * z + (p10 - p01)
        return (1 - self.readout_p01 - self.readout_p10) * z + (self.readout_p10 - self.readout_p01)

    def readout_slope(self):
        """|d measured / d exact ⟨Z⟩|: a scalar, or one per qubit."""
        if self.qubits:
            return np.array([abs(1 - m.readout_p01 - m.readout_p10) for m in map(self.at, range(len(self.qubits)))])
        return abs(1 - self.readout_p01 - self.readout_p10)


@functools.cache
def _at(model: NoiseModel, q: int) -> NoiseModel:
    return replace(model, qubits=(), **model.qubits[q].given())


def _scaled_rates(d: dict, s: float) -> dict:
    """The rates among d's keys multiplied by s (times T1, T2 divided by it; None at s = 0)."""
    out = {k: d[k] * s for k in ("p1", "p2", "readout_p01", "readout_p10") if d.get(k) is not None}
    for k in ("t1_us", "t2_us"):
        if d.get(k) is not None:
            out[k] = None if s == 0 else d[k] / s
    return out


def _check_rates(d: dict, where: str) -> None:
    for k in ("p1", "p2", "readout_p01", "readout_p10"):
        v = d[k]
        if not (isinstance(v, int | float) and 0 <= v <= 1):
            raise UserError(f"{where}: {k} = {v!r} is not a probability in [0, 1]")
    if d["p1"] > 3 / 4 or d["p2"] > 15 / 16:
        raise UserError(f"{where}: p1 ≤ 3/4 and p2 ≤ 15/16 (fully depolarizing), not p1 = {d['p1']}, p2 = {d['p2']}")
    if d["readout_p01"] + d["readout_p10"] > 1:
        raise UserError(f"{where}: readout_p01 + readout_p10 must not exceed 1")
    for k in ("gate_ns_1q", "gate_ns_2q"):
        v = d[k]
        if not (isinstance(v, int | float) and v >= 0):
            raise UserError(f"{where}: {k} = {v!r} must be a duration ≥ 0 (ns)")
    if (d["t1_us"] is None) != (d["t2_us"] is None):
        raise UserError(f"{where}: give both t1_us and t2_us, or neither")
    if d["t1_us"] is not None:
        if not all(isinstance(d[k], int | float) and d[k] > 0 for k in ("t1_us", "t2_us")):
            raise UserError(f"{where}: t1_us and t2_us must be > 0 (µs)")
        if d["t2_us"] > 2 * d["t1_us"] * (1 + 1e-12):
            raise UserError(f"{where}: t2_us = {d['t2_us']} exceeds 2·t1_us = {2 * d['t1_us']}: not a physical qubit")


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


# ---------------------------------------------------------------- the exact density matrix


def density_expvals(angles, weights, noise: NoiseModel, *, twirled: bool = False):
    """⟨Z_i⟩ of the noisy circuit from its exact density matrix: angles (B, n), weights (layers, n).
    `twirled=True` replaces the relaxation by its Pauli twirl (what the trajectories sample)."""
    angles = jnp.asarray(angles)
    noise.check_width(angles.shape[-1])
    if angles.ndim == 2 and angles.shape[1] > DENSITY_MAX_QUBITS:
        raise UserError(f"the density-matrix method holds 4^n numbers per example: {angles.shape[1]} qubits is above "
                        f"{DENSITY_MAX_QUBITS}; use trajectories on the MPS (backend mps or fast with a noise model)")
    return _density(angles, jnp.asarray(weights), noise=noise, twirled=twirled)


@functools.partial(jax.jit, static_argnames=("noise", "twirled"))
def _density(angles, weights, *, noise: NoiseModel, twirled: bool):
    dtype = jnp.promote_types(jnp.result_type(angles, weights), jnp.float32)
    angles, weights = angles.astype(dtype), weights.astype(dtype)
    z = jax.vmap(lambda x: _density_one(x, weights, noise, twirled))(angles)
    return noise.readout(z)


def _density_one(x, weights, noise: NoiseModel, twirled: bool = False):
    n = x.shape[0]
    dtype = x.dtype
    rho = jnp.zeros((2,) * (2 * n), dtype).at[(0,) * (2 * n)].set(1)
    h = jnp.asarray([[1.0, 1.0], [1.0, -1.0]], dtype) / math.sqrt(2)
    for q in range(n):
        rho = _noisy_gate(rho, h, q, n, noise.at(q), twirled)
        rho = _noisy_gate(rho, _ry(x[q]), q, n, noise.at(q), twirled)
    for layer in range(weights.shape[0]):
        for q in range(n):
            rho = _noisy_gate(rho, _ry(weights[layer, q]), q, n, noise.at(q), twirled)
        for c, t in ring_pairs(n):
            rho = _cnot(rho, c, t, n)
            rho = _depolarize2(rho, c, t, n, noise.at(c).p2)  # the CNOT's error: its control's p2
            rho = _relax(rho, c, n, noise.at(c), 2, twirled)
            rho = _relax(rho, t, n, noise.at(t), 2, twirled)
    diag = jnp.diagonal(rho.reshape(2**n, 2**n))
    bits = (np.arange(2**n)[:, None] >> np.arange(n - 1, -1, -1)) & 1
    return jnp.asarray(1 - 2 * bits, dtype).T @ diag


def _ry(theta):
    c, s = jnp.cos(theta / 2), jnp.sin(theta / 2)
    return jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])


def _apply1(rho, u, q, n):
    """U ρ Uᵀ for a real single-qubit U on qubit q (ket axis q, bra axis n + q)."""
    rho = jnp.moveaxis(jnp.tensordot(u, rho, axes=([1], [q])), 0, q)
    return jnp.moveaxis(jnp.tensordot(u, rho, axes=([1], [n + q])), 0, n + q)


def _noisy_gate(rho, u, q, n, noise, twirled=False):
    rho = _apply1(rho, u, q, n)
    if noise.p1:
        # Σ_{P ≠ I} PρP = 2·Tr_q(ρ)⊗I − ρ
        traced = jnp.trace(rho, axis1=q, axis2=n + q)
        rho = (1 - 4 * noise.p1 / 3) * rho + (2 * noise.p1 / 3) * _with_identity(traced, [q], n)
    return _relax(rho, q, n, noise, 1, twirled)


def _with_identity(traced, qubits, n):
    """Tr_qubits(ρ) ⊗ I on those qubits, back in ρ's axis order."""
    eye = jnp.eye(2, dtype=traced.dtype)
    out = traced
    rest = [a for a in range(2 * n) if a not in qubits and a - n not in qubits]
    for q in qubits:
        out = jnp.tensordot(out, eye, axes=0)
        rest = rest + [q, n + q]
    return jnp.transpose(out, np.argsort(rest))


def _depolarize2(rho, c, t, n, p):
    if not p:
        return rho
    # Σ_{P ≠ II} PρP = 4·Tr_ct(ρ)⊗I − ρ
    traced = jnp.trace(jnp.trace(rho, axis1=c, axis2=n + c), axis1=t - (t > c), axis2=n - 1 + t - (t > c))
    return (1 - 16 * p / 15) * rho + (4 * p / 15) * _with_identity(traced, sorted([c, t]), n)


def _cnot(rho, c, t, n):
    cnot = np.eye(4)[[0, 1, 3, 2]].reshape(2, 2, 2, 2)  # [c', t', c, t]
    g = jnp.asarray(cnot, rho.dtype)
    for off in (0, n):
        rho = jnp.tensordot(g, rho, axes=([2, 3], [c + off, t + off]))
        rho = jnp.moveaxis(rho, [0, 1], [c + off, t + off])
    return rho


def _relax(rho, q, n, noise, qubits, twirled=False):
    gamma, lam = noise.relaxation(qubits)
    if not gamma and not lam:
        return rho
    if twirled:
        probs = noise.twirled_relaxation(qubits)
        out = (1 - sum(probs)) * rho
        for p, pauli in zip(probs, PAULIS[1:], strict=True):
            out = out + p * _apply1(rho, jnp.asarray(pauli, rho.dtype), q, n)
        return out
    k0 = np.diag([1.0, math.sqrt((1 - gamma) * (1 - lam))])
    kraus = [k0, np.array([[0.0, math.sqrt(gamma)], [0.0, 0.0]]),
             np.diag([0.0, math.sqrt(lam * (1 - gamma))])]
    return sum(_apply1(rho, jnp.asarray(k, rho.dtype), q, n) for k in kraus if np.any(k))


# ---------------------------------------------------------------- trajectories


def trajectory_ops(keys, n: int, layers: int, noise: NoiseModel, dtype=jnp.float32):
    """Per example key (B,) → sampled operators (B, layers + 2, n, 2, 2) for `heads.mps.expvals`."""
    noise.check_width(n)
    return _ops(keys, n, layers, sampling_tables(noise, n), dtype)


def sampling_tables(noise: NoiseModel, n: int) -> dict[str, np.ndarray]:
    """The model's error distributions on n qubits as log-probabilities (traced arrays: one program for
    every scale). gate (n, 4): qubit q's Pauli after a single-qubit gate; pair (P, 16): the Pauli pair
    after the ring's CNOT j (index 4·c + t); relax (P, 2, 4): the Pauli from the relaxation of its
    control and of its target during CNOT j. Every row is its qubit's own rates (`NoiseModel.at`)."""
    pairs = ring_pairs(n)
    with np.errstate(divide="ignore"):
        return {"gate": np.log(np.stack([_pauli_probs(noise.at(q), 1, noise.at(q).p1) for q in range(n)])),
                "pair": np.log(np.array([[1 - noise.at(c).p2] + [noise.at(c).p2 / 15] * 15 for c, _ in pairs])),
                "relax": np.log(np.array([[_pauli_probs(noise.at(q), 2, 0.0) for q in pair] for pair in pairs]))}


@functools.partial(jax.jit, static_argnames=("n", "layers", "dtype"))
def _ops(keys, n, layers, tables, dtype):
    return jax.vmap(lambda k: _sample_one(k, n, layers, tables, dtype))(keys)


def _pauli_probs(noise: NoiseModel, qubits: int, depol: float) -> np.ndarray:
    """P(I, X, Y, Z) of one qubit's error after a gate on `qubits` qubits: depolarizing `depol`
    (single-qubit gates), then the twirled relaxation, composed (Pauli products, XOR of (x, z) bits)."""
    a = np.array([1 - depol, depol / 3, depol / 3, depol / 3])
    px, py, pz = noise.twirled_relaxation(qubits)
    b = np.array([1 - px - py - pz, px, py, pz])
    xz = [(0, 0), (1, 0), (1, 1), (0, 1)]  # I, X, Y, Z as (x, z)
    out = np.zeros(4)
    for i, (x1, z1) in enumerate(xz):
        for j, (x2, z2) in enumerate(xz):
            out[xz.index((x1 ^ x2, z1 ^ z2))] += a[i] * b[j]
    return out


def _categorical(key, logp, shape):
    """One draw per row of the log-probabilities `logp` (shape + (m,)) by the inverse CDF of one uniform
    each (a Gumbel-max draw needs m uniforms: 4-16x the random numbers, which dominated the noisy step).
    The uniform is scaled by the row's total, so an outcome of probability 0 is never drawn, even where
    the float32 sums fall short of 1."""
    cdf = jnp.cumsum(jnp.exp(logp), axis=-1)
    u = jax.random.uniform(key, shape, jnp.float32) * cdf[..., -1]
    return jnp.sum(u[..., None] >= cdf[..., :-1], axis=-1).astype(jnp.int32)


def _sample_one(key, n, layers, tables, dtype):
    paulis = jnp.asarray(PAULIS, dtype)
    p_gate, p_pair, p_cnot_relax = (jnp.asarray(tables[k], jnp.float32) for k in ("gate", "pair", "relax"))
    pairs = ring_pairs(n)

    def single(slot_key, shape):  # one draw per qubit, each from its own row
        return _categorical(slot_key, p_gate, shape)

    slots = []
    # slot 0: after H; slot 1: after the embedding RY (one gate each)
    for slot in (0, 1):
        slots.append(paulis[single(jax.random.fold_in(key, slot), (n,))])
    for layer in range(layers):
        k = jax.random.fold_in(key, 2 + layer)
        gate_err = paulis[single(jax.random.fold_in(k, 0), (n,))]  # after RY(weights[layer])
        # errors after each CNOT of ring `layer`: a Pauli pair (p2), then relaxation on both qubits
        pair = _categorical(jax.random.fold_in(k, 1), p_pair, (len(pairs),))
        relax = _categorical(jax.random.fold_in(k, 2), p_cnot_relax, (len(pairs), 2))
        # F ← C_j (F · e_j) C_j, from the last CNOT back to the first: F then sits before the ring. CNOT
        # conjugation is linear on the (x, z) bits over GF(2), so F's bits are one parity-check product
        # of the errors' bits (`ring_frame_matrix`), exact in float32 (sums of at most 4·n ones)
        bx, bz = _bits(pair // 4), _bits(pair % 4)
        rcx, rcz = _bits(relax[:, 0])
        rtx, rtz = _bits(relax[:, 1])
        e = jnp.stack([bx[0] ^ rcx, bx[1] ^ rcz, bz[0] ^ rtx, bz[1] ^ rtz], axis=1).reshape(-1)
        f = jnp.dot(e.astype(jnp.float32), jnp.asarray(ring_frame_matrix(n), jnp.float32)).astype(jnp.int32) & 1
        x, z = f[:n], f[n:]
        ring_err = paulis[_index(x, z)]  # before the ring
        slots.append(jnp.einsum("qij,qjk->qik", ring_err, gate_err))  # the gate's error, then the ring's
    return jnp.stack(slots)


@functools.cache
def ring_frame_matrix(n: int) -> np.ndarray:
    """(4P, 2n) over GF(2), P = the ring's CNOTs: row 4j + (0, 1, 2, 3) is where the error bit x_c, z_c,
    x_t, z_t inserted after CNOT j (control c, target t) lands as (x bits, z bits) before the ring, moved
    back through CNOTs j, j-1, ..., 0 (X_c → X_c X_t, Z_t → Z_c Z_t)."""
    pairs = ring_pairs(n)
    out = np.zeros((4 * len(pairs), 2 * n), np.int64)
    for j, (c, t) in enumerate(pairs):
        for r, (q, is_z) in enumerate(((c, 0), (c, 1), (t, 0), (t, 1))):
            x, z = np.zeros(n, np.int64), np.zeros(n, np.int64)
            (z if is_z else x)[q] = 1
            for cc, tt in reversed(pairs[: j + 1]):
                x[tt] ^= x[cc]
                z[cc] ^= z[tt]
            out[4 * j + r] = np.concatenate([x, z])
    return out


def _bits(e):
    """(x, z) bits of Pauli index e in (I, X, Y, Z)."""
    return jnp.asarray([0, 1, 1, 0])[e], jnp.asarray([0, 0, 1, 1])[e]


def _index(x, z):
    return jnp.asarray([[0, 3], [1, 2]])[x, z]


def example_keys(key, batch: int):
    """One key per example when a single key is given (folded with the batch position)."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if key.shape == ():
        return jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch))
    if key.shape[0] != batch:
        raise ValueError(f"keys must be one key or one per example ({batch}), not {key.shape[0]}")
    return key


def trajectory_samples(angles, weights, noise: NoiseModel, keys, trajectories: int):
    """(K, B, n) ⟨Z⟩ of each trajectory (before readout error) on the MPS."""
    angles, weights = jnp.asarray(angles), jnp.asarray(weights)
    if not (isinstance(trajectories, int) and trajectories >= 1):
        raise ValueError(f"trajectories must be an integer ≥ 1, not {trajectories!r}")
    noise.check_width(angles.shape[1])
    from heads import mps

    return _trajectory_samples(angles, weights, example_keys(keys, angles.shape[0]), sampling_tables(noise, angles.shape[1]),
                               trajectories=trajectories, unroll=mps._UNROLL, chains=mps.chains_for(mps._UNROLL))


@functools.partial(jax.jit, static_argnames=("trajectories", "unroll", "chains"))
def _trajectory_samples(angles, weights, keys, tables, *, trajectories: int, unroll=1, chains="xla"):
    from heads import mps

    b, n = angles.shape
    layers = weights.shape[0]
    dtype = jnp.promote_types(jnp.result_type(angles, weights), jnp.float32)
    # all K × B trajectories as one batch (measured faster than one batch per trajectory in a loop)
    tk = jax.vmap(lambda k: jax.vmap(lambda key: jax.random.fold_in(key, k))(keys))(jnp.arange(trajectories))
    ops = _ops(tk.reshape(-1), n, layers, tables, dtype)  # (K·B, ...)
    z = mps._expvals(jnp.tile(angles, (trajectories, 1)), weights, ops, unroll=unroll, chains=chains)
    return z.reshape(trajectories, b, n)


def trajectory_expvals(angles, weights, noise: NoiseModel, keys, trajectories: int = 1):
    """(mean ⟨Z⟩ with readout error, its standard error) over `trajectories` trajectories per example."""
    samples = trajectory_samples(angles, weights, noise, keys, trajectories)
    mean = samples.mean(0)
    k = samples.shape[0]
    stderr = samples.std(0, ddof=1) / math.sqrt(k) if k > 1 else jnp.full_like(mean, jnp.nan)
    return noise.readout(mean), stderr * noise.readout_slope()
