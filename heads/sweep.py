"""Sweeps: every (task, model) of a grid, all seeds of each trained together, into run folders.

`run_sweep` is what `heads sweep` and `heads train` call. It
1. checks every option and every feature store (present, complete, finite, compatible, holding
   the tasks' labels) before it writes anything;
2. records the grid and the settings in `runs/<name>/sweep.json` (a sweep folder holds runs of
   one set of settings: resuming with other settings is refused);
3. per (task, model): skips the seeds whose run folder has `DONE`, trains the others together,
   then writes parameters, predictions on the test store(s), metrics and finally `DONE`.

`--shard i/N` (1 <= i <= N) keeps the (task, model) pairs whose position in the grid (tasks
outer, models inner) is i-1 modulo N, so N cluster jobs share one sweep folder without overlap.
A shard with no pair is refused (exit 2: more slices than cells is a mistake in the job script).

Concurrency: each (task, model) is worked on under its lock file (`runs.group_lock_path`,
`cxrfeat.locks`). A process that finds a group locked by a live process moves on to the next one
with a message, and at the end waits for the groups others held, then finishes what they left
(normally nothing). So overlapping jobs (a requeued job, `heads train` during a shard, two sweeps
started together) never clear each other's run folders and end with the same files as one job.
`sweep.json` is read, merged and rewritten under its own lock. Within a group, a seed's results
do not depend on which seeds are trained with it (`heads.train`), so resuming, sharding or
splitting the work between processes gives the same bits.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from cxrfeat import __version__, atomic, locks
from cxrfeat.devices import refuse_multi_process  # the one refusal, shared with extract and finetune
from cxrfeat.errors import UserError
from cxrfeat.labels import ALL, as_task, resolve_tasks, task_labels, task_name
from cxrfeat.store import Features, FeatureStore, check_compatible
from heads import runs, sanity
from heads.metrics import auroc_report
from heads.models import MODELS, make_model, param_counts
from heads.train import SEED_BLOCK, TrainConfig, TrainData, predict, seed_mesh, train_seeds

DEFAULT_NAME = "sweep"
DEFAULT_DATASET = "nih-cxr-lt"
DEFAULT_EXTERNAL = "mimic-cxr-lt"
SWEEP_LOCK = ".sweep.json.lock"


# `standardize`: z-score every embedding dimension with the training split's mean and sd (over all
# rows and views) before the head. Not the paper's setting (`none`); it exists because random-weight
# backbones give embeddings of norm ~800 that saturate the DQC's tanh from the first step.
FEATURE_NORMS = ("none", "standardize")


@dataclass(frozen=True)
class HeadConfig:
    """Settings of the DQC head (unused by CDL)."""

    layers: int = 3
    backend: str = "fast"
    circuit_init: str = "uniform"


@dataclass(frozen=True)
class SweepSpec:
    tasks: Sequence[int]
    models: Sequence[str]
    seeds: int
    features: Path = Path("features")
    runs: Path = Path("runs")
    name: str = DEFAULT_NAME
    dataset: str = DEFAULT_DATASET
    external: str | None = DEFAULT_EXTERNAL  # used when its test store exists; None: never
    train: TrainConfig = TrainConfig()
    head: HeadConfig = HeadConfig()
    shard: tuple[int, int] = (1, 1)
    feature_norm: str = "none"

    def __post_init__(self) -> None:  # `--tasks 8,8` is task 8 once, everywhere (sweep.json too)
        object.__setattr__(self, "tasks", list(dict.fromkeys(self.tasks)))
        object.__setattr__(self, "models", list(dict.fromkeys(self.models)))

    def check(self) -> None:
        if self.seeds < 1:
            raise UserError(f"--seeds must be at least 1, not {self.seeds}")
        if not self.tasks:
            raise UserError("no tasks given")
        if not self.models:
            raise UserError("no models given")
        for task in self.tasks:
            if str(task) == ALL:  # resolved against the training store's labels by run_sweep
                continue
            try:
                task_labels(task)
            except ValueError as e:
                raise UserError(str(e)) from None
        for model in self.models:
            make_model(model, 2, layers=self.head.layers, backend=self.head.backend,
                       circuit_init=self.head.circuit_init)
        self.train.check()
        if self.feature_norm not in FEATURE_NORMS:
            raise UserError(f"--feature-norm {self.feature_norm!r}: choose from {', '.join(FEATURE_NORMS)}")
        i, n = self.shard
        if not (n >= 1 and 1 <= i <= n):
            raise UserError(f"--shard {i}/{n}: give i/N with 1 <= i <= N")
        if not grid(self):
            cells = len(self.tasks) * len(self.models)
            raise UserError(f"--shard {i}/{n}: this grid has only {cells} (task, model) cell(s), so slice {i} of {n} "
                            f"is empty and would train nothing; use at most {cells} slices")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise UserError(f"--name {self.name!r} is not a usable folder name")

    def settings(self) -> dict:
        """What must be the same for every run in one sweep folder."""
        return {"dataset": self.dataset, "external": self.external, "training": asdict(self.train),
                "head": asdict(self.head), "feature_norm": self.feature_norm, "seed_block": SEED_BLOCK}


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'i/N' -> (i, N); None -> (1, 1)."""
    if spec is None:
        return (1, 1)
    try:
        i, n = (int(p) for p in spec.split("/"))
    except ValueError:
        raise UserError(f"--shard {spec!r}: give i/N, e.g. 1/4 (the first of 4 slices)") from None
    if not (n >= 1 and 1 <= i <= n):
        raise UserError(f"--shard {spec}: need 1 <= i <= N")
    return i, n


def parse_models(spec: str) -> list[str]:
    models = [m.strip().lower() for m in spec.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise UserError(f"--models {spec!r}: choose from {', '.join(MODELS)} (comma-separated)")
    return list(dict.fromkeys(models))


def grid(spec: SweepSpec) -> list[tuple[int, str]]:
    """This shard's (task, model) pairs (tasks as `cxrfeat.labels.Task`s)."""
    i, n = spec.shard
    tasks = {task_name(t): as_task(t) for t in spec.tasks if str(t) != ALL}
    pairs = [(t, m) for t in tasks.values() for m in spec.models]
    return [p for k, p in enumerate(pairs) if k % n == i - 1]


# ---------------------------------------------------------------- feature stores
def store_path(features: Path, dataset: str, split: str) -> Path:
    return Path(features) / dataset / f"{split}.zarr"


def _extract_hint(features: Path, dataset: str, split: str) -> str:
    ds = "" if dataset == DEFAULT_DATASET else f" --dataset {dataset}"
    return f"cxrfeat extract --split {split}{ds} --data-dir <{dataset} folder> --out {features}"


class Stores:
    """The train/val/test stores (and the external test store when it exists), loaded once."""

    def __init__(self, spec: SweepSpec):
        self.features = Path(spec.features)
        wanted = {"train": (spec.dataset, "train"), "val": (spec.dataset, "val"), spec.dataset: (spec.dataset, "test")}
        ext = store_path(spec.features, spec.external, "test") if spec.external else None
        self.external_missing = None
        if spec.external and spec.external != spec.dataset:
            if (ext / "zarr.json").exists():
                wanted[spec.external] = (spec.external, "test")
            else:
                self.external_missing = ext
        for dataset, split in wanted.values():
            path = store_path(spec.features, dataset, split)
            if not (path / "zarr.json").exists():
                raise UserError(f"{path}: no feature store; make it with `{_extract_hint(spec.features, dataset, split)}`")
        self.all: dict[str, Features] = {
            key: FeatureStore.open(store_path(spec.features, *where)).load() for key, where in wanted.items()
        }
        check_compatible(list(self.all.values()))
        self.test_sets = [k for k in self.all if k not in ("train", "val")]
        self.norm = standardize(self.all) if spec.feature_norm == "standardize" else None
        backbone = self.all["train"].attrs.get("backbone") or {}
        if self.norm is None and backbone.get("random"):
            print("warning: these features come from a RANDOM-weight backbone; their scale saturates the DQC's "
                  "tanh, so DQC heads may not learn. Consider --feature-norm standardize.", file=sys.stderr)

    def labels_for(self, key: str, task: int) -> np.ndarray:
        f = self.all[key]
        names = task_labels(task)
        missing = [n for n in names if n not in f.label_names]
        if missing:
            raise UserError(
                f"{f.path}: the store has no label(s) {', '.join(missing)} needed by {task_name(task).upper()} "
                f"(it has: {', '.join(f.label_names)})"
            )
        return f.labels[:, [f.label_names.index(n) for n in names]]

    def check_task(self, task: int) -> None:
        for key in self.all:
            self.labels_for(key, task)

    def provenance(self) -> dict:
        return {key: {**f.provenance, "synthetic": f.attrs.get("synthetic")} for key, f in self.all.items()}

    def data_record(self, spec: SweepSpec) -> dict:
        """config.json `data` (shared contract, issue 9): what the run was trained and tested on."""
        sources = {key: {"dataset": f.attrs.get("dataset"), "split": f.attrs.get("split"),
                         "synthetic": f.attrs.get("synthetic")} for key, f in self.all.items()}
        return {"dataset": spec.dataset, "synthetic": any_synthetic(s["synthetic"] for s in sources.values()),
                "rows": {key: int(f.embeddings.shape[0]) for key, f in self.all.items()},
                "views": int(self.all["train"].embeddings.shape[1]), "limit": None, "sources": sources}

    def backbone_record(self) -> dict:
        return backbone_record(self.all["train"].attrs.get("backbone"))


def any_synthetic(flags) -> bool | None:
    """True if any store is synthetic, else None if any is unknown (older stores), else False."""
    flags = list(flags)
    if any(f is True for f in flags):
        return True
    return None if any(f is None for f in flags) else False


def backbone_record(desc) -> dict:
    """config.json `backbone` (shared contract, issue 9) from a store's or a loaded backbone's description."""
    desc = desc if isinstance(desc, dict) else {"name": desc} if desc else {}
    name = desc.get("name")
    random = bool(desc.get("random", name == "random"))
    return {"name": "random" if random else name, "random": random,
            "seed": desc.get("seed") if random else None,
            "revision": desc.get("revision"), "sha256": desc.get("sha256")}


def settings_record(spec: SweepSpec, model: str) -> dict:
    """config.json `settings` (shared contract, issue 9) of a run on cached features."""
    dqc = model == "dqc"
    t, h = spec.train, spec.head
    return {"lr": t.lr, "batch_size": t.batch_size, "max_epochs": t.max_epochs, "patience": t.patience,
            "feature_norm": spec.feature_norm, "layers": h.layers if dqc else None,
            "backend": h.backend if dqc else None, "circuit_init": h.circuit_init if dqc else None,
            "seeds": spec.seeds, "mode": "features", "freeze_backbone": None, "limit": None}


def differences(old, new, prefix: str = "") -> list[str]:
    """'key: old -> new' for every setting that differs, nested dicts spelt `a.b`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old == new:
        return []
    return [f"{prefix.rstrip('.')}: {json.dumps(old, default=str)} there, {json.dumps(new, default=str)} now"]


def standardize(stores: dict[str, Features]) -> dict[str, np.ndarray]:
    """Z-score every store's embeddings in place with the training store's per-dimension mean and sd."""
    x = stores["train"].embeddings
    mean = x.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
    sd = x.std(axis=(0, 1), dtype=np.float64).astype(np.float32)
    sd = np.where(sd > 1e-6, sd, np.float32(1.0))
    for f in stores.values():
        f.embeddings -= mean
        f.embeddings /= sd
    return {"mean": mean, "sd": sd}


# ---------------------------------------------------------------- sweep.json
def _task_order(name: str) -> tuple[int, str]:
    digits = name.rsplit("-", 1)[-1]
    return (int(digits) if digits.isdigit() else 10**6, name)


def record_sweep(spec: SweepSpec, stores: Stores) -> dict:
    """Write or extend `runs/<name>/sweep.json`; refuse a folder made with other settings."""
    path = Path(spec.runs) / spec.name / "sweep.json"
    train = stores.all["train"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fixed = {**spec.settings(), "backbone": train.attrs.get("backbone"), "preprocessing": train.attrs.get("preprocessing")}
    record = {"name": spec.name, "tasks": [task_name(t) for t in spec.tasks], "models": list(spec.models), "seeds": spec.seeds,
              "settings": fixed, "features": str(spec.features), "provenance": stores.provenance(),
              "package_version": __version__, "created": now, "updated": now}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") != fixed:
            diff = differences(old.get("settings") or {}, fixed)
            raise UserError(
                f"{path.parent} holds runs made with other settings ({'; '.join(diff)}): "
                f"use another --name, or the same settings to resume it"
            )
        record["tasks"] = sorted({task_name(t) for t in old["tasks"]} | {task_name(t) for t in spec.tasks},
                                 key=_task_order)
        record["models"] = [m for m in MODELS if m in set(old["models"]) | set(spec.models)]
        record["seeds"] = max(old["seeds"], spec.seeds)
        record["created"] = old.get("created", now)
    atomic.write_json(path, record)
    return record


# ---------------------------------------------------------------- one (task, model)
@dataclass
class GroupOutcome:
    task: int
    model: str
    trained: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _versions() -> dict:
    import flax
    import optax

    return {"cxr-qtl": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "python": platform.python_version()}


def finished_seeds(dirs: dict[int, Path], test_sets: Sequence[str]) -> list[int]:
    """The seeds whose runs are finished and intact; a damaged one (DONE but files missing) is
    reported and marked unfinished, so that it is trained again. Call with the group's lock held."""
    done = []
    for s, d in dirs.items():
        missing = runs.damage(d, test_sets)
        if missing:
            print(f"warning: {d} is marked DONE but lacks {', '.join(missing)} (damaged, or made before that test "
                  f"set existed): training it again", file=sys.stderr)
            runs.invalidate(d)
        elif runs.is_done(d):
            done.append(s)
    return done


def run_group(spec: SweepSpec, stores: Stores, task: int, model_name: str, *, reporter=None,
              device_cache: dict | None = None, lock: locks.Lock | None = None) -> GroupOutcome:
    """Train the unfinished seeds of one (task, model) and write their run folders (holding `lock`,
    the group's lock, when other processes may share the folder: see `run_sweep`)."""
    out = GroupOutcome(task, model_name)
    dirs = {s: runs.seed_dir(spec.runs, spec.name, task, model_name, s) for s in range(1, spec.seeds + 1)}
    out.skipped = finished_seeds(dirs, stores.test_sets)
    todo = [s for s in dirs if s not in out.skipped]
    if not todo:
        if reporter:
            reporter.skipped(task, model_name, out.skipped)
        return out

    names = list(task_labels(task))
    train, val = stores.all["train"], stores.all["val"]
    n, views, dim = train.embeddings.shape
    head = spec.head
    model = make_model(model_name, len(names), layers=head.layers, backend=head.backend, circuit_init=head.circuit_init)
    mesh = seed_mesh()
    cache = device_cache if device_cache is not None else {}
    if "train_x" not in cache:  # the embeddings go to the device once per sweep
        cache["train_x"] = jax.device_put(train.embeddings, NamedSharding(mesh, PartitionSpec()))
    data = TrainData(cache["train_x"], stores.labels_for("train", task), val.embeddings[:, 0], stores.labels_for("val", task))

    base = {
        "sweep": spec.name, "task": task, "task_name": task_name(task), "labels": names, "model": model_name,
        "seeds_trained_together": todo,
        "head": {"model": model_name, **(asdict(head) if model_name == "dqc" else {})},
        "training": asdict(spec.train),
        "features": {"dir": str(spec.features), "dataset": spec.dataset, "external": spec.external,
                     "test_sets": stores.test_sets, "train_rows": n, "views": views, "dim": dim,
                     "val_rows": int(val.embeddings.shape[0])},
        "provenance": stores.provenance(),
        "data": stores.data_record(spec),
        "backbone": stores.backbone_record(),
        "settings": settings_record(spec, model_name),
        "param_counts": param_counts(task, model_name, head.layers, dim),
        "versions": _versions(),
        "devices": [str(d) for d in mesh.devices.flat],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    base["feature_norm"] = spec.feature_norm
    for s in todo:
        runs.start(dirs[s], {**base, "seed": s}, lock=lock)
        if stores.norm is not None:  # the constants the saved parameters expect their inputs to be scaled by
            atomic.write_bytes(dirs[s] / "feature_norm.npz", _npz_bytes(stores.norm))

    histories: dict[int, list[dict]] = {s: [] for s in todo}

    def on_epoch(info: dict) -> None:
        for row in info["seeds"]:
            seed = row["seed"]
            histories[seed].append({k: v for k, v in row.items() if k != "seed"})
            runs.write_history(dirs[seed], histories[seed])
        if reporter:
            reporter.epoch(info)

    if reporter:
        reporter.group_start(task, model_name, todo, spec.train.max_epochs)
    t0 = time.perf_counter()
    result = train_seeds(model, data, todo, spec.train, on_epoch=on_epoch)
    probs = {key: predict(model, result, stores.all[key].embeddings[:, 0]) for key in stores.test_sets}
    for j, r in enumerate(result.results):
        d = dirs[r.seed]
        runs.write_history(d, r.history)
        runs.save_params(d, r.best_params, metadata={"task": str(task), "model": model_name, "seed": str(r.seed)})
        test_metrics = {}
        for key in stores.test_sets:
            f = stores.all[key]
            y_true = stores.labels_for(key, task)
            runs.save_predictions(d, key, ids=f.ids, y_true=y_true, y_prob=probs[key][j], label_names=names)
            test_metrics[key] = auroc_report(y_true, probs[key][j], names)
        saturated = None
        if model_name == "dqc":  # the test inputs as the head saw them (stores are standardized in place)
            saturated = sanity.saturated_fraction(
                [sanity.dqc_pre_activations(r.best_params, stores.all[key].embeddings[:, 0]) for key in stores.test_sets])
        check = sanity.check(
            predictions={key: probs[key][j] for key in stores.test_sets}, reports=test_metrics, label_names=names,
            best_epoch=r.best_epoch, epochs=r.epochs, max_epochs=spec.train.max_epochs, saturated=saturated,
            losses=[v for row in r.history for v in (row["train_loss"], row["val_loss"])],
            feature_norm=spec.feature_norm)
        runs.write_metrics(d, {
            "complete": True, "task": task, "model": model_name, "seed": r.seed,
            "best_epoch": r.best_epoch, "best_val_loss": r.best_val_loss, "epochs": r.epochs,
            "stopped_early": r.epochs < spec.train.max_epochs,
            "compile_seconds": round(result.compile_seconds, 3), "train_seconds": round(result.train_seconds, 3),
            "test_sets": test_metrics,
            "sanity": check,
        })
        runs.finish(d)
    out.trained = todo
    out.seconds = time.perf_counter() - t0
    if reporter:
        reporter.group_end(task, model_name, out)
    return out


# ---------------------------------------------------------------- the sweep
def _say(message: str) -> None:
    print(message, file=sys.stderr)


def run_sweep(spec: SweepSpec, *, reporter=None) -> list[GroupOutcome]:
    """Check everything, then train every unfinished run of this shard's grid (see module docstring)."""
    spec.check()
    refuse_multi_process()
    stores = Stores(spec)
    if any(str(t) == ALL for t in spec.tasks):  # `--tasks all`: every label of the training store
        spec = replace(spec, tasks=resolve_tasks(spec.tasks, stores.all["train"].label_names))
    pairs = grid(spec)
    for task in dict.fromkeys(t for t, _ in pairs):
        stores.check_task(task)
    sweep_dir = Path(spec.runs) / spec.name
    with locks.acquire(sweep_dir / SWEEP_LOCK, what=f"{sweep_dir / 'sweep.json'}", timeout=600):
        record_sweep(spec, stores)
    if reporter:
        reporter.sweep_start(pairs, spec, stores)
    cache: dict = {}
    outcomes: dict[tuple[int, str], GroupOutcome] = {}
    held: list[tuple[int, str]] = []
    for t, m in pairs:
        path = runs.group_lock_path(spec.runs, spec.name, t, m)
        lock = locks.try_acquire(path, what=f"run group {task_name(t)}/{m} of {sweep_dir}")
        if lock is None:
            _say(f"{task_name(t)} {m}: being trained by {locks.describe(locks.read_owner(path))}; moving on, "
                 f"and coming back to it at the end")
            held.append((t, m))
            continue
        with lock:
            outcomes[(t, m)] = run_group(spec, stores, t, m, reporter=reporter, device_cache=cache, lock=lock)
    for t, m in held:  # wait for the other process, then do what it left (nothing, unless it stopped)
        path = runs.group_lock_path(spec.runs, spec.name, t, m)
        with locks.acquire(path, what=f"run group {task_name(t)}/{m} of {sweep_dir}") as lock:
            outcomes[(t, m)] = run_group(spec, stores, t, m, reporter=reporter, device_cache=cache, lock=lock)
    return [outcomes[p] for p in pairs]


def _row_flags(sanity_record: dict | None, test_set: str) -> list[str]:
    """The sanity flags of one run that concern one of its test sets (constant predictions are per test set)."""
    if not sanity_record:
        return []
    constant = (sanity_record.get("details") or {}).get("constant_labels") or {}
    return [f for f in sanity_record.get("flags", []) if f != "constant_predictions" or test_set in constant]


def summarize(sweep_dir: str | Path, pairs: Sequence[tuple[int, str]], seeds: int) -> list[dict]:
    """Mean ± sd AUROC over the finished seeds 1..seeds, per (task, model, test set), with each row's
    sanity flags: `flags` maps a flag to the seeds that carry it (runs without a `sanity` record have none)."""
    rows = []
    for task, model in pairs:
        per_set: dict[str, list[float]] = {}
        flags: dict[str, dict[str, list[int]]] = {}
        for s in range(1, seeds + 1):
            d = Path(sweep_dir) / task_name(task) / model / f"seed-{s}"
            if not runs.is_done(d):
                continue
            metrics = runs.read_metrics(d)
            for key, m in metrics["test_sets"].items():
                if m["mean_auroc"] is not None:
                    per_set.setdefault(key, []).append(m["mean_auroc"])
                for flag in _row_flags(metrics.get("sanity"), key):
                    flags.setdefault(key, {}).setdefault(flag, []).append(s)
        for key, values in per_set.items():
            rows.append({"task": task, "model": model, "test_set": key, "n": len(values),
                         "mean": statistics.fmean(values),
                         "sd": statistics.stdev(values) if len(values) > 1 else None,
                         "flags": {f: flags.get(key, {})[f] for f in sanity.FLAGS if f in flags.get(key, {})}})
    return rows


def flagged_runs(sweep_dir: str | Path, pairs: Sequence[tuple[int, str]], seeds: int) -> list[tuple[Path, dict]]:
    """(run folder, sanity record) of every finished run of the grid whose sanity check failed."""
    out = []
    for task, model in pairs:
        for s in range(1, seeds + 1):
            d = Path(sweep_dir) / task_name(task) / model / f"seed-{s}"
            if runs.is_done(d):
                record = runs.read_metrics(d).get("sanity")
                if record and not record.get("ok", True):
                    out.append((d, record))
    return out
