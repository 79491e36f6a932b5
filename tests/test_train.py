"""Multi-seed training: seeds (and grid members) together equal alone (bit for bit), one compilation, fair and complete epochs."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax._src.dispatch import BACKEND_COMPILE_EVENT

from cxrfeat.errors import UserError
from heads.models import make_model
from heads.train import (
    INIT_STREAM,
    SEED_BLOCK,
    Member,
    TrainConfig,
    TrainData,
    epoch_order,
    first_training_view,
    member_blocks,
    order_digest,
    predict,
    train_members,
    train_seeds,
)


def tiny_data(n=200, views=2, dim=16, labels=8, n_val=40, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(labels, dim)) * scale

    def split(rows, v):
        y = (rng.random((rows, labels)) < 0.3).astype(np.int8)
        x = (rng.normal(size=(rows, dim)) + y @ w)[:, None, :] + 0.3 * rng.normal(size=(rows, v, dim))
        return x.astype(np.float32), y

    tx, ty = split(n, views)
    vx, vy = split(n_val, 1)
    return TrainData(tx, ty, vx[:, 0], vy)


DATA = tiny_data()
# A high learning rate and short patience make the seeds stop at different epochs.
RAGGED = TrainConfig(lr=0.1, max_epochs=12, patience=2)


def assert_identical_run(a, b):
    """Bit for bit: every history value but the wall-clock seconds, and every parameter."""
    assert (a.seed, a.epochs, a.best_epoch, a.best_val_loss) == (b.seed, b.epochs, b.best_epoch, b.best_val_loss)
    drop = lambda h: {k: v for k, v in h.items() if k != "seconds"}  # noqa: E731
    assert [drop(h) for h in a.history] == [drop(h) for h in b.history]
    assert jax.tree.structure(a.best_params) == jax.tree.structure(b.best_params)
    for x, y in zip(jax.tree.leaves(a.best_params), jax.tree.leaves(b.best_params), strict=True):
        np.testing.assert_array_equal(x, y)


def assert_same_run(a, b):
    """Equal to float tolerance (other device counts compile other programs)."""
    assert (a.seed, a.epochs, a.best_epoch) == (b.seed, b.epochs, b.best_epoch)
    assert [h["order_digest"] for h in a.history] == [h["order_digest"] for h in b.history]
    for ha, hb in zip(a.history, b.history, strict=True):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-5, abs=1e-6)
        assert ha["val_loss"] == pytest.approx(hb["val_loss"], rel=1e-5, abs=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), a.best_params, b.best_params)


@pytest.fixture(scope="module")
def cdl_together():
    return train_seeds(make_model("cdl", 8), DATA, [1, 2, 3, 4], RAGGED)


def test_cdl_seeds_together_equal_seeds_alone(cdl_together):
    results = sorted(cdl_together.results, key=lambda r: r.epochs)
    assert results[0].epochs < results[-1].epochs, "the test needs seeds that stop at different epochs"
    for r in (results[0], results[-1]):  # the first to stop and the last
        alone = train_seeds(make_model("cdl", 8), DATA, [r.seed], RAGGED).results[0]
        assert_identical_run(r, alone)


def test_a_seed_is_bit_identical_whatever_it_is_trained_with(cdl_together):
    """`--seeds 1` vs seed 1 of `--seeds 3`, and a resumed group (the seeds not yet done) vs all at once:
    parameters, predictions and history, bit for bit, also for a seed in the second block."""
    model = make_model("cdl", 8)
    five = train_seeds(model, DATA, [1, 2, 3, 4, 5], RAGGED)
    groupings = [[1], [1, 2, 3], [3, 4, 5], [5], [2, 5]]
    probs_five = predict(model, five, DATA.val_x)
    for seeds in groupings:
        part = train_seeds(model, DATA, seeds, RAGGED)
        probs = predict(model, part, DATA.val_x)
        for r, p in zip(part.results, probs, strict=True):
            j = r.seed - 1
            assert_identical_run(five.results[j], r)
            np.testing.assert_array_equal(probs_five[j], p)
    for r in cdl_together.results:  # the module's 4-seed group too
        assert_identical_run(five.results[r.seed - 1], r)
    assert five.timing["blocks"] == -(-5 // SEED_BLOCK) and five.timing["eval_batch"] == part.timing["eval_batch"]
    assert five.timing["padded_seeds"] == 5  # one device, block 1: no member trained for nothing


def test_member_blocks_pack_members_in_order_and_pad_the_last():
    assert member_blocks(3, 4) == [[0, 1, 2, 2]]
    assert member_blocks(5, 4) == [[0, 1, 2, 3], [4, 4, 4, 4]]
    assert member_blocks(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(UserError, match="from 1"):
        train_seeds(make_model("cdl", 8), DATA, [0, 1], RAGGED)


def test_early_stopping_keeps_the_best_parameters(cdl_together):
    for r in cdl_together.results:
        vals = [h["val_loss"] for h in r.history]
        assert r.best_epoch == 1 + int(np.argmin(vals)) and r.best_val_loss == pytest.approx(min(vals))
        if r.epochs < RAGGED.max_epochs:  # stopped: exactly `patience` epochs without improvement
            assert r.epochs - r.best_epoch == RAGGED.patience
        # The kept parameters reproduce the best validation loss.
        logits = make_model("cdl", 8).apply({"params": r.best_params}, DATA.val_x)
        loss = optax.sigmoid_binary_cross_entropy(logits, DATA.val_y.astype(np.float32)).mean()
        assert float(loss) == pytest.approx(r.best_val_loss, rel=1e-5)
        assert [h["best_so_far"] for h in r.history][-1] == pytest.approx(r.best_val_loss)


@pytest.fixture(scope="module")
def dqc_run():
    # 4 qubits keep the compilation short; the code path is the same for 19.
    data = tiny_data(labels=4, n=96)
    return data, train_seeds(make_model("dqc", 4), data, [1, 2], TrainConfig(lr=0.02, max_epochs=4, patience=4))


def test_dqc_seeds_together_equal_alone_and_loss_decreases(dqc_run):
    data, together = dqc_run
    model = make_model("dqc", 4)
    alone = train_seeds(model, data, [2], TrainConfig(lr=0.02, max_epochs=4, patience=4))
    assert_identical_run(together.results[1], alone.results[0])
    np.testing.assert_array_equal(predict(model, together, data.val_x)[1], predict(model, alone, data.val_x)[0])
    for r in together.results:
        assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
        assert r.history[-1]["val_loss"] < r.history[0]["val_loss"]


def test_dqc_members_get_the_same_bits_when_the_kernel_shares_idle_cores():
    """3 seeds (blocks 2 + 1 on 2 cores, the last block alone): the MPS kernel's calls on one thread or
    shared with a helper thread (heads.mps_ffi.set_threads) give every member the same bits."""
    from heads import mps_ffi

    if mps_ffi.kernel() != "ffi":
        pytest.skip("the MPS kernel is not built")
    data = tiny_data(labels=5, n=96)
    model = make_model("dqc", 5, backend="mps")
    config = TrainConfig(lr=0.02, max_epochs=2, patience=4)
    before = mps_ffi.set_threads(1)
    try:
        alone = train_seeds(model, data, [1, 2, 3], config)
        mps_ffi.set_threads(2)  # a helper even on a 1-core machine
        helped = mps_ffi.helped()
        shared = train_seeds(model, data, [1, 2, 3], config)
    finally:
        mps_ffi.set_threads(before)
    assert mps_ffi.helped() > helped  # a helper computed examples
    for a, b in zip(alone.results, shared.results, strict=True):
        assert_identical_run(a, b)


def test_cdl_loss_decreases(cdl_together):
    for r in cdl_together.results:
        assert r.history[1]["train_loss"] < r.history[0]["train_loss"]


def test_cdl_and_dqc_see_the_same_batches(dqc_run):
    data, dqc = dqc_run
    cdl = train_seeds(make_model("cdl", 4), data, [1, 2], TrainConfig(max_epochs=3))
    for c, d in zip(cdl.results, dqc.results, strict=True):
        assert [h["order_digest"] for h in c.history] == [h["order_digest"] for h in d.history[:3]]
    digests = [h["order_digest"] for r in cdl.results for h in r.history]
    assert len(set(digests)) == len(digests)  # every (seed, epoch) has its own order
    # Anyone can recompute an epoch's digest from (seed, epoch) alone.
    n, v, _ = data.train_x.shape
    assert cdl.results[1].history[2]["order_digest"] == order_digest(*epoch_order(2, 3, n, v, first_training_view("augmented", v)))


def test_epoch_order_is_a_permutation_with_valid_views():
    perm, views = epoch_order(7, 1, 101, 3)
    np.testing.assert_array_equal(np.sort(np.asarray(perm)), np.arange(101))
    assert set(np.asarray(views).tolist()) == {0, 1, 2}


def test_last_batch_is_padded_not_dropped():
    # With a vanishing learning rate the epoch's train loss is the mean BCE of the initial
    # parameters over all rows (each with its drawn view); dropping the 5-row last batch changes it.
    data = tiny_data(n=37, n_val=8)
    model = make_model("cdl", 8)
    r = train_seeds(model, data, [3], TrainConfig(lr=1e-12, batch_size=16, max_epochs=1)).results[0]
    params = model.init(jax.random.fold_in(jax.random.key(3), INIT_STREAM), jnp.zeros((1, 16)))["params"]
    perm, views = (np.asarray(a) for a in epoch_order(3, 1, 37, 2, 1))  # the augmented view (1) of each row
    x = data.train_x[perm, views[perm]]
    losses = optax.sigmoid_binary_cross_entropy(model.apply({"params": params}, x), data.train_y[perm].astype(np.float32))
    assert r.history[0]["train_loss"] == pytest.approx(float(losses.mean()), rel=1e-5)
    assert r.history[0]["train_loss"] != pytest.approx(float(losses[:32].mean()), rel=1e-5)


def test_seed_changes_initial_parameters_and_order():
    r = train_seeds(make_model("cdl", 8), DATA, [1, 2], TrainConfig(lr=1e-12, max_epochs=1)).results
    assert not np.allclose(r[0].best_params["linear"]["kernel"], r[1].best_params["linear"]["kernel"])
    assert r[0].history[0]["order_digest"] != r[1].history[0]["order_digest"]


def test_nothing_recompiles_between_epochs():
    compiles = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        counts = []
        for epochs in (2, 7):
            compiles.clear()
            train_seeds(make_model("cdl", 8), DATA, [1, 2], TrainConfig(lr=1e-3, max_epochs=epochs, patience=50))
            counts.append(len(compiles))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert counts[0] == counts[1] and counts[0] <= 4, counts


def test_predict_uses_the_best_parameters(cdl_together):
    probs = predict(make_model("cdl", 8), cdl_together, DATA.val_x)
    assert probs.shape == (4, 40, 8)
    r = cdl_together.results[2]
    want = jax.nn.sigmoid(make_model("cdl", 8).apply({"params": r.best_params}, DATA.val_x))
    np.testing.assert_allclose(probs[2], want, rtol=1e-5, atol=1e-6)


def test_unknown_labels_are_left_out_of_the_loss():
    data = tiny_data()  # DATA's shapes: the program the module compiled already
    data.val_y = data.val_y.copy()
    data.val_y[:, 0] = -1
    r = train_seeds(make_model("cdl", 8), data, [1], TrainConfig(lr=1e-12, max_epochs=1)).results[0]
    params = r.best_params
    logits = make_model("cdl", 8).apply({"params": params}, data.val_x)
    want = optax.sigmoid_binary_cross_entropy(logits[:, 1:], data.val_y[:, 1:].astype(np.float32)).mean()
    assert r.history[0]["val_loss"] == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize(
    "config, seeds, words",
    [(TrainConfig(batch_size=0), [1], "--batch-size"), (TrainConfig(max_epochs=0), [1], "--max-epochs"),
     (TrainConfig(patience=0), [1], "--patience"), (TrainConfig(lr=-1.0), [1], "--lr"), (TrainConfig(), [], "--seeds")],
)
def test_impossible_options_are_refused(config, seeds, words):
    with pytest.raises(UserError, match=words):
        train_seeds(make_model("cdl", 8), DATA, seeds, config)


def test_divergence_stops_loudly():
    data = tiny_data()  # DATA's shapes: the program the module compiled already
    data.train_x = data.train_x.copy()
    data.train_x[3, :, 0] = np.inf
    with pytest.raises(UserError, match="diverged"):
        train_seeds(make_model("cdl", 8), data, [1], TrainConfig(max_epochs=2))


MULTI_DEVICE = textwrap.dedent(
    """
    import jax, numpy as np
    from heads.models import make_model
    from heads.train import TrainConfig, predict, train_seeds
    from test_train import DATA, RAGGED, assert_identical_run, assert_same_run
    assert jax.local_device_count() == 2
    model = make_model("cdl", 8)
    two = train_seeds(model, DATA, [1, 2, 3], RAGGED, block=2)  # one block of 2 x 2 members, 3 used
    one = train_seeds(model, DATA, [1, 2, 3], RAGGED, devices=jax.devices()[:1])
    assert two.timing["devices"] == 2 and two.timing["padded_seeds"] == 4
    assert len(jax.tree.leaves(two.best_params[0])[0].sharding.device_set) == 2
    for a, b in zip(two.results, one.results, strict=True):
        assert_same_run(a, b)
    np.testing.assert_allclose(predict(model, two, DATA.val_x), predict(model, one, DATA.val_x), rtol=1e-5, atol=1e-6)
    # On two devices too, a seed's bits do not depend on its companions (here across two blocks).
    alone = train_seeds(model, DATA, [3], RAGGED, block=2)
    assert_identical_run(two.results[2], alone.results[0])
    five = train_seeds(model, DATA, [1, 2, 3, 4, 5], RAGGED, block=2)
    assert five.timing["blocks"] == 2
    assert_identical_run(five.results[4], train_seeds(model, DATA, [5], RAGGED, block=2).results[0])
    print("OK")
    """
)


def test_seeds_shard_over_two_devices_and_match_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", MULTI_DEVICE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_bench_epoch_times_and_projects(tmp_path):
    from typer.testing import CliRunner

    from heads.cli import app

    out = tmp_path / "epoch.json"
    result = CliRunner().invoke(app, ["bench-epoch", "--tasks", "8", "--models", "cdl", "--seeds", "2", "--rows", "157",
                                      "--views", "2", "--dim", "16", "--epochs", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    (row,) = record["results"]
    assert record["rows"] == 157 and record["val_rows"] == 25 and row["steps"] == 5 and row["scaled"]
    assert row["epoch_s_nih"] == pytest.approx(row["epoch_s"] * 78_506 / 157, rel=1e-3)
    assert row["run_s_nih"] == pytest.approx(row["compile_s"] + 3 * row["epoch_s_nih"], rel=1e-3)
    assert record["projected_sweep_s"] == pytest.approx(row["run_s_nih"], abs=0.1)


# ---------------------------------------------------------------- grids: per-member settings as data
GRID_LRS = (0.003, 0.01, 0.03, 0.1)


@pytest.fixture(scope="module")
def cdl_grid():
    members = [Member(s, lr, patience) for lr in GRID_LRS for patience in (2, 3) for s in (1, 2)]
    # A block of 4 (not the default 1), so that members share blocks and take every slot position.
    return members, train_members(make_model("cdl", 8), DATA, members, batch_size=32, max_epochs=12, block=4)


def test_grid_members_trained_together_equal_each_trained_alone(cdl_grid):
    """A (config, seed) member gets the same bits in a 16-member grid (4 blocks of one executable) as
    in a sweep of its configuration alone: per-member learning rate and patience are data."""
    members, grid = cdl_grid
    model = make_model("cdl", 8)
    assert grid.timing["blocks"] == 4
    epochs = {r.epochs for r in grid.results}
    assert len(epochs) > 1 and len({r.best_val_loss for r in grid.results}) >= 8  # lr and seed matter
    probs = predict(model, grid, DATA.val_x)
    for k in (0, 5, 10, 15):  # members in every block and slot position
        m = members[k]
        alone = train_seeds(model, DATA, [m.seed], TrainConfig(lr=m.lr, patience=m.patience, max_epochs=12), block=4)
        assert_identical_run(grid.results[k], alone.results[0])
        np.testing.assert_array_equal(probs[k], predict(model, alone, DATA.val_x)[0])


def test_a_grid_compiles_once_whatever_its_epochs():
    compiles = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            compiles.append(duration)

    members = [Member(s, lr, 50) for lr in GRID_LRS for s in (1, 2, 3)]
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        counts = []
        for epochs in (2, 6):
            compiles.clear()
            train_members(make_model("cdl", 8), DATA, members, max_epochs=epochs)
            counts.append(len(compiles))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert counts[0] == counts[1] and counts[0] <= 4, counts


def test_dqc_circuit_init_is_per_member_data():
    data = tiny_data(labels=4, n=96)  # dqc_run's data and head: the programs it compiled
    members = [Member(1, 0.02, 3, "uniform"), Member(1, 0.02, 3, "normal"), Member(2, 0.05, 3, "normal")]
    grid = train_members(make_model("dqc", 4), data, members, max_epochs=2)
    a, b = grid.results[0].best_params["circuit"], grid.results[1].best_params["circuit"]
    assert not np.allclose(a, b)
    for k in (1, 2):
        m = members[k]
        model = make_model("dqc", 4, circuit_init=m.circuit_init)
        alone = train_seeds(model, data, [m.seed], TrainConfig(lr=m.lr, patience=m.patience, max_epochs=2))
        assert_identical_run(grid.results[k], alone.results[0])


def test_float16_features_train_as_their_float32_values():
    """Float16 embeddings stay float16 on the device and are cast per batch: the same bits as the
    float32 array of the same values."""
    half = TrainData(DATA.train_x.astype(np.float16), DATA.train_y, DATA.val_x, DATA.val_y)
    widened = TrainData(half.train_x.astype(np.float32), DATA.train_y, DATA.val_x, DATA.val_y)
    a = train_seeds(make_model("cdl", 8), half, [1], TrainConfig(lr=0.01, max_epochs=2)).results[0]
    b = train_seeds(make_model("cdl", 8), widened, [1], TrainConfig(lr=0.01, max_epochs=2)).results[0]
    assert_identical_run(a, b)


def test_views_from_augmented_never_draws_the_plain_view():
    """docs/design.md "Training": one augmented view per example (views 1..V-1), view 0 only when
    it is all there is."""
    assert first_training_view("augmented", 4) == 1 and first_training_view("augmented", 1) == 0
    assert first_training_view("all", 4) == 0
    with pytest.raises(UserError, match="--views-from"):
        first_training_view("plain", 4)
    data = tiny_data(n=64, views=3, n_val=8)
    model = make_model("cdl", 8)
    drawn = {}
    for views_from in ("augmented", "all"):
        r = train_members(model, data, [Member(1, 1e-12, 5)], max_epochs=3, views_from=views_from).results[0]
        first = first_training_view(views_from, 3)
        assert [h["order_digest"] for h in r.history] == [order_digest(*epoch_order(1, e, 64, 3, first)) for e in (1, 2, 3)]
        drawn[views_from] = set(np.concatenate([np.asarray(epoch_order(1, e, 64, 3, first)[1]) for e in (1, 2, 3)]).tolist())
    assert drawn == {"augmented": {1, 2}, "all": {0, 1, 2}}
    one_view = tiny_data(n=32, views=1, n_val=8)
    train_members(model, one_view, [Member(1, 1e-3, 5)], max_epochs=1)  # V == 1: view 0, no error


def test_train_finetune_and_bench_build_their_step_with_one_function(monkeypatch):
    """One training step: `heads train`'s epoch, `heads finetune`'s step and `heads bench`'s timed
    step are all built by `heads.train.make_train_step` (spied on), with training's optimizer."""
    from types import SimpleNamespace

    import heads.train as train
    from heads.bench import Cell, _program
    from heads.finetune import make_step

    calls, real = [], train.make_train_step

    def spy(logits, tx):
        calls.append(tx)
        return real(logits, tx)

    monkeypatch.setattr(train, "make_train_step", spy)
    step, args, _ = _program(Cell("cdl", 4, "-"))
    assert len(calls) == 1
    params, _, loss = step(*args)  # the bench's step runs and its loss is the training loss
    x, y = args[2], args[3]
    assert float(loss) == pytest.approx(float(optax.sigmoid_binary_cross_entropy(
        make_model("cdl", 4).apply({"params": jax.tree.map(jnp.asarray, _program(Cell("cdl", 4, "-"))[1][0])}, x),
        y.astype(jnp.float32)).mean()), rel=1e-6)
    calls.clear()
    train_seeds(make_model("cdl", 8), DATA, [1], TrainConfig(max_epochs=1))
    assert len(calls) == 1
    make_step(SimpleNamespace(module=None), make_model("cdl", 4), optax.adam(1e-4))
    assert len(calls) == 3  # finetune: trained and frozen backbone variants
