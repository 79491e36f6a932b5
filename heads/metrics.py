"""AUROC and AUPRC per label and their means, with unknown labels (-1) left out.

A label whose known values in a test set are all one class has no AUROC and no AUPRC: it is
reported as `None` (null in JSON, "undefined" in tables) and left out of the means, whose
`labels_used` says how many labels the AUROC mean averages. A label whose predictions are not all
finite (a diverged head) has neither either; `heads.sanity` flags such a run.

AUPRC is scikit-learn's `average_precision_score` (the step-wise area under the precision-recall
curve, no interpolation): the metric that matters for rare labels, whose chance level is the
label's prevalence rather than 0.5.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _known(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The known entries (y_true >= 0) of one label, or None when its AUROC/AUPRC is undefined."""
    y_true = np.asarray(y_true)
    known = y_true >= 0
    t, p = y_true[known], np.asarray(y_prob)[known]
    if t.size == 0 or t.min() == t.max() or not np.isfinite(p).all():
        return None
    return t, p


def label_auroc(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """AUROC of one label; entries with y_true == -1 are unknown and left out; None if undefined."""
    known = _known(y_true, y_prob)
    return None if known is None else float(roc_auc_score(*known))


def label_auprc(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """AUPRC (average precision) of one label, unknown entries left out; None if undefined."""
    known = _known(y_true, y_prob)
    return None if known is None else float(average_precision_score(*known))


def auroc_report(y_true: np.ndarray, y_prob: np.ndarray, label_names) -> dict:
    """Mean and per-label AUROC and AUPRC of (N, L) labels in {1, 0, -1} against (N, L) probabilities.

    Returns `{"mean_auroc", "labels_used", "undefined", "per_label", "mean_auprc", "per_label_auprc",
    "positives", "known", "n"}` (`per_label` is the AUROC).
    """
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob)
    if y_true.shape != y_prob.shape or y_true.ndim != 2 or y_true.shape[1] != len(label_names):
        raise ValueError(f"shapes {y_true.shape} and {y_prob.shape} do not fit {len(label_names)} labels")
    per_label = {name: label_auroc(y_true[:, j], y_prob[:, j]) for j, name in enumerate(label_names)}
    per_label_auprc = {name: label_auprc(y_true[:, j], y_prob[:, j]) for j, name in enumerate(label_names)}
    used = [v for v in per_label.values() if v is not None]
    used_pr = [v for v in per_label_auprc.values() if v is not None]
    return {
        "mean_auroc": float(np.mean(used)) if used else None,
        "labels_used": len(used),
        "undefined": [name for name, v in per_label.items() if v is None],
        "per_label": per_label,
        "mean_auprc": float(np.mean(used_pr)) if used_pr else None,
        "per_label_auprc": per_label_auprc,
        "positives": {name: int((y_true[:, j] == 1).sum()) for j, name in enumerate(label_names)},
        "known": {name: int((y_true[:, j] >= 0).sum()) for j, name in enumerate(label_names)},
        "n": int(y_true.shape[0]),
    }
