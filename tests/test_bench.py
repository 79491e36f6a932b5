"""`heads bench`: a tiny run through the CLI, the JSON it writes, and its ratios."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cxrfeat.errors import UserError
from heads import bench
from heads.cli import app


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(app, ["bench", "--tasks", "4", "--backends", "fast,pennylane", "--steps", "2",
                                      "--warmup", "1", "--batch-size", "4", "--out", str(out), "--no-isolate"])
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").exists()
    return json.loads(files[0].read_text()), files[0]


def test_json_describes_the_machine_and_settings(tiny_run):
    doc, path = tiny_run
    assert doc["format"] == bench.FORMAT and path.stem == bench.describe_machine()["slug"]
    details = doc["machine_details"]
    assert doc["machine"] and details["cpu_cores"] >= 1 and details["platform"] in ("cpu", "gpu", "tpu")
    assert doc["jax_version"] == details["jax"] and doc["date"][:2] == "20"
    assert doc["settings"] | {"tasks": [4], "backends": ["fast", "pennylane"], "steps": 2, "warmup": 1,
                              "batch_size": 4} == doc["settings"]


def test_one_record_per_cell_with_consistent_ratios(tiny_run):
    doc, _ = tiny_run
    cells = {(r["model"], r["backend"]) for r in doc["records"]}
    assert cells == {("cdl", "-"), ("dqc", "fast"), ("dqc", "pennylane"), ("circuit", "fast"), ("circuit", "pennylane")}
    for r in doc["records"]:
        assert r["status"] == "ok" and r["qubits"] == 4 and r["timed_steps"] == 2
        assert r["method"] == {"-": "-", "fast": "statevector", "pennylane": "pennylane"}[r["backend"]]
        assert 0 < r["min_s"] <= r["median_s"] and r["sd_s"] >= 0 and r["compile_s"] > 0
        assert r["peak_memory_mib"] >= 0 and r["peak_memory_source"]
        if r["model"] != "circuit":  # parameters and Adam moments alone make 0.1 MiB
            assert r["peak_memory_mib"] > 0.1
        # The machine's yardstick, timed in the same process, and the step's arithmetic.
        assert r["matmul_s"] > 0 and r["x_matmul"] == pytest.approx(r["median_s"] / r["matmul_s"])
        assert r["matmul_gflops_per_s"] == pytest.approx(2 * 512**3 / r["matmul_s"] / 1e9)
        if r["backend"] != "pennylane":  # PennyLane's step is a host callback: XLA cannot count its work
            assert r["flops"] > 0 and r["gflops_per_s"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
    for model in ("dqc", "circuit"):
        group = {r["backend"]: r for r in doc["records"] if r["model"] == model}
        fastest = min(r["median_s"] for r in group.values())
        for r in group.values():
            assert r["ratio_to_fastest"] == pytest.approx(r["median_s"] / fastest)
            assert r["speedup_vs_pennylane"] == pytest.approx(group["pennylane"]["median_s"] / r["median_s"])
        assert min(r["ratio_to_fastest"] for r in group.values()) == pytest.approx(1.0)


def test_markdown_table_lists_every_record(tiny_run):
    doc, path = tiny_run
    text = path.with_suffix(".md").read_text()
    assert doc["machine"] in text
    assert sum(1 for line in text.splitlines() if line.startswith("| 4 qubits |")) == len(doc["records"])


def test_an_isolated_cell_reports_its_own_peak_memory():
    record = bench.run_isolated(bench.Cell("dqc", 6, "fast", batch_size=4, warmup=1, steps=2), timeout=300)
    assert record["status"] == "ok", record["status"]
    assert record["timed_steps"] == 2 and "RSS" in record["peak_memory_source"]


def test_slow_cells_stop_at_the_time_budget():
    record = bench.run_cell(bench.Cell("circuit", 5, "fast", batch_size=2, warmup=1, steps=1000, max_seconds=0.05))
    assert record["capped"] and 1 <= record["timed_steps"] < 1000


def test_plan_orders_cells_and_adds_the_backbone_variants():
    cells = bench.plan([8, 19], ["fast", "pennylane"], ["cdl", "dqc"], with_backbone=True, steps=3)
    assert [(c.qubits, c.model, c.backend) for c in cells[:6]] == [
        (8, "cdl", "-"), (8, "cdl+resnet50", "-"), (8, "dqc", "fast"), (8, "dqc", "pennylane"),
        (8, "dqc+resnet50", "fast"), (8, "dqc+resnet50", "pennylane")]
    assert len(cells) == 12 and all(c.steps == 3 for c in cells)


@pytest.mark.parametrize("args,message", [
    (["--tasks", "1"], "at least 2 qubits"),
    (["--tasks", "eight"], "qubit counts"),
    (["--backends", "qiskit"], "choose from"),
    (["--models", "resnet"], "choose from"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_bad_options_are_refused(tmp_path, args, message):
    result = CliRunner().invoke(app, ["bench", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output
    assert not list(tmp_path.iterdir())


def test_tensorcircuit_anchor_computes_the_same_circuit():
    pytest.importorskip("tensorcircuit")
    import jax
    import numpy as np

    from heads.quantum import expvals

    rng = np.random.default_rng(0)
    x = rng.uniform(-1.5, 1.5, (2, 4)).astype(np.float32)
    w = rng.uniform(0, 6.28, (2, 4)).astype(np.float32)
    np.testing.assert_allclose(jax.jit(bench._tensorcircuit)(x, w), expvals(x, w, backend="statevector"), atol=1e-5)
    cells = bench.plan([4], ["fast", "tensorcircuit"], ["cdl", "dqc", "circuit"])
    assert [(c.model, c.backend) for c in cells] == [("cdl", "-"), ("dqc", "fast"), ("circuit", "fast"),
                                                     ("circuit", "tensorcircuit")]


def test_xla_flops_counts_a_matmul_exactly():
    import jax
    import jax.numpy as jnp

    compiled = jax.jit(jnp.matmul).lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
    assert bench.xla_flops(compiled) == 2 * 64 * 32 * 16
    y = bench.matmul_yardstick(n=64, steps=3)
    assert y["n"] == 64 and y["gflops_per_s"] == pytest.approx(2 * 64**3 / y["median_s"] / 1e9)


def test_mps_flops_count_every_site_of_the_scans():
    # XLA's cost analysis counts a loop body once; the bench counts the MPS step with its site scans
    # unrolled, so twice the sites cost about twice the FLOPs (the rest of the step is small).
    counts = {}
    for n in (16, 32):
        cell = bench.Cell("circuit", n, "mps", batch_size=4)
        step, args, _ = bench._program(cell)
        compiled = step.lower(*args).compile()
        counts[n] = bench.counted_flops(cell, compiled)
        assert counts[n] > 2 * bench.xla_flops(compiled)  # the loop bodies, now counted per site
    assert 1.8 < counts[32] / counts[16] < 2.2


def test_noisy_circuit_cells_time_trajectories_and_the_density_matrix(tmp_path):
    opts = bench.BenchOptions.parse(tasks="4", backends="fast,density", models="circuit", warmup=1, steps=2,
                                    out=tmp_path, isolate=False, noise="sycamore-2019", trajectories=3)
    path = bench.run_bench(opts)
    doc = json.loads(path.read_text())
    assert doc["settings"]["noise"] == "sycamore-2019" and doc["settings"]["trajectories"] == 3
    methods = {r["backend"]: r["method"] for r in doc["records"]}
    assert methods == {"fast": "mps x 3 trajectories", "density": "density"}
    assert all(r["status"] == "ok" and r["noise"] == "sycamore-2019" for r in doc["records"])
    assert "noise model sycamore-2019" in path.with_suffix(".md").read_text()
    for bad, message in ((dict(models="cdl,circuit"), "give --models circuit"),
                         (dict(backends="halves"), "have no noise"),
                         (dict(noise=str(tmp_path / "none.toml")), "no such file")):
        kw = dict(tasks="4", backends="fast", models="circuit", noise="sycamore-2019") | bad
        with pytest.raises(UserError, match=message):
            bench.BenchOptions.parse(**kw)
