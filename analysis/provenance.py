"""Where a run's numbers come from, and whether its head is degenerate, read from the run's records.

Provenance: the run record's `backbone`, `data` and `settings` (`heads.record.RunConfig`, which
upgrades every older config.json layout); where a record does not say (older runs), the feature
stores the report was pointed at. What none of them says is "unknown", never guessed.

Sanity: the run's results record `sanity` block (flags constant_predictions, saturated_inputs,
overfit_from_start, still_improving, nan_loss: `heads.sanity`); independently of it, every run's
predictions are checked for constant labels (sd of y_prob over the test set < 1e-6, or AUROC exactly
0.5 with sd < 1e-4) and its history for NaN losses, a validation loss rising from the first epoch
(`heads.sanity.overfit_from_start`, for every model) and a best epoch equal to the last one, so runs
without the block (or with a wrong one, or written before a check existed) are flagged too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heads.record import SETTING_KEYS, RunConfig, RunResults
from heads.record import Backbone as RecordBackbone
from heads.sanity import overfit_from_start

CONSTANT_SD = 1e-6
HALF_SD = 1e-4
FLAG_TEXT = {
    "constant_predictions": "constant predictions",
    "saturated_inputs": "saturated circuit inputs",
    "overfit_from_start": "validation loss rising from the first epoch",
    "still_improving": "still improving at its last epoch",
    "nan_loss": "NaN loss",
}
FLAG_ORDER = tuple(FLAG_TEXT)
WARN = "⚠"


# ------------------------------------------------------------------------------------ backbone
@dataclass(frozen=True)
class Backbone:
    name: str  # "random", a hub name, a local folder's name, or "unknown"
    random: bool | None
    seed: int | None = None
    revision: str | None = None
    sha256: str | None = None
    source: str = "unknown"  # where it was read: config.json backbone / config.json provenance / feature store

    def describe(self) -> str:
        if self.random:
            return "RANDOM weights" + (f" (seed {self.seed})" if self.seed is not None else "")
        if self.random is None and self.name == "unknown":
            return "unknown"
        out = f"pretrained `{self.name}`"
        if self.revision:
            out += f" revision `{self.revision[:12]}`"
        if self.sha256:
            out += f" sha256 `{self.sha256[:12]}…`"
        return out

    @property
    def key(self) -> tuple:
        return (self.name, self.random, self.seed, self.revision, self.sha256)


def _name(v: Any) -> str:
    """A backbone name for display: a local folder's last component, never an absolute path."""
    s = str(v)
    if s.startswith("/") or (len(s) > 2 and s[1] == ":"):
        s = s.rstrip("/").rsplit("/", 1)[-1] + " (local folder)"
    return s


def _shown(b: RecordBackbone, source: str) -> Backbone:
    return Backbone("random" if b.random else _name(b.name or "unknown"), b.random, b.seed, b.revision, b.sha256, source)


def run_backbone(record: RunConfig, store_attrs: list[dict] | None = None) -> Backbone:
    """The record's backbone, else the training feature store's (for runs whose record does not say)."""
    if record.backbone.known:
        return _shown(record.backbone, "config.json `backbone`")
    dataset = record.data.dataset
    for attrs in store_attrs or []:
        if attrs.get("split") == "train" and (dataset is None or attrs.get("dataset") == dataset):
            found = RecordBackbone.read(attrs.get("backbone"))
            if found:
                return _shown(found, "feature store")
    return Backbone("unknown", None)


# ------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class Data:
    dataset: str | None
    synthetic: bool | None
    rows: dict[str, int] = field(default_factory=dict)
    views: int | None = None
    limit: int | None = None
    source: str = "unknown"


def run_data(record: RunConfig, store_attrs: list[dict] | None = None) -> Data:
    """The record's data; whether it is synthetic, where the record does not say, from the feature stores."""
    d = record.data
    synthetic, source = d.synthetic, "config.json `data`"
    if synthetic is None and store_attrs:  # the stores the run was trained and tested on, by dataset and split
        stores = [v for v in record.stores.values() if isinstance(v, dict)]
        wanted = {(p.get("dataset"), p.get("split")) for p in stores} or {(d.dataset, "train")}
        matched = [a for a in store_attrs if (a.get("dataset"), a.get("split")) in wanted]
        if matched:
            flags = [a.get("synthetic") if isinstance(a.get("synthetic"), bool) else None for a in matched]
            synthetic = True if any(f is True for f in flags) else (False if all(f is False for f in flags) else None)
            source = "feature stores"
    return Data(d.dataset, synthetic, dict(d.rows), d.views, d.limit, source)


# ------------------------------------------------------------------------------------ settings
SETTING_NAMES = {"mode": "mode", "lr": "lr", "batch_size": "batch", "max_epochs": "max epochs",
                 "patience": "patience", "feature_norm": "feature norm", "layers": "layers", "backend": "backend",
                 "circuit_init": "circuit init", "freeze_backbone": "frozen backbone", "limit": "limit",
                 "noise": "trained under noise", "noise_scale": "noise scale", "trajectories": "trajectories",
                 "seeds": "seeds requested"}


def run_settings(record: RunConfig, sweep_meta: dict | None = None) -> dict[str, Any]:
    """The training settings of a run: SETTING_KEYS plus `seeds` (requested; for the oldest runs, which do
    not record it, from sweep.json); None where a setting does not apply or is unknown."""
    s = record.settings.as_dict()
    out = {k: s[k] for k in (*SETTING_KEYS, "seeds")}
    if record.read_schema == 0:
        seeds = (sweep_meta or {}).get("seeds")
        out["seeds"] = seeds if isinstance(seeds, int) and not isinstance(seeds, bool) else None
    return out


def fmt_setting(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ------------------------------------------------------------------------------------ sanity
@dataclass(frozen=True)
class Sanity:
    """A run's failed checks: run-level flags and, per test set, its constant labels."""

    flags: frozenset[str]
    constant_labels: dict[str, tuple[str, ...]]  # test set -> labels with constant predictions
    messages: tuple[str, ...] = ()
    source: str = "recomputed"

    def flags_for(self, test_set: str | None = None, label: str | None = None) -> set[str]:
        """The flags that concern one test set (and one label): constant predictions only where they occur."""
        out = set(self.flags) - {"constant_predictions"}
        if "constant_predictions" in self.flags:
            if test_set is None:
                out.add("constant_predictions")
            else:
                labs = self.constant_labels.get(test_set)
                if labs is None:
                    if not self.constant_labels:  # recorded without details: assume every test set
                        out.add("constant_predictions")
                elif label is None or label in labs:
                    out.add("constant_predictions")
        return out


def constant_labels(y_true: np.ndarray, y_prob: np.ndarray, label_names, auroc: np.ndarray) -> list[str]:
    """Labels whose predictions are constant over the test set (the contract's definition)."""
    out = []
    sd = np.asarray(y_prob, dtype=np.float64).std(axis=0)
    for j, name in enumerate(label_names):
        if not np.isfinite(sd[j]) or sd[j] < CONSTANT_SD or (auroc[j] == 0.5 and sd[j] < HALF_SD):
            out.append(str(name))
    return out


def run_sanity(results: RunResults | None, predictions: dict, history: list[dict]) -> Sanity:
    """Recorded flags (metrics.json `sanity`) united with what the predictions and history show.

    `predictions`: test set -> object with label_names, y_true, y_prob, auroc.
    """
    flags: set[str] = set()
    const: dict[str, set[str]] = {}
    messages: list[str] = []
    recorded = results.sanity if results is not None else None
    source = "recomputed"
    if isinstance(recorded, dict):
        source = "metrics.json + recomputed"
        flags |= {str(f) for f in recorded.get("flags") or [] if isinstance(f, str)}
        details = recorded.get("details") if isinstance(recorded.get("details"), dict) else {}
        for ts, labs in (details.get("constant_labels") or {}).items():
            if isinstance(labs, list):
                const.setdefault(str(ts), set()).update(str(x) for x in labs)
        messages += [str(m) for m in recorded.get("messages") or [] if isinstance(m, str)]
    for ts, p in predictions.items():
        labs = constant_labels(p.y_true, p.y_prob, p.label_names, p.auroc)
        if labs:
            const.setdefault(ts, set()).update(labs)
    if any(const.values()):
        flags.add("constant_predictions")
    losses = [h.get(k) for h in history for k in ("train_loss", "val_loss")]
    if any(isinstance(v, float) and not math.isfinite(v) for v in losses):
        flags.add("nan_loss")
    val = [h.get("val_loss") for h in history]
    val = [float(v) if isinstance(v, int | float) else math.nan for v in val]
    if len(val) >= 2 and np.isfinite(val).any() and int(np.nanargmin(val)) == len(val) - 1:
        flags.add("still_improving")
    if overfit_from_start(val):
        flags.add("overfit_from_start")
    return Sanity(frozenset(flags), {k: tuple(sorted(v)) for k, v in const.items() if v}, tuple(messages), source)


def describe_flags(counts: dict[str, int], n: int) -> str:
    """'⚠ constant predictions in 3/5 seeds; still improving at its last epoch in 5/5 seeds' ('' if none)."""
    parts = [f"{FLAG_TEXT.get(f, f)} in {counts[f]}/{n} seeds" for f in FLAG_ORDER if counts.get(f)]
    parts += [f"{f} in {c}/{n} seeds" for f, c in counts.items() if f not in FLAG_TEXT and c]
    return f"{WARN} " + "; ".join(parts) if parts else ""
