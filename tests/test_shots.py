"""Finite measurement shots and the effective width of a trained DQC (`heads shots`, `analysis.shots`)."""

import json
import math
import shutil

import numpy as np
import pytest
from headsdata import make_stores
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from analysis.shots import shots_figure, shots_table, width_table
from cxrfeat.store import FeatureStore
from heads import runs
from heads import shots as sh
from heads.cli import app
from heads.quantum import expvals

BITS3 = (np.arange(8)[:, None] >> np.arange(2, -1, -1)) & 1  # (8, 3): qubit 0 is the most significant bit


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _random_circuit(rng, b, n, layers):
    return rng.uniform(-math.pi / 2, math.pi / 2, (b, n)), rng.uniform(0, 2 * math.pi, (layers, n))


# ---------------------------------------------------------------- sampling
def test_sample_mean_converges_to_the_exact_expectation():
    z = np.linspace(-0.98, 0.98, 41)
    rng = np.random.default_rng(1)
    for shots in (100, 10_000, 1_000_000):
        zhat = sh.sample_marginal(z, shots, rng)
        assert np.all(np.abs(zhat) <= 1) and np.allclose((1 - zhat) / 2 * shots, np.round((1 - zhat) / 2 * shots))
        score = (zhat - z) / np.sqrt((1 - z**2) / shots)  # z-scores of the 41 means
        assert np.max(np.abs(score)) < 4.5
        assert abs(score.mean()) < 4.5 / math.sqrt(len(z))
    # The variance over repeated draws is the binomial one, (1 - z^2)/N (chi-square bound, 4000 draws).
    draws = np.stack([sh.sample_marginal(np.array([0.3, -0.7]), 50, rng) for _ in range(4000)])
    ratio = draws.var(axis=0, ddof=1) / ((1 - np.array([0.3, -0.7]) ** 2) / 50)
    assert np.all(np.abs(ratio - 1) < 5 * math.sqrt(2 / 4000))
    # Certain outcomes stay certain.
    assert np.array_equal(sh.sample_marginal(np.array([1.0, -1.0]), 7, rng), [1.0, -1.0])


def test_readout_error_scales_the_expectation_by_one_minus_2p():
    assert sh.readout_probability(np.array([1.0, -1.0, 0.0]), 0.1) == pytest.approx([0.1, 0.9, 0.5])
    z = np.linspace(-0.95, 0.95, 21)
    rng = np.random.default_rng(2)
    shots = 1_000_000
    for p in (0.02, 0.1, 0.3):
        zhat = sh.sample_marginal(z, shots, rng, readout_error=p)
        want = (1 - 2 * p) * z
        sd = np.sqrt((1 - want**2) / shots)
        assert np.max(np.abs(zhat - want) / sd) < 4.5
        # Far from the ideal value: the shrinkage is real, not noise.
        assert np.max(np.abs(zhat - z)) > 0.9 * 2 * p * 0.95
    # The same through whole-bit-string sampling (independent per-qubit flips of the counts).
    probs = sh.circuit_probabilities(*_random_circuit(np.random.default_rng(3), 5, 3, 2))
    exact = probs @ (1 - 2 * BITS3)
    zhat = sh.sample_joint(probs, shots, rng, readout_error=0.1)
    assert np.max(np.abs(zhat - 0.8 * exact) / np.sqrt((1 - (0.8 * exact) ** 2) / shots)) < 4.5


def test_circuit_probabilities_match_pennylane_and_the_simulator():
    qml = pytest.importorskip("pennylane")
    rng = np.random.default_rng(4)
    for n, layers in ((2, 1), (3, 2), (4, 3)):
        angles, theta = _random_circuit(rng, 3, n, layers)
        ours = sh.circuit_probabilities(angles, theta)
        dev = qml.device("default.qubit", wires=n)

        @qml.qnode(dev)
        def circuit(a, w, n=n):
            for i in range(n):
                qml.Hadamard(wires=i)
                qml.RY(a[i], wires=i)
            qml.BasicEntanglerLayers(w, wires=range(n), rotation=qml.RY)
            return qml.probs(wires=range(n))

        ref = np.stack([np.asarray(circuit(a, theta)) for a in angles])
        np.testing.assert_allclose(ours, ref, atol=1e-10)
        bits = (np.arange(2**n)[:, None] >> np.arange(n - 1, -1, -1)) & 1
        np.testing.assert_allclose(ours @ (1 - 2 * bits), np.asarray(expvals(angles, theta, backend="statevector")),
                                   atol=1e-5)


def test_joint_sampling_keeps_the_correlations_that_marginal_sampling_drops():
    """Same means and variances; only joint draws have Cov(ẑ_i, ẑ_j) = (<Z_i Z_j> - <Z_i><Z_j>)/N."""
    rng = np.random.default_rng(5)
    angles, theta = _random_circuit(rng, 1, 3, 3)
    probs = sh.circuit_probabilities(angles, theta)[0]
    signs = 1 - 2 * BITS3
    z = probs @ signs
    cov = (signs * probs[:, None]).T @ signs - np.outer(z, z)  # covariance of the Z vector in this state
    assert np.max(np.abs(cov - np.diag(np.diag(cov)))) > 0.05  # the ring's outputs are correlated
    shots, draws = 40, 6000
    joint = sh.sample_joint(np.repeat(probs[None], draws, 0), shots, rng)
    marginal = sh.sample_marginal(np.repeat(z[None], draws, 0), shots, rng)
    se = 5 / math.sqrt(draws) / shots  # a generous bound on a covariance estimate's error (|Z| <= 1)
    np.testing.assert_allclose(np.cov(joint.T), cov / shots, atol=se * 2)
    np.testing.assert_allclose(np.cov(marginal.T), np.diag(np.diag(cov)) / shots, atol=se * 2)
    np.testing.assert_allclose(joint.mean(0), z, atol=5 * math.sqrt(1 / shots / draws))


def test_auroc_with_a_million_shots_approaches_the_exact_auroc():
    rng = np.random.default_rng(6)
    n_rows, n = 400, 4
    z = np.tanh(rng.normal(size=(n_rows, n)))
    w, b = rng.normal(size=(n, 2)), np.zeros(2)
    logits = z @ w + b
    y = (rng.random((n_rows, 2)) < 1 / (1 + np.exp(-2 * logits))).astype(np.int8)
    exact = [roc_auc_score(y[:, j], logits[:, j]) for j in range(2)]
    gaps = {}
    for shots in (10, 1_000_000):
        zhat = sh.sample_marginal(z, shots, np.random.default_rng(7))
        noisy = zhat @ w + b
        gaps[shots] = max(abs(roc_auc_score(y[:, j], noisy[:, j]) - exact[j]) for j in range(2))
    assert gaps[1_000_000] < 2e-3
    assert gaps[10] > 5 * gaps[1_000_000]


def test_width_counts_qubits_whose_expectation_varies():
    z = np.stack([np.full(50, 0.4), np.linspace(-0.5, 0.5, 50), np.r_[np.full(25, 0.005), np.full(25, -0.005)]], 1)
    w = sh.width(z, threshold=1e-2)
    assert w["sd"] == pytest.approx([0.0, np.std(np.linspace(-0.5, 0.5, 50)), 0.005])
    assert w["above"] == 1 and w["qubits_above"] == [1] and w["qubits"] == 3
    assert w["shots_to_resolve"][0] is None
    assert w["shots_to_resolve"][1] == pytest.approx(np.mean(1 - z[:, 1] ** 2) / np.var(z[:, 1]))
    assert sh.width(z, threshold=0.004)["above"] == 2


def test_options_are_checked():
    assert sh.parse_shots("100, 10,1e3,10") == [10, 100, 1000]
    for bad in ("0", "ten", "1.5", ""):
        with pytest.raises(sh.UserError, match="--shots"):
            sh.parse_shots(bad)
    for kwargs, option in (({"repeats": 0}, "--repeats"), ({"readout_error": 0.5}, "--readout-error"),
                           ({"sampling": "both"}, "--sampling"), ({"threshold": -1.0}, "--width-threshold")):
        with pytest.raises(sh.UserError, match=option):
            sh.ShotSettings(**kwargs).check()


# ---------------------------------------------------------------- on a real trained DQC
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny sweep (CXR-8: 8 qubits, dim 32, 120 test rows) of CDL and DQC, 2 seeds, standardized features."""
    root = tmp_path_factory.mktemp("shots")
    features = make_stores(root / "features")
    r = invoke("sweep", "--tasks", "8", "--seeds", "2", "--models", "cdl,dqc", "--features", features,
               "--runs", root / "runs", "--name", "t", "--max-epochs", "2", "--lr", "0.01", "--patience", "2",
               "--feature-norm", "standardize")
    assert r.exit_code == 0, r.output
    return root


def test_heads_shots_on_a_sweep_writes_sensible_numbers(trained):
    sweep = trained / "runs" / "t"
    r = invoke("shots", sweep, "--shots", "10,1000000", "--repeats", "3", "--seed", "1")
    assert r.exit_code == 0, r.output
    assert "AUROC with finite shots" in r.output and "Effective width" in r.output
    assert "CXR-8 seed 1" in r.output and "CXR-cxr" not in r.output  # each run named once, readably
    assert not (sweep / "cxr-8" / "cdl" / "seed-1" / "shots.json").exists()
    for seed in (1, 2):
        d = sweep / "cxr-8" / "dqc" / f"seed-{seed}"
        doc = json.loads((d / "shots.json").read_text())
        metrics = runs.read_metrics(d)
        assert doc["settings"] == {"shots": [10, 1000000], "repeats": 3, "readout_error": 0.0, "seed": 1,
                                   "sampling": "marginal"}
        assert set(doc["test_sets"]) == {"nih-cxr-lt", "mimic-cxr-lt"}
        for key, entry in doc["test_sets"].items():
            exact = entry["exact"]["mean_auroc"]
            assert exact == pytest.approx(metrics["test_sets"][key]["mean_auroc"], abs=1e-6)
            few, many = entry["shots"]
            assert len(few["auroc"]) == 3 and few["auroc_sd"] > 0 and 0 < few["auroc_mean"] < 1
            assert many["auroc_mean"] == pytest.approx(exact, abs=5e-3)
            assert 0 < many["auprc_mean"] <= 1
            assert entry["n"] == 120
        assert "Hernia" not in [k for k, v in doc["test_sets"]["mimic-cxr-lt"]["exact"]["per_label_auroc"].items()
                                if v is not None]  # one class only in the external set: undefined, left out
    # Same seed, same draws: a second run writes the same numbers.
    first = json.loads((sweep / "cxr-8" / "dqc" / "seed-1" / "shots.json").read_text())["test_sets"]
    again = invoke("shots", sweep / "cxr-8" / "dqc" / "seed-1", "--shots", "10,1000000", "--repeats", "3", "--seed", "1")
    assert again.exit_code == 0, again.output
    assert json.loads((sweep / "cxr-8" / "dqc" / "seed-1" / "shots.json").read_text())["test_sets"] == first

    rows = shots_table(sweep)
    row = next(r for r in rows if r["test_set"] == "nih-cxr-lt" and r["shots"] == 10)
    assert row["seeds"] == 2 and row["draws"] == 6 and row["task"] == "cxr-8" and row["configuration"] == ""
    per_seed = [json.loads((sweep / "cxr-8" / "dqc" / f"seed-{s}" / "shots.json").read_text())["test_sets"]["nih-cxr-lt"]
                for s in (1, 2)]
    assert row["auroc_mean"] == pytest.approx(np.mean([v for e in per_seed for v in e["shots"][0]["auroc"]]))
    assert row["exact_auroc"] == pytest.approx(np.mean([e["exact"]["mean_auroc"] for e in per_seed]))
    png = shots_figure(rows, trained / "fig" / "shots.png", title="synthetic")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shots_figure([], trained / "fig" / "none.png") is None


def test_joint_sampling_and_readout_error_on_the_trained_run(trained):
    d = trained / "runs" / "t" / "cxr-8" / "dqc" / "seed-1"
    r = invoke("shots", d, "--shots", "1000000", "--repeats", "1", "--sampling", "joint", "--readout-error", "0.05")
    assert r.exit_code == 0, r.output
    doc = json.loads((d / "shots.json").read_text())
    entry = doc["test_sets"]["nih-cxr-lt"]
    # Readout error shrinks every <Z> by the same factor: a positive affine map of each logit's signal,
    # so the ranking, and the AUROC, survive at many shots.
    assert doc["settings"]["sampling"] == "joint" and doc["settings"]["readout_error"] == 0.05
    assert entry["shots"][0]["auroc_mean"] == pytest.approx(entry["exact"]["mean_auroc"], abs=5e-3)


def test_width_counts_equal_a_direct_computation(trained):
    d = trained / "runs" / "t" / "cxr-8" / "dqc" / "seed-2"
    params = runs.load_params(d)
    with np.load(d / "feature_norm.npz") as f:
        mean, sd = f["mean"], f["sd"]
    x = (FeatureStore.open(trained / "features" / "nih-cxr-lt" / "test.zarr").load().embeddings[:, 0] - mean) / sd
    angles = np.tanh(x @ params["pre"]["kernel"] + params["pre"]["bias"]) * math.pi / 2
    z = np.asarray(expvals(angles.astype(np.float32), params["circuit"], backend="pennylane"), np.float64)
    spread = z.std(axis=0)
    threshold = float(np.median(spread))  # splits the qubits, so the count is not trivially all or none
    r = invoke("shots", d, "--width-only", "--width-threshold", repr(threshold))
    assert r.exit_code == 0, r.output
    w = json.loads((d / "width.json").read_text())["test_sets"]["nih-cxr-lt"]
    np.testing.assert_allclose(w["sd"], spread, rtol=1e-4, atol=1e-6)
    assert w["above"] == int((spread > threshold).sum()) and 0 < w["above"] < 8
    rows = [r for r in width_table(trained / "runs" / "t") if r["test_set"] == "nih-cxr-lt"]
    assert {r["threshold"] for r in rows} >= {threshold}


def test_refusals_name_the_fault(trained, tmp_path):
    sweep = trained / "runs" / "t" / "cxr-8"
    cdl = invoke("shots", sweep / "cdl" / "seed-1")
    assert cdl.exit_code != 0 and "a CDL run" in cdl.output and "DQC runs only" in cdl.output
    unfinished = tmp_path / "seed-1"
    shutil.copytree(sweep / "dqc" / "seed-1", unfinished)
    (unfinished / runs.DONE).unlink()
    r = invoke("shots", unfinished)
    assert r.exit_code != 0 and "unfinished run" in r.output
    r = invoke("shots", sweep / "dqc" / "seed-1", "--features", tmp_path / "nowhere")
    assert r.exit_code != 0 and "no feature store" in r.output and "--features" in r.output
    other = make_stores(tmp_path / "other", seed=1)  # same ids, other embeddings: not the run's store
    r = invoke("shots", sweep / "dqc" / "seed-1", "--features", other)
    assert r.exit_code != 0 and "differ from its saved predictions" in r.output
    (unfinished / "feature_norm.npz").unlink()
    runs.finish(unfinished)
    r = invoke("shots", unfinished)
    assert r.exit_code != 0 and "feature_norm.npz" in r.output
    r = invoke("shots", tmp_path / "empty-sweep")
    assert r.exit_code != 0 and "no such folder" in r.output
    (tmp_path / "empty-sweep").mkdir()
    r = invoke("shots", tmp_path / "empty-sweep")
    assert r.exit_code != 0 and "no finished DQC run" in r.output
    r = invoke("shots", sweep / "dqc" / "seed-1", "--shots", "0")
    assert r.exit_code != 0 and "--shots" in r.output


# ---------------------------------------------------------------- `heads noise` on the same trained run
def test_heads_noise_on_a_sweep_writes_sensible_numbers(trained):
    sweep = trained / "runs" / "t"
    r = invoke("noise", sweep, "--noise", "sycamore-2019", "--scale", "0,1,10", "--method", "mps", "--trajectories", "4")
    assert r.exit_code == 0, r.output
    assert "AUROC under the noise model sycamore-2019" in r.output and "CXR-8 seed 1" in r.output
    assert not (sweep / "cxr-8" / "cdl" / "seed-1" / "noise.json").exists()
    d = sweep / "cxr-8" / "dqc" / "seed-1"
    doc = json.loads((d / "noise.json").read_text())
    assert doc["settings"]["model"]["source"].startswith("Arute") and doc["settings"]["scales"] == [0.0, 1.0, 10.0]
    metrics = runs.read_metrics(d)
    for key, entry in doc["test_sets"].items():
        zero, one, ten = entry["scales"]
        assert zero["method"] == "exact" and zero["z_stderr_mean"] is None  # scale 0: the noiseless circuit itself
        assert zero["auroc_mean"] == pytest.approx(metrics["test_sets"][key]["mean_auroc"], abs=1e-6)
        assert one["method"] == "mps" and one["trajectories"] == 4 and one["z_stderr_mean"] > 0
        assert zero["z_shift_mean"] < 1e-6 < one["z_shift_mean"] < ten["z_shift_mean"]
        assert ten["auroc_mean"] != pytest.approx(zero["auroc_mean"], abs=1e-4)  # noise changes the ranking


def test_noise_trajectories_on_the_trained_run_agree_with_the_density_matrix(trained, monkeypatch):
    from heads import noise_eval as ne
    from heads.noise import NoiseModel

    run = sh.open_run(trained / "runs" / "t" / "cxr-8" / "dqc" / "seed-2")
    t = sh.load_test(run, "nih-cxr-lt")
    theta = np.asarray(run.params["circuit"], np.float32)
    model = NoiseModel.load("sycamore-2019").scaled(5)
    exact, _ = ne.noisy_z(t.angles[:40], theta, model, "density", trajectories=1, key_seed=[0])
    mean, se = ne.noisy_z(t.angles[:40], theta, model, "mps", trajectories=120, key_seed=[0])
    assert np.all(np.abs(mean - exact) <= 4.5 * se + 1e-5)
    again, _ = ne.noisy_z(t.angles[:40], theta, model, "mps", trajectories=120, key_seed=[0])
    np.testing.assert_array_equal(mean, again)  # seeded: the same draws
    monkeypatch.setattr(ne, "CHUNK", 16)  # other chunks: every example keeps its own draws
    chunked, _ = ne.noisy_z(t.angles[:40], theta, model, "mps", trajectories=120, key_seed=[0])
    np.testing.assert_allclose(chunked, mean, atol=1e-6)


def test_heads_noise_refusals_name_the_fault(trained, tmp_path):
    sweep = trained / "runs" / "t" / "cxr-8"
    r = invoke("noise", sweep / "cdl" / "seed-1", "--noise", "sycamore-2019")
    assert r.exit_code != 0 and "a CDL run" in r.output and "noise models apply to DQC runs only" in r.output
    r = invoke("noise", sweep / "dqc" / "seed-1", "--noise", tmp_path / "none.toml")
    assert r.exit_code != 0 and "no such file" in r.output
    r = invoke("noise", sweep / "dqc" / "seed-1", "--noise", "sycamore-2019", "--scale", "0,30")
    assert r.exit_code != 0 and "scaled by 30" in r.output and "not a probability" in r.output
    r = invoke("noise", sweep / "dqc" / "seed-1", "--noise", "sycamore-2019", "--method", "exact")
    assert r.exit_code != 0 and "--method 'exact'" in r.output
    r = invoke("noise", sweep / "dqc" / "seed-1", "--noise", "sycamore-2019", "--scale", "-1")
    assert r.exit_code != 0 and "--scale" in r.output


def test_noise_in_the_report_with_break_even_scales(trained, tmp_path):
    from analysis.noise import break_even, noise_table
    from analysis.report import build_report

    sweep = tmp_path / "runs" / "t"
    shutil.copytree(trained / "runs" / "t", sweep)
    r = invoke("noise", sweep, "--noise", "sycamore-2019", "--scale", "0,3,30", "--method", "mps", "--trajectories", "4")
    assert r.exit_code != 0 and "scaled by 30" in r.output  # readout errors above 1: refused before any work
    r = invoke("noise", sweep, "--noise", "sycamore-2019", "--scale", "0,3,12", "--method", "mps", "--trajectories", "4")
    assert r.exit_code == 0, r.output
    rows = noise_table(sweep)
    assert {(x["test_set"], x["scale"]) for x in rows} == {(t, s) for t in ("nih-cxr-lt", "mimic-cxr-lt") for s in (0.0, 3.0, 12.0)}
    for row in rows:
        docs = [json.loads((sweep / "cxr-8" / "dqc" / f"seed-{s}" / "noise.json").read_text())["test_sets"][row["test_set"]]
                for s in (1, 2)]
        cell = [next(c for c in d["scales"] if c["scale"] == row["scale"]) for d in docs]
        assert row["seeds"] == 2 and row["auroc_mean"] == pytest.approx(np.mean([c["auroc_mean"] for c in cell]))
        cdl = [runs.read_metrics(sweep / "cxr-8" / "cdl" / f"seed-{s}")["test_sets"][row["test_set"]]["mean_auroc"]
               for s in (1, 2)]
        assert row["cdl_auroc"] == pytest.approx(np.mean(cdl))
    for b in break_even(rows):
        curve = sorted((x["scale"], x["auroc_mean"]) for x in rows if x["test_set"] == b["test_set"])
        below = [s for s, a in curve if s > 0 and a < b["noiseless_auroc"] - 0.01]
        if b["drop_scale"] is None:
            assert not below
        else:  # between the last scale above the level and the first below it
            first = below[0]
            before = max(s for s, _ in curve if s < first)
            assert (before if before > 0 else 0) < b["drop_scale"] <= first
    p = build_report(runs=sweep, features=trained / "features", out=tmp_path / "report", resamples=20)
    md = p.read_text()
    assert "## Device noise (`heads noise`)" in md and "figures/noise.png" in md and "Arute" in md
    assert (tmp_path / "report" / "tables" / "noise_break_even.csv").exists()
    assert (tmp_path / "report" / "figures" / "noise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
