"""AUROC, the paired t-test over seeds, % difference and significance stars (paper section III-G).

Conventions used by every table and figure of the report:

- AUROC is scikit-learn's `roc_auc_score` per label (`heads.metrics.label_auroc`, the function
  the runs' metrics.json come from), over the images whose label is known (y_true 1 or 0; -1 =
  unknown is left out). A label with only one class among its known images has no AUROC: NaN
  here, shown as "undefined". A model's mean AUROC is the mean over the labels whose AUROC is
  defined.
- The paired t-test is scipy's `ttest_rel` over seeds, pairs matched by seed number (never by
  position); only seeds both models have (with a defined value) take part.
- % diff = 2 (a - b) / (a + b), in percent, a = CDL, b = DQC (paper eq. 4): positive when CDL is
  better.
- Stars follow the paper's legends: *** p < 0.001, ** p < 0.01, * p < 0.05, ns otherwise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import ttest_rel

from heads.metrics import label_auprc, label_auroc

ALPHA = 0.05
STAR_LEGEND = "ns: p ≥ 0.05, *: p < 0.05, **: p < 0.01, ***: p < 0.001"


def _checked(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) labels in {1, 0, -1} and finite (N, L) scores, or a ValueError saying what is wrong."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.ndim == 1:
        y_true, y_prob = y_true[:, None], y_prob[:, None]
    if y_true.shape != y_prob.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and y_prob {y_prob.shape} must have the same (N, L) shape")
    bad = ~np.isin(y_true, (-1, 0, 1))
    if bad.any():
        raise ValueError(f"labels must be 1, 0 or -1 (unknown); found {np.unique(y_true[bad])[:5].tolist()}")
    if not np.isfinite(y_prob).all():
        raise ValueError("NaN or Inf scores in y_prob")
    return y_true, y_prob


def _per_label(metric, y_true, y_prob) -> np.ndarray:
    # One implementation of the per-label rule for the whole project: the one the runs' metrics.json use.
    y_true, y_prob = _checked(y_true, y_prob)
    values = [metric(y_true[:, j], y_prob[:, j]) for j in range(y_true.shape[1])]
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def auroc(y_true, y_prob) -> np.ndarray:
    """Per-label AUROC of (N, L) labels in {1, 0, -1} and (N, L) scores; NaN where undefined.

    >>> auroc([[1, 0], [0, -1], [1, 0]], [[0.9, 0.2], [0.1, 0.7], [0.8, 0.4]])
    array([ 1., nan])
    """
    return _per_label(label_auroc, y_true, y_prob)


def nanmean(values) -> float:
    """Mean of the finite values; NaN (without a warning) when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def mean_sd(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for fewer than 2) and count of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, 0
    sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return float(v.mean()), sd, int(v.size)


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test over seeds: statistic, p-value and the seeds that were paired."""

    t: float
    p: float
    seeds: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_ttest(a: Mapping[int, float], b: Mapping[int, float]) -> PairedTest:
    """scipy `ttest_rel(a, b)` over the seeds both mappings (seed -> value) have a finite value for.

    Pairs are matched by seed number, so the order of either mapping does not matter. Fewer than
    two pairs, or identical values in every pair, give p = NaN.
    """
    seeds = tuple(sorted(s for s in a if s in b and np.isfinite(a[s]) and np.isfinite(b[s])))
    if len(seeds) < 2:
        return PairedTest(math.nan, math.nan, seeds)
    x = np.array([a[s] for s in seeds], dtype=np.float64)
    y = np.array([b[s] for s in seeds], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on (near-)constant differences
        res = ttest_rel(x, y)
    return PairedTest(float(res.statistic), float(res.pvalue), seeds)


def pct_diff(a: float, b: float) -> float:
    """% difference 2 (a - b) / (a + b) x 100 (paper eq. 4); NaN when either is undefined."""
    if not (np.isfinite(a) and np.isfinite(b)) or a + b == 0:
        return math.nan
    return float(200.0 * (a - b) / (a + b))


def stars(p: float) -> str:
    """Significance stars of the paper's legends; 'n/a' when there is no p-value."""
    if p is None or not np.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "***"
    if p < 0.01:
        return "**"
    if p < ALPHA:
        return "*"
    return "ns"


# --------------------------------------------------------------------------------------- AUPRC
def auprc(y_true, y_prob) -> np.ndarray:
    """Per-label AUPRC (scikit-learn `average_precision_score`) over the known images; NaN where one class.

    >>> auprc([[1, 0], [0, -1], [1, 0]], [[0.9, 0.2], [0.1, 0.7], [0.8, 0.4]])
    array([ 1., nan])
    """
    return _per_label(label_auprc, y_true, y_prob)


# --------------------------------------------------------------------------------------- bootstrap
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
BOOTSTRAP_METHOD = (
    "stratified bootstrap over test images: for every label, its positive and its negative (known) images are "
    "resampled with replacement separately (numpy `default_rng((seed, label index))`, positives drawn first), "
    "the same resample for every seed of a row; per resample the mean AUROC over the defined labels is taken "
    "per seed and then averaged over seeds; the interval is the 2.5th-97.5th percentile of those averages"
)


@dataclass(frozen=True)
class BootstrapCI:
    low: float
    high: float
    resamples: int
    seed: int


def _resample_counts(rng, n: int, size: int) -> np.ndarray:
    """(size, n) multiplicities of `size` resamples of n items with replacement (indices drawn, then
    counted), as int32: exact, and half the memory of float64 (at 48,860 rows x 1,000 resamples)."""
    idx = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
    return np.bincount(idx.ravel(), minlength=size * n).reshape(size, n).astype(np.int32)


def _weighted_auroc(pos: np.ndarray, neg: np.ndarray, wpos: np.ndarray, wneg: np.ndarray) -> np.ndarray:
    """AUROC (ties count 1/2) of positives `pos` against negatives `neg` under (B, n) integer
    multiplicities. Counted in integers (twice the tie-weighted count, no rounding), divided once."""
    order = np.argsort(neg, kind="stable")
    qs = neg[order]
    lo = np.searchsorted(qs, pos, side="left")
    hi = np.searchsorted(qs, pos, side="right")
    cum = np.zeros((wneg.shape[0], neg.size + 1), np.int32)  # counts below: at most n < 2^31
    np.cumsum(wneg[:, order], axis=1, out=cum[:, 1:])
    below = cum[:, lo]
    twice = 2 * below + (cum[:, hi] - below)
    return np.einsum("bi,bi->b", twice.astype(np.int64), wpos.astype(np.int64)) / (2 * pos.size * neg.size)


def bootstrap_mean_auroc(y_true, y_probs, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                         level: float = CI_LEVEL, chunk: int = 250) -> BootstrapCI:
    """Percentile CI of the seed-averaged mean AUROC (see BOOTSTRAP_METHOD).

    `y_true`: (N, L) in {1, 0, -1}, shared by the seeds; `y_probs`: a list of (N, L) scores, one per seed.
    Labels with one class among their known images are left out (as in the mean AUROC).
    """
    y_true = np.asarray(y_true)
    probs = [np.asarray(p, dtype=np.float64) for p in y_probs]
    if not probs or any(p.shape != y_true.shape for p in probs):
        raise ValueError("y_probs must be one (N, L) array per seed, each shaped like y_true")
    total = np.zeros((len(probs), resamples))
    used = 0
    for j in range(y_true.shape[1]):
        pos_i, neg_i = np.flatnonzero(y_true[:, j] == 1), np.flatnonzero(y_true[:, j] == 0)
        if not pos_i.size or not neg_i.size:
            continue
        used += 1
        rng = np.random.default_rng((seed, j))
        wpos, wneg = _resample_counts(rng, pos_i.size, resamples), _resample_counts(rng, neg_i.size, resamples)
        for k, p in enumerate(probs):
            for a in range(0, resamples, chunk):
                total[k, a:a + chunk] += _weighted_auroc(p[pos_i, j], p[neg_i, j], wpos[a:a + chunk], wneg[a:a + chunk])
    if not used:
        return BootstrapCI(math.nan, math.nan, resamples, seed)
    dist = (total / used).mean(axis=0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(dist, [tail, 100 - tail])
    return BootstrapCI(float(low), float(high), resamples, seed)


# --------------------------------------------------------------------------------------- corrections
CORRECTIONS = ("Holm (family-wise error)", "Benjamini–Hochberg (false discovery rate)")


def _ranked(pvalues) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p as float64, an all-NaN array of its shape, the indices of its finite entries by ascending p (stable))."""
    p = np.asarray(pvalues, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    return p, np.full(p.shape, np.nan), ok[np.argsort(p[ok], kind="stable")]


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and are not counted in the family."""
    p, out, order = _ranked(pvalues)
    m = order.size
    if not m:
        return out
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN and are not counted."""
    p, out, order = _ranked(pvalues)
    m = order.size
    if not m:
        return out
    adj = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    out[order] = np.minimum(adj, 1.0)
    return out
