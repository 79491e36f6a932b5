"""Train one head (CDL or DQC) for many seeds at once on cached features.

The seeds of a (task, model) run in one compiled program: the per-seed epoch is `vmap`ped over
the seed axis, and an epoch — a shuffled pass over every training example in batches (`lax.scan`),
then the validation loss and the early-stopping bookkeeping — is one call of one compiled
function. The features stay on the device; the host only reads back a few numbers per epoch.

Determinism and fairness (docs/design.md "Training"):
- Epoch e of seed s visits the training rows in the order `epoch_order(s, e)` and uses, for each
  row, the stored view that it names (one augmented view, 1..V-1, by default: `views_from`); both depend only on (s, e), so CDL and DQC with the same
  seed see identical batches. `history.jsonl` records `order_digest` of them per epoch.
- The initial parameters depend only on the seed (and the model).
- The last batch is padded and masked, never dropped: every example is used every epoch.
- Each seed stops on its own: once its validation loss has not improved for `patience` epochs it
  keeps its parameters (its updates are masked) while the others go on. The best-validation-loss
  parameters are kept.

A seed's result does not depend on which other seeds it is trained with (docs/design.md
"Reliability rules"): `--seeds 1` gives the same bits for seed 1 as `--seeds 5`, and a resumed sweep the same
bits as an uninterrupted one. Measured cause (XLA on CPU, jax 0.8): the same per-seed program
`vmap`ped over 1, 2, 3-5, 8 or 16 seeds gives results that differ in the last bits (up to 1.2e-7
after two epochs of a CDL, growing with training; 3.8e-4 in DQC-19 predictions after a full run):
batched dots and reductions are compiled differently for each batch width. Companions and order
do not matter at a fixed width. So the program is compiled for a FIXED number of members, `block` per device
(default `SEED_BLOCK` = 1), W = block x devices. A member is a seed with its per-member settings
(`Member`: learning rate, patience, circuit initialiser — plain data, so configurations of a grid
that differ only in these train together); the members asked for are packed in order into blocks
of W slots, the last block padded with copies of its last member (trained and thrown away). A
call runs the blocks one after another with the same executable per block and epoch. Since at a
fixed width neither the companions nor the slot matter (tested: a seed alone, in other groupings,
and a grid member alone, in every slot, give the same bits), every member's arithmetic is the
same whatever the grouping. With the default block of 1 on one device nothing is padded: 5 seeds
cost 5 members' work (a block of 4 ran 8). On the 2-core CPU the block of 1 is also the fastest per
member (one NIH-size epoch of 5 seeds, AMD EPYC: DQC-19 1.5x, CDL-19 1.25x faster than blocks of
4: a wider `vmap` is not faster per member there); on an accelerator a larger block can fill the
chip (`heads sweep` records it, and a resumed sweep keeps its own). On a CPU the blocks of an epoch
run one per usable core at a time (`block_lanes`), each the same call; when fewer blocks than cores
are left (5 seeds on 2 cores run as 2 + 2 + 1), the MPS kernel's calls share their examples with the idle
core (`heads.mps_ffi.set_threads`), which changes no bits: each example is computed alone. The evaluation batch size
depends on W only. A block whose members have all stopped is no
longer run.
The block size changes the bits, so a sweep records it with its settings.
- A DQC trained under a noise model (`DQC.noise`, `heads sweep --noise`) draws its trajectories
  for training row r in epoch e of seed s from `noise_keys(s, e, r)` (`heads.noise` folds in the
  trajectory and the circuit slot), and evaluates (validation loss, predictions) with the keys of
  epoch 0: every evaluation of row r sees the same draws (common random numbers, so epochs are
  compared on equal terms). The draws depend only on (seed, epoch, row, trajectory), never on the
  grouping, the batch a row lands in, or a resume.
- With several local devices, each block is sharded over a 1-D mesh (`block` members per
  device); the results equal a one-device run to float tolerance (not bit for bit: other widths).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import os
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
from heads.models import CIRCUIT_INITS, DQC

ORDER_STREAM = 1  # fold_in tags that keep the data order and the initial parameters independent
INIT_STREAM = 2
NOISE_STREAM = 4  # a noisy DQC's trajectories (heads.finetune's augmentation is 3)
EVAL_EPOCH = 0  # the noise draws of evaluation (validation, predictions): epochs count from 1
SEED_BLOCK = 1  # members per device in one compiled call (see the module docstring)
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


@dataclass(frozen=True)
class Member:
    """One model of a compiled call: its seed and its per-member settings, which are plain data in
    the program (so configurations differing only in these train together, without recompiling)."""

    seed: int
    lr: float = 1e-4
    patience: int = 5
    circuit_init: str = "uniform"  # DQC only: the RY angles' initialiser (`heads.models.CIRCUIT_INITS`)


@dataclass
class SeedResult:
    seed: int
    history: list[dict]
    best_params: dict  # numpy tree
    best_epoch: int
    best_val_loss: float
    epochs: int  # epochs this member trained before it stopped
    member: Member | None = None


@dataclass
class TrainResult:
    results: list[SeedResult]  # in the order of the members asked for
    best_params: list[Any]  # per block: the parameters stacked over its W members, on the device(s)
    block_seeds: list[np.ndarray]  # per block: the W seeds of its slots (padding slots repeat a member)
    mesh: Mesh
    compile_seconds: float
    train_seconds: float
    timing: dict = field(default_factory=dict)
    slots: list[tuple[int, int]] = field(default_factory=list)  # per result: (block, slot)


# ---------------------------------------------------------------- pieces of the program
VIEWS_FROM = ("augmented", "all")


def first_training_view(views_from: str, views: int) -> int:
    """The first stored view an epoch may draw: `augmented` (the design: one augmented view per
    example) draws from views 1..V-1, or view 0 when the store has only it (V == 1); `all` from 0..V-1."""
    if views_from not in VIEWS_FROM:
        raise UserError(f"--views-from must be one of {', '.join(VIEWS_FROM)}, not {views_from!r}")
    return 1 if views_from == "augmented" and views > 1 else 0


def epoch_order(seed, epoch, n: int, views: int, first_view: int = 0):
    """The permutation of the n training rows and the view of each row (in first_view..views-1) for
    (seed, epoch).

    Works on Python ints and on traced values alike; `epoch` counts from 1 as in `history.jsonl`.
    """
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), ORDER_STREAM), epoch)
    kp, kv = jax.random.split(key)
    return jax.random.permutation(kp, n), jax.random.randint(kv, (n,), first_view, views)


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
    and spread evenly so that padding is under one row per step. `seeds_per_device` is the fixed
    block size, never the number of seeds asked for (the batching must not depend on the grouping)."""
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


def _mean_loss(model, params, xb, yb, rb, seed=None):
    """Mean BCE over a padded, batched set (steps, rows, ...), one batch per scan step; a noisy DQC
    draws row r's trajectories from `noise_keys(seed, EVAL_EPOCH, r)`."""
    logits = head_logits(model)
    rows = xb.shape[1]

    def body(acc, batch):
        x, y, r, j = batch
        inputs = (x, noise_keys(seed, EVAL_EPOCH, j * rows + jnp.arange(rows))) if needs_key(model) else x
        s, c = masked_bce(logits(params, inputs), y, r)
        return (acc[0] + s, acc[1] + c), None

    (s, c), _ = jax.lax.scan(body, (jnp.float32(0), jnp.int32(0)), (xb, yb, rb, jnp.arange(xb.shape[0])))
    return s / jnp.maximum(c, 1)


def needs_key(model) -> bool:
    """Whether the head draws noise trajectories (a DQC with a noise model, not run as a density matrix)."""
    return bool(getattr(model, "needs_key", False))


def noise_keys(seed, epoch, rows):
    """One key per row: the noise draws of training row `rows[i]` in `epoch` of `seed` (module docstring)."""
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), NOISE_STREAM), epoch)
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(rows)


def optimizer(lr) -> optax.GradientTransformation:
    """Adam with its learning rate held in the optimizer state (`optax.inject_hyperparams`), so that
    every member of a compiled call can have its own: the update reads it from the state."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def make_train_step(logits: Callable, tx: optax.GradientTransformation) -> Callable:
    """The training step of a head: value and gradient of the mean masked BCE, then the update.

    `logits(params, inputs) -> (B, L)`; the step is `step(params, opt_state, inputs, labels, rows) ->
    (params, opt_state, loss, (bce_sum, known_count))` with `rows` (B,) marking the real rows (padding
    rows and unknown labels, -1, are left out of the loss). Not jitted: `heads train` scans it inside
    its epoch, `heads finetune` wraps it around the backbone, `heads bench` jits and times it alone;
    all three build it here (one step, so the bench times what training runs).
    """

    def loss_fn(params, inputs, labels, rows):
        s, c = masked_bce(logits(params, inputs), labels, rows)
        return s / jnp.maximum(c, 1), (s, c)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params, opt_state, inputs, labels, rows):
        (loss, sc), grads = grad_fn(params, inputs, labels, rows)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, sc

    return step


def head_logits(model) -> Callable:
    """`logits(params, inputs)` of a Flax head on embeddings: inputs = x, or (x, one noise key per row)
    for a head that draws noise trajectories (`needs_key`)."""
    if needs_key(model):
        return lambda params, inputs: model.apply({"params": params}, inputs[0], noise_key=inputs[1])
    return lambda params, x: model.apply({"params": params}, x)


def _init_state(model, dim: int):
    """Per member (seed, lr, circuit-init flag): the initial parameters and optimizer state. A DQC's
    circuit angles are drawn by both initialisers and one is selected, so the flag is data; the
    selection is exact, so a member gets the bits of a model built with its initialiser alone."""
    # Noise does not enter the initial parameters: a head trained under noise starts where the ideal one does.
    variants = (model.clone(circuit_init="uniform", noise=None), model.clone(circuit_init="normal", noise=None)) \
        if isinstance(model, DQC) else None

    def init(seed, lr, normal):
        key = jax.random.fold_in(jax.random.key(seed), INIT_STREAM)
        x0 = jnp.zeros((1, dim), jnp.float32)
        if variants is None:
            params = model.init(key, x0)["params"]
        else:
            params = _where(normal, variants[1].init(key, x0)["params"], variants[0].init(key, x0)["params"])
        return {
            "params": params,
            "opt": optimizer(lr).init(params),
            "best_params": params,
            "best_val": jnp.float32(jnp.inf),
            "best_epoch": jnp.int32(0),
            "bad": jnp.int32(0),
            "stopped": jnp.bool_(False),
        }

    return init


def early_stopping(best_val, bad, val_loss, patience, active=True):
    """The early-stopping rule of every head (train and finetune): an epoch improves when its validation
    loss is below the best so far; a member stops once `patience` epochs in a row did not improve.

    Returns (improved, epochs without improvement, stop now). Works on traced arrays (inside the
    compiled epoch) and on Python numbers (fine-tuning's host loop) alike."""
    improved = active & (val_loss < best_val)
    bad = jnp.where(improved, 0, bad + 1) if isinstance(improved, jax.Array) else (0 if improved else bad + 1)
    return improved, bad, active & (bad >= patience)


def history_row(epoch: int, train_loss: float, val_loss: float, best_so_far: float, improved: bool, seconds: float,
                order_digest: str) -> dict:
    """One line of a run's `history.jsonl`."""
    return {"epoch": int(epoch), "train_loss": float(train_loss), "val_loss": float(val_loss),
            "best_so_far": float(best_so_far), "improved": bool(improved), "seconds": round(seconds, 4),
            "order_digest": order_digest}


def check_finite(epoch: int, train_loss: float, val_loss: float, lr: float, *, seed: int | None = None,
                 kept: str | None = None) -> None:
    """The one-line error of a diverged head: a non-finite training or validation loss."""
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        who = f"seed {seed}, " if seed is not None else ""
        raise UserError(f"training diverged: {who}epoch {epoch} has loss {train_loss} (val {val_loss}); "
                        f"try a lower --lr (now {lr:g})" + (f". Completed epochs are kept in {kept}" if kept else ""))


def _where(cond, new, old):
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), new, old)


def _epoch_fn(model, *, n: int, views: int, batch: int, first_view: int = 0):
    """One member's epoch: train over all rows, validate, update early stopping. vmapped by the caller.

    The training embeddings stay in their stored dtype on the device; each batch is cast to float32
    in the gather (exact for float16 and float32 alike)."""
    steps = -(-n // batch)
    pad = steps * batch - n
    step_fn = make_train_step(head_logits(model), optimizer(0.0))  # the learning rate comes from the state
    noisy = needs_key(model)

    def one_member(state, member, epoch, train_x, train_y, val_xb, val_yb, val_rb):
        perm, view = epoch_order(member["seed"], epoch, n, views, first_view)
        idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(steps, batch)
        rows = (jnp.arange(steps * batch) < n).reshape(steps, batch)

        def step(carry, inp):
            params, opt = carry
            i, r = inp
            x = train_x[i, view[i]].astype(jnp.float32)
            inputs = (x, noise_keys(member["seed"], epoch, i)) if noisy else x
            params, opt, _, sc = step_fn(params, opt, inputs, train_y[i], r)
            return (params, opt), sc

        (params, opt), (s, c) = jax.lax.scan(step, (state["params"], state["opt"]), (idx, rows))
        train_loss = s.sum() / jnp.maximum(c.sum(), 1)
        val_loss = _mean_loss(model, params, val_xb, val_yb, val_rb, member["seed"])

        active = ~state["stopped"]
        improved, bad, stop = early_stopping(state["best_val"], state["bad"], val_loss, member["patience"], active)
        new_state = {
            # A member that has stopped keeps everything as it was.
            "params": _where(active, params, state["params"]),
            "opt": _where(active, opt, state["opt"]),
            "best_params": _where(improved, params, state["best_params"]),
            "best_val": jnp.where(improved, val_loss, state["best_val"]),
            "best_epoch": jnp.where(improved, epoch, state["best_epoch"]),
            "bad": jnp.where(active, bad, state["bad"]),
            "stopped": state["stopped"] | stop,
        }
        out = {"train_loss": train_loss, "val_loss": val_loss, "improved": improved, "perm": perm, "views": view}
        return new_state, out

    return jax.vmap(one_member, in_axes=(0, 0, None, None, None, None, None, None))


def seed_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'seeds' over the given (default: all local) devices."""
    devices = list(devices) if devices is not None else jax.local_devices()
    return Mesh(np.array(devices), ("seeds",))


def block_lanes(blocks: int, devices: int) -> int:
    """How many blocks run at once: on a CPU one per core (per device's share of the cores), since one
    block's program keeps about one core busy (measured on 2 AMD EPYC cores: two DQC-19 programs in two
    threads take 1.1-1.3x the time of one); on an accelerator 1 (its queue already overlaps them)."""
    if jax.default_backend() != "cpu":
        return 1
    return max(1, min(blocks, usable_cores() // max(devices, 1)))


def usable_cores() -> int:
    """The cores this process may run on (a cluster job's share of a node, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def member_blocks(count: int, width: int) -> list[list[int]]:
    """Members 0..count-1 packed in order into blocks of `width` slots; the last block's spare slots
    repeat its last member (trained and thrown away)."""
    blocks = [list(range(b, min(b + width, count))) for b in range(0, count, width)]
    if blocks:
        blocks[-1] += [blocks[-1][-1]] * (width - len(blocks[-1]))
    return blocks


def _check_members(members: Sequence[Member]) -> None:
    if not members:
        raise UserError("--seeds must be at least 1")
    if any(int(m.seed) < 1 for m in members):
        raise UserError(f"seeds are numbered from 1, not {min(int(m.seed) for m in members)}")
    if len(set(members)) != len(members):
        raise ValueError(f"members must be distinct: {list(members)}")
    for m in members:
        if not (math.isfinite(m.lr) and m.lr > 0):
            raise UserError(f"--lr must be a positive number, not {m.lr}")
        if not m.patience >= 1:
            raise UserError(f"--patience must be at least 1, not {m.patience}")
        if m.circuit_init not in CIRCUIT_INITS:
            raise UserError(f"--circuit-init must be one of {', '.join(CIRCUIT_INITS)}, not {m.circuit_init!r}")


# ---------------------------------------------------------------- the loop
def train_seeds(model, data: TrainData, seeds: Sequence[int], config: TrainConfig = TrainConfig(), **kw) -> TrainResult:
    """Train `model` once per seed with one configuration (`train_members` with those members)."""
    config.check()
    if not seeds:
        raise UserError("--seeds must be at least 1")
    init = getattr(model, "circuit_init", "uniform")
    members = [Member(int(s), config.lr, config.patience, init) for s in seeds]
    return train_members(model, data, members, batch_size=config.batch_size, max_epochs=config.max_epochs, **kw)


def train_members(
    model,
    data: TrainData,
    members: Sequence[Member],
    *,
    batch_size: int = 32,
    max_epochs: int = 50,
    devices=None,
    block: int = SEED_BLOCK,
    views_from: str = "augmented",
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `model` (a Flax head) once per member, all members together; see the module docstring.

    `block` is the number of members per device in one compiled call; a member's bits depend on it
    (and on the device count) but never on the other members asked for. `views_from` picks the
    stored views an epoch draws from (`VIEWS_FROM`).
    `on_epoch` is called after every epoch with `{"epoch", "seconds", "seeds": [per-member rows of
    the members still training at that epoch], "stopped"}`; each row is what `history.jsonl`
    records, plus `seed` and `member` (the member's index in `members`).
    """
    TrainConfig(batch_size=batch_size, max_epochs=max_epochs).check()
    _check_members(members)
    if not block >= 1:
        raise ValueError(f"block must be at least 1, not {block}")
    data.check()
    n, views, dim = data.train_x.shape
    first_view = first_training_view(views_from, views)
    mesh = seed_mesh(devices)
    n_dev = mesh.devices.size
    width = block * n_dev
    blocks = member_blocks(len(members), width)
    where = {k: (k // width, k % width) for k in range(len(members))}  # member -> (block, slot)
    per_seed = NamedSharding(mesh, PartitionSpec("seeds"))
    replicated = NamedSharding(mesh, PartitionSpec())

    eb = eval_batch_size(model, data.val_x.shape[0], block)
    val_xb, val_rb = pad_rows(np.asarray(data.val_x, np.float32), eb)
    val_yb, _ = pad_rows(np.asarray(data.val_y, np.int8), eb)
    put = lambda x: jax.device_put(x, replicated)  # noqa: E731
    inputs = (put(data.train_x), put(data.train_y), put(val_xb), put(val_yb), put(val_rb))

    def member_arrays(slots):
        ms = [members[k] for k in slots]
        return {"seed": np.array([m.seed for m in ms], np.int32), "lr": np.array([m.lr for m in ms], np.float32),
                "patience": np.array([m.patience for m in ms], np.int32),
                "normal": np.array([m.circuit_init == "normal" for m in ms], bool)}

    block_data = [member_arrays(slots) for slots in blocks]
    members_dev = [jax.device_put({"seed": d["seed"], "patience": d["patience"]}, per_seed) for d in block_data]

    t0 = time.perf_counter()
    init_fn = jax.jit(jax.vmap(_init_state(model, dim)), out_shardings=per_seed)
    state = [init_fn(*(jax.device_put(d[k], per_seed) for k in ("seed", "lr", "normal"))) for d in block_data]
    epoch_jit = jax.jit(
        _epoch_fn(model, n=n, views=views, batch=batch_size, first_view=first_view),
        in_shardings=(per_seed, per_seed, replicated) + (replicated,) * 5,
        out_shardings=(per_seed, per_seed),
        donate_argnums=0,
    )
    epoch0 = jax.device_put(np.int32(1), replicated)
    # Compiled once, ahead of time, for one block: every block and epoch runs this executable.
    epoch_fn = epoch_jit.lower(state[0], members_dev[0], epoch0, *inputs).compile()
    compile_seconds = time.perf_counter() - t0

    histories: dict[int, list[dict]] = {k: [] for k in where}
    stopped = {k: False for k in where}
    lanes = block_lanes(len(blocks), n_dev)
    pool = concurrent.futures.ThreadPoolExecutor(lanes, thread_name_prefix="block") if lanes > 1 else None
    t_train = time.perf_counter()
    try:
        for epoch in range(1, max_epochs + 1):
            t = time.perf_counter()
            e = jax.device_put(np.int32(epoch), replicated)
            # Blocks with a member still training; the others would only repeat masked updates.
            active = [b for b in range(len(blocks)) if any(not stopped[k] for k in where if where[k][0] == b)]
            outs = {}

            def run_block(b, e=e, outs=outs):
                state[b], outs[b] = jax.block_until_ready(epoch_fn(state[b], members_dev[b], e, *inputs))

            if pool is None:
                for b in active:
                    run_block(b)
            else:  # one block per CPU core at a time; each block's call is the same, so its bits are too
                list(pool.map(run_block, active))
            outs = jax.device_get(outs)
            best = jax.device_get({b: (state[b]["best_val"], state[b]["stopped"]) for b in active})
            seconds = time.perf_counter() - t
            rows = []
            for k in where:
                b, j = where[k]
                if stopped[k]:
                    continue
                out = outs[b]
                train_loss, val_loss = float(out["train_loss"][j]), float(out["val_loss"][j])
                check_finite(epoch, train_loss, val_loss, members[k].lr, seed=members[k].seed)
                row = history_row(epoch, train_loss, val_loss, best[b][0][j], out["improved"][j], seconds,
                                  order_digest(out["perm"][j], out["views"][j]))
                histories[k].append(row)
                rows.append({"seed": members[k].seed, "member": k, **row})
            for k in stopped:
                b, j = where[k]
                if b in best:
                    stopped[k] = bool(best[b][1][j])
            flags = [stopped[k] for k in range(len(members))]
            if on_epoch is not None:
                on_epoch({"epoch": epoch, "seconds": seconds, "seeds": rows, "stopped": flags})
            if all(flags):
                break
    finally:
        if pool is not None:
            pool.shutdown()
    train_seconds = time.perf_counter() - t_train

    host = jax.device_get([{k: s[k] for k in ("best_params", "best_epoch", "best_val")} for s in state])
    results = []
    for k, m in enumerate(members):
        b, j = where[k]
        results.append(SeedResult(
            seed=m.seed,
            history=histories[k],
            best_params=jax.tree.map(lambda a, j=j: np.asarray(a[j]), host[b]["best_params"]),
            best_epoch=int(host[b]["best_epoch"][j]),
            best_val_loss=float(host[b]["best_val"][j]),
            epochs=len(histories[k]),
            member=m,
        ))
    return TrainResult(results, [s["best_params"] for s in state], [d["seed"] for d in block_data], mesh,
                       compile_seconds, train_seconds,
                       {"devices": n_dev, "eval_batch": eb, "block": block, "members_per_call": width,
                        "blocks": len(blocks), "padded_seeds": width * len(blocks), "views_from": views_from},
                       slots=[where[k] for k in range(len(members))])


def predict(model, result: TrainResult, x: np.ndarray, *, block: int | None = None) -> np.ndarray:
    """Probabilities (members, N, L) of every member's best parameters on embeddings x (N, D), in the
    order of `result.results`; computed block by block with one executable (see the module docstring)."""
    mesh = result.mesh
    per_seed = NamedSharding(mesh, PartitionSpec("seeds"))
    replicated = NamedSharding(mesh, PartitionSpec())
    width = len(result.block_seeds[0])
    eb = eval_batch_size(model, x.shape[0], block or result.timing.get("block", width // mesh.devices.size))
    xb, _ = pad_rows(np.asarray(x, np.float32), eb)

    logits = head_logits(model)
    rows = xb.shape[1]

    def one_member(params, seed, xb):
        def body(_, inp):
            xi, j = inp
            inputs = (xi, noise_keys(seed, EVAL_EPOCH, j * rows + jnp.arange(rows))) if needs_key(model) else xi
            return None, jax.nn.sigmoid(logits(params, inputs))

        return jax.lax.scan(body, None, (xb, jnp.arange(xb.shape[0])))[1].reshape(-1, model.n)

    fn = jax.jit(jax.vmap(one_member, in_axes=(0, 0, None)), in_shardings=(per_seed, per_seed, replicated),
                 out_shardings=per_seed)
    xd = jax.device_put(xb, replicated)
    outs = [fn(params, jax.device_put(np.asarray(seeds, np.int32), per_seed), xd)
            for params, seeds in zip(result.best_params, result.block_seeds, strict=True)]
    probs = [np.asarray(p) for p in jax.device_get(outs)]
    return np.stack([probs[b][j, : x.shape[0]] for b, j in result.slots])
