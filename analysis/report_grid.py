"""The report's grid section: which configuration was selected on validation data, and the whole grid.

`analysis report` of a grid sweep (`runs/<sweep>/<task>/<model>/<config>/seed-<s>/`) selects one
configuration per task × model (`analysis.grid.select`, validation data only) and writes every
other section of the report for the selected configurations alone; this section says what was
selected and shows every configuration: a selection table, a table of validation and test AUROC
across the grid (CSV + LaTeX) and one heat-map figure per task.
"""

from __future__ import annotations

import math

import numpy as np

from analysis import figures as F
from analysis import grid as G
from analysis import provenance as P
from analysis import stats, summary
from analysis import tables as T
from analysis.collect import Sweep
from analysis.document import Document


def point_text(point: dict) -> str:
    """'lr 0.01, layers 1' (the configuration's varying settings)."""
    return ", ".join(f"{P.SETTING_NAMES.get(k, k)} {P.fmt_setting(k, v)}" for k, v in point.items()) or "–"


def _point_csv(point: dict) -> str:
    return ";".join(f"{k}={v}" for k, v in point.items())


def _mean_sd(values: dict[int, float]) -> tuple[float, float, int]:
    return stats.mean_sd([v for v in values.values() if math.isfinite(v)])


def _fmt(values: dict[int, float], digits: int = 3) -> str:
    m, sd, n = _mean_sd(values)
    if n == 0:
        return "n/a"
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if n > 1 and math.isfinite(sd) else "")


def _flags(full: Sweep, c: G.ConfigStat) -> str:
    counts: dict[str, int] = {}
    runs = full.runs_of(c.task, c.model, c.config)
    for r in runs.values():
        for f in r.sanity.flags_for(None):
            counts[f] = counts.get(f, 0) + 1
    return P.describe_flags(counts, len(runs))


def _test_rank(configs: list[G.ConfigStat], chosen: G.ConfigStat, test_set: str) -> int | None:
    """Rank (1 = best) of the selected configuration's mean test AUROC among its task × model's configurations."""
    means = {c.config: _mean_sd(c.test_auroc.get(test_set, {}))[0] for c in configs
             if c.task == chosen.task and c.model == chosen.model}
    mine = means.get(chosen.config, math.nan)
    if not math.isfinite(mine):
        return None
    return 1 + sum(1 for v in means.values() if math.isfinite(v) and v > mine)


def selection_table(configs: list[G.ConfigStat], chosen: dict[tuple[str, str], str], by: str,
                    test_sets: list[str]) -> T.Table:
    rows, display = [], []
    for (task, model), name in chosen.items():
        mine = [c for c in configs if c.task == task and c.model == model]
        c = next(x for x in mine if x.config == name)
        vl, vl_sd, _ = _mean_sd(c.val_loss)
        va, va_sd, _ = _mean_sd(c.val_auroc)
        test, test_disp = [], []
        for ts in test_sets:
            m, sd, _ = _mean_sd(c.test_auroc.get(ts, {}))
            rank = _test_rank(configs, c, ts)
            test += [m, sd, rank]
            test_disp += [_fmt(c.test_auroc.get(ts, {})), f"{rank}/{len(mine)}" if rank else "–"]
        rows.append([task, model, len(mine), name, _point_csv(c.point), " ".join(map(str, c.seeds)), vl, vl_sd, va,
                     va_sd, *test])
        display.append([task, model, str(len(mine)), name, point_text(c.point), str(len(c.seeds)),
                        _fmt(c.val_loss, 4), _fmt(c.val_auroc), *test_disp])
    ts_cols = [x for ts in test_sets for x in (f"Test AUROC {ts}", f"Test rank {ts}")]
    return T.Table(
        "grid_selection", f"Selected configurations ({G.CRITERION_TEXT[by]} over seeds, `--select {by}`)",
        ["Task", "Model", "Configs", "Selected", "Settings", "Seeds", "Val loss", "Val AUROC", *ts_cols], display,
        ["task", "model", "n_configs", "selected", "point", "seeds", "val_loss_mean", "val_loss_sd", "val_auroc_mean",
         "val_auroc_sd", *[f"test_{k}_{ts}" for ts in test_sets for k in ("auroc_mean", "auroc_sd", "rank")]], rows,
        align="llrll" + "r" * (3 + 2 * len(test_sets)),
        note="Mean ± sd over seeds. Only validation numbers choose (the Val column of the criterion); the test "
             "AUROC is that of the selected configuration. Test rank: where the selected configuration's test AUROC "
             "ranks among the task × model's configurations (1 = best on test); shown to gauge the selection, "
             "never used by it.")


def grid_table(full: Sweep, configs: list[G.ConfigStat], chosen: dict[tuple[str, str], str],
               test_sets: list[str]) -> T.Table:
    rows, display = [], []
    for c in configs:
        selected = chosen.get((c.task, c.model)) == c.config
        flag = _flags(full, c)
        vl, vl_sd, _ = _mean_sd(c.val_loss)
        va, va_sd, _ = _mean_sd(c.val_auroc)
        test = [v for ts in test_sets for v in _mean_sd(c.test_auroc.get(ts, {}))[:2]]
        rows.append([c.task, c.model, c.config, _point_csv(c.point), " ".join(map(str, c.seeds)), vl, vl_sd, va, va_sd,
                     *test, selected, flag])
        display.append([c.task, c.model, c.config, point_text(c.point), str(len(c.seeds)), _fmt(c.val_loss, 4),
                        _fmt(c.val_auroc), *[_fmt(c.test_auroc.get(ts, {})) for ts in test_sets],
                        "✓" if selected else "", flag or "ok"])
    return T.Table(
        "grid", "Validation and test AUROC across the grid",
        ["Task", "Model", "Configuration", "Settings", "Seeds", "Val loss", "Val AUROC",
         *[f"Test AUROC {ts}" for ts in test_sets], "Selected", "Sanity"], display,
        ["task", "model", "configuration", "point", "seeds", "val_loss_mean", "val_loss_sd", "val_auroc_mean",
         "val_auroc_sd", *[f"test_auroc_{k}_{ts}" for ts in test_sets for k in ("mean", "sd")], "selected", "sanity"],
        rows, align="llll" + "r" * (3 + len(test_sets)) + "ll",
        note="Every configuration of every task × model: mean ± sd over seeds of the best validation loss, the "
             "validation AUROC of the kept parameters, and the test AUROC (mean over labels).")


def heatmap_rows(configs: list[G.ConfigStat], chosen: dict[tuple[str, str], str], by: str, task: str,
                 test_sets: list[str], full: Sweep | None = None) -> tuple[list[list[dict]], list[str]]:
    """The panels of one task's heat-map figure (see `figures.grid_heatmap_figure`) and notes on fixed settings.

    `full`: the whole grid sweep, whose runs' sanity flags mark the cells (none marked without it)."""
    rows, notes = [], []
    models = list(dict.fromkeys(c.model for c in configs if c.task == task))
    for model in models:
        mine = [c for c in configs if c.task == task and c.model == model]
        row_key, col_key = G.heatmap_axes(mine)
        if col_key is None:
            continue
        sel = next(c for c in mine if c.config == chosen[(task, model)])
        fixed = [k for k in G.varying(mine) if k not in (row_key, col_key)]
        if fixed:
            notes.append(f"{F.model_name(model)}: {point_text({k: sel.point.get(k) for k in fixed})} (the selected "
                         "values)")
        shown = [c for c in mine if all(repr(c.point.get(k)) == repr(sel.point.get(k)) for k in fixed)]
        row_values = G.sort_values(c.point.get(row_key) for c in shown) if row_key else [None]
        col_values = G.sort_values(c.point.get(col_key) for c in shown)

        rows_at = {repr(v): i for i, v in enumerate(row_values)}
        cols_at = {repr(v): j for j, v in enumerate(col_values)}
        at = {c.config: (rows_at[repr(c.point.get(row_key))] if row_key else 0, cols_at[repr(c.point.get(col_key))])
              for c in shown}

        metrics = [("val_loss", "val loss", "low", 4, None), ("val_auroc", "val AUROC", "high", 3, None)]
        if by == "val-auroc":
            metrics.reverse()
        metrics += [("test", f"test AUROC {ts}", "high", 3, ts) for ts in test_sets]
        panels = []
        flagged = np.zeros((len(row_values), len(col_values)), bool)
        for c in shown if full is not None else ():
            flagged[at[c.config]] = any(r.sanity.flags for r in full.runs_of(task, model, c.config).values())
        for attr, what, better, digits, ts in metrics:
            values = np.full((len(row_values), len(col_values)), np.nan)
            for c in shown:
                per_seed = c.test_auroc.get(ts, {}) if ts else getattr(c, attr)
                values[at[c.config]] = _mean_sd(per_seed)[0] if per_seed else np.nan
            if not np.isfinite(values).any():
                continue
            crit = " (selection)" if (attr, by) in (("val_loss", "val-loss"), ("val_auroc", "val-auroc")) else ""
            panels.append({"label": f"{F.model_name(model)} · {what}{crit}", "row_key": row_key, "row_values": row_values,
                           "col_key": col_key, "col_values": col_values, "values": values, "selected": at[sel.config],
                           "digits": digits, "better": better, "auroc": "AUROC" in what,
                           "metric": f"{attr}:{ts or ''}", "flagged": flagged})
        rows.append(panels)
    return rows, notes


def grid_section(doc: Document, full: Sweep, chosen: dict[tuple[str, str], str], by: str) -> None:
    configs = G.config_stats(full)
    test_sets = full.test_sets()
    keys = list(dict.fromkeys(k for c in configs for k in G.varying([x for x in configs if (x.task, x.model)
                                                                     == (c.task, c.model)])))
    values = {k: G.sort_values(c.point.get(k) for c in configs if k in c.point) for k in keys}
    doc.add("## Hyper-parameter grid and model selection\n")
    doc.add(f"This sweep is a hyper-parameter grid: {len(configs)} configurations over {len(chosen)} task × model "
            "pairs, varying " + "; ".join(f"{P.SETTING_NAMES.get(k, k)} over "
                                          f"{', '.join(P.fmt_setting(k, v) for v in vs)}" for k, vs in values.items())
            + f". For each task × model the configuration with the **{G.CRITERION_TEXT[by]} over its seeds** is "
            f"selected (`--select {by}`; the validation numbers come from each run's `metrics.json` `validation`, "
            "the loss falling back on `best_val_loss`). The test sets play no part in the choice. **Every later "
            "section reports the selected configurations only** (their settings stand beside each AUROC row); "
            "the CDL vs DQC comparison there is at each model's own selected settings.\n")
    doc.table(selection_table(configs, chosen, by, test_sets))
    comps = summary.mean_comparisons(doc.sweep)
    if comps:
        doc.add("**Tuned on validation, compared on test** (selected CDL vs selected DQC; paired t-test over seeds, "
                "details in [Mean AUROC](#mean-auroc-paper-fig-5)):\n")
        for c in comps:
            t = c.test
            doc.add(f"- {c.a.task} · {c.a.test_set}: {c.a.model} {T.fmt_auroc(c.a.mean, c.a.sd, c.a.n)} "
                    f"({point_text(_point(configs, c.a.task, c.a.model, chosen))}) vs {c.b.model} "
                    f"{T.fmt_auroc(c.b.mean, c.b.sd, c.b.n)} ({point_text(_point(configs, c.b.task, c.b.model, chosen))})"
                    f": % diff {T.fmt_pct(c.pct_diff)}, p {T.fmt_p(t.p)} {c.stars}".rstrip())
        doc.add("")
        why = unpassable(full, configs, random=any("RANDOM" in m for m in doc.marks))
        if why:
            doc.add(f"**Why these rows cannot pass their checks:** {why}\n")
    doc.table(grid_table(full, configs, chosen, test_sets))
    for task in full.tasks:
        rows, fixed = heatmap_rows(configs, chosen, by, task, test_sets, full)
        if not rows:
            continue
        note = (f"Cells: mean over seeds. Red box: the selected configuration ({G.CRITERION_TEXT[by]}). Brighter is "
                "better in every panel; grey '–': not in the grid.")
        if fixed:
            note += " Other settings fixed at: " + "; ".join(fixed) + "."
        title = f"{F.task_name(task)}: validation loss, validation and test AUROC across the grid"
        path = F.grid_heatmap_figure(rows, doc.fig_path(f"grid_{task}.png"), title, doc.marks, note)
        doc.figure(path, title)


def unpassable(full: Sweep, configs: list[G.ConfigStat], random: bool = False) -> str:
    """One sentence naming each model whose every configuration, on every task, failed a sanity check (and the
    checks), or '' when some configuration of each model passed: then a flagged selection is the criterion's
    choice, not the grid's limit."""
    parts = []
    for model in dict.fromkeys(c.model for c in configs):
        flags: dict[str, int] = {}
        every = True
        for c in (c for c in configs if c.model == model):
            runs = full.runs_of(c.task, model, c.config).values()
            bad = {f for r in runs for f in r.sanity.flags}
            every &= bool(bad)
            for f in bad:
                flags[f] = flags.get(f, 0) + 1
        if every and flags:
            n = sum(1 for c in configs if c.model == model)
            named = ", ".join(P.FLAG_TEXT.get(f, f) for f in P.FLAG_ORDER if f in flags)
            parts.append(f"no {F.model_name(model)} configuration of the grid passed ({named}; {n} configurations)")
    if not parts:
        return ""
    return ("; ".join(parts) + " — on these features no setting tried gives that model a sound head, so its "
            "comparisons carry no stars" + (" (a random-weight backbone's embeddings hold no learned image features)."
                                            if random else "."))


def _point(configs: list[G.ConfigStat], task: str, model: str, chosen: dict[tuple[str, str], str]) -> dict:
    return next((c.point for c in configs if (c.task, c.model, c.config) == (task, model, chosen.get((task, model)))),
                {})
