"""The report's figures (matplotlib, Agg): the paper's Figs. 4-13 plus a long-tail view.

Every function takes already-computed numbers (see `analysis.summary`) and writes one PNG.

Conventions shared by every figure:
- AUROC charts have one y axis: from 0.0 (the bars' baseline) to 1.0, where the axis stops; error
  bars (± sd over seeds) are clipped to [0, 1]; a dashed line marks chance (0.5). The room above
  1.0 holds only the significance marks.
- A bar or point of a row that failed a sanity check is drawn hatched / ringed in red and carries
  ⚠ instead of stars; the footnote says which check.
- `marks` (e.g. "SYNTHETIC DATA", "RANDOM BACKBONE") are stamped in red in the top-right corner
  and appended to the title, whenever the runs say so.
"""

from __future__ import annotations

import io
import math
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
TASK_MARKERS = ("o", "s", "^", "D", "v", "P")
AUROC_BASE = 0.0  # the one baseline of every AUROC chart
CHANCE = 0.5
FLAG_COLOR = "#d62728"
# Volcano x axis: linear when every |% diff| is within VOLCANO_LINEAR_MAX, else symmetric-log with a
# narrow linear band (±VOLCANO_LINTHRESH %, drawn VOLCANO_LINSCALE decades wide). Never beyond ±200 %.
VOLCANO_LINEAR_MAX = 50.0
VOLCANO_LINTHRESH = 2.0
VOLCANO_LINSCALE = 0.3
PCT_BOUND = 200.0


def model_name(model: str) -> str:
    base, _, rest = model.partition("-")
    return base.upper() + ("-" + rest if rest else "")


def test_set_name(name: str) -> str:
    return name.upper()


def task_name(task: str) -> str:
    return task.upper()


def _color(model: str, i: int) -> str:
    return COLORS.get(model, plt.get_cmap("tab10")(i % 10))


def stamp(fig, marks) -> None:
    """The provenance marks as a red banner line across the top of the figure."""
    if marks:
        fig.text(0.5, 0.995, "  ·  ".join(marks), ha="center", va="top", fontsize=8.5, color=FLAG_COLOR,
                 fontweight="bold", bbox={"boxstyle": "square,pad=0.25", "fc": "#fff0f0", "ec": FLAG_COLOR, "lw": 0.8})


def titles(fig, text: str | None, marks, height_in: float) -> float:
    """The figure title below the marks banner; returns the top of the area left for the axes (figure fraction)."""
    band = (0.3 if marks else 0.0) / height_in
    if text:
        fig.suptitle(text, y=1 - band - 0.02 / height_in, va="top", fontsize=11)
    stamp(fig, marks)
    return 1 - band - ((0.32 if text else 0.05) / height_in)


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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


def _bracket(ax, x0: float, x1: float, y: float, text: str, h: float, color: str = "0.2") -> None:
    ax.plot([x0, x0, x1, x1], [y, y + h, y + h, y], lw=0.8, color="0.2")
    ax.text((x0 + x1) / 2, y + h, text, ha="center", va="bottom", fontsize=8, color=color)


# ------------------------------------------------------------------------------------ grouped bars
def _grouped_bars(ax, groups: list[str], models: list[str], get) -> dict[tuple[str, str], float]:
    """Bars (mean ± sd) per group and model, centred on the models each group has; returns x per bar."""
    width = 0.8 / max(len(models), 1)
    xpos = {}
    for j, group in enumerate(groups):
        present = [m for m in models if get(group, m) is not None]
        for k, model in enumerate(present):
            s = get(group, model)
            x = j + (k - (len(present) - 1) / 2) * width
            xpos[(group, model)] = x
            lo, hi = _clipped_err(s.mean, s.sd)
            flagged = bool(getattr(s, "flag", ""))
            ax.bar(x, s.mean if np.isfinite(s.mean) else 0, width, yerr=[[lo], [hi]],
                   capsize=3, color=_color(model, models.index(model)),
                   hatch="xxx" if flagged else HATCH.get(model), edgecolor=FLAG_COLOR if flagged else "0.25",
                   linewidth=0.8 if flagged else 0.5, error_kw={"lw": 0.8})
            if flagged:  # at the bar's foot: the room above belongs to the significance marks
                ax.text(x, AUROC_BASE + 0.02, "⚠", ha="center", va="bottom", fontsize=9, color=FLAG_COLOR,
                        bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"})
    ax.set_xticks(range(len(groups)))
    return xpos


def _model_legend(fig_or_ax, models: list[str], **kw) -> None:
    handles = [matplotlib.patches.Patch(facecolor=_color(m, i), hatch=HATCH.get(m), edgecolor="0.25", lw=0.5,
                                        label=model_name(m)) for i, m in enumerate(models)]
    fig_or_ax.legend(handles=handles, fontsize=8, frameon=False, **kw)


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
    for ax, ts in zip(axes[0], test_sets, strict=True):
        auroc_axis(ax, headroom=0.06 + 0.07 * levels)
        xpos = _grouped_bars(ax, tasks, models, lambda task, m, ts=ts: by.get((ts, task, m)))
        level: dict[str, float] = {}
        for c in comps:
            if c.a.test_set != ts or (c.a.task, c.a.model) not in xpos or (c.b.task, c.b.model) not in xpos:
                continue
            top = min(1.0, max(_top(v) for v in (c.a, c.b)))
            y = max(top + 0.04, level.get(c.a.task, -np.inf))
            text = "⚠" if c.flagged else c.stars
            _bracket(ax, xpos[(c.a.task, c.a.model)], xpos[(c.b.task, c.b.model)], y, text, h,
                     FLAG_COLOR if c.flagged else "0.2")
            level[c.a.task] = y + 0.07
        ax.set_xticklabels([task_name(t) for t in tasks])
        ax.set_title(test_set_name(ts))
    for ax in axes[0][1:]:
        ax.set_ylabel("")
    axes[0][0].set_ylabel("Mean AUROC")
    _model_legend(axes[0][-1], models, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    top = titles(fig, "Mean AUROC over seeds (± sd)", marks, fig.get_figheight())
    foot = _flag_footnote((f"{task_name(s.task)} {model_name(s.model)} ({test_set_name(s.test_set)})", s.flag)
                          for s in stats_)
    lines = [stats.STAR_LEGEND + ". Dashed line: chance (0.5). Hatched red, ⚠: failed sanity check (no stars)."]
    lines += foot.split("\n") if foot else []
    bottom = footnote(fig, "\n".join(lines))
    fig.tight_layout(rect=(0, bottom, 1, top))
    return save(fig, path)


# ------------------------------------------------------------------------------------ Figs. 6-11
def per_label_figure(comps: list[Comparison], path: Path, title: str, marks=()) -> Path:
    """Per-label mean AUROC ± sd of a pair of models, labels in the given (occurrence) order, stars above."""
    labels = [c.a.label for c in comps]
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * n + 2.0), 4.6), dpi=DPI)
    x = np.arange(n)
    w = 0.38
    auroc_axis(ax, label="AUROC (mean ± sd over seeds)", headroom=0.1)
    for k, (side, off) in enumerate((("a", -w / 2), ("b", w / 2))):
        st = [getattr(c, side) for c in comps]
        model = st[0].model if st else "?"
        ms = [s.mean if np.isfinite(s.mean) else 0 for s in st]
        err = np.array([_clipped_err(s.mean, s.sd) for s in st]).T.reshape(2, -1)
        flagged = [bool(s.flag) for s in st]
        ax.bar(x + off, ms, w, yerr=err, capsize=2, color=_color(model, k), hatch=HATCH.get(model),
               edgecolor="0.25", linewidth=0.5, label=model_name(model), error_kw={"lw": 0.7})
        for i in np.flatnonzero(flagged):  # hatched red overlay on a flagged bar
            ax.bar(x[i] + off, ms[i], w, fill=False, hatch="xxx", edgecolor=FLAG_COLOR, linewidth=0.8)
    for i, c in enumerate(comps):
        if not (np.isfinite(c.a.mean) and np.isfinite(c.b.mean)):
            ax.text(i, AUROC_BASE + 0.02, "undefined", rotation=90, ha="center", va="bottom", fontsize=7,
                    color="0.4")
            continue
        top = min(1.0, max(_top(c.a), _top(c.b)))
        text, color = ("⚠", FLAG_COLOR) if c.flagged else (c.stars, "0.1")
        ax.text(i, top + 0.015, text, ha="center", va="bottom", fontsize=8, color=color,
                rotation=0 if len(text) <= 3 else 90)
    ax.set_xticks(x, labels, rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    foot = _flag_footnote((model_name(s.model), s.flag) for c in comps for s in (c.a, c.b))
    lines = ["Labels sorted by training occurrence (most frequent first). " + stats.STAR_LEGEND
             + ". Dashed line: chance (0.5)."]
    if foot:
        lines.append("Hatched red, ⚠ (no stars): failed sanity check on that label — " + foot.replace("\n", "; "))
    bottom = footnote(fig, "\n".join(lines))
    top = titles(fig, None, marks, fig.get_figheight())
    fig.tight_layout(rect=(0, bottom, 1, top))
    return save(fig, path)


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


def volcano_figure(points: list[dict], path: Path, title: str, marks=()) -> Path:
    """−log10 p against the signed % diff, one panel per test set, labels annotated (no overlaps).

    `points`: dicts with label, task, test_set, pct_diff, p, and flag ('' or the failed checks). The x
    range is fitted to the points (and 0), within ±200 % (the bound of the % diff); the axis is
    linear unless a point lies beyond ±VOLCANO_LINEAR_MAX %, then symlog with a narrow linear band.
    Flagged points are ringed in red and their label ends in ⚠.
    """
    test_sets = list(dict.fromkeys(p["test_set"] for p in points))
    tasks = list(dict.fromkeys(p["task"] for p in points))
    labels = list(dict.fromkeys(p["label"] for p in points))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    color = {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}
    marker = {t: TASK_MARKERS[i % len(TASK_MARKERS)] for i, t in enumerate(tasks)}
    ok = [p for p in points if np.isfinite(p["p"]) and np.isfinite(p["pct_diff"])]
    ymax = max([_neglog(p["p"]) for p in ok] + [-math.log10(stats.ALPHA)])
    scale = volcano_scale([p["pct_diff"] for p in ok])
    fig, axes = plt.subplots(1, max(1, len(test_sets)), figsize=(6.2 * max(1, len(test_sets)), 5.2),
                             squeeze=False, dpi=DPI)
    for ax, ts in zip(axes[0], test_sets, strict=False):
        pts = [p for p in ok if p["test_set"] == ts]
        for p in pts:
            flagged = bool(p.get("flag"))
            ax.scatter(p["pct_diff"], _neglog(p["p"]), s=30, marker=marker[p["task"]], color=color[p["label"]],
                       edgecolor=FLAG_COLOR if flagged else "0.2", linewidth=1.0 if flagged else 0.4, zorder=3)
        ax.axhline(-math.log10(stats.ALPHA), ls="--", lw=0.8, color="0.3")
        ax.axvline(0, lw=0.5, color="0.6")
        ax.set_xscale(**scale)
        lo, hi = _volcano_xlim(ax, [p["pct_diff"] for p in ok])
        ax.set_xlim(lo, hi)
        if scale["value"] == "symlog":  # decades only: ticks inside the narrow linear band would overprint
            ax.set_xticks([v for v in (-100, -10, 0, 10, 100) if lo <= v <= hi])
        ax.set_ylim(0, ymax * 1.2 + 0.1)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.set_xlabel(f"% diff. AUROC, 2(CDL − DQC)/(CDL + DQC)  [{describe_scale(scale)}]", fontsize=8)
        ax.set_ylabel("−log10 p (paired t-test over seeds)", fontsize=8)
        ax.set_title(test_set_name(ts), fontsize=10)
        ax.text(0.99, 0.01, "CDL better →", transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                color="0.4")
        ax.text(0.01, 0.01, "← DQC better", transform=ax.transAxes, ha="left", va="bottom", fontsize=7, color="0.4")
    skipped = [f"{p['label']} ({task_name(p['task'])}, {test_set_name(p['test_set'])})" for p in points if p not in ok]
    foot = []
    if any(p.get("flag") for p in ok):
        foot.append("Red ring, ⚠: a model failed a sanity check on that label (see the report); its p-value "
                    "is not evidence of a difference.")
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
    handles = [plt.Line2D([], [], marker=marker[t], ls="", color="0.5", label=task_name(t)) for t in tasks]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, bottom), ncol=len(handles), fontsize=8,
               frameon=False)
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
    """Annotate points without overlapping each other or the points, as far as candidate offsets allow.

    Greedy: the most significant points first; for each, try offsets at growing distances in eight
    directions and take the first whose text box overlaps nothing placed and stays in the axes
    (else the least overlapping one); distant labels get a thin leader line.
    """
    if not len(xs):
        return []
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    frame = ax.get_window_extent(renderer)
    r = 4.0 * px
    boxes = [(x - r, y - r, x + r, y + r) for x, y in pts]
    sizes = []
    for t in texts:
        probe = ax.text(0, 0, t, fontsize=fontsize)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        sizes.append((bb.width, bb.height))
    placed, out = [], []
    directions = [(1, 0), (-1, 0), (1, 1), (-1, 1), (1, -1), (-1, -1), (0, 1), (0, -1)]
    for i in np.argsort(-np.asarray(ys), kind="stable"):
        (x, y), (w, h) = pts[i], sizes[i]
        best, best_cost = None, np.inf
        for radius in (3, 7, 12, 18, 26, 36, 48, 62):
            for k, (dx, dy) in enumerate(directions):
                ox, oy = dx * radius * px, dy * radius * px
                x0 = x + ox if dx > 0 else x + ox - w if dx < 0 else x - w / 2
                y0 = y + oy if dy > 0 else y + oy - h if dy < 0 else y - h / 2
                box = (x0, y0, x0 + w, y0 + h)
                cost = sum(_overlap(box, b) for b in placed) + sum(_overlap(box, b) for b in boxes)
                cost += w * h - _overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1))  # outside the axes
                cost = round(cost, 1) + radius * 1e-3 + k * 1e-4  # among equals: nearer, then direction order
                if cost < best_cost:
                    best, best_cost = (dx, dy, radius, box), cost
            if best_cost < 1:
                break
        dx, dy, radius, box = best
        placed.append(box)
        ha = "left" if dx > 0 else "right" if dx < 0 else "center"
        va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
        arrow = {"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 0, "shrinkB": 3} if radius > 7 else None
        out.append(ax.annotate(texts[i], (xs[i], ys[i]), xytext=(dx * radius, dy * radius), textcoords="offset points",
                               ha=ha, va=va, fontsize=fontsize, color=_darker(colors[i]) if colors else "0.1",
                               arrowprops=arrow, zorder=4,
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
    fig, axes = plt.subplots(len(test_sets), len(tasks), figsize=(3.6 * len(tasks) + 1.4, 3.0 * len(test_sets) + 0.5),
                             squeeze=False, sharey=True, dpi=DPI)
    for r, ts in enumerate(test_sets):
        for c, task in enumerate(tasks):
            ax = axes[r][c]
            auroc_axis(ax, label="Mean AUROC" if c == 0 else "", headroom=0.08)
            _grouped_bars(ax, names, models, lambda g, m, ts=ts, task=task: by.get((ts, task, m, g)))
            ax.set_xticklabels(names, fontsize=8)
            ax.set_title(f"{task_name(task)} · {test_set_name(ts)}", fontsize=9)
    _model_legend(axes[0][-1], models, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    top = titles(fig, "Mean AUROC by training-frequency group (± sd over seeds)", marks, fig.get_figheight())
    foot = _flag_footnote((f"{task_name(g.task)} {model_name(g.model)} ({test_set_name(g.test_set)})", g.flag)
                           for g in groups)
    note = "Dashed line: chance (0.5)." + ("\nHatched red, ⚠: failed sanity check — " + foot.replace("\n", "; ")
                                          if foot else "")
    fig.tight_layout(rect=(0, footnote(fig, note), 1, top))
    return save(fig, path)


# ------------------------------------------------------------------------------------ grid heat maps
def grid_heatmap_figure(rows: list[list[dict]], path: Path, title: str, marks=(), note: str = "") -> Path:
    """Heat maps across a hyper-parameter grid: one figure row per model, one panel per metric.

    Each panel is a dict: `label` (panel title), `row_key`/`row_values` (None/[None] for a single row),
    `col_key`/`col_values`, `values` (rows × cols, NaN where the grid has no such configuration),
    `selected` ((i, j) of the selected configuration, boxed, or None), `digits`, `cmap`, and
    `better` ('low' or 'high': the colour bar is oriented so that brighter is better). AUROC panels
    keep their colour range within [0, 1].
    """
    from analysis.provenance import SETTING_NAMES, fmt_setting

    ncols = max(len(r) for r in rows)
    cells_w = max(len(p["col_values"]) for r in rows for p in r)
    heights = [0.42 * max(len(r[0]["row_values"]), 1) + 1.25 for r in rows]
    panel_w = max(2.9, 0.62 * cells_w + 1.9)
    fig = plt.figure(figsize=(panel_w * ncols + 0.3, sum(heights) + 0.7), dpi=DPI)
    gs = fig.add_gridspec(len(rows), ncols, height_ratios=heights)
    for r, panels in enumerate(rows):
        for c, p in enumerate(panels):
            ax = fig.add_subplot(gs[r, c])
            vals = np.asarray(p["values"], dtype=float)
            finite = vals[np.isfinite(vals)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
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
    fig.tight_layout(rect=(0, footnote(fig, note), 1, top))
    return save(fig, path)
