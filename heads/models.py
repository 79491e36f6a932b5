"""The two heads of the paper (section III-C): the classical CDL and the dressed quantum circuit DQC.

Both map an embedding (B, D) to logits (B, n), one per disease label; the sigmoid lives in the
loss and at prediction time. Dense layers use Flax's defaults: Lecun-normal weights, zero bias.

Parameter names (and so the keys of `best.safetensors`):
- CDL: `linear/kernel`, `linear/bias`.
- DQC: `pre/kernel`, `pre/bias`, `circuit` (layers, n), `post/kernel`, `post/bias`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxrfeat.errors import UserError
from cxrfeat.labels import task_labels
from heads.noise import DENSITY_MAX_QUBITS, NoiseModel
from heads.quantum import BACKENDS, expvals

MODELS = ("cdl", "dqc")
NOISY_BACKENDS = ("fast", "mps", "density")
CIRCUIT_INITS = ("uniform", "normal")

# ResNet50 without its ImageNet classifier, as in the paper's Table II (the frozen backbone is not
# part of a head; the count is shown beside the heads for comparison).
BACKBONE_PARAMS = 23_508_032
EMBEDDING_DIM = 2048


def circuit_init(kind: str):
    """Initialiser of the RY angles: uniform in [0, 2π) (the paper's text) or normal with std 2π
    (what the paper's public code did)."""
    if kind == "uniform":
        return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, 0.0, 2 * math.pi)
    if kind == "normal":
        return lambda key, shape, dtype=jnp.float32: 2 * math.pi * jax.random.normal(key, shape, dtype)
    raise UserError(f"--circuit-init must be one of {', '.join(CIRCUIT_INITS)}, not {kind!r}")


class CDL(nn.Module):
    """Classical head: one Dense(n) on the embedding."""

    n: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.n, name="linear")(x)


class DQC(nn.Module):
    """Dressed quantum circuit: Dense(n) → tanh → ×π/2 → n-qubit circuit ⟨Z_i⟩ → Dense(n).

    With a `noise` model (`heads.noise.NoiseModel`) the circuit's ⟨Z_i⟩ are the noisy ones: averaged
    over `trajectories` noise trajectories per example, drawn from `noise_key` (one key per example,
    or one key folded with the position in the batch), or exact when `backend` is "density" (no key).
    `noise=None` is the noiseless head, bit for bit.
    """

    n: int
    layers: int = 3
    backend: str = "fast"
    circuit_init: str = "uniform"
    noise: NoiseModel | None = None
    trajectories: int = 1

    @property
    def needs_key(self) -> bool:
        """Whether a call draws noise trajectories (and so needs `noise_key`)."""
        return self.noise is not None and self.backend != "density"

    @nn.compact
    def __call__(self, x, noise_key=None):
        angles = circuit_angles(nn.Dense(self.n, name="pre")(x))
        theta = self.param("circuit", circuit_init(self.circuit_init), (self.layers, self.n))
        if self.noise is None:
            z = expvals(angles, theta, backend=self.backend)
        else:
            z = expvals(angles, theta, backend=self.backend, noise=self.noise, key=noise_key,
                        trajectories=self.trajectories)
        return nn.Dense(self.n, name="post")(z)


def dqc_pre_activations(params, x, dtype=None):
    """pre(x) = x @ pre/kernel + pre/bias: the DQC's pre Dense on embeddings x (N, D), for the head's
    parameters `params` (`{'pre', 'circuit', 'post'}`) and x scaled as the head saw it in training
    (after `--feature-norm`). With `dtype`, in NumPy with x and the parameters cast to it; without,
    in the arrays' own types (JAX arrays inside a jitted function too)."""
    pre = params["pre"]
    if dtype is None:
        return x @ pre["kernel"] + pre["bias"]
    return np.asarray(x, dtype) @ np.asarray(pre["kernel"], dtype) + np.asarray(pre["bias"], dtype)


def circuit_angles(pre):
    """The circuit's input angles from the pre Dense's output: tanh(pre) · π/2, in [−π/2, π/2].

    NumPy for a NumPy array, JAX otherwise (the `DQC` module itself)."""
    xp = np if isinstance(pre, np.ndarray | np.generic) else jnp
    return xp.tanh(pre) * (math.pi / 2)


def dqc_angles(params, x, dtype=None):
    """The circuit's input angles (N, n) of a DQC on embeddings x (N, D), as `DQC` computes them:
    `circuit_angles(dqc_pre_activations(params, x, dtype))`."""
    return circuit_angles(dqc_pre_activations(params, x, dtype))


def make_model(model: str, n: int, *, layers: int = 3, backend: str = "fast", circuit_init: str = "uniform",
               noise: NoiseModel | None = None, trajectories: int = 1) -> nn.Module:
    """The head called `model` ('cdl' or 'dqc') with n outputs; checks the options. `noise` (DQC
    only): the device noise model the circuit runs under (None, or a model that is all zeros: the
    noiseless circuit), with `trajectories` trajectories per example."""
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}: choose from {', '.join(MODELS)}")
    if model == "cdl":
        return CDL(n)
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if circuit_init not in CIRCUIT_INITS:
        raise UserError(f"--circuit-init must be one of {', '.join(CIRCUIT_INITS)}, not {circuit_init!r}")
    if layers < 1:
        raise UserError(f"--layers must be at least 1, not {layers}")
    if not (isinstance(trajectories, int) and trajectories >= 1):
        raise UserError(f"--trajectories must be at least 1, not {trajectories}")
    if noise is not None and noise.is_zero:
        noise = None
    if noise is not None and backend not in NOISY_BACKENDS:
        raise UserError(f"--backend {backend}: a noisy circuit runs as trajectories on the MPS (fast, mps) or exactly "
                        f"as a density matrix (density), not {backend}")
    if noise is not None:
        noise.check_width(n)
    if noise is not None and backend == "density" and n > DENSITY_MAX_QUBITS:
        raise UserError(f"--backend density holds 4^n numbers per example: at most {DENSITY_MAX_QUBITS} qubits, "
                        f"not {n}; use fast (trajectories)")
    return DQC(n, layers=layers, backend=backend, circuit_init=circuit_init, noise=noise, trajectories=trajectories)


# Which component of Table II each top-level parameter belongs to.
_COMPONENT = {"linear": "classical_preprocess", "pre": "classical_preprocess", "circuit": "quantum",
              "post": "classical_postprocess"}
COMPONENTS = ("backbone", "classical_preprocess", "quantum", "classical_postprocess")


def count_params(params) -> dict[str, int]:
    """Parameters of a head's tree (`{'linear': ...}` or `{'pre', 'circuit', 'post'}`) by component."""
    out = {c: 0 for c in COMPONENTS[1:]}
    for name, sub in params.items():
        out[_COMPONENT[name]] += sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(sub))
    return out


def param_counts(task: int, model: str, layers: int = 3, dim: int = EMBEDDING_DIM) -> dict[str, int]:
    """Parameter counts by component (the paper's Table II), counted from the real module.

    Keys: backbone (the ResNet50 constant), classical_preprocess, quantum, classical_postprocess,
    head (the trainable total). The CDL's single linear layer is Table II's "classical preprocess".
    """
    n = len(task_labels(task))
    module = make_model(model, n, layers=layers)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, dim), jnp.float32))
    counts = count_params(shapes["params"])
    return {"backbone": BACKBONE_PARAMS, **counts, "head": sum(counts.values())}


def params_table(tasks, layers: int = 3, dim: int = 2048):
    """The paper's Table II as a rich table: parameters by component of CDL and DQC for each task."""
    from rich.table import Table

    if layers < 1 or dim < 1:
        raise UserError("--layers and --dim must be at least 1")
    table = Table(title=f"Parameters by component ({layers} circuit layers, {dim}-d embeddings)")
    for col in ("Task", "Model", *("Backbone", "Classical pre", "Quantum", "Classical post"), "Head total"):
        table.add_column(col, justify="left" if col in ("Task", "Model") else "right")
    for t in tasks:
        for m in MODELS:
            c = param_counts(t, m, layers, dim)
            table.add_row(f"CXR-{t}", m.upper(), *(f"{c[k]:,}" for k in (*COMPONENTS, "head")))
    return table
