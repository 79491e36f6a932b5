"""Model selection over a hyper-parameter grid, on validation data only.

Per (task, model), every configuration of the grid gets its validation numbers from its runs'
`metrics.json` `validation` block (`loss`: the best validation loss, `mean_auroc`); a run without
the block falls back, for the loss only, on `best_val_loss` in metrics.json, then on the lowest
`val_loss` of its history. The configuration with the best mean over its seeds is selected:
the lowest mean validation loss (`val-loss`, the default: the quantity early stopping already
minimises) or the highest mean validation AUROC (`val-auroc`). Ties go to the configuration whose
name sorts first. The training noise (`noise_scale`, `trajectories` of `heads sweep --noise`) is a
condition, not a hyper-parameter: where a task × model has configurations trained on the ideal circuit
(no noise, or scale 0), only those are candidates, so the report's comparison stays ideal DQC against
CDL; the noise section shows the noise-trained heads. Test predictions are never read here: `select` cannot leak test data into the
choice, and a test that corrupts every other configuration's test predictions proves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from analysis import stats
from analysis.collect import ReportRun, Sweep, _shown
from cxrfeat.errors import UserError

CRITERIA = ("val-loss", "val-auroc")
CRITERION_TEXT = {"val-loss": "lowest mean validation loss", "val-auroc": "highest mean validation AUROC"}
# Settings preferred as heat-map axes (rows, columns) when they vary; otherwise the two that vary most.
AXES_FIRST = ("layers", "lr")


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def validation(run: ReportRun) -> tuple[float, float]:
    """(validation loss, validation mean AUROC) of one run; NaN where the run does not say."""
    v = run.results.validation or {}
    loss = _num(v.get("loss"))
    if not math.isfinite(loss):
        loss = _num(run.results.best_val_loss)
    if not math.isfinite(loss):
        losses = [_num(h.get("val_loss")) for h in run.history]
        loss = min((x for x in losses if math.isfinite(x)), default=math.nan)
    return loss, _num(v.get("mean_auroc"))


@dataclass(frozen=True)
class ConfigStat:
    """One grid configuration of a task × model: its settings and, per seed, validation and test numbers."""

    task: str
    model: str
    config: str
    point: dict[str, Any]
    val_loss: dict[int, float]
    val_auroc: dict[int, float]
    test_auroc: dict[str, dict[int, float]] = field(default_factory=dict)  # test set -> seed -> mean AUROC

    @property
    def seeds(self) -> list[int]:
        return sorted(self.val_loss)

    def criterion(self, by: str) -> float:
        """Mean over seeds of the selection criterion (NaN when no seed has it)."""
        values = (self.val_loss if by == "val-loss" else self.val_auroc).values()
        return stats.nanmean(list(values)) if any(math.isfinite(v) for v in values) else math.nan


def config_stats(sweep: Sweep) -> list[ConfigStat]:
    """Every task × model × configuration, in report order, with test AUROC for the tables (not for selection)."""
    out = []
    for task in sweep.tasks:
        for model in sweep.models(task):
            for config in sweep.configs(task, model):
                runs = sweep.runs_of(task, model, config)
                first = runs[min(runs)]
                vals = {s: validation(r) for s, r in runs.items()}
                test = {}
                for ts in sweep.test_sets(task):
                    per_seed = {s: stats.nanmean(r.predictions[ts].auroc) for s, r in runs.items() if ts in r.predictions}
                    if per_seed:
                        test[ts] = per_seed
                out.append(ConfigStat(task, model, config, dict(first.point), {s: v[0] for s, v in vals.items()},
                                      {s: v[1] for s, v in vals.items()}, test))
    return out


def select(sweep: Sweep, by: str = "val-loss") -> dict[tuple[str, str], str]:
    """(task, model) -> the configuration with the best mean validation criterion over seeds (module doc).

    Reads only validation numbers (metrics.json `validation`, `best_val_loss`, history): never a test set.
    """
    if by not in CRITERIA:
        raise UserError(f"--select {by!r}: choose from {', '.join(CRITERIA)}")
    configs = [_validation_only(sweep, task, model, c)
               for task in sweep.tasks for model in sweep.models(task) for c in sweep.configs(task, model)]
    chosen: dict[tuple[str, str], str] = {}
    best: dict[tuple[str, str], float] = {}
    sign = 1.0 if by == "val-loss" else -1.0
    ideal = {(c.task, c.model) for c in configs if trained_ideal(c.point)}
    for c in sorted(configs, key=lambda c: c.config):
        value = c.criterion(by)
        key = (c.task, c.model)
        if key in ideal and not trained_ideal(c.point):
            continue
        chosen.setdefault(key, "")
        if math.isfinite(value) and (key not in best or sign * value < sign * best[key]):
            best[key], chosen[key] = value, c.config
    for key in chosen:
        if key not in best:
            task, model = key
            run = next(iter(sweep.runs_of(task, model).values()))
            what = ("`validation.mean_auroc` in metrics.json" if by == "val-auroc" else
                    "`validation.loss`, `best_val_loss` in metrics.json or a `val_loss` in history.jsonl")
            hint = "; use --select val-loss" if by == "val-auroc" else ""
            raise UserError(f"{task}/{model}: no configuration has a validation number to select by (--select {by} "
                            f"needs {what}, e.g. {_shown(run.path / 'metrics.json', sweep.path)}){hint}")
    return chosen


def trained_ideal(point: dict) -> bool:
    """Whether a configuration's point trains the ideal circuit (no noise scale, or scale 0)."""
    scale = point.get("noise_scale")
    return scale is None or scale == 0


def _validation_only(sweep: Sweep, task: str, model: str, config: str) -> ConfigStat:
    runs = sweep.runs_of(task, model, config)
    vals = {s: validation(r) for s, r in runs.items()}
    return ConfigStat(task, model, config, dict(runs[min(runs)].point), {s: v[0] for s, v in vals.items()},
                      {s: v[1] for s, v in vals.items()})


def varying(configs: list[ConfigStat]) -> list[str]:
    """Settings that take more than one value among these configurations (in the points' key order)."""
    keys = list(dict.fromkeys(k for c in configs for k in c.point))
    return [k for k in keys if len({repr(c.point.get(k)) for c in configs}) > 1]


def heatmap_axes(configs: list[ConfigStat]) -> tuple[str | None, str | None]:
    """(row setting, column setting) of a heat map: layers × lr when both vary, else the two that vary most.

    (None, key) when only one setting varies; (None, None) when none does.
    """
    keys = varying(configs)
    if all(k in keys for k in AXES_FIRST):
        return AXES_FIRST
    order = sorted(keys, key=lambda k: (-len({repr(c.point.get(k)) for c in configs}), keys.index(k)))
    if not order:
        return None, None
    if len(order) == 1:
        return None, order[0]
    return order[1], order[0]


def sort_values(values) -> list:
    """Distinct setting values, numbers ascending, then the rest by their text."""
    distinct = list({repr(v): v for v in values}.values())
    return sorted(distinct, key=lambda v: (0, float(v), "") if isinstance(v, int | float) and not isinstance(v, bool)
                  else (1, 0.0, str(v)))
