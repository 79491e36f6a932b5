"""The run record: what a run is (`RunConfig`, its `config.json`) and what it produced (`RunResults`,
its `metrics.json`), as typed, immutable records with a schema version (docs/design.md "Run record").

Every command writes these files through `to_json` and reads them through `from_json`. The layouts
this project wrote before the schema existed are upgraded in `from_json` and nowhere else:

- schema 0 (no `settings` with a `mode`): `training`, `head`, `feature_norm`, `features`,
  `provenance` (the feature stores' attributes) and, for fine-tune runs, `finetune` plus a
  per-split `data`;
- schema 1 (no `schema` key, a `settings` block with `mode`): the same keys beside `data`,
  `backbone` and `settings`; fine-tune runs kept what a resume must match as `resume_settings`.

What an old file does not say stays None ("unknown"), never guessed. `config.json` and
`metrics.json` are plain JSON, readable without the toolkit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA = 2
MODES = ("features", "finetune")
FINETUNE_SUFFIX = "-finetune"

# The training settings of a run, in the order the report lists them; `seeds` is what was requested.
SETTING_KEYS = ("mode", "lr", "batch_size", "max_epochs", "patience", "feature_norm", "layers", "backend",
                "circuit_init", "noise", "noise_scale", "trajectories", "freeze_backbone", "limit")


class RecordError(ValueError):
    """A config.json or metrics.json that is not a run record (the message says what is wrong)."""


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _str(v: Any) -> str | None:
    return str(v) if v is not None else None


# ---------------------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class Backbone:
    """The backbone whose embeddings the head saw: a hub name or local folder, or `random` with its seed."""

    name: str | None = None  # None: unknown
    random: bool | None = None
    seed: int | None = None
    revision: str | None = None
    sha256: str | None = None

    @classmethod
    def from_description(cls, desc: Any) -> Backbone:
        """From a store's `backbone` attribute or a loaded backbone's description (a dict or a bare name)."""
        desc = desc if isinstance(desc, dict) else {"name": desc} if desc else {}
        name = desc.get("name")
        random = bool(desc.get("random", name == "random"))
        return cls("random" if random else _str(name), random, _int(desc.get("seed")) if random else None,
                   _str(desc.get("revision")), _str(desc.get("sha256")))

    @classmethod
    def read(cls, d: Any) -> Backbone | None:
        """A recorded backbone block (a run's or a store's), or None when it names nothing."""
        if not isinstance(d, dict) or not (d.get("name") or "random" in d):
            return None
        name = d.get("name")
        rnd = d.get("random")
        if not isinstance(rnd, bool):
            rnd = True if name == "random" else (None if name is None else False)
        return cls("random" if rnd else _str(name), rnd, _int(d.get("seed")),
                   str(d["revision"]) if d.get("revision") else None, str(d["sha256"]) if d.get("sha256") else None)

    @property
    def known(self) -> bool:
        return self.name is not None or self.random is not None


@dataclass(frozen=True)
class Data:
    """What the run was trained and tested on."""

    dataset: str | None = None  # the training dataset
    synthetic: bool | None = None  # True when any store is synthetic; None: unknown
    rows: dict[str, int] = field(default_factory=dict)  # train, val and each test set -> rows
    views: int | None = None  # views per training image in the store (None: drawn at run time)
    limit: int | None = None  # rows per split a fine-tune was limited to
    sources: dict[str, dict] = field(default_factory=dict)  # store key -> {dataset, split, synthetic}
    test_sets: tuple[str, ...] = ()
    dim: int | None = None  # embedding size
    features: str | None = None  # the feature-store folder (features mode)
    external: str | None = None  # the external test dataset asked for


@dataclass(frozen=True)
class Settings:
    """Every setting that decides a run, in one shape for both modes (None: does not apply, or unknown)."""

    mode: str | None = None  # features | finetune
    lr: float | None = None
    batch_size: int | None = None
    max_epochs: int | None = None
    patience: int | None = None
    feature_norm: str | None = None
    layers: int | None = None
    backend: str | None = None
    circuit_init: str | None = None
    seeds: int | None = None  # seeds requested by the command (a fine-tune trains one: None)
    views_from: str | None = None
    freeze_backbone: bool | None = None
    limit: int | None = None
    # DQC trained under device noise (`heads sweep --noise`): the model's name, the scale it was
    # trained at, trajectories per example, and the model's numbers (`heads.noise.NoiseModel`, unscaled)
    noise: str | None = None
    noise_scale: float | None = None
    trajectories: int | None = None
    noise_model: dict | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------- config.json
@dataclass(frozen=True)
class RunConfig:
    """What a run is: its `config.json`."""

    sweep: str
    task: str  # the task's (folder) name, e.g. `cxr-8`
    labels: tuple[str, ...]
    model: str  # cdl | dqc | cdl-finetune | dqc-finetune
    seed: int
    settings: Settings = Settings()
    data: Data = Data()
    backbone: Backbone = Backbone()
    grid: dict | None = None  # {"name": configuration folder, "point": {setting: value}} in a grid
    param_counts: dict = field(default_factory=dict)
    trained_with: tuple = ()  # the seeds (grid: config/seed labels) trained in the same program
    stores: dict = field(default_factory=dict)  # feature store key -> its provenance attributes
    finetune: dict | None = None  # fine-tune only: weights, image caches, augmentation, `resume` settings
    versions: dict = field(default_factory=dict)
    devices: tuple[str, ...] = ()
    started: str | None = None
    schema: int = SCHEMA
    read_schema: int = SCHEMA  # the schema of the file it was read from (older files are upgraded)

    @property
    def base_model(self) -> str:
        """cdl or dqc (a fine-tune run's model without its suffix)."""
        return self.model.removesuffix(FINETUNE_SUFFIX)

    @property
    def config_name(self) -> str:
        """The grid configuration's folder name ('' outside a grid)."""
        return str((self.grid or {}).get("name") or "")

    @property
    def train_dataset(self) -> str | None:
        """The training store's dataset."""
        for store in [*self.stores.values(), *self.data.sources.values()]:
            if isinstance(store, dict) and store.get("split") == "train" and store.get("dataset"):
                return str(store["dataset"])
        return self.data.dataset

    @property
    def point(self) -> dict:
        """The grid point: the settings this configuration varies ({} outside a grid or when not recorded)."""
        point = (self.grid or {}).get("point")
        return dict(point) if isinstance(point, dict) else {}

    def to_json(self) -> dict:
        d = {"schema": self.schema, "sweep": self.sweep, "task": self.task, "labels": list(self.labels),
             "model": self.model, "seed": self.seed, "grid": self.grid, "settings": self.settings.as_dict(),
             "data": {**asdict(self.data), "test_sets": list(self.data.test_sets)},
             "backbone": asdict(self.backbone), "param_counts": self.param_counts,
             "trained_with": list(self.trained_with), "stores": self.stores, "finetune": self.finetune,
             "versions": self.versions, "devices": list(self.devices), "started": self.started}
        return d

    @classmethod
    def from_json(cls, d: Any) -> RunConfig:
        """A record from a parsed `config.json` of any layout this project has written (see the module)."""
        if not isinstance(d, dict):
            raise RecordError("expected a JSON object")
        schema = d.get("schema")
        if schema is None:
            return _upgrade_config(d)
        if schema != SCHEMA:
            raise RecordError(f"schema {schema!r} is not one this version reads (it reads up to {SCHEMA})")
        try:
            data = _dict(d.get("data"))
            return cls(
                sweep=str(d.get("sweep") or ""), task=str(d["task"]), labels=tuple(str(x) for x in d["labels"]),
                model=str(d["model"]), seed=int(d["seed"]),
                settings=Settings(**{f.name: _dict(d.get("settings")).get(f.name) for f in fields(Settings)}),
                data=Data(**{f.name: data.get(f.name) for f in fields(Data) if f.name in data}
                          | {"test_sets": tuple(data.get("test_sets") or ()), "rows": dict(data.get("rows") or {}),
                             "sources": dict(data.get("sources") or {})}),
                backbone=Backbone.read(d.get("backbone")) or Backbone(),
                grid=d.get("grid") if isinstance(d.get("grid"), dict) else None,
                param_counts=_dict(d.get("param_counts")), trained_with=tuple(d.get("trained_with") or ()),
                stores=_dict(d.get("stores")), finetune=d.get("finetune") if isinstance(d.get("finetune"), dict) else None,
                versions=_dict(d.get("versions")), devices=tuple(d.get("devices") or ()), started=d.get("started"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise RecordError(f"not a run record ({type(e).__name__}: {e})") from None


def _task_name(d: dict, labels: tuple[str, ...]) -> str:
    name = d.get("task_name")
    if name:
        return str(name)
    task = d.get("task")
    if isinstance(task, int) and not isinstance(task, bool):
        return f"cxr-{task}"
    if isinstance(task, str) and task:
        return task if task.lower().startswith("cxr") or not task.isdigit() else f"cxr-{task}"
    return f"cxr-{len(labels)}"


def _old_dataset(d: dict) -> str | None:
    data = d.get("data")
    if isinstance(data, dict) and isinstance(data.get("dataset"), str):
        return data["dataset"]
    for key in ("features", "provenance"):
        v = d.get(key)
        if isinstance(v, dict):
            if isinstance(v.get("dataset"), str):
                return v["dataset"]
            t = v.get("train")
            if isinstance(t, dict) and isinstance(t.get("dataset"), str):
                return t["dataset"]
    if isinstance(data, dict) and isinstance(data.get("train"), dict) and isinstance(data["train"].get("dataset"), str):
        return data["train"]["dataset"]
    return None


def _old_backbone(d: dict) -> Backbone:
    found = Backbone.read(d.get("backbone"))
    if found:
        return found
    prov = d.get("provenance")
    if isinstance(prov, dict):
        for key in ("train", *sorted(k for k in prov if k != "train")):
            store = prov.get(key)
            found = Backbone.read(store.get("backbone") if isinstance(store, dict) else None)
            if found:
                return found
    return Backbone()


def _old_data(d: dict) -> Data:
    feats = _dict(d.get("features"))
    extra = {"test_sets": tuple(str(t) for t in feats.get("test_sets") or ()), "dim": _int(feats.get("dim")),
             "features": _str(feats.get("dir")), "external": _str(feats.get("external"))}
    data = d.get("data")
    if isinstance(data, dict) and ("synthetic" in data or "rows" in data or "sources" in data):
        syn = data.get("synthetic")
        rows = {str(k): _int(v) for k, v in (data.get("rows") or {}).items() if _int(v) is not None}
        return Data(data.get("dataset"), syn if isinstance(syn, bool) else None, rows, _int(data.get("views")),
                    _int(data.get("limit")), dict(data.get("sources") or {}), **extra)
    rows: dict[str, int] = {}
    flags: list[bool | None] = []
    if isinstance(data, dict):  # `heads finetune` before schema 1: role -> {dataset, split, rows, synthetic}
        for role, v in data.items():
            if isinstance(v, dict):
                if _int(v.get("rows")) is not None:
                    rows[str(role)] = _int(v["rows"])
                if "synthetic" in v:
                    flags.append(v["synthetic"] if isinstance(v["synthetic"], bool) else None)
    for key, role in (("train_rows", "train"), ("val_rows", "val")):
        if _int(feats.get(key)) is not None:
            rows.setdefault(role, _int(feats[key]))
    for store in _dict(d.get("provenance")).values():
        if isinstance(store, dict) and "synthetic" in store:
            flags.append(store["synthetic"] if isinstance(store["synthetic"], bool) else None)
    if any(f is True for f in flags):
        synthetic = True
    elif flags and all(f is False for f in flags):
        synthetic = False
    else:
        synthetic = None
    limit = _int(_dict(d.get("finetune")).get("limit")) if isinstance(d.get("finetune"), dict) else None
    return Data(_old_dataset(d), synthetic, rows, _int(feats.get("views")), limit, {}, **extra)


def _old_settings(d: dict) -> Settings:
    out: dict[str, Any] = dict.fromkeys(f.name for f in fields(Settings))
    s = d.get("settings")
    contract = isinstance(s, dict) and "mode" in s
    training, head = _dict(d.get("training")), _dict(d.get("head"))
    ft = d.get("finetune") if isinstance(d.get("finetune"), dict) else None
    for k in ("lr", "batch_size", "max_epochs", "patience"):
        out[k] = training.get(k)
    quantum = str(d.get("model", head.get("model", ""))).startswith("dqc") or head.get("model") == "dqc"
    for k in ("layers", "backend", "circuit_init"):
        out[k] = head.get(k) if quantum else None
    out["feature_norm"] = d.get("feature_norm")
    out["mode"] = "finetune" if ft is not None else "features"
    if ft is not None:
        out["freeze_backbone"] = (not ft["backbone_trained"]) if isinstance(ft.get("backbone_trained"), bool) else None
        out["limit"] = ft.get("limit")
    if contract:
        out.update({k: s[k] for k in out if k in s})
    elif isinstance(s, dict):  # `heads finetune` before schema 1: its resume settings
        for k in ("lr", "batch_size", "max_epochs", "patience", "limit", "freeze_backbone"):
            if out.get(k) is None and k in s:
                out[k] = s[k]
    return Settings(**out)


def _old_stores(d: dict) -> dict:
    """The feature stores' provenance: `provenance`, or in the oldest layout the stores `features` names."""
    if isinstance(d.get("provenance"), dict):
        return d["provenance"]
    return {k: v for k, v in _dict(d.get("features")).items() if isinstance(v, dict) and "path" in v}


def _upgrade_config(d: dict) -> RunConfig:
    """A record from a config.json written before the schema (schema 0 or 1, see the module)."""
    labels = d.get("labels", d.get("label_names"))
    if not isinstance(labels, list) or not labels:
        raise RecordError("no `labels` list: not a run's config.json")
    labels = tuple(str(x) for x in labels)
    model = d.get("model") or _dict(d.get("head")).get("model")
    if not isinstance(model, str) or not model:
        raise RecordError("no `model`: not a run's config.json")
    seed = _int(d.get("seed"))
    if seed is None:
        raise RecordError("no `seed`: not a run's config.json")
    s = d.get("settings")
    read_schema = 1 if isinstance(s, dict) and "mode" in s else 0
    finetune = None
    if isinstance(d.get("finetune"), dict):
        finetune = {**d["finetune"], **{k: d[k] for k in ("backbone_description", "preprocessing", "augmentation",
                                                           "image_caches") if k in d}}
        resume = d.get("resume_settings", s if read_schema == 0 else None)
        if resume is not None:
            finetune["resume"] = resume
    trained_with = d.get("seeds_trained_together") or ()
    return RunConfig(
        sweep=str(d.get("sweep") or ""), task=_task_name(d, labels), labels=labels, model=model, seed=seed,
        settings=_old_settings(d), data=_old_data(d), backbone=_old_backbone(d),
        grid=d.get("grid") if isinstance(d.get("grid"), dict) else None, param_counts=_dict(d.get("param_counts")),
        trained_with=tuple(trained_with) if isinstance(trained_with, list) else (), stores=_old_stores(d),
        finetune=finetune, versions=_dict(d.get("versions")), devices=tuple(d.get("devices") or ()),
        started=d.get("started"), read_schema=read_schema)


# ---------------------------------------------------------------------------------------- metrics.json
@dataclass(frozen=True)
class RunResults:
    """What a finished run produced: its `metrics.json`.

    `test_sets`: test set -> `heads.metrics.auroc_report`; `validation`: the best parameters on the
    validation split (loss, mean and per-label AUROC; model selection reads this, never a test set);
    `sanity`: `heads.sanity.check`."""

    task: str
    model: str
    seed: int
    best_epoch: int
    best_val_loss: float
    epochs: int
    stopped_early: bool
    test_sets: dict[str, dict]
    sanity: dict | None = None
    validation: dict | None = None
    train_seconds: float | None = None
    compile_seconds: float | None = None
    complete: bool = True
    schema: int = SCHEMA
    read_schema: int = SCHEMA

    def to_json(self) -> dict:
        d = {"schema": self.schema, "complete": self.complete, "task": self.task, "model": self.model,
             "seed": self.seed, "best_epoch": self.best_epoch, "best_val_loss": self.best_val_loss,
             "epochs": self.epochs, "stopped_early": self.stopped_early, "train_seconds": self.train_seconds,
             "compile_seconds": self.compile_seconds, "validation": self.validation, "test_sets": self.test_sets,
             "sanity": self.sanity}
        return d

    @classmethod
    def from_json(cls, d: Any, config: RunConfig | None = None) -> RunResults:
        """A record from a parsed `metrics.json` (any layout written so far); `config` fills what old files
        lack (their task was a number)."""
        if not isinstance(d, dict):
            raise RecordError("expected a JSON object")
        schema = d.get("schema")
        if schema is not None and schema != SCHEMA:
            raise RecordError(f"schema {schema!r} is not one this version reads (it reads up to {SCHEMA})")
        tests = d.get("test_sets")
        if not isinstance(tests, dict):  # the oldest layout: test set -> report at the top level
            tests = {k: v for k, v in d.items() if isinstance(v, dict) and {"mean_auroc", "mean", "auroc"} & set(v)}
        task = d.get("task")
        if schema is None:
            task = config.task if config is not None else (f"cxr-{task}" if isinstance(task, int) else task)
        try:
            return cls(
                task=str(task), model=str(d.get("model", config.model if config else "")),
                seed=int(d.get("seed", config.seed if config else 0)),
                best_epoch=int(d.get("best_epoch", 0)), best_val_loss=float(d.get("best_val_loss", math.nan)),
                epochs=int(d.get("epochs", 0)), stopped_early=bool(d.get("stopped_early", False)),
                test_sets=tests, sanity=d.get("sanity") if isinstance(d.get("sanity"), dict) else None,
                validation=d.get("validation") if isinstance(d.get("validation"), dict) else None,
                train_seconds=d.get("train_seconds"), compile_seconds=d.get("compile_seconds"),
                complete=bool(d.get("complete", True)), read_schema=SCHEMA if schema is not None else 1)
        except (TypeError, ValueError) as e:
            raise RecordError(f"not a run's metrics ({type(e).__name__}: {e})") from None

