"""`heads finetune`: the ResNet backbone and a CDL or DQC head trained jointly on images (the paper's recipe).

The feature cache is the fast path; this is the faithful one (paper III-C, III-D): Adam on every
trainable parameter, batch 32, augmentation at run time, early stopping on validation loss, the
best parameters kept. It also tests "frozen, then fine-tuned" (`--init-head-from` a `heads train`
run) and the frozen backbone on images (`--freeze-backbone`, which should approach the
feature-cache result).

What it does, and why:
- Images are decoded and preprocessed once into an image cache (`cxrfeat.imagecache`) and read back
  in batches on background threads while the device works; decoding never repeats per epoch.
- Parameters are `{"backbone": ..., "head": ...}`. BatchNorm normalises with its running
  statistics, which are an input of the step and never an output: the optimizer cannot touch them
  (a public implementation of the paper let Adam update them as weights). With `--freeze-backbone`
  only the head is differentiated, so no backbone gradient is ever computed.
- Epoch e of seed s visits the rows in `heads.train.epoch_order(s, e)` (the order `heads train`
  uses) and position p of that epoch is augmented with the key `fold_in(fold_in(fold_in(key(s),
  AUGMENT_STREAM), e), p)`: the batches depend only on (seed, epoch), so CDL and DQC with one seed
  see identical augmented batches. `history.jsonl` records per epoch `order_digest`, a sha256 of the
  order and of the augmentation actually drawn (flips and angles).
- The last batch is padded with rows whose labels are all unknown (-1): they add nothing to the loss,
  so every example is used every epoch and none twice.
- Resumable: after every epoch `checkpoint/last.safetensors` (parameters, optimizer state, and the
  early-stopping state in its metadata) is replaced atomically; it is the one commit point, so an
  interrupted run resumes after its last completed epoch and ends equal to an uninterrupted one.
  `checkpoint/state.json` mirrors the state for people. The best parameters so far live in
  `checkpoint/best-<epoch>.safetensors` (written before the commit point that names them). When the
  run is finished, `best.safetensors`, predictions and metrics are written, then `DONE`, and the
  checkpoint folder is removed.

Run layout (`heads.runs`): `runs/<name>/cxr-<task>/<model>-finetune/seed-<s>/`; `best.safetensors`
holds `backbone/...` (ResNet parameters, Flax names), `batch_stats/...` (the unchanged running
statistics, so the file is self-contained) and `head/...` (the head's `heads.models` names).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cxrfeat import locks
from cxrfeat.atomic import write_bytes, write_json
from cxrfeat.devices import batch_mesh, batch_sharding, replicated, round_up
from cxrfeat.errors import UserError, refuse_multi_process
from cxrfeat.imagecache import DEFAULT_CACHE, ImageCache, build_cache, cache_path, prefetch
from cxrfeat.labels import ALL, Task, resolve_tasks, task_labels, task_name
from heads import runs
from heads.models import dqc_pre_activations
from heads.plan import differences
from heads.record import Backbone, Data, RunConfig, Settings
from heads.train import (
    INIT_STREAM,
    TrainConfig,
    check_finite,
    early_stopping,
    epoch_order,
    history_row,
    masked_bce,
)

AUGMENT_STREAM = 3  # fold_in tag: independent of heads.train's ORDER_STREAM (1) and INIT_STREAM (2)
SUFFIX = "-finetune"
NIH = "nih-cxr-lt"
MIMIC = "mimic-cxr-lt"
CHECKPOINT = "checkpoint"
RANDOM_BACKBONE_SEED = 0  # `--weights random`: the backbone `cxrfeat extract` draws by default


@dataclass(frozen=True)
class FinetuneOptions:
    """Everything that decides a fine-tune run (the `heads finetune` options)."""

    task: int | str  # 8, 14, 19, `all` (resolved by `resolve_task`) or a `cxrfeat.labels.Task`
    model: str  # cdl | dqc
    seed: int = 1
    data_dir: Path = Path("data") / NIH
    external_dir: Path | None = None  # default: <data_dir>/../mimic-cxr-lt, used when it exists
    weights: str = "microsoft/resnet-50"
    freeze_backbone: bool = False
    init_head_from: Path | None = None
    runs: Path = Path("runs")
    name: str = "sweep"  # the folder `heads train` and `heads sweep` use: one report for all
    cache: Path = DEFAULT_CACHE
    layers: int = 3
    backend: str = "fast"
    circuit_init: str = "uniform"
    limit: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        from heads.models import MODELS

        if str(self.task).lower() != ALL:
            task_labels(self.task)  # ValueError -> caller
        if self.model not in MODELS:
            raise UserError(f"--model must be one of {', '.join(MODELS)}, not {self.model!r}")
        if self.seed < 1:
            raise UserError(f"--seed must be at least 1, not {self.seed}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, not {self.limit}")
        if self.weights != "random":
            from cxrfeat.weights import check_name

            check_name(self.weights)  # a typo of `random` fails now, not after the image cache is built
        self.train.check()
        head = self.init_head_from  # checked here, before any image cache is built (fully in load_head)
        if head is not None and not (Path(head) / "best.safetensors").is_file():
            raise UserError(f"--init-head-from {head}: not a run folder (needs config.json and best.safetensors)")

    @property
    def run_model(self) -> str:
        return self.model + SUFFIX

    @property
    def run_dir(self) -> Path:
        return runs.seed_dir(self.runs, self.name, self.task, self.run_model, self.seed)


@dataclass
class FinetuneResult:
    path: Path
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    metrics: dict
    resumed_from: int = 0  # the last completed epoch found on disk (0: a fresh start)
    skipped: bool = False  # the run was already DONE


# ---------------------------------------------------------------- the compiled pieces
def trainable(params: dict, freeze_backbone: bool) -> dict:
    """The part of `{"backbone", "head"}` that the optimizer updates."""
    return {"head": params["head"]} if freeze_backbone else params


def init_params(backbone, head, seed: int) -> dict:
    """`{"backbone": a copy of the backbone's weights, "head": head weights from seed}` (the same head
    initialisation as `heads train` for that seed).

    A copy, because the step donates its parameters: the backbone's own arrays stay usable."""
    key = jax.random.fold_in(jax.random.key(seed), INIT_STREAM)
    head_params = head.init(key, jnp.zeros((1, backbone.dim), jnp.float32))["params"]
    return {"backbone": jax.tree.map(jnp.copy, backbone.params), "head": head_params}


def make_step(backbone, head, optimizer: optax.GradientTransformation, *, freeze_backbone: bool = False):
    """One jitted training step on images.

    `step(params, opt_state, batch_stats, images, labels, keys) -> (params, opt_state, loss)`:
    - `params`: `{"backbone", "head"}` (see `init_params`); `opt_state`: `optimizer.init(trainable(params,
      freeze_backbone))`. Both are donated: do not use the arguments again.
    - `batch_stats`: the backbone's running statistics (read, never updated).
    - `images`: (B, 224, 224, 3) preprocessed images, float16 or float32; `labels`: (B, L) int in
      {1, 0, -1}, -1 (unknown, or a padding row) is left out of the loss; `keys`: (B,) PRNG keys, one
      per image, for the flip and rotation drawn on the device (`cxrfeat.augment.random_augment`).
    - `loss`: mean binary cross-entropy over the known labels of the batch, before the update.
    """
    from cxrfeat.augment import random_augment
    from heads.train import make_train_step

    def embed(backbone_params, batch_stats, images):
        return backbone.module.apply({"params": backbone_params, "batch_stats": batch_stats}, images)

    # The head's training step (`heads.train.make_train_step`, the one `heads train` runs), with the
    # backbone in front: trained (params `{"backbone", "head"}`), or frozen (an input of the step).
    full_step = make_train_step(lambda p, inp: head.apply({"params": p["head"]}, embed(p["backbone"], *inp)), optimizer)
    frozen_step = make_train_step(lambda t, inp: head.apply({"params": t["head"]}, embed(*inp)), optimizer)

    def step(params, opt_state, batch_stats, images, labels, keys):
        images = random_augment(images.astype(jnp.float32), keys)
        rows = jnp.ones(labels.shape[:1], bool)
        if freeze_backbone:
            frozen = jax.lax.stop_gradient(params["backbone"])
            new, opt_state, loss, _ = frozen_step({"head": params["head"]}, opt_state, (frozen, batch_stats, images),
                                                  labels, rows)
            return {"backbone": params["backbone"], "head": new["head"]}, opt_state, loss
        params, opt_state, loss, _ = full_step(params, opt_state, (batch_stats, images), labels, rows)
        return params, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


@functools.lru_cache(maxsize=8)
def _programs(module, head, lr: float, freeze_backbone: bool):
    """(optimizer, step, eval) for one configuration; memoised so that runs in one process (tests, a
    sweep of seeds) compile once. Modules compare by value, and the functions hold no weights."""
    shell = SimpleNamespace(module=module)
    optimizer = optax.adam(lr)
    return optimizer, make_step(shell, head, optimizer, freeze_backbone=freeze_backbone), make_eval(shell, head)


def make_eval(backbone, head):
    """Jitted `(params, batch_stats, images, labels) -> (probabilities, BCE sum, known count, saturated)`,
    no augmentation. `saturated` (B,): per image, the number of qubits whose pre-circuit angle has
    |tanh| > `heads.sanity.SATURATION_TANH` (zeros for a CDL), for the sanity check."""
    from heads.sanity import SATURATION_TANH

    def evaluate(params, batch_stats, images, labels):
        emb = backbone.module.apply({"params": params["backbone"], "batch_stats": batch_stats},
                                    images.astype(jnp.float32))
        logits = head.apply({"params": params["head"]}, emb)
        s, c = masked_bce(logits, labels, jnp.ones(labels.shape[:1], bool))
        if "pre" in params["head"]:  # a DQC (`heads.models`): its pre Dense on the embedding
            pre = dqc_pre_activations(params["head"], emb)
            saturated = jnp.sum(jnp.abs(jnp.tanh(pre)) > SATURATION_TANH, axis=1)
        else:
            saturated = jnp.zeros(labels.shape[:1], jnp.int32)
        return jax.nn.sigmoid(logits), s, c, saturated

    return jax.jit(evaluate)


def augment_keys(seed: int, epoch: int, n: int) -> jax.Array:
    """Keys (n,) of positions 0..n-1 of epoch `epoch` of seed `seed` (see the module docstring)."""
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), AUGMENT_STREAM), epoch)
    return jax.vmap(lambda p: jax.random.fold_in(base, p))(jnp.arange(n, dtype=jnp.uint32))


def batch_digest(perm, keys) -> str:
    """Short sha256 of an epoch's order and of the augmentation its keys draw (flip, angle per position)."""
    from cxrfeat.augment import draw

    flips, degrees = jax.device_get(jax.jit(draw)(keys))
    h = hashlib.sha256(np.asarray(perm, dtype="<i4").tobytes())
    h.update(np.asarray(flips, dtype=np.uint8).tobytes())
    h.update(np.asarray(degrees, dtype="<f4").tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- data
@dataclass
class Split:
    """One cached split with the task's label columns picked."""

    name: str  # test-set name for predictions (the dataset) or the split
    cache: ImageCache
    labels: np.ndarray  # (N, L) int8
    ids: np.ndarray

    @property
    def n(self) -> int:
        return len(self.ids)


def _split(dataset: str, data_dir: Path, split: str, labels: tuple[str, ...], opts: FinetuneOptions, say) -> Split:
    from cxrfeat.datasets import load_split

    ds = load_split(dataset, data_dir, split)
    missing = [name for name in labels if name not in ds.label_names]
    if missing:
        raise UserError(f"{ds.source}: task cxr-{len(labels)} needs label column(s) {', '.join(missing)}")
    cache = build_cache(ds, cache_path(opts.cache, dataset, split, opts.limit), limit=opts.limit, say=say)
    cols = [cache.label_names.index(name) for name in labels]
    return Split(dataset, cache, cache.labels[:, cols], cache.ids)


def _batches(n: int, batch: int) -> int:
    return -(-n // batch)


def _load_batch(split: Split, rows: np.ndarray, batch: int, sharding=None):
    """Images (batch, 224, 224, 3) float16 and labels (batch, L) on the device(s), padded with
    unknown-label rows, and the number of known labels. Runs on a prefetch thread. With `sharding`
    (`cxrfeat.devices.batch_sharding`) the batch axis is split over the devices of the mesh."""
    images = split.cache.read_rows(rows)
    labels = split.labels[rows]
    pad = batch - len(rows)
    if pad:
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.full((pad, labels.shape[1]), -1, labels.dtype)])
    return jax.device_put(images, sharding), jax.device_put(labels, sharding), int((labels >= 0).sum())


def _padded(batch: int, sharding) -> int:
    """The batch padded (with unknown-label rows) to a multiple of the device count of `sharding`."""
    return round_up(batch, len(sharding.device_set)) if sharding is not None else batch


def evaluate(eval_fn, params, batch_stats, split: Split, batch: int, *, saturation: bool = False, sharding=None):
    """Probabilities (N, L) and mean BCE over the known labels of a split; with `saturation`, also the
    number of saturated (image, qubit) pre-circuit angles over its N real rows (see `make_eval`)."""
    steps = _batches(split.n, batch)
    chunks = [np.arange(i * batch, min(split.n, (i + 1) * batch)) for i in range(steps)]
    width = _padded(batch, sharding)
    out = [eval_fn(params, batch_stats, images, labels)
           for images, labels, _ in prefetch(lambda r: _load_batch(split, r, width, sharding), chunks)]
    probs, sums, counts, saturated = jax.device_get(list(zip(*out, strict=True)))
    probs = [p[: len(c)] for p, c in zip(probs, chunks, strict=True)]  # the real rows of each batch
    saturated = [x[: len(c)] for x, c in zip(saturated, chunks, strict=True)]
    result = np.concatenate(probs)[: split.n], float(np.sum(sums, dtype=np.float64) / max(int(np.sum(counts)), 1))
    return (*result, int(np.concatenate(saturated)[: split.n].sum())) if saturation else result


# ---------------------------------------------------------------- checkpoints
def _save_tree(path: Path, tree: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save

    write_bytes(path, save(runs.flatten(jax.device_get(tree)), metadata=metadata))


def _load_tree(path: Path) -> tuple[dict, dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        flat = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
        meta = f.metadata() or {}
    return runs.unflatten(flat), meta


def save_checkpoint(run_dir: Path, params, opt_state, state: dict) -> None:
    """The per-epoch commit point: parameters + optimizer state + early-stopping state, one atomic file."""
    leaves = jax.tree_util.tree_leaves(opt_state)
    tree = {"params": params, "opt": {f"{i:04d}": leaf for i, leaf in enumerate(leaves)}}
    _save_tree(run_dir / CHECKPOINT / "last.safetensors", tree, {"state": json.dumps(state)})
    write_json(run_dir / CHECKPOINT / "state.json", state)


def load_checkpoint(run_dir: Path, opt_template) -> tuple[dict, Any, dict] | None:
    """(params, opt_state, state) of the last completed epoch, or None when there is none."""
    path = run_dir / CHECKPOINT / "last.safetensors"
    if not path.exists():
        return None
    tree, meta = _load_tree(path)
    leaves, treedef = jax.tree_util.tree_flatten(opt_template)
    saved = [tree["opt"][f"{i:04d}"] for i in range(len(tree.get("opt", {})))]
    # Sizes, not shapes: `runs.flatten` stores a 0-d leaf (Adam's step count) as shape (1,).
    if len(saved) != len(leaves) or any(np.size(a) != np.size(b) for a, b in zip(saved, leaves, strict=True)):
        raise UserError(f"{path}: the optimizer state does not fit this run's parameters; delete {run_dir} to restart")
    opt_state = jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(a, b.dtype).reshape(np.shape(b)) for a, b in zip(saved, leaves, strict=True)])
    return jax.tree.map(jnp.asarray, tree["params"]), opt_state, json.loads(meta["state"])


def _best_file(run_dir: Path, epoch: int) -> Path:
    return run_dir / CHECKPOINT / f"best-{epoch:04d}.safetensors"


# ---------------------------------------------------------------- head initialisation from a `heads train` run
def load_head(run_dir: Path, opts: FinetuneOptions, template: dict, backbone, say) -> dict:
    """A head trained by `heads train` (its best.safetensors), checked against this task, model and backbone."""
    run_dir = Path(run_dir)
    if not (run_dir / "best.safetensors").exists() or not (run_dir / "config.json").exists():
        raise UserError(f"--init-head-from {run_dir}: not a run folder (needs config.json and best.safetensors)")
    if not runs.is_done(run_dir):
        raise UserError(f"--init-head-from {run_dir}: the run is unfinished (no DONE file)")
    cfg = runs.read_config(run_dir)
    if cfg.base_model != opts.model:
        raise UserError(f"--init-head-from {run_dir}: a {cfg.model!r} run, but --model is {opts.model!r}")
    want = list(task_labels(opts.task))
    if list(cfg.labels) != want:
        raise UserError(f"--init-head-from {run_dir}: trained for labels {', '.join(cfg.labels)}, not task "
                        f"{task_name(opts.task)} ({', '.join(want)})")
    params = runs.load_params(run_dir)
    params = params.get("head", params)  # a fine-tune run's best.safetensors holds head/...
    shapes = jax.tree.map(np.shape, template)
    try:
        got = jax.tree.map(np.shape, params)
    except Exception:  # noqa: BLE001
        got = None
    if got != shapes:
        raise UserError(f"--init-head-from {run_dir}: its parameters {got} do not fit this head {shapes} "
                        f"(different model, --layers or embedding size)")
    here = Backbone.from_description(backbone.description)
    if cfg.backbone.known and cfg.backbone != here:
        say(f"note: the head in {run_dir} was trained on features of backbone {cfg.backbone}, "
            f"not this one ({backbone.description})")
    return jax.tree.map(jnp.asarray, params)


# ---------------------------------------------------------------- the run
def finetune(
    opts: FinetuneOptions,
    *,
    backbone=None,
    devices=None,
    lock_timeout: float | None = None,
    say: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> FinetuneResult:
    """Train, or resume, or (when DONE) skip the fine-tune run `opts.run_dir`; see the module docstring.

    `backbone` may be given to reuse a loaded one (tests); otherwise `opts.weights` is loaded (random
    weights are announced loudly on stderr). `say` gets progress notes; `on_epoch` each history row.
    Data-parallel over `devices` (default every local device): batches split over them, parameters,
    optimizer state and BatchNorm statistics replicated (`cxrfeat.devices`); equal to one device
    within float rounding. The run's lock (`runs.run_lock_path`, the one `heads sweep` takes)
    is held throughout (a second process waits for it, at most `lock_timeout` seconds; None: forever).
    """
    say = say or (lambda msg: print(msg, file=sys.stderr))
    refuse_multi_process("heads finetune", "start one independent job (without jax.distributed) per --task, "
                                           "--model and --seed on one shared --runs folder")
    opts.check()
    _data_dirs(opts)  # before the lock makes the run folder's parents
    opts = resolve_task(opts)
    lock_file = runs.run_lock_path(opts.run_dir)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with locks.acquire(lock_file, what=f"run {opts.run_dir}", timeout=lock_timeout) as lock:
        return _finetune(opts, backbone=backbone, devices=devices, say=say, on_epoch=on_epoch, lock=lock)


def _finetune(opts: FinetuneOptions, *, backbone, devices, say, on_epoch, lock) -> FinetuneResult:
    from heads.models import make_model

    run_dir = opts.run_dir
    if runs.is_done(run_dir):
        say(f"{run_dir}: already finished (delete the folder to train it again)")
        return _finished(run_dir)
    labels = task_labels(opts.task)
    head = make_model(opts.model, len(labels), layers=opts.layers, backend=opts.backend, circuit_init=opts.circuit_init)
    splits = _load_splits(opts, labels, say)
    if backbone is None:
        from cxrfeat.backbone import announce_random_weights, load_backbone

        backbone = load_backbone(opts.weights, seed=RANDOM_BACKBONE_SEED)
        if backbone.description.get("random"):
            announce_random_weights(RANDOM_BACKBONE_SEED)
    params = init_params(backbone, head, opts.seed)
    if opts.init_head_from is not None:
        params["head"] = load_head(opts.init_head_from, opts, params["head"], backbone, say)
    optimizer, step, eval_fn = _programs(backbone.module, head, opts.train.lr, opts.freeze_backbone)
    mesh = batch_mesh(devices)
    sharding, same = batch_sharding(mesh), replicated(mesh)
    params = jax.device_put(params, same)
    opt_state = optimizer.init(trainable(params, opts.freeze_backbone))
    config = _config(opts, labels, splits, backbone, params)

    history: list[dict] = []
    state = {"epoch": 0, "best_val": math.inf, "best_epoch": 0, "bad": 0, "stopped": False}
    ck = _resume_point(run_dir, config.finetune["resume"], opt_state)
    if ck is not None:
        params, opt_state, state = jax.device_put(ck[:2], same) + (ck[2],)
        history = [r for r in runs.read_history(run_dir) if r["epoch"] <= state["epoch"]]
        say(f"{run_dir}: resuming after epoch {state['epoch']}")
    else:
        runs.start(run_dir, replace(config, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), lock=lock)
    resumed = state["epoch"]

    stats = jax.device_put(backbone.batch_stats, same)
    while not state["stopped"] and state["epoch"] < opts.train.max_epochs:
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        params, opt_state, train_loss, digest = _train_epoch(step, params, opt_state, stats, splits["train"], opts, epoch,
                                                             sharding)
        _, val_loss = evaluate(eval_fn, params, stats, splits["val"], opts.train.batch_size, sharding=sharding)
        check_finite(epoch, train_loss, val_loss, opts.train.lr, kept=str(run_dir))
        improved, bad, stop = early_stopping(state["best_val"], state["bad"], val_loss, opts.train.patience)
        if improved:
            _save_tree(_best_file(run_dir, epoch), params)  # before the commit point that names it
            state.update(best_val=val_loss, best_epoch=epoch)
        state.update(epoch=epoch, bad=bad, stopped=bool(stop))
        history.append(history_row(epoch, train_loss, val_loss, state["best_val"], improved,
                                   time.perf_counter() - t0, digest))
        runs.write_history(run_dir, history)
        save_checkpoint(run_dir, params, opt_state, state)
        for stale in (run_dir / CHECKPOINT).glob("best-*.safetensors"):
            if stale != _best_file(run_dir, state["best_epoch"]):
                stale.unlink(missing_ok=True)
        if on_epoch is not None:
            on_epoch(history[-1])

    results = _finish(run_dir, config, opts, splits, eval_fn, stats, state, history, sharding)
    return FinetuneResult(run_dir, history, state["best_epoch"], state["best_val"], results.to_json(),
                          resumed_from=resumed)


def resolve_task(opts: FinetuneOptions) -> FinetuneOptions:
    """`--task all` made a task: every label of the training split's CSV but No Finding, in its order
    (`cxrfeat.labels.resolve_tasks`, as `heads sweep` resolves it against its training store); other
    tasks are returned as they are."""
    if str(opts.task).lower() != ALL:
        return opts
    from cxrfeat.datasets import load_split

    names = load_split(NIH, _data_dirs(opts)[0], "train").label_names
    return replace(opts, task=resolve_tasks([Task(ALL)], names)[0])


def _data_dirs(opts: FinetuneOptions) -> tuple[Path, Path]:
    """--data-dir and the external folder (default: mimic-cxr-lt beside it), refused when missing."""
    data_dir = Path(opts.data_dir)
    if not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir}: no such folder")
    external_dir = Path(opts.external_dir) if opts.external_dir is not None else data_dir.parent / MIMIC
    if opts.external_dir is not None and not external_dir.is_dir():
        raise UserError(f"--external-dir {external_dir}: no such folder")
    return data_dir, external_dir


def _load_splits(opts: FinetuneOptions, labels: tuple[str, ...], say) -> dict[str, Split]:
    """train, val and test of NIH-CXR-LT, and `external` (MIMIC-CXR-LT test) when its folder exists; cached."""
    data_dir, external_dir = _data_dirs(opts)
    splits = {split: _split(NIH, data_dir, split, labels, opts, say) for split in ("train", "val", "test")}
    if external_dir.is_dir():
        splits["external"] = _split(MIMIC, external_dir, "test", labels, opts, say)
    return splits


def _train_epoch(step, params, opt_state, stats, train: Split, opts: FinetuneOptions, epoch: int, sharding=None):
    """One pass over every training row in the order and with the augmentation of (seed, epoch).

    With `sharding`, each batch (padded with unknown-label rows to a multiple of the device count:
    they add nothing to the loss) is split over the devices; the parameters are replicated, and the
    mean loss over the batch makes the compiler average the gradients across devices.
    Returns (params, opt_state, mean training loss, order_digest)."""
    batch = opts.train.batch_size
    width = _padded(batch, sharding)
    steps = _batches(train.n, batch)
    perm = np.asarray(epoch_order(opts.seed, epoch, train.n, 1)[0])
    keys = augment_keys(opts.seed, epoch, steps * batch)
    chunks = [perm[i * batch:(i + 1) * batch] for i in range(steps)]
    losses, known = [], []

    def step_keys(i: int):
        k = keys[i * batch:(i + 1) * batch]
        if width > batch:  # the padding rows' keys: any key will do, their images are zeros
            k = jnp.concatenate([k, jnp.repeat(k[:1], width - batch, axis=0)])
        return jax.device_put(k, sharding)

    for i, (images, labels, n_known) in enumerate(prefetch(lambda r: _load_batch(train, r, width, sharding), chunks)):
        params, opt_state, loss = step(params, opt_state, stats, images, labels, step_keys(i))
        losses.append(loss)  # read back once per epoch: the host never waits for a step
        known.append(n_known)
    known = np.asarray(known, np.float64)
    train_loss = float(np.dot(np.asarray(jax.device_get(losses), np.float64), known) / max(known.sum(), 1))
    return params, opt_state, train_loss, batch_digest(perm, keys[: train.n])


def _test_name(role: str, split: Split) -> str:
    """The name a split has in `data.rows`/`data.sources`: train and val by role, test sets by dataset
    (as in predictions/ and metrics.json)."""
    return role if role in ("train", "val") else split.name


def _config(opts: FinetuneOptions, labels, splits: dict[str, Split], backbone, params) -> RunConfig:
    """The run record: `data.views` is None (the image cache holds one image per row and augmentation
    is drawn at run time), `settings.seeds` None (a fine-tune trains one seed, `--seed`), and
    `finetune.resume` what a resume must match (every option that changes the result, the data and
    the backbone)."""
    from cxrfeat.augment import AUGMENTATION
    from cxrfeat.backbone import count_params as count_backbone
    from cxrfeat.preprocess import PREPROCESSING
    from heads.models import count_params
    from heads.stores import any_synthetic
    from heads.sweep import versions

    dqc = opts.model == "dqc"
    sources = {_test_name(role, s): {"dataset": s.cache.attrs.get("dataset"), "split": s.cache.attrs.get("split"),
                                     "synthetic": s.cache.attrs.get("synthetic")} for role, s in splits.items()}
    data = Data(dataset=NIH, synthetic=any_synthetic(v["synthetic"] for v in sources.values()),
                rows={_test_name(role, s): s.n for role, s in splits.items()}, views=None, limit=opts.limit,
                sources=sources, test_sets=tuple(s.name for role, s in splits.items() if role in ("test", "external")))
    settings = Settings(mode="finetune", lr=opts.train.lr, batch_size=opts.train.batch_size,
                        max_epochs=opts.train.max_epochs, patience=opts.train.patience, feature_norm=None,
                        layers=opts.layers if dqc else None, backend=opts.backend if dqc else None,
                        circuit_init=opts.circuit_init if dqc else None, seeds=None,
                        freeze_backbone=opts.freeze_backbone, limit=opts.limit)
    resume = {
        **{k: v for k, v in asdict(opts).items() if k not in ("runs", "name", "cache", "train", "data_dir", "external_dir")},
        **asdict(opts.train),
        "data": {role: s.cache.attrs["settings"] for role, s in splits.items()},
        "backbone": backbone.description,
    }
    head_counts = count_params(params["head"])
    finetune = {
        "weights": opts.weights, "backbone_trained": not opts.freeze_backbone, "init_head_from": opts.init_head_from,
        "limit": opts.limit, "image_cache": opts.cache, "backbone_description": backbone.description,
        "preprocessing": PREPROCESSING,
        "augmentation": {**AUGMENTATION, "keys": f"position p of epoch e of seed s: fold_in(fold_in(fold_in("
                         f"key(s), {AUGMENT_STREAM}), e), p)", "order": "heads.train.epoch_order(s, e)"},
        "image_caches": {role: {"dataset": s.cache.attrs.get("dataset"), "split": s.cache.attrs.get("split"),
                                "source": s.cache.attrs.get("source"), "rows": s.n, "cache": s.cache.path,
                                "synthetic": s.cache.attrs.get("synthetic")} for role, s in splits.items()},
        "resume": resume,
    }
    return RunConfig(
        sweep=opts.name, task=task_name(opts.task), labels=tuple(labels), model=opts.run_model, seed=opts.seed,
        settings=settings, data=data, backbone=Backbone.from_description(backbone.description),
        param_counts={"backbone": count_backbone(params["backbone"]), **head_counts, "head": sum(head_counts.values())},
        finetune=json.loads(json.dumps(finetune, default=str)), versions=versions(),
        devices=tuple(str(d) for d in jax.devices()))


def _finish(run_dir: Path, config: RunConfig, opts: FinetuneOptions, splits: dict[str, Split], eval_fn, stats,
            state: dict, history: list[dict], sharding=None):
    """Evaluate the best parameters on the test set(s) and finish the run (`heads.runs.finish_run`)."""
    best, _ = _load_tree(_best_file(run_dir, state["best_epoch"]))
    best = jax.device_put(best, replicated(sharding.mesh)) if sharding is not None else jax.tree.map(jnp.asarray, best)
    val_probs, _ = evaluate(eval_fn, best, stats, splits["val"], opts.train.batch_size, sharding=sharding)
    tests, saturated, entries = {}, 0, 0
    for role in ("test", "external"):
        if role in splits:
            split = splits[role]
            probs, _, n_saturated = evaluate(eval_fn, best, stats, split, opts.train.batch_size, saturation=True,
                                             sharding=sharding)
            saturated, entries = saturated + n_saturated, entries + split.n * len(config.labels)
            tests[split.name] = runs.TestSet(split.ids, split.labels, probs)
    results = runs.finish_run(
        run_dir, config, params={**best, "batch_stats": stats},
        params_metadata={"format": "cxr-qtl finetune", "best_epoch": str(state["best_epoch"])}, tests=tests,
        validation=(splits["val"].labels, val_probs), history=history, best_epoch=state["best_epoch"], best_val_loss=state["best_val"],
        saturated=saturated / entries if opts.model == "dqc" and entries else None,
        train_seconds=sum(r["seconds"] for r in history))
    shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)
    return results


def _resume_point(run_dir: Path, settings: dict, opt_template):
    """The checkpoint of an unfinished run with the same settings, or None (a fresh start)."""
    if not (run_dir / "config.json").exists():
        return None
    old = runs.read_config(run_dir).finetune or {}
    if old.get("resume") != settings:
        diff = differences(old.get("resume") or {}, settings)
        raise UserError(f"{run_dir} holds an unfinished run with different settings ({'; '.join(diff)}); "
                        f"delete it, or pass another --name")
    return load_checkpoint(run_dir, opt_template)


def _finished(run_dir: Path) -> FinetuneResult:
    run = runs.open_run(run_dir)
    results = run.results()
    return FinetuneResult(run_dir, run.history(), results.best_epoch, results.best_val_loss, results.to_json(),
                          skipped=True)
