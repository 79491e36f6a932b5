"""The report's section on `heads noise`: the trained DQCs' AUROC under a device noise model, by scale.

Shown only when some DQC run folder of the sweep holds `noise.json` (written by `heads noise`); the
numbers are `analysis.noise`'s (`noise_table`, `break_even`). In a grid, the tables keep every
configuration evaluated (the selected ones marked) and the figure draws the selected ones when evaluated.
"""

from __future__ import annotations

from analysis import tables as T
from analysis.collect import Sweep, test_set_key
from analysis.document import Document
from analysis.noise import DROP, break_even, noise_figure, noise_table
from cxrfeat.labels import task_sort_key


def _num(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _selected(row: dict, chosen) -> bool:
    return chosen is not None and chosen.get((row["task"], "dqc")) == row["configuration"]


def _order(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (task_sort_key(str(r["task"])), r["configuration"], test_set_key(r["test_set"]),
                                       r["model"], r.get("scale", 0.0)))


def noise_table_rows(rows: list[dict], chosen) -> T.Table:
    grid = any(r["configuration"] for r in rows)
    extra = ["Configuration", "Selected"] if grid else []
    display, raw = [], []
    for r in rows:
        cells = [r["configuration"], "✓" if _selected(r, chosen) else ""] if grid else []
        delta = r["auroc_mean"] - r["exact_auroc"] if None not in (r["auroc_mean"], r["exact_auroc"]) else None
        auroc = _num(r["auroc_mean"]) + (f" ± {r['auroc_sd']:.3f}" if r["auroc_sd"] is not None else "")
        display.append([r["task"], *cells, r.get("trained", "?"), r["test_set"], r["model"], f"{r['scale']:g}", r["method"],
                        "–" if r["trajectories"] is None else str(r["trajectories"]), str(r["seeds"]), auroc,
                        _num(r["exact_auroc"]), "–" if delta is None else f"{delta:+.4f}", _num(r["cdl_auroc"]),
                        _num(r["z_stderr_mean"], 4)])
        raw.append([r["task"], *([r["configuration"], _selected(r, chosen)] if grid else []), r.get("trained", "?"),
                    r["test_set"], r["model"], r["scale"], r["method"], r["trajectories"], r["seeds"], r["auroc_mean"], r["auroc_sd"],
                    r["exact_auroc"], delta, r["cdl_auroc"], r["z_stderr_mean"]])
    return T.Table(
        "noise", "DQC AUROC under device noise, by error scale",
        ["Task", *extra, "Trained", "Test set", "Noise model", "Scale", "Method", "Trajectories", "Seeds",
         "AUROC (noisy)", "Noiseless AUROC", "Δ", "CDL AUROC", "s.e. of ⟨Z⟩"], display,
        ["task", *[e.lower() for e in extra], "trained", "test_set", "noise_model", "scale", "method", "trajectories", "seeds",
         "auroc_mean", "auroc_sd", "noiseless_auroc", "delta", "cdl_auroc", "z_stderr_mean"],
        raw, align="l" + "l" * len(extra) + "lllrlrrrrrrr",
        note="From the runs' `noise.json` (`heads noise`): the trained heads (Trained: on the ideal circuit, or under "
             "a noise model × scale with K trajectories, `heads sweep --noise`) evaluated with the "
             "noise model's error rates times the scale; AUROC mean ± sd over seeds; method `density` is exact, `mps` "
             "averages the trajectories per image (s.e. of ⟨Z⟩: the estimate's mean standard error); the CDL "
             "column is the same sweep's linear heads, which noise does not touch.")


def break_even_rows(rows: list[dict], chosen) -> T.Table:
    grid = any(r["configuration"] for r in rows)
    extra = ["Configuration", "Selected"] if grid else []

    def scale(v, largest):
        if v is None:
            return f"> {largest:g}" if largest is not None else "–"
        return "already at 0" if v == 0 else f"{v:.3g}"

    display, raw = [], []
    for r in rows:
        cells = [r["configuration"], "✓" if _selected(r, chosen) else ""] if grid else []
        display.append([r["task"], *cells, r.get("trained") or "?", r["test_set"], r["model"], _num(r["noiseless_auroc"]),
                        _num(r["cdl_auroc"]),
                        scale(r["drop_scale"], r["largest_scale"]), scale(r["below_cdl_scale"], r["largest_scale"])])
        raw.append([r["task"], *([r["configuration"], _selected(r, chosen)] if grid else []), r.get("trained") or "?",
                    r["test_set"], r["model"], r["noiseless_auroc"], r["cdl_auroc"], r["drop_scale"], r["below_cdl_scale"], r["largest_scale"]])
    return T.Table(
        "noise_break_even", "Error scales at which the DQC loses 0.01 AUROC, and falls below the CDL",
        ["Task", *extra, "Trained", "Test set", "Noise model", "Noiseless AUROC", "CDL AUROC", f"Scale: −{DROP:g} AUROC",
         "Scale: below CDL"], display,
        ["task", *[e.lower() for e in extra], "trained", "test_set", "noise_model", "noiseless_auroc", "cdl_auroc", "drop_scale",
         "below_cdl_scale", "largest_scale"], raw, align="l" + "l" * len(extra) + "lllrrrr",
        note=f"Interpolated linearly in log(scale) between the measured scales; \"> s\": not reached up to the largest "
             f"scale measured; \"already at 0\": the noiseless DQC is below the CDL. Means over seeds; with few test "
             f"images and seeds, a {DROP:g} AUROC change can be within the seeds' spread.")


def noise_section(doc: Document, full: Sweep, chosen) -> None:
    rows = _order(noise_table(full.path))
    if not rows:
        return
    doc.add("## Device noise (`heads noise`)\n")
    models = sorted({(r["model"], r["source"]) for r in rows})
    noisy = sorted({r["trained"] for r in rows if r.get("trained") not in ("ideal", "?", None)})
    doc.add(("The trained DQCs (trained on the ideal circuit" + (", and trained under " + "; ".join(noisy) if noisy else "")
             + ") evaluated under ") + "; ".join(
        f"the noise model `{m}`" + (f" ({s})" if s else "") for m, s in models)
        + ", its error rates multiplied by each scale (1 = the model as published). The CDL does not change.\n")
    doc.table(noise_table_rows(rows, chosen))
    doc.table(break_even_rows(_order(break_even(rows)), chosen))
    # the selected configuration, and beside it the heads trained under noise with its other settings
    anchor = {(r["task"], r.get("settings")) for r in rows if _selected(r, chosen)}
    picked = [r for r in rows if (r["task"], r.get("settings")) in anchor] or rows
    what = " (selected configurations)" if picked is not rows else ""
    title = f"DQC mean AUROC against the error scale of {', '.join(m for m, _ in models)}{what}"
    doc.figure(noise_figure(picked, doc.fig_path("noise.png"), title=title, marks=doc.marks), title)
