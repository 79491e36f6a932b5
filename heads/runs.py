"""Run folders: `runs/<sweep>/<task>/<model>/seed-<s>/` (docs/design.md "Run layout"), plain files only.

- `config.json` — the run record (`heads.record.RunConfig`, docs/design.md "Run record").
- `feature_norm.npz` — the standardization constants, when the run uses `--feature-norm standardize`.
- `history.jsonl` — one JSON line per epoch: epoch, train_loss, val_loss, best_so_far, improved,
  seconds, order_digest (see `heads.train.order_digest`).
- `best.safetensors` — the best-validation-loss parameters, keys '/'-joined (`pre/kernel`, ...).
- `predictions/<test-set>.npz` — `ids`, `y_true` (int8, -1 unknown), `y_prob`, `label_names`.
- `metrics.json` — what the run produced (`heads.record.RunResults`): per test set, validation, sanity.
- `DONE` — written last: a run folder without it is unfinished and is redone by a sweep. A run
  with `DONE` whose other files are not all there is damaged (`damage`): a sweep says so and redoes it.

A hyper-parameter grid adds one level: `runs/<sweep>/<task>/<model>/<config>/seed-<s>/`
(`heads.grid`; config.json `grid` holds the configuration's name and point).
`runs/<sweep>/sweep.json` records the grid and the settings. Every file is written atomically.
`.seed-<s>.lock` beside a run folder is held (`cxrfeat.locks`) by the process working on that
run; only its holder may clear an unfinished run folder (`start`).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from cxrfeat import atomic
from cxrfeat.errors import UserError
from cxrfeat.labels import task_name, task_sort_key
from cxrfeat.locks import Lock
from heads import sanity
from heads.metrics import auroc_report
from heads.record import RecordError, RunConfig, RunResults

DONE = "DONE"
LOCK_SUFFIX = ".lock"
RUN_FILES = ("config.json", "history.jsonl", "best.safetensors", "metrics.json")
SEED_DIR = re.compile(r"^seed-(\d+)$")


def seed_dir(runs: str | Path, name: str, task: int, model: str, seed: int, config: str = "") -> Path:
    """A run folder: `<runs>/<name>/<task>/<model>/[<config>/]seed-<s>` (`config`: a grid
    configuration's name, `heads.grid`; "" without a grid)."""
    return Path(runs) / name / task_name(task) / model / config / f"seed-{seed}"


def run_lock_path(path: str | Path) -> Path:
    """The lock file of one run folder (`.seed-<s>.lock` beside it), held by the process training it."""
    path = Path(path)
    return path.parent / f".{path.name}{LOCK_SUFFIX}"


def is_done(path: str | Path) -> bool:
    return (Path(path) / DONE).exists()


def damage(path: str | Path, test_sets=()) -> list[str]:
    """The files a finished run (one with `DONE`) should have but has not (empty: intact, or unfinished)."""
    path = Path(path)
    if not is_done(path):
        return []
    wanted = [*RUN_FILES, *(f"predictions/{t}.npz" for t in test_sets)]
    missing = [f for f in wanted if not (path / f).is_file()]
    if "metrics.json" not in missing:
        try:
            metrics = json.loads((path / "metrics.json").read_text())
            if not isinstance(metrics, dict):
                missing.append("metrics.json (not a JSON object)")
            elif metrics.get("complete") is False:
                missing.append("metrics.json (incomplete)")
        except (OSError, ValueError):
            missing.append("metrics.json (unreadable)")
    return missing


def invalidate(path: str | Path) -> None:
    """Mark a (damaged) finished run unfinished again, so that `start` may clear it."""
    (Path(path) / DONE).unlink(missing_ok=True)


def start(path: str | Path, config: RunConfig | dict, *, lock: Lock | None = None) -> None:
    """Begin (or begin again) a run: clear what an unfinished earlier attempt left, write config.json.

    A finished run is never cleared (`invalidate` it first). A sweep passes the run's held lock
    (`run_lock_path`), so that no other process can be training the run folder it clears.
    """
    path = Path(path)
    if lock is not None and not (lock.held and Path(lock.path) == run_lock_path(path)):
        raise RuntimeError(f"{path}: runs.start needs the held lock {run_lock_path(path)}, not {lock.path}")
    if is_done(path):
        raise RuntimeError(f"{path}: a finished run is never cleared by runs.start")
    if path.exists():
        shutil.rmtree(path)
    atomic.write_json(path / "config.json", config.to_json() if isinstance(config, RunConfig) else config)


def write_history(path: str | Path, rows: list[dict]) -> None:
    atomic.write_text(Path(path) / "history.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def read_history(path: str | Path) -> list[dict]:
    text = (Path(path) / "history.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested dict of arrays as one level with '/'-joined keys."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = np.ascontiguousarray(np.asarray(value))
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_params(path: str | Path, params: dict, metadata: dict[str, str] | None = None) -> None:
    atomic.write_bytes(Path(path) / "best.safetensors", st_save(flatten(params), metadata=metadata))


def load_params(path: str | Path) -> dict:
    """The best parameters of a run as a nested dict (ready for `model.apply({'params': ...})`)."""
    return unflatten(st_load((Path(path) / "best.safetensors").read_bytes()))


def save_predictions(path: str | Path, test_set: str, *, ids, y_true, y_prob, label_names) -> None:
    buf = io.BytesIO()
    np.savez(buf, ids=np.asarray(ids, dtype=str), y_true=np.asarray(y_true, np.int8),
             y_prob=np.asarray(y_prob, np.float32), label_names=np.asarray(label_names, dtype=str))
    atomic.write_bytes(Path(path) / "predictions" / f"{test_set}.npz", buf.getvalue())


def load_predictions(path: str | Path, test_set: str) -> dict[str, np.ndarray]:
    with np.load(Path(path) / "predictions" / f"{test_set}.npz") as z:
        return {k: z[k] for k in z.files}


def write_metrics(path: str | Path, metrics: dict) -> None:
    atomic.write_json(Path(path) / "metrics.json", metrics)


def read_metrics(path: str | Path) -> dict:
    return json.loads((Path(path) / "metrics.json").read_text())


def finish(path: str | Path) -> None:
    """Mark a run finished: the last file written."""
    atomic.write_text(Path(path) / DONE, time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))


# ---------------------------------------------------------------------------------------- records
def read_json(path: str | Path, what: str) -> dict:
    """A run file's JSON object, or a one-line UserError naming the file and `what` it should be."""
    path = Path(path)
    try:
        return atomic.read_json(path, what=f"the {what}", remedy=f"delete {path.parent} to train the run again")
    except FileNotFoundError:
        raise UserError(f"{path}: missing (the {what})") from None
    except OSError as e:
        raise UserError(f"{path}: unreadable ({e.strerror})") from None


def write_config(path: str | Path, config: RunConfig) -> None:
    atomic.write_json(Path(path) / "config.json", config.to_json())


def read_config(path: str | Path) -> RunConfig:
    """The run record of the run folder `path` (any layout written so far), not yet checked against the path."""
    file = Path(path) / "config.json"
    try:
        return RunConfig.from_json(read_json(file, "run's configuration"))
    except RecordError as e:
        raise UserError(f"{file}: {e}") from None


def write_results(path: str | Path, results: RunResults) -> None:
    atomic.write_json(Path(path) / "metrics.json", results.to_json())


def read_results(path: str | Path, config: RunConfig | None = None) -> RunResults:
    file = Path(path) / "metrics.json"
    try:
        return RunResults.from_json(read_json(file, "run's metrics"), config)
    except RecordError as e:
        raise UserError(f"{file}: {e}") from None


# ---------------------------------------------------------------------------------------- run folders
@dataclass(frozen=True)
class Run:
    """A run folder: where it stands in its sweep (`task/model/[config/]seed-<s>`) and what it holds."""

    task: str  # the task's folder name, e.g. 'cxr-8' or 'cxr-40'
    model: str
    seed: int
    path: Path
    config_name: str = ""  # the grid configuration's name ("" without a grid)

    @property
    def done(self) -> bool:
        return is_done(self.path)

    @property
    def label(self) -> str:
        """How messages name the run: `cxr-8 dqc lr-1e-3 seed 2`."""
        return f"{self.task} {self.model}{' ' + self.config_name if self.config_name else ''} seed {self.seed}"

    def config(self) -> RunConfig:
        """config.json as a record, checked against where the folder stands: a run copied or moved into
        another task's, model's or seed's folder (or another configuration's, in a grid) is refused,
        naming the file. One configuration of a grid copied out into a plain sweep reads as a plain run."""
        record = read_config(self.path)
        found = {"task": record.task, "model": record.model, "seed": record.seed}
        wanted = {"task": self.task, "model": self.model, "seed": self.seed}
        if self.config_name:
            found["configuration"], wanted["configuration"] = record.config_name, self.config_name
        wrong = [f"{k} {found[k]!r} (the folder says {wanted[k]!r})" for k in wanted if found[k] != wanted[k]]
        if wrong:
            raise UserError(f"{self.path / 'config.json'}: a run of another place: {'; '.join(wrong)} "
                            f"(moved or copied here?)")
        return record

    def results(self, config: RunConfig | None = None) -> RunResults:
        """metrics.json as a record, checked against the run's task, model and seed."""
        config = config or self.config()
        results = read_results(self.path, config)
        if (results.task, results.model, results.seed) != (config.task, config.model, config.seed):
            raise UserError(f"{self.path / 'metrics.json'}: results of {results.task} {results.model} seed "
                            f"{results.seed}, not of this run ({config.task} {config.model} seed {config.seed})")
        return results

    def history(self) -> list[dict]:
        """history.jsonl, one dict per epoch ([] when absent)."""
        file = self.path / "history.jsonl"
        if not file.is_file():
            return []
        out = []
        for i, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{file}: line {i} is not JSON ({e})") from None
            if isinstance(row, dict):
                out.append(row)
        return out

    def prediction_files(self) -> list[Path]:
        return sorted((self.path / "predictions").glob("*.npz"))


def open_run(path: str | Path) -> Run:
    """The run folder at `path`, placed by its path: `<task>/<model>/[<config>/]seed-<s>` (the config level
    is read from config.json `grid`)."""
    path = Path(path)
    m = SEED_DIR.match(path.name)
    if not m or not path.is_dir():
        raise UserError(f"{path}: not a run folder (expected runs/<sweep>/<task>/<model>/[<config>/]seed-<s>)")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a run folder (no config.json)")
    return _place(path)


def _place(path: Path) -> Run:
    """A seed folder placed by its own path (the configuration level read from config.json `grid`)."""
    seed = int(SEED_DIR.match(path.name).group(1))
    grid = _grid_name(path)
    if grid and grid == path.parent.name:
        return Run(path.parents[2].name, path.parents[1].name, seed, path, grid)
    return Run(path.parents[1].name, path.parent.name, seed, path)


def _grid_name(seed_dir: Path) -> str:
    """config.json `grid.name` of a seed folder, '' when it has none or cannot be read."""
    try:
        grid = json.loads((seed_dir / "config.json").read_text()).get("grid")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return ""
    return str(grid.get("name") or "") if isinstance(grid, dict) else ""


def iter_runs(sweep: str | Path) -> Iterator[Run]:
    """Every run folder under a sweep folder, finished or not, in both layouts, sorted by task, model,
    configuration and seed. A folder at the grid depth counts when its config.json names its
    configuration folder (`grid.name`), so a folder holding sweeps is never taken for a grid."""
    found = []
    for p in Path(sweep).glob("*/*/seed-*"):
        m = SEED_DIR.match(p.name)
        if m and p.is_dir():
            found.append(Run(p.parents[1].name, p.parent.name, int(m.group(1)), p))
    for p in Path(sweep).glob("*/*/*/seed-*"):
        m = SEED_DIR.match(p.name)
        if m and p.is_dir() and _grid_name(p) == p.parent.name:
            found.append(Run(p.parents[2].name, p.parents[1].name, int(m.group(1)), p, p.parent.name))
    yield from sorted(found, key=lambda r: (task_sort_key(r.task), model_sort_key(r.model), r.config_name, r.seed))


def runs_under(folder: str | Path) -> list[Run]:
    """Every run folder at any depth under `folder` (a sweep, task, model or configuration folder, or a
    folder of sweeps), each placed by its own path; sorted as `iter_runs` sorts."""
    found = [_place(p) for p in Path(folder).rglob("seed-*") if SEED_DIR.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda r: (task_sort_key(r.task), model_sort_key(r.model), r.config_name, r.seed,
                                        str(r.path)))


MODEL_ORDER = ("cdl", "dqc", "cdl-finetune", "dqc-finetune")


def model_sort_key(model: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER), model)


# ---------------------------------------------------------------------------------------- finishing a run
@dataclass(frozen=True)
class TestSet:
    """One test set's rows as a run is evaluated on it."""

    ids: np.ndarray
    y_true: np.ndarray  # (N, L) in {1, 0, -1}
    y_prob: np.ndarray  # (N, L) the head's probabilities


def finish_run(path: str | Path, config: RunConfig, *, params: dict, params_metadata: dict[str, str],
               tests: dict[str, TestSet], validation: tuple[np.ndarray, np.ndarray] | None, history: list[dict],
               best_epoch: int, best_val_loss: float, saturated: float | None,
               train_seconds: float, compile_seconds: float | None = None) -> RunResults:
    """Write a trained run's outputs, in this order: best parameters, history, predictions per test set,
    metrics (AUROC per test set and on validation, sanity checks) and finally `DONE`."""
    path = Path(path)
    labels = list(config.labels)
    s = config.settings
    save_params(path, params, metadata=params_metadata)
    write_history(path, history)
    reports = {}
    for key, t in tests.items():
        save_predictions(path, key, ids=t.ids, y_true=t.y_true, y_prob=t.y_prob, label_names=labels)
        reports[key] = auroc_report(t.y_true, t.y_prob, labels)
    val = None
    if validation is not None:
        v = auroc_report(validation[0], validation[1], labels)
        val = {"loss": best_val_loss, "mean_auroc": v["mean_auroc"], "per_label_auroc": v["per_label"],
               "labels_used": v["labels_used"], "n": v["n"]}
    epochs = len(history)
    check = sanity.check(predictions={k: t.y_prob for k, t in tests.items()}, reports=reports, label_names=labels,
                         best_epoch=best_epoch, epochs=epochs, max_epochs=s.max_epochs, saturated=saturated,
                         losses=[v for row in history for v in (row["train_loss"], row["val_loss"])],
                         feature_norm=s.feature_norm, val_losses=[row["val_loss"] for row in history])
    results = RunResults(task=config.task, model=config.model, seed=config.seed, best_epoch=best_epoch,
                         best_val_loss=best_val_loss, epochs=epochs, stopped_early=epochs < s.max_epochs,
                         test_sets=reports, sanity=check, validation=val, train_seconds=round(train_seconds, 3),
                         compile_seconds=round(compile_seconds, 3) if compile_seconds is not None else None)
    write_results(path, results)
    finish(path)
    return results
