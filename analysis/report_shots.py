"""The report's section on `heads shots`: AUROC against measurement shots, and the effective width.

Shown only when some run folder of the sweep holds `shots.json` / `width.json` (written by
`heads shots`); the numbers are those of `analysis.shots` (`shots_table`, `width_table`). In a grid,
the tables keep every configuration measured (the selected ones marked) and the figures draw the
selected configurations when they were measured.
"""

from __future__ import annotations

from analysis import tables as T
from analysis.collect import Sweep, test_set_key
from analysis.document import Document
from analysis.shots import shots_figure, shots_table, width_figure, width_table
from cxrfeat.labels import task_sort_key


def _num(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _selected(row: dict, chosen: dict[tuple[str, str], str] | None) -> bool:
    return chosen is not None and chosen.get((row["task"], "dqc")) == row["configuration"]


def _for_figure(rows: list[dict], chosen) -> list[dict]:
    picked = [r for r in rows if _selected(r, chosen)]
    return picked or rows


def shots_table_rows(rows: list[dict], chosen) -> T.Table:
    grid = any(r["configuration"] for r in rows)
    extra = ["Configuration", "Selected"] if grid else []
    display, raw = [], []
    for r in rows:
        delta = r["auroc_mean"] - r["exact_auroc"] if None not in (r["auroc_mean"], r["exact_auroc"]) else None
        cells = [r["configuration"], "✓" if _selected(r, chosen) else ""] if grid else []
        auroc = _num(r["auroc_mean"]) + (f" ± {r['auroc_sd']:.3f}" if r["auroc_sd"] is not None else "")
        exact = _num(r["exact_auroc"]) + (f" ± {r['exact_auroc_sd']:.3f}" if r["exact_auroc_sd"] is not None else "")
        display.append([r["task"], *cells, r["test_set"], r["sampling"], f"{r['readout_error']:g}", f"{r['shots']:,}",
                        str(r["seeds"]), str(r["draws"]), auroc, _num(r["shot_sd"], 4), exact,
                        f"{delta:+.4f}" if delta is not None else "–", _num(r["auprc_mean"])])
        raw.append([r["task"], *([r["configuration"], _selected(r, chosen)] if grid else []), r["test_set"],
                    r["sampling"], r["readout_error"], r["shots"], r["seeds"], r["draws"], r["auroc_mean"], r["auroc_sd"],
                    r["shot_sd"], r["exact_auroc"], r["exact_auroc_sd"], delta, r["auprc_mean"], r["exact_auprc"]])
    return T.Table(
        "shots", "DQC AUROC with finite measurement shots, beside the exact AUROC",
        ["Task", *extra, "Test set", "Sampling", "Readout p", "Shots", "Seeds", "Draws", "AUROC (shots)",
         "Shot-noise sd", "Exact AUROC", "Δ vs exact", "AUPRC (shots)"], display,
        ["task", *[e.lower() for e in extra], "test_set", "sampling", "readout_error", "shots", "seeds", "draws",
         "auroc_mean", "auroc_sd", "shot_sd", "exact_auroc", "exact_auroc_sd", "delta", "auprc_mean", "exact_auprc"],
        raw, align="l" + "l" * len(extra) + "llrrrrrrrrr",
        note="From the runs' `shots.json` (`heads shots`). AUROC (shots): mean ± sd over every draw of every seed "
             "(seeds × repeats pooled); shot-noise sd: the mean over seeds of the sd over repeats (the shot noise "
             "alone); exact AUROC: mean ± sd over the same seeds with exact ⟨Z⟩; Δ: AUROC (shots) − exact.")


def width_table_rows(rows: list[dict], chosen) -> T.Table:
    grid = any(r["configuration"] for r in rows)
    extra = ["Configuration", "Selected"] if grid else []
    display, raw = [], []
    for r in rows:
        cells = [r["configuration"], "✓" if _selected(r, chosen) else ""] if grid else []
        display.append([r["task"], *cells, r["test_set"], str(r["qubits"]), f"{r['threshold']:g}",
                        f"{r['above_mean']:g}/{r['qubits']}", " ".join(str(a) for a in r["above_per_seed"]),
                        " ".join(f"{v:.2g}" for v in r["sd_per_qubit"])])
        raw.append([r["task"], *([r["configuration"], _selected(r, chosen)] if grid else []), r["test_set"],
                    r["qubits"], r["threshold"], r["above_mean"], ";".join(str(a) for a in r["above_per_seed"]),
                    ";".join(str(s) for s in r["seeds"]), ";".join(repr(v) for v in r["sd_per_qubit"])])
    return T.Table(
        "width", "Effective width of the quantum layer",
        ["Task", *extra, "Test set", "Qubits", "Threshold", "Qubits above (mean)", "Per seed",
         "sd of ⟨Z_k⟩, k = 0, 1, … (mean over seeds)"], display,
        ["task", *[e.lower() for e in extra], "test_set", "qubits", "threshold", "above_mean", "above_per_seed",
         "seeds", "sd_per_qubit"], raw, align="l" + "l" * len(extra) + "lrrrll",
        note="From the runs' `width.json` (`heads shots`): per qubit k, the sd over the test images of the exact "
             "⟨Z_k⟩ of the trained DQC; a qubit carries signal when its sd exceeds the threshold (`--width-threshold`"
             "). After the last CNOT ring ⟨Z_k⟩ is the expectation of a parity of k+1 bits, so later qubits can carry "
             "exponentially little signal; a qubit with sd ≈ 0 is a constant the post layer folds into its bias.")


def _order(rows: list[dict]) -> list[dict]:
    """Report order: task, configuration, test set (NIH first), then the table's own order."""
    return sorted(rows, key=lambda r: (task_sort_key(str(r["task"])), r["configuration"], test_set_key(r["test_set"])))


def shots_section(doc: Document, full: Sweep, chosen: dict[tuple[str, str], str] | None) -> None:
    rows, widths = _order(shots_table(full.path)), _order(width_table(full.path))
    if not rows and not widths:
        return
    doc.add("## Measurement shots and effective width (`heads shots`)\n")
    if rows:
        doc.add("Training uses exact ⟨Z⟩; hardware estimates each ⟨Z_i⟩ from N shots per image. `heads shots` "
                "evaluated the trained DQCs with sampled ẑ (seeded draws, repeated), through the same post layer: "
                "the AUROC against shots below, each curve beside its exact AUROC (dashed).\n")
        doc.table(shots_table_rows(rows, chosen))
        fig_rows = _for_figure(rows, chosen)
        what = " (selected configurations)" if fig_rows is not rows else ""
        title = f"DQC mean AUROC against measurement shots{what}"
        doc.figure(shots_figure(fig_rows, doc.fig_path("shots.png"), title=title, marks=doc.marks), title)
    if widths:
        doc.table(width_table_rows(widths, chosen))
        fig_rows = _for_figure(widths, chosen)
        title = "Effective width: spread of each ⟨Z_k⟩ over the test set"
        doc.figure(width_figure(fig_rows, doc.fig_path("width.png"), title=title, marks=doc.marks), title)
