"""The report's tables: raw numbers to CSV, formatted cells to Markdown and LaTeX.

In the CSV files numbers are written at full precision and an undefined value (an AUROC of a
label with one class, a p-value with fewer than two seed pairs) is an empty cell.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis import stats
from analysis.bench import BenchRecord
from analysis.collect import Sweep, model_key, task_key
from analysis.features import StoreCounts, label_key, split_key
from analysis.summary import Comparison, Convergence, GroupStat, ModelStat
from cxrfeat.atomic import write_text


@dataclass
class Table:
    """One table: `csv_rows` (raw, under `csv_columns`) and `display` (strings, under `columns`)."""

    name: str
    title: str
    columns: list[str]
    display: list[list[str]]
    csv_columns: list[str]
    csv_rows: list[list]
    note: str = ""
    align: str = field(default="")

    def markdown(self) -> str:
        align = self.align or "l" + "r" * (len(self.columns) - 1)
        sep = ["---:" if a == "r" else "---" for a in align]
        lines = ["| " + " | ".join(_md(c) for c in self.columns) + " |", "| " + " | ".join(sep) + " |"]
        lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in self.display]
        return "\n".join(lines)

    def latex(self) -> str:
        align = self.align or "l" + "r" * (len(self.columns) - 1)
        lines = [
            "% " + self.title + " (needs \\usepackage{booktabs})",
            f"\\begin{{tabular}}{{{align}}}",
            "\\toprule",
            " & ".join(_tex(c) for c in self.columns) + " \\\\",
            "\\midrule",
        ]
        lines += [" & ".join(_tex(c) for c in row) + " \\\\" for row in self.display]
        lines += ["\\bottomrule", "\\end{tabular}", ""]
        return "\n".join(lines)

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.csv_columns)
        w.writerows([[_raw(v) for v in row] for row in self.csv_rows])
        return buf.getvalue()

    def write(self, folder: Path) -> None:
        write_text(folder / f"{self.name}.csv", self.csv())
        if self.columns:  # tables kept only as raw numbers have no formatted form
            write_text(folder / f"{self.name}.tex", self.latex())


def _raw(v):
    if isinstance(v, float | np.floating) and not np.isfinite(v):
        return ""
    return v


def _md(s: str) -> str:
    return str(s).replace("|", "\\|")


def _tex(s: str) -> str:
    s = str(s)
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"),
                 ("±", "$\\pm$"), ("≥", "$\\geq$"), ("<", "$<$"), ("−", "$-$")):
        s = s.replace(a, b)
    return s


# ------------------------------------------------------------------------------------ formatting
def fmt_auroc(mean: float, sd: float, n: int) -> str:
    if not np.isfinite(mean):
        return "undefined"
    if n < 2 or not np.isfinite(sd):
        return f"{mean:.3f} (n={n})"
    return f"{mean:.3f} ± {sd:.3f}"


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def fmt_pct(x: float) -> str:
    return f"{x:+.2f}%" if np.isfinite(x) else "undefined"


def fmt_mean_sd(values: dict[int, float], digits: int = 3) -> str:
    mean, sd, n = stats.mean_sd(list(values.values()))
    if n == 0:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if n > 1 else "")


def _seeds(seeds) -> str:
    return " ".join(str(s) for s in sorted(seeds))


# ------------------------------------------------------------------------------------ Table I
def table_labels(stores: list[StoreCounts]) -> Table:
    """Table I: positives per label per store (dataset × split), plus each dataset's total."""
    by_ds: dict[str, list[StoreCounts]] = defaultdict(list)
    for c in stores:
        by_ds[c.dataset].append(c)
    cols: list[tuple[str, list[StoreCounts]]] = []
    for ds, cs in by_ds.items():
        cs.sort(key=lambda c: split_key(c.split))
        cols += [(f"{ds} {c.split}", [c]) for c in cs]
        if len(cs) > 1:
            cols.append((f"{ds} total", cs))
    labels = sorted({n for c in stores for n in c.positives}, key=label_key)
    rows = [[lab] + [sum(c.positives.get(lab, 0) for c in cs) if any(lab in c.positives for c in cs) else ""
                     for _, cs in cols] for lab in labels]
    rows.append(["Images"] + [sum(c.rows for c in cs) for _, cs in cols])
    unknown = {lab for c in stores for lab, k in c.unknown.items() if k}
    note = "Positive images per label (valid rows of each store); canonical (paper Table I) order."
    if unknown:
        note += " Some labels are unknown (-1) for some images (e.g. MIMIC-CXR-LT); those are not counted."
    return Table("table1_labels", "Table I: label distribution by split", ["Label"] + [c for c, _ in cols],
                 [[str(v) for v in r] for r in rows], ["label"] + [c for c, _ in cols], rows, note)


# ------------------------------------------------------------------------------------ Table II
PARAM_PARTS = ("backbone", "classical_preprocess", "quantum", "classical_postprocess")


def table_params(sweep: Sweep) -> Table:
    """Table II: parameter counts by component, from each task × model's config.json."""
    rows, notes = [], []
    for task in sweep.tasks:
        for model in sweep.models(task):
            runs = sweep.runs_of(task, model)
            counts = [r.config.get("param_counts") or {} for _, r in sorted(runs.items())]
            pc = counts[0]
            if any(c != pc for c in counts[1:]):
                notes.append(f"{task}/{model}: seeds disagree on parameter counts")
            parts = [pc.get(k) for k in PARAM_PARTS]
            head = sum(v for v in parts[1:] if isinstance(v, int))
            rows.append([task, model, len(sweep.label_names(task)), *parts, head if pc else None])
    display = [[r[0], r[1], str(r[2])] + [f"{v:,}" if isinstance(v, int) else "–" for v in r[3:]] for r in rows]
    note = ("From each run's config.json (`param_counts`). The backbone is frozen for the heads trained "
            "on cached features and trained only by `heads finetune`. Head = preprocess + quantum + postprocess.")
    if notes:
        note += " " + "; ".join(notes) + "."
    cols = ["Task", "Model", "# Labels", "Backbone", "Classical preprocess", "Quantum", "Classical postprocess", "Head"]
    return Table("table2_params", "Table II: number of parameters by component", cols, display,
                 ["task", "model", "labels", *PARAM_PARTS, "head"], rows, note, align="lllrrrrrr"[:len(cols)])


# ------------------------------------------------------------------------------------ Table III
def table_bench(records: list[BenchRecord]) -> Table:
    """Table III: median ± sd seconds per training step, rows task × model, one column per back end."""
    backends = sorted({r.backend for r in records}, key=lambda b: (b in ("-", "?"), b))
    unit, scale = ("ms", 1e3) if max(r.median_s for r in records) < 1 else ("s", 1.0)
    cells: dict[tuple[str, int, str, str], str] = {}
    for r in records:
        sd = f" ± {_sig(r.sd_s * scale)}" if np.isfinite(r.sd_s) else ""
        cells[(r.machine, r.qubits or 0, r.model, r.backend)] = f"{_sig(r.median_s * scale)}{sd}"
    keys = sorted({(r.machine, r.qubits or 0, r.model) for r in records}, key=lambda k: (k[0], k[1], model_key(k[2])))
    display = [[m or "?", f"cxr-{q}" if q else "?", model] + [cells.get((m, q, model, b), "") for b in backends]
               for m, q, model in keys]
    raw = [[r.source.name, r.machine, r.model, r.qubits, r.backend, r.median_s, r.sd_s, r.peak_memory]
           for r in records]
    note = (f"Median ± sd of the time per training step in {'milliseconds' if unit == 'ms' else 'seconds'} "
            "(value and gradient, batch 32, after warm-up), as recorded by `heads bench` (the CSV keeps seconds); "
            "times from different machines are not comparable.")
    header = [{"-": "no circuit", "?": "back end not named"}.get(b, b) for b in backends]
    return Table("table3_bench", "Table III: time per training step", ["Machine", "Task", "Model"] + header,
                 display, ["file", "machine", "model", "qubits", "backend", "median_s", "sd_s", "peak_memory"],
                 raw, note, align="lll" + "r" * len(backends))


def _sig(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 0.001 or x == 0 else f"{x:.2e}"


# ------------------------------------------------------------------------------------ AUROC
def table_mean_auroc(model_stats: list[ModelStat]) -> Table:
    rows = [[s.test_set, s.task, s.model, s.mean, s.sd, s.n, _seeds(s.per_seed)] for s in model_stats]
    display = [[s.test_set, s.task, s.model, fmt_auroc(s.mean, s.sd, s.n), str(s.n)] for s in model_stats]
    return Table("mean_auroc", "Mean AUROC over seeds", ["Test set", "Task", "Model", "Mean AUROC", "Seeds"],
                 display, ["test_set", "task", "model", "mean", "sd", "n_seeds", "seeds"], rows, align="lllrr")


def table_comparisons(comps: list[Comparison]) -> Table:
    rows, display = [], []
    for c in comps:
        t = c.test
        rows.append([c.a.test_set, c.a.task, c.a.model, c.b.model, c.a.mean, c.a.sd, c.a.n, c.b.mean, c.b.sd, c.b.n,
                     c.pct_diff, t.t, t.p, c.stars, t.n, _seeds(t.seeds)])
        display.append([c.a.test_set, c.a.task, f"{c.a.model} vs {c.b.model}", fmt_auroc(c.a.mean, c.a.sd, c.a.n),
                        fmt_auroc(c.b.mean, c.b.sd, c.b.n), fmt_pct(c.pct_diff), fmt_p(t.p), c.stars, str(t.n)])
    return Table(
        "comparisons", "Mean AUROC, classical vs quantum (paired t-test over seeds)",
        ["Test set", "Task", "Comparison", "Classical", "Quantum", "% diff", "p", "Sig.", "Pairs"], display,
        ["test_set", "task", "model_a", "model_b", "mean_a", "sd_a", "n_a", "mean_b", "sd_b", "n_b",
         "pct_diff", "t", "p", "stars", "n_pairs", "paired_seeds"], rows, align="lllrrrrlr")


PER_LABEL_COLUMNS = ["task", "test_set", "model_a", "model_b", "rank", "label", "train_positives", "test_positives",
                     "mean_a", "sd_a", "n_a", "mean_b", "sd_b", "n_b", "pct_diff", "t", "p", "stars", "n_pairs"]


def per_label_rows(comps: list[Comparison], train: dict[str, int] | None, test: dict[str, int]) -> list[list]:
    rows = []
    for rank, c in enumerate(comps, start=1):
        t, lab = c.test, c.a.label
        rows.append([c.a.task, c.a.test_set, c.a.model, c.b.model, rank, lab, (train or {}).get(lab), test.get(lab),
                     c.a.mean, c.a.sd, c.a.n, c.b.mean, c.b.sd, c.b.n, c.pct_diff, t.t, t.p, c.stars, t.n])
    return rows


def table_per_label(name: str, title: str, comps: list[Comparison], train: dict[str, int] | None,
                    test: dict[str, int]) -> Table:
    rows = per_label_rows(comps, train, test)
    display = [[c.a.label, str((train or {}).get(c.a.label, "–")), str(test.get(c.a.label, "–")),
                fmt_auroc(c.a.mean, c.a.sd, c.a.n), fmt_auroc(c.b.mean, c.b.sd, c.b.n), fmt_pct(c.pct_diff),
                fmt_p(c.test.p), c.stars] for c in comps]
    a, b = (comps[0].a.model, comps[0].b.model) if comps else ("a", "b")
    return Table(name, title, ["Label", "Train +", "Test +", a, b, "% diff", "p", "Sig."], display,
                 PER_LABEL_COLUMNS, rows, align="lrrrrrrl")


def table_convergence(conv: list[Convergence]) -> Table:
    rows, display = [], []
    for c in conv:
        rec = []
        for d in (c.epochs_run, c.epochs_to_best, c.best_val_loss, c.seconds):
            m, sd, n = stats.mean_sd(list(d.values()))
            rec += [m, sd]
        rows.append([c.task, c.model, len(c.epochs_run), *rec])
        display.append([c.task, c.model, str(len(c.epochs_run)), fmt_mean_sd(c.epochs_run, 1),
                        fmt_mean_sd(c.epochs_to_best, 1), fmt_mean_sd(c.best_val_loss, 4), fmt_mean_sd(c.seconds, 1)])
    return Table(
        "convergence", "Training: epochs, epochs to the best validation loss, best validation loss",
        ["Task", "Model", "Seeds", "Epochs run", "Epochs to best", "Best val loss", "Train time (s)"], display,
        ["task", "model", "n_seeds", "epochs_run_mean", "epochs_run_sd", "epochs_to_best_mean", "epochs_to_best_sd",
         "best_val_loss_mean", "best_val_loss_sd", "seconds_mean", "seconds_sd"], rows, align="llrrrrr",
        note="Mean ± sd over seeds. Epochs to best counts the epochs up to and including the one with the lowest "
             "validation loss (the kept parameters). Train time sums the history's per-epoch seconds "
             "(seeds trained together in one program share that time).")


def table_long_tail(groups: list[GroupStat]) -> Table:
    names = list(dict.fromkeys(g.group for g in groups))
    by_key: dict[tuple[str, str, str], dict[str, GroupStat]] = defaultdict(dict)
    for g in groups:
        by_key[(g.test_set, g.task, g.model)][g.group] = g
    display = []
    for (ts, task, model), gs in by_key.items():
        display.append([ts, task, model] + [fmt_auroc(gs[n].mean, gs[n].sd, gs[n].n) if n in gs else "–"
                                            for n in names])
    rows = [[g.test_set, g.task, g.model, g.group, ";".join(g.labels), g.mean, g.sd, g.n] for g in groups]
    return Table("long_tail", "Mean AUROC by label frequency group", ["Test set", "Task", "Model"] + names, display,
                 ["test_set", "task", "model", "group", "labels", "mean", "sd", "n_seeds"], rows,
                 align="lll" + "r" * len(names))


def per_seed_rows(sweep: Sweep) -> Table:
    """Every run's recomputed AUROC (mean and per label) — the raw numbers behind every other table."""
    rows = []
    for run in sorted(sweep.runs, key=lambda r: (task_key(r.task), model_key(r.model), r.seed)):
        for ts, pred in run.predictions.items():
            rows.append([run.task, run.model, run.seed, ts, "mean", stats.nanmean(pred.auroc)])
            rows += [[run.task, run.model, run.seed, ts, lab, float(v)] for lab, v in zip(pred.label_names, pred.auroc,
                                                                                          strict=True)]
    cols = ["task", "model", "seed", "test_set", "label", "auroc"]
    return Table("per_seed_auroc", "AUROC of every run", cols, [], cols, rows)
