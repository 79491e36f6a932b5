"""Paired, interleaved in one process: the noisy circuit's value + gradient (batch 32, 3 layers, Sycamore
2019) with K = 1, 2, 4, 8 trajectories per example, against the noiseless step, at 19 and 40 qubits:
the cost of K trajectories relative to one (linear in K or better is the target)."""
import time

import jax
import jax.numpy as jnp
import numpy as np

from heads.noise import NoiseModel
from heads.quantum import expvals

m = NoiseModel.load("sycamore-2019")
rng = np.random.default_rng(0)
for n in (19, 40):
    a = jnp.asarray(rng.uniform(-1.5, 1.5, (32, n)), jnp.float32)
    w = jnp.asarray(rng.uniform(0, 6.28, (3, n)), jnp.float32)
    key = jax.random.key(0)
    fs = {"noiseless": jax.jit(jax.value_and_grad(lambda a, w, k: expvals(a, w, backend="fast").sum(), argnums=(0, 1)))}
    for k in (1, 2, 4, 8):
        fs[f"K={k}"] = jax.jit(jax.value_and_grad(
            lambda a, w, key, k=k: expvals(a, w, backend="fast", noise=m, key=key, trajectories=k).sum(), argnums=(0, 1)))
    for f in fs.values():
        jax.block_until_ready(f(a, w, key))
    ts = {name: [] for name in fs}
    for _ in range(20):
        for name, f in fs.items():
            t = time.perf_counter()
            jax.block_until_ready(f(a, w, key))
            ts[name].append(time.perf_counter() - t)
    base = np.median(ts["K=1"])
    print(f"{n} qubits: " + ", ".join(f"{name} {1e3 * np.median(v):.1f} ms ({np.median(v) / base:.2f}x K=1)"
                                      for name, v in ts.items()))
