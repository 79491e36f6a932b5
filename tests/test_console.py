"""What the CLIs print, read in an 80-column log: progress lines, tables, --help, hints, no third-party noise."""

import io
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest
import typer
from conftest import TINY_RESNET  # noqa: F401 (the tiny ResNet of the `backbone` fixture)
from headsdata import SMALL, cli_sweep, make_stores
from rich.console import Console
from typer.testing import CliRunner

from analysis.cli import app as analysis_app
from cxrfeat.cli import app as cxrfeat_app
from cxrfeat.cliutil import prose
from cxrfeat.console import LiveProgress, fit, progress
from cxrfeat.errors import UserError
from cxrfeat.store import FeatureStore
from heads.cli import app as heads_app
from heads.sweepview import print_summary

ANSI = re.compile(r"\x1b\[")
WIDTH = 80


@pytest.fixture(autouse=True)
def _log_like(monkeypatch):
    """An 80-column log: no terminal, COLUMNS=80, progress in its default (auto) mode."""
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    for var in ("CXR_PROGRESS", "CXR_PROGRESS_EVERY", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)


def _log(**kw) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=WIDTH, **kw), buf


# ------------------------------------------------------------------------------------------ progress
def test_progress_outside_a_terminal_is_plain_lines_at_every_tenth():
    console, buf = _log()
    with progress(console, unit="img") as bars:
        task = bars.add_task("features/nih-cxr-lt/train.zarr", total=1000)
        for _ in range(1000):
            bars.advance(task)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 11, lines  # started, then each tenth (the last one says it is done)
    assert not ANSI.search(buf.getvalue()) and "\r" not in buf.getvalue() and "…" not in buf.getvalue()
    assert all(line.startswith("features/nih-cxr-lt/train.zarr: ") for line in lines)
    assert lines[0].startswith("features/nih-cxr-lt/train.zarr: 0/1000, 0%")
    assert "500/1000, 50%" in lines[5] and "img/s" in lines[5] and "ETA " in lines[5]
    assert "1000/1000, 100%" in lines[-1] and "ETA" not in lines[-1] and "elapsed" in lines[-1]
    bars.update(task, status="done")  # a finished task is not reported again
    assert len(buf.getvalue().splitlines()) == 11


def test_progress_modes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CXR_PROGRESS", "off")
    console, buf = _log()
    with progress(console) as bars:
        bars.advance(bars.add_task("x", total=3), 3)
    assert buf.getvalue() == ""
    monkeypatch.setenv("CXR_PROGRESS", "bar")
    assert isinstance(progress(console), LiveProgress)
    monkeypatch.setenv("CXR_PROGRESS", "bars")
    with pytest.raises(UserError, match="CXR_PROGRESS='bars': expected one of auto, bar, lines, off"):
        progress(console)
    monkeypatch.setenv("CXR_PROGRESS", "lines")
    monkeypatch.setenv("CXR_PROGRESS_EVERY", "0")
    with pytest.raises(UserError, match="CXR_PROGRESS_EVERY='0': expected a positive number of seconds"):
        progress(console)


def test_live_line_fits_80_columns_whole():
    """On an 80-column terminal the bar takes the room left; the numbers are never cut to '1…' or 'ETA -:…'."""
    console, _ = _log(force_terminal=True)
    bars = LiveProgress(console=console, unit="epoch")
    task_id = bars.add_task("CXR-19 DQC lr-1e-3_layers-3 seed(s) 1-5", total=30, status="compiling")
    bars.update(task_id, completed=12, status="loss train 0.6931 val 0.6920, 5/5 training")
    line = bars.task_line(bars._tasks[task_id], WIDTH)
    text = line.plain
    assert "CXR-19 DQC lr-1e-3_layers-3 seed(s) 1-5" in text and "12/30" in text and "40%" in text
    assert "ETA " in text and "5/5 training" in text and "…" not in text
    assert line.overflow == "fold"  # too long for the width: wrapped onto the next line, not cut
    short = bars.task_line(bars._tasks[bars.add_task("grid", total=6)], WIDTH)
    assert "━" * 10 in short.plain and short.cell_len <= WIDTH  # room for a bar: drawn, within the width


# ------------------------------------------------------------------------------------------ tables
def _grid_rows():
    rows = []
    for task in (8, 19):
        for model in ("cdl", "dqc"):
            for config in ("lr-1e-3_layers-3", "lr-3e-3_layers-3"):
                for test_set in ("nih-cxr-lt", "mimic-cxr-lt"):
                    flags = {"still_improving": [1, 2, 3, 4, 5], "saturated_inputs": [1, 2]} if model == "dqc" else {}
                    rows.append(dict(task=task, model=model, config=config, test_set=test_set, n=5, mean=0.51234,
                                     sd=0.01234, flags=flags))
    return rows


@pytest.mark.parametrize("uneven", [False, True], ids=["same-seeds", "uneven-seeds"])
def test_grid_summary_at_80_columns_keeps_every_cell_whole(uneven):
    rows = _grid_rows()
    if uneven:
        rows[0]["n"] = 4
    console, buf = _log()
    print_summary(console, rows, [], "runs/grid: mean AUROC over seeds", "runs/grid")
    out = buf.getvalue()
    assert not ANSI.search(out) and "…" not in out
    assert max(len(line) for line in out.splitlines()) <= WIDTH
    words = out.split()
    for cell in ("CXR-19", "DQC", "lr-1e-3", "layers-3", "mimic-cxr-lt", "UNDERTRAINED", "SATURATED"):
        assert cell in words, cell
    assert "0.5123 ± 0.0123" in out  # a number and its sd on one line
    assert ("n" in words) == uneven


def test_fit_folds_only_when_words_cannot_fit():
    from rich.table import Table

    table = Table()
    for name in ("a", "b"):
        table.add_column(name)
    table.add_row("x" * 50, "word " * 12)
    console, buf = _log()
    console.print(fit(table, 40))
    out = buf.getvalue()
    assert max(len(line) for line in out.splitlines()) <= 40 and "…" not in out
    assert out.count("x") == 50 and out.count("word") == 12  # every character shown


def test_cxrfeat_info_lists_train_val_test_at_80_columns(tmp_path):
    features = make_stores(tmp_path / "features", **SMALL)
    result = CliRunner().invoke(cxrfeat_app, ["info", str(features)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert not ANSI.search(out) and "…" not in out
    assert max(len(line) for line in out.splitlines()) <= WIDTH
    header = next(line for line in out.splitlines() if "Label" in line)
    assert re.findall(r"\b(train|val|test|Total)\b", header) == ["train", "val", "test", "Total"]
    stores = [m.group(1) for m in re.finditer(r"nih-cxr-lt/(\w+)\.zarr", out)]
    assert stores == ["train", "val", "test"]
    verify = CliRunner().invoke(cxrfeat_app, ["verify", str(features / "nih-cxr-lt")])
    assert re.findall(r"(\w+)\.zarr", verify.output) == ["train", "val", "test"]


def test_sweep_grid_log_at_80_columns(tmp_path, monkeypatch):
    """A real grid sweep's output in a log: progress lines (no bars, no codes) and a whole summary table."""
    _, _, result = cli_sweep(tmp_path, "grid", "--lr", "1e-3,3e-3", "--max-epochs", "2", "--patience", "2", **SMALL)
    out = result.output
    assert not ANSI.search(out) and "\r" not in out and "…" not in out
    # Progress: one unwrapped line per event (grep and tail see whole lines), the numbers of both modes.
    assert re.search(r"^grid: 0/2, 0%, 0:00:00 elapsed, ETA -:--:--$", out, re.M)
    assert re.search(r"^grid: 2/2, 100%, [\d.]+ (s/group|group/s), \d:\d\d:\d\d elapsed$", out, re.M)
    assert re.search(r"^CXR-8 DQC 4 run\(s\): 1/2, 50%, [\d.]+ (s/epoch|epoch/s), .* elapsed, ETA \d:\d\d:\d\d \| loss train "
                     r"[\d.]+ val [\d.]+, 4/4 training$", out, re.M)
    end = min(out.index(s) for s in ("warning: ", "runs written to") if s in out)
    table = out[out.rindex("\n", 0, out.index("Task")):end]
    assert max(len(line) for line in table.splitlines()) <= WIDTH
    for cell in ("lr-1e-3", "lr-3e-3", "nih-cxr-lt", "mimic-cxr-lt", "UNDERTRAINED"):
        assert cell in table.split(), cell


# ------------------------------------------------------------------------------------------ --help
def _help(app, *args) -> str:
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("app", "args"), [
    (cxrfeat_app, ["extract"]), (cxrfeat_app, ["info"]), (cxrfeat_app, ["verify"]), (cxrfeat_app, []),
    (heads_app, ["sweep"]), (heads_app, ["noise"]), (heads_app, ["finetune"]), (heads_app, []),
])
def test_help_wraps_as_prose_and_flags_read_as_flags(app, args):
    out = _help(app, *args)
    assert "<bool>" not in out and not ANSI.search(out)
    assert max(len(line) for line in out.splitlines()) <= WIDTH
    description = out[out.index("Usage:"):out.index("╭")].splitlines()[2:]
    base = min(_indent(line) for line in description if line.strip())
    for line, after in zip(description, description[1:], strict=False):
        if not line.strip() or not after.strip() or _indent(after) > base:
            continue  # a paragraph's end, or an example kept verbatim
        room = WIDTH - len(line.rstrip()) - 1  # typer pads the text by one column on the right
        assert len(after.split()[0]) + 1 > room, f"hard line break before {after.split()[0]!r}: {line!r}"


def _commands(app) -> list[list[str]]:
    group = typer.main.get_command(app)
    return [[name] for name in group.commands] if hasattr(group, "commands") else [[]]


@pytest.mark.parametrize("app", [cxrfeat_app, heads_app, analysis_app])
def test_every_example_command_in_help_is_a_line_of_its_own(app):
    """An example command in a docstring is shown on a line of its own, indented, never run into the
    prose or into the next example (a class: every command of the three tools)."""
    tool = {cxrfeat_app: "cxrfeat", heads_app: "heads", analysis_app: "analysis"}[app]
    for args in _commands(app):
        out = _help(app, *args)
        description = out[out.index("Usage:"):out.index("╭")]
        lines = description.splitlines()[2:]
        for line, after in zip(lines, lines[1:], strict=False):
            if re.match(rf"\s{{4,}}{tool} ", line) and not line.rstrip().endswith("\\"):
                # an example (not continued with a backslash): the next line is another one or a blank
                assert not after.strip() or re.match(rf"\s{{4,}}{tool} ", after), \
                    f"{tool} {' '.join(args)} --help wraps an example at {WIDTH} columns: {line!r} / {after!r}"
        body = [line for line in lines if line.strip()]
        for line in body:
            starts = [m.start() for m in re.finditer(rf"(?<![\w/`-]){tool} [a-z][\w-]* (?=-|\S)", line)]
            for start in starts:
                before = line[:start]
                if "`" in before and before.count("`") % 2:
                    continue  # quoted inline in a sentence: `cxrfeat extract ...`
                assert not before.strip(), f"{tool} {' '.join(args)} --help runs an example into text: {line!r}"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def test_help_names_flags_without_a_type():
    out = _help(cxrfeat_app, "info")
    assert re.search(r"--json\s+Print the summary as JSON", out)
    assert re.search(r"--skip-bad\s+Skip missing", _help(cxrfeat_app, "extract"))


def test_prose_keeps_examples_and_lists():
    doc = """Summary line.

    First sentence continues
    on the next line. Second one.

    Example:
        cxrfeat extract --split train
        cxrfeat extract --split val
    - a list item
    - another
    """
    assert prose(doc) == ("Summary line.\n\nFirst sentence continues on the next line. Second one.\n\n"
                          "Example:\n    cxrfeat extract --split train\n    cxrfeat extract --split val\n"
                          "- a list item\n- another")


# ------------------------------------------------------------------------------------------ third-party noise
_NO_TORCH = textwrap.dedent("""
    import importlib.util, sys
    real = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a, **k: None if name.split(".")[0] == "torch" else real(name, *a, **k)
    if sys.argv[1] == "cxrfeat":
        import cxrfeat.backbone
    import transformers
    transformers.logging.get_logger("transformers").error("a real error still shows")
""")


def test_no_pytorch_advice_from_transformers():
    """Without PyTorch, transformers advises at import that 'PyTorch was not found'; cxrfeat silences that
    advice (the ResNet is Flax), not transformers' errors."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}

    def stderr(first):
        return subprocess.run([sys.executable, "-c", _NO_TORCH, first], capture_output=True, text=True, env=env,
                              check=True).stderr

    assert "PyTorch was not found" in stderr("transformers")  # the control: the advice exists
    quiet = stderr("cxrfeat")
    assert "PyTorch was not found" not in quiet and "a real error still shows" in quiet


# ------------------------------------------------------------------------------------------ repair hints
@pytest.fixture(scope="module")
def ckpt(backbone, tmp_path_factory):
    from cxrfeat.weights import save_checkpoint

    return save_checkpoint(backbone, tmp_path_factory.mktemp("ckpt") / "ckpt")


def _extract(*args):
    return CliRunner().invoke(cxrfeat_app, ["extract", "--split", "val", "--workers", "1", *map(str, args)])


def test_repair_hint_names_the_damaged_copy_and_repairs_it(data, ckpt, tmp_path):
    made = tmp_path / "features"
    result = _extract("--data-dir", data / "nih-cxr-lt", "--out", made, "--weights", ckpt, "--views", 1)
    assert result.exit_code == 0, result.output
    assert re.search(r"val\.zarr: 6/6, 100%, [\d.]+ img/s", result.output)  # the progress of a log
    assert not ANSI.search(result.output)
    copy = tmp_path / "elsewhere" / "features"
    shutil.copytree(made, copy)
    (copy / "nih-cxr-lt" / "val.zarr" / "embeddings" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(UserError) as info:
        FeatureStore.open(copy / "nih-cxr-lt" / "val.zarr")
    hint = str(info.value).split("Repair it with: ")[1]
    argv = shlex.split(hint)
    assert argv[argv.index("--out") + 1] == str(copy) and str(made) not in hint
    # The hint, run as printed, repairs the copy.
    repaired = CliRunner().invoke(cxrfeat_app, [*argv[1:], "--workers", "1"])
    assert repaired.exit_code == 0, repaired.output
    assert CliRunner().invoke(cxrfeat_app, ["verify", str(copy)]).exit_code == 0
    # --repair where nothing is damaged (the original) or nothing is: exit status 2, nothing written.
    again = CliRunner().invoke(cxrfeat_app, [*argv[1:argv.index("--out")], "--out", str(made),
                                             *argv[argv.index("--out") + 2:], "--workers", "1"])
    assert again.exit_code == 2 and "nothing to repair" in again.output and "Traceback" not in again.output
    empty = tmp_path / "empty"
    none = _extract("--data-dir", data / "nih-cxr-lt", "--out", empty, "--weights", ckpt, "--views", 1, "--repair")
    assert none.exit_code == 2 and "no feature store at" in none.output
    assert not (empty / "nih-cxr-lt" / "val.zarr").exists()
