"""Running a sweep: every unfinished run of this shard's grid, trained in run groups, written to run folders.

`run_sweep` is what `heads sweep` and `heads train` call. It
1. checks every option (`heads.plan.SweepSpec.check`) and every feature store (`heads.stores.Stores`:
   present, complete, finite, compatible, holding the tasks' labels) before it writes anything;
2. records the grid and the settings in `runs/<name>/sweep.json` (a sweep folder holds runs of one
   set of settings and one grid: resuming with others is refused);
3. per run group (`heads.plan.run_groups`) skips the runs whose folder is finished and intact,
   trains the others together in one compiled program (`heads.train.train_members`), and finishes
   each through `heads.runs.finish_run` (parameters, predictions, metrics, then `DONE`).

Concurrency: each run is worked on under its own lock file (`runs.run_lock_path`, `cxrfeat.locks`).
A process that finds a run locked by a live process moves on with a message, and at the end waits
for the runs others held, then finishes what they left (normally nothing). So overlapping jobs (a
requeued job, `heads train` during a shard, two sweeps started together) never clear each other's
run folders and end with the same files as one job. `sweep.json` is read, merged and rewritten
under its own lock. The union of the shards' runs equals an unsharded sweep's, bit for bit (a
member's bits do not depend on its companions: `heads.train`).
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from cxrfeat import __version__, atomic, locks
from cxrfeat.errors import UserError
from cxrfeat.errors import refuse_multi_process as _refuse_multi_process
from cxrfeat.labels import ALL, TASKS, Task, resolve_tasks, task_labels, task_name, task_sort_key
from heads import runs, sanity
from heads.models import MODELS, dqc_pre_activations, make_model, param_counts
from heads.plan import Cell, SweepSpec, differences, run_groups, shard_cells
from heads.record import RunConfig, Settings
from heads.stores import Stores
from heads.train import Member, TrainData, predict, seed_mesh, train_members

SWEEP_LOCK = ".sweep.json.lock"
PAPER_TASKS = {f"cxr-{n}" for n in TASKS}


# ---------------------------------------------------------------- sweep.json
def record_sweep(spec: SweepSpec, stores: Stores) -> dict:
    """Write or extend `runs/<name>/sweep.json`; refuse a folder made with other settings."""
    path = Path(spec.runs) / spec.name / "sweep.json"
    train = stores.all["train"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fixed = {**spec.settings(), "backbone": train.attrs.get("backbone"), "preprocessing": train.attrs.get("preprocessing")}
    record = {"name": spec.name, "tasks": [task_name(t) for t in spec.tasks], "models": list(spec.models), "seeds": spec.seeds,
              "settings": fixed, "features": str(spec.features), "provenance": stores.provenance(),
              "package_version": __version__, "created": now, "updated": now, "grid": spec.grid_record(),
              "task_labels": {task_name(t): list(task_labels(t)) for t in spec.tasks}}
    if path.exists():
        old = atomic.read_json(path, what=f"the sweep record of {path.parent}",
                               remedy="restore it, or delete it and re-run this sweep's commands (finished runs are kept)")
        if not all(isinstance(old.get(k), t) for k, t in (("tasks", list), ("models", list), ("seeds", int))):
            raise UserError(f"{path}: not a sweep record (needs tasks, models and seeds): damaged? "
                            f"Move it away to start the folder's record afresh")
        if old.get("settings") != fixed:
            diff = differences(old.get("settings") or {}, fixed)
            raise UserError(
                f"{path.parent} holds runs made with other settings ({'; '.join(diff)}): "
                f"use another --name, or the same settings to resume it"
            )
        record["tasks"] = sorted({task_name(t) for t in old["tasks"]} | {task_name(t) for t in spec.tasks},
                                 key=task_sort_key)
        record["models"] = [m for m in MODELS if m in set(old["models"]) | set(spec.models)]
        record["seeds"] = max(old["seeds"], spec.seeds)
        record["created"] = old.get("created", now)
        labels = {**{k: list(v) for k, v in sweep_task_labels(path.parent).items()}, **record["task_labels"]}
        record["task_labels"] = {t: labels[t] for t in record["tasks"] if t in labels}
        configs = {**((old.get("grid") or {}).get("configs") or {}), **record["grid"]["configs"]}
        record["grid"]["configs"] = {m: configs[m] for m in record["models"] if m in configs}
    atomic.write_json(path, record)
    return record


def sweep_task_labels(sweep_dir: Path) -> dict[str, tuple[str, ...]]:
    """Task name -> labels of the tasks a sweep folder holds: from sweep.json `task_labels`, else (a sweep
    recorded before it had them) from the first run record of each task folder it lists."""
    try:
        record = json.loads((Path(sweep_dir) / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    known = record.get("task_labels")
    if isinstance(known, dict):
        return {str(k): tuple(map(str, v)) for k, v in known.items() if isinstance(v, list)}
    out = {}
    for name in record.get("tasks") or []:
        for config in (Path(sweep_dir) / str(name)).rglob("config.json"):
            try:
                labels = json.loads(config.read_text()).get("labels")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(labels, list):
                out[str(name)] = tuple(map(str, labels))
                break
    return out


def keep_sweep_names(tasks, sweep_dir: Path, *, say=None) -> list:
    """`tasks` where a task named by default (`--tasks all` or a tasks file, no `--task-name`) takes the
    name the sweep folder already gave the same labels, so re-running a command continues its runs; the
    paper's tasks and the names a user gives are kept."""
    have = {labels: name for name, labels in sweep_task_labels(sweep_dir).items()}
    out = []
    for t in tasks:
        if isinstance(t, Task) and t.labels is not None and t.named is None and str(t) not in PAPER_TASKS:
            old = have.get(t.labels)
            if old is not None and old != str(t):
                if say:
                    say(f"{sweep_dir}: these {t.n} labels are the sweep's task {old}; continuing under that name "
                        f"(give --task-name to choose one)")
                t = Task(old, t.labels)
        out.append(t)
    return out


def recorded_block(path: Path, default: int) -> int:
    """The member block an existing sweep was trained with (its bits depend on it), else `default`.

    A folder started with another block (before the default became 1) resumes with its own, so its
    remaining runs get the bits they would have had; a damaged record is left to `record_sweep` to name.
    """
    try:
        block = json.loads(path.read_text())["settings"]["seed_block"]
    except (OSError, ValueError, KeyError, TypeError):
        return default
    return block if isinstance(block, int) and not isinstance(block, bool) and block >= 1 else default


# ---------------------------------------------------------------- one run group
@dataclass
class GroupOutcome:
    task: int
    model: str
    trained: list = field(default_factory=list)  # run labels (`Cell.label`): seeds, or config/seed-<s> in a grid
    skipped: list = field(default_factory=list)
    seconds: float = 0.0


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def versions() -> dict:
    import flax
    import optax

    return {"cxr-qtl": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "python": platform.python_version()}


def finished_runs(folders: Sequence[runs.Run], test_sets: Sequence[str]) -> list[bool]:
    """Per run folder: finished and intact. A damaged one (DONE but files missing) is reported and
    marked unfinished, so that it is trained again; a finished run whose record belongs elsewhere
    (another task, model, configuration or seed) is refused. Call with the runs' locks held."""
    done = []
    for run in folders:
        d = run.path
        missing = runs.damage(d, test_sets)
        if not missing and runs.is_done(d):
            run.config()  # refuses a run copied or moved here from another place
        if missing:
            print(f"warning: {d} is marked DONE but lacks {', '.join(missing)} (damaged, or made before that test "
                  f"set existed): training it again", file=sys.stderr)
            runs.invalidate(d)
        done.append(not missing and runs.is_done(d))
    return done


def run_record(spec: SweepSpec, stores: Stores, cell: Cell, together: list, mesh) -> RunConfig:
    """The record (config.json) of one run on cached features (`spec` at the run's configuration)."""
    task, model_name, h, t = cell.task, cell.model, spec.head, spec.train
    dqc = model_name == "dqc"
    dim = int(stores.all["train"].embeddings.shape[2])
    settings = Settings(mode="features", lr=t.lr, batch_size=t.batch_size, max_epochs=t.max_epochs, patience=t.patience,
                        feature_norm=spec.feature_norm, layers=h.layers if dqc else None,
                        backend=h.backend if dqc else None, circuit_init=h.circuit_init if dqc else None,
                        seeds=spec.seeds, views_from=spec.views_from, **noise_settings(h if dqc else None))
    return RunConfig(
        sweep=spec.name, task=task_name(task), labels=tuple(task_labels(task)), model=model_name, seed=cell.seed,
        settings=settings, data=stores.data_record(spec), backbone=stores.backbone_record(),
        grid=cell.config.record() if cell.config.name else None,
        param_counts=param_counts(task, model_name, h.layers, dim), trained_with=tuple(together),
        stores=stores.provenance(), versions=versions(), devices=tuple(str(d) for d in mesh.devices.flat),
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def noise_settings(head) -> dict:
    """The noise fields of a DQC run's settings (none for CDL, or a sweep without --noise)."""
    if head is None or head.noise is None:
        return {}
    return {"noise": head.noise.name, "noise_scale": float(head.noise_scale), "trajectories": int(head.trajectories),
            "noise_model": head.noise.to_json()}


def run_group(spec: SweepSpec, stores: Stores, cells: Sequence[tuple[Cell, locks.Lock | None]], *, reporter=None,
              device_cache: dict | None = None) -> GroupOutcome:
    """Train the unfinished runs of one run group (`run_groups`: cells of one task and model with the
    same compiled shapes) together, and write their run folders; each cell comes with its held lock
    (`runs.run_lock_path`) when other processes may share the folder (see `run_sweep`)."""
    task, model_name = cells[0][0].task, cells[0][0].model
    out = GroupOutcome(task, model_name)
    dirs = [c.run_dir(spec) for c, _ in cells]
    done = finished_runs([c.run(spec) for c, _ in cells], stores.test_sets)
    out.skipped = [c.label() for (c, _), d in zip(cells, done, strict=True) if d]
    todo = [(c, lock, d) for (c, lock), d, fin in zip(cells, dirs, done, strict=True) if not fin]
    if not todo:
        if reporter:
            reporter.skipped(task, model_name, out.skipped)
        return out

    names = list(task_labels(task))
    shape = spec.at(todo[0][0].config)  # layers, batch size and feature norm: the same for the whole group
    norm = shape.feature_norm
    model = make_model(model_name, len(names), layers=shape.head.layers, backend=shape.head.backend,
                       noise=shape.head.noise_model(), trajectories=shape.head.trajectories)
    mesh = seed_mesh()
    cache = device_cache if device_cache is not None else {}
    if ("train_x", norm) not in cache:  # the embeddings go to the device once per sweep (and normalisation)
        cache[("train_x", norm)] = jax.device_put(stores.embeddings("train", norm), NamedSharding(mesh, PartitionSpec()))
    val_x = stores.embeddings("val", norm)[:, 0]
    val_y = stores.labels_for("val", task)
    data = TrainData(cache[("train_x", norm)], stores.labels_for("train", task), val_x, val_y)

    members, records = [], []
    for c, lock, d in todo:
        cs = spec.at(c.config)
        members.append(Member(c.seed, cs.train.lr, cs.train.patience, cs.head.circuit_init if model_name == "dqc" else "uniform"))
        together = [o.seed for o, _, _ in todo if o.config.name == c.config.name] if not c.config.name else \
            [o.label() for o, _, _ in todo]
        records.append(run_record(cs, stores, c, together, mesh))
        runs.start(d, records[-1], lock=lock)
        if norm == "standardize":  # the constants the saved parameters expect their inputs to be scaled by
            atomic.write_bytes(d / "feature_norm.npz", _npz_bytes(stores.norm))

    histories: dict[int, list[dict]] = {k: [] for k in range(len(todo))}

    def on_epoch(info: dict) -> None:
        for row in info["seeds"]:
            k = row["member"]
            histories[k].append({key: v for key, v in row.items() if key not in ("seed", "member")})
            runs.write_history(todo[k][2], histories[k])
        if reporter:
            reporter.epoch(info)

    labels = [c.label() for c, _, _ in todo]
    if reporter:
        reporter.group_start(task, model_name, labels, spec.train.max_epochs)
    t0 = time.perf_counter()
    result = train_members(model, data, members, batch_size=shape.train.batch_size, max_epochs=spec.train.max_epochs,
                           views_from=spec.views_from, block=spec.seed_block, on_epoch=on_epoch)
    test_x = {key: stores.embeddings(key, norm)[:, 0] for key in stores.test_sets}
    probs = {key: predict(model, result, x) for key, x in test_x.items()}
    val_probs = predict(model, result, val_x)
    for j, r in enumerate(result.results):
        c, _, d = todo[j]
        saturated = None
        if model_name == "dqc":  # the test inputs as the head saw them
            saturated = sanity.saturated_fraction(
                [dqc_pre_activations(r.best_params, x, np.float64) for x in test_x.values()])
        tests = {key: runs.TestSet(stores.all[key].ids, stores.labels_for(key, task), probs[key][j])
                 for key in stores.test_sets}
        runs.finish_run(d, records[j], params=r.best_params,
                        params_metadata={"task": str(task), "model": model_name, "seed": str(r.seed)},
                        tests=tests, validation=(val_y, val_probs[j]), history=r.history, best_epoch=r.best_epoch,
                        best_val_loss=r.best_val_loss, saturated=saturated, train_seconds=result.train_seconds,
                        compile_seconds=result.compile_seconds)
    out.trained = labels
    out.seconds = time.perf_counter() - t0
    if reporter:
        reporter.group_end(task, model_name, out)
    return out


# ---------------------------------------------------------------- the sweep
def refuse_multi_process(what: str = "heads sweep") -> None:
    """A `jax.distributed` launch would have every process write the same run folders."""
    _refuse_multi_process(what, "start independent jobs (without jax.distributed) with --shard i/N on one shared "
                                "--runs folder")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def run_sweep(spec: SweepSpec, *, reporter=None) -> list[GroupOutcome]:
    """Check everything, then train every unfinished run of this shard's grid (see module docstring)."""
    spec.check()
    refuse_multi_process()
    stores = Stores(spec)
    sweep_dir = Path(spec.runs) / spec.name
    if any(str(t) == ALL for t in spec.tasks):  # `--tasks all`: every label of the training store
        spec = replace(spec, tasks=resolve_tasks(spec.tasks, stores.all["train"].label_names, spec.dataset))
    spec = replace(spec, tasks=keep_sweep_names(spec.tasks, sweep_dir, say=_say))
    spec.check()
    cells = shard_cells(spec)
    for task in dict.fromkeys(c.task for c in cells):
        stores.check_task(task)
    with locks.acquire(sweep_dir / SWEEP_LOCK, what=f"{sweep_dir / 'sweep.json'}", timeout=600):
        spec = replace(spec, seed_block=recorded_block(sweep_dir / "sweep.json", spec.seed_block))
        record_sweep(spec, stores)
    groups = run_groups(cells)
    if reporter:
        reporter.sweep_start(groups, spec, stores)
    cache: dict = {}
    outcomes: list[GroupOutcome] = []
    held: list[Cell] = []
    for group in groups:
        with contextlib.ExitStack() as stack:
            mine = []
            for c in group:
                path = runs.run_lock_path(c.run_dir(spec))
                lock = locks.try_acquire(path, what=f"run {c.run_dir(spec)}")
                if lock is None:
                    _say(f"{task_name(c.task)} {c.model} {c.label() if c.config.name else f'seed {c.seed}'}: being "
                         f"trained by {locks.describe(locks.read_owner(path))}; moving on, and coming back to it at the end")
                    held.append(c)
                    continue
                mine.append((c, stack.enter_context(lock)))
            if mine:
                outcomes.append(run_group(spec, stores, mine, reporter=reporter, device_cache=cache))
    for group in run_groups(held):  # wait for the other process, then do what it left (nothing, unless it stopped)
        with contextlib.ExitStack() as stack:
            mine = [(c, stack.enter_context(locks.acquire(runs.run_lock_path(c.run_dir(spec)),
                                                          what=f"run {c.run_dir(spec)}"))) for c in group]
            outcomes.append(run_group(spec, stores, mine, reporter=reporter, device_cache=cache))
    return outcomes
