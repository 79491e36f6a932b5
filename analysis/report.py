"""`analysis report`: a sweep's runs -> `reports/<name>/` (report.md, tables/*.csv|tex, figures/*.png).

The report follows the paper's section IV: Tables I-III, mean AUROC with paired t-tests (Fig. 5),
per-label AUROC (Figs. 6-11), volcano plots (Figs. 12-13), loss curves and convergence (Fig. 4),
plus a long-tail view and a list of what a partial sweep lacks.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis import figures as F
from analysis import stats, summary
from analysis import tables as T
from analysis.bench import load_bench
from analysis.collect import Sweep, comparisons, find_sweep, load_sweep, test_set_key
from analysis.features import (
    SYNTHETIC_SENTENCE,
    StoreCounts,
    is_synthetic,
    label_frequency_groups,
    label_key,
    occurrence_order,
    provenance_stores,
    read_stores,
    scan_stores,
    training_counts,
)
from cxrfeat import __version__
from cxrfeat.atomic import write_text
from cxrfeat.errors import UserError
from cxrfeat.labels import TASKS

VOLCANO_GROUPS = (
    ("cxr8", "CXR-8 labels", TASKS[8]),
    ("cxr14_added", "labels CXR-14 adds to CXR-8", tuple(x for x in TASKS[14] if x not in TASKS[8])),
    ("cxr19_added", "labels CXR-19 adds to CXR-14", tuple(x for x in TASKS[19] if x not in TASKS[14])),
)


def build_report(runs: str | Path | None = None, features: str | Path | None = None,
                 bench: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write the report of a sweep and return the path of its report.md.

    `runs`: the sweep folder (default: the only sweep under runs/). `features`, `bench`: folders of
    feature stores and `heads bench` results (defaults `features/`, `bench/` when they exist).
    `out`: default `reports/<sweep name>`. The report is built in a temporary folder and then
    swapped in, so an interrupted call leaves any earlier report as it was.
    """
    sweep = load_sweep(find_sweep(runs))
    if features is None and isinstance((sweep.meta or {}).get("features"), str) and Path(sweep.meta["features"]).is_dir():
        features = sweep.meta["features"]  # the folder the sweep trained from
    features = _optional_dir(features, "features", "--features")
    bench = _optional_dir(bench, "bench", "--bench")
    out = Path(out) if out is not None else Path("reports") / sweep.name
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "report.md").exists())):
        raise UserError(f"{out}: exists and is not a report folder; choose another --out")

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(sweep, features, bench, tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "report.md"


def _optional_dir(given, default: str, option: str) -> Path | None:
    if given is None:
        return Path(default) if Path(default).is_dir() else None
    if not Path(given).is_dir():
        raise UserError(f"{option} {given}: no such folder")
    return Path(given)


def _train_dataset(sweep: Sweep) -> str | None:
    """The training store's dataset named in the runs' feature-store provenance, if any."""

    def walk(obj: Any) -> str | None:
        if isinstance(obj, dict):
            if obj.get("split") == "train" and obj.get("dataset"):
                return str(obj["dataset"])
            for v in obj.values():
                found = walk(v)
                if found:
                    return found
        return None

    return next((d for r in sweep.runs[:20] if (d := walk(r.config))), None)


@dataclass
class _Doc:
    """The report being written: its Markdown lines and where tables and figures go."""

    sweep: Sweep
    out: Path
    train: StoreCounts | None
    tag: str  # appended to figure titles (" — SYNTHETIC DATA")
    md: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.md.extend(lines)

    def table(self, t: T.Table) -> None:
        t.write(self.out / "tables")
        self.add(f"**{t.title}.** " + (t.note + " " if t.note else "") + f"(`tables/{t.name}.csv`, `.tex`)\n",
                 t.markdown() + "\n")

    def figure(self, path: Path, alt: str) -> None:
        self.add(f"![{alt}]({path.relative_to(self.out).as_posix()})\n")

    def fig_path(self, name: str) -> Path:
        return self.out / "figures" / name


def _write(sweep: Sweep, features: Path | None, bench: Path | None, out: Path) -> None:
    (out / "figures").mkdir(parents=True)
    stores, store_notes = scan_stores(features) if features else ([], [])
    if not stores:  # no folder of stores: the ones the runs were trained and tested on, if still there
        stores, store_notes = read_stores(provenance_stores(sweep.meta or {}, *[r.config for r in sweep.runs[:50]]))
    synthetic = is_synthetic(*[c.attrs for c in stores], *[r.config for r in sweep.runs])
    doc = _Doc(sweep, out, training_counts(stores, _train_dataset(sweep)), " — SYNTHETIC DATA" if synthetic else "")
    doc.add(f"# Report: {sweep.name}\n")
    if synthetic:
        doc.add(f"> {SYNTHETIC_SENTENCE}\n")
    doc.add(f"Runs from `{sweep.path}`; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
            f"cxr-qtl {__version__}. Every AUROC below is recomputed from the runs' `predictions/*.npz`.\n")
    _runs_section(doc)
    _data_section(doc, stores, store_notes, features, bench)
    _mean_auroc_section(doc)
    points = _per_label_section(doc)
    _volcano_section(doc, points)
    _training_section(doc)
    _long_tail_section(doc)
    _methods_section(doc)
    write_text(out / "report.md", "\n".join(doc.md))


def _runs_section(doc: _Doc) -> None:
    sweep = doc.sweep
    doc.add("## Runs\n", "| Task | Model | Finished seeds | Test sets |\n| --- | --- | --- | --- |")
    for task in sweep.tasks:
        for model in sweep.models(task):
            rs = sweep.runs_of(task, model)
            tsets = sorted({t for r in rs.values() for t in r.predictions}, key=test_set_key)
            doc.add(f"| {task} | {model} | {' '.join(map(str, sorted(rs)))} | {', '.join(tsets)} |")
    doc.add("")
    if sweep.notes:
        doc.add("**Missing or unfinished** (the statistics use what is there; t-tests pair only seeds both "
                "models finished):\n", *[f"- {n}" for n in sweep.notes], "")
    else:
        doc.add("Nothing is missing: every task × model has the same finished seeds.\n")


def _data_section(doc: _Doc, stores: list[StoreCounts], store_notes: list[str], features: Path | None,
                  bench: Path | None) -> None:
    """Tables I-III."""
    doc.add("## Data and models\n")
    if stores:
        doc.table(T.table_labels(stores))
    else:
        doc.add(f"No feature stores found{f' under `{features}`' if features else ''} or named by the runs "
                "(pass --features): Table I left out.\n")
    doc.add(*[f"- {n}" for n in store_notes], *([""] if store_notes else []))
    if any(r.config.get("param_counts") for r in doc.sweep.runs):
        doc.table(T.table_params(doc.sweep))
    else:
        doc.add("No `param_counts` in the runs' config.json: Table II left out.\n")
    records, bench_notes = load_bench(bench) if bench else ([], [])
    if records:
        doc.table(T.table_bench(records))
    else:
        doc.add("No step-time benchmarks (`heads bench` writes `bench/*.json`; pass --bench): Table III left out.\n")
    doc.add(*[f"- {n}" for n in bench_notes], *([""] if bench_notes else []))


def _mean_auroc_section(doc: _Doc) -> None:
    doc.add("## Mean AUROC (paper Fig. 5)\n")
    model_stats = summary.mean_auroc(doc.sweep)
    comps = summary.mean_comparisons(doc.sweep)
    if comps:
        doc.table(T.table_comparisons(comps))
    doc.table(T.table_mean_auroc(model_stats))
    doc.figure(F.mean_auroc_figure(model_stats, comps, doc.fig_path("fig5_mean_auroc.png"), doc.tag),
               "Mean AUROC per task, model and test set")


def _per_label_section(doc: _Doc) -> dict[tuple[str, str], list[dict]]:
    """Figs. 6-11 and their tables; returns the volcano points per (classical, quantum) pair."""
    sweep, train = doc.sweep, doc.train
    doc.add("## Per-label AUROC (paper Figs. 6–11)\n")
    order = (f"Labels are sorted by their number of positive images in the training store `{train.path}`."
             if train else "No training store was found, so labels follow the canonical order (the paper's "
             "Table I order, by NIH-CXR-LT occurrence).")
    doc.add(order + " `Train +` / `Test +`: positive images in training / in the test set. A label with one "
            "class among its known images in a test set has no AUROC (`undefined`).\n")
    rows: list[list] = []
    points: dict[tuple[str, str], list[dict]] = {}
    for task in sweep.tasks:
        labels = occurrence_order(sweep.label_names(task), train)
        for ts in sweep.test_sets(task):
            test_pos = summary.test_positives(sweep, task, ts)
            for pair in comparisons(sweep.models(task)):
                lc = summary.label_comparisons(sweep, task, ts, pair, labels)
                stem = f"per_label_{task}_{ts}{_pair_suffix(pair)}"
                title = (f"{F.task_name(task)} on {F.test_set_name(ts)}: {F.model_name(pair[0])} vs "
                         f"{F.model_name(pair[1])}{doc.tag}")
                doc.add(f"### {task} · {ts} · {pair[0]} vs {pair[1]}\n")
                doc.figure(F.per_label_figure(lc, doc.fig_path(f"{stem}.png"), title), title)
                t = T.table_per_label(stem, title, lc, train.positives if train else None, test_pos)
                t.write(doc.out / "tables")
                rows += t.csv_rows
                doc.add(f"<details><summary>Table (<code>tables/{stem}.csv</code>)</summary>\n",
                        t.markdown() + "\n\n</details>\n")
                points.setdefault(pair, []).extend(
                    {"label": c.a.label, "task": task, "test_set": ts, "pct_diff": c.pct_diff, "p": c.test.p}
                    for c in lc)
    if rows:
        T.Table("per_label", "Per-label AUROC comparisons", [], [], T.PER_LABEL_COLUMNS, rows).write(doc.out / "tables")
        doc.add("All per-label comparisons: `tables/per_label.csv`.\n")
    else:
        doc.add("No task has both models of a pair (e.g. cdl and dqc): nothing to compare per label.\n")
    return points


def _pair_suffix(pair: tuple[str, str]) -> str:
    """'' for cdl/dqc, '_finetune' for cdl-finetune/dqc-finetune."""
    return pair[1][3:].replace("-", "_")


def _volcano_section(doc: _Doc, points: dict[tuple[str, str], list[dict]]) -> None:
    doc.add("## Volcano plots (paper Figs. 12–13)\n")
    doc.add(
        "One point per (label, task, test set): −log10 of the paired t-test's p-value against the % difference "
        "2(AUROC_CDL − AUROC_DQC)/(AUROC_CDL + AUROC_DQC) of the mean AUROCs; right of zero CDL is better. "
        "**x axis:** the paper plots log2 of the % difference, which is undefined for negative differences; "
        f"here the axis is the signed % difference itself on a symmetric-log scale (matplotlib `symlog`: linear "
        f"within ±{F.VOLCANO_LINTHRESH:g}%, logarithmic beyond), so tick labels read as % differences of either "
        "sign. The dashed line is p = 0.05; panels are test sets, markers are tasks.\n")
    known = {lab for _, _, labs in VOLCANO_GROUPS for lab in labs}
    drawn = False
    for pair, pts in points.items():
        others = ("other", "other labels", tuple(sorted({p["label"] for p in pts} - known)))
        for key, what, members in (*VOLCANO_GROUPS, others):
            sel = [p for p in pts if p["label"] in members]
            if sel:
                title = f"{F.model_name(pair[0])} vs {F.model_name(pair[1])}: {what}{doc.tag}"
                path = F.volcano_figure(sel, doc.fig_path(f"volcano_{key}{_pair_suffix(pair)}.png"), title)
                doc.add(f"### {title}\n")
                doc.figure(path, title)
                drawn = True
    if not drawn:
        doc.add("Nothing to plot: no pair of models to compare.\n")


def _training_section(doc: _Doc) -> None:
    sweep = doc.sweep
    doc.add("## Training (paper Fig. 4 and section IV-B)\n")
    if not any(r.history for r in sweep.runs):
        doc.add("No run has a history.jsonl: loss curves left out.\n")
        return
    curves = {task: {m: {k: summary.loss_curves(sweep, task, m, k) for k in ("train_loss", "val_loss")}
                     for m in sweep.models(task)} for task in sweep.tasks}
    doc.figure(F.loss_figure(curves, doc.fig_path("fig4_loss.png"), doc.tag), "Loss curves")
    doc.table(T.table_convergence(summary.convergence(sweep)))


def _long_tail_section(doc: _Doc) -> None:
    doc.add("## Long tail: head, medium and tail labels\n")
    pool = sorted({lab for t in doc.sweep.tasks for lab in doc.sweep.label_names(t)}, key=label_key)
    groups = label_frequency_groups(doc.train, pool)
    doc.add(_groups_note(groups, doc.train) + "\n")
    gs = summary.long_tail(doc.sweep, groups)
    if gs:
        doc.table(T.table_long_tail(gs))
        doc.figure(F.long_tail_figure(gs, doc.fig_path("long_tail.png"), doc.tag), "Long-tail view")


def _methods_section(doc: _Doc) -> None:
    T.per_seed_rows(doc.sweep).write(doc.out / "tables")
    doc.add(
        "## How the numbers are computed\n",
        "- AUROC: scikit-learn `roc_auc_score` per label over the test images whose label is known (-1, unknown, "
        "left out); a label with one class among them is `undefined`. A model's mean AUROC is the mean over its "
        "defined labels; mean ± sd are over seeds (sample sd, ddof = 1).",
        "- Paired t-test: scipy `ttest_rel` over seeds, each classical seed paired with the quantum run of the same "
        "seed number; seeds only one model finished are left out. `n/a`: fewer than two pairs (or identical "
        "values).",
        f"- Significance: {stats.STAR_LEGEND} (the paper's legends).",
        "- % diff = 2(a − b)/(a + b) × 100 of the mean AUROCs, a the classical model (CDL), b the quantum one (DQC).",
        "- Raw numbers: `tables/per_seed_auroc.csv` (every run's AUROC per test set and label); empty CSV cells are "
        "undefined values.",
        "",
    )


def _groups_note(groups: dict[str, list[str]], train: StoreCounts | None) -> str:
    parts = []
    for name, labs in groups.items():
        if train:
            counts = [train.positives.get(lab, 0) for lab in labs]
            rng = f"{min(counts)}–{max(counts)} training positives" if counts else "none"
            parts.append(f"**{name}** ({len(labs)} labels, {rng}): {', '.join(labs)}")
        else:
            parts.append(f"**{name}** ({len(labs)} labels): {', '.join(labs)}")
    basis = (f"ranked by positive images in `{train.path}`" if train else
             "ranked in the canonical order (the paper's Table I order: NIH-CXR-LT occurrence), no training store "
             "having been found")
    return ("Labels are cut into thirds by training frequency — rank terciles, not absolute counts, so the groups "
            f"mean the same on the full dataset and on a small one — {basis}. " + "; ".join(parts) + ". A group's "
            "AUROC is, per seed, the mean over its labels in the task (defined ones), then mean ± sd over seeds.")
