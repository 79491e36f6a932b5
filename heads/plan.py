"""Planning a sweep: its options (`SweepSpec`), the cells of its grid, shards and run groups.

A cell is one run (task, model, configuration, seed). `plan` lists every cell of the grid, tasks
outermost, then models, configurations and seeds; `--shard i/N` keeps the i-th of N contiguous,
nearly equal slices of that list (`shard_cells`), so N cluster jobs share one sweep folder without
overlap and the seeds (and configurations) that share a job still train together. `run_groups`
gathers the cells that train in one compiled program: one (task, model) with the same compiled
shapes (`heads.grid.shape_key`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cxrfeat.errors import UserError
from cxrfeat.labels import ALL, as_task, task_labels, task_name
from cxrfeat.slices import parse_slice, take_slice
from heads import runs
from heads.grid import PER_MEMBER, SETTINGS, Config, configurations, format_value, shape_key, varying
from heads.models import MODELS, make_model
from heads.noise import NoiseModel
from heads.train import SEED_BLOCK, VIEWS_FROM, TrainConfig

DEFAULT_NAME = "sweep"
DEFAULT_DATASET = "nih-cxr-lt"
DEFAULT_EXTERNAL = "mimic-cxr-lt"


# `standardize`: z-score every embedding dimension with the training split's mean and sd (over all
# rows and views) before the head. Not the paper's setting (`none`); it exists because random-weight
# backbones give embeddings of norm ~800 that saturate the DQC's tanh from the first step.
FEATURE_NORMS = ("none", "standardize")


@dataclass(frozen=True)
class HeadConfig:
    """Settings of the DQC head (unused by CDL). `noise`: the device noise model the circuit trains
    under (None: the ideal circuit), multiplied by `noise_scale` (0: the ideal circuit), with
    `trajectories` noise trajectories per example (`heads.models.DQC`)."""

    layers: int = 3
    backend: str = "fast"
    circuit_init: str = "uniform"
    noise: NoiseModel | None = None
    noise_scale: float = 1.0
    trajectories: int = 1

    def noise_model(self) -> NoiseModel | None:
        """The noise the circuit trains under (None: ideal, also at scale 0)."""
        if self.noise is None or self.noise_scale == 0:
            return None
        return self.noise.scaled(self.noise_scale)

    def record(self) -> dict:
        """The head's settings for sweep.json; the noise keys only when there is a noise model (so the
        settings of a sweep without noise read as they always have)."""
        d = {"layers": self.layers, "backend": self.backend, "circuit_init": self.circuit_init}
        if self.noise is not None:
            d.update(noise=self.noise.to_json(), noise_scale=self.noise_scale, trajectories=self.trajectories)
        return d


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
    # Members per device in one compiled call (`heads.train`); a resumed sweep keeps the block it recorded.
    seed_block: int = SEED_BLOCK

    def __post_init__(self) -> None:  # `--tasks 8,8` is task 8 once, everywhere (sweep.json too)
        object.__setattr__(self, "tasks", list(dict.fromkeys(self.tasks)))
        object.__setattr__(self, "models", list(dict.fromkeys(self.models)))
        object.__setattr__(self, "grid", {k: list(v) for k, v in self.grid.items()})

    def values(self) -> dict[str, list]:
        """Every setting of the grid -> its list of values (one value for a setting that does not vary)."""
        base = {"lr": self.train.lr, "layers": self.head.layers, "circuit_init": self.head.circuit_init,
                "feature_norm": self.feature_norm, "batch_size": self.train.batch_size, "patience": self.train.patience,
                "noise_scale": self.head.noise_scale, "trajectories": self.head.trajectories}
        return {k: list(self.grid.get(k) or [base[k]]) for k in SETTINGS}

    def configs(self, model: str) -> list[Config]:
        return configurations(self.values(), model)

    def at(self, config: Config) -> SweepSpec:
        """This sweep with the single configuration `config` (grid-free: its settings as plain values)."""
        v = config.values
        return replace(self, grid={}, feature_norm=v["feature_norm"],
                       train=replace(self.train, lr=v["lr"], batch_size=v["batch_size"], patience=v["patience"]),
                       head=replace(self.head, layers=v["layers"], circuit_init=v["circuit_init"],
                                    noise_scale=v["noise_scale"], trajectories=v["trajectories"]))

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
        if self.head.noise is None:
            given = [o for o, k, default in (("--noise-scale", "noise_scale", [1.0]), ("--trajectories", "trajectories", [1]))
                     if values[k] != default]
            if given:
                raise UserError(f"{' and '.join(given)} set the noise a DQC trains under: give the noise model with "
                                f"--noise MODEL (a TOML file or a preset)")
        elif "dqc" not in self.models:
            raise UserError("--noise trains DQC heads under a device noise model, and --models has no dqc")
        for key, options in values.items():  # each value once, with the others at their first value
            for value in options:
                one = self.at(Config("", {}, {**{k: v[0] for k, v in values.items()}, key: value}))
                if one.head.noise_scale < 0:
                    raise UserError(f"--noise-scale {one.head.noise_scale:g}: a scale is ≥ 0 (0 trains the ideal circuit)")
                for model in self.models:
                    make_model(model, 2, layers=one.head.layers, backend=one.head.backend,
                               circuit_init=one.head.circuit_init, noise=one.head.noise_model(),
                               trajectories=one.head.trajectories)
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
        training, head = asdict(self.train), self.head.record()
        for k in ("lr", "batch_size", "patience"):
            if k in vary:
                training[k] = values[k]
        for k in ("layers", "circuit_init", "noise_scale", "trajectories"):
            if k in vary:
                head[k] = values[k]
        return {"dataset": self.dataset, "external": self.external, "training": training, "head": head,
                "feature_norm": values["feature_norm"] if "feature_norm" in vary else self.feature_norm,
                "seed_block": self.seed_block, "views_from": self.views_from}

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

    def run(self, spec: SweepSpec) -> runs.Run:
        """The run folder of this cell."""
        return runs.Run(task_name(self.task), self.model, self.seed, self.run_dir(spec), self.config.name)

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


def run_groups(cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells that train together: same (task, model) and compiled shapes (`heads.grid.shape_key`)."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((task_name(c.task), c.model, shape_key(c.config, c.model)), []).append(c)
    return list(groups.values())


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
