"""The DQC circuit as an exact matrix-product state: cost linear in the number of qubits.

Sites follow the folded qubit order: site s holds the pair (qubit s, qubit n−1−s), and for odd n
the last site holds the middle qubit beside a dummy qubit that stays |0⟩. Every CNOT of a ring then
joins a site to itself or to its neighbour, and the ring's inverse map A⁻¹ (old bits as parities of
new bits, `heads.ring.ring_inverse`) reads, for each site, its own new bits, one parity of the
left neighbour's and one of the right neighbour's. So the ring is exact on the MPS without any
decomposition: every bond carries its old index plus two bits (the parity sent right, the parity
sent left), the bond dimension grows ×4, and each new site tensor is the old one read at the old
physical index, times the two consistency masks. The rotation layer after the ring is a 4×4 matrix
per site; ring and rotation fold into one batch-shared (64 × 4) matrix per site, applied to every
site of every example at once as one matrix product. With the product state of the embedding and
the first rotation layer (bond 1), after the layers−1 rings that matter the bond is 4^(layers−1):
16 for the paper's 3 layers, at any n. Nothing is truncated.

The last ring is a parity measurement (as in `heads.quantum`): ⟨Z_k⟩ is the expectation of a
Z-string, which in the folded order is Z on the left qubit of a prefix of sites followed by I⊗I or
Z⊗Z on the rest (row 0: I⊗Z on site 0, then Z⊗Z). So three environment chains — left with Z⊗I,
right with I⊗I and with Z⊗Z — give every ⟨Z_k⟩ as one inner product at its switch point. Each
chain is a `lax.scan` over the (uniformly padded) sites, so compile time does not grow with n; the
bonds at the two open ends are padded to the bulk size and start from e₀e₀ᵀ. The chains' reverse
pass is written out (`_left_chain`, `_right_chain`): it reuses each step's product from the forward
pass and takes 3 products per step (one 2-core AMD EPYC: value and gradient 3% faster at 19 qubits,
21% at 40 than autodiff through the scans).

Per-example single-qubit operators (`expvals(..., ops)`) are folded into each site's ring-and-rotation
kernel, which is then per example instead of shared by the batch: same bond, same chains.

With the compiled kernel (`heads.mps_ffi`, on a CPU), the last ring-and-rotation, the chains and the
measurement are one call (`mps_ffi.measure`): XLA passes the sites before the last ring (bond 4) and
each site's last rotation (per example when operators ride in it) and gets their cotangents back; the
kernel builds the bond-16 sites itself.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from heads import mps_ffi
from heads.ring import ring_inverse, ring_matrix

# Z⊗I, I⊗I, Z⊗Z, I⊗Z on a site's physical index p = 2·(left bit) + (right bit).
_SIGNS = {"ZI": (1, 1, -1, -1), "II": (1, 1, 1, 1), "ZZ": (1, -1, -1, 1), "IZ": (1, -1, 1, -1)}


def sites(n: int) -> list[tuple[int, int | None]]:
    """(left qubit, right qubit or None for the dummy) of every site, in the folded order."""
    pairs = [(s, n - 1 - s) for s in range(n // 2)]
    return pairs + ([((n - 1) // 2, None)] if n % 2 else [])


@functools.cache
def ring_tables(n: int) -> np.ndarray:
    """Per site: tab[s, x_in, y_in, p_new, x_out, y_out, p_old] ∈ {0, 1} (see the module docstring).

    The new tensor is T'[(α, x_in, y_in), p_new, (β, x_out, y_out)] = Σ_p_old tab · T[α, p_old, β]:
    x_in is the parity of the left neighbour's new bits that this site reads, y_out that of the
    right neighbour's; x_out and y_in are the parities of this site's new bits that the right and
    the left neighbour read (the table is zero unless they hold those values). Bonds that carry
    nothing (the open ends) carry a constant 0.
    """
    inv, layout = ring_inverse(n), sites(n)
    where = {q: (s, slot) for s, pair in enumerate(layout) for slot, q in enumerate(pair) if q is not None}
    S = len(layout)
    # contrib[s, d, slot_old, slot_nb]: old bit (s, slot_old) XORs new bit (s + d − 1, slot_nb), d = 0, 1, 2
    contrib = np.zeros((S, 3, 2, 2), int)
    for q_old in range(n):
        s, slot = where[q_old]
        for q_new in np.flatnonzero(inv[q_old]):
            t, slot_new = where[int(q_new)]
            if abs(t - s) > 1:
                raise AssertionError(f"the ring of {n} qubits reads beyond a neighbouring site")
            contrib[s, t - s + 1, slot, slot_new] ^= 1
    if n % 2:
        contrib[S - 1, 1, 1, 1] = 1  # the dummy keeps its bit (0), so it never leaves |0⟩
    # per site and side: one parity of the neighbour (fn, over its slots) and the own slots it feeds (use)
    fn, use = np.zeros((S, 2, 2), int), np.zeros((S, 2, 2), int)
    for s in range(S):
        for side, d in ((0, 0), (1, 2)):
            rows = [r for r in contrib[s, d] if r.any()]
            if any((r != rows[0]).any() for r in rows):
                raise AssertionError(f"site {s} of {n} qubits reads two parities of one neighbour")
            if rows:
                fn[s, side], use[s, side] = rows[0], contrib[s, d].any(1)
    tab = np.zeros((S, 2, 2, 4, 2, 2, 4))
    for s in range(S):
        for p_new in range(4):
            bits = np.array([p_new >> 1, p_new & 1])
            sends_left = fn[s - 1, 1] @ bits % 2 if s > 0 else 0  # what the left neighbour reads of us
            sends_right = fn[s + 1, 0] @ bits % 2 if s + 1 < S else 0
            for x_in in range(2):
                for y_out in range(2):
                    old = (contrib[s, 1] @ bits + x_in * use[s, 0] + y_out * use[s, 1]) % 2
                    tab[s, x_in, sends_left, p_new, sends_right, y_out, old[0] * 2 + old[1]] = 1
    return tab


@functools.cache
def measurement_plan(n: int) -> tuple[tuple[int, str, str], ...]:
    """For every output k: (j, first, rest) with Z_k's string = `first` on site 0 (when j = 1 and
    first != "ZI"), Z⊗I on sites < j, then `rest` (II or ZZ) on sites j..S−1."""
    layout, rows = sites(n), ring_matrix(n)
    plan = []
    for k in range(n):
        pats = []
        for left, right in layout:
            z_left, z_right = rows[k, left], (rows[k, right] if right is not None else None)
            pats.append((z_left, z_right))
        plan.append(_split(pats, n, k))
    return tuple(plan)


def _split(pats, n, k):
    def fits(p, name):  # a dummy right slot (None) fits either
        want = {"ZI": (1, 0), "II": (0, 0), "ZZ": (1, 1), "IZ": (0, 1)}[name]
        return p[0] == want[0] and (p[1] is None or p[1] == want[1])

    S = len(pats)
    for j in range(S, -1, -1):
        for rest in ("II", "ZZ"):
            if all(fits(p, "ZI") for p in pats[:j]) and all(fits(p, rest) for p in pats[j:]):
                return (j, "ZI", rest)
    for first in ("IZ", "II", "ZZ"):
        for j in range(S, 0, -1):
            for rest in ("II", "ZZ"):
                if fits(pats[0], first) and all(fits(p, "ZI") for p in pats[1:j]) and all(fits(p, rest) for p in pats[j:]):
                    if j == 1:
                        return (1, first, rest)
    raise AssertionError(f"output {k} of {n} qubits is not a prefix/suffix Z-string in the folded order")


# ---------------------------------------------------------------- the simulator


# How many sites one step of the environment scans takes (`lax.scan`'s `unroll`). 1 keeps compile
# time flat in n and was not slower when measured (AMD EPYC, 2 cores: unroll 2 and 4 were 10-20% slower
# at 19 and 40 qubits); `counted_flops` unrolls fully, since XLA's cost analysis counts a loop body once.
_UNROLL: int | bool = 1


def expvals(angles, weights, ops=None):
    """⟨Z_i⟩ of the DQC circuit by the MPS: angles (B, n), weights (layers, n) → (B, n).

    `ops` (optional, (B, layers + 2, n, 2, 2), real): a single-qubit operator per example, slot and
    qubit, inserted into the circuit — slot 0 after the Hadamard, slot 1 after the embedding RY(angles),
    slot 2 + l after RY(weights[l]) (before ring l). They ride in the site tensors, so the bond and
    the cost per example do not change: the hook for noise trajectories (Pauli Y is the real X·Z up
    to a global phase; an error after a CNOT is carried back through the ring to slot 2 + l as a
    product of Paulis). With `ops=None` the program is the noiseless one, bit for bit.
    """
    return _expvals(angles, weights, ops, unroll=_UNROLL, chains=chains_for(_UNROLL))


def chains_for(unroll) -> str:
    """'ffi' (the compiled kernel, `heads.mps_ffi`) or 'xla': which environment chains to trace. Fixed per
    machine; under `counted_flops` always XLA's, so that its cost analysis sees the chains' arithmetic."""
    return "xla" if unroll is True else mps_ffi.kernel()


@contextlib.contextmanager
def counted_flops():
    """Within it, programs traced anew unroll the site scans, so that XLA's cost analysis (which counts
    a loop's body once) sees every site's arithmetic; the values are the same."""
    global _UNROLL
    before, _UNROLL = _UNROLL, True
    try:
        yield
    finally:
        _UNROLL = before


@functools.partial(jax.jit, static_argnames=("unroll", "chains"))
def _expvals(angles, weights, ops=None, *, unroll=1, chains="xla"):
    dtype = jnp.promote_types(jnp.result_type(angles, weights), jnp.float32)
    angles, weights = angles.astype(dtype), weights.astype(dtype)
    n = angles.shape[1]
    layout = sites(n)
    left_q = np.array([a for a, _ in layout])
    right_q = np.array([b if b is not None else 0 for _, b in layout])
    dummy = np.array([b is None for _, b in layout])

    if ops is None:
        phi = (angles + weights[0]) / 2 + math.pi / 4
        amp = jnp.stack([jnp.cos(phi), jnp.sin(phi)], -1)  # (B, n, 2)
    else:
        ops = ops.astype(dtype)
        amp = jnp.broadcast_to(jnp.asarray([1, 1], dtype) / math.sqrt(2), angles.shape + (2,))  # H|0⟩
        for slot, gate in ((0, None), (1, _ry(angles)), (2, _ry(weights[0])[None])):
            if gate is not None:
                amp = jnp.einsum("...ij,...j->...i", gate, amp)
            amp = jnp.einsum("bqij,bqj->bqi", ops[:, slot], amp)
    amp_r = jnp.where(dummy[None, :, None], jnp.asarray([1, 0], dtype), amp[:, right_q])
    pair = (amp[:, left_q, :, None] * amp_r[:, :, None, :]).reshape(amp.shape[0], len(layout), 4)
    t = jnp.swapaxes(pair, 0, 1)[:, :, None, :, None]  # (S, B, 1, 4, 1)

    tab = jnp.asarray(ring_tables(n), dtype)
    last = len(weights) - 1
    for layer, theta in enumerate(weights[1:], start=1):
        rot = _site_rotations(theta, left_q, right_q, dummy)  # (S, 4, 4)
        if ops is not None:  # per example: ring, rotation, then the slot's operators on the site's two qubits
            site_ops = _site_products(ops[:, 2 + layer], left_q, right_q, dummy)  # (B, S, 4, 4)
        if chains == "ffi" and layer == last:  # the kernel builds the last sites from t and the rotation
            if ops is not None:
                rot = jnp.einsum("bsqr,srp->sbqp", site_ops, rot)  # (S, B, 4, 4)
            return mps_ffi.measure(t, rot, _signs6(dtype), ring_codes(n), plan_codes(n))
        if ops is None:
            kernel = jnp.einsum("sqp,sijpklo->sqijklo", rot, tab)  # ring, then rotation
        else:
            kernel = jnp.einsum("bsqr,srp,sijpklo->sbqijklo", site_ops, rot, tab)
        t = _apply(t, kernel)
    if chains == "ffi":  # one layer: no ring, the kernel only measures (the rotation is the identity)
        eye = jnp.eye(4, dtype=dtype)[None].repeat(len(layout), 0)
        return mps_ffi.measure(t, eye, _signs6(dtype), None, plan_codes(n))
    return _measure(n, t, unroll, chains)


def _signs6(dtype):
    return jnp.asarray([_SIGNS[k] for k in ("ZI", "II", "ZZ", *_HEADS)], dtype)


_HEADS = ("IZ", "II", "ZZ")  # the patterns site 0 may carry before a suffix (`measurement_plan`)


@functools.cache
def ring_codes(n: int) -> tuple[int, ...]:
    """`ring_tables(n)` as the kernel reads it: per site and (x_in, y_out, p_new), the one (y_in, x_out, p_old)
    the table holds, coded y_in·8 + x_out·4 + p_old (S·16 codes)."""
    tab = ring_tables(n)
    codes = []
    for s in range(tab.shape[0]):
        for x_in in range(2):
            for y_out in range(2):
                for p in range(4):
                    ((j, k, o),) = np.argwhere(tab[s, x_in, :, p, :, y_out, :] == 1)
                    codes.append(int(j) * 8 + int(k) * 4 + int(o))
    return tuple(codes)


@functools.cache
def plan_codes(n: int) -> tuple[int, ...]:
    """`measurement_plan(n)` as the kernel reads it: per output (j, c, h) with c = 0 (I⊗I) or 1 (Z⊗Z) the
    suffix, h = −1 (Z⊗I on the sites before j) or the index in `_HEADS` of site 0's pattern (then j = 1)."""
    out = []
    for j, head, rest in measurement_plan(n):
        out += [j, 0 if rest == "II" else 1, -1 if head == "ZI" else _HEADS.index(head)]
    return tuple(out)


def _ry(theta):
    c, s = jnp.cos(theta / 2), jnp.sin(theta / 2)
    return jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)


def _site_rotations(theta, left_q, right_q, dummy):
    u_l = _ry(theta[left_q])
    u_r = jnp.where(dummy[:, None, None], jnp.eye(2, dtype=theta.dtype), _ry(theta[right_q]))
    return jnp.einsum("sab,scd->sacbd", u_l, u_r).reshape(-1, 4, 4)


def _site_products(ops, left_q, right_q, dummy):
    """Per example, (B, n, 2, 2) single-qubit operators → (B, S, 4, 4) on the sites' pairs (I on a dummy)."""
    o_l = ops[:, left_q]
    o_r = jnp.where(dummy[None, :, None, None], jnp.eye(2, dtype=ops.dtype), ops[:, right_q])
    return jnp.einsum("Bsab,Bscd->Bsacbd", o_l, o_r).reshape(ops.shape[0], -1, 4, 4)


def _apply(t, kernel):
    """T'[s, b, (α, x_in, y_in), q, (β, x_out, y_out)] = Σ_p kernel[s, (b,) q, x_in, y_in, x_out, y_out, p] T[s, b, α, p, β]
    (the kernel shared by the batch, or one per example)."""
    S, B, D, _, _ = t.shape
    spec = "sqijklp,sbapc->sbaijqckl" if kernel.ndim == 7 else "sbqijklp,sbapc->sbaijqckl"
    out = jnp.einsum(spec, kernel, t)
    return out.reshape(S, B, 4 * D, 4, 4 * D)


def _measure(n, t, unroll=1, chains="xla"):
    dtype = t.dtype
    sign = {k: jnp.asarray(v, dtype) for k, v in _SIGNS.items()}
    if chains == "ffi-chains":  # the kernel's chains alone (its previous form, kept for comparisons)
        lefts, rights = mps_ffi.chains(t, jnp.stack([sign["ZI"], sign["II"], sign["ZZ"]]))
    else:
        last, lefts = _left_chain(t, sign["ZI"], unroll)  # lefts[j]: sites < j
        lefts = jnp.concatenate([lefts, last[None]], 0)  # (S + 1, B, D, D)
        first, rights = _right_chain(t, jnp.stack([sign["II"], sign["ZZ"]]), unroll)  # rights[j]: sites > j
        rights = jnp.concatenate([first[None], rights], 0)  # rights[j]: sites >= j, j = 0..S

    # every switch point at once: inner[j, b, c] = <lefts[j], rights[j, :, c]>, c = II, ZZ
    inner = jnp.einsum("jbxy,jbcxy->jbc", lefts, rights)
    plan = measurement_plan(n)
    js = np.array([j for j, _, _ in plan])
    cs = np.array([0 if rest == "II" else 1 for _, _, rest in plan])
    out = inner[js, :, cs].T  # (B, n)
    for k, (_, head, _) in enumerate(plan):
        if head != "ZI":  # site 0 carries another pattern (row 0: I⊗Z), then the suffix from site 1
            env = jnp.einsum("bxpc,p,bxpd->bcd", t[0, :, :1], sign[head], t[0, :, :1])
            out = out.at[:, k].set((env * rights[1, :, cs[k]]).sum((1, 2)))
    return out


# ---------------------------------------------------------------- the environment chains and their reverse pass
#
# Every environment is symmetric (e₀e₀ᵀ, then Σ_p s_p T_pᵀ env T_p), so the reverse pass of one step
# env' = Σ_p s_p T_pᵀ env T_p, given the (symmetrised) cotangent Ē of env', is
#   T̄_p += 2 s_p · env T_p Ē   (from the step's own product x = env T, kept from the forward pass),
#   ēnv  = Σ_p s_p · T_p Ē T_pᵀ,
# three products per step where autodiff through the scan spent about twice the forward's time more.


def _e0(t):
    B, D = t.shape[1], t.shape[2]
    return jnp.zeros((B, D, D), t.dtype).at[:, 0, 0].set(1)


def _sym(a):
    return (a + jnp.swapaxes(a, -1, -2)) * 0.5


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _left_chain(t, sign, unroll):
    """(the environment of all sites, every environment before its site) of Z⊗I on every site."""
    return _left_fwd(t, sign, unroll)[0]


def _left_fwd(t, sign, unroll):
    def step(env, site):
        x = jnp.einsum("bxy,bypc->bxpc", env, site)
        return jnp.einsum("bxpc,p,bxpd->bcd", site, sign, x), (env, x)

    last, (envs, xs) = jax.lax.scan(step, _e0(t), t, unroll=unroll)
    return (last, envs), (t, sign, xs)


def _left_bwd(unroll, res, cot):
    t, sign, xs = res
    last_bar, envs_bar = cot

    def step(acc, inp):  # acc: the cotangent of the environment after this site
        site, x, env_bar = inp
        d_site = 2 * jnp.einsum("bxpc,p,bcd->bxpd", x, sign, acc)
        z = jnp.einsum("bapc,bcd->bapd", site, acc)
        return _sym(env_bar) + jnp.einsum("bapd,p,bepd->bae", z, sign, site), d_site

    _, d_t = jax.lax.scan(step, _sym(last_bar), (t, xs, envs_bar), reverse=True, unroll=unroll)
    return d_t, jnp.zeros_like(sign)


_left_chain.defvjp(_left_fwd, _left_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _right_chain(t, signs, unroll):
    """The same from the right, for two patterns at once (signs (2, 4): I⊗I and Z⊗Z on every site)."""
    return _right_fwd(t, signs, unroll)[0]


def _right_fwd(t, signs, unroll):
    B, D = t.shape[1], t.shape[2]

    def step(env, site):  # env (B, 2, D, D)
        x = jnp.einsum("bapc,bkcd->bkapd", site, env)
        return jnp.einsum("bkapd,kp,bepd->bkae", x, signs, site), (env, x)

    e0 = jnp.broadcast_to(_e0(t)[:, None], (B, 2, D, D))
    first, (envs, xs) = jax.lax.scan(step, e0, t, reverse=True, unroll=unroll)
    return (first, envs), (t, signs, xs)


def _right_bwd(unroll, res, cot):
    t, signs, xs = res
    first_bar, envs_bar = cot

    def step(acc, inp):  # acc (B, 2, D, D): the cotangent of the environment that includes this site
        site, x, env_bar = inp
        d_site = 2 * jnp.einsum("bkae,kp,bkapd->bepd", acc, signs, x)
        z = jnp.einsum("bkae,bepd->bkapd", acc, site)
        return _sym(env_bar) + jnp.einsum("bkapd,kp,bapc->bkcd", z, signs, site), d_site

    _, d_t = jax.lax.scan(step, _sym(first_bar), (t, xs, envs_bar), unroll=unroll)
    return d_t, jnp.zeros_like(signs)


_right_chain.defvjp(_right_fwd, _right_bwd)
