"""The numbers of the report, computed from a loaded sweep (tables and figures only format them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis import stats
from analysis.collect import Sweep, comparisons


class _OverSeeds:
    """Mean, sd and count over the `per_seed` values (seed number -> AUROC)."""

    per_seed: dict[int, float]

    @property
    def mean(self) -> float:
        return stats.mean_sd(list(self.per_seed.values()))[0]

    @property
    def sd(self) -> float:
        return stats.mean_sd(list(self.per_seed.values()))[1]

    @property
    def n(self) -> int:
        return stats.mean_sd(list(self.per_seed.values()))[2]


@dataclass(frozen=True)
class ModelStat(_OverSeeds):
    """Mean ± sd over seeds of one model's AUROC (mean over labels, or one label).

    `flag`: the failed sanity checks of its seeds ('⚠ constant predictions in 3/5 seeds'), '' if none.
    """

    task: str
    model: str
    test_set: str
    label: str | None  # None: mean AUROC over the labels
    per_seed: dict[int, float]
    flag: str = ""


@dataclass(frozen=True)
class Comparison:
    """Classical model a vs quantum model b: means, % diff of the means and the paired t-test by seed."""

    a: ModelStat
    b: ModelStat

    @property
    def pct_diff(self) -> float:
        return stats.pct_diff(self.a.mean, self.b.mean)

    @property
    def test(self) -> stats.PairedTest:
        return stats.paired_ttest(self.a.per_seed, self.b.per_seed)

    @property
    def flagged(self) -> bool:
        return bool(self.a.flag or self.b.flag)

    @property
    def flag(self) -> str:
        """Why the comparison carries no stars: the failed checks of either side ('' when none)."""
        return "; ".join(f"{s.model}: {s.flag}" for s in (self.a, self.b) if s.flag)

    @property
    def stars(self) -> str:
        """Significance stars, or '⚠ flagged' when either side failed a sanity check (p is kept, no stars)."""
        return "⚠ flagged" if self.flagged else stats.stars(self.test.p)


def mean_auroc(sweep: Sweep) -> list[ModelStat]:
    """Every task × model × test set, in report order."""
    return [
        ModelStat(task, model, ts, None, sweep.mean_aurocs(task, model, ts), sweep.flag_text(task, model, ts))
        for ts in sweep.test_sets()
        for task in sweep.tasks
        if ts in sweep.test_sets(task)
        for model in sweep.models(task)
    ]


def label_auroc(sweep: Sweep, task: str, model: str, test_set: str, labels) -> dict[str, ModelStat]:
    per_seed = sweep.label_aurocs(task, model, test_set)
    return {
        lab: ModelStat(task, model, test_set, lab, {s: v[lab] for s, v in per_seed.items() if lab in v},
                       sweep.flag_text(task, model, test_set, lab))
        for lab in labels
    }


def label_auprc(sweep: Sweep, task: str, model: str, test_set: str) -> dict[int, dict[str, float]]:
    """seed -> {label: AUPRC} (scikit-learn average precision; NaN where one class)."""
    return sweep.label_aurocs(task, model, test_set, metric="auprc")


def mean_auprc(sweep: Sweep, task: str, model: str, test_set: str) -> dict[int, float]:
    """seed -> mean AUPRC over the labels where it is defined."""
    return sweep.mean_aurocs(task, model, test_set, metric="auprc")


def auroc_ci(sweep: Sweep, task: str, model: str, test_set: str, resamples: int = stats.BOOTSTRAP_RESAMPLES,
             seed: int = stats.BOOTSTRAP_SEED) -> stats.BootstrapCI | None:
    """95 % CI of the row's seed-averaged mean AUROC (stats.BOOTSTRAP_METHOD); None when the seeds were
    tested on different images (then no shared resample exists)."""
    preds = [r.predictions[test_set] for _, r in sorted(sweep.runs_of(task, model).items()) if test_set in r.predictions]
    if not preds:
        return None
    y = preds[0].y_true
    if any(p.y_true.shape != y.shape or not np.array_equal(p.y_true, y) or p.label_names != preds[0].label_names
           for p in preds[1:]):
        return None
    return stats.bootstrap_mean_auroc(y, [p.y_prob for p in preds], resamples=resamples, seed=seed)


def mean_comparisons(sweep: Sweep) -> list[Comparison]:
    """Mean AUROC, classical vs quantum, per task × test set × pair (cdl/dqc, then finetune)."""
    stat = {(s.task, s.model, s.test_set): s for s in mean_auroc(sweep)}
    out = []
    for ts in sweep.test_sets():
        for task in sweep.tasks:
            for a, b in comparisons(sweep.models(task)):
                if (task, a, ts) in stat and (task, b, ts) in stat:
                    out.append(Comparison(stat[task, a, ts], stat[task, b, ts]))
    return out


def label_comparisons(sweep: Sweep, task: str, test_set: str, pair: tuple[str, str], labels) -> list[Comparison]:
    """Per-label comparisons in the order of `labels`."""
    a = label_auroc(sweep, task, pair[0], test_set, labels)
    b = label_auroc(sweep, task, pair[1], test_set, labels)
    return [Comparison(a[lab], b[lab]) for lab in labels]


def test_positives(sweep: Sweep, task: str, test_set: str) -> dict[str, int]:
    """Positives per label in a test set (from the first run's predictions; all runs share y_true)."""
    return {lab: pos for lab, (pos, _) in test_counts(sweep, task, test_set).items()}


def test_counts(sweep: Sweep, task: str, test_set: str) -> dict[str, tuple[int, int]]:
    """label -> (positives, known images) in a test set, from the first run's predictions."""
    for run in sorted(sweep.runs, key=lambda r: (r.model, r.seed)):
        if run.task == task and test_set in run.predictions:
            p = run.predictions[test_set]
            return {lab: (int((p.y_true[:, j] == 1).sum()), int((p.y_true[:, j] >= 0).sum()))
                    for j, lab in enumerate(p.label_names)}
    return {}


# --------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class Convergence:
    """Per task × model: epochs trained, epochs to the best validation loss, the best loss, time."""

    task: str
    model: str
    epochs_run: dict[int, float]
    epochs_to_best: dict[int, float]  # 1-based count of epochs up to and including the best one
    best_val_loss: dict[int, float]
    seconds: dict[int, float]  # summed over the epochs of the run's history


def convergence(sweep: Sweep) -> list[Convergence]:
    out = []
    for task in sweep.tasks:
        for model in sweep.models(task):
            runs, r, b, v, t = sweep.runs_of(task, model), {}, {}, {}, {}
            for seed, run in runs.items():
                val = [_num(h.get("val_loss")) for h in run.history]
                if not run.history:
                    continue
                r[seed] = float(len(run.history))
                if any(np.isfinite(val)):
                    i = int(np.nanargmin(val))
                    b[seed], v[seed] = float(i + 1), float(val[i])
                secs = [_num(h.get("seconds")) for h in run.history]
                if all(np.isfinite(secs)):
                    t[seed] = float(sum(secs))
            out.append(Convergence(task, model, r, b, v, t))
    return out


def loss_curves(sweep: Sweep, task: str, model: str, key: str) -> dict:
    """Per-seed curves of `key` (train_loss/val_loss) and their mean over the seeds still training.

    Returns {"seeds": {seed: (epochs, values)}, "epochs", "mean", "n"}: `n` is the number of seeds
    with a value at that epoch (a figure draws the mean only where n >= 2).
    """
    seeds, series = {}, {}
    for seed, run in sorted(sweep.runs_of(task, model).items()):
        ep, vals = [], []
        for i, h in enumerate(run.history):
            epoch, v = int(h.get("epoch", i + 1)), _num(h.get(key))
            ep.append(epoch)
            vals.append(v)
            series.setdefault(epoch, []).append(v)
        if ep:
            seeds[seed] = (np.array(ep), np.array(vals, dtype=float))
    epochs = np.array(sorted(series), dtype=int)
    mean, _, n = (np.array([stats.mean_sd(series[e])[k] for e in epochs], dtype=float) for k in range(3))
    return {"seeds": seeds, "epochs": epochs, "mean": mean, "n": n}


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------------------- long tail
@dataclass(frozen=True)
class GroupStat(_OverSeeds):
    """Mean AUROC over the labels of one frequency group, per seed (then mean ± sd over seeds)."""

    task: str
    model: str
    test_set: str
    group: str
    labels: tuple[str, ...]
    per_seed: dict[int, float]
    flag: str = ""


def long_tail(sweep: Sweep, groups: dict[str, list[str]]) -> list[GroupStat]:
    out = []
    for ts in sweep.test_sets():
        for task in sweep.tasks:
            task_labels = set(sweep.label_names(task))
            for model in sweep.models(task):
                per_seed = sweep.label_aurocs(task, model, ts)
                for group, members in groups.items():
                    labs = tuple(lab for lab in members if lab in task_labels)
                    if not labs:
                        continue
                    vals = {s: stats.nanmean([v.get(lab, math.nan) for lab in labs]) for s, v in per_seed.items()}
                    out.append(GroupStat(task, model, ts, group, labs, vals, sweep.flag_text(task, model, ts)))
    return out
