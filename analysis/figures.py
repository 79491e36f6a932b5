"""The report's figures (matplotlib, Agg): the paper's Figs. 4-13 plus a long-tail view.

Every function takes already-computed numbers (see `analysis.summary`) and writes one PNG.

Conventions shared by every figure:
- AUROC charts have one y axis: from 0.0 (the bars' baseline) to 1.0, where the axis stops; error
  bars (± sd over seeds) are clipped to [0, 1], a clipped end drawn as a caret (▲/▼) and said in
  the footnote; a dashed line marks chance (0.5). The room above 1.0 holds only the significance marks.
- A bar or point of a row that failed a sanity check is drawn hatched / ringed in red and carries
  ⚠ instead of stars; the footnote says which check, and whether it is the run's or the label's.
- Legends are built from the artists drawn (a bar's legend swatch is that bar), and explain only
  marks that appear.
- `marks` (e.g. "SYNTHETIC DATA", "RANDOM-WEIGHT BACKBONE") are stamped as a banner above the title
  and as a watermark inside every plot area (a crop keeps it), whenever the runs say so.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from analysis import stats  # noqa: E402
from analysis.summary import Comparison, GroupStat, ModelStat  # noqa: E402
from cxrfeat.atomic import write_bytes  # noqa: E402

DPI = 150
COLORS = {"cdl": "#1f77b4", "dqc": "#ff7f0e", "cdl-finetune": "#9ecae1", "dqc-finetune": "#fdd0a2"}
HATCH = {"cdl-finetune": "//", "dqc-finetune": "//"}
TASK_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
AUROC_BASE = 0.0  # the one baseline of every AUROC chart
CHANCE = 0.5
FLAG_COLOR = "#d62728"
# Volcano x axis: linear when every |% diff| is within VOLCANO_LINEAR_MAX, else symmetric-log with a
# narrow linear band (±VOLCANO_LINTHRESH %, drawn VOLCANO_LINSCALE decades wide). Never beyond ±200 %.
VOLCANO_LINEAR_MAX = 50.0
VOLCANO_LINTHRESH = 2.0
VOLCANO_LINSCALE = 0.3
PCT_BOUND = 200.0
FEW_POSITIVES = 10  # per-label bars from fewer test positives than this are drawn pale
WATERMARK_GID = "provenance-watermark"
BANNER_GID = "provenance-banner"
MARK_SEP = "  ·  "


def model_name(model: str) -> str:
    base, _, rest = model.partition("-")
    return base.upper() + ("-" + rest if rest else "")


def test_set_name(name: str) -> str:
    return name.upper()


def task_name(task: str) -> str:
    return task.upper()


def _color(model: str, i: int) -> str:
    return COLORS.get(model, plt.get_cmap("tab10")(i % 10))


def task_markers(tasks) -> dict[str, str]:
    """One marker per task, fixed for a whole report: pass the same map to every figure of it."""
    return {t: TASK_MARKERS[i % len(TASK_MARKERS)] for i, t in enumerate(dict.fromkeys(tasks))}


def watermark(fig, marks) -> None:
    """The provenance marks written faintly across every plot area of `fig` (colour bars excepted)."""
    if not marks:
        return
    text = "\n".join(marks)  # one mark a line: narrow panels keep it whole
    longest = max(len(m) for m in marks)
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>" or any(t.get_gid() == WATERMARK_GID for t in ax.texts):
            continue
        pos = ax.get_position()
        w_pt, h_pt = pos.width * fig.get_figwidth() * 72, pos.height * fig.get_figheight() * 72
        size = max(4.0, min(15.0, 0.8 * w_pt / (0.78 * longest), 0.6 * h_pt / (1.3 * len(marks))))
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", ma="center", fontsize=size,
                fontweight="bold", color=FLAG_COLOR, alpha=0.2, zorder=0.6, gid=WATERMARK_GID, clip_on=True)


def stamp(fig, marks) -> None:
    """The provenance marks as a red banner line across the top of the figure."""
    if marks:
        fig.text(0.5, 0.995, MARK_SEP.join(marks), ha="center", va="top", fontsize=8.5, color=FLAG_COLOR,
                 fontweight="bold", gid=BANNER_GID, bbox={"boxstyle": "square,pad=0.25", "fc": "#fff0f0", "ec": FLAG_COLOR, "lw": 0.8})


def wrap_title(text: str, width_in: float, fontsize: float) -> str:
    """`text` in lines that fit `width_in` inches at `fontsize` (a character ≈ 0.6 em wide): a narrow figure
    (few labels, a user's own 3-label task) keeps its whole title."""
    per_line = max(20, int(width_in * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.wrap(text, per_line)) if len(text) > per_line else text


def titles(fig, text: str | None, marks, height_in: float) -> float:
    """The figure title below the marks banner (`save` then watermarks every axes with the marks); returns
    the top of the area left for `tight_layout` (figure fraction), which itself keeps the suptitle's room,
    so no second band is reserved. A title wider than the figure (a narrow one: few labels) is wrapped."""
    band = (0.3 if marks else 0.0) / height_in
    if text:
        fig.suptitle(wrap_title(text, 0.95 * fig.get_figwidth(), 11), y=1 - band - 0.02 / height_in, va="top", fontsize=11)
    stamp(fig, marks)
    return 1 - band - (0.0 if text else 0.05 / height_in)


def auroc_axis(ax, label: str = "Mean AUROC", headroom: float = 0.12) -> None:
    """The shared AUROC y axis: 0 to 1 (the spine and ticks stop at 1), chance line, room above for stars."""
    ax.set_ylim(AUROC_BASE, 1.0 + headroom)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.spines["left"].set_bounds(AUROC_BASE, 1.0)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.axhline(CHANCE, ls="--", lw=0.8, color="0.35", zorder=1.5)
    ax.axhline(1.0, lw=0.4, color="0.75", zorder=0.5)
    ax.set_ylabel(label, fontsize=8)
    ax.grid(axis="y", lw=0.3, alpha=0.6)
    ax.set_axisbelow(True)


def _clipped_err(mean: float, sd: float) -> tuple[float, float]:
    """(lower, upper) error-bar lengths of mean ± sd clipped to [0, 1]."""
    if not (np.isfinite(mean) and np.isfinite(sd)):
        return 0.0, 0.0
    return max(0.0, min(sd, mean - AUROC_BASE)), max(0.0, min(sd, 1.0 - mean))


def _top(s) -> float:
    """The top of a bar's clipped error bar."""
    if not np.isfinite(s.mean):
        return AUROC_BASE
    return s.mean + _clipped_err(s.mean, s.sd)[1]


def _errorbars(ax, xs, stats_) -> bool:
    """± sd error bars clipped to [0, 1]; a clipped end is a caret at the limit. True if any was clipped."""
    clipped = False
    for x, s in zip(xs, stats_, strict=True):
        if not (np.isfinite(s.mean) and np.isfinite(s.sd)):
            continue
        lo, hi = _clipped_err(s.mean, s.sd)
        cut_hi, cut_lo = s.mean + s.sd > 1.0 + 1e-12, s.mean - s.sd < AUROC_BASE - 1e-12
        ax.errorbar([x], [s.mean], yerr=[[lo], [hi]], fmt="none", ecolor="0.1", elinewidth=0.8, capsize=0,
                    zorder=3)
        for y, cut, m in ((s.mean + hi, cut_hi, "^"), (s.mean - lo, cut_lo, "v")):
            if cut:
                ax.plot([x], [y], marker=m, ms=4, color="0.1", zorder=3, clip_on=False)
            else:
                ax.plot([x], [y], marker="_", ms=5, mew=0.8, color="0.1", zorder=3)
        clipped |= cut_hi or cut_lo
    return clipped


CLIPPED_NOTE = "▲/▼: error bar clipped at 1.0/0.0 (mean ± sd beyond it)."


def _draw_bars(ax, xs, stats_, width, model: str, index: int, pale=None):
    """One model's bars in its style; flagged ones overlaid with red hatching (a separate artist, so the
    legend can show both). Returns (bars, overlay or None, any error bar clipped)."""
    means = [s.mean if np.isfinite(s.mean) else 0.0 for s in stats_]
    pale = pale or [False] * len(stats_)
    bars = ax.bar(xs, means, width, color=_color(model, index), hatch=HATCH.get(model), edgecolor="0.25",
                  linewidth=0.5, label=model_name(model), zorder=2)
    for b, p in zip(bars, pale, strict=True):
        if p:
            b.set_alpha(0.4)
    flagged = [i for i, s in enumerate(stats_) if getattr(s, "flag", "")]
    overlay = None
    if flagged:
        overlay = ax.bar([xs[i] for i in flagged], [means[i] for i in flagged], width, fill=False, hatch="xxx",
                         edgecolor=FLAG_COLOR, linewidth=0.8, label="⚠ failed a sanity check (no stars)", zorder=2.5)
    return bars, overlay, _errorbars(ax, xs, stats_)


def _legend(fig_or_ax, artists: dict, **kw) -> None:
    """A legend whose handles are the drawn artists themselves (first of each label), in drawing order."""
    handles = [a for a in artists.values() if a is not None]
    fig_or_ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8, frameon=False, **kw)


def _flag_footnote(items) -> str:
    """'⚠ CDL-8 DQC (NIH-CXR-LT): constant predictions in 3/5 seeds' lines for the flagged rows."""
    seen = {}
    for what, flag in items:
        if flag:
            seen.setdefault(flag, []).append(what)
    return "\n".join(f"{flag} — {', '.join(dict.fromkeys(w))}" for flag, w in seen.items())


def footnote(fig, text: str, fontsize: float = 7.0) -> float:
    """Grey notes at the bottom left, wrapped to the figure's width; returns the height they take (fraction)."""
    if not text:
        return 0.0
    import textwrap

    width = max(40, int(fig.get_figwidth() * 72 / (fontsize * 0.56)) - 4)
    lines = [w for para in text.split("\n") for w in (textwrap.wrap(para, width) or [""])]
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=fontsize, color="0.3", va="bottom", ha="left")
    return (len(lines) * fontsize * 1.3 + 4) / (fig.get_figheight() * 72)


def save(fig, path: Path) -> Path:
    """Write `fig` as PNG (atomically) and close it. A figure whose banner carries provenance marks
    (`stamp`) gets them as a watermark inside every plot area first, sized to the final layout."""
    banner = next((t for t in fig.texts if t.get_gid() == BANNER_GID), None)
    if banner is not None:
        watermark(fig, banner.get_text().split(MARK_SEP))
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=DPI)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


def _bracket(ax, x0: float, x1: float, y: float, text: str, h: float, color: str = "0.2") -> None:
    ax.plot([x0, x0, x1, x1], [y, y + h, y + h, y], lw=0.8, color="0.2")
    ax.text((x0 + x1) / 2, y + h, text, ha="center", va="bottom", fontsize=8, color=color)


# ------------------------------------------------------------------------------------ grouped bars
def _grouped_bars(ax, groups: list[str], models: list[str], get, artists: dict) -> tuple[dict, bool]:
    """Bars (mean ± sd) per group and model, centred on the models each group has. Returns x per bar and
    whether an error bar was clipped; `artists` collects the first bars of each model and of the flag
    overlay, for the legend."""
    width = 0.8 / max(len(models), 1)
    xpos, clipped = {}, False
    for j, group in enumerate(groups):
        present = [m for m in models if get(group, m) is not None]
        for k, model in enumerate(present):
            xpos[(group, model)] = j + (k - (len(present) - 1) / 2) * width
    for model in models:
        cells = [(g, get(g, model)) for g in groups if (g, model) in xpos]
        if not cells:
            continue
        xs = [xpos[(g, model)] for g, _ in cells]
        bars, overlay, cut = _draw_bars(ax, xs, [s for _, s in cells], width, model, models.index(model))
        clipped |= cut
        artists.setdefault(model, bars)
        if overlay is not None:
            artists.setdefault("⚠", overlay)
            for (_g, s), x in zip(cells, xs, strict=True):
                if getattr(s, "flag", ""):  # at the bar's foot: the room above belongs to the significance marks
                    ax.text(x, AUROC_BASE + 0.02, "⚠", ha="center", va="bottom", fontsize=9, color=FLAG_COLOR,
                            zorder=4, bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"})
    ax.set_xticks(range(len(groups)))
    return xpos, clipped


def _ordered(artists: dict, models: list[str]) -> dict:
    """The legend's artists: the models in their order, then the flag overlay."""
    return {k: artists[k] for k in [*models, "⚠"] if k in artists}


# ------------------------------------------------------------------------------------ Fig. 5
def mean_auroc_figure(stats_: list[ModelStat], comps: list[Comparison], path: Path, marks=()) -> Path:
    """Grouped bars: mean AUROC ± sd per task and model, one panel per test set, stars per pair."""
    test_sets = list(dict.fromkeys(s.test_set for s in stats_))
    tasks = list(dict.fromkeys(s.task for s in stats_))
    models = list(dict.fromkeys(s.model for s in stats_))
    by = {(s.test_set, s.task, s.model): s for s in stats_}
    panel_w = 1.6 + 0.4 * len(tasks) * len(models)
    fig, axes = plt.subplots(1, len(test_sets), figsize=(panel_w * len(test_sets) + 1.4, 4.2), squeeze=False,
                             sharey=True, dpi=DPI)
    levels = max(1, len({(c.a.model, c.b.model) for c in comps}))
    h = 0.025
    artists: dict = {}
    clipped = starred = False
    for ax, ts in zip(axes[0], test_sets, strict=True):
        auroc_axis(ax, headroom=0.06 + 0.07 * levels)
        xpos, cut = _grouped_bars(ax, tasks, models, lambda task, m, ts=ts: by.get((ts, task, m)), artists)
        clipped |= cut
        level: dict[str, float] = {}
        for c in comps:
            if c.a.test_set != ts or (c.a.task, c.a.model) not in xpos or (c.b.task, c.b.model) not in xpos:
                continue
            top = min(1.0, max(_top(v) for v in (c.a, c.b)))
            y = max(top + 0.04, level.get(c.a.task, -np.inf))
            text = "⚠" if c.flagged else c.stars
            starred |= not c.flagged
            _bracket(ax, xpos[(c.a.task, c.a.model)], xpos[(c.b.task, c.b.model)], y, text, h,
                     FLAG_COLOR if c.flagged else "0.2")
            level[c.a.task] = y + 0.07
        ax.set_xticklabels([task_name(t) for t in tasks])
        ax.set_title(test_set_name(ts))
    for ax in axes[0][1:]:
        ax.set_ylabel("")
    axes[0][0].set_ylabel("Mean AUROC")
    _legend(axes[0][-1], _ordered(artists, models), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    top = titles(fig, "Mean AUROC over seeds (± sd)", marks, fig.get_figheight())
    foot = _flag_footnote((f"{task_name(s.task)} {model_name(s.model)} ({test_set_name(s.test_set)})", s.flag)
                          for s in stats_)
    lines = [" ".join(x for x in ((stats.STAR_LEGEND + ".") if starred else "",
                                  "Dashed line: chance (0.5).", CLIPPED_NOTE if clipped else "") if x)]
    lines += foot.split("\n") if foot else []
    bottom = footnote(fig, "\n".join(lines))
    fig.tight_layout(rect=(0, bottom, 1, top))
    return save(fig, path)


# ------------------------------------------------------------------------------------ Figs. 6-11
def per_label_figure(comps: list[Comparison], path: Path, title: str, marks=(),
                     positives: dict[str, int] | None = None) -> Path:
    """Per-label mean AUROC ± sd of a pair of models, labels in the given (occurrence) order, stars above.

    `positives`: test positives per label; shown under each label, and a label with fewer than
    `FEW_POSITIVES` is drawn pale (its AUROC rests on a handful of images).
    """
    labels = [c.a.label for c in comps]
    n = len(labels)
    positives = positives or {}
    few = [positives.get(lab, FEW_POSITIVES) < FEW_POSITIVES for lab in labels]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * n + 2.0), 4.8), dpi=DPI)
    x = np.arange(n)
    w = 0.38
    auroc_axis(ax, label="AUROC (mean ± sd over seeds)", headroom=0.1)
    artists: dict = {}
    clipped = starred = False
    models = []
    for k, (side, off) in enumerate((("a", -w / 2), ("b", w / 2))):
        st = [getattr(c, side) for c in comps]
        model = st[0].model if st else "?"
        models.append(model)
        bars, overlay, cut = _draw_bars(ax, list(x + off), st, w, model, k, pale=few)
        artists.setdefault(model, bars)
        if overlay is not None:
            artists.setdefault("⚠", overlay)
        clipped |= cut
    for i, c in enumerate(comps):
        if not (np.isfinite(c.a.mean) and np.isfinite(c.b.mean)):
            ax.text(i, AUROC_BASE + 0.02, "undefined", rotation=90, ha="center", va="bottom", fontsize=7,
                    color="0.4")
            continue
        top = min(1.0, max(_top(c.a), _top(c.b)))
        text, color = ("⚠", FLAG_COLOR) if c.flagged else (c.stars, "0.1")
        starred |= not c.flagged and bool(text)
        ax.text(i, top + 0.015, text, ha="center", va="bottom", fontsize=8, color=color,
                rotation=0 if len(text) <= 3 else 90)
    ticks = [f"{lab} ({positives[lab]})" if lab in positives else lab for lab in labels]
    ax.set_xticks(x, ticks, rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    for tick, f in zip(ax.get_xticklabels(), few, strict=True):
        if f:
            tick.set_color("0.45")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_title(wrap_title(title, 0.55 * fig.get_figwidth(), 10), fontsize=10)  # the legend takes the rest
    if any(few):
        artists["few"] = matplotlib.patches.Patch(facecolor="0.6", alpha=0.4, edgecolor="0.25", lw=0.5,
                                                  label=f"pale: < {FEW_POSITIVES} test positives")
    _legend(ax, _ordered(artists, models) | ({"few": artists["few"]} if "few" in artists else {}),
            loc="upper left", bbox_to_anchor=(1.0, 1.0))
    lines = [" ".join(x for x in (
        "Labels sorted by training occurrence (most frequent first); (n): positive images in the test set, the "
        "evidence behind each AUROC.", (stats.STAR_LEGEND + ".") if starred else "", "Dashed line: chance (0.5).",
        CLIPPED_NOTE if clipped else "") if x)]
    lines += _label_flag_notes(comps)
    bottom = footnote(fig, "\n".join(lines))
    top = titles(fig, None, marks, fig.get_figheight())
    fig.tight_layout(rect=(0, bottom, 1, top))
    return save(fig, path)


def _label_flag_notes(comps: list[Comparison]) -> list[str]:
    """Footnote lines for the flags of a per-label chart: a flag every label of a model carries is its runs'
    (e.g. saturated inputs), not the labels'; the others name their labels."""
    out = []
    for side in ("a", "b"):
        st = [getattr(c, side) for c in comps]
        if not st or not any(s.flag for s in st):
            continue
        name = model_name(st[0].model)
        flags = {s.flag for s in st}
        if len(flags) == 1:
            out.append(f"Hatched red, ⚠ (no stars): {name}'s runs failed a sanity check — {flags.pop()} — so "
                       "none of its labels carries stars; the labels themselves are not at fault.")
            continue
        by_flag: dict[str, list[str]] = {}
        for s in st:
            if s.flag:
                by_flag.setdefault(s.flag, []).append(s.label)
        for flag, labs in by_flag.items():
            out.append(f"Hatched red, ⚠ (no stars): {name} on {', '.join(labs)} — {flag}.")
    return out


# ------------------------------------------------------------------------------------ Figs. 12-13
def volcano_scale(xs) -> dict:
    """The volcano x axis for these % diffs: linear within ±VOLCANO_LINEAR_MAX, else symlog (see constants)."""
    xs = [abs(x) for x in xs if np.isfinite(x)]
    if not xs or max(xs) <= VOLCANO_LINEAR_MAX:
        return {"value": "linear"}
    return {"value": "symlog", "linthresh": VOLCANO_LINTHRESH, "linscale": VOLCANO_LINSCALE}


def describe_scale(scale: dict) -> str:
    if scale["value"] == "linear":
        return "linear"
    return f"symlog: linear within ±{scale['linthresh']:g}%, logarithmic beyond"


def volcano_figure(points: list[dict], path: Path, title: str, marks=(), markers: dict[str, str] | None = None,
                   scale_points: list[dict] | None = None) -> Path:
    """−log10 p against the signed % diff, one panel per test set, labels annotated (no overlaps).

    `points`: dicts with label, task, test_set, pct_diff, p, and flag ('' or the failed checks).
    `markers`: task -> marker, the same map for every figure of a report (`task_markers`).
    `scale_points`: the points of the whole figure set (default: `points`); the axes (scale, x and y
    range) are fitted to them, so every figure of the set shares one scale. The x range holds the points
    and 0, within ±200 % (the bound of the % diff); the axis is linear unless a point lies beyond
    ±VOLCANO_LINEAR_MAX %, then symlog with a narrow linear band. Flagged points are ringed in red and
    their label ends in ⚠.
    """
    test_sets = list(dict.fromkeys(p["test_set"] for p in points))
    tasks = list(dict.fromkeys(p["task"] for p in points))
    labels = list(dict.fromkeys(p["label"] for p in points))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    color = {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}
    markers = markers or task_markers(tasks)
    ok = [p for p in points if np.isfinite(p["p"]) and np.isfinite(p["pct_diff"])]
    ref = [p for p in (scale_points or points) if np.isfinite(p["p"]) and np.isfinite(p["pct_diff"])] or ok
    ymax = max([_neglog(p["p"]) for p in ref] + [-math.log10(stats.ALPHA)])
    ylim = (-0.05 * (ymax * 1.25 + 0.3), ymax * 1.25 + 0.3)  # below 0: a point at p = 1 is drawn whole
    scale = volcano_scale([p["pct_diff"] for p in ref])
    fig, axes = plt.subplots(1, max(1, len(test_sets)), figsize=(6.2 * max(1, len(test_sets)), 5.2),
                             squeeze=False, dpi=DPI)
    alpha_line = None
    for ax, ts in zip(axes[0], test_sets, strict=False):
        pts = [p for p in ok if p["test_set"] == ts]
        for p in pts:
            flagged = bool(p.get("flag"))
            ax.scatter(p["pct_diff"], _neglog(p["p"]), s=30, marker=markers[p["task"]], color=color[p["label"]],
                       edgecolor=FLAG_COLOR if flagged else "0.2", linewidth=1.0 if flagged else 0.4, zorder=3)
        alpha_line = ax.axhline(-math.log10(stats.ALPHA), ls="--", lw=0.8, color="0.3",
                                label=f"p = {stats.ALPHA:g} (paired t-test, uncorrected)")
        ax.axvline(0, lw=0.5, color="0.6")
        ax.set_xscale(**scale)
        lo, hi = _volcano_xlim(ax, [p["pct_diff"] for p in ref])
        ax.set_xlim(lo, hi)
        if scale["value"] == "symlog":  # decades only: ticks inside the narrow linear band would overprint
            ax.set_xticks([v for v in (-100, -10, 0, 10, 100) if lo <= v <= hi])
        ax.set_ylim(*ylim)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.set_xlabel(f"% diff. AUROC, 2(CDL − DQC)/(CDL + DQC)  [{describe_scale(scale)}]", fontsize=8)
        ax.set_ylabel("−log10 p (paired t-test over seeds)", fontsize=8)
        ax.set_title(test_set_name(ts), fontsize=10)
        # above the frame, clear of the points and their labels
        ax.text(1.0, 1.01, "CDL better →", transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.4")
        ax.text(0.0, 1.01, "← DQC better", transform=ax.transAxes, ha="left", va="bottom", fontsize=7, color="0.4")
        ax.text(1.0, -math.log10(stats.ALPHA), f"p = {stats.ALPHA:g} ", transform=ax.get_yaxis_transform(),
                ha="right", va="bottom", fontsize=6.5, color="0.3", zorder=2)
    skipped = [f"{p['label']} ({task_name(p['task'])}, {test_set_name(p['test_set'])})" for p in points if p not in ok]
    foot = []
    if any(p.get("flag") for p in ok):
        foot.append("Red ring, ⚠: a model failed a sanity check, its runs' (e.g. saturated inputs) or on that label "
                    "(constant predictions; see the report); its p-value is not evidence of a difference.")
    if skipped:
        more = f" and {len(skipped) - 4} more" if len(skipped) > 4 else ""
        foot.append("Not shown (no p-value: undefined AUROC or < 2 seed pairs): " + "; ".join(skipped[:4]) + more)
    bottom = footnote(fig, "\n".join(foot))
    top = titles(fig, title, marks, fig.get_figheight())
    legend_h = 0.3 / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom + legend_h, 1, top))
    for ax, ts in zip(axes[0], test_sets, strict=False):  # after the layout is fixed: placement is in pixels
        pts = [p for p in ok if p["test_set"] == ts]
        place_labels(ax, [p["pct_diff"] for p in pts], [_neglog(p["p"]) for p in pts],
                     [p["label"] + (" ⚠" if p.get("flag") else "") for p in pts], [color[p["label"]] for p in pts])
    handles = [plt.Line2D([], [], marker=markers[t], ls="", color="0.5", label=task_name(t))
               for t in markers if t in tasks]
    if alpha_line is not None:
        handles.append(alpha_line)
    fig.legend(handles=handles, labels=[h.get_label() for h in handles], loc="lower center",
               bbox_to_anchor=(0.5, bottom), ncol=len(handles), fontsize=8, frameon=False)
    return save(fig, path)


def _volcano_xlim(ax, xs) -> tuple[float, float]:
    """x limits around the points and 0, padded (in the scaled space) for the labels, within ±200 %."""
    tr = ax.xaxis.get_transform()
    t = tr.transform(np.asarray(list(xs) + [0.0], dtype=float))
    lo, hi = float(t.min()), float(t.max())
    pad = max(hi - lo, float(np.ptp(tr.transform(np.array([-1.0, 1.0]))))) * 0.25
    lo, hi = (float(v) for v in tr.inverted().transform(np.array([lo - pad, hi + pad])))
    return max(lo, -PCT_BOUND), min(hi, PCT_BOUND)


def _neglog(p: float) -> float:
    return -math.log10(max(p, 1e-300))


def place_labels(ax, xs, ys, texts, colors=None, fontsize: float = 7.0) -> list:
    """Annotate points without overlapping each other, the points, the axes' own texts or the frame.

    Deterministic and greedy: the most significant points first; for each, try offsets at growing
    distances in sixteen directions and take the first whose text box (with a small margin) overlaps
    nothing placed, no point, no text already in the axes (the watermark excepted) and lies inside the
    frame; failing that, the least overlapping one. Distant labels get a thin leader line.
    """
    if not len(xs):
        return []
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    margin = 1.5 * px
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    frame = ax.get_window_extent(renderer)
    inner = (frame.x0 + margin, frame.y0 + margin, frame.x1 - margin, frame.y1 - margin)
    r = 4.5 * px
    boxes = [(x - r, y - r, x + r, y + r) for x, y in pts]
    boxes += [tuple(b.extents) for t in ax.texts if t.get_gid() != WATERMARK_GID and t.get_visible()
              for b in [t.get_window_extent(renderer)]]
    sizes = []
    for t in texts:
        probe = ax.text(0, 0, t, fontsize=fontsize)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        sizes.append((bb.width + 2 * margin, bb.height + 2 * margin))
    placed, out = [], []
    angles = np.arange(16) * (2 * np.pi / 16)
    directions = [(round(float(np.cos(a)), 3), round(float(np.sin(a)), 3)) for a in angles]
    for i in np.argsort(-np.asarray(ys), kind="stable"):
        (x, y), (w, h) = pts[i], sizes[i]
        best, best_cost = None, np.inf
        for radius in (4, 8, 13, 19, 26, 35, 46, 60, 76):
            for k, (dx, dy) in enumerate(directions):
                ox, oy = dx * radius * px, dy * radius * px
                x0 = x + ox if dx > 0.3 else x + ox - w if dx < -0.3 else x + ox - w / 2
                y0 = y + oy if dy > 0.3 else y + oy - h if dy < -0.3 else y + oy - h / 2
                box = (x0, y0, x0 + w, y0 + h)
                cost = sum(_overlap(box, b) for b in placed) + sum(_overlap(box, b) for b in boxes)
                cost += w * h - _overlap(box, inner)  # outside the frame
                cost = round(cost, 1) + radius * 1e-3 + k * 1e-5  # among equals: nearer, then direction order
                if cost < best_cost:
                    best, best_cost = (dx, dy, radius, box), cost
            if best_cost < 1:
                break
        dx, dy, radius, box = best
        placed.append(box)
        ha = "left" if dx > 0.3 else "right" if dx < -0.3 else "center"
        va = "bottom" if dy > 0.3 else "top" if dy < -0.3 else "center"
        arrow = {"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 0, "shrinkB": 3} if radius > 8 else None
        out.append(ax.annotate(texts[i], (xs[i], ys[i]), xytext=(dx * radius + (1.5 if dx > 0.3 else -1.5 if dx < -0.3
                                                                                 else 0),
                                                                 dy * radius + (1.5 if dy > 0.3 else -1.5 if dy < -0.3
                                                                                else 0)),
                               textcoords="offset points", ha=ha, va=va, fontsize=fontsize,
                               color=_darker(colors[i]) if colors else "0.1", arrowprops=arrow, zorder=4,
                               annotation_clip=False,
                               bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.7}))
    return out


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _darker(c) -> tuple:
    r, g, b, *_ = matplotlib.colors.to_rgba(c)
    return (r * 0.7, g * 0.7, b * 0.7)


# ------------------------------------------------------------------------------------ Fig. 4
def loss_figure(curves: dict[str, dict[str, dict[str, dict]]], path: Path, marks=(), flags=None) -> Path:
    """Train and validation loss per epoch: every seed faintly, the mean over seeds bold while ≥ 2 seeds train.

    `curves[task][model][key]` = {"seeds": {seed: (epochs, values)}, "epochs", "mean", "n"} with key in
    train_loss, val_loss (see `summary.loss_curves`); `flags[(task, model)]`: failed checks ('' if none).
    """
    tasks = list(curves)
    flags = flags or {}
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 2.9 * len(tasks) + 0.8), squeeze=False, dpi=DPI)
    for row, task in zip(axes, tasks, strict=True):
        for ax, key, what in zip(row, ("train_loss", "val_loss"), ("Training", "Validation"), strict=True):
            for i, (model, by_key) in enumerate(curves[task].items()):
                cur = by_key[key]
                c = _color(model, i)
                ls = "--" if "finetune" in model else "-"
                for ep, vals in cur["seeds"].values():
                    ax.plot(ep, vals, color=c, lw=0.7, alpha=0.3, ls=ls)
                    if len(ep):
                        ax.plot(ep[-1:], vals[-1:], marker="o", ms=2.5, color=c, alpha=0.5, ls="")  # stopped
                keep = cur["n"] >= 2
                flag = " ⚠" if flags.get((task, model)) else ""
                if keep.any():
                    ax.plot(cur["epochs"][keep], cur["mean"][keep], color=c, lw=1.6, ls=ls,
                            label=f"{model_name(model)} mean{flag}")
                elif cur["seeds"]:
                    ax.plot([], [], color=c, lw=0.7, ls=ls, label=f"{model_name(model)} (1 seed){flag}")
            ax.set_title(f"{task_name(task)}: {what.lower()} loss", fontsize=10)
            ax.set_xlabel("Epoch", fontsize=8)
            ax.set_ylabel("Mean BCE", fontsize=8)
            ax.grid(lw=0.3, alpha=0.6)
            ax.tick_params(labelsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
        row[1].legend(fontsize=8, frameon=False)
    top = titles(fig, "Training and validation loss per seed (faint) and mean over seeds", marks, fig.get_figheight())
    note = ("Faint lines: single seeds (dot: the seed's last epoch). Bold: the mean over the seeds still training, "
            "drawn only while at least two are.")
    foot = _flag_footnote(((f"{task_name(t)} {model_name(m)}", f) for (t, m), f in flags.items()))
    if foot:
        note += "\n⚠ failed sanity checks: " + foot.replace("\n", "; ")
    fig.tight_layout(rect=(0, footnote(fig, note), 1, top))
    return save(fig, path)


# ------------------------------------------------------------------------------------ long tail
def long_tail_figure(groups: list[GroupStat], path: Path, marks=()) -> Path:
    """Mean AUROC of head / medium / tail labels: one panel per test set × task, bars per model."""
    test_sets = list(dict.fromkeys(g.test_set for g in groups))
    tasks = list(dict.fromkeys(g.task for g in groups))
    models = list(dict.fromkeys(g.model for g in groups))
    names = list(dict.fromkeys(g.group for g in groups))
    by = {(g.test_set, g.task, g.model, g.group): g for g in groups}
    fig, axes = plt.subplots(len(test_sets), len(tasks), figsize=(3.6 * len(tasks) + 1.4, 3.1 * len(test_sets) + 0.5),
                             squeeze=False, sharey=True, dpi=DPI)
    artists: dict = {}
    ticks: dict = {}  # axes -> its groups and their stats (the tick labels)
    clipped = False
    for r, ts in enumerate(test_sets):
        for c, task in enumerate(tasks):
            ax = axes[r][c]
            auroc_axis(ax, label="Mean AUROC" if c == 0 else "", headroom=0.08)
            _, cut = _grouped_bars(ax, names, models, lambda g, m, ts=ts, task=task: by.get((ts, task, m, g)), artists)
            clipped |= cut
            ax.set_xticklabels([_group_tick(g, [x for x in groups if (x.task, x.group) == (task, g)])
                                for g in names], fontsize=7.5)
            ticks[ax] = [(g, [x for x in groups if (x.task, x.group) == (task, g)]) for g in names]
            ax.set_title(f"{task_name(task)} · {test_set_name(ts)}", fontsize=9)
    _legend(axes[0][-1], _ordered(artists, models), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    top = titles(fig, "Mean AUROC by training-frequency group (± sd over seeds)", marks, fig.get_figheight())
    foot = _flag_footnote((f"{task_name(g.task)} {model_name(g.model)} ({test_set_name(g.test_set)})", g.flag)
                           for g in groups)
    note = ("Dashed line: chance (0.5). Under each group: how many of the task's labels it holds (one label: "
            "its name; its bar is that label's AUROC, not a group's)." + (" " + CLIPPED_NOTE if clipped else "")
            + ("\nHatched red, ⚠: failed sanity check — " + foot.replace("\n", "; ") if foot else ""))
    rect = (0, footnote(fig, note), 1, top)
    fig.tight_layout(rect=rect)
    for ax, groups_ in ticks.items():  # a group's one label named under it: wrapped until no two names touch
        fit_ticks(fig, ax, lambda width, groups_=groups_: [_group_tick(g, st, width) for g, st in groups_])
    fig.tight_layout(rect=rect)
    return save(fig, path)


def _group_tick(name: str, stats_, width: int | None = None) -> str:
    """'head\n3 labels', or 'tail\n1 label:\nHernia' (a group of one label is that label), the label's
    name wrapped at `width` characters when given."""
    labels = stats_[0].labels if stats_ else ()
    if len(labels) == 1:
        label = "\n".join(textwrap.wrap(labels[0], width, break_long_words=False)) if width else labels[0]
        return f"{name}\n1 label:\n{label}"
    return f"{name}\n{len(labels)} labels"


def fit_ticks(fig, ax, texts, widths=(None, 14, 11, 9, 7), gap_px: float = 4.0) -> None:
    """Set the x tick labels of `ax` to `texts(width)` for the first wrapping width at which no two
    neighbouring labels overlap (measured on the drawn figure); failing all, the last one at a smaller
    font. Labels never run into each other, whatever the names' lengths (a user's own labels)."""
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)  # the canvas `save` draws with
    renderer = fig.canvas.get_renderer()
    size = ax.get_xticklabels()[0].get_fontsize() if ax.get_xticklabels() else 7.5
    for attempt, width in enumerate((*widths, widths[-1])):
        ax.set_xticklabels(texts(width), fontsize=size if attempt < len(widths) else size * 0.85)
        boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()),
                       key=lambda b: b.x0)
        if all(a.x1 + gap_px <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False)):
            return


# ------------------------------------------------------------------------------------ grid heat maps
def grid_heatmap_figure(rows: list[list[dict]], path: Path, title: str, marks=(), note: str = "") -> Path:
    """Heat maps across a hyper-parameter grid: one figure row per model, one panel per metric.

    Each panel is a dict: `label` (panel title), `row_key`/`row_values` (None/[None] for a single row),
    `col_key`/`col_values`, `values` (rows × cols, NaN where the grid has no such configuration),
    `selected` ((i, j) of the selected configuration, boxed, or None), `digits`, `cmap`, and
    `better` ('low' or 'high': the colour bar is oriented so that brighter is better), `metric` (panels
    of one metric share one colour range across the models, so one colour means one value in the
    figure) and `flagged` (rows × cols booleans: a configuration whose runs failed a sanity check, marked
    ⚠ in its cell). AUROC panels keep their colour range within [0, 1].
    """
    from analysis.provenance import SETTING_NAMES, fmt_setting

    ncols = max(len(r) for r in rows)
    cells_w = max(len(p["col_values"]) for r in rows for p in r)
    heights = [0.42 * max(len(r[0]["row_values"]), 1) + 1.25 for r in rows]
    panel_w = max(2.9, 0.62 * cells_w + 1.9)
    fig = plt.figure(figsize=(panel_w * ncols + 0.3, sum(heights) + 0.7), dpi=DPI)
    gs = fig.add_gridspec(len(rows), ncols, height_ratios=heights)
    limits: dict[str, tuple[float, float]] = {}
    for p in (p for r in rows for p in r):
        finite = np.asarray(p["values"], dtype=float)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            key = p.get("metric", p["label"])
            lo, hi = limits.get(key, (np.inf, -np.inf))
            limits[key] = (min(lo, float(finite.min())), max(hi, float(finite.max())))
    any_flagged = False
    for r, panels in enumerate(rows):
        for c, p in enumerate(panels):
            ax = fig.add_subplot(gs[r, c])
            vals = np.asarray(p["values"], dtype=float)
            lo, hi = limits.get(p.get("metric", p["label"]), (0.0, 1.0))
            if hi - lo < 1e-3:
                lo, hi = lo - 5e-4, hi + 5e-4
            if p.get("auroc"):
                lo, hi = max(0.0, lo), min(1.0, hi)
            cmap = plt.get_cmap(p.get("cmap", "viridis") + ("_r" if p.get("better") == "low" else "")).with_extremes(
                bad="0.92")
            im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
            for i in range(vals.shape[0]):
                for j in range(vals.shape[1]):
                    v = vals[i, j]
                    if not np.isfinite(v):
                        ax.text(j, i, "–", ha="center", va="center", fontsize=8, color="0.45")
                        continue
                    shade = (v - lo) / (hi - lo) if hi > lo else 0.5
                    bright = shade if p.get("better") != "low" else 1 - shade
                    ax.text(j, i, f"{v:.{p.get('digits', 3)}f}", ha="center", va="center", fontsize=7.5,
                            color="black" if bright > 0.55 else "white")
            flagged = np.asarray(p.get("flagged", np.zeros(vals.shape, bool)), dtype=bool)
            for i, j in zip(*np.nonzero(flagged), strict=True):
                any_flagged = True
                ax.text(j + 0.46, i - 0.44, "⚠", ha="right", va="top", fontsize=7, color=FLAG_COLOR, zorder=6,
                        bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.85})
            if p.get("selected") is not None:
                i, j = p["selected"]
                ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec=FLAG_COLOR,
                                                          lw=2.2, zorder=5))
            ax.set_xticks(range(len(p["col_values"])), [fmt_setting(p["col_key"], v) for v in p["col_values"]],
                          fontsize=7.5)
            ax.set_xlabel(SETTING_NAMES.get(p["col_key"], p["col_key"]), fontsize=8)
            if p.get("row_key"):
                ax.set_yticks(range(len(p["row_values"])), [fmt_setting(p["row_key"], v) for v in p["row_values"]],
                              fontsize=7.5)
                ax.set_ylabel(SETTING_NAMES.get(p["row_key"], p["row_key"]), fontsize=8)
            else:
                ax.set_yticks([])
            ax.set_title(p["label"], fontsize=8.5)
            cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
            cb.ax.tick_params(labelsize=6.5)
            cb.ax.yaxis.get_offset_text().set_fontsize(6.5)
    top = titles(fig, title, marks, fig.get_figheight())
    note = " ".join(x for x in (note, "⚠ in a cell: a seed of that configuration failed a sanity check."
                                if any_flagged else "") if x)
    fig.tight_layout(rect=(0, footnote(fig, note), 1, top))
    return save(fig, path)
