"""Sanity checks of a trained head, written into its run's `metrics.json` as `sanity`
(docs/design.md "Run record").

A number from a degenerate head must not pass for a result. Five checks, each a flag; every check but
the saturation one applies to every model (CDL and DQC alike):

- `constant_predictions`: a label of a test set whose predicted probabilities do not vary (sd over
  the test set < `CONSTANT_SD`), or whose AUROC is exactly 0.5 while they barely vary (sd <
  `HALF_AUROC_SD`): the head says the same thing for every image, whatever its AUROC.
- `saturated_inputs` (DQC only): the fraction of (test input, qubit) pairs whose pre-circuit angle
  is saturated, |tanh(pre(x))| > `SATURATION_TANH`, exceeds `SATURATION_THRESHOLD`. Saturated angles
  are ±π/2 whatever the image (the tanh's gradient vanishes), the usual reason a DQC predicts a constant
  (e.g. random-backbone embeddings of norm ~800 without `--feature-norm standardize`).
- `still_improving`: the best validation loss is at the last epoch trained: the run stopped because
  it reached `--max-epochs`, not because it had converged.
- `overfit_from_start`: the validation loss rises from the first epoch: its best is at epoch 1 of at
  least `RISING_EPOCHS` trained, or it never falls below ln 2 (`CHANCE_LOSS`, the mean BCE of a head
  that predicts ½ for every label). The head fits the training set at once and generalises worse with
  every step (too high a learning rate, the usual cause), so its test AUROC is that of an accident of
  the first epoch.
- `nan_loss`: a loss or a prediction is not finite. Training stops with an error on a non-finite loss,
  so a finished run carries this flag only when its predictions hold NaN or infinity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

CONSTANT_SD = 1e-6
HALF_AUROC_SD = 1e-4
SATURATION_TANH = 0.99
SATURATION_THRESHOLD = 0.5
RISING_EPOCHS = 3
CHANCE_LOSS = math.log(2.0)
FLAGS = ("constant_predictions", "saturated_inputs", "overfit_from_start", "still_improving", "nan_loss")


def overfit_from_start(val_losses: Iterable[float]) -> str | None:
    """Why the validation losses (one per epoch) rise from the first epoch, or None (module docstring)."""
    val = [float(v) for v in val_losses]
    finite = [v for v in val if math.isfinite(v)]
    if not finite:
        return None
    best = min(finite)
    if best > CHANCE_LOSS:
        return (f"validation loss never below ln 2 = {CHANCE_LOSS:.3f} (the loss of predicting ½ for every label; "
                f"best {best:.3f})")
    if len(val) >= RISING_EPOCHS and val.index(best) == 0:
        return f"validation loss lowest at the first epoch ({best:.3f}), then rising over {len(val) - 1} more"
    return None


def constant_labels(y_prob: np.ndarray, label_names, per_label_auroc: Mapping[str, float | None]) -> list[str]:
    """The labels (columns of y_prob (N, L)) whose predictions are constant, as the module docstring says."""
    y_prob = np.asarray(y_prob, np.float64)
    out = []
    for j, name in enumerate(label_names):
        column = y_prob[:, j]
        sd = float(np.std(column)) if np.isfinite(column).all() else math.nan
        auroc = per_label_auroc.get(name)
        if sd < CONSTANT_SD or (auroc == 0.5 and sd < HALF_AUROC_SD):
            out.append(name)
    return out


def saturated_fraction(pre_activations: np.ndarray | Iterable[np.ndarray]) -> float | None:
    """Fraction of entries with |tanh| > SATURATION_TANH (None for no entries)."""
    arrays = [pre_activations] if isinstance(pre_activations, np.ndarray) else list(pre_activations)
    total = sum(a.size for a in arrays)
    if total == 0:
        return None
    return float(sum(np.count_nonzero(np.abs(np.tanh(a)) > SATURATION_TANH) for a in arrays) / total)


def check(
    *,
    predictions: Mapping[str, np.ndarray],
    reports: Mapping[str, dict],
    label_names,
    best_epoch: int,
    epochs: int,
    max_epochs: int,
    saturated: float | None = None,
    losses: Iterable[float] = (),
    feature_norm: str | None = None,
    val_losses: Iterable[float] = (),
) -> dict:
    """The `sanity` record of one run: `ok`, `flags`, `details`, `messages` (docs/design.md "Run record").

    `predictions`: y_prob (N, L) per test set; `reports`: `heads.metrics.auroc_report` per test set;
    `saturated`: `saturated_fraction` of a DQC (None for a CDL); `losses`: the history's losses;
    `feature_norm`: the run's `--feature-norm` (the hint for saturation depends on it); `val_losses`: the
    validation loss of every epoch, in order.
    """
    label_names = list(label_names)
    constant = {}
    for key, y_prob in predictions.items():
        names = constant_labels(y_prob, label_names, reports[key]["per_label"])
        if names:
            constant[key] = names
    nan = any(not np.isfinite(np.asarray(p)).all() for p in predictions.values()) or any(
        not math.isfinite(float(v)) for v in losses)
    flags, messages = [], []
    if constant:
        flags.append("constant_predictions")
        where = "; ".join(f"{key}: {', '.join(names)}" for key, names in constant.items())
        messages.append(f"constant predictions (sd < {CONSTANT_SD:g}, or AUROC exactly 0.5) for {where}")
    if saturated is not None and saturated > SATURATION_THRESHOLD:
        flags.append("saturated_inputs")
        hint = ("try --feature-norm standardize" if feature_norm == "none" else
                "the trained pre layer drives the angles to ±π/2, so the circuit sees near-binary inputs; "
                "try a lower --lr" if feature_norm == "standardize" else
                "try --feature-norm standardize or a lower --lr")
        messages.append(f"saturated DQC inputs: {saturated:.0%} of (test image, qubit) angles have |tanh| > "
                        f"{SATURATION_TANH} ({hint})")
    rising = overfit_from_start(val_losses)
    if rising:
        flags.append("overfit_from_start")
        messages.append(f"overfitting from the first epoch: {rising} (try a lower --lr)")
    if epochs >= 1 and best_epoch == epochs:
        flags.append("still_improving")
        messages.append(f"still improving: the best validation loss is at the last epoch trained ({epochs} of at "
                        f"most {max_epochs}); train longer (--max-epochs)")
    if nan:
        flags.append("nan_loss")
        messages.append("NaN or infinite values in the losses or predictions")
    return {
        "ok": not flags,
        "flags": flags,
        "details": {
            "constant_labels": constant,
            "saturated_fraction": None if saturated is None else round(float(saturated), 6),
            "saturation_threshold": SATURATION_THRESHOLD,
            "best_epoch": int(best_epoch), "epochs": int(epochs), "max_epochs": int(max_epochs),
            "nan": bool(nan),
        },
        "messages": messages,
    }
