"""The report's figures (matplotlib, Agg): the paper's Figs. 4-13 plus a long-tail view.

Every function takes already-computed numbers (see `analysis.summary`) and writes one PNG.
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
VOLCANO_LINTHRESH = 1.0  # % diff: linear within ±1 %, logarithmic beyond (matplotlib "symlog")


def model_name(model: str) -> str:
    base, _, rest = model.partition("-")
    return base.upper() + ("-" + rest if rest else "")


def test_set_name(name: str) -> str:
    return name.upper()


def task_name(task: str) -> str:
    return task.upper()


def _color(model: str, i: int) -> str:
    return COLORS.get(model, plt.get_cmap("tab10")(i % 10))


def save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


def _ylim_for(lows, highs, pad: float = 0.02):
    lows = [v for v in lows if np.isfinite(v)]
    highs = [v for v in highs if np.isfinite(v)]
    if not lows:
        return 0.0, 1.0
    lo = max(0.0, math.floor((min(lows) - 0.05) * 10) / 10)
    return min(lo, 0.5), max(highs) + pad


def _bracket(ax, x0: float, x1: float, y: float, text: str, h: float) -> None:
    ax.plot([x0, x0, x1, x1], [y, y + h, y + h, y], lw=0.8, color="0.2")
    ax.text((x0 + x1) / 2, y + h, text, ha="center", va="bottom", fontsize=8)


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
            ax.bar(x, s.mean if np.isfinite(s.mean) else 0, width, yerr=s.sd if np.isfinite(s.sd) else 0,
                   capsize=3, color=_color(model, models.index(model)), hatch=HATCH.get(model), edgecolor="0.25",
                   linewidth=0.5, error_kw={"lw": 0.8})
    ax.set_xticks(range(len(groups)))
    return xpos


def _model_legend(fig_or_ax, models: list[str], **kw) -> None:
    handles = [matplotlib.patches.Patch(facecolor=_color(m, i), hatch=HATCH.get(m), edgecolor="0.25", lw=0.5,
                                        label=model_name(m)) for i, m in enumerate(models)]
    fig_or_ax.legend(handles=handles, fontsize=8, frameon=False, **kw)


def _span(stats_) -> tuple[list[float], list[float]]:
    sd = [s.sd if np.isfinite(s.sd) else 0.0 for s in stats_]
    return [s.mean - d for s, d in zip(stats_, sd, strict=True)], [s.mean + d for s, d in zip(stats_, sd, strict=True)]


# ------------------------------------------------------------------------------------ Fig. 5
def mean_auroc_figure(stats_: list[ModelStat], comps: list[Comparison], path: Path, tag: str = "") -> Path:
    """Grouped bars: mean AUROC ± sd per task and model, one panel per test set, stars per pair."""
    test_sets = list(dict.fromkeys(s.test_set for s in stats_))
    tasks = list(dict.fromkeys(s.task for s in stats_))
    models = list(dict.fromkeys(s.model for s in stats_))
    by = {(s.test_set, s.task, s.model): s for s in stats_}
    panel_w = 1.6 + 0.4 * len(tasks) * len(models)
    fig, axes = plt.subplots(1, len(test_sets), figsize=(panel_w * len(test_sets) + 1.4, 4.2), squeeze=False,
                             sharey=True, dpi=DPI)
    lo, hi = _ylim_for(*_span(stats_))
    h = (hi - lo) * 0.03
    for ax, ts in zip(axes[0], test_sets, strict=True):
        xpos = _grouped_bars(ax, tasks, models, lambda task, m, ts=ts: by.get((ts, task, m)))
        level: dict[str, float] = {}
        for c in comps:
            if c.a.test_set != ts or (c.a.task, c.a.model) not in xpos or (c.b.task, c.b.model) not in xpos:
                continue
            top = max(v.mean + (v.sd if np.isfinite(v.sd) else 0) for v in (c.a, c.b))
            y = max(top + h, level.get(c.a.task, -np.inf))
            _bracket(ax, xpos[(c.a.task, c.a.model)], xpos[(c.b.task, c.b.model)], y, c.stars, h)
            level[c.a.task] = y + 5 * h
        ax.set_xticklabels([task_name(t) for t in tasks])
        ax.set_ylim(lo, hi + 8 * h)
        ax.set_title(test_set_name(ts))
        ax.grid(axis="y", lw=0.3, alpha=0.6)
        ax.set_axisbelow(True)
    axes[0][0].set_ylabel("Mean AUROC")
    _model_legend(axes[0][-1], models, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"Mean AUROC over seeds (± sd){tag}", fontsize=11)
    fig.text(0.01, 0.01, stats.STAR_LEGEND, fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save(fig, path)


# ------------------------------------------------------------------------------------ Figs. 6-11
def per_label_figure(comps: list[Comparison], path: Path, title: str) -> Path:
    """Per-label mean AUROC ± sd of a pair of models, labels in the given (occurrence) order, stars above."""
    labels = [c.a.label for c in comps]
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * n + 2.0), 4.6), dpi=DPI)
    x = np.arange(n)
    w = 0.38
    for k, (side, off) in enumerate((("a", -w / 2), ("b", w / 2))):
        st = [getattr(c, side) for c in comps]
        model = st[0].model if st else "?"
        ms = [s.mean if np.isfinite(s.mean) else 0 for s in st]
        sds = [s.sd if np.isfinite(s.sd) else 0 for s in st]
        ax.bar(x + off, ms, w, yerr=sds, capsize=2, color=_color(model, k), hatch=HATCH.get(model),
               edgecolor="0.25", linewidth=0.5, label=model_name(model), error_kw={"lw": 0.7})
    tops = [max(v.mean + (v.sd if np.isfinite(v.sd) else 0) for v in (c.a, c.b)) for c in comps]
    lows = [min(v.mean - (v.sd if np.isfinite(v.sd) else 0) for v in (c.a, c.b)) for c in comps]
    lo, hi = _ylim_for(lows, tops)
    h = (hi - lo) * 0.025
    for i, c in enumerate(comps):
        if not (np.isfinite(c.a.mean) and np.isfinite(c.b.mean)):
            ax.text(i, lo + h, "undefined", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
            continue
        ax.text(i, tops[i] + h, c.stars, ha="center", va="bottom", fontsize=8,
                rotation=0 if len(c.stars) <= 3 else 90)
    ax.set_xticks(x, labels, rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(lo, hi + 5 * h)
    ax.set_ylabel("Mean AUROC")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", lw=0.3, alpha=0.6)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.text(0.01, 0.01, "Labels sorted by training occurrence (most frequent first). " + stats.STAR_LEGEND,
             fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save(fig, path)


# ------------------------------------------------------------------------------------ Figs. 12-13
def volcano_figure(points: list[dict], path: Path, title: str) -> Path:
    """−log10 p against the signed % diff (symlog axis), one panel per test set, labels annotated.

    `points`: dicts with label, task, test_set, pct_diff, p.
    """
    test_sets = list(dict.fromkeys(p["test_set"] for p in points))
    tasks = list(dict.fromkeys(p["task"] for p in points))
    labels = list(dict.fromkeys(p["label"] for p in points))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    color = {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}
    marker = {t: TASK_MARKERS[i % len(TASK_MARKERS)] for i, t in enumerate(tasks)}
    ok = [p for p in points if np.isfinite(p["p"]) and np.isfinite(p["pct_diff"])]
    ymax = max([_neglog(p["p"]) for p in ok] + [-math.log10(stats.ALPHA)])
    fig, axes = plt.subplots(1, max(1, len(test_sets)), figsize=(6.2 * max(1, len(test_sets)), 5.2),
                             squeeze=False, dpi=DPI)
    for ax, ts in zip(axes[0], test_sets, strict=False):
        pts = [p for p in ok if p["test_set"] == ts]
        for p in pts:
            ax.scatter(p["pct_diff"], _neglog(p["p"]), s=30, marker=marker[p["task"]], color=color[p["label"]],
                       edgecolor="0.2", linewidth=0.4, zorder=3)
        ax.axhline(-math.log10(stats.ALPHA), ls="--", lw=0.8, color="0.3")
        ax.axvline(0, lw=0.5, color="0.6")
        ax.set_xscale("symlog", linthresh=VOLCANO_LINTHRESH)
        ax.set_xlim(*_volcano_xlim(ax, [p["pct_diff"] for p in ok]))
        ax.set_ylim(0, ymax * 1.2 + 0.1)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.set_xlabel("% diff. AUROC, 2(CDL − DQC)/(CDL + DQC)  [symlog: linear within ±1%]", fontsize=8)
        ax.set_ylabel("−log10 p (paired t-test over seeds)", fontsize=8)
        ax.set_title(test_set_name(ts), fontsize=10)
        ax.text(0.99, 0.01, "CDL better →", transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                color="0.4")
        ax.text(0.01, 0.01, "← DQC better", transform=ax.transAxes, ha="left", va="bottom", fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    for ax, ts in zip(axes[0], test_sets, strict=False):  # after the layout is fixed: placement is in pixels
        pts = [p for p in ok if p["test_set"] == ts]
        place_labels(ax, [p["pct_diff"] for p in pts], [_neglog(p["p"]) for p in pts],
                     [p["label"] for p in pts], [color[p["label"]] for p in pts])
    handles = [plt.Line2D([], [], marker=marker[t], ls="", color="0.5", label=task_name(t)) for t in tasks]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.025), ncol=len(handles), fontsize=8,
               frameon=False)
    skipped = [f"{p['label']} ({task_name(p['task'])}, {test_set_name(p['test_set'])})" for p in points if p not in ok]
    if skipped:
        more = f" and {len(skipped) - 4} more" if len(skipped) > 4 else ""
        fig.text(0.01, 0.005, "Not shown (no p-value: undefined AUROC or < 2 seed pairs): " + "; ".join(skipped[:4])
                 + more, fontsize=7, color="0.3")
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def _volcano_xlim(ax, xs) -> tuple[float, float]:
    """x limits around the points and 0, padded in the scaled (symlog) space for the labels."""
    tr = ax.xaxis.get_transform()
    t = tr.transform(np.asarray(list(xs) + [0.0], dtype=float))
    lo, hi = float(t.min()), float(t.max())
    pad = max(hi - lo, 1.0) * 0.3
    return tuple(float(v) for v in tr.inverted().transform(np.array([lo - pad, hi + pad])))


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
def loss_figure(curves: dict[str, dict[str, dict[str, tuple]]], path: Path, tag: str = "") -> Path:
    """Train and validation loss per epoch, mean ± sd over seeds; one row per task.

    `curves[task][model][key]` = (epochs, mean, sd, n) with key in train_loss, val_loss.
    """
    tasks = list(curves)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 2.9 * len(tasks) + 0.6), squeeze=False, dpi=DPI)
    for row, task in zip(axes, tasks, strict=True):
        for ax, key, what in zip(row, ("train_loss", "val_loss"), ("Training", "Validation"), strict=True):
            for i, (model, by_key) in enumerate(curves[task].items()):
                epochs, mean, sd, n = by_key[key]
                if not len(epochs) or not np.isfinite(mean).any():
                    continue
                c = _color(model, i)
                ax.plot(epochs, mean, color=c, lw=1.4, label=model_name(model),
                        ls="--" if "finetune" in model else "-")
                band = np.where(n > 1, sd, 0.0)
                ax.fill_between(epochs, mean - band, mean + band, color=c, alpha=0.2, lw=0)
            ax.set_title(f"{task_name(task)}: {what.lower()} loss", fontsize=10)
            ax.set_xlabel("Epoch", fontsize=8)
            ax.set_ylabel("Mean BCE", fontsize=8)
            ax.grid(lw=0.3, alpha=0.6)
            ax.tick_params(labelsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
        row[1].legend(fontsize=8, frameon=False)
    fig.suptitle(f"Training and validation loss, mean ± sd over seeds{tag}", fontsize=11)
    fig.text(0.01, 0.005, "After early stopping, a curve averages the seeds still training.", fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return save(fig, path)


# ------------------------------------------------------------------------------------ long tail
def long_tail_figure(groups: list[GroupStat], path: Path, tag: str = "") -> Path:
    """Mean AUROC of head / medium / tail labels: one panel per test set × task, bars per model."""
    test_sets = list(dict.fromkeys(g.test_set for g in groups))
    tasks = list(dict.fromkeys(g.task for g in groups))
    models = list(dict.fromkeys(g.model for g in groups))
    names = list(dict.fromkeys(g.group for g in groups))
    by = {(g.test_set, g.task, g.model, g.group): g for g in groups}
    lo, hi = _ylim_for(*_span(groups))
    fig, axes = plt.subplots(len(test_sets), len(tasks), figsize=(3.6 * len(tasks) + 1.4, 3.0 * len(test_sets) + 0.5),
                             squeeze=False, sharey=True, dpi=DPI)
    for r, ts in enumerate(test_sets):
        for c, task in enumerate(tasks):
            ax = axes[r][c]
            _grouped_bars(ax, names, models, lambda g, m, ts=ts, task=task: by.get((ts, task, m, g)))
            ax.set_xticklabels(names, fontsize=8)
            ax.set_ylim(lo, hi + 0.02)
            ax.set_title(f"{task_name(task)} · {test_set_name(ts)}", fontsize=9)
            ax.grid(axis="y", lw=0.3, alpha=0.6)
            ax.set_axisbelow(True)
            if c == 0:
                ax.set_ylabel("Mean AUROC", fontsize=8)
    _model_legend(axes[0][-1], models, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"Mean AUROC by training-frequency group (± sd over seeds){tag}", fontsize=11)
    fig.tight_layout()
    return save(fig, path)
