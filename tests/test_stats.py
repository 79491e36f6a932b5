"""The report's statistics against scipy, scikit-learn and hand computations on small fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score

from analysis import stats


def test_auroc_by_hand():
    # Label 0: rows 4-5 unknown; positives 0.9, 0.8 above the negative 0.1 -> 1.0.
    # Label 1: positive 0.7 against negatives 0.2, 0.7 (tie: 1/2), 0.9, 0.5 -> (1 + 0.5 + 0 + 1) / 4.
    y = [[1, 0], [0, 1], [1, 0], [-1, 0], [-1, 0]]
    p = [[0.9, 0.2], [0.1, 0.7], [0.8, 0.7], [0.0, 0.9], [0.99, 0.5]]
    np.testing.assert_allclose(stats.auroc(y, p), [1.0, 2.5 / 4])


def test_auroc_matches_sklearn_with_unknowns_left_out():
    rng = np.random.default_rng(3)
    y = rng.integers(-1, 2, size=(200, 5))
    p = rng.random((200, 5)) + 0.3 * (y == 1)
    got = stats.auroc(y, p)
    for j in range(5):
        known = y[:, j] != -1
        assert got[j] == pytest.approx(roc_auc_score(y[known, j], p[known, j]), abs=1e-15)
    # The -1 rows really are left out: changing their scores changes nothing.
    p2 = p.copy()
    p2[y == -1] = rng.random(int((y == -1).sum()))
    np.testing.assert_array_equal(stats.auroc(y, p2), got)


def test_auroc_one_class_is_undefined_not_a_crash():
    y = np.array([[0, 1, -1], [0, 0, -1], [-1, 1, -1], [0, 0, -1]])
    p = np.array([[0.1, 0.8, 0.5], [0.4, 0.3, 0.5], [0.9, 0.6, 0.5], [0.2, 0.1, 0.5]])
    got = stats.auroc(y, p)
    assert math.isnan(got[0]) and math.isnan(got[2])  # only negatives known; nothing known
    assert got[1] == 1.0
    assert stats.nanmean(got) == 1.0  # the mean skips undefined labels
    assert math.isnan(stats.nanmean([math.nan, math.nan]))


def test_auroc_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match="1, 0 or -1"):
        stats.auroc([[2], [0]], [[0.1], [0.2]])
    with pytest.raises(ValueError, match="shape"):
        stats.auroc([[1, 0]], [[0.1]])


def test_paired_ttest_matches_scipy_and_pairs_by_seed():
    cdl = {1: 0.80, 2: 0.74, 3: 0.78, 4: 0.71, 5: 0.77}
    dqc = {1: 0.76, 2: 0.72, 3: 0.70, 4: 0.70, 5: 0.69}
    res = stats.paired_ttest(cdl, dqc)
    ref = ttest_rel([cdl[s] for s in range(1, 6)], [dqc[s] for s in range(1, 6)])
    assert res.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.t == pytest.approx(ref.statistic, rel=1e-12)
    assert res.seeds == (1, 2, 3, 4, 5)
    # Shuffling the insertion order of one side changes nothing: pairs are matched by seed number.
    shuffled = {s: dqc[s] for s in (3, 5, 1, 4, 2)}
    assert list(shuffled) != list(dqc)
    assert stats.paired_ttest(cdl, shuffled) == res
    # Pairing by position would have given a different p-value.
    by_position = ttest_rel(list(cdl.values()), list(shuffled.values())).pvalue
    assert by_position != pytest.approx(res.p)


def test_paired_ttest_uses_only_common_finite_seeds():
    a = {1: 0.8, 2: 0.82, 3: 0.79, 4: 0.81, 7: 0.9}
    b = {2: 0.75, 1: 0.74, 4: 0.78, 3: 0.70, 5: 0.1, 6: math.nan}
    b[4] = math.nan  # an undefined value drops its pair
    res = stats.paired_ttest(a, b)
    assert res.seeds == (1, 2, 3) and res.n == 3
    assert res.p == pytest.approx(ttest_rel([0.8, 0.82, 0.79], [0.74, 0.75, 0.70]).pvalue, rel=1e-12)
    one = stats.paired_ttest({1: 0.8}, {1: 0.7, 2: 0.6})
    assert one.n == 1 and math.isnan(one.p)
    same = stats.paired_ttest({1: 0.8, 2: 0.7}, {1: 0.8, 2: 0.7})
    assert math.isnan(same.p) and stats.stars(same.p) == "n/a"


def test_pct_diff_paper_example_and_sign():
    # Paper IV-C: CDL 0.77 vs DQC 0.70 on CXR-8 -> 9.5 %.
    assert stats.pct_diff(0.77, 0.70) == pytest.approx(200 * 0.07 / 1.47)
    assert round(stats.pct_diff(0.77, 0.70), 1) == 9.5
    assert stats.pct_diff(0.70, 0.77) == pytest.approx(-stats.pct_diff(0.77, 0.70))
    assert stats.pct_diff(0.8, 0.8) == 0.0
    assert math.isnan(stats.pct_diff(math.nan, 0.7))


@pytest.mark.parametrize(
    ("p", "expected"),
    [(0.0, "***"), (0.000999, "***"), (0.001, "**"), (0.00999, "**"), (0.01, "*"), (0.0499, "*"),
     (0.05, "ns"), (0.5, "ns"), (1.0, "ns"), (math.nan, "n/a")],
)
def test_stars_thresholds(p, expected):
    assert stats.stars(p) == expected


def test_mean_sd_is_sample_sd_over_finite_values():
    m, sd, n = stats.mean_sd([0.7, 0.72, math.nan, 0.68])
    assert (m, n) == (pytest.approx(0.7), 3)
    assert sd == pytest.approx(np.std([0.7, 0.72, 0.68], ddof=1))
    m1, sd1, n1 = stats.mean_sd([0.7])
    assert m1 == 0.7 and math.isnan(sd1) and n1 == 1
    assert stats.mean_sd([])[2] == 0


# --------------------------------------------------------------------------- AUPRC, bootstrap, corrections
def test_auprc_matches_sklearn_with_unknowns_left_out():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(4)
    y = rng.integers(-1, 2, size=(150, 4))
    y[:, 3] = np.where(y[:, 3] == 1, 0, y[:, 3])  # one class only: undefined
    p = rng.random((150, 4)) + 0.4 * (y == 1)
    got = stats.auprc(y, p)
    for j in range(3):
        known = y[:, j] != -1
        assert got[j] == pytest.approx(average_precision_score(y[known, j], p[known, j]), abs=1e-15)
    assert math.isnan(got[3])


def test_bootstrap_ci_equals_naive_resampling_with_ties():
    """The counted, vectorised bootstrap equals resampling the arrays and calling scikit-learn each time."""
    rng = np.random.default_rng(11)
    y = (rng.random((70, 3)) < [0.4, 0.2, 0.1]).astype(int)
    y[:2], y[2:4] = 1, 0
    y[rng.random(y.shape) < 0.1] = -1
    probs = [np.round(rng.random(y.shape) + 0.3 * (y == 1), 1) for _ in range(2)]  # rounded: many ties
    B = 120
    ci = stats.bootstrap_mean_auroc(y, probs, resamples=B, seed=5)
    total = np.zeros((2, B))
    for j in range(3):
        pos, neg = np.flatnonzero(y[:, j] == 1), np.flatnonzero(y[:, j] == 0)
        r = np.random.default_rng((5, j))
        ip, ineg = r.integers(0, pos.size, (B, pos.size)), r.integers(0, neg.size, (B, neg.size))
        t = np.r_[np.ones(pos.size), np.zeros(neg.size)]
        for k, p in enumerate(probs):
            for b in range(B):
                total[k, b] += roc_auc_score(t, np.r_[p[pos[ip[b]], j], p[neg[ineg[b]], j]])
    lo, hi = np.percentile((total / 3).mean(axis=0), [2.5, 97.5])
    assert (ci.low, ci.high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert ci.resamples == B and ci.seed == 5
    # Seeded: the same call gives the same interval; another seed another one.
    assert stats.bootstrap_mean_auroc(y, probs, resamples=B, seed=5) == ci
    assert stats.bootstrap_mean_auroc(y, probs, resamples=B, seed=6) != ci


def test_bootstrap_narrows_with_more_images():
    rng = np.random.default_rng(2)

    def width(n):
        y = (rng.random((n, 2)) < 0.3).astype(int)
        p = rng.random((n, 2)) + 0.5 * y
        ci = stats.bootstrap_mean_auroc(y, [p], resamples=300)
        return ci.high - ci.low

    assert width(2000) < width(100) / 2


def test_holm_and_bh_by_hand_and_scipy():
    from scipy.stats import false_discovery_control

    p = [0.01, 0.04, 0.03, 0.005, math.nan, 0.2]
    # Holm by hand over the 5 finite values: sorted 0.005, 0.01, 0.03, 0.04, 0.2 times 5, 4, 3, 2, 1, running max.
    expected = {3: 0.025, 0: 0.04, 2: 0.09, 1: 0.09, 5: 0.2}
    got = stats.holm(p)
    for i, v in expected.items():
        assert got[i] == pytest.approx(v, abs=1e-15)
    assert math.isnan(got[4])
    finite = [x for x in p if not math.isnan(x)]
    bh = stats.benjamini_hochberg(p)
    np.testing.assert_allclose([bh[i] for i in (0, 1, 2, 3, 5)], false_discovery_control(finite, method="bh"),
                               atol=1e-15)
    assert math.isnan(bh[4])
    assert np.isnan(stats.holm([math.nan])).all() and stats.holm([0.9, 0.8]).tolist() == [1.0, 1.0]
