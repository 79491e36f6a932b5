"""The report's tables: raw numbers to CSV, formatted cells to Markdown and LaTeX.

In the CSV files numbers are written at full precision and an undefined value (an AUROC of a
label with one class, a p-value with fewer than two seed pairs) is an empty cell. The `.md` and
`.tex` forms hold the same rows as the `.csv` (one formatted row per CSV row, in the same order),
and every column has one number format.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis import stats
from analysis.bench import BenchRecord
from analysis.collect import Sweep, model_key
from analysis.features import StoreCounts, label_key, label_order_text, split_key
from analysis.provenance import WARN
from analysis.summary import Comparison, Convergence, GroupStat, ModelStat
from cxrfeat.atomic import write_text
from cxrfeat.labels import task_sort_key


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

    def __post_init__(self):
        if self.columns and not self.display and self.csv_rows:  # raw tables: format the CSV rows themselves
            self.display = [[_cell(v) for v in row] for row in self.csv_rows]
        if self.columns and len(self.display) != len(self.csv_rows):
            raise AssertionError(f"table {self.name}: {len(self.display)} formatted rows for {len(self.csv_rows)} CSV rows")

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
        write_text(folder / f"{self.name}.tex", self.latex())


def _cell(v) -> str:
    """A raw CSV value formatted for the .md/.tex of a raw table (floats: 4 decimals; undefined: empty)."""
    if v is None:
        return ""
    if isinstance(v, float | np.floating):
        return f"{v:.4f}" if np.isfinite(v) else ""
    return str(v)


def _raw(v):
    if isinstance(v, float | np.floating) and not np.isfinite(v):
        return ""
    return v


def _md(s: str) -> str:
    return str(s).replace("|", "\\|")


def _tex(s: str) -> str:
    s = str(s)
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"),
                 ("±", "$\\pm$"), ("≥", "$\\geq$"), ("<", "$<$"), ("−", "$-$"), ("⚠", "(!)"),
                 ("…", "\\ldots{}"), ("×", "$\\times$")):
        s = s.replace(a, b)
    return s


# ------------------------------------------------------------------------------------ formatting
def fmt_auroc(mean: float, sd: float, n: int) -> str:
    """'0.812 ± 0.010' (one seed: '0.812'; the seed count is its own column); 'undefined' without a value."""
    if not np.isfinite(mean):
        return "undefined"
    if n < 2 or not np.isfinite(sd):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {sd:.3f}"


def fmt_p(p: float) -> str:
    """Fixed point with 4 decimals ('< 0.0001' below); 'n/a' without a test."""
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.0001" if p < 0.0001 else f"{p:.4f}"


def fmt_pct(x: float) -> str:
    return f"{x:+.2f}%" if np.isfinite(x) else "undefined"


def fmt_ci(ci) -> str:
    if ci is None or not np.isfinite(ci.low):
        return "n/a"
    return f"{ci.low:.3f}–{ci.high:.3f}"


def fmt_mean_sd(values: dict[int, float], digits: int = 3) -> str:
    mean, sd, n = stats.mean_sd(list(values.values()))
    if n == 0:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if n > 1 else "")


def fmt_sizes(sizes: list[int]) -> str:
    """Test images of a row's seeds: '120', or '16–120' when its seeds were tested on different sets."""
    if not sizes:
        return "–"
    return str(sizes[0]) if len(sizes) == 1 else f"{min(sizes)}–{max(sizes)}"


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
    note = f"Positive images per label (valid rows of each store); {label_order_text(labels)}."
    if unknown:
        example = " (e.g. MIMIC-CXR-LT)" if "mimic-cxr-lt" in by_ds else ""
        note += f" Some labels are unknown (-1) for some images{example}; those are not counted."
    return Table("table1_labels", "Table I: label distribution by split", ["Label"] + [c for c, _ in cols],
                 [[str(v) for v in r] for r in rows], ["label"] + [c for c, _ in cols], rows, note)


# ------------------------------------------------------------------------------------ Table II
PARAM_PARTS = ("backbone", "classical_preprocess", "quantum", "classical_postprocess")


def table_params(sweep: Sweep) -> Table:
    """Table II: parameter counts by component, from each task × model's config.json, with the backbone's weights."""
    rows, notes = [], []
    any_random = False
    for task in sweep.tasks:
        for model in sweep.models(task):
            runs = sweep.runs_of(task, model)
            counts = [r.record.param_counts for _, r in sorted(runs.items())]
            pc = counts[0]
            if any(c != pc for c in counts[1:]):
                notes.append(f"{task}/{model}: seeds disagree on parameter counts")
            backbones = {sweep.backbone(r).describe() for r in runs.values()}
            any_random |= any(sweep.backbone(r).random for r in runs.values())
            weights = "; ".join(sorted(backbones)).replace("`", "")
            parts = [pc.get(k) for k in PARAM_PARTS]
            head = sum(v for v in parts[1:] if isinstance(v, int))
            rows.append([task, model, len(sweep.label_names(task)), *parts, head if pc else None, weights])
    display = [[r[0], r[1], str(r[2])] + [f"{v:,}" if isinstance(v, int) else "–" for v in r[3:8]] + [r[8]]
               for r in rows]
    note = ("From each run's config.json (`param_counts`). The backbone is frozen for the heads trained "
            "on cached features and trained only by `heads finetune`. Head = preprocess + quantum + postprocess.")
    if any_random:
        note += (" **The backbone parameters were RANDOM (untrained) weights** in the rows marked so: its "
                 "parameter count is the architecture's, not a pretrained ResNet-50's.")
    if notes:
        note += " " + "; ".join(notes) + "."
    cols = ["Task", "Model", "# Labels", "Backbone", "Classical preprocess", "Quantum", "Classical postprocess", "Head",
            "Backbone weights"]
    return Table("table2_params", "Table II: number of parameters by component", cols, display,
                 ["task", "model", "labels", *PARAM_PARTS, "head", "backbone_weights"], rows, note,
                 align="lllrrrrrl")


# ------------------------------------------------------------------------------------ Table III
def table_bench(records: list[BenchRecord], where: str, tasks=None) -> Table:
    """Table III: median ± sd milliseconds per training step, rows machine × qubits × model, one column per back end.

    `tasks`: the sweep's tasks, name -> number of labels (None: the paper's). A qubit count is glossed with the
    paper's task (`8 (CXR-8)`) only when the sweep has one of the paper's tasks; otherwise with the
    sweep's own task of that width, if any (`3 (CLINIC-3)`).

    One number format per back-end column: milliseconds with as many decimals as its smallest time needs
    for two significant digits (at most 3).
    """
    backends = sorted({r.backend for r in records}, key=lambda b: (b in ("-", "?"), b))
    by: dict[tuple[str, int, str], dict[str, BenchRecord]] = defaultdict(dict)
    for r in records:
        by[(r.machine or "?", r.qubits or 0, r.model)][r.backend] = r
    keys = sorted(by, key=lambda k: (k[0], k[1], model_key(k[2])))
    digits = {}
    for b in backends:
        ms = [r.median_s * 1e3 for r in records if r.backend == b and r.median_s > 0]
        digits[b] = min(3, max(0, 1 - math.floor(math.log10(min(ms))))) if ms else 1

    def cell(r: BenchRecord | None, b: str) -> str:
        if r is None:
            return ""
        d = digits[b]
        sd = f" ± {r.sd_s * 1e3:.{d}f}" if np.isfinite(r.sd_s) else ""
        return f"{r.median_s * 1e3:.{d}f}{sd}"

    display, rows = [], []
    for m, q, model in keys:
        recs = by[(m, q, model)]
        display.append([m, _qubits(q, tasks), model] + [cell(recs.get(b), b) for b in backends])
        rows.append([m, q or None, model] + [v for b in backends for v in (
            (recs[b].median_s, recs[b].sd_s, recs[b].peak_memory, recs[b].source.name) if b in recs else
            (None, None, None, None))])
    note = (f"Median ± sd of the time per training step in milliseconds (value and gradient, batch 32, after "
            f"warm-up), as recorded by `heads bench` (the CSV keeps seconds, peak memory and the file). {where} "
            "Times from different machines are not comparable.")
    header = [{"-": "no circuit", "?": "back end not named"}.get(b, b) for b in backends]
    csv_cols = ["machine", "qubits", "model"] + [f"{b}_{k}" for b in backends
                                                 for k in ("median_s", "sd_s", "peak_memory", "file")]
    return Table("table3_bench", "Table III: time per training step (ms)", ["Machine", "Qubits", "Model"] + header,
                 display, csv_cols, rows, note, align="lll" + "r" * len(backends))


def _qubits(q: int, tasks=None) -> str:
    if not q:
        return "?"
    if tasks is None or any(str(t).lower() in PAPER_TASK_NAMES for t in tasks):
        return f"{q} (CXR-{q})" if q in (8, 14, 19) else f"{q} (no paper task)"
    own = [str(t).upper() for t, n in tasks.items() if n == q]
    return f"{q} ({', '.join(own)})" if own else str(q)


PAPER_TASK_NAMES = {"cxr-8", "cxr-14", "cxr-19"}


# ------------------------------------------------------------------------------------ AUROC
def _settings_cell(settings: dict[tuple[str, str], str] | None, task: str, model: str) -> list[str]:
    return [settings.get((task, model), "")] if settings is not None else []


def table_mean_auroc(model_stats: list[ModelStat], sweep: Sweep, cis: dict, auprc: dict,
                     settings: dict[tuple[str, str], str] | None = None) -> Table:
    """Every task × model × test set: seeds, test images, mean AUROC ± sd, its 95 % CI, mean AUPRC, sanity."""
    rows, display = [], []
    for s in model_stats:
        key = (s.task, s.model, s.test_set)
        ci, ap = cis.get(key), auprc.get(key, {})
        am, asd, _ = stats.mean_sd(list(ap.values()))
        sizes = sweep.test_sizes(s.task, s.model, s.test_set)
        rows.append([s.test_set, s.task, s.model, s.n, _seeds(s.per_seed), fmt_sizes(sizes), s.mean, s.sd,
                     ci.low if ci else None, ci.high if ci else None, ci.resamples if ci else None, am, asd, s.flag,
                     *_settings_cell(settings, s.task, s.model)])
        display.append([s.test_set, s.task, s.model, str(s.n), fmt_sizes(sizes), fmt_auroc(s.mean, s.sd, s.n),
                        fmt_ci(ci), fmt_auroc(am, asd, s.n), s.flag or "ok",
                        *_settings_cell(settings, s.task, s.model)])
    extra = ["Settings"] if settings is not None else []
    return Table("mean_auroc", "Mean AUROC and AUPRC over seeds",
                 ["Test set", "Task", "Model", "Seeds", "Test images", "Mean AUROC", "95% CI", "Mean AUPRC",
                  "Sanity", *extra], display,
                 ["test_set", "task", "model", "n_seeds", "seeds", "test_images", "mean", "sd", "ci_low", "ci_high",
                  "ci_resamples", "auprc_mean", "auprc_sd", "sanity", *[e.lower() for e in extra]], rows,
                 align="lllrrrrrl" + "l" * len(extra),
                 note="Mean ± sd over seeds of the mean over labels. 95% CI: stratified bootstrap over the test "
                      f"images ({stats.BOOTSTRAP_RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED}; see "
                      "\"How the numbers are computed\"). Sanity: the seeds that failed a check.")


def table_comparisons(comps: list[Comparison], sweep: Sweep, settings: dict[tuple[str, str], str] | None = None) -> Table:
    rows, display = [], []
    for c in comps:
        t = c.test
        sizes = sorted(set(sweep.test_sizes(c.a.task, c.a.model, c.a.test_set))
                       | set(sweep.test_sizes(c.b.task, c.b.model, c.b.test_set)))
        st = [f"{settings.get((c.a.task, c.a.model), '')} / {settings.get((c.b.task, c.b.model), '')}"] \
            if settings is not None else []
        rows.append([c.a.test_set, c.a.task, c.a.model, c.b.model, c.a.mean, c.a.sd, c.a.n, c.b.mean, c.b.sd, c.b.n,
                     fmt_sizes(sizes), c.pct_diff, t.t, t.p, c.stars, t.n, _seeds(t.seeds), c.flag, *st])
        display.append([c.a.test_set, c.a.task, f"{c.a.model} vs {c.b.model}", f"{c.a.n}/{c.b.n}", fmt_sizes(sizes),
                        fmt_auroc(c.a.mean, c.a.sd, c.a.n), fmt_auroc(c.b.mean, c.b.sd, c.b.n), fmt_pct(c.pct_diff),
                        fmt_p(t.p), c.stars, str(t.n), c.flag or "", *st])
    extra = ["Settings"] if settings is not None else []
    return Table(
        "comparisons", "Mean AUROC, classical vs quantum (paired t-test over seeds)",
        ["Test set", "Task", "Comparison", "Seeds", "Test images", "Classical", "Quantum", "% diff", "p", "Sig.",
         "Pairs", "Note", *extra], display,
        ["test_set", "task", "model_a", "model_b", "mean_a", "sd_a", "n_a", "mean_b", "sd_b", "n_b", "test_images",
         "pct_diff", "t", "p", "stars", "n_pairs", "paired_seeds", "flag", *[e.lower() for e in extra]], rows,
        align="lllrrrrrrlrl" + "l" * len(extra),
        note="Seeds: classical/quantum. A comparison involving a row that failed a sanity check shows "
             "`⚠ flagged` instead of stars (its p-value is kept) and says why in Note.")


PER_LABEL_COLUMNS = ["task", "test_set", "model_a", "model_b", "rank", "label", "train_positives", "test_positives",
                     "test_known", "mean_a", "sd_a", "n_a", "mean_b", "sd_b", "n_b", "auprc_a", "auprc_b", "pct_diff",
                     "t", "p", "p_holm", "p_bh", "stars", "n_pairs", "flag"]


def per_label_rows(comps: list[Comparison], train: dict[str, int] | None, test: dict[str, tuple[int, int]],
                   auprc: tuple[dict, dict] = ({}, {})) -> list[list]:
    """Rows of PER_LABEL_COLUMNS; Holm and BH adjust the p-values of these comparisons (one family)."""
    ps = [c.test.p for c in comps]
    holm, bh = stats.holm(ps), stats.benjamini_hochberg(ps)
    rows = []
    for rank, c in enumerate(comps, start=1):
        t, lab = c.test, c.a.label
        pos, known = test.get(lab, (None, None))
        ap_a = stats.mean_sd([v.get(lab, math.nan) for v in auprc[0].values()])[0]
        ap_b = stats.mean_sd([v.get(lab, math.nan) for v in auprc[1].values()])[0]
        rows.append([c.a.task, c.a.test_set, c.a.model, c.b.model, rank, lab, (train or {}).get(lab), pos, known,
                     c.a.mean, c.a.sd, c.a.n, c.b.mean, c.b.sd, c.b.n, ap_a, ap_b, c.pct_diff, t.t, t.p,
                     float(holm[rank - 1]), float(bh[rank - 1]), c.stars, t.n, c.flag])
    return rows


def table_per_label(name: str, title: str, comps: list[Comparison], train: dict[str, int] | None,
                    test: dict[str, tuple[int, int]], auprc: tuple[dict, dict] = ({}, {})) -> Table:
    rows = per_label_rows(comps, train, test, auprc)
    display = []
    for c, r in zip(comps, rows, strict=True):
        pos, known = r[7], r[8]
        display.append([c.a.label, str(r[6]) if r[6] is not None else "–",
                        f"{pos}/{known}" if pos is not None else "–",
                        fmt_auroc(c.a.mean, c.a.sd, c.a.n), fmt_auroc(c.b.mean, c.b.sd, c.b.n),
                        f"{r[15]:.3f}" if np.isfinite(r[15]) else "undefined",
                        f"{r[16]:.3f}" if np.isfinite(r[16]) else "undefined",
                        fmt_pct(c.pct_diff), fmt_p(c.test.p), fmt_p(r[20]), fmt_p(r[21]), c.stars, c.flag])
    a, b = (comps[0].a.model, comps[0].b.model) if comps else ("a", "b")
    return Table(name, title, ["Label", "Train +", "Test +/known", f"AUROC {a}", f"AUROC {b}", f"AUPRC {a}",
                               f"AUPRC {b}", "% diff", "p", "p Holm", "p BH", "Sig.", "Note"], display,
                 PER_LABEL_COLUMNS, rows, align="lrrrrrrrrrrll")


def table_convergence(conv: list[Convergence], sweep: Sweep) -> Table:
    rows, display = [], []
    for c in conv:
        rec = []
        for d in (c.epochs_run, c.epochs_to_best, c.best_val_loss, c.seconds):
            m, sd, n = stats.mean_sd(list(d.values()))
            rec += [m, sd]
        counts, n = sweep.flag_counts(c.task, c.model)
        improving = counts.get("still_improving", 0)
        rows.append([c.task, c.model, len(c.epochs_run), *rec, improving])
        display.append([c.task, c.model, str(len(c.epochs_run)), fmt_mean_sd(c.epochs_run, 1),
                        fmt_mean_sd(c.epochs_to_best, 1), fmt_mean_sd(c.best_val_loss, 4), fmt_mean_sd(c.seconds, 1),
                        f"{WARN} {improving}/{n}" if improving else f"0/{n}"])
    return Table(
        "convergence", "Training: epochs, epochs to the best validation loss, best validation loss",
        ["Task", "Model", "Seeds", "Epochs run", "Epochs to best", "Best val loss", "Train time (s)",
         "Still improving"], display,
        ["task", "model", "n_seeds", "epochs_run_mean", "epochs_run_sd", "epochs_to_best_mean", "epochs_to_best_sd",
         "best_val_loss_mean", "best_val_loss_sd", "seconds_mean", "seconds_sd", "seeds_still_improving"], rows,
        align="llrrrrrr",
        note="Mean ± sd over seeds. Epochs to best counts the epochs up to and including the one with the lowest "
             "validation loss (the kept parameters). Still improving: seeds whose best epoch was their last, i.e. "
             "stopped by the epoch limit while the validation loss still fell (undertrained). Train time sums the "
             "history's per-epoch seconds (seeds trained together in one program share that time).")


def table_long_tail(groups: list[GroupStat], sweep: Sweep) -> Table:
    names = list(dict.fromkeys(g.group for g in groups))
    by_key: dict[tuple[str, str, str], dict[str, GroupStat]] = defaultdict(dict)
    for g in groups:
        by_key[(g.test_set, g.task, g.model)][g.group] = g
    display, rows = [], []
    for (ts, task, model), gs in by_key.items():
        first = next(iter(gs.values()))
        sizes = fmt_sizes(sweep.test_sizes(task, model, ts))
        display.append([ts, task, model, str(first.n), sizes] + [fmt_auroc(gs[n].mean, gs[n].sd, gs[n].n) if n in gs
                                                                   else "–" for n in names] + [first.flag or "ok"])
        rows.append([ts, task, model, first.n, sizes] + [v for n in names for v in (
            (gs[n].mean, gs[n].sd, ";".join(gs[n].labels)) if n in gs else (None, None, None))] + [first.flag])
    return Table("long_tail", "Mean AUROC by label frequency group",
                 ["Test set", "Task", "Model", "Seeds", "Test images"] + names + ["Sanity"], display,
                 ["test_set", "task", "model", "n_seeds", "test_images"]
                 + [f"{n}_{k}" for n in names for k in ("mean", "sd", "labels")] + ["sanity"], rows,
                 align="lllrr" + "r" * len(names) + "l")


def per_seed_rows(sweep: Sweep) -> Table:
    """Every run's recomputed AUROC and AUPRC (mean and per label), with its test-set counts and failed checks."""
    rows = []
    for run in sorted(sweep.runs, key=lambda r: (task_sort_key(r.task), model_key(r.model), r.seed)):
        for ts, pred in run.predictions.items():
            flags = ";".join(sorted(run.sanity.flags_for(ts)))
            rows.append([run.task, run.model, run.seed, ts, "mean", stats.nanmean(pred.auroc),
                         stats.nanmean(pred.auprc), None, pred.n, flags])
            for j, lab in enumerate(pred.label_names):
                rows.append([run.task, run.model, run.seed, ts, lab, float(pred.auroc[j]), float(pred.auprc[j]),
                             int((pred.y_true[:, j] == 1).sum()), int((pred.y_true[:, j] >= 0).sum()),
                             ";".join(sorted(run.sanity.flags_for(ts, lab)))])
    cols = ["task", "model", "seed", "test_set", "label", "auroc", "auprc", "positives", "known", "flags"]
    return Table("per_seed_auroc", "AUROC and AUPRC of every run", cols, [], cols, rows,
                 align="llrll" + "rrrr" + "l")
