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


def test_rising_validation_loss_is_flagged_for_any_model():
    """A CDL whose validation loss rises from the first epoch is flagged like a saturated DQC (no
    saturation number: the check needs only the history)."""
    def flags(val, saturated=None):
        return sanity.check(predictions={}, reports={}, label_names=[], best_epoch=1 + val.index(min(val)),
                            epochs=len(val), max_epochs=30, saturated=saturated, val_losses=val)

    rising = flags([0.55, 0.61, 0.66, 0.71, 0.70, 0.74])  # the demo's CDL at lr 3e-3: best at epoch 1
    assert rising["flags"] == ["overfit_from_start"] and "lower --lr" in rising["messages"][0]
    above_chance = flags([1.30, 1.25, 1.84, 1.18, 1.11, 1.44, 1.38])  # best at epoch 5, but never below ln 2
    assert above_chance["flags"] == ["overfit_from_start"] and "ln 2" in above_chance["messages"][0]
    assert flags([0.69, 0.60, 0.55, 0.56, 0.57, 0.58])["ok"]  # learned, then stopped early: fine
    assert flags([0.50, 0.52])["ok"]  # two epochs are too few to call it a rise
    assert sanity.overfit_from_start([]) is None
    both = flags([0.9, 1.0, 1.1], saturated=0.9)["flags"]
    assert both == ["saturated_inputs", "overfit_from_start"]


def test_report_recomputes_the_rising_flag_from_the_history():
    """Runs written before the check existed are flagged by the report from their history.jsonl."""
    from analysis.provenance import run_sanity

    hist = [{"epoch": e + 1, "train_loss": 0.5, "val_loss": v} for e, v in enumerate((0.8, 0.9, 1.0, 1.1))]
    assert "overfit_from_start" in run_sanity(None, {}, hist).flags
    ok = [{"epoch": e + 1, "train_loss": 0.5, "val_loss": v} for e, v in enumerate((0.69, 0.6, 0.5, 0.55))]
    assert "overfit_from_start" not in run_sanity(None, {}, ok).flags
