"""Read a sweep's runs folder for the report, through the run-folder API (`heads.runs`).

Both layouts are read (`heads.runs.iter_runs`): `runs/<sweep>/cxr-<n>/<model>/seed-<s>/` and, for a
hyper-parameter grid, `.../<model>/<config>/seed-<s>/`; a run's `config_name` is '' in the plain
one. Each run's `config.json` and `metrics.json` are read as records (`heads.record`), whatever
layout wrote them. Where a grid run's record has no `point`, it is the settings in which the
model's configurations differ.

A run counts once its `DONE` file exists (written last); a seed folder without it is reported as
unfinished and left out. A finished run that is damaged (a file missing or unreadable) or whose
record belongs to another place (task, model, configuration or seed) is left out and named in
`Sweep.notes`, as is what a partial sweep lacks (tasks, models, seeds), so the report says so
instead of failing or reporting numbers it cannot stand behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from analysis import provenance, stats
from cxrfeat import atomic
from cxrfeat.errors import UserError
from cxrfeat.labels import canonical
from cxrfeat.labels import task_sort_key as task_key
from heads import runs as run_folders
from heads.record import RunConfig, RunResults

TEST_SET_ORDER = ("nih-cxr-lt", "mimic-cxr-lt")
_LAYOUT = ("runs/<sweep>/cxr-<n>/<model>/seed-<s>/ (a grid: .../<model>/<config>/seed-<s>/) with config.json, "
           "predictions/*.npz and DONE")


model_key = run_folders.model_sort_key


def test_set_key(name: str) -> tuple[int, str]:
    return (TEST_SET_ORDER.index(name) if name in TEST_SET_ORDER else len(TEST_SET_ORDER), name)


def comparisons(models) -> list[tuple[str, str]]:
    """The (classical, quantum) pairs to compare: cdl vs dqc, and cdl-<x> vs dqc-<x> (e.g. finetune)."""
    models = set(models)
    pairs = [("cdl" + m[3:], m) for m in models if m.startswith("dqc") and "cdl" + m[3:] in models]
    return sorted(pairs, key=lambda p: model_key(p[1]))


@dataclass
class Predictions:
    """One run's predictions on one test set (`predictions/<test-set>.npz`)."""

    label_names: list[str]
    y_true: np.ndarray  # (N, L) int in {1, 0, -1}
    y_prob: np.ndarray  # (N, L) float
    path: Path

    @cached_property
    def auroc(self) -> np.ndarray:
        """Per-label AUROC (L,), NaN where undefined."""
        try:
            return stats.auroc(self.y_true, self.y_prob)
        except ValueError as e:
            raise UserError(f"{_shown(self.path)}: {e}") from None

    @cached_property
    def auprc(self) -> np.ndarray:
        """Per-label AUPRC (L,) (scikit-learn average precision), NaN where undefined."""
        return stats.auprc(self.y_true, self.y_prob)

    @property
    def n(self) -> int:
        return int(self.y_true.shape[0])


@dataclass
class ReportRun:
    """A finished run as the report reads it: its records, history and predictions (`heads.runs.Run` is its folder)."""

    task: str
    model: str
    seed: int
    path: Path
    record: RunConfig  # config.json
    history: list[dict[str, Any]]
    predictions: dict[str, Predictions]
    results: RunResults  # metrics.json
    config_name: str = ""  # the grid configuration ('' outside a grid)
    point: dict[str, Any] = field(default_factory=dict)  # its varying settings ({} outside a grid)

    @cached_property
    def sanity(self) -> provenance.Sanity:
        return provenance.run_sanity(self.results, self.predictions, self.history)


@dataclass
class Sweep:
    """The finished runs of a sweep folder, and notes on what is missing or odd."""

    path: Path
    runs: list[ReportRun]
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] | None = None
    store_attrs: list[dict[str, Any]] = field(default_factory=list)  # feature stores' attributes (fallback)

    def backbone(self, run: ReportRun) -> provenance.Backbone:
        return provenance.run_backbone(run.record, self.store_attrs)

    def data(self, run: ReportRun) -> provenance.Data:
        return provenance.run_data(run.record, self.store_attrs)

    def settings(self, run: ReportRun) -> dict[str, Any]:
        return provenance.run_settings(run.record, self.meta)

    def test_sizes(self, task: str, model: str, test_set: str) -> list[int]:
        """Images in the test set per finished seed (sorted, distinct)."""
        return sorted({r.predictions[test_set].n for r in self.runs_of(task, model).values()
                       if test_set in r.predictions})

    def flag_counts(self, task: str, model: str, test_set: str | None = None,
                    label: str | None = None) -> tuple[dict[str, int], int]:
        """How many of the row's seeds fail each check (for one test set / label), and the number of seeds."""
        runs = [r for r in self.runs_of(task, model).values() if test_set is None or test_set in r.predictions]
        counts: dict[str, int] = {}
        for r in runs:
            for f in r.sanity.flags_for(test_set, label):
                counts[f] = counts.get(f, 0) + 1
        return counts, len(runs)

    def flag_text(self, task: str, model: str, test_set: str | None = None, label: str | None = None) -> str:
        """'⚠ constant predictions in 3/5 seeds; ...' or '' when every seed passes every check."""
        return provenance.describe_flags(*self.flag_counts(task, model, test_set, label))

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def tasks(self) -> list[str]:
        return sorted({r.task for r in self.runs}, key=task_key)

    def models(self, task: str) -> list[str]:
        return sorted({r.model for r in self.runs if r.task == task}, key=model_key)

    def runs_of(self, task: str, model: str, config: str | None = None) -> dict[int, ReportRun]:
        """seed -> run (of one grid configuration when `config` is given; a grid needs it, or `select`)."""
        return {r.seed: r for r in self.runs if r.task == task and r.model == model
                and (config is None or r.config_name == config)}

    @property
    def is_grid(self) -> bool:
        """True when the runs lie in the grid layout (a configuration folder under the model)."""
        return any(r.config_name for r in self.runs)

    def configs(self, task: str, model: str) -> list[str]:
        """The grid configurations of a task × model, sorted by name ([''] outside a grid)."""
        return sorted({r.config_name for r in self.runs if r.task == task and r.model == model})

    def select(self, chosen: dict[tuple[str, str], str]) -> Sweep:
        """The sweep of one configuration per (task, model): `chosen[(task, model)]` (others dropped)."""
        runs = [r for r in self.runs if chosen.get((r.task, r.model)) == r.config_name]
        return Sweep(self.path, runs, list(self.notes), self.meta, self.store_attrs)

    def subset(self, tasks=None, models=None, test_sets=None) -> Sweep:
        """The sweep restricted to some tasks, models and test sets (None: all). A name the sweep does not
        have is a `UserError` listing the ones it has; a task may be given as `cxr-8`, `CXR-8` or `8`."""
        def pick(given, have: list[str], what: str, option: str, alias=lambda x: x) -> set[str] | None:
            if not given:
                return None
            lookup = {alias(h).lower(): h for h in have} | {h.lower(): h for h in have}
            out = set()
            for g in given:
                if str(g).strip().lower() not in lookup:
                    raise UserError(f"{option} {g}: this sweep has no such {what}; it has {', '.join(have)}")
                out.add(lookup[str(g).strip().lower()])
            return out

        t = pick(tasks, self.tasks, "task", "--tasks", lambda x: x.removeprefix("cxr-"))
        m = pick(models, sorted({r.model for r in self.runs}, key=model_key), "model", "--models")
        ts = pick(test_sets, self.test_sets(), "test set", "--test-sets")
        runs = [r if ts is None else replace(r, predictions={k: v for k, v in r.predictions.items() if k in ts})
                for r in self.runs if (t is None or r.task in t) and (m is None or r.model in m)]
        dropped = ({x for x in self.tasks if t is not None and x not in t}
                   | {r.model for r in self.runs if m is not None and r.model not in m})
        notes = [n for n in self.notes
                 if not any(re.search(rf"(?<![\w-]){re.escape(x)}(?![\w-])", n) for x in dropped)]
        return Sweep(self.path, runs, notes, self.meta, self.store_attrs)

    def test_sets(self, task: str | None = None) -> list[str]:
        names = {t for r in self.runs if task is None or r.task == task for t in r.predictions}
        return sorted(names, key=test_set_key)

    def label_names(self, task: str) -> list[str]:
        """The task's labels (from its predictions), in the order the runs store them."""
        for r in sorted(self.runs, key=lambda r: (model_key(r.model), r.seed)):
            if r.task == task:
                for p in r.predictions.values():
                    return list(p.label_names)
                return [canonical(n) for n in r.record.labels]
        return []

    def label_aurocs(self, task: str, model: str, test_set: str, metric: str = "auroc") -> dict[int, dict[str, float]]:
        """seed -> {label: AUROC} (or `metric="auprc"`) for the runs that have predictions on the test set."""
        out = {}
        for seed, run in self.runs_of(task, model).items():
            pred = run.predictions.get(test_set)
            if pred is not None:
                out[seed] = dict(zip(pred.label_names, getattr(pred, metric).tolist(), strict=True))
        return out

    def mean_aurocs(self, task: str, model: str, test_set: str, metric: str = "auroc") -> dict[int, float]:
        """seed -> mean AUROC (or `metric="auprc"`) over the labels where it is defined."""
        return {s: stats.nanmean(list(v.values()))
                for s, v in self.label_aurocs(task, model, test_set, metric).items()}


# ---------------------------------------------------------------------------------------------
def find_sweep(runs: str | Path | None) -> Path:
    """The sweep folder to report on: `runs` itself, or the single sweep under `runs/` when None."""
    if runs is not None:
        return Path(runs)
    root = Path("runs")
    if not root.is_dir():
        raise UserError("no runs/ folder here: pass --runs runs/<sweep> (a folder written by `heads sweep`)")
    if _task_dirs(root):
        return root
    sweeps = sorted(d.name for d in root.iterdir() if d.is_dir() and _task_dirs(d))
    if len(sweeps) == 1:
        return root / sweeps[0]
    if not sweeps:
        raise UserError(f"{root}: holds no sweep ({_LAYOUT}); pass --runs")
    raise UserError(f"{root}: holds several sweeps ({', '.join(sweeps)}); pick one with --runs runs/<sweep>")


def load_sweep(path: str | Path) -> Sweep:
    """Read every finished run of a sweep folder; UserError when the folder is not a runs folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such runs folder")
    if not path.is_dir():
        raise UserError(f"{path}: not a runs folder (a file, expected {_LAYOUT})")
    folders = list(run_folders.iter_runs(path))
    if not folders:
        inner = sorted(d.name for d in path.iterdir() if d.is_dir() and _task_dirs(d))
        hint = f"; it holds sweeps {', '.join(inner)}: pass --runs {path / inner[0]}" if inner else ""
        raise UserError(f"{path}: not a runs folder (expected {_LAYOUT}){hint}")

    notes: list[str] = []
    meta = _sweep_record(path, notes)
    runs: list[ReportRun] = []
    unfinished: set[tuple[str, str, str, int]] = set()
    for folder in folders:
        if not folder.done:
            unfinished.add((folder.task, folder.model, folder.config_name, folder.seed))
            continue
        try:
            runs.append(_load_run(folder))
        except UserError as e:
            notes.append(f"{_shown(folder.path, path)}: left out: {_shown_error(e, path)}")
    if not runs:
        raise UserError(f"{path}: no finished run yet (no seed folder has its DONE file); nothing to report"
                        + (f" ({notes[0]})" if notes else ""))
    sweep = Sweep(path=path, runs=runs, meta=meta)
    _fill_points(sweep)
    sweep.notes = notes + _missing(sweep, unfinished) + _cross_check(sweep)
    return sweep


def _task_dirs(path: Path) -> list[Path]:
    """Sub-folders that hold runs (either layout)."""
    return sorted({r.path.parents[2 if r.config_name else 1] for r in run_folders.iter_runs(path)})


def _shown_error(e: UserError, sweep: Path) -> str:
    """An error message with the absolute paths in it shown as the report shows paths."""
    text = str(e)
    base = str(sweep.resolve().parent) + "/"
    return text.replace(base, "")


def _fill_points(sweep: Sweep) -> None:
    """Each grid run's `point`: its record's grid point, else the settings its model's configurations differ in."""
    for run in sweep.runs:
        run.point = run.record.point
    for task in sweep.tasks:
        for model in sweep.models(task):
            runs = [r for r in sweep.runs if r.task == task and r.model == model and r.config_name and not r.point]
            if not runs:
                continue
            each = {r.path: provenance.run_settings(r.record) for r in sweep.runs if r.task == task and r.model == model}
            keys = [k for k in provenance.SETTING_KEYS if len({repr(s.get(k)) for s in each.values()}) > 1]
            for r in runs:
                r.point = {k: each[r.path].get(k) for k in keys}


def _sweep_record(path: Path, notes: list[str]) -> dict | None:
    """sweep.json, or None (with a note) when it is absent or damaged: the runs carry their own records,
    so the report goes on without it (it only says which tasks, models and seeds were asked for)."""
    file = path / "sweep.json"
    if not file.is_file():
        return None
    try:
        return atomic.read_json(file, what="the sweep record")
    except (UserError, OSError) as e:
        notes.append(f"{_shown(file, path)}: left out ({_shown_error(UserError(str(e)), path)}); the runs' own "
                     f"records are used, and missing seeds cannot be told from seeds never asked for")
        return None


def _shown(path: Path, sweep: Path | None = None) -> str:
    """A path as the report shows it: relative to the working folder, else to the sweep's parent, else its name.

    The report never prints an absolute path (it is read elsewhere, by others).
    """
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    for base in (Path.cwd(), *([sweep.resolve().parent] if sweep is not None else [])):
        try:
            return path.relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return path.name


def _load_run(folder: run_folders.Run) -> ReportRun:
    """A finished run, or UserError when it is damaged or belongs to another place."""
    missing = [f for f in run_folders.damage(folder.path) if not f.startswith("metrics.json (")]
    if missing:  # an unreadable or incomplete metrics.json is named by reading it, below
        raise UserError(f"marked DONE but lacks {', '.join(missing)} (damaged)")
    record = folder.config()
    results = folder.results(record)
    preds = {npz.stem: _load_predictions(npz, record) for npz in folder.prediction_files()}
    return ReportRun(folder.task, folder.model, folder.seed, folder.path, record, folder.history(), preds, results,
               folder.config_name)


def _load_predictions(path: Path, record: RunConfig) -> Predictions:
    try:
        with np.load(path, allow_pickle=False) as z:
            y_true = np.asarray(z["y_true"])
            y_prob = np.asarray(z["y_prob"], dtype=np.float64)
            try:
                names = [str(n) for n in z["label_names"]] if "label_names" in z.files else None
            except ValueError:  # stored as Python objects: fall back on config.json
                names = None
    except KeyError as e:
        raise UserError(f"{path}: missing array {e} (needs y_true, y_prob, label_names)") from None
    except Exception as e:  # noqa: BLE001 - anything numpy raises here means an unreadable file
        raise UserError(f"{path}: unreadable predictions file ({e})") from None
    if names is None:
        names = list(record.labels)
    if y_true.ndim == 1:
        y_true, y_prob = y_true[:, None], y_prob[:, None]
    if y_true.shape != y_prob.shape or y_true.shape[1] != len(names):
        raise UserError(
            f"{path}: y_true {y_true.shape}, y_prob {y_prob.shape} and {len(names)} label names do not match"
        )
    return Predictions([canonical(n) for n in names], y_true.astype(np.int64), y_prob, path)


# ---------------------------------------------------------------------------------------------
def _expected_seeds(meta: dict[str, Any] | None) -> list[int] | None:
    seeds = (meta or {}).get("seeds")
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > 0:
        return list(range(1, seeds + 1))
    if isinstance(seeds, list) and all(isinstance(s, int) for s in seeds):
        return sorted(seeds)
    return None


def _expected_tasks(meta: dict[str, Any] | None) -> list[str]:
    out = []
    for t in (meta or {}).get("tasks", []) or []:
        t = str(t).lower()
        out.append(t if t.startswith("cxr-") else f"cxr-{t.removeprefix('cxr')}")
    return out


def _missing(sweep: Sweep, unfinished: set[tuple[str, str, str, int]]) -> list[str]:
    """Lines saying which tasks, models (grid configurations) and seeds a partial sweep lacks."""
    meta_seeds = _expected_seeds(sweep.meta)
    meta_models = [str(m) for m in (sweep.meta or {}).get("models", []) or []]
    tasks = sorted(set(sweep.tasks) | set(_expected_tasks(sweep.meta)) | {t for t, _, _, _ in unfinished}, key=task_key)
    base_models = sorted({r.model for r in sweep.runs if "-" not in r.model} | set(meta_models), key=model_key)
    notes = []
    for task in tasks:
        present = {r.model for r in sweep.runs if r.task == task} | {m for t, m, _, _ in unfinished if t == task}
        expected = set(base_models) | present
        for m in list(present):  # a lone dqc-x or cdl-x lacks its partner
            if m.startswith(("cdl", "dqc")) and "-" in m:
                expected.add(("dqc" if m.startswith("cdl") else "cdl") + m[3:])
        for model in sorted(expected, key=model_key):
            configs = sorted(set(sweep.configs(task, model))
                             | {c for t, m, c, _ in unfinished if t == task and m == model}) or [""]
            family = {r.seed for r in sweep.runs if r.task == task and ("-" in r.model) == ("-" in model)}
            for config in configs:
                what = f"{task} / {model}" + (f" / {config}" if config else "")
                done = set(sweep.runs_of(task, model, config))
                started = {s for t, m, c, s in unfinished if (t, m, c) == (task, model, config)}
                want = set(meta_seeds) if meta_seeds else family | started
                if not done and not started:
                    notes.append(f"{what}: no runs (expected seeds {_seed_list(want)})")
                    continue
                if started:
                    notes.append(f"{what}: seed(s) {_seed_list(started)} unfinished (no DONE file), left out")
                absent = want - done - started
                if absent:
                    notes.append(f"{what}: seed(s) {_seed_list(absent)} missing")
    # A finished run without predictions on a test set that its task's other runs have.
    for task in sweep.tasks:
        for test_set in sweep.test_sets(task):
            lacking = [f"{r.model}{'/' + r.config_name if r.config_name else ''} seed {r.seed}"
                       for r in sweep.runs if r.task == task and test_set not in r.predictions]
            if lacking:
                notes.append(f"{task}: no {test_set} predictions for {', '.join(lacking)}")
    return notes


def _seed_list(seeds) -> str:
    return ", ".join(str(s) for s in sorted(seeds)) or "none"


def _cross_check(sweep: Sweep) -> list[str]:
    """Compare the recomputed mean AUROC with what the runs wrote to metrics.json."""
    differ = []
    for run in sweep.runs:
        path = _shown(run.path / "metrics.json", sweep.path)
        for test_set, pred in run.predictions.items():
            written = _written_mean(run.results, test_set)
            ours = stats.nanmean(pred.auroc)
            if written is not None and np.isfinite(ours) and abs(written - ours) > 1e-6:
                differ.append((abs(written - ours), path, test_set, written, ours))
    notes = []
    if differ:
        _, path, test_set, written, ours = max(differ, key=lambda d: d[0])
        notes.append(
            f"{len(differ)} mean AUROC(s) in the runs' metrics.json differ from those recomputed from the "
            f"predictions; the report uses the recomputed ones. Largest: {path}: {test_set} is {written:.6f} "
            f"there but {ours:.6f} recomputed"
        )
    return notes


def _written_mean(results: RunResults, test_set: str) -> float | None:
    entry = results.test_sets.get(test_set)
    if isinstance(entry, int | float):
        return float(entry)
    if isinstance(entry, dict):
        for key in ("mean_auroc", "mean", "auroc"):
            v = entry.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                return float(v)
    return None
