"""The compiled environment chains (`heads.mps_ffi`, heads/csrc/mps_chains.cc) against XLA's (`heads.mps`).

The XLA chains are checked against PennyLane, the state vector, quimb and closed forms in
tests/test_mps.py (which, on a CPU with the kernel built, now runs the kernel too); here the kernel must
give the same values and gradients as the XLA chains, and the same bits for an example whatever batch,
vmapped group or instruction set variant (on one machine) it is computed in.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heads import mps, mps_ffi

pytestmark = pytest.mark.skipif(mps_ffi._library() is None, reason="the kernel library is not built")


def _inputs(n, batch, layers, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed + 100 * n + batch)
    a = rng.uniform(-1.5, 1.5, (batch, n)).astype(dtype)
    w = rng.uniform(-np.pi, np.pi, (layers, n)).astype(dtype)
    c = rng.normal(size=(batch, n)).astype(dtype)
    return a, w, c


def _value_and_grads(n, batch, layers, chains, dtype=np.float32, ops=False):
    a, w, c = _inputs(n, batch, layers, dtype)
    # per-example operators (the noise trajectories' hook): random real 2×2, so every slot matters
    o = np.random.default_rng(n).normal(size=(batch, layers + 2, n, 2, 2)).astype(dtype) if ops else None

    def loss(a, w, o):
        z = mps._expvals(a, w, o, unroll=1, chains=chains)
        return (z * c).sum(), z

    (_, z), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2) if ops else (0, 1), has_aux=True))(a, w, o)
    return [np.asarray(v) for v in (z, *grads)]


def _close(got, want, tol):
    for g, w in zip(got, want, strict=True):
        scale = max(float(np.abs(w).max()), 1e-6)
        assert float(np.abs(g - w).max()) <= tol * scale


# (n, layers, batch): n = 2..5 edge cases, odd n (a dummy site), bond 1, 4 and 16, batch 1 and odd
@pytest.mark.parametrize(
    "n,layers,batch",
    [(2, 1, 1), (2, 3, 3), (3, 2, 1), (4, 3, 5), (5, 3, 1), (5, 1, 3), (8, 2, 3), (11, 3, 7), (19, 3, 2)],
)
def test_kernel_equals_xla_chains_values_and_gradients(n, layers, batch):
    _close(_value_and_grads(n, batch, layers, "ffi"), _value_and_grads(n, batch, layers, "xla"), 2e-5)


@pytest.mark.parametrize("n,layers,batch", [(2, 1, 2), (3, 2, 1), (5, 3, 3), (8, 3, 2), (14, 3, 2)])
def test_kernel_with_per_example_operators_equals_xla(n, layers, batch):
    """The noise trajectories' per-example operators: the last one rides in the kernel's rotation (S, B, 4, 4)."""
    got = _value_and_grads(n, batch, layers, "ffi", ops=True)
    _close(got, _value_and_grads(n, batch, layers, "xla", ops=True), 2e-5)
    assert len(got) == 4 and got[3].shape == (batch, layers + 2, n, 2, 2)


def test_the_chains_alone_equal_xla_in_the_whole_step():
    """The kernel's previous form (chains only, the last ring-and-rotation in XLA), kept for comparisons."""
    _close(_value_and_grads(11, 3, 3, "ffi-chains"), _value_and_grads(11, 3, 3, "xla"), 2e-5)


def test_kernel_equals_xla_chains_in_float64():
    with jax.enable_x64(True):
        got = _value_and_grads(7, 3, 3, "ffi", np.float64)
        want = _value_and_grads(7, 3, 3, "xla", np.float64)
        got_ops = _value_and_grads(6, 2, 2, "ffi", np.float64, ops=True)
        want_ops = _value_and_grads(6, 2, 2, "xla", np.float64, ops=True)
    assert got[0].dtype == np.float64 and got_ops[3].dtype == np.float64
    _close(got, want, 1e-12)
    _close(got_ops, want_ops, 1e-12)


def _sites(S, B, D, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(S, B, D, 4, D)) * 0.4, jnp.float32)


_SIGNS3 = jnp.asarray([mps._SIGNS["ZI"], mps._SIGNS["II"], mps._SIGNS["ZZ"]], jnp.float32)


def _kernel_vjp(t):
    (lefts, rights), pull = jax.vjp(lambda t: mps_ffi.chains(t, _SIGNS3), t)
    rng = np.random.default_rng(1)
    lb = jnp.asarray(rng.normal(size=lefts.shape), jnp.float32)
    rb = jnp.asarray(rng.normal(size=rights.shape), jnp.float32)
    return lefts, rights, pull((lb, rb))[0], lb, rb


def test_kernel_chains_equal_the_xla_chains_directly():
    t = _sites(6, 3, 16)
    lefts, rights, d_t, lb, rb = _kernel_vjp(t)

    def xla(t):
        last, envs = mps._left_chain(t, _SIGNS3[0], 1)
        first, renvs = mps._right_chain(t, _SIGNS3[1:], 1)
        return jnp.concatenate([envs, last[None]]), jnp.concatenate([first[None], renvs])

    (wl, wr), pull = jax.vjp(xla, t)
    _close(
        [np.asarray(lefts), np.asarray(rights), np.asarray(d_t)],
        [np.asarray(wl), np.asarray(wr), np.asarray(pull((lb, rb))[0])],
        2e-5,
    )


def test_an_example_gets_the_same_bits_in_any_batch_or_vmapped_group():
    t = _sites(5, 7, 16, seed=3)
    lefts, rights, d_t, lb, rb = _kernel_vjp(t)
    for lo, hi in ((0, 1), (2, 5), (6, 7)):  # the same examples alone or in smaller batches
        (l2, r2), pull = jax.vjp(lambda t: mps_ffi.chains(t, _SIGNS3), t[:, lo:hi])
        d2 = pull((lb[:, lo:hi], rb[:, lo:hi]))[0]
        np.testing.assert_array_equal(np.asarray(l2), np.asarray(lefts[:, lo:hi]))
        np.testing.assert_array_equal(np.asarray(r2), np.asarray(rights[:, lo:hi]))
        np.testing.assert_array_equal(np.asarray(d2), np.asarray(d_t[:, lo:hi]))
    # vmapped (the sweep's member blocks): each member as if alone
    members = jnp.stack([t, 0.5 * t, -t])
    vl, vr = jax.vmap(lambda t: mps_ffi.chains(t, _SIGNS3))(members)
    for m in range(3):
        ml, mr = mps_ffi.chains(members[m], _SIGNS3)
        np.testing.assert_array_equal(np.asarray(vl[m]), np.asarray(ml))
        np.testing.assert_array_equal(np.asarray(vr[m]), np.asarray(mr))
    g = jax.vmap(jax.grad(lambda t: sum(x.sum() for x in mps_ffi.chains(t, _SIGNS3))))(members)
    np.testing.assert_array_equal(
        np.asarray(g[1]),
        np.asarray(jax.grad(lambda t: sum(x.sum() for x in mps_ffi.chains(t, _SIGNS3)))(members[1])),
    )


def _measure_inputs(n, batch, per_example, seed=0):
    """Sites before the last ring (bond 4, as after 2 of 3 layers) and the last rotations."""
    rng = np.random.default_rng(seed)
    S = len(mps.sites(n))
    tp = jnp.asarray(rng.normal(size=(S, batch, 4, 4, 4)) * 0.5, jnp.float32)
    rot = jnp.asarray(rng.normal(size=(S, batch, 4, 4) if per_example else (S, 4, 4)), jnp.float32)
    return tp, rot


def _measure(tp, rot, n):
    return mps_ffi.measure(tp, rot, mps._signs6(jnp.float32), mps.ring_codes(n), mps.plan_codes(n))


@pytest.mark.parametrize("per_example", [False, True])
def test_the_fused_measurement_equals_xla_directly(per_example):
    """mps_ffi.measure (the last ring-and-rotation, the chains, the measurement) against `_apply` + `_measure`."""
    n = 9
    tp, rot = _measure_inputs(n, 3, per_example)
    tab = jnp.asarray(mps.ring_tables(n), jnp.float32)
    spec = "sbqp,sijpklo->sbqijklo" if per_example else "sqp,sijpklo->sqijklo"

    def xla(tp, rot):
        return mps._measure(n, mps._apply(tp, jnp.einsum(spec, rot, tab)), 1, "xla")

    zbar = jnp.asarray(np.random.default_rng(2).normal(size=(3, n)), jnp.float32)
    z, pull = jax.vjp(lambda tp, rot: _measure(tp, rot, n), tp, rot)
    wz, wpull = jax.vjp(xla, tp, rot)
    _close([np.asarray(x) for x in (z, *pull(zbar))], [np.asarray(x) for x in (wz, *wpull(zbar))], 2e-5)


def test_the_fused_measurement_gives_an_example_the_same_bits_in_any_batch_or_vmapped_group():
    n = 7
    for per_example in (False, True):
        tp, rot = _measure_inputs(n, 5, per_example, seed=4)
        zbar = jnp.asarray(np.random.default_rng(5).normal(size=(5, n)), jnp.float32)
        z, pull = jax.vjp(lambda tp, rot: _measure(tp, rot, n), tp, rot)
        d_tp, d_rot = pull(zbar)
        for lo, hi in ((0, 1), (1, 4), (4, 5)):
            r = rot[:, lo:hi] if per_example else rot
            z2, pull2 = jax.vjp(lambda tp, rot: _measure(tp, rot, n), tp[:, lo:hi], r)
            d_tp2, d_rot2 = pull2(zbar[lo:hi])
            np.testing.assert_array_equal(np.asarray(z2), np.asarray(z[lo:hi]))
            np.testing.assert_array_equal(np.asarray(d_tp2), np.asarray(d_tp[:, lo:hi]))
            if per_example:
                np.testing.assert_array_equal(np.asarray(d_rot2), np.asarray(d_rot[:, lo:hi]))
        members = jnp.stack([tp, -0.5 * tp])
        loss = functools.partial(
            lambda tp, rot, zbar: (_measure(tp, rot, n) * zbar).sum(), rot=rot, zbar=zbar
        )
        vz = jax.vmap(_measure, (0, None, None))(members, rot, n)
        vg = jax.vmap(jax.grad(loss))(members)
        for m in range(2):
            np.testing.assert_array_equal(np.asarray(vz[m]), np.asarray(_measure(members[m], rot, n)))
            np.testing.assert_array_equal(np.asarray(vg[m]), np.asarray(jax.grad(loss)(members[m])))


def _step(n, batch, layers, dtype=np.float32, seed=0):
    a, w, c = _inputs(n, batch, layers, dtype, seed)
    # per-example operators in every slot (the per-example rotation path of the kernel)
    o = np.random.default_rng(seed + n).normal(size=(batch, layers + 2, n, 2, 2)).astype(dtype)

    def loss(a, w, o):
        z = mps._expvals(a, w, o, unroll=1, chains="ffi")
        return (z * c).sum(), z

    return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True)), (a, w, o)


def _bits(f, args):
    (_, z), grads = f(*args)
    return [np.asarray(v) for v in (z, *grads)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_call_shared_across_threads_gives_the_same_bits_as_one_thread(dtype):
    """A `measure` call that shares its examples with helper threads (a core idle) gives every example
    the same bits as the call on one thread: forward and reverse, with 2, 3 and 4 threads."""
    f, args = _step(19, 48, 3, dtype)
    before = mps_ffi.set_threads(1)
    try:
        alone = _bits(f, args)
        for threads in (2, 3, 4):
            mps_ffi.set_threads(threads)
            helped = mps_ffi.helped()
            # a helper joins when the OS wakes it; on a busy machine that may take a call or two
            for _ in range(50):
                got = _bits(f, args)
                for g, w in zip(got, alone, strict=True):
                    np.testing.assert_array_equal(g, w)
                if mps_ffi.helped() > helped:
                    break
            assert mps_ffi.helped() > helped, f"no helper thread joined with {threads} threads"
    finally:
        mps_ffi.set_threads(before)


def test_concurrent_calls_sharing_helpers_give_the_same_bits_as_alone():
    """Two blocks' steps at once in two threads (the training's lanes), helpers joining and leaving as the
    calls overlap: each gets the bits it gets alone on one thread."""
    import concurrent.futures

    steps = [_step(n, 24, 3, seed=s) for n, s in ((19, 1), (14, 2))]
    before = mps_ffi.set_threads(1)
    try:
        alone = [_bits(f, args) for f, args in steps]
        mps_ffi.set_threads(2)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for _ in range(10):
                got = list(pool.map(lambda fa: _bits(*fa), steps))
                for g, w in zip(got, alone, strict=True):
                    for x, y in zip(g, w, strict=True):
                        np.testing.assert_array_equal(x, y)
    finally:
        mps_ffi.set_threads(before)


def test_the_fused_measurement_rejects_a_mismatched_ring_table():
    tp, rot = _measure_inputs(7, 2, False)
    with pytest.raises(Exception, match="16 codes per site"):
        mps_ffi.measure(tp, rot, mps._signs6(jnp.float32), mps.ring_codes(9), mps.plan_codes(7))


def test_ring_and_plan_codes_read_the_tables():
    n = 11
    tab, codes = mps.ring_tables(n), np.asarray(mps.ring_codes(n)).reshape(-1, 2, 2, 4)
    for s, x_in, y_out, p in np.ndindex(codes.shape):
        c = codes[s, x_in, y_out, p]
        assert tab[s, x_in, c >> 3, p, (c >> 2) & 1, y_out, c & 3] == 1
    assert tab.sum() == codes.size  # one (y_in, x_out, p_old) per (x_in, y_out, p_new)
    plan = np.asarray(mps.plan_codes(n)).reshape(-1, 3)
    for (j, c, h), (pj, head, rest) in zip(plan, mps.measurement_plan(n), strict=True):
        assert (j, c) == (pj, ("II", "ZZ").index(rest))
        assert h == (-1 if head == "ZI" else mps._HEADS.index(head))


def test_the_machine_picks_the_kernel_and_the_variable_forces_either(monkeypatch):
    assert mps_ffi.kernel() == ("ffi" if jax.default_backend() == "cpu" else "xla")
    monkeypatch.setenv("CXR_MPS_KERNEL", "xla")
    assert mps_ffi.kernel() == "xla" and mps.chains_for(1) == "xla"
    monkeypatch.setenv("CXR_MPS_KERNEL", "ffi")
    assert mps_ffi.kernel() == "ffi"
    with mps.counted_flops():  # XLA's cost analysis must see the chains
        assert mps.chains_for(mps._UNROLL) == "xla"
    monkeypatch.setenv("CXR_MPS_KERNEL", "fast")
    with pytest.raises(ValueError, match="CXR_MPS_KERNEL"):
        mps_ffi.kernel()


_SCRIPT = """
import numpy as np, jax, jax.numpy as jnp
from heads import mps, mps_ffi
rng = np.random.default_rng(0)
a = rng.uniform(-1.5, 1.5, (3, 9)).astype(np.float32); w = rng.uniform(-3, 3, (3, 9)).astype(np.float32)
f = lambda chains: jax.value_and_grad(lambda a, w: (mps._expvals(a, w, unroll=1, chains=chains) ** 2).sum(), (0, 1))(a, w)
got, want = jax.tree.leaves(f("ffi")), jax.tree.leaves(f("xla"))
err = max(float(np.abs(np.asarray(g) - np.asarray(x)).max() / np.abs(np.asarray(x)).max()) for g, x in zip(got, want))
print(mps_ffi.isa(), err)
"""


@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_every_instruction_set_variant_equals_the_xla_chains(isa):
    """The variants another machine would pick (SSE2 baseline, AVX2+FMA), run here in a subprocess."""
    env = dict(os.environ, CXR_MPS_ISA=isa, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got_isa, err = out.stdout.split()
    if got_isa != isa:
        pytest.skip(f"this CPU lacks {isa}")
    assert float(err) < 2e-5
