"""CDL and DQC heads: Table II parameter counts, the forward pass piece by piece, initialisation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from cxrfeat.errors import UserError
from heads.cli import app
from heads.models import BACKBONE_PARAMS, CDL, DQC, circuit_init, make_model, param_counts
from heads.quantum import expvals

# The paper's Table II.
TABLE_II = {
    8: {"classical_preprocess": 16_392, "quantum": 24, "classical_postprocess": 72},
    14: {"classical_preprocess": 28_686, "quantum": 42, "classical_postprocess": 210},
    19: {"classical_preprocess": 38_931, "quantum": 57, "classical_postprocess": 380},
}


@pytest.mark.parametrize("task", [8, 14, 19])
def test_param_counts_equal_table_ii(task):
    dqc = param_counts(task, "dqc")
    assert {k: dqc[k] for k in TABLE_II[task]} == TABLE_II[task]
    assert dqc["backbone"] == BACKBONE_PARAMS == 23_508_032
    assert dqc["head"] == sum(TABLE_II[task].values())
    cdl = param_counts(task, "cdl")
    assert cdl["classical_preprocess"] == TABLE_II[task]["classical_preprocess"]  # CDL-8: 16,392
    assert cdl["quantum"] == cdl["classical_postprocess"] == 0


def test_param_counts_follow_layers_and_dim():
    c = param_counts(8, "dqc", layers=5, dim=32)
    assert c["quantum"] == 40 and c["classical_preprocess"] == 32 * 8 + 8


def test_params_command_prints_table_ii():
    result = CliRunner().invoke(app, ["params", "--tasks", "8,19"])
    assert result.exit_code == 0, result.output
    for number in ("16,392", "38,931", "57", "380", "23,508,032"):
        assert number in result.output
    bad = CliRunner().invoke(app, ["params", "--tasks", "9"])
    assert bad.exit_code == 2 and "task" in bad.output


def test_cdl_is_one_dense_layer_with_lecun_normal_init():
    x = np.random.default_rng(0).normal(size=(5, 2048)).astype(np.float32)
    params = CDL(8).init(jax.random.key(0), x)["params"]
    kernel, bias = params["linear"]["kernel"], params["linear"]["bias"]
    np.testing.assert_array_equal(bias, 0)
    assert abs(float(jnp.std(kernel)) * math.sqrt(2048) - 1) < 0.05  # Lecun normal: var 1/fan_in
    np.testing.assert_allclose(CDL(8).apply({"params": params}, x), x @ kernel + bias, rtol=1e-5, atol=1e-5)


def test_dqc_forward_is_pre_tanh_circuit_post():
    n, layers = 4, 2
    x = np.random.default_rng(1).normal(size=(6, 16)).astype(np.float32)
    model = DQC(n, layers=layers)
    params = model.init(jax.random.key(1), x)["params"]
    assert set(params) == {"pre", "circuit", "post"} and params["circuit"].shape == (layers, n)
    pre = x @ params["pre"]["kernel"] + params["pre"]["bias"]
    z = expvals(jnp.tanh(pre) * (math.pi / 2), params["circuit"])
    want = z @ params["post"]["kernel"] + params["post"]["bias"]
    np.testing.assert_allclose(model.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(params["pre"]["bias"], 0)
    np.testing.assert_array_equal(params["post"]["bias"], 0)


def test_circuit_init_uniform_and_normal():
    key = jax.random.key(0)
    u = np.asarray(circuit_init("uniform")(key, (20_000,)))
    assert u.min() >= 0 and u.max() < 2 * math.pi and abs(u.mean() - math.pi) < 0.05
    g = np.asarray(circuit_init("normal")(key, (20_000,)))
    assert abs(g.std() - 2 * math.pi) < 0.1 and g.min() < 0
    theta = DQC(3, layers=3, circuit_init="normal").init(key, np.zeros((1, 4), np.float32))["params"]["circuit"]
    assert theta.shape == (3, 3)


@pytest.mark.parametrize(
    "kwargs, words",
    [({"model": "svm"}, "unknown model"), ({"backend": "cuda"}, "--backend"), ({"circuit_init": "zeros"}, "--circuit-init"),
     ({"layers": 0}, "--layers")],
)
def test_make_model_refuses_bad_options(kwargs, words):
    args = {"model": "dqc", **kwargs}
    with pytest.raises(UserError, match=words):
        make_model(args.pop("model"), 8, **args)
