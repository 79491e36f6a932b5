"""⟨Z_i⟩ of the DQC circuit: exact simulators and the PennyLane reference behind one function.

The circuit (docs/design.md "The models"): H on every qubit; RY(angles_i) on qubit i; then `layers` times
[RY(weights_l,i) on every qubit, the CNOT ring of PennyLane's `BasicEntanglerLayers`]; ⟨Z_i⟩ of
every qubit. The ring is 0→1, 1→2, …, n−2→n−1, n−1→0 for n ≥ 3 and one CNOT 0→1 for n = 2
(PennyLane's rule: a two-wire "ring" would apply the same pair twice). Qubit 0 is the most
significant bit of a basis index (PennyLane's wire order).

`backend="fast"` runs the cheapest exact method for (n, layers), named by `method(n, layers)`:
"mps" (`heads.mps`: a matrix-product state in the folded qubit order, bond 4^(layers−1), cost
linear in n), "halves" (below) or "statevector"; the choice and the timings behind it are in
`method`'s docstring.

How `backend="halves"` works. H, RY and CNOT are real matrices, so amplitudes stay real (float32, or
float64 under `jax_enable_x64`), and every step below is plain JAX, so `jit`, `grad` and `vmap` all
apply.

- A CNOT ring maps basis state b to A·b over GF(2) (A is an n×n 0/1 matrix), so it is a fixed
  permutation of amplitudes; its adjoint is the inverse permutation, done as a gather too.
- Since RY(θ)RY(x) = RY(θ+x), the state after the embedding and the first rotation layer is the
  product state ⊗_i RY(x_i+θ_0,i)H|0⟩ = ⊗_i (cos φ_i, sin φ_i), φ_i = (x_i+θ_0,i)/2 + π/4.
- The last ring is never applied: ⟨Z_k⟩ after it is the expectation of the parity of the bits in
  row k of A before it, a ±1-weighted sum of probabilities.
- Cut the qubits into a left half (0..m−1) and a right half (m..n−1) and write the state as a
  2^m × 2^(n−m) matrix Ψ = Σ_r L_r R_rᵀ. The product state has one term. A rotation layer is a
  Kronecker product U_L ⊗ U_R, so it maps each term to (U_L L_r)(U_R R_r)ᵀ: the rank stays. A ring
  reads one bit across the cut in each direction (bit n−1 into qubits 0 and 1, bit m−1 into
  qubit m), so it multiplies the rank by 4 and the new factors are gathers of the old ones. The
  parities factorise over the cut too, so ⟨Z⟩ needs only r×r Gram matrices of the factors.
  While the rank is small (4^(layers−1) terms: 16 for the paper's 3 layers) the simulator never
  forms the 2^n state at all: at 19 qubits the factors hold about 3×10^4 numbers per example
  instead of 5×10^5.
- Once the rank would grow past `_max_rank(n)`, Ψ is formed (one matrix product) and the
  remaining layers run on the full state vector: a ring is one gather, a rotation layer is
  applied in blocks of up to `_BLOCK` qubits as matrix products, and the last ring and ⟨Z⟩
  become the same parities, now reductions over Ψ².

`backend="statevector"` runs the halves' state-vector path from the product state on (the design's plain
algorithm, kept for tests and benchmarks); `backend="pennylane"` is the reference
(`heads.pennylane_ref`). All agree to ~1e-6 in float32 (tests/test_quantum.py, tests/test_mps.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from heads import mps
from heads.ring import ring_inverse, ring_matrix

BACKENDS = ("fast", "mps", "halves", "statevector", "pennylane", "density")

# Largest block of qubits a rotation layer applies as one matrix product on the full state (5–6 was
# fastest on a 2-core Xeon: larger blocks turn the layer compute-bound, smaller ones add passes).
_BLOCK = 6
# Above this many bytes of stored state-vector intermediates, the backward pass recomputes each
# layer from its input (jax.checkpoint) instead of keeping every block's input.
_REMAT_BYTES = 1 << 30


def method(n: int, layers: int) -> str:
    """The exact method that `backend="fast"` runs for n qubits and `layers` layers.

    Chosen from measurements on the 2-core dev machine (AMD EPYC, JAX 0.10.2):
    - small registers (n ≤ 6, 2+ layers): the plain state vector (≤ 0.1 ms, a handful of GEMMs);
    - 1–3 layers (MPS bond 1, 4, 16): the MPS from n = 8, 10, 14 on, the halves below. Set by what
      training runs — one NIH-size epoch of 5 seeds, blocks on both cores (`heads.train`) — where
      the MPS keeps each core busy and the halves' larger products contend for both: at 3 layers
      13 qubits tie (49 s) and at 14 the MPS takes 48 s against the halves' 75 s; at 2 layers the
      MPS wins from 10 (6.4 s against 11.1 s), at 1 layer from 8 (2.3 against 2.7 s). (A single
      step timed alone, one core mostly idle, favours the halves up to 12–15 qubits.)
    - 4+ layers (bond ≥ 64): the halves (which switch to the state vector by themselves past
      `_max_rank`) up to 26 qubits, 30–100× faster than the MPS at 4 layers; beyond, the state
      vector does not fit and the MPS, whatever its bond, is the one exact method left.
    """
    if n <= 6 and layers >= 2:
        return "statevector"
    if layers <= 3:
        return "mps" if n >= _MPS_FROM[layers] else "halves"
    return "halves" if n <= 26 else "mps"


# Smallest n at which the MPS beats the factored halves in training, per depth (measured, see `method`).
_MPS_FROM = {1: 8, 2: 10, 3: 14}


def expvals(angles, weights, *, backend: str = "fast", ops=None, noise=None, key=None, trajectories: int = 1):
    """⟨Z_i⟩ of the DQC circuit: angles (B, n) and weights (layers, n) → (B, n).

    `angles` are the embedding angles (the model scales them to [−π/2, π/2]); `weights` are the
    RY angles θ_l,i. Differentiable in both (reverse mode), jittable and vmappable. Back ends:
    "fast" (default: `method(n, layers)` of the exact ones below), "mps" (`heads.mps`, linear in
    n), "halves" (low-rank factors of the two halves of the register, then the state vector),
    "statevector" (the plain state vector) and "pennylane" (the PennyLane `default.qubit` reference).

    `ops` (B, layers + 2, n, 2, 2): per-example single-qubit operators inserted into the circuit
    (`heads.mps.expvals` names the slots); they run on the MPS, which `fast` then picks.

    `noise` (a `heads.noise.NoiseModel`): the noisy circuit's measured ⟨Z_i⟩. `backend="density"`
    is exact (the density matrix, small n); "fast" and "mps" average `trajectories` noise
    trajectories per example on the MPS, drawn from `key` (one key, folded with the position in the
    batch, or one key per example); `heads.noise.trajectory_expvals` also gives their standard
    error. `noise=None` is the noiseless circuit, bit for bit.
    """
    angles, weights = jnp.asarray(angles), jnp.asarray(weights)
    _check_shapes(angles.shape, weights.shape)
    if backend == "density" or noise is not None:
        from heads import noise as noise_mod

        model = noise if noise is not None else noise_mod.NoiseModel()
        if backend == "density":
            return noise_mod.density_expvals(angles, weights, model)
        if backend not in ("fast", "mps"):
            raise ValueError(f"noisy circuits run on the density (exact) or mps (trajectories) back end, not {backend!r}")
        if key is None:
            raise ValueError("noise trajectories need a key (jax.random.key(seed), or one per example)")
        return noise_mod.trajectory_expvals(angles, weights, model, key, trajectories)[0]
    if ops is not None:
        ops = jnp.asarray(ops)
        want = (angles.shape[0], weights.shape[0] + 2, angles.shape[1], 2, 2)
        if ops.shape != want:
            raise ValueError(f"ops must have shape (batch, layers + 2, qubits, 2, 2) = {want}, not {ops.shape}")
        if backend not in ("fast", "mps"):
            raise ValueError(f"per-example operators run on the mps back end (or fast), not {backend!r}")
        return mps.expvals(angles, weights, ops)
    if backend == "fast":
        backend = method(angles.shape[1], weights.shape[0])
    if backend == "mps":
        return mps.expvals(angles, weights)
    if backend == "halves":
        return _simulate(angles, weights, dense_from_start=False)
    if backend == "statevector":
        return _simulate(angles, weights, dense_from_start=True)
    if backend == "pennylane":
        from heads.pennylane_ref import expvals as reference

        return reference(angles, weights)
    raise ValueError(f"unknown quantum backend {backend!r}: choose from {', '.join(BACKENDS)}")


def _check_shapes(a_shape, w_shape) -> None:
    if len(a_shape) != 2:
        raise ValueError(f"angles must have shape (batch, qubits), not {a_shape}")
    if len(w_shape) != 2 or w_shape[1] != a_shape[1]:
        raise ValueError(f"weights must have shape (layers, {a_shape[1]}) for {a_shape[1]} qubits, not {w_shape}")
    if a_shape[1] < 2:
        raise ValueError(f"the circuit needs at least 2 qubits, not {a_shape[1]}")
    if w_shape[0] < 1:
        raise ValueError("the circuit needs at least 1 layer")


# ---------------------------------------------------------------- basis bits (the ring itself: `heads.ring`)


def _bits(index: np.ndarray, width: int) -> np.ndarray:
    """Bits of basis indices, most significant (qubit 0) first: (len, width)."""
    return (np.asarray(index)[:, None] >> np.arange(width - 1, -1, -1)) & 1


def _index(bits: np.ndarray) -> np.ndarray:
    width = bits.shape[-1]
    return ((bits % 2) << np.arange(width - 1, -1, -1)).sum(-1)


def _signs(masks: np.ndarray, width: int) -> np.ndarray:
    """(-1)^(parity of index & mask) for every index (rows) and mask (columns): (2^width, len)."""
    return 1 - 2 * ((_bits(np.arange(2**width), width) @ np.asarray(masks).T) % 2)


# ---------------------------------------------------------------- tables (numpy, per n, cached)


def _cut(n: int) -> int:
    return n // 2


def _max_rank(n: int) -> int:
    """Largest rank kept in factored form: past it the Gram matrices cost more than Ψ itself."""
    m = _cut(n)
    return max(4, 2 ** min(m, n - m) // 8)


@dataclass(frozen=True)
class _FactorRing:
    """Gathers that apply the ring to Ψ = Σ_r L_r R_rᵀ (see the module docstring).

    New L[c_L, (v, r, u)] = L[idx_l[c_L, v], r] · mask_l[c_L, u] and
    new R[c_R, (v, r, u)] = R[idx_r[c_R, u], r] · mask_r[c_R, v], where v runs over the right bits
    the left half reads and u over the left bits the right half reads.
    """

    idx_l: np.ndarray
    mask_l: np.ndarray
    idx_r: np.ndarray
    mask_r: np.ndarray

    @property
    def growth(self) -> int:
        return self.mask_l.shape[1] * self.mask_r.shape[1]


@functools.cache
def _factor_ring(n: int) -> _FactorRing:
    m, inv = _cut(n), ring_inverse(n)
    f_l, g_l, f_r, g_r = inv[:m, :m], inv[:m, m:], inv[m:, m:], inv[m:, :m]
    xr = np.flatnonzero(g_l.any(0))  # right bits (0-based within the right half) the left half reads
    xl = np.flatnonzero(g_r.any(0))  # left bits the right half reads
    cl, cr = _bits(np.arange(2**m), m), _bits(np.arange(2 ** (n - m)), n - m)
    v, u = _bits(np.arange(2 ** len(xr)), len(xr)), _bits(np.arange(2 ** len(xl)), len(xl))
    idx_l = _index((cl @ f_l.T)[:, None, :] + (v @ g_l[:, xr].T)[None, :, :])
    idx_r = _index((cr @ f_r.T)[:, None, :] + (u @ g_r[:, xl].T)[None, :, :])
    mask_l = (cl[:, None, xl] == u[None]).all(-1)
    mask_r = (cr[:, None, xr] == v[None]).all(-1)
    return _FactorRing(idx_l.astype(np.int32), mask_l, idx_r.astype(np.int32), mask_r)


@dataclass(frozen=True)
class _Group:
    """Outputs whose parity mask shares one half: ⟨Z_k⟩ = Σ_c s_k(c) q(c), q the other half traced out.

    side "R": q(c_L) = Σ_{c_R} s_shared(c_R) Ψ(c_L, c_R)², signs (2^m, len(outputs)); side "L" mirrored.
    """

    side: str
    shared: np.ndarray
    signs: np.ndarray
    outputs: tuple[int, ...]


@functools.cache
def _measurement(n: int) -> tuple[_Group, ...]:
    """Outputs grouped greedily by a shared half-mask, so that few reductions cover all of them."""
    m, masks = _cut(n), ring_matrix(n)
    left, right = [tuple(r[:m]) for r in masks], [tuple(r[m:]) for r in masks]
    todo, groups = set(range(n)), []
    while todo:
        candidates = [(sum(1 for k in todo if half[k] == key), side, key) for side, half in (("R", right), ("L", left))
                      for key in {half[k] for k in todo}]
        _, side, key = max(candidates, key=lambda t: (t[0], t[1] == "R", t[2]))
        half, other, width = (right, left, m) if side == "R" else (left, right, n - m)
        outs = tuple(sorted(k for k in todo if half[k] == key))
        shared = _signs(np.array([key]), n - width)[:, 0]
        groups.append(_Group(side, shared, _signs(np.array([other[k] for k in outs]), width), outs))
        todo -= set(outs)
    return tuple(groups)


# ---------------------------------------------------------------- the simulator


@functools.partial(jax.jit, static_argnames=("dense_from_start",))
def _simulate(angles, weights, *, dense_from_start: bool):
    """Low-rank factors while the rank stays under `_max_rank(n)`, then the state vector (module docstring)."""
    dtype = jnp.promote_types(jnp.result_type(angles, weights), jnp.float32)
    angles, weights = angles.astype(dtype), weights.astype(dtype)
    n, layers = angles.shape[1], weights.shape[0]
    m = _cut(n)

    phi = (angles + weights[0]) / 2 + math.pi / 4
    amp = jnp.stack([jnp.cos(phi), jnp.sin(phi)], axis=-1)  # (B, n, 2): qubit i is (cos φ_i, sin φ_i)
    left, right = _product(amp[:, :m]), _product(amp[:, m:])

    ring, max_rank = _factor_ring(n), (0 if dense_from_start else _max_rank(n))
    done = 1  # layers applied: the first is in the product state
    while done < layers and left.shape[-1] * ring.growth <= max_rank:
        rotations = _ry(weights[done])
        left, right = _ring_factors(left, right, ring)
        left, right = _rotate(left, rotations[:m]), _rotate(right, rotations[m:])
        done += 1
    if done == layers and not dense_from_start:
        return _measure_factors(n, left, right)

    psi = _StateVector(_form(left, right), batch_first=True)
    dense_layer = _dense_layer
    if (layers - done) * psi.data.nbytes * len(_blocks(n, _BLOCK)) > _REMAT_BYTES:
        dense_layer = jax.checkpoint(_dense_layer, static_argnums=(2,))
    for theta in weights[done:]:
        psi = _StateVector(dense_layer(psi.data, theta, psi.batch_first), not psi.batch_first)
    return _measure_dense(n, psi)


def _product(amp):
    """⊗ of single-qubit states (B, h, 2) → factor (B, 2^h, 1), qubit 0 most significant."""
    out = amp[:, 0]
    for q in range(1, amp.shape[1]):
        out = (out[:, :, None] * amp[:, q, None, :]).reshape(out.shape[0], -1)
    return out[:, :, None]


def _form(left, right):
    """Ψ = Σ_r L_r R_rᵀ as the state vector (B, 2^n)."""
    return jnp.einsum("bir,bjr->bij", left, right).reshape(left.shape[0], -1)


def _ry(theta):
    """RY(θ) for every θ: (..., 2, 2), real."""
    c, s = jnp.cos(theta / 2), jnp.sin(theta / 2)
    return jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)


def _kron(mats):
    out = mats[0]
    for mat in mats[1:]:
        out = jnp.kron(out, mat)
    return out


def _blocks(h: int, size: int) -> list[tuple[int, int]]:
    """(start, width) of near-equal blocks of at most `size` qubits covering h qubits."""
    count = -(-h // size)
    widths = [h // count + (i < h % count) for i in range(count)]
    return [(sum(widths[:i]), w) for i, w in enumerate(widths)]


def _rotate(factor, rotations):
    """Apply ⊗_q rotations[q] to axis 1 of a factor (B, 2^h, r), in blocks of qubits."""
    batch, dim, rank = factor.shape
    h = rotations.shape[0]
    for start, width in _blocks(h, _BLOCK):
        x = factor.reshape(batch, 2**start, 2**width, (dim >> (start + width)) * rank)
        factor = jnp.einsum("ij,bajc->baic", _kron(list(rotations[start:start + width])), x)
    return factor.reshape(batch, dim, rank)


def _ring_factors(left, right, ring: _FactorRing):
    batch, dl, rank = left.shape
    dr = right.shape[1]
    ml, mr = jnp.asarray(ring.mask_l, left.dtype), jnp.asarray(ring.mask_r, left.dtype)
    new_l = jnp.take(left, ring.idx_l, axis=1)[..., None] * ml[None, :, None, None, :]  # (B, dl, v, r, u)
    new_r = jnp.swapaxes(jnp.take(right, ring.idx_r, axis=1), 2, 3)  # (B, dr, r, u)
    new_r = new_r[:, :, None] * mr[None, :, :, None, None]  # (B, dr, v, r, u)
    return new_l.reshape(batch, dl, -1), new_r.reshape(batch, dr, -1)


# ---------------------------------------------------------------- the full state vector


class _StateVector(NamedTuple):
    """Amplitudes as (B, 2^n) when `batch_first`, else (2^n, B): layers alternate between the two."""

    data: jax.Array
    batch_first: bool


def _dense_layer(data, theta, batch_first: bool):
    """Ring, then RY(θ) on every qubit, on the state vector; returns the other layout.

    Each block of qubits is one matrix product that takes the block from one end of the index
    to the other (on (2^k, M) data: (M, 2^k) = dataᵀ·Uᵀ), so a layer is a few GEMMs and no transposes:
    from (2^n, B) the blocks go front to back and the batch ends first; from (B, 2^n) back to front.
    """
    n = theta.shape[0]
    data = _permute(data, n, 1 if batch_first else 0)
    rotations = _ry(theta)
    blocks = _blocks(n, _BLOCK)
    for start, width in reversed(blocks) if batch_first else blocks:
        u = _kron(list(rotations[start:start + width]))
        if batch_first:
            data = jnp.einsum("Mj,ij->iM", data.reshape(-1, 2**width), u)
        else:
            data = jnp.einsum("jM,ij->Mi", data.reshape(2**width, -1), u)
    total = data.size
    return data.reshape((2**n, total >> n) if batch_first else (total >> n, 2**n))


def _ring_index(n: int, matrix: np.ndarray):
    """index(matrix · c) for every basis index c, computed on the device (no 2^n constant).

    Bit k of the result is the parity of the bits j of c with matrix[k, j] = 1; grouping the terms
    by offset j − k turns that into a few shift-mask-xor operations (4 for a ring), cheap enough
    to be recomputed inside the gather that XLA fuses it into.
    """
    c = jax.lax.iota(jnp.uint32, 2**n)
    out = jnp.zeros_like(c)
    for offset in range(-(n - 1), n):
        mask = sum(1 << (n - 1 - k) for k in range(n) if 0 <= k + offset < n and matrix[k, k + offset])
        if mask:
            shifted = c << offset if offset > 0 else c >> -offset
            out = out ^ (shifted & jnp.uint32(mask))
    return out


def _gather(x, index, axis: int):
    where = (slice(None),) * axis + (index,)
    return x.at[where].get(mode="promise_in_bounds", unique_indices=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _permute(psi, n: int, axis: int):
    """The ring on the state vector: new[c] = psi[A⁻¹c], a gather along the basis axis."""
    return _gather(psi, _ring_index(n, ring_inverse(n)), axis)


def _permute_fwd(psi, n, axis):
    return _permute(psi, n, axis), None


def _permute_bwd(n, axis, _, g):
    # The adjoint of a permutation is its inverse: a gather with index A·b (no scatter).
    return (_gather(g, _ring_index(n, ring_matrix(n)), axis),)


_permute.defvjp(_permute_fwd, _permute_bwd)


# ---------------------------------------------------------------- measurement


def _measure_factors(n, left, right):
    """⟨Z⟩ after the last ring from the factors: q(c_kept) = Σ_rt kept_r kept_t Gram(traced)_rt."""
    cols = []
    for g in _measurement(n):
        shared, signs = jnp.asarray(g.shared, left.dtype), jnp.asarray(g.signs, left.dtype)
        traced, kept = (right, left) if g.side == "R" else (left, right)
        gram = jnp.einsum("bcr,c,bct->brt", traced, shared, traced)
        q = (jnp.einsum("bcr,brt->bct", kept, gram) * kept).sum(-1)
        cols.append((g.outputs, q @ signs))
    return _in_order(cols)


def _measure_dense(n, psi: _StateVector):
    """⟨Z⟩ after the last ring from the state vector: signed sums of Ψ² over one half, then the other."""
    m, data = _cut(n), psi.data
    p = jnp.square(data).reshape((-1, 2**m, 2 ** (n - m)) if psi.batch_first else (2**m, 2 ** (n - m), -1))
    cols = []
    for g in _measurement(n):
        shared, signs = jnp.asarray(g.shared, data.dtype), jnp.asarray(g.signs, data.dtype)
        if psi.batch_first:
            q = jnp.einsum("bij,j->bi" if g.side == "R" else "bij,i->bj", p, shared)
            cols.append((g.outputs, q @ signs))
        else:
            q = jnp.einsum("ijb,j->ib" if g.side == "R" else "ijb,i->jb", p, shared)
            cols.append((g.outputs, (signs.T @ q).T))
    return _in_order(cols)


def _in_order(cols):
    order = np.argsort(np.concatenate([np.array(o) for o, _ in cols]))
    return jnp.concatenate([v for _, v in cols], axis=-1)[:, order]
