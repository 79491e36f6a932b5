"""What a sweep shows while it runs (`cxrfeat.console.progress`: a live line on a terminal, plain lines in
a log) and its summary table at the end, read back from the run folders through `heads.runs`."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cxrfeat.console import make_console, print_table, progress
from cxrfeat.labels import task_name
from heads import runs
from heads.sanity import FLAGS


def _seeds(seeds) -> str:
    """'1-5' or '1,3' for seeds; run labels of a grid ('lr-1e-3/seed-2') joined as they are."""
    seeds = list(seeds)
    if not all(isinstance(s, int) for s in seeds):  # grid runs 'config/seed-s': grouped per configuration
        by_config: dict[str, list] = {}
        for label in map(str, seeds):
            config, _, seed = label.rpartition("/seed-")
            by_config.setdefault(config, []).append(int(seed) if seed.isdigit() else seed)
        if any(not c for c in by_config) or not all(isinstance(s, int) for v in by_config.values() for s in v):
            return ", ".join(map(str, seeds))
        return "; ".join(f"{c} {_seeds(v)}" for c, v in by_config.items())
    return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))


def _pair(task, model) -> str:
    """'CXR-8 DQC', as the summary table names them."""
    return f"{task_name(task).upper()} {model.upper()}"


class LiveReporter:
    """Live display of a sweep: the grid, the current (task, model), its epoch, losses and ETA.

    The ETA of a (task, model) assumes it runs all `--max-epochs`; early stopping ends it sooner.
    """

    def __init__(self, console: Console | None = None):
        self.console = console or make_console(stderr=True)
        self.progress = progress(self.console, unit="epoch")
        self.overall = self.group = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def sweep_start(self, groups, spec, stores) -> None:
        """`groups`: this shard's run groups (`heads.sweep.run_groups`), each trained in one program."""
        sets = ", ".join(stores.test_sets)
        runs = sum(len(g) for g in groups)
        self.console.print(f"sweep [bold]{spec.runs}/{spec.name}[/]: {runs} run(s) in {len(groups)} group(s) trained "
                           f"together (up to {spec.seeds} seed(s) each); test sets: {sets}")
        if stores.external_missing is not None:
            self.console.print(f"(no external test store at {stores.external_missing}: skipping it)")
        self.overall = self.progress.add_task("grid", total=len(groups), status="", unit="group")

    def skipped(self, task, model, seeds) -> None:
        self.console.print(f"{_pair(task, model)}: seed(s) {_seeds(seeds)} finished already, skipped")
        self.progress.advance(self.overall)

    def group_start(self, task, model, seeds, max_epochs) -> None:
        self.n_seeds, self.max_epochs = len(seeds), max_epochs
        what = f"seed(s) {_seeds(seeds)}" if all(isinstance(s, int) for s in seeds) else f"{len(seeds)} run(s)"
        self.group = self.progress.add_task(f"{_pair(task, model)} {what}", total=max_epochs,
                                            status="compiling")

    def epoch(self, info) -> None:
        rows = info["seeds"]
        train = statistics.fmean(r["train_loss"] for r in rows)
        val = statistics.fmean(r["val_loss"] for r in rows)
        active = self.n_seeds - sum(info["stopped"])
        self.progress.update(self.group, completed=info["epoch"],
                             status=f"loss train {train:.4f} val {val:.4f}, {active}/{self.n_seeds} training")

    def group_end(self, task, model, outcome) -> None:
        self.progress.update(self.group, completed=self.max_epochs, status="done")
        self.progress.remove_task(self.group)
        self.progress.advance(self.overall)
        self.console.print(f"{_pair(task, model)}: trained seed(s) {_seeds(outcome.trained)} in "
                           f"{outcome.seconds:.1f} s" + (f" (skipped {_seeds(outcome.skipped)})" if outcome.skipped else ""))


SHORT_FLAGS = {"constant_predictions": "CONSTANT", "saturated_inputs": "SATURATED", "still_improving": "UNDERTRAINED",
               "overfit_from_start": "OVERFIT", "nan_loss": "NAN"}


def flag_text(flags: dict[str, list[int]], n: int) -> str:
    """'SATURATED 3/5, CONSTANT 2/5' (flag, seeds carrying it / seeds in the row), or 'ok'."""
    if not flags:
        return "ok"
    return ", ".join(f"{SHORT_FLAGS.get(f, f)} {len(seeds)}/{n}" for f, seeds in flags.items())


def summary_table(rows: list[dict], title: str) -> Table:
    """Mean AUROC ± sd over seeds per task × model × test set (rows from `summarize`), with a
    Sanity column: the failed checks of the row's seeds (see `heads.sanity`). The seeds of a row are
    a column (n) only when rows differ in them; otherwise the title says how many. A grid's
    configuration (Settings) reads `lr-1e-3 layers-3` for its folder `lr-1e-3_layers-3`."""
    grid = any(r.get("config") for r in rows)
    seeds = {r["n"] for r in rows}
    same = len(seeds) == 1
    table = Table(title=f"{title} ({next(iter(seeds))} seeds)" if same and rows else f"{title} (n: seeds)")
    for col in ("Task", "Model", *(("Settings",) if grid else ()), "Test set", "Mean AUROC ± sd",
                *(() if same else ("n",)), "Sanity"):
        table.add_column(col, justify="right" if col in ("Mean AUROC ± sd", "n") else "left",
                         no_wrap=col in ("Task", "Model", "Test set", "Mean AUROC ± sd", "n"))
    for r in rows:
        sd = f" ± {r['sd']:.4f}" if r["sd"] is not None else ""
        flags = r.get("flags") or {}
        sanity = flag_text(flags, r["n"])
        config = (r.get("config") or "-").replace("_", " ")  # lr-1e-3_layers-3 wraps between its settings
        table.add_row(task_name(r["task"]).upper(), r["model"].upper(), *((config,) if grid else ()),
                      r["test_set"], f"{r['mean']:.4f}{sd}", *(() if same else (str(r["n"]),)),
                      f"[bold red]{sanity}[/]" if flags else sanity)
    return table


def warning_lines(flagged) -> list[str]:
    """One line per flagged run (from `flagged_runs`): its folder and what failed."""
    return [f"warning: {path}: {'; '.join(record.get('messages') or record.get('flags') or [])}" for path, record in flagged]


def print_summary(console: Console, rows: list[dict], flagged, title: str, where) -> None:
    """The end-of-sweep table, one warning line per flagged run, and where the runs are."""
    print_table(console, summary_table(rows, title))
    for line in warning_lines(flagged):
        console.print(line, style="bold red", markup=False, highlight=False, soft_wrap=True)
    console.print(f"runs written to {where}", markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- the finished runs of a sweep
def _row_flags(sanity_record: dict | None, test_set: str) -> list[str]:
    """The sanity flags of one run that concern one of its test sets (constant predictions are per test set)."""
    if not sanity_record:
        return []
    constant = (sanity_record.get("details") or {}).get("constant_labels") or {}
    return [f for f in sanity_record.get("flags", []) if f != "constant_predictions" or test_set in constant]


def _grid_runs(sweep_dir, pairs, seeds, configs):
    """The finished runs of the grid, as (task, model, config name, seed, `runs.Run`); configs: model -> names."""
    for task, model in pairs:
        for name in (configs or {}).get(model, [""]):
            for s in range(1, seeds + 1):
                sweep = Path(sweep_dir)
                run = runs.Run(task_name(task), model, s, runs.seed_dir(sweep.parent, sweep.name, task, model, s, name),
                               name)
                if run.done:
                    yield task, model, name, s, run


def summarize(sweep_dir: str | Path, pairs: Sequence[tuple], seeds: int,
              configs: dict[str, list[str]] | None = None) -> list[dict]:
    """Mean ± sd AUROC over the finished seeds 1..seeds, per (task, model, configuration, test set),
    with each row's sanity flags: `flags` maps a flag to the seeds that carry it. `configs`: each
    model's configuration names (default: none, "")."""
    rows = []
    groups: dict[tuple, list] = {}
    for task, model, name, s, run in _grid_runs(sweep_dir, pairs, seeds, configs):
        groups.setdefault((task, model, name), []).append((s, run.results()))
    for (task, model, name), members in groups.items():
        per_set: dict[str, list[float]] = {}
        flags: dict[str, dict[str, list[int]]] = {}
        for s, results in members:
            for key, m in results.test_sets.items():
                if m["mean_auroc"] is not None:
                    per_set.setdefault(key, []).append(m["mean_auroc"])
                for flag in _row_flags(results.sanity, key):
                    flags.setdefault(key, {}).setdefault(flag, []).append(s)
        for key, values in per_set.items():
            rows.append({"task": task, "model": model, "config": name, "test_set": key, "n": len(values),
                         "mean": statistics.fmean(values),
                         "sd": statistics.stdev(values) if len(values) > 1 else None,
                         "flags": {f: flags.get(key, {})[f] for f in FLAGS if f in flags.get(key, {})}})
    return rows


def flagged_runs(sweep_dir: str | Path, pairs: Sequence[tuple], seeds: int,
                 configs: dict[str, list[str]] | None = None) -> list[tuple[Path, dict]]:
    """(run folder, sanity record) of every finished run of the grid whose sanity check failed."""
    out = []
    for *_, run in _grid_runs(sweep_dir, pairs, seeds, configs):
        record = run.results().sanity
        if record and not record.get("ok", True):
            out.append((run.path, record))
    return out


def run_with_console(spec) -> None:
    """`heads sweep` / `heads train`: run the sweep with live progress, then print its summary."""
    from heads.sweep import run_sweep

    spec.check()
    with LiveReporter() as reporter:
        outcomes = run_sweep(spec, reporter=reporter)
    where = spec.runs / spec.name
    pairs = list(dict.fromkeys((o.task, o.model) for o in outcomes))
    configs = {m: [c.name for c in spec.configs(m)] for m in spec.models}
    print_summary(make_console(), summarize(where, pairs, spec.seeds, configs),
                  flagged_runs(where, pairs, spec.seeds, configs), f"{where}: mean AUROC over seeds", where)
