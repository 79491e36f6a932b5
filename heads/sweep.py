"""Sweeps: every (task, model, configuration, seed) of a grid into run folders, trained together.

`run_sweep` is what `heads sweep` and `heads train` call. It
1. checks every option and every feature store (present, complete, finite, compatible, holding
   the tasks' labels) before it writes anything;
2. records the grid and the settings in `runs/<name>/sweep.json` (a sweep folder holds runs of
   one set of settings and one grid: resuming with others is refused);
3. per run group — the runs of one (task, model) whose configurations have the same compiled
   shapes (`heads.grid.shape_key`: e.g. every learning rate x every seed) — skips the runs whose
   folder has `DONE`, trains the others together in one compiled program (`heads.train.train_members`),
   then writes parameters, predictions on the validation and test store(s), metrics and finally `DONE`.

Hyper-parameter grids (`heads.grid`): a configuration with a name adds one folder level,
`runs/<name>/<task>/<model>/<config>/seed-<s>/`; a sweep without a grid keeps `<model>/seed-<s>/`.

`--shard i/N` (1 <= i <= N) splits the cells (task, model, configuration, seed) — listed tasks
outermost, then models, configurations, seeds — into N contiguous, nearly equal slices and keeps
the i-th, so N cluster jobs share one sweep folder without overlap (the paper's 3 tasks x 2 models
x 5 seeds give 30 one-run jobs), and the seeds (and configurations) that share a job still train
together. A shard with no cell is refused (exit 2: more slices than cells is a mistake in the job
script). The union of the shards' runs equals an unsharded sweep's, bit for bit (a member's
bits do not depend on its companions: `heads.train`).

Concurrency: each run is worked on under its own lock file (`runs.run_lock_path`, `cxrfeat.locks`).
A process that finds a run locked by a live process moves on with a message, and at the end waits
for the runs others held, then finishes what they left (normally nothing). So overlapping jobs (a
requeued job, `heads train` during a shard, two sweeps started together) never clear each other's
run folders and end with the same files as one job. `sweep.json` is read, merged and rewritten
under its own lock.
"""

from __future__ import annotations

import contextlib
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
from cxrfeat.errors import UserError
from cxrfeat.errors import refuse_multi_process as _refuse_multi_process
from cxrfeat.labels import ALL, as_task, resolve_tasks, task_labels, task_name, task_sort_key
from cxrfeat.slices import parse_slice, take_slice
from cxrfeat.store import Features, FeatureStore, check_compatible
from heads import runs, sanity
from heads.grid import PER_MEMBER, SETTINGS, Config, configurations, format_value, shape_key, varying
from heads.metrics import auroc_report
from heads.models import MODELS, dqc_pre_activations, make_model, param_counts
from heads.train import (
    SEED_BLOCK,
    VIEWS_FROM,
    Member,
    TrainConfig,
    TrainData,
    predict,
    seed_mesh,
    train_members,
)

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
    # Hyper-parameter grid: setting (`heads.grid.SETTINGS`) -> its values; a setting absent (or with
    # one value) takes its value from `train`, `head` or `feature_norm`.
    grid: dict = field(default_factory=dict)
    views_from: str = "augmented"

    def __post_init__(self) -> None:  # `--tasks 8,8` is task 8 once, everywhere (sweep.json too)
        object.__setattr__(self, "tasks", list(dict.fromkeys(self.tasks)))
        object.__setattr__(self, "models", list(dict.fromkeys(self.models)))
        object.__setattr__(self, "grid", {k: list(v) for k, v in self.grid.items()})

    def values(self) -> dict[str, list]:
        """Every setting of the grid -> its list of values (one value for a setting that does not vary)."""
        base = {"lr": self.train.lr, "layers": self.head.layers, "circuit_init": self.head.circuit_init,
                "feature_norm": self.feature_norm, "batch_size": self.train.batch_size, "patience": self.train.patience}
        return {k: list(self.grid.get(k) or [base[k]]) for k in SETTINGS}

    def configs(self, model: str) -> list[Config]:
        return configurations(self.values(), model)

    def at(self, config: Config) -> SweepSpec:
        """This sweep with the single configuration `config` (grid-free: its settings as plain values)."""
        v = config.values
        return replace(self, grid={}, feature_norm=v["feature_norm"],
                       train=replace(self.train, lr=v["lr"], batch_size=v["batch_size"], patience=v["patience"]),
                       head=replace(self.head, layers=v["layers"], circuit_init=v["circuit_init"]))

    def check(self) -> None:
        if self.seeds < 1:
            raise UserError(f"--seeds must be at least 1, not {self.seeds}")
        if not self.tasks:
            raise UserError("no tasks given")
        if not self.models:
            raise UserError("no models given")
        unknown = [k for k in self.grid if k not in SETTINGS]
        if unknown:
            raise ValueError(f"not grid settings: {unknown} (choose from {SETTINGS})")
        for task in self.tasks:
            if str(task) == ALL:  # resolved against the training store's labels by run_sweep
                continue
            try:
                task_labels(task)
            except ValueError as e:
                raise UserError(str(e)) from None
        if self.views_from not in VIEWS_FROM:
            raise UserError(f"--views-from {self.views_from!r}: choose from {', '.join(VIEWS_FROM)}")
        values = self.values()
        for key, options in values.items():  # each value once, with the others at their first value
            for value in options:
                one = self.at(Config("", {}, {**{k: v[0] for k, v in values.items()}, key: value}))
                for model in self.models:
                    make_model(model, 2, layers=one.head.layers, backend=one.head.backend,
                               circuit_init=one.head.circuit_init)
                one.train.check()
                if one.feature_norm not in FEATURE_NORMS:
                    raise UserError(f"--feature-norm {one.feature_norm!r}: choose from {', '.join(FEATURE_NORMS)}")
        i, n = self.shard
        if not (n >= 1 and 1 <= i <= n):
            raise UserError(f"--shard {i}/{n}: give i/N with 1 <= i <= N")
        if not shard_cells(self) and not any(str(t) == ALL for t in self.tasks):  # `all`: checked once resolved
            cells = len(plan(self))
            raise UserError(f"--shard {i}/{n}: this grid has only {cells} cell(s) (task, model, configuration, seed), "
                            f"so slice {i} of {n} is empty and would train nothing; use at most {cells} slices")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise UserError(f"--name {self.name!r} is not a usable folder name")

    def settings(self) -> dict:
        """What must be the same for every run in one sweep folder; a setting the grid varies is
        recorded as its list of values."""
        values = self.values()
        vary = varying(values)
        training, head = asdict(self.train), asdict(self.head)
        for k in ("lr", "batch_size", "patience"):
            if k in vary:
                training[k] = values[k]
        for k in ("layers", "circuit_init"):
            if k in vary:
                head[k] = values[k]
        return {"dataset": self.dataset, "external": self.external, "training": training, "head": head,
                "feature_norm": values["feature_norm"] if "feature_norm" in vary else self.feature_norm,
                "seed_block": SEED_BLOCK, "views_from": self.views_from}

    def grid_record(self) -> dict:
        """sweep.json `grid`: the value lists (as folder names spell them), the settings that vary,
        those that train as per-member data, and every model's configuration names."""
        values = self.values()
        return {"values": {k: [format_value(v) for v in vs] for k, vs in values.items()}, "varying": varying(values),
                "per_member": list(PER_MEMBER), "configs": {m: [c.name for c in self.configs(m)] for m in self.models}}


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'i/N' -> (i, N) (`cxrfeat.slices`); None -> (1, 1)."""
    return (1, 1) if spec is None else parse_slice(spec, "--shard", "1/4 (the first of 4 slices)")


def parse_models(spec: str) -> list[str]:
    models = [m.strip().lower() for m in spec.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise UserError(f"--models {spec!r}: choose from {', '.join(MODELS)} (comma-separated)")
    return list(dict.fromkeys(models))


@dataclass(frozen=True)
class Cell:
    """The unit of sharding: one run (task, model, configuration, seed)."""

    task: object
    model: str
    config: Config
    seed: int

    def run_dir(self, spec: SweepSpec) -> Path:
        return runs.seed_dir(spec.runs, spec.name, self.task, self.model, self.seed, self.config.name)

    def label(self) -> str | int:
        """How progress messages name the run: its seed, prefixed by its configuration in a grid."""
        return f"{self.config.name}/seed-{self.seed}" if self.config.name else self.seed


def plan(spec: SweepSpec) -> list[Cell]:
    """Every cell of the grid, in order (tasks, models, configurations, seeds); tasks as `Task`s."""
    tasks = {task_name(t): as_task(t) for t in spec.tasks if str(t) != ALL}
    return [Cell(t, m, c, s) for t in tasks.values() for m in spec.models for c in spec.configs(m)
            for s in range(1, spec.seeds + 1)]


def shard_cells(spec: SweepSpec) -> list[Cell]:
    """This shard's cells: the i-th of N contiguous, nearly equal slices of `plan`."""
    return take_slice(plan(spec), spec.shard)


def grid(spec: SweepSpec) -> list[tuple[int, str]]:
    """The (task, model) pairs with a cell in this shard, in grid order."""
    return list(dict.fromkeys((c.task, c.model) for c in shard_cells(spec)))


def run_groups(cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells that train together: same (task, model) and compiled shapes (`heads.grid.shape_key`)."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((task_name(c.task), c.model, shape_key(c.config, c.model)), []).append(c)
    return list(groups.values())


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
        self.all: dict[str, Features] = {}
        for key, where in wanted.items():
            store = FeatureStore.open(store_path(spec.features, *where))
            # Training embeddings keep their stored dtype (float16 stays float16 on the device; the
            # training step casts each batch); the smaller evaluation sets are read as float32.
            dtype = store.attrs.get("dtype", "float32") if key == "train" else np.float32
            self.all[key] = store.load(dtype=dtype)
        check_compatible(list(self.all.values()))
        self.test_sets = [k for k in self.all if k not in ("train", "val")]
        norms = {c.values["feature_norm"] for m in spec.models for c in spec.configs(m)}
        self._normed: dict[str, np.ndarray] = {}
        self._in_place = False
        self.norm = None  # the standardization constants, when some configuration uses them
        if "standardize" in norms:
            if norms == {"standardize"}:  # nothing needs the raw embeddings: standardize in place
                self.norm = standardize(self.all)
                self._in_place = True
            else:
                self.norm = standardize(self.all, copy=True, out=self._normed)
                self._in_place = False
        backbone = self.all["train"].attrs.get("backbone") or {}
        if "none" in norms and backbone.get("random"):
            print("warning: these features come from a RANDOM-weight backbone; their scale saturates the DQC's "
                  "tanh, so DQC heads may not learn. Consider --feature-norm standardize.", file=sys.stderr)

    def embeddings(self, key: str, feature_norm: str) -> np.ndarray:
        """The embeddings of store `key` as the heads of a configuration with `feature_norm` see them."""
        if feature_norm == "none" or self._in_place:
            return self.all[key].embeddings
        return self._normed[key]

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
            "seeds": spec.seeds, "mode": "features", "freeze_backbone": None, "limit": None,
            "views_from": spec.views_from}


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


def standardize(stores: dict[str, Features], *, copy: bool = False, out: dict | None = None) -> dict[str, np.ndarray]:
    """Z-score every store's embeddings with the training store's per-dimension mean and sd: in
    place (float32), or, with `copy`, into float32 copies put in `out` by store key (same values)."""
    x = stores["train"].embeddings
    mean = x.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
    sd = x.std(axis=(0, 1), dtype=np.float64).astype(np.float32)
    sd = np.where(sd > 1e-6, sd, np.float32(1.0))
    for key, f in stores.items():
        y = f.embeddings.astype(np.float32, copy=copy)
        y -= mean
        y /= sd
        if copy:
            out[key] = y
        else:
            f.embeddings = y
    return {"mean": mean, "sd": sd}


# ---------------------------------------------------------------- sweep.json
def record_sweep(spec: SweepSpec, stores: Stores) -> dict:
    """Write or extend `runs/<name>/sweep.json`; refuse a folder made with other settings."""
    path = Path(spec.runs) / spec.name / "sweep.json"
    train = stores.all["train"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fixed = {**spec.settings(), "backbone": train.attrs.get("backbone"), "preprocessing": train.attrs.get("preprocessing")}
    record = {"name": spec.name, "tasks": [task_name(t) for t in spec.tasks], "models": list(spec.models), "seeds": spec.seeds,
              "settings": fixed, "features": str(spec.features), "provenance": stores.provenance(),
              "package_version": __version__, "created": now, "updated": now, "grid": spec.grid_record()}
    if path.exists():
        old = json.loads(path.read_text())
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
        configs = {**((old.get("grid") or {}).get("configs") or {}), **record["grid"]["configs"]}
        record["grid"]["configs"] = {m: configs[m] for m in record["models"] if m in configs}
    atomic.write_json(path, record)
    return record


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


def _versions() -> dict:
    import flax
    import optax

    return {"cxr-qtl": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "python": platform.python_version()}


def finished_runs(dirs: Sequence[Path], test_sets: Sequence[str]) -> list[bool]:
    """Per run folder: finished and intact. A damaged one (DONE but files missing) is reported and
    marked unfinished, so that it is trained again. Call with the runs' locks held."""
    done = []
    for d in dirs:
        missing = runs.damage(d, test_sets)
        if missing:
            print(f"warning: {d} is marked DONE but lacks {', '.join(missing)} (damaged, or made before that test "
                  f"set existed): training it again", file=sys.stderr)
            runs.invalidate(d)
        done.append(not missing and runs.is_done(d))
    return done


def _run_config(spec: SweepSpec, stores: Stores, cell: Cell, together: list, mesh) -> dict:
    """config.json of one run (`spec` at the run's configuration)."""
    task, model_name, head = cell.task, cell.model, spec.head
    train, val = stores.all["train"], stores.all["val"]
    n, views, dim = train.embeddings.shape
    return {
        "sweep": spec.name, "task": task, "task_name": task_name(task), "labels": list(task_labels(task)),
        "model": model_name, "seed": cell.seed,
        "seeds_trained_together": together,
        "grid": cell.config.record(),
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
        "feature_norm": spec.feature_norm,
    }


def run_group(spec: SweepSpec, stores: Stores, cells: Sequence[tuple[Cell, locks.Lock | None]], *, reporter=None,
              device_cache: dict | None = None) -> GroupOutcome:
    """Train the unfinished runs of one run group (`run_groups`: cells of one task and model with the
    same compiled shapes) together, and write their run folders; each cell comes with its held lock
    (`runs.run_lock_path`) when other processes may share the folder (see `run_sweep`)."""
    task, model_name = cells[0][0].task, cells[0][0].model
    out = GroupOutcome(task, model_name)
    dirs = [c.run_dir(spec) for c, _ in cells]
    done = finished_runs(dirs, stores.test_sets)
    out.skipped = [c.label() for (c, _), d in zip(cells, done, strict=True) if d]
    todo = [(c, lock, d) for (c, lock), d, fin in zip(cells, dirs, done, strict=True) if not fin]
    if not todo:
        if reporter:
            reporter.skipped(task, model_name, out.skipped)
        return out

    names = list(task_labels(task))
    shape = spec.at(todo[0][0].config)  # layers, batch size and feature norm: the same for the whole group
    norm = shape.feature_norm
    model = make_model(model_name, len(names), layers=shape.head.layers, backend=shape.head.backend)
    mesh = seed_mesh()
    cache = device_cache if device_cache is not None else {}
    if ("train_x", norm) not in cache:  # the embeddings go to the device once per sweep (and normalisation)
        cache[("train_x", norm)] = jax.device_put(stores.embeddings("train", norm), NamedSharding(mesh, PartitionSpec()))
    val_x = stores.embeddings("val", norm)[:, 0]
    val_y = stores.labels_for("val", task)
    data = TrainData(cache[("train_x", norm)], stores.labels_for("train", task), val_x, val_y)

    members, specs = [], []
    for c, lock, d in todo:
        cs = spec.at(c.config)
        specs.append(cs)
        members.append(Member(c.seed, cs.train.lr, cs.train.patience, cs.head.circuit_init if model_name == "dqc" else "uniform"))
        together = [o.seed for o, _, _ in todo if o.config.name == c.config.name] if not c.config.name else \
            [o.label() for o, _, _ in todo]
        runs.start(d, _run_config(cs, stores, c, together, mesh), lock=lock)
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
                           views_from=spec.views_from, on_epoch=on_epoch)
    probs = {key: predict(model, result, stores.embeddings(key, norm)[:, 0]) for key in stores.test_sets}
    val_probs = predict(model, result, val_x)
    for j, r in enumerate(result.results):
        c, _, d = todo[j]
        cs = specs[j]
        runs.write_history(d, r.history)
        runs.save_params(d, r.best_params, metadata={"task": str(task), "model": model_name, "seed": str(r.seed)})
        test_metrics = {}
        for key in stores.test_sets:
            f = stores.all[key]
            y_true = stores.labels_for(key, task)
            runs.save_predictions(d, key, ids=f.ids, y_true=y_true, y_prob=probs[key][j], label_names=names)
            test_metrics[key] = auroc_report(y_true, probs[key][j], names)
        val_report = auroc_report(val_y, val_probs[j], names)
        saturated = None
        if model_name == "dqc":  # the test inputs as the head saw them
            saturated = sanity.saturated_fraction(
                [dqc_pre_activations(r.best_params, stores.embeddings(key, norm)[:, 0], np.float64) for key in stores.test_sets])
        check = sanity.check(
            predictions={key: probs[key][j] for key in stores.test_sets}, reports=test_metrics, label_names=names,
            best_epoch=r.best_epoch, epochs=r.epochs, max_epochs=spec.train.max_epochs, saturated=saturated,
            losses=[v for row in r.history for v in (row["train_loss"], row["val_loss"])],
            feature_norm=norm)
        runs.write_metrics(d, {
            "complete": True, "task": task, "model": model_name, "seed": r.seed,
            "best_epoch": r.best_epoch, "best_val_loss": r.best_val_loss, "epochs": r.epochs,
            "stopped_early": r.epochs < cs.train.max_epochs,
            "compile_seconds": round(result.compile_seconds, 3), "train_seconds": round(result.train_seconds, 3),
            # Model selection reads this, never the test sets: the best parameters on the validation split.
            "validation": {"loss": r.best_val_loss, "mean_auroc": val_report["mean_auroc"],
                           "per_label_auroc": val_report["per_label"], "labels_used": val_report["labels_used"],
                           "n": val_report["n"]},
            "test_sets": test_metrics,
            "sanity": check,
        })
        runs.finish(d)
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
    if any(str(t) == ALL for t in spec.tasks):  # `--tasks all`: every label of the training store
        spec = replace(spec, tasks=resolve_tasks(spec.tasks, stores.all["train"].label_names))
        spec.check()
    cells = shard_cells(spec)
    for task in dict.fromkeys(c.task for c in cells):
        stores.check_task(task)
    sweep_dir = Path(spec.runs) / spec.name
    with locks.acquire(sweep_dir / SWEEP_LOCK, what=f"{sweep_dir / 'sweep.json'}", timeout=600):
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


def _row_flags(sanity_record: dict | None, test_set: str) -> list[str]:
    """The sanity flags of one run that concern one of its test sets (constant predictions are per test set)."""
    if not sanity_record:
        return []
    constant = (sanity_record.get("details") or {}).get("constant_labels") or {}
    return [f for f in sanity_record.get("flags", []) if f != "constant_predictions" or test_set in constant]


def _grid_runs(sweep_dir, pairs, seeds, configs):
    """(task, model, config name, seed, run folder) of the grid, configs: model -> names (default: [""])."""
    for task, model in pairs:
        for name in (configs or {}).get(model, [""]):
            for s in range(1, seeds + 1):
                yield task, model, name, s, Path(sweep_dir) / task_name(task) / model / name / f"seed-{s}"


def summarize(sweep_dir: str | Path, pairs: Sequence[tuple[int, str]], seeds: int,
              configs: dict[str, list[str]] | None = None) -> list[dict]:
    """Mean ± sd AUROC over the finished seeds 1..seeds, per (task, model, configuration, test set),
    with each row's sanity flags: `flags` maps a flag to the seeds that carry it (runs without a
    `sanity` record have none). `configs`: each model's configuration names (default: none, "")."""
    rows = []
    groups: dict[tuple, list] = {}
    for task, model, name, s, d in _grid_runs(sweep_dir, pairs, seeds, configs):
        groups.setdefault((task, model, name), []).append((s, d))
    for (task, model, name), members in groups.items():
        per_set: dict[str, list[float]] = {}
        flags: dict[str, dict[str, list[int]]] = {}
        for s, d in members:
            if not runs.is_done(d):
                continue
            metrics = runs.read_metrics(d)
            for key, m in metrics["test_sets"].items():
                if m["mean_auroc"] is not None:
                    per_set.setdefault(key, []).append(m["mean_auroc"])
                for flag in _row_flags(metrics.get("sanity"), key):
                    flags.setdefault(key, {}).setdefault(flag, []).append(s)
        for key, values in per_set.items():
            rows.append({"task": task, "model": model, "config": name, "test_set": key, "n": len(values),
                         "mean": statistics.fmean(values),
                         "sd": statistics.stdev(values) if len(values) > 1 else None,
                         "flags": {f: flags.get(key, {})[f] for f in sanity.FLAGS if f in flags.get(key, {})}})
    return rows


def flagged_runs(sweep_dir: str | Path, pairs: Sequence[tuple[int, str]], seeds: int,
                 configs: dict[str, list[str]] | None = None) -> list[tuple[Path, dict]]:
    """(run folder, sanity record) of every finished run of the grid whose sanity check failed."""
    out = []
    for *_, d in _grid_runs(sweep_dir, pairs, seeds, configs):
        if runs.is_done(d):
            record = runs.read_metrics(d).get("sanity")
            if record and not record.get("ok", True):
                out.append((d, record))
    return out
