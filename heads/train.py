"""Train one head (CDL or DQC) for many seeds at once on cached features.

All seeds of a (task, model) run in one compiled program: the per-seed epoch is `vmap`ped over
the seed axis, and an epoch — a shuffled pass over every training example in batches (`lax.scan`),
then the validation loss and the early-stopping bookkeeping — is one call of one compiled
function. The features stay on the device; the host only reads back a few numbers per epoch.

Determinism and fairness (DESIGN "The models"):
- Epoch e of seed s visits the training rows in the order `epoch_order(s, e)` and uses, for each
  row, the stored view that it names; both depend only on (s, e), so CDL and DQC with the same
  seed see identical batches. `history.jsonl` records `order_digest` of them per epoch.
- The initial parameters depend only on the seed (and the model).
- The last batch is padded and masked, never dropped: every example is used every epoch.
- Each seed stops on its own: once its validation loss has not improved for `patience` epochs it
  keeps its parameters (its updates are masked) while the others go on. The best-validation-loss
  parameters are kept.
- With several local devices, the seed axis is sharded over a 1-D mesh (seeds padded to a
  multiple of the device count); the results equal a one-device run.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cxrfeat.errors import UserError
from heads.models import DQC

ORDER_STREAM = 1  # fold_in tags that keep the data order and the initial parameters independent
INIT_STREAM = 2
EVAL_STATE_BUDGET = 2**27  # amplitudes per device held by one evaluation batch of a DQC (512 MiB)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation settings (the paper's defaults)."""

    lr: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 5

    def check(self) -> None:
        if not self.batch_size >= 1:
            raise UserError(f"--batch-size must be at least 1, not {self.batch_size}")
        if not self.max_epochs >= 1:
            raise UserError(f"--max-epochs must be at least 1, not {self.max_epochs}")
        if not self.patience >= 1:
            raise UserError(f"--patience must be at least 1, not {self.patience}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number, not {self.lr}")


@dataclass
class TrainData:
    """Training rows with all their views, and validation rows (one view)."""

    train_x: Any  # (N, V, D) float32
    train_y: Any  # (N, L) int8 in {1, 0, -1}
    val_x: Any  # (Nv, D)
    val_y: Any  # (Nv, L)

    def check(self) -> None:
        n, _, d = self.train_x.shape
        if n == 0 or self.val_x.shape[0] == 0:
            raise UserError("no training or validation rows")
        if self.train_y.shape[0] != n or self.val_y.shape[0] != self.val_x.shape[0]:
            raise ValueError("features and labels have different numbers of rows")
        if self.val_x.shape[1] != d or self.val_y.shape[1] != self.train_y.shape[1]:
            raise ValueError("training and validation data differ in embedding size or labels")


@dataclass
class SeedResult:
    seed: int
    history: list[dict]
    best_params: dict  # numpy tree
    best_epoch: int
    best_val_loss: float
    epochs: int  # epochs this seed trained before it stopped


@dataclass
class TrainResult:
    results: list[SeedResult]
    best_params: Any  # stacked over (padded) seeds, on the device(s)
    mesh: Mesh
    compile_seconds: float
    train_seconds: float
    timing: dict = field(default_factory=dict)


# ---------------------------------------------------------------- pieces of the program
def epoch_order(seed, epoch, n: int, views: int):
    """The permutation of the n training rows and the view of each row for (seed, epoch).

    Works on Python ints and on traced values alike; `epoch` counts from 1 as in `history.jsonl`.
    """
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), ORDER_STREAM), epoch)
    kp, kv = jax.random.split(key)
    return jax.random.permutation(kp, n), jax.random.randint(kv, (n,), 0, views)


def order_digest(perm, views) -> str:
    """Short sha256 of an epoch's order and views (int32 little-endian bytes, perm then views)."""
    h = hashlib.sha256(np.asarray(perm, dtype="<i4").tobytes())
    h.update(np.asarray(views, dtype="<i4").tobytes())
    return h.hexdigest()[:16]


def masked_bce(logits, y, rows):
    """Sum and count of the binary cross-entropies over known labels (y >= 0) of real rows."""
    known = (y >= 0) & rows[:, None]
    losses = optax.sigmoid_binary_cross_entropy(logits, (y > 0).astype(logits.dtype))
    return jnp.sum(jnp.where(known, losses, 0.0)), jnp.sum(known)


def eval_batch_size(model, n_rows: int, seeds_per_device: int) -> int:
    """Rows per evaluation step: bounded so a DQC's state vectors stay within EVAL_STATE_BUDGET,
    and spread evenly so that padding is under one row per step."""
    n_qubits = model.n if isinstance(model, DQC) else 0
    cap = max(8, min(1024, EVAL_STATE_BUDGET // (max(1, seeds_per_device) * 2**n_qubits)))
    steps = -(-n_rows // cap)
    return -(-n_rows // steps)


def pad_rows(x: np.ndarray, rows: int):
    """Batches of `rows` (steps, rows, ...) with a mask of the real rows."""
    n = x.shape[0]
    steps = -(-n // rows)
    pad = steps * rows - n
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    mask = np.arange(steps * rows) < n
    return xp.reshape(steps, rows, *x.shape[1:]), mask.reshape(steps, rows)


def _mean_loss(model, params, xb, yb, rb):
    """Mean BCE over a padded, batched set (steps, rows, ...), one batch per scan step."""

    def body(acc, batch):
        x, y, r = batch
        s, c = masked_bce(model.apply({"params": params}, x), y, r)
        return (acc[0] + s, acc[1] + c), None

    (s, c), _ = jax.lax.scan(body, (jnp.float32(0), jnp.int32(0)), (xb, yb, rb))
    return s / jnp.maximum(c, 1)


def _init_state(model, tx, dim: int):
    def init(seed):
        key = jax.random.fold_in(jax.random.key(seed), INIT_STREAM)
        params = model.init(key, jnp.zeros((1, dim), jnp.float32))["params"]
        return {
            "params": params,
            "opt": tx.init(params),
            "best_params": params,
            "best_val": jnp.float32(jnp.inf),
            "best_epoch": jnp.int32(0),
            "bad": jnp.int32(0),
            "stopped": jnp.bool_(False),
        }

    return init


def _where(cond, new, old):
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), new, old)


def _epoch_fn(model, tx, *, n: int, views: int, batch: int, patience: int):
    """One seed's epoch: train over all rows, validate, update early stopping. vmapped by the caller."""
    steps = -(-n // batch)
    pad = steps * batch - n

    def loss_fn(params, x, y, rows):
        s, c = masked_bce(model.apply({"params": params}, x), y, rows)
        return s / jnp.maximum(c, 1), (s, c)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one_seed(state, seed, epoch, train_x, train_y, val_xb, val_yb, val_rb):
        perm, view = epoch_order(seed, epoch, n, views)
        idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(steps, batch)
        rows = (jnp.arange(steps * batch) < n).reshape(steps, batch)

        def step(carry, inp):
            params, opt = carry
            i, r = inp
            (_, (s, c)), grads = grad_fn(params, train_x[i, view[i]], train_y[i], r)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), opt), (s, c)

        (params, opt), (s, c) = jax.lax.scan(step, (state["params"], state["opt"]), (idx, rows))
        train_loss = s.sum() / jnp.maximum(c.sum(), 1)
        val_loss = _mean_loss(model, params, val_xb, val_yb, val_rb)

        active = ~state["stopped"]
        improved = active & (val_loss < state["best_val"])
        bad = jnp.where(improved, 0, state["bad"] + 1)
        new_state = {
            # A seed that has stopped keeps everything as it was.
            "params": _where(active, params, state["params"]),
            "opt": _where(active, opt, state["opt"]),
            "best_params": _where(improved, params, state["best_params"]),
            "best_val": jnp.where(improved, val_loss, state["best_val"]),
            "best_epoch": jnp.where(improved, epoch, state["best_epoch"]),
            "bad": jnp.where(active, bad, state["bad"]),
            "stopped": state["stopped"] | (active & (bad >= patience)),
        }
        out = {"train_loss": train_loss, "val_loss": val_loss, "improved": improved, "perm": perm, "views": view}
        return new_state, out

    return jax.vmap(one_seed, in_axes=(0, 0, None, None, None, None, None, None))


def seed_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'seeds' over the given (default: all local) devices."""
    devices = list(devices) if devices is not None else jax.local_devices()
    return Mesh(np.array(devices), ("seeds",))


def padded_seeds(seeds: Sequence[int], n_devices: int) -> np.ndarray:
    """Seeds padded (by repeating the last) to a multiple of the device count."""
    seeds = list(seeds)
    extra = (-len(seeds)) % n_devices
    return np.asarray(seeds + [seeds[-1]] * extra, dtype=np.int32)


# ---------------------------------------------------------------- the loop
def train_seeds(
    model,
    data: TrainData,
    seeds: Sequence[int],
    config: TrainConfig = TrainConfig(),
    *,
    devices=None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `model` (a Flax head) once per seed, all seeds together; see the module docstring.

    `on_epoch` is called after every epoch with `{"epoch", "seconds", "seeds": [per-seed rows of
    the seeds still training at that epoch]}`; each row is what `history.jsonl` records.
    """
    config.check()
    if not seeds:
        raise UserError("--seeds must be at least 1")
    data.check()
    n, views, dim = data.train_x.shape
    mesh = seed_mesh(devices)
    n_dev = mesh.devices.size
    seed_arr = padded_seeds(seeds, n_dev)
    per_seed = NamedSharding(mesh, PartitionSpec("seeds"))
    replicated = NamedSharding(mesh, PartitionSpec())

    tx = optax.adam(config.lr)
    eb = eval_batch_size(model, data.val_x.shape[0], len(seed_arr) // n_dev)
    val_xb, val_rb = pad_rows(np.asarray(data.val_x, np.float32), eb)
    val_yb, _ = pad_rows(np.asarray(data.val_y, np.int8), eb)
    put = lambda x: jax.device_put(x, replicated)  # noqa: E731
    inputs = (put(data.train_x), put(data.train_y), put(val_xb), put(val_yb), put(val_rb))
    seeds_dev = jax.device_put(seed_arr, per_seed)

    t0 = time.perf_counter()
    state = jax.jit(jax.vmap(_init_state(model, tx, dim)), out_shardings=per_seed)(seeds_dev)
    epoch_jit = jax.jit(
        _epoch_fn(model, tx, n=n, views=views, batch=config.batch_size, patience=config.patience),
        in_shardings=(per_seed, per_seed, replicated) + (replicated,) * 5,
        out_shardings=(per_seed, per_seed),
        donate_argnums=0,
    )
    epoch0 = jax.device_put(np.int32(1), replicated)
    # Compiled once, ahead of time: an epoch can never trigger a recompilation.
    epoch_fn = epoch_jit.lower(state, seeds_dev, epoch0, *inputs).compile()
    compile_seconds = time.perf_counter() - t0

    k = len(seeds)
    histories: list[list[dict]] = [[] for _ in seeds]
    stopped = np.zeros(k, bool)
    t_train = time.perf_counter()
    for epoch in range(1, config.max_epochs + 1):
        t = time.perf_counter()
        state, out = epoch_fn(state, seeds_dev, jax.device_put(np.int32(epoch), replicated), *inputs)
        out = jax.device_get(out)
        best_val, now_stopped = jax.device_get((state["best_val"], state["stopped"]))
        seconds = time.perf_counter() - t
        rows = []
        for j, seed in enumerate(seeds):
            if stopped[j]:
                continue
            train_loss, val_loss = float(out["train_loss"][j]), float(out["val_loss"][j])
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                raise UserError(
                    f"training diverged: seed {seed}, epoch {epoch} has loss {train_loss} (val {val_loss}); "
                    f"try a lower --lr (now {config.lr})"
                )
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "best_so_far": float(best_val[j]),
                "improved": bool(out["improved"][j]),
                "seconds": round(seconds, 4),
                "order_digest": order_digest(out["perm"][j], out["views"][j]),
            }
            histories[j].append(row)
            rows.append({"seed": seed, **row})
        stopped = np.asarray(now_stopped[:k], bool)
        if on_epoch is not None:
            on_epoch({"epoch": epoch, "seconds": seconds, "seeds": rows, "stopped": stopped.tolist()})
        if stopped.all():
            break
    train_seconds = time.perf_counter() - t_train

    best_params = state["best_params"]
    host = jax.device_get({k2: state[k2] for k2 in ("best_params", "best_epoch", "best_val")})
    results = [
        SeedResult(
            seed=seed,
            history=histories[j],
            best_params=jax.tree.map(lambda a, j=j: np.asarray(a[j]), host["best_params"]),
            best_epoch=int(host["best_epoch"][j]),
            best_val_loss=float(host["best_val"][j]),
            epochs=len(histories[j]),
        )
        for j, seed in enumerate(seeds)
    ]
    return TrainResult(results, best_params, mesh, compile_seconds, train_seconds,
                       {"devices": n_dev, "eval_batch": eb, "padded_seeds": len(seed_arr)})


def predict(model, result: TrainResult, x: np.ndarray) -> np.ndarray:
    """Probabilities (seeds, N, L) of every seed's best parameters on embeddings x (N, D)."""
    mesh = result.mesh
    per_seed = NamedSharding(mesh, PartitionSpec("seeds"))
    replicated = NamedSharding(mesh, PartitionSpec())
    n_pad = jax.tree.leaves(result.best_params)[0].shape[0]
    eb = eval_batch_size(model, x.shape[0], n_pad // mesh.devices.size)
    xb, _ = pad_rows(np.asarray(x, np.float32), eb)

    def one_seed(params, xb):
        def body(_, xi):
            return None, jax.nn.sigmoid(model.apply({"params": params}, xi))

        return jax.lax.scan(body, None, xb)[1].reshape(-1, model.n)

    fn = jax.jit(jax.vmap(one_seed, in_axes=(0, None)), in_shardings=(per_seed, replicated), out_shardings=per_seed)
    probs = np.asarray(jax.device_get(fn(result.best_params, jax.device_put(xb, replicated))))
    return probs[: len(result.results), : x.shape[0]]
