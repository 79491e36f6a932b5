"""The MPS environment chains as a compiled CPU kernel (heads/csrc/mps_chains.cc), called through XLA's FFI.

XLA's CPU back end runs the chains' thousands of 16×16 products at 16–23 GFLOP/s; the kernel walks each
example's whole chain with the environment and the site tensor in L1 and every product register-blocked
(AVX-512, AVX2+FMA or SSE2, picked once per process from the CPU). It computes exactly what
`heads.mps._left_chain` and `_right_chain` compute — the environments and the written-out reverse pass —
one example at a time, so an example's bits do not depend on its batch (nor on the thread: a `measure`
call that finds a core idle shares its examples with a helper thread, see `set_threads`). `measure` goes further: from the
sites before the last ring-and-rotation and the last rotations it builds the final sites, runs both chains
and returns ⟨Z_k⟩ (and, in reverse, the cotangents of those compact inputs), so nothing of the bond-16
sites passes through XLA.

Which chains `heads.mps` runs is fixed per machine: the kernel when JAX's default back end is the CPU and
the library was built (`pip install -e .` builds it; with no C++ compiler the install goes on without it),
otherwise the XLA chains. `CXR_MPS_KERNEL=xla` or `=ffi` forces one (`ffi` where the library is missing
is an error); `kernel()` says which is in use.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib.machinery
import importlib.util
import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

_ENV = "CXR_MPS_KERNEL"
_TARGETS = ("ChainsFwd", "ChainsBwd", "MeasureFwd", "MeasureBwd")
_SYMBOLS = ("cxr_mps_isa", "cxr_mps_set_threads", "cxr_mps_helped")


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The built kernel (heads/_mps_chains*.so beside this file), registered with XLA; None if absent."""
    here = Path(__file__).parent
    spec = importlib.util.find_spec("heads._mps_chains")  # wherever the install put it
    found = [
        p
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        for p in glob.glob(str(here / f"_mps_chains{suffix}"))
    ]
    if spec is not None and spec.origin:
        found.insert(0, spec.origin)
    if not found:
        return None
    lib = ctypes.CDLL(found[0])
    missing = [f"CxrMps{name}" for name in _TARGETS if not hasattr(lib, f"CxrMps{name}")]
    missing += [name for name in _SYMBOLS if not hasattr(lib, name)]
    if missing:  # built from older sources (the checkout moved on): XLA's chains, and say how to rebuild
        warnings.warn(
            f"{found[0]} lacks {', '.join(missing)} (built from older sources); running XLA's chains. "
            "Rebuild it: python setup.py build_ext --inplace --force (or pip install -e .)",
            stacklevel=2,
        )
        return None
    for name in _TARGETS:
        jax.ffi.register_ffi_target(
            f"cxr_mps_{name}", jax.ffi.pycapsule(getattr(lib, f"CxrMps{name}")), platform="cpu"
        )
    lib.cxr_mps_isa.restype = ctypes.c_char_p
    lib.cxr_mps_set_threads.argtypes = [ctypes.c_int]
    lib.cxr_mps_helped.restype = ctypes.c_long
    return lib


def isa() -> str | None:
    """The instruction set the kernel runs with on this machine (avx512, avx2, base), None without it."""
    lib = _library()
    return lib.cxr_mps_isa().decode() if lib is not None else None


def set_threads(n: int = 0) -> int:
    """The most threads `measure` calls may compute with at once, process-wide (default: the usable cores,
    or CXR_MPS_THREADS); 1 runs every call on its caller's thread alone. n = 0 only reads the setting.
    Returns the setting before. The threads do not change any bits: each example is computed alone."""
    lib = _library()
    return int(lib.cxr_mps_set_threads(int(n))) if lib is not None else 1


def helped() -> int:
    """How many examples helper threads have computed in this process (0 without the kernel)."""
    lib = _library()
    return int(lib.cxr_mps_helped()) if lib is not None else 0


def kernel() -> str:
    """'ffi' or 'xla': the chains `heads.mps` runs on this machine (see the module docstring)."""
    want = os.environ.get(_ENV, "").strip().lower()
    if want not in ("", "ffi", "xla"):
        raise ValueError(f"{_ENV}={want!r}: expected 'ffi' or 'xla'")
    if want == "xla":
        return "xla"
    if want == "ffi":
        if _library() is None:
            raise RuntimeError(
                f"{_ENV}=ffi, but the kernel library is not built (pip install -e . builds it)"
            )
        return "ffi"
    return "ffi" if jax.default_backend() == "cpu" and _library() is not None else "xla"


def _out(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def _call(name, outs, *args, **attrs):
    _library()
    return jax.ffi.ffi_call(f"cxr_mps_{name}", outs, vmap_method="broadcast_all")(*args, **attrs)


@jax.custom_vjp
def chains(t, signs):
    """t (S, B, D, 4, D), signs (3, 4) = Z⊗I, I⊗I, Z⊗Z → (lefts (S + 1, B, D, D): the Z⊗I environment of
    the sites before j; rights (S + 1, B, 2, D, D): the I⊗I and Z⊗Z environments of the sites from j on)."""
    return _fwd(t, signs)[0]


def _fwd(t, signs):
    S, B, D = t.shape[:3]
    lefts, rights, xl, xr = _call(
        "ChainsFwd",
        (
            _out((S + 1, B, D, D), t.dtype),
            _out((S + 1, B, 2, D, D), t.dtype),
            _out(t.shape, t.dtype),
            _out((S, B, 2, D, 4, D), t.dtype),
        ),
        t,
        signs.astype(t.dtype),
    )
    return (lefts, rights), (t, signs, xl, xr)


def _bwd(res, cot):
    t, signs, xl, xr = res
    lefts_bar, rights_bar = cot
    d_t = _call("ChainsBwd", _out(t.shape, t.dtype), t, signs.astype(t.dtype), xl, xr, lefts_bar, rights_bar)
    return d_t, jnp.zeros_like(signs)


chains.defvjp(_fwd, _bwd)


# ---------------------------------------------------------------- the last ring-and-rotation, the chains, the measurement


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def measure(tp, rot, signs, ring, plan):
    """⟨Z_k⟩ from the sites before the last ring-and-rotation, all in one call (heads/csrc/mps_chains_impl.inc).

    tp (S, B, Dp, 4, Dp): the site tensors before the last ring; rot (S, 4, 4) shared by the batch or
    (S, B, 4, 4) per example: each site's last rotation (with the slot's operators folded in);
    signs (6, 4): Z⊗I, I⊗I, Z⊗Z (the chains), then the site-0 patterns I⊗Z, I⊗I, Z⊗Z;
    ring: a tuple of S·16 codes j·8 + k·4 + o for (x_in, y_out, p_new) (`heads.mps.ring_codes`), or
    None when no ring precedes the rotation (one layer); plan: n (j, c, h) triples
    (`heads.mps.plan_codes`). Returns z (B, n). The kernel builds each site tensor from tp and rot,
    so XLA passes the compact tp and gets the compact cotangents of tp and rot back.
    """
    return _measure_fwd(tp, rot, signs, ring, plan)[0]


def _attrs(ring, plan):
    return {
        "ring": np.asarray([-1] if ring is None else ring, np.int32),
        "plan": np.asarray(plan, np.int32).reshape(-1),
    }


def _measure_fwd(tp, rot, signs, ring, plan):
    S, B, Dp = tp.shape[:3]
    D = Dp if ring is None else 4 * Dp
    h = D if ring is None else D // 2  # the sparse blocks' size (see the kernel)
    n = len(plan) // 3
    dt = tp.dtype
    z, lefts, rights, yl, yr = _call(
        "MeasureFwd",
        (
            _out((B, n), dt),
            _out((S + 1, B, D, D), dt),
            _out((S + 1, B, 2, D, D), dt),
            _out((S, B, 4, D, h), dt),
            _out((S, B, 2, 4, D, h), dt),
        ),
        tp,
        rot.astype(dt),
        signs.astype(dt),
        **_attrs(ring, plan),
    )
    return z, (tp, rot, signs, lefts, rights, yl, yr)


def _measure_bwd(ring, plan, res, z_bar):
    tp, rot, signs, lefts, rights, yl, yr = res
    S, B = tp.shape[:2]
    dt = tp.dtype
    d_tp, d_rot = _call(
        "MeasureBwd",
        (_out(tp.shape, dt), _out((S, B, 4, 4), dt)),
        tp,
        rot.astype(dt),
        signs.astype(dt),
        lefts,
        rights,
        yl,
        yr,
        z_bar.astype(dt),
        **_attrs(ring, plan),
    )
    if rot.ndim == 3:  # shared by the batch
        d_rot = d_rot.sum(1)
    return d_tp, d_rot.astype(rot.dtype), jnp.zeros_like(signs)


def _measure_fwd_rule(tp, rot, signs, ring, plan):
    return _measure_fwd(tp, rot, signs, ring, plan)


measure.defvjp(_measure_fwd_rule, _measure_bwd)
