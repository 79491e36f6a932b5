"""The sanity record's advice for saturated DQC inputs follows the run's --feature-norm."""

from heads import sanity


def _check(feature_norm, saturated=0.9):
    return sanity.check(predictions={}, reports={}, label_names=[], best_epoch=1, epochs=2, max_epochs=5,
                        saturated=saturated, feature_norm=feature_norm)


def test_saturation_advice_depends_on_feature_norm():
    raw = _check("none")
    assert raw["flags"] == ["saturated_inputs"] and "try --feature-norm standardize" in raw["messages"][0]
    std = _check("standardize")
    assert std["flags"] == ["saturated_inputs"] and "--feature-norm" not in std["messages"][0]
    assert "lower --lr" in std["messages"][0]
    assert _check("standardize", saturated=0.2)["ok"]
