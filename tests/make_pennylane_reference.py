"""Regenerate tests/data/pennylane_expvals.npz: PennyLane's ⟨Z_i⟩ and gradients for the simulator tests.

PennyLane's JAX program for an n-qubit circuit takes 3–50 s to compile here, too slow to run the
whole grid in every test session, so the reference values over n = 2..14 are computed once by the
`pennylane` back end itself (float64) and stored; tests/test_quantum.py also runs PennyLane live
on a few small circuits, so a change in PennyLane still shows. Run from the repository root:

    python tests/make_pennylane_reference.py
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import pennylane  # noqa: E402

from heads.quantum import expvals  # noqa: E402

OUT = Path(__file__).parent / "data" / "pennylane_expvals.npz"


def cases():
    """Every n in 2..14 with two layer counts (together covering 1..5) and assorted batch sizes."""
    for n in range(2, 15):
        for layers in sorted({n % 5 + 1, (n + 2) % 5 + 1}):
            yield n, layers, 1 + (n + layers) % 4


def main() -> None:
    rng = np.random.default_rng(20240519)
    arrays = {}
    step = jax.jit(lambda x, w, g: jax.value_and_grad(
        lambda x, w: (expvals(x, w, backend="pennylane") * g).sum(), argnums=(0, 1))(x, w))
    value = jax.jit(lambda x, w: expvals(x, w, backend="pennylane"))
    for n, layers, batch in cases():
        start = time.perf_counter()
        x = rng.uniform(-np.pi / 2, np.pi / 2, (batch, n))
        w = rng.uniform(0, 2 * np.pi, (layers, n))
        g = rng.normal(size=(batch, n))
        _, (gx, gw) = step(x, w, g)
        key = f"n{n}_l{layers}"
        arrays |= {f"{key}_angles": x, f"{key}_weights": w, f"{key}_cotangent": g,
                   f"{key}_expvals": np.asarray(value(x, w)), f"{key}_grad_angles": np.asarray(gx),
                   f"{key}_grad_weights": np.asarray(gw)}
        print(f"{key} batch {batch}: {time.perf_counter() - start:.1f} s", flush=True)
    arrays["pennylane_version"] = np.array(pennylane.__version__)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
