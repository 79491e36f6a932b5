"""Old runs keep reading: `analysis report` over the frozen legacy run folders gives the stored tables byte for byte.

tests/data/legacy/ was written once by tests/make_legacy_runs.py with the code of the `legacy` commit
(before the run layout changed): tiny feature stores, a plain sweep of CXR-8 and CXR-14 with fine-tuned
CXR-8 heads beside it (runs/plain), a grid sweep (runs/grid), `heads shots` results, and the report's
tables/*.csv (expected/<sweep>/tables). Every CSV the report writes is compared: with an empty --bench
folder there is no machine-dependent Table III, and the only wall-clock column (convergence.csv
seconds) is read from the frozen history.jsonl files (see the script's docstring). Never regenerate
the fixture with newer code: it would only compare that code with itself.
"""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analysis.cli import app

LEGACY = Path(__file__).parent / "data" / "legacy"
SWEEPS = ("plain", "grid")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    """A copy of the fixture (the stored one stays untouched) and `analysis report` of each of its sweeps."""
    root = tmp_path_factory.mktemp("legacy")
    legacy = root / "legacy"
    shutil.copytree(LEGACY, legacy)
    no_bench = root / "no-bench"  # an empty --bench folder: no Table III (step times of this machine)
    no_bench.mkdir()
    for name in SWEEPS:
        res = CliRunner().invoke(app, ["report", "--runs", str(legacy / "runs" / name), "--features",
                                       str(legacy / "features"), "--bench", str(no_bench), "--out",
                                       str(root / "reports" / name)])
        assert res.exit_code == 0, res.output + repr(res.exception)
    return root / "reports"


def _csvs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((folder / "tables").glob("*.csv"))}


@pytest.mark.parametrize("sweep", SWEEPS)
def test_report_tables_equal_the_stored_ones_byte_for_byte(reports, sweep):
    expected, got = _csvs(LEGACY / "expected" / sweep), _csvs(reports / sweep)
    assert expected, f"no stored tables for {sweep}"
    assert sorted(got) == sorted(expected), "the report writes another set of tables"
    for name, path in expected.items():
        want, have = path.read_bytes(), got[name].read_bytes()
        if want != have:
            diff = "".join(difflib.unified_diff(want.decode().splitlines(True), have.decode().splitlines(True),
                                                f"stored {sweep}/{name}", f"now {sweep}/{name}", n=0))
            pytest.fail(f"{sweep}/tables/{name} differs from the stored table:\n{diff[:4000]}")


def test_the_fixture_still_holds_every_kind_of_run():
    """Finetune runs, a grid, shots, feature norms and both test sets: the fixture cannot silently lose them."""
    runs = LEGACY / "runs"
    done = sorted(p.parent for p in runs.rglob("DONE"))
    assert len(done) == 24  # plain: 2 tasks x 2 models x 2 seeds, + 2 finetune models x 2 seeds; grid: 6 configs x 2 seeds
    for run in done:
        for name in ("config.json", "history.jsonl", "best.safetensors", "metrics.json"):
            assert (run / name).is_file(), run / name
        assert {p.name for p in (run / "predictions").glob("*.npz")} == {"nih-cxr-lt.npz", "mimic-cxr-lt.npz"}, run
    configs = {run: json.loads((run / "config.json").read_text()) for run in done}

    finetune = [r for r, c in configs.items() if c["settings"]["mode"] == "finetune"]
    assert sorted(r.relative_to(runs).as_posix() for r in finetune) == [
        f"plain/cxr-8/{m}-finetune/seed-{s}" for m in ("cdl", "dqc") for s in (1, 2)]
    features = [r for r in done if r not in finetune]
    assert all((r / "feature_norm.npz").is_file() for r in features)

    grid = [r for r, c in configs.items() if c.get("grid", {}).get("name")]
    assert {configs[r]["grid"]["name"] for r in grid} == {"lr-1e-3", "lr-3e-3", "lr-1e-3_layers-1", "lr-1e-3_layers-2",
                                                         "lr-3e-3_layers-1", "lr-3e-3_layers-2"}
    assert all(r.relative_to(runs).parts[0] == "grid" for r in grid) and len(grid) == 12
    assert json.loads((runs / "grid" / "sweep.json").read_text())["grid"]["varying"]
    assert (runs / "plain" / "sweep.json").is_file()

    shots = sorted(p.parent.relative_to(runs).as_posix() for p in runs.rglob("shots.json"))
    assert "plain/cxr-8/dqc/seed-1" in shots and "grid/cxr-8/dqc/lr-3e-3_layers-2/seed-1" in shots and len(shots) == 10
    assert all((runs / s / "width.json").is_file() for s in shots)

    assert sorted(p.relative_to(LEGACY / "features").as_posix() for p in (LEGACY / "features").glob("*/*.zarr")) == [
        "mimic-cxr-lt/test.zarr", "nih-cxr-lt/test.zarr", "nih-cxr-lt/train.zarr", "nih-cxr-lt/val.zarr"]
    # The stored tables cover every section those runs feed.
    plain, grid_tables = _csvs(LEGACY / "expected" / "plain"), _csvs(LEGACY / "expected" / "grid")
    assert {"per_label_cxr-8_nih-cxr-lt_finetune.csv", "shots.csv", "width.csv", "table1_labels.csv"} <= set(plain)
    assert {"grid.csv", "grid_selection.csv", "shots.csv", "width.csv"} <= set(grid_tables)
    assert "table3_bench.csv" not in plain and "table3_bench.csv" not in grid_tables
