"""AUROC per label and its mean, with unknown labels (-1) left out.

A label whose known values in a test set are all one class has no AUROC: it is reported as
`None` (null in JSON, "undefined" in tables) and left out of the mean, whose `labels_used` says
how many labels it averages.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def label_auroc(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """AUROC of one label; entries with y_true == -1 are unknown and left out; None if undefined."""
    y_true = np.asarray(y_true)
    known = y_true >= 0
    t = y_true[known]
    if t.size == 0 or t.min() == t.max():
        return None
    return float(roc_auc_score(t, np.asarray(y_prob)[known]))


def auroc_report(y_true: np.ndarray, y_prob: np.ndarray, label_names) -> dict:
    """Mean and per-label AUROC of (N, L) labels in {1, 0, -1} against (N, L) probabilities.

    Returns `{"mean_auroc", "labels_used", "undefined", "per_label", "positives", "known", "n"}`.
    """
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob)
    if y_true.shape != y_prob.shape or y_true.ndim != 2 or y_true.shape[1] != len(label_names):
        raise ValueError(f"shapes {y_true.shape} and {y_prob.shape} do not fit {len(label_names)} labels")
    per_label = {name: label_auroc(y_true[:, j], y_prob[:, j]) for j, name in enumerate(label_names)}
    used = [v for v in per_label.values() if v is not None]
    return {
        "mean_auroc": float(np.mean(used)) if used else None,
        "labels_used": len(used),
        "undefined": [name for name, v in per_label.items() if v is None],
        "per_label": per_label,
        "positives": {name: int((y_true[:, j] == 1).sum()) for j, name in enumerate(label_names)},
        "known": {name: int((y_true[:, j] >= 0).sum()) for j, name in enumerate(label_names)},
        "n": int(y_true.shape[0]),
    }
