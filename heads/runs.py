"""Run folders: `runs/<sweep>/cxr-<task>/<model>/seed-<s>/` (DESIGN "Runs"), plain files only.

- `config.json` — every setting, package versions, feature-store provenance, parameter counts.
- `history.jsonl` — one JSON line per epoch: epoch, train_loss, val_loss, best_so_far, improved,
  seconds, order_digest (see `heads.train.order_digest`).
- `best.safetensors` — the best-validation-loss parameters, keys '/'-joined (`pre/kernel`, ...).
- `predictions/<test-set>.npz` — `ids`, `y_true` (int8, -1 unknown), `y_prob`, `label_names`.
- `metrics.json` — per test set, mean and per-label AUROC (`heads.metrics.auroc_report`).
- `DONE` — written last: a run folder without it is unfinished and is redone by a sweep. A run
  with `DONE` whose other files are not all there is damaged (`damage`): a sweep says so and redoes it.

A hyper-parameter grid adds one level: `runs/<sweep>/cxr-<task>/<model>/<config>/seed-<s>/`
(`heads.grid`; config.json `grid` holds the configuration's name and point).
`runs/<sweep>/sweep.json` records the grid and the settings. Every file is written atomically.
`.seed-<s>.lock` beside a run folder is held (`cxrfeat.locks`) by the process working on that
run; only its holder may clear an unfinished run folder (`start`).
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from cxrfeat import atomic
from cxrfeat.labels import task_name, task_sort_key
from cxrfeat.locks import Lock

DONE = "DONE"
LOCK_SUFFIX = ".lock"
RUN_FILES = ("config.json", "history.jsonl", "best.safetensors", "metrics.json")


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
            if not json.loads((path / "metrics.json").read_text()).get("complete"):
                missing.append("metrics.json (incomplete)")
        except (OSError, ValueError):
            missing.append("metrics.json (unreadable)")
    return missing


def invalidate(path: str | Path) -> None:
    """Mark a (damaged) finished run unfinished again, so that `start` may clear it."""
    (Path(path) / DONE).unlink(missing_ok=True)


def start(path: str | Path, config: dict, *, lock: Lock | None = None) -> None:
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
    atomic.write_json(path / "config.json", config)


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


@dataclass(frozen=True)
class Run:
    task: str  # the task's folder name, e.g. 'cxr-8' or 'cxr-40'
    model: str
    seed: int
    path: Path
    config: str = ""  # the grid configuration's name ("" without a grid)

    @property
    def done(self) -> bool:
        return is_done(self.path)


def iter_runs(sweep: str | Path) -> Iterator[Run]:
    """Every run folder under `runs/<sweep>/`, finished or not (grid configurations' too), sorted by
    task, model, configuration, seed."""
    found = []
    for pattern, levels in (("*/*/seed-*", 0), ("*/*/*/seed-*", 1)):
        for p in Path(sweep).glob(pattern):
            try:
                seed = int(p.name.removeprefix("seed-"))
            except ValueError:
                continue
            if p.is_dir():
                model_dir = p.parents[levels]
                found.append(Run(model_dir.parent.name, model_dir.name, seed, p, p.parent.name if levels else ""))

    def order(r: Run):
        return (task_sort_key(r.task), r.model, r.config, r.seed)

    yield from sorted(found, key=order)
