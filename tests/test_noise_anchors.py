"""The anchors of `heads bench --noise --anchors` and per-qubit noise models.

The anchors' circuits (`heads.noise_anchors`: PennyLane `default.mixed`, Qiskit Aer's density matrix
and its statevector trajectories) equal our exact density matrix at small n, so the bench times the
same circuit under the same noise; per-qubit models (calibration data) load from TOML and JSON, are
refused in one line naming the file and key, and give the anchors' values in our density matrix and
our trajectories."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrfeat.errors import UserError
from heads import noise as nz
from heads import noise_anchors as na
from heads import noise_bench as nb

UNIFORM = nz.NoiseModel(p1=0.03, p2=0.05, t1_us=20.0, t2_us=15.0, gate_ns_1q=300.0, gate_ns_2q=900.0,
                        readout_p01=0.04, readout_p10=0.09)
# Three qubits of a made-up calibration: each its own gate, relaxation and readout errors; qubit 2 without T1/T2
PER_QUBIT = nz.NoiseModel(p1=0.01, gate_ns_1q=300.0, gate_ns_2q=900.0, qubits=(
    nz.QubitNoise(p1=0.05, p2=0.10, t1_us=20.0, t2_us=15.0, readout_p01=0.10),
    nz.QubitNoise(p2=0.02, t1_us=60.0, t2_us=30.0, readout_p10=0.20),
    nz.QubitNoise(p1=0.0, p2=0.07)))
PAULI_PER_QUBIT = nz.NoiseModel(qubits=(nz.QubitNoise(p1=0.06, p2=0.12, readout_p01=0.1),
                                        nz.QubitNoise(p1=0.0, p2=0.02), nz.QubitNoise(p1=0.02, p2=0.2, readout_p10=0.15)))


def _inputs(seed, b, n, layers):
    rng = np.random.default_rng(seed)
    return rng.uniform(-np.pi / 2, np.pi / 2, (b, n)), rng.uniform(0, 2 * np.pi, (layers, n))


def _exact(x, w, model, **kw):
    with jax.enable_x64(True):
        return np.asarray(nz.density_expvals(jnp.asarray(x), jnp.asarray(w), model, **kw))


@pytest.mark.parametrize("model,n,layers", [(UNIFORM, 2, 1), (UNIFORM, 4, 2), (PER_QUBIT, 3, 2)])
def test_the_anchors_circuits_are_our_exact_noisy_circuit(model, n, layers):
    x, w = _inputs(n + layers, 2, n, layers)
    want = _exact(x, w, model)
    pennylane = na.pennylane_mixed(n, model, interface="numpy")(x, w)  # the bench's JAX path: checked in its run
    aer, _ = na.aer_expvals(x, w, model, method="density_matrix")
    np.testing.assert_allclose(pennylane, want, atol=1e-10)
    np.testing.assert_allclose(aer, want, atol=1e-10)


def test_per_qubit_rates_matter():
    # The same circuit with qubit 0's rates on every qubit is a different value: the per-qubit rates are used
    x, w = _inputs(1, 2, 3, 2)
    uniform = nz.NoiseModel(**{**PER_QUBIT.at(0).to_json(), "name": "q0"})
    assert np.abs(_exact(x, w, PER_QUBIT) - _exact(x, w, uniform)).max() > 1e-2


def test_aer_trajectories_and_ours_agree_with_the_exact_value():
    # Aer's statevector shots are trajectories of the exact channels (relaxation included); ours
    # sample its Pauli twirl, so ours are checked on a Pauli model with per-qubit rates.
    x, w = _inputs(3, 3, 3, 2)
    shots = 1500
    z, per = na.aer_expvals(x, w, PER_QUBIT, method="statevector", shots=shots, seed=1, pershot=True)
    se = per.std(0, ddof=1) / np.sqrt(shots) * PER_QUBIT.readout_slope()
    assert (np.abs(z - _exact(x, w, PER_QUBIT)) / se).max() < 4.5
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(4), i))(jnp.arange(3))
    mean, stderr = nz.trajectory_expvals(x.astype(np.float32), w.astype(np.float32), PAULI_PER_QUBIT, keys, 1500)
    assert (np.abs(np.asarray(mean) - _exact(x, w, PAULI_PER_QUBIT)) / np.asarray(stderr)).max() < 4.5
    # with relaxation, our trajectories estimate the twirled channel exactly
    mean, stderr = nz.trajectory_expvals(x.astype(np.float32), w.astype(np.float32), PER_QUBIT, keys, 1500)
    assert (np.abs(np.asarray(mean) - _exact(x, w, PER_QUBIT, twirled=True)) / np.asarray(stderr)).max() < 4.5


def test_a_per_qubit_models_draws_keep_the_batch_independence():
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(2), i))(jnp.arange(4))
    all_ops = nz.trajectory_ops(keys, 3, 2, PER_QUBIT)
    np.testing.assert_array_equal(all_ops[1:2], nz.trajectory_ops(keys[1:2], 3, 2, PER_QUBIT))
    # a per-qubit model whose qubits are all alike draws exactly what the uniform model draws
    alike = nz.NoiseModel.from_json({**UNIFORM.to_json(), "qubits": [{"p1": UNIFORM.p1}] * 3})
    np.testing.assert_array_equal(nz.trajectory_ops(keys, 3, 2, alike), nz.trajectory_ops(keys, 3, 2, UNIFORM))


CALIBRATION = """name = "my-device"
source = "calibration of 2026-01-10"
gate_ns_1q = 300.0
gate_ns_2q = 900.0
p1 = 0.01

[[qubits]]   # qubit 0
p1 = 0.05
p2 = 0.10          # the CNOT 0 -> 1
t1_us = 20.0
t2_us = 15.0
readout_p01 = 0.10

[[qubits]]   # qubit 1
p2 = 0.02
t1_us = 60.0
t2_us = 30.0
readout_p10 = 0.20

[[qubits]]   # qubit 2
p1 = 0.0
p2 = 0.07
"""


def test_per_qubit_files_load_from_toml_and_json_and_scale(tmp_path):
    toml = tmp_path / "my-device.toml"
    toml.write_text(CALIBRATION)
    model = nz.NoiseModel.load(toml)
    assert model.qubits == PER_QUBIT.qubits and model.at(2).p2 == 0.07 and model.at(1).p1 == 0.01
    doc = tmp_path / "my-device.json"
    doc.write_text(json.dumps(model.to_json()))
    assert nz.NoiseModel.load(doc) == model
    assert nz.NoiseModel.from_json(model.to_json()) == model
    half = model.scaled(0.5)
    assert half.at(0).p2 == 0.05 and half.at(1).t1_us == 120.0 and half.at(1).readout_p10 == 0.1
    assert model.scaled(0).is_zero and not model.is_zero
    assert "qubits" not in UNIFORM.to_json()  # records of uniform models keep their keys


@pytest.mark.parametrize("edit,message", [
    (("p1 = 0.05", "p1 = 1.5"), "qubits[0]: p1 = 1.5 is not a probability"),
    (("readout_p10 = 0.20", "readout_p10 = 0.20\ngain = 3"), "qubits[1]: unknown key(s) gain"),
    (("t1_us = 60.0", "t1_us = 10.0"), "qubits[1]: t2_us = 30.0 exceeds 2·t1_us"),
    (("[[qubits]]   # qubit 0", "[qubits]"), "qubits must be a list of tables"),
])
def test_bad_per_qubit_files_are_refused_in_one_line_naming_file_and_key(tmp_path, edit, message):
    path = tmp_path / "dev.toml"
    text = CALIBRATION.replace(*edit, 1)
    if edit[1] == "[qubits]":  # one table, not a list of them
        text = text[:text.index("[[qubits]]")]
    path.write_text(text)
    with pytest.raises(UserError) as e:
        nz.NoiseModel.load(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    bad = tmp_path / "dev.json"
    bad.write_text("{")
    with pytest.raises(UserError, match="not a readable JSON file"):
        nz.NoiseModel.load(bad)


def test_a_per_qubit_model_refuses_a_circuit_of_another_width():
    x, w = _inputs(0, 1, 4, 1)
    with pytest.raises(UserError, match="per-qubit rates for 3 qubits, but the circuit has 4"):
        nz.density_expvals(x, w, PER_QUBIT)
    with pytest.raises(UserError, match="per-qubit rates for 3 qubits"):
        nz.trajectory_expvals(x, w, PER_QUBIT, jax.random.key(0), 2)
    from heads.models import make_model

    with pytest.raises(UserError, match="per-qubit rates for 3 qubits"):
        make_model("dqc", 4, noise=PER_QUBIT)


def test_the_bench_agreement_check():
    rng = np.random.default_rng(0)
    exact = rng.uniform(-1, 1, (32, 3))
    values = {"density": exact, "aer-density": exact + 1e-6, "mps": exact + rng.normal(0, 0.1, (32, 3)),
              "aer-statevector": exact + 0.2 + rng.normal(0, 0.1, (32, 3))}  # a biased one
    records = [{"method": m, "operation": "value", "status": "ok", "median_s": 1.0,
                "kind": "exact" if m in ("density", "aer-density") else "trajectories"} for m in values]
    nb.check(records, values)
    got = {r["method"]: r for r in records}
    assert got["aer-density"]["agrees"] and got["density"]["reference"] == "aer-density"
    assert got["mps"]["agrees"] and got["mps"]["max_abs_t"] < nb.T_BOUND
    assert not got["aer-statevector"]["agrees"]
    # without a density matrix, the two trajectory methods are checked against each other
    records = [dict(r) for r in records if r["kind"] == "trajectories"]
    nb.check(records, {m: values[m] for m in ("mps", "aer-statevector")})
    assert {r["reference"] for r in records} == {"mps", "aer-statevector"} and not records[0]["agrees"]


def test_the_anchor_bench_runs_and_records_ratios_and_agreement(tmp_path):
    settings = nb.AnchorSettings(noise="sycamore-2019", widths=(3,), anchors=("aer-density", "aer-statevector"),
                                 trajectories=2, batch_size=4, layers=1, warmup=0, steps=1)
    path, doc = nb.run_anchor_bench(settings, tmp_path)
    rows = {(r["method"], r["operation"]): r for r in doc["records"]}
    assert set(rows) == {("density", "value"), ("density", "value+grad"), ("mps", "value"), ("mps", "value+grad"),
                         ("aer-density", "value"), ("aer-statevector", "value")}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["aer-density", "value"]["agrees"] and rows["aer-density", "value"]["max_abs_diff"] < 1e-5
    assert rows["aer-statevector", "value"]["agrees"] and rows["mps", "value"]["agrees"]
    assert rows["aer-density", "value"]["x_density"] == pytest.approx(
        rows["aer-density", "value"]["median_s"] / rows["density", "value"]["median_s"])
    assert "| 3 | qiskit-aer | aer-density | value |" in path.with_suffix(".md").read_text()
    with pytest.raises(UserError, match="--anchors: tensorcircuit"):
        nb.AnchorSettings(noise="sycamore-2019", anchors=("tensorcircuit",)).check()


def test_the_trapped_ion_preset_is_its_published_figures_converted():
    aria = nz.NoiseModel.load("ionq-aria")
    assert "ionq-aria" in nz.presets() and "IonQ Aria" in aria.source
    # average gate fidelity F = 1 − e·d/(d + 1) for Pauli error e on d levels: 99.95 % (1q), 99.6 % (2q)
    assert aria.p1 == pytest.approx((1 - 0.9995) * 3 / 2) and aria.p2 == pytest.approx((1 - 0.996) * 5 / 4)
    assert aria.readout_p01 == aria.readout_p10 == pytest.approx(1 - 0.9961)


@pytest.mark.parametrize("args,message", [
    (["--anchors", "all"], "--anchors compares noisy simulators: give the noise model"),
    (["--anchors", "qulacs", "--noise", "sycamore-2019"], "--anchors: qulacs — choose from"),
    (["--anchors", "all", "--noise", "missing.toml"], "noise model missing.toml: no such file"),
])
def test_bad_anchor_options_are_refused_in_one_line(tmp_path, args, message):
    from typer.testing import CliRunner

    from heads.cli import app

    result = CliRunner().invoke(app, ["bench", "--tasks", "3", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())
