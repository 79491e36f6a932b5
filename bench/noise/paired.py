"""Paired, interleaved in one process: the circuit's value + gradient (batch 32, 3 layers), noiseless and
with one noise trajectory per example (Sycamore 2019), at 19 and 40 qubits."""
import time, jax, jax.numpy as jnp, numpy as np
from heads.quantum import expvals
from heads.noise import NoiseModel
m = NoiseModel.load("sycamore-2019")
rng = np.random.default_rng(0)
for n in (19, 40):
    a = jnp.asarray(rng.uniform(-1.5, 1.5, (32, n)), jnp.float32); w = jnp.asarray(rng.uniform(0, 6.28, (3, n)), jnp.float32)
    key = jax.random.key(0)
    ideal = jax.jit(jax.value_and_grad(lambda a, w: expvals(a, w, backend="fast").sum(), argnums=(0, 1)))
    noisy = jax.jit(jax.value_and_grad(lambda a, w, k: expvals(a, w, backend="fast", noise=m, key=k, trajectories=1).sum(), argnums=(0, 1)))
    fs = {"ideal": lambda: ideal(a, w), "noisy": lambda: noisy(a, w, key)}
    for f in fs.values(): jax.block_until_ready(f())
    ts = {k: [] for k in fs}
    for _ in range(60):
        for k, f in fs.items():
            t = time.perf_counter(); jax.block_until_ready(f()); ts[k].append(time.perf_counter() - t)
    r = np.array(ts["noisy"]) / np.array(ts["ideal"])
    print(f"{n} qubits: ideal min/median {1e3*min(ts['ideal']):.2f}/{1e3*np.median(ts['ideal']):.2f} ms, noisy {1e3*min(ts['noisy']):.2f}/{1e3*np.median(ts['noisy']):.2f} ms, paired ratio median {np.median(r):.2f}, ratio of minima {min(ts['noisy'])/min(ts['ideal']):.2f}")
