"""`analysis report`: a sweep's runs -> `reports/<name>/` (report.md, tables/*.csv|tex, figures/*.png).

The report opens with the provenance of its numbers, read from the runs themselves (so a copied
`runs/` folder gives the same report): the backbone (a RANDOM WEIGHTS banner when any run used
one), the data (a SYNTHETIC banner), the settings of every task × model, and the heads that failed
a sanity check. It then follows the paper's section IV: Tables I-III, mean AUROC with paired
t-tests, bootstrap confidence intervals and AUPRC (Fig. 5), per-label AUROC with corrected p-values
(Figs. 6-11), volcano plots (Figs. 12-13), loss curves and convergence (Fig. 4), plus a long-tail
view and a list of what a partial sweep lacks. No absolute path is written into the report.

A hyper-parameter grid (`<model>/<config>/seed-<s>/`) is reported for one configuration per task ×
model, selected on validation data (`select`, see `analysis.grid`); a grid section shows the
selection and the whole grid (`analysis.report_grid`). Runs measured with `heads shots` add the
AUROC against shots and the effective width of the quantum layer (`analysis.report_shots`); runs
evaluated with `heads noise` the AUROC under device noise by error scale (`analysis.report_noise`).
Every DQC is drawn at its width and depth (the paper's Fig. 2), with the routing cost of exported
circuits on device layouts (`analysis.report_circuit`).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from analysis import figures as F
from analysis import grid as G
from analysis import provenance as P
from analysis import report_circuit, report_grid, report_noise, report_shots, stats, summary
from analysis import tables as T
from analysis.bench import is_this_machine, load_bench_paths, this_machine
from analysis.collect import Sweep, _shown, comparisons, find_sweep, load_sweep, test_set_key
from analysis.document import Document
from analysis.features import (
    SYNTHETIC_SENTENCE,
    StoreCounts,
    is_synthetic,
    label_frequency_groups,
    label_key,
    label_order_text,
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
RANDOM_SENTENCE = (
    "**RANDOM WEIGHTS: the ResNet-50 backbone of {which} had random, untrained weights** (`--weights random`), "
    "not pretrained ones. Its embeddings carry no learned image features: these numbers say nothing about "
    "CDL or DQC on pretrained features, and they are not the paper's experiment."
)
MARK_SYNTHETIC = "SYNTHETIC DATA"
MARK_RANDOM = "RANDOM-WEIGHT BACKBONE"


def build_report(runs: str | Path | None = None, features: str | Path | None = None,
                 bench: str | Path | list | None = None, out: str | Path | None = None,
                 resamples: int = stats.BOOTSTRAP_RESAMPLES, select: str = "val-loss", tasks=None, models=None,
                 test_sets=None, routing: str | Path | list | None = None) -> Path:
    """Write the report of a sweep and return the path of its report.md.

    `runs`: the sweep folder (default: the only sweep under runs/). `features`: a folder of feature
    stores (default: the sweep's own features folder, else `features/`, else the stores its runs name).
    `bench`: `heads bench` JSON files and/or folders; a file is used as given, a folder only for this
    machine's records (the others are listed as other machines'). Default: this machine's records
    under `bench/`. `out`: default `reports/<sweep name>`. `resamples`: bootstrap resamples per CI.
    `select`: how a grid's configuration is chosen per task × model, `val-loss` (lowest mean validation
    loss over seeds) or `val-auroc` (highest mean validation AUROC); unused outside a grid.
    `tasks`, `models`, `test_sets`: report only these (None: all the sweep has; `Sweep.subset`).
    `routing`: `heads export` folders, folders of them, `heads routing --out` folders or `routing.json`
    files for the routing table (None: the exports of the sweep's runs under `exports/`;
    `analysis.report_circuit`).
    The report is built in a temporary folder and then swapped in, so an interrupted call leaves any
    earlier report as it was.
    """
    if resamples < 1:
        raise UserError(f"--resamples must be at least 1, not {resamples}")
    if select not in G.CRITERIA:
        raise UserError(f"--select {select!r}: choose from {', '.join(G.CRITERIA)}")
    sweep = load_sweep(find_sweep(runs)).subset(tasks, models, test_sets)
    if not sweep.runs:
        raise UserError("--tasks/--models/--test-sets: no finished run of the sweep is left to report")
    if features is None and isinstance((sweep.meta or {}).get("features"), str) and Path(sweep.meta["features"]).is_dir():
        features = sweep.meta["features"]  # the folder the sweep trained from
    features = _optional_dir(features, "features", "--features")
    bench_paths = _bench_paths(bench)
    routing_paths = [Path(p) for p in (routing if isinstance(routing, list | tuple) else [routing])
                     if p is not None] or None
    out = Path(out) if out is not None else Path("reports") / sweep.name
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "report.md").exists())):
        raise UserError(f"{out}: exists and is not a report folder; choose another --out")

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(sweep, features, bench_paths, tmp, resamples, roots=[out.resolve().parent], select=select,
               routing=routing_paths)
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


def _bench_paths(bench) -> list[Path] | None:
    """The --bench files/folders (each must exist); None: the default `bench/` (when present)."""
    if bench is None or (isinstance(bench, list | tuple) and not bench):
        return [Path("bench")] if Path("bench").is_dir() else None
    paths = [Path(b) for b in (bench if isinstance(bench, list | tuple) else [bench])]
    for p in paths:
        if not p.exists():
            raise UserError(f"--bench {p}: no such file or folder")
        if p.is_file() and p.suffix != ".json":
            raise UserError(f"--bench {p}: not a `heads bench` JSON file")
    return paths


def _train_dataset(sweep: Sweep) -> str | None:
    """The training store's dataset, as the runs record it."""
    return next((d for r in sweep.runs[:20] if (d := r.record.train_dataset)), None)


def _write(sweep: Sweep, features: Path | None, bench: list[Path] | None, out: Path, resamples: int,
           roots: list[Path], select: str = "val-loss", routing: list[Path] | None = None) -> None:
    (out / "figures").mkdir(parents=True)
    stores, store_notes = scan_stores(features) if features else ([], [])
    if not stores:  # no folder of stores: the ones the runs were trained and tested on, if still there
        stores, store_notes = read_stores(provenance_stores(sweep.meta or {}, *[r.record.stores for r in sweep.runs[:50]]))
    sweep.store_attrs = [c.attrs for c in stores]
    backbones = {r.path: sweep.backbone(r) for r in sweep.runs}
    data = {r.path: sweep.data(r) for r in sweep.runs}
    synthetic = any(d.synthetic for d in data.values())
    if not synthetic and all(d.synthetic is None for d in data.values()):  # nothing recorded: older stores/configs
        synthetic = is_synthetic(*[c.attrs for c in stores], *[r.record.to_json() for r in sweep.runs])
    random = [r for r in sweep.runs if backbones[r.path].random]
    marks = tuple(m for m, on in ((MARK_SYNTHETIC, synthetic), (MARK_RANDOM, bool(random))) if on)
    full, chosen = sweep, (G.select(sweep, select) if sweep.is_grid else None)
    if chosen is not None:  # every section but the grid's: the configurations selected on validation data
        sweep = full.select(chosen)
    doc = Document(sweep, out, training_counts(stores, _train_dataset(sweep)), marks, resamples, None)
    doc.add(f"# Report: {sweep.name}\n")
    if random:
        which = "every run" if len(random) == len(full.runs) else f"{len(random)} of the {len(full.runs)} runs"
        doc.add("> [!CAUTION]", f"> ⛔ {RANDOM_SENTENCE.format(which=which)}\n")
    if synthetic:
        doc.add("> [!WARNING]", f"> {SYNTHETIC_SENTENCE}\n")
    flagged = _flagged_rows(sweep)
    if flagged:
        doc.add("> [!WARNING]", f"> ⚠ **{len(flagged)} task × model × test-set row(s) failed a sanity check** "
                "(constant predictions, saturated circuit inputs, validation loss rising from the first epoch, still "
                "improving at the last epoch, NaN loss): "
                "they are marked ⚠ in every table and figure, and their comparisons carry no significance stars. "
                "See [Sanity checks](#sanity-checks).\n")
    doc.add(f"Runs from `{_shown(sweep.path)}`; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
            f"cxr-qtl {__version__}. Every AUROC and AUPRC below is recomputed from the runs' `predictions/*.npz`.\n")
    _provenance_section(doc, backbones, data, synthetic)
    if chosen is not None:
        report_grid.grid_section(doc, full, chosen, select)
    _runs_section(doc)
    _sanity_section(doc, flagged)
    _data_section(doc, stores, store_notes, features, bench)
    report_circuit.circuit_section(doc, routing)
    _mean_auroc_section(doc)
    points = _per_label_section(doc)
    _volcano_section(doc, points)
    _training_section(doc)
    _long_tail_section(doc)
    report_shots.shots_section(doc, full, chosen)
    report_noise.noise_section(doc, full, chosen)
    _methods_section(doc)
    extra = [sweep.path, *(p for p in [features] if p), *(bench or []), *(routing or [])]
    write_text(out / "report.md", scrub_paths("\n".join(doc.md), roots + [Path(p) for p in extra]))


_ABS_PATH = re.compile(r"(?<![\w.~<>:/])/(?:[^\s`'\"()|<>/]+/)+[^\s`'\"()|<>/]*")


def scrub_paths(text: str, roots: list[Path]) -> str:
    """Rewrite every absolute filesystem path in `text`: relative to the working folder (or a known root's
    parent) when below it, else `…/<name>`. The report is read elsewhere, by others."""
    bases = [Path.cwd().resolve()]
    for r in roots:
        try:
            bases.append(Path(r).resolve().parent)
        except OSError:
            continue

    def fix(m: re.Match) -> str:
        s = m.group(0)
        if s == "/" or not re.match(r"/[\w.-]", s):
            return s
        p = Path(s)
        for b in bases:
            try:
                rel = p.relative_to(b)
                return rel.as_posix() if str(rel) != "." else "."
            except ValueError:
                continue
        return "…/" + p.name

    return _ABS_PATH.sub(fix, text)


# ------------------------------------------------------------------------------------ provenance
def _row_settings(sweep: Sweep, task: str, model: str) -> tuple[dict[str, Any], list[str]]:
    """The settings of a task × model (its first seed's) and the keys on which its seeds disagree."""
    runs = [r for _, r in sorted(sweep.runs_of(task, model).items())]
    each = [sweep.settings(r) for r in runs]
    differ = [k for k in each[0] if any(e.get(k) != each[0].get(k) for e in each[1:])]
    return each[0], differ


def _differing_keys(rows: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Settings keys whose values differ between rows (a DQC-only key left None by CDL does not count)."""
    out = []
    for k in (*P.SETTING_KEYS, "seeds"):
        vals = [s.get(k) for s in rows.values()]
        present = {repr(v) for v in vals if v is not None}
        if len(present) > 1 or (k in ("mode", "limit", "freeze_backbone") and len({repr(v) for v in vals}) > 1):
            out.append(k)
    return out


def _provenance_section(doc: Document, backbones: dict, data: dict, synthetic: bool) -> None:
    sweep = doc.sweep
    doc.add("## Provenance\n", "Read from the runs' own `config.json` (the `backbone`, `data` and `settings` keys; "
            "older runs: their `provenance`, `training` and `head` keys, then the feature stores), so a copied "
            "runs folder gives the same report.\n")
    by_bb: dict[tuple, list] = {}
    for r in sweep.runs:
        by_bb.setdefault(backbones[r.path].key, []).append(r)
    lines = []
    for runs in by_bb.values():
        b = backbones[runs[0].path]
        rows = sorted({f"{r.task}/{r.model}" for r in runs}, key=str)
        where = "every run" if len(runs) == len(sweep.runs) else f"{len(runs)} runs ({', '.join(rows)})"
        text = f"**{b.describe()}**" if b.random else b.describe()
        lines.append(f"- **Backbone:** {text} — {where}; from {b.source}.")
    ds = {}
    for r in sweep.runs:
        d = data[r.path]
        rows = tuple(sorted(d.rows.items(), key=lambda kv: ({"train": 0, "val": 1}.get(kv[0], 2), test_set_key(kv[0]))))
        ds.setdefault((d.dataset, d.synthetic, rows, d.views, d.limit, d.source), []).append(r)
    for (dataset, syn, rows, views, limit, source), runs in ds.items():
        kind = {True: "**SYNTHETIC** (`cxrfeat synth`)", False: "not marked synthetic (the report cannot vouch that it is real)", None: "unknown whether synthetic"}[syn]
        where = "every run" if len(runs) == len(sweep.runs) else f"{len(runs)} runs"
        parts = [f"training dataset `{dataset or 'unknown'}`", kind]
        if rows:
            parts.append("rows " + ", ".join(f"{k} {v}" for k, v in rows))
        if views:
            parts.append(f"{views} views per training image")
        if limit:
            parts.append(f"**--limit {limit}** (a smoke run on a subset)")
        lines.append(f"- **Data:** {'; '.join(parts)} — {where}; from {source}.")
    if synthetic and not any(d.synthetic for d in data.values()):
        lines.append("- The runs do not record whether their data were synthetic; the feature stores say they were.")
    doc.add(*lines, "")

    rows = {}
    notes = []
    for task in sweep.tasks:
        for model in sweep.models(task):
            rows[(task, model)], differ = _row_settings(sweep, task, model)
            if differ:
                notes.append(f"{task}/{model}: its seeds differ in {', '.join(P.SETTING_NAMES[k] for k in differ)}")
    keys = [k for k in (*P.SETTING_KEYS, "seeds") if any(s.get(k) is not None for s in rows.values())]
    differing = _differing_keys(rows)
    if len(rows) > 1 and differing:
        doc.settings = {key: ", ".join(f"{P.SETTING_NAMES[k]} {P.fmt_setting(k, s.get(k))}" for k in differing)
                        for key, s in rows.items()}
    header = ["Task", "Model", "Seeds", "Test images"] + [P.SETTING_NAMES[k] for k in keys]
    doc.add("**Settings per task × model** (seeds: finished / requested by the sweep; test images per test set)"
            + (f"; rows differ in **{', '.join(P.SETTING_NAMES[k] for k in differing)}**, shown beside every AUROC "
               "row below" if doc.settings else "; every row has the same settings (DQC-only ones aside)") + ":\n",
            "| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |")
    for (task, model), s in rows.items():
        finished = len(sweep.runs_of(task, model))
        sizes = ", ".join(f"{ts} {T.fmt_sizes(sweep.test_sizes(task, model, ts))}" for ts in sweep.test_sets(task)
                          if sweep.test_sizes(task, model, ts))
        cells = [task, model, f"{finished}/{s['seeds'] if s.get('seeds') else '?'}", sizes or "–"]
        doc.add("| " + " | ".join(cells + [P.fmt_setting(k, s.get(k)) for k in keys]) + " |")
    doc.add("")
    if notes:
        doc.add(*[f"- {n}" for n in notes], "")
    small = [(t, m) for (t, m), s in rows.items() if s.get("seeds") and len(sweep.runs_of(t, m)) < s["seeds"]]
    if small:
        doc.add("Rows with fewer finished seeds than requested: " + ", ".join(f"{t}/{m}" for t, m in small) + ".\n")


def _flagged_rows(sweep: Sweep) -> list[tuple[str, str, str, str]]:
    out = []
    for task in sweep.tasks:
        for model in sweep.models(task):
            for ts in sweep.test_sets(task):
                text = sweep.flag_text(task, model, ts)
                if text:
                    out.append((task, model, ts, text))
    return out


def _sanity_section(doc: Document, flagged) -> None:
    sweep = doc.sweep
    doc.add("## Sanity checks\n", "Every head is checked for constant predictions (a label whose `y_prob` has sd "
            f"< {P.CONSTANT_SD:g} over the test set, or AUROC exactly 0.5 with sd < {P.HALF_SD:g}), saturated "
            "circuit inputs (DQC: most |tanh| of the pre-circuit angles near 1), a validation loss rising from the "
            "first epoch (any model: its best at epoch 1 of 3 or more, or never below ln 2, the loss of predicting ½ "
            "for every label — the head overfits at once, usually too high a learning rate), a best epoch equal to "
            "its last (still improving when it stopped) and NaN losses — read from each run's `metrics.json` `sanity` and "
            "recomputed from its predictions and history.\n")
    if not flagged:
        doc.add("Every row passed every check.\n")
        return
    doc.add("| Task | Model | Test set | Failed checks |", "| --- | --- | --- | --- |",
            *[f"| {t} | {m} | {ts} | {text} |" for t, m, ts, text in flagged], "")
    detail = []
    for r in sorted(sweep.runs, key=lambda r: (r.task, r.model, r.seed)):
        for ts, labs in sorted(r.sanity.constant_labels.items()):
            detail.append(f"- {r.task}/{r.model} seed {r.seed}, {ts}: constant predictions for {', '.join(labs)}")
        for m in r.sanity.messages[:3]:
            detail.append(f"- {r.task}/{r.model} seed {r.seed}: {m}")
    if detail:
        more = [f"- … and {len(detail) - 30} more (see `tables/per_seed_auroc.csv`, column `flags`)"] \
            if len(detail) > 30 else []
        doc.add("<details><summary>Per seed</summary>\n", *detail[:30], *more, "\n</details>\n")


def _runs_section(doc: Document) -> None:
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


def _data_section(doc: Document, stores: list[StoreCounts], store_notes: list[str], features: Path | None,
                  bench: list[Path] | None) -> None:
    """Tables I-III."""
    doc.add("## Data and models\n")
    if stores:
        doc.table(T.table_labels(stores))
    else:
        doc.add(f"No feature stores found{f' under `{_shown(features)}`' if features else ''} or named by the runs "
                "(pass --features): Table I left out.\n")
    doc.add(*[f"- {n}" for n in store_notes], *([""] if store_notes else []))
    if any(r.record.param_counts for r in doc.sweep.runs):
        doc.table(T.table_params(doc.sweep))
    else:
        doc.add("No `param_counts` in the runs' config.json: Table II left out.\n")
    _bench_section(doc, bench)


# What the report's suggested `heads bench` (= `just bench`, its defaults) costs, measured
# (docs/performance.md "Simulator step times (heads bench)"): every suggestion of it says so, never
# offering it as a quick next step.
BENCH_COST = "every back end at 8, 14 and 19 qubits: about 13 minutes on 2 CPU cores"


def _bench_section(doc: Document, bench: list[Path] | None) -> None:
    if not bench:
        doc.add(f"No step-time benchmarks (`heads bench` writes `bench/<machine>.json`, {BENCH_COST}; pass "
                "--bench): Table III left out.\n")
        return
    here = this_machine()
    records, notes = load_bench_paths(bench)
    explicit = {p.resolve() for p in bench if p.is_file()}
    chosen, others = [], {}
    for r in records:
        if r.source.resolve() in explicit or is_this_machine(r, here):  # a file named with --bench: as given
            chosen.append(r)
        else:
            others.setdefault(r.machine or "unnamed machine", set()).add(r.source.name)
    shown = ", ".join(f"`{_shown(p)}`" for p in bench)
    if chosen:
        named = sorted({r.source.name for r in chosen})
        where = (f"Records: {', '.join(f'`{n}`' for n in named)} from {shown}; each row names the machine it was "
                 f"measured on (this machine: {here['cpu']}, {here['cores']} cores).")
        doc.table(T.table_bench(chosen, where, {t: len(doc.sweep.label_names(t)) for t in doc.sweep.tasks}))
    else:
        doc.add(f"No step-time record of this machine ({here['cpu']}, {here['cores']} cores; `heads bench` would "
                f"write `bench/{here['slug']}.json`) in {shown}: Table III left out. `just bench` would measure it "
                f"({BENCH_COST}), or name a file with --bench.\n")
    if others:
        doc.add("**Other machines** (records in the bench folder, not measured here, left out of Table III):\n",
                *[f"- {m}: {', '.join(f'`{n}`' for n in sorted(files))}" for m, files in sorted(others.items())], "")
    doc.add(*[f"- {n}" for n in notes], *([""] if notes else []))


# ------------------------------------------------------------------------------------ AUROC
def _mean_auroc_section(doc: Document) -> None:
    doc.add("## Mean AUROC (paper Fig. 5)\n")
    sweep = doc.sweep
    model_stats = summary.mean_auroc(sweep)
    comps = summary.mean_comparisons(sweep)
    cis = {(s.task, s.model, s.test_set): summary.auroc_ci(sweep, s.task, s.model, s.test_set, doc.resamples)
           for s in model_stats}
    auprc = {(s.task, s.model, s.test_set): summary.mean_auprc(sweep, s.task, s.model, s.test_set)
             for s in model_stats}
    if comps:
        doc.table(T.table_comparisons(comps, sweep, doc.settings))
    doc.table(T.table_mean_auroc(model_stats, sweep, cis, auprc, doc.settings))
    doc.figure(F.mean_auroc_figure(model_stats, comps, doc.fig_path("fig5_mean_auroc.png"), doc.marks),
               "Mean AUROC per task, model and test set")


def _per_label_section(doc: Document) -> dict[tuple[str, str], list[dict]]:
    """Figs. 6-11 and their tables; returns the volcano points per (classical, quantum) pair."""
    sweep, train = doc.sweep, doc.train
    doc.add("## Per-label AUROC (paper Figs. 6–11)\n")
    order = (f"Labels are sorted by their number of positive images in the training store `{_shown(train.path)}`."
             if train else f"No training store was found, so labels follow the {_fallback_order(sweep)}.")
    doc.add(order + " `Train +`: positive images in training; `Test +/known`: positive and known (0/1) images in "
            "the test set, the AUROC's sample. A label with one class among its known images in a test set has no "
            "AUROC (`undefined`). `p Holm` / `p BH`: the per-label p-values of one table adjusted by Holm "
            "(family-wise) and Benjamini–Hochberg (false discovery rate) over that table's labels; `Sig.` uses "
            "the raw p as the paper does.\n")
    rows: list[list] = []
    points: dict[tuple[str, str], list[dict]] = {}
    for task in sweep.tasks:
        labels = occurrence_order(sweep.label_names(task), train)
        for ts in sweep.test_sets(task):
            counts = summary.test_counts(sweep, task, ts)
            for pair in comparisons(sweep.models(task)):
                lc = summary.label_comparisons(sweep, task, ts, pair, labels)
                stem = f"per_label_{task}_{ts}{_pair_suffix(pair)}"
                na, nb = len(sweep.runs_of(task, pair[0])), len(sweep.runs_of(task, pair[1]))
                sizes = T.fmt_sizes(sorted(set(sweep.test_sizes(task, pair[0], ts))
                                           | set(sweep.test_sizes(task, pair[1], ts))))
                title = (f"{F.task_name(task)} on {F.test_set_name(ts)}: {F.model_name(pair[0])} ({na} seeds) vs "
                         f"{F.model_name(pair[1])} ({nb} seeds), {sizes} test images")
                doc.add(f"### {task} · {ts} · {pair[0]} vs {pair[1]}\n")
                for m in pair:
                    flag = sweep.flag_text(task, m, ts)
                    if flag:
                        doc.add(f"**{m}: {flag}.** Its comparisons below carry no stars.\n")
                doc.figure(F.per_label_figure(lc, doc.fig_path(f"{stem}.png"), title, doc.marks,
                                              {lab: pos for lab, (pos, _) in counts.items()}), title)
                ap = (summary.label_auprc(sweep, task, pair[0], ts), summary.label_auprc(sweep, task, pair[1], ts))
                t = T.table_per_label(stem, title, lc, train.positives if train else None, counts, ap)
                t.write(doc.out / "tables")
                rows += t.csv_rows
                doc.add(f"<details><summary>Table (<code>tables/{stem}.csv</code>)</summary>\n",
                        t.markdown() + "\n\n</details>\n")
                points.setdefault(pair, []).extend(
                    {"label": c.a.label, "task": task, "test_set": ts, "pct_diff": c.pct_diff, "p": c.test.p,
                     "flag": c.flag} for c in lc)
    if rows:
        T.Table("per_label", "Per-label AUROC comparisons", T.PER_LABEL_COLUMNS, [], T.PER_LABEL_COLUMNS,
                rows).write(doc.out / "tables")
        doc.add("All per-label comparisons: `tables/per_label.csv`.\n")
    else:
        doc.add("No task has both models of a pair (e.g. cdl and dqc): nothing to compare per label.\n")
    return points


def _pair_suffix(pair: tuple[str, str]) -> str:
    """'' for cdl/dqc, '_finetune' for cdl-finetune/dqc-finetune."""
    return pair[1][3:].replace("-", "_")


def _volcano_section(doc: Document, points: dict[tuple[str, str], list[dict]]) -> None:
    doc.add("## Volcano plots (paper Figs. 12–13)\n")
    doc.add(
        "One point per (label, task, test set): −log10 of the paired t-test's p-value against the % difference "
        "2(AUROC_CDL − AUROC_DQC)/(AUROC_CDL + AUROC_DQC) of the mean AUROCs; right of zero CDL is better. "
        "**x axis:** the paper plots log2 of the % difference, which is undefined for negative differences; "
        "here the axis is the signed % difference itself, fitted to the points within its bound of ±200%: "
        f"linear when every point lies within ±{F.VOLCANO_LINEAR_MAX:g}%, else symmetric-log (matplotlib "
        f"`symlog`, linear within ±{F.VOLCANO_LINTHRESH:g}%, logarithmic beyond); each plot's axis label says which. "
        "The dashed line is p = 0.05 (raw, uncorrected); panels are test sets, markers are tasks; a red ring and ⚠ "
        "mark a label on which a model failed a sanity check.\n")
    markers = F.task_markers(doc.sweep.tasks)  # one marker per task in every volcano plot
    drawn = False
    for pair, pts in points.items():
        for key, what, members in volcano_groups(doc.sweep.tasks, pts):
            sel = [p for p in pts if p["label"] in members]
            if sel:
                title = f"{F.model_name(pair[0])} vs {F.model_name(pair[1])}: {what}"
                path = F.volcano_figure(sel, doc.fig_path(f"volcano_{key}{_pair_suffix(pair)}.png"), title, doc.marks,
                                        markers=markers, scale_points=pts)
                doc.add(f"### {title}\n")
                doc.figure(path, title)
                drawn = True
    if not drawn:
        doc.add("Nothing to plot: no pair of models to compare.\n")


def volcano_groups(tasks: list[str], points: list[dict]) -> list[tuple[str, str, tuple[str, ...]]]:
    """The volcano plots of a sweep: (file key, title, labels). The paper's nested sets (CXR-8, then what
    CXR-14 and CXR-19 add) only where the sweep has that very task with the paper's labels; every other
    task is drawn in a plot named for it, holding its labels that no earlier plot holds."""
    by_task = {t: list(dict.fromkeys(p["label"] for p in points if p["task"] == t)) for t in tasks}
    out: list[tuple[str, str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for (key, what, members), n in zip(VOLCANO_GROUPS, (8, 14, 19), strict=True):  # a chain from CXR-8 on
        if set(by_task.get(f"cxr-{n}", ())) != set(TASKS[n]):
            break
        out.append((key, what, members))
        seen |= set(members)
    for task in tasks:
        members = tuple(lab for lab in by_task.get(task, ()) if lab not in seen)
        if members:
            what = f"{F.task_name(task)} labels" + ("" if len(members) == len(by_task[task]) else " not drawn above")
            out.append((re.sub(r"[^\w.-]+", "_", task), what, members))
            seen |= set(members)
    return out


def _training_section(doc: Document) -> None:
    sweep = doc.sweep
    doc.add("## Training (paper Fig. 4 and section IV-B)\n")
    if not any(r.history for r in sweep.runs):
        doc.add("No run has a history.jsonl: loss curves left out.\n")
        return
    curves = {task: {m: {k: summary.loss_curves(sweep, task, m, k) for k in ("train_loss", "val_loss")}
                     for m in sweep.models(task)} for task in sweep.tasks}
    flags = {(t, m): sweep.flag_text(t, m) for t in sweep.tasks for m in sweep.models(t)}
    doc.figure(F.loss_figure(curves, doc.fig_path("fig4_loss.png"), doc.marks, flags), "Loss curves")
    doc.table(T.table_convergence(summary.convergence(sweep), sweep))


def _long_tail_section(doc: Document) -> None:
    doc.add("## Long tail: head, medium and tail labels\n")
    pool = sorted({lab for t in doc.sweep.tasks for lab in doc.sweep.label_names(t)}, key=label_key)
    groups = label_frequency_groups(doc.train, pool)
    doc.add(_groups_note(groups, doc.train) + "\n")
    gs = summary.long_tail(doc.sweep, groups)
    if gs:
        doc.table(T.table_long_tail(gs, doc.sweep))
        doc.figure(F.long_tail_figure(gs, doc.fig_path("long_tail.png"), doc.marks), "Long-tail view")


def _methods_section(doc: Document) -> None:
    T.per_seed_rows(doc.sweep).write(doc.out / "tables")
    doc.add(
        "## How the numbers are computed\n",
        "- AUROC: scikit-learn `roc_auc_score` per label over the test images whose label is known (-1, unknown, "
        "left out); a label with one class among them is `undefined`. A model's mean AUROC is the mean over its "
        "defined labels; mean ± sd are over seeds (sample sd, ddof = 1).",
        "- AUPRC: scikit-learn `average_precision_score` per label on the same images (undefined with one class); "
        "mean over the defined labels, then mean ± sd over seeds. Its chance level is the label's prevalence, not "
        "0.5, which is why it matters for the tail labels.",
        f"- 95% CI of the mean AUROC: {stats.BOOTSTRAP_METHOD}; {doc.resamples} resamples, seed "
        f"{stats.BOOTSTRAP_SEED}. It measures the uncertainty from the finite test set (not from the seeds, whose "
        "spread is the ± sd).",
        "- Paired t-test: scipy `ttest_rel` over seeds, each classical seed paired with the quantum run of the same "
        "seed number; seeds only one model finished are left out. `n/a`: fewer than two pairs (or identical "
        "values).",
        f"- Significance: {stats.STAR_LEGEND} (the paper's legends), on the raw p. A comparison involving a row "
        "that failed a sanity check shows `⚠ flagged` instead of stars: its p-value is kept, but a degenerate head "
        "makes it no evidence about CDL versus DQC.",
        "- Multiple comparisons: in each per-label table, the p-values of its labels are adjusted by Holm "
        "(controls the family-wise error) and by Benjamini–Hochberg (controls the false discovery rate); labels "
        "without a p-value are not counted in the family.",
        "- % diff = 2(a − b)/(a + b) × 100 of the mean AUROCs, a the classical model (CDL), b the quantum one (DQC).",
        "- Number formats: AUROC/AUPRC 3 decimals, p-values 4 decimals (`< 0.0001` below), % diff 2 decimals; the "
        "CSV files keep full precision (empty cells: undefined).",
        "- Raw numbers: `tables/per_seed_auroc.csv` (every run's AUROC and AUPRC per test set and label, with "
        "positives, known images and failed checks).",
        "",
    )


def _fallback_order(sweep: Sweep | None = None, labels=None) -> str:
    """The order labels take without a training store, in words: the paper's Table I order only for its labels."""
    labels = list(labels or ()) + [lab for t in (sweep.tasks if sweep else ()) for lab in sweep.label_names(t)]
    text = label_order_text(labels)
    if text.startswith("canonical"):
        return "canonical order (the paper's Table I order, by NIH-CXR-LT occurrence)"
    return "order of their names" if text == "labels by name" else text.replace("the paper's labels", "order: the paper's labels")


def _groups_note(groups: dict[str, list[str]], train: StoreCounts | None) -> str:
    parts = []
    for name, labs in groups.items():
        if train:
            counts = [train.positives.get(lab, 0) for lab in labs]
            rng = f"{min(counts)}–{max(counts)} training positives" if counts else "none"
            parts.append(f"**{name}** ({len(labs)} labels, {rng}): {', '.join(labs)}")
        else:
            parts.append(f"**{name}** ({len(labs)} labels): {', '.join(labs)}")
    basis = (f"ranked by positive images in `{_shown(train.path)}`" if train else
             f"ranked in the {_fallback_order(labels=[lab for labs in groups.values() for lab in labs])}, no training "
             "store having been found")
    return ("Labels are cut into thirds by training frequency — rank terciles, not absolute counts, so the groups "
            f"mean the same on the full dataset and on a small one — {basis}. " + "; ".join(parts) + ". A group's "
            "AUROC is, per seed, the mean over its labels in the task (defined ones), then mean ± sd over seeds.")
