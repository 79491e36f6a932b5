"""A sweep's DQCs under device noise, for the report (files of `heads noise`).

`heads noise` writes `noise.json` into DQC run folders (`heads.noise_eval`). These functions collect
them under a sweep folder (`heads.runs.iter_runs`, either layout):

- `noise_table(sweep_dir)` — one row per (task, configuration, test set, noise model, scale): DQC
  mean AUROC ± sd over seeds, the seeds' noiseless AUROC, the method, trajectories and mean standard
  error of the trajectory estimate, and the CDL's noiseless AUROC of the same task and test set (mean
  over the sweep's finished CDL seeds; the linear head has no quantum part, so noise does not touch it).
- `break_even(rows)` — per (task, configuration, test set, model): the smallest error scale at which
  the DQC's mean AUROC is 0.01 below its noiseless value, and the smallest at which it falls below
  the CDL; linear interpolation in log(scale) between the measured scales, "> largest" when it never
  happens there.
- `noise_figure(rows, path)` — AUROC against scale (log x; the noiseless value dash-dotted, the CDL dotted),
  one panel per test set, one line per task.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from cxrfeat.errors import UserError
from cxrfeat.labels import task_sort_key
from heads import runs

NOISE_FILE = "noise.json"
DROP = 0.01  # the AUROC loss that `break_even` reports


def _mean(values):
    values = [v for v in values if v is not None]
    return float(statistics.fmean(values)) if values else None


def _sd(values):
    values = [v for v in values if v is not None]
    return float(statistics.stdev(values)) if len(values) > 1 else None


def _cdl_reference(sweep_dir: Path) -> dict[tuple[str, str], float]:
    """(task, test set) -> mean noiseless AUROC of the sweep's finished CDL runs."""
    values: dict[tuple[str, str], list[float]] = {}
    for run in runs.iter_runs(sweep_dir):
        if run.model != "cdl" or not run.done:
            continue
        try:
            results = run.results()
        except UserError:
            continue  # a damaged run: the report's own sections name it
        for test_set, entry in results.test_sets.items():
            if entry.get("mean_auroc") is not None:
                values.setdefault((run.task, test_set), []).append(entry["mean_auroc"])
    return {k: statistics.fmean(v) for k, v in values.items()}


def _training(run) -> tuple[str, tuple]:
    """How a DQC run was trained ("ideal", or "<model> ×<scale>, K traj." under `heads sweep --noise`) and
    its configuration's other settings (the grid point without the noise axes)."""
    try:
        config = run.config()
    except UserError:
        return "?", ()
    s = config.settings
    rest = tuple(sorted((k, repr(v)) for k, v in config.point.items() if k not in ("noise_scale", "trajectories")))
    if not s.noise or not s.noise_scale:
        return "ideal", rest
    return f"{s.noise} ×{s.noise_scale:g}, {s.trajectories} traj.", rest


def noise_table(sweep_dir: str | Path) -> list[dict]:
    """Rows of AUROC against noise scale over the sweep's DQC runs (module doc); [] without noise.json."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: no such sweep folder")
    groups: dict[tuple, dict] = {}
    for run in runs.iter_runs(sweep_dir):
        f = run.path / NOISE_FILE
        if run.model != "dqc" or not f.is_file():
            continue
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{f}: unreadable ({e}); re-run `heads noise {f.parent} --noise ...`") from None
        model = doc.get("settings", {}).get("model", {})
        trained, rest = _training(run)
        for test_set, entry in doc.get("test_sets", {}).items():
            for cell in entry.get("scales", []):
                key = (run.task, run.config_name, test_set, model.get("name", "?"), float(cell["scale"]))
                g = groups.setdefault(key, {"auroc": [], "exact": [], "seeds": [], "se": [], "methods": set(),
                                            "trajectories": set(), "source": model.get("source", ""),
                                            "trained": trained, "rest": rest})
                g["auroc"].append(cell.get("auroc_mean"))
                g["exact"].append(entry.get("exact", {}).get("mean_auroc"))
                g["seeds"].append(run.seed)
                g["se"].append(cell.get("z_stderr_mean"))
                g["methods"].add(cell.get("method", "?"))
                if cell.get("trajectories"):
                    g["trajectories"].add(int(cell["trajectories"]))
    if not groups:
        return []
    cdl = _cdl_reference(sweep_dir)
    rows = []
    for (task, config, test_set, name, scale), g in sorted(
            groups.items(), key=lambda kv: (task_sort_key(kv[0][0]), kv[0][1], kv[0][2], kv[0][3], kv[0][4])):
        rows.append({"task": task, "configuration": config, "trained": g["trained"], "settings": g["rest"],
                     "test_set": test_set, "model": name,
                     "source": g["source"], "scale": scale, "seeds": len(g["seeds"]),
                     "auroc_mean": _mean(g["auroc"]), "auroc_sd": _sd(g["auroc"]), "exact_auroc": _mean(g["exact"]),
                     "method": "+".join(sorted(g["methods"])),
                     "trajectories": max(g["trajectories"]) if g["trajectories"] else None,
                     "z_stderr_mean": _mean(g["se"]), "cdl_auroc": cdl.get((task, test_set))})
    return rows


def _crossing(points: list[tuple[float, float]], level: float) -> float | None:
    """The first scale > 0 where the curve (scale, AUROC), sorted by scale, goes below `level`:
    interpolated linearly in log(scale) between the two measured scales around it."""
    prev = None
    for scale, auroc in points:
        if auroc < level:
            if prev is None or prev[0] <= 0:
                return scale
            (s0, a0), (s1, a1) = prev, (scale, auroc)
            frac = (a0 - level) / (a0 - a1) if a0 != a1 else 1.0
            return float(math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0))))
        prev = (scale, auroc)
    return None


def break_even(rows: Sequence[dict]) -> list[dict]:
    """Per (task, configuration, test set, model): the scales of a 0.01 AUROC loss and of falling below
    the CDL (module doc); None where the curve stays above up to the largest scale measured."""
    out = []
    keys = list(dict.fromkeys((r["task"], r["configuration"], r["test_set"], r["model"]) for r in rows))
    for key in keys:
        pts = sorted((r["scale"], r["auroc_mean"]) for r in rows
                     if (r["task"], r["configuration"], r["test_set"], r["model"]) == key and r["auroc_mean"] is not None)
        first = next(r for r in rows if (r["task"], r["configuration"], r["test_set"], r["model"]) == key)
        noiseless = first["exact_auroc"]
        cdl = first["cdl_auroc"]
        positive = [p for p in pts if p[0] > 0]
        out.append({"task": key[0], "configuration": key[1], "trained": first.get("trained"), "test_set": key[2],
                    "model": key[3],
                    "noiseless_auroc": noiseless, "cdl_auroc": cdl, "largest_scale": max((p[0] for p in pts), default=None),
                    "drop_scale": _crossing(positive, noiseless - DROP) if noiseless is not None else None,
                    "below_cdl_scale": (0.0 if noiseless is not None and cdl is not None and noiseless < cdl
                                        else _crossing(positive, cdl) if cdl is not None else None)})
    return out


NOISELESS_LS = "-."  # the noiseless value's horizontal line (dashed lines are heads trained under noise)


def noise_figure(rows: Sequence[dict], path: str | Path, *, title: str | None = None, marks=()) -> Path | None:
    """AUROC against error scale (log x) per test set and task; noiseless dash-dotted, CDL dotted, both
    named in the legend; None when no rows."""
    rows = [r for r in rows if r["scale"] > 0 and r["auroc_mean"] is not None]
    if not rows:
        return None
    from analysis.figures import plt, save, titles

    test_sets = list(dict.fromkeys(r["test_set"] for r in rows))
    fig, axes = plt.subplots(1, len(test_sets), figsize=(5.2 * len(test_sets), 4.6), squeeze=False, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines = list(dict.fromkeys((r["task"], r["configuration"], r["model"]) for r in rows))
    tasks = list(dict.fromkeys(ln[0] for ln in lines))
    several_models = len({ln[2] for ln in lines}) > 1
    legend_rank: dict[str, int] = {}  # label -> its line's index: the legend's order
    for ax, test_set in zip(axes[0], test_sets, strict=True):
        drawn_cdl = set()
        for i, line in enumerate(lines):
            pts = sorted((r for r in rows if r["test_set"] == test_set
                          and (r["task"], r["configuration"], r["model"]) == line), key=lambda r: r["scale"])
            if not pts:
                continue
            task, config, model = line
            colour = colours[tasks.index(task) % len(colours)]  # one colour per task
            trained = pts[0].get("trained")
            noisy = trained not in (None, "?", "ideal")  # trained under noise: open squares
            label = (str(task).upper() + (f", trained {trained}" if trained and trained != "?" else f" {config}" if config else "")
                     + (f" ({model})" if several_models else ""))
            legend_rank.setdefault(label, i)
            dodge = 1.06 ** (i - (len(lines) - 1) / 2)  # side by side, so the seeds' error bars stay readable
            ax.errorbar([r["scale"] * dodge for r in pts], [r["auroc_mean"] for r in pts],
                        yerr=[r["auroc_sd"] or 0.0 for r in pts], marker="s" if noisy else "o", capsize=3, color=colour,
                        mfc="white" if noisy else colour, ls="-" if not noisy else (0, (6, 2)), label=label)
            if pts[0]["exact_auroc"] is not None and not noisy:
                ax.axhline(pts[0]["exact_auroc"], ls=NOISELESS_LS, lw=1, color=colour)
            if pts[0]["cdl_auroc"] is not None and task not in drawn_cdl:
                drawn_cdl.add(task)
                ax.axhline(pts[0]["cdl_auroc"], ls=":", lw=1.2, color=colour)
        ax.set_xscale("log")
        scales = sorted({r["scale"] for r in rows})
        ax.set_xticks(scales, [f"{v:g}" for v in scales])
        ax.minorticks_off()
        ax.set_xlabel("error scale (× the model's error rates; 1 = as published)")
        ax.set_title(test_set, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("DQC mean AUROC ± sd over seeds", fontsize=8)
    # one entry per line over every panel (a line may be drawn in a later panel only), in the lines' order
    drawn: dict[str, object] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            drawn.setdefault(label, handle)
    labels = sorted(drawn, key=legend_rank.__getitem__)
    handles = [drawn[lab] for lab in labels]
    # the horizontal references, in grey (their colour is the task's): one style each, named once
    from matplotlib.lines import Line2D

    refs = [(NOISELESS_LS, "noiseless circuit (scale 0), ideal-trained DQC"), (":", "CDL")]
    for ls, text in refs:
        if any(line.get_linestyle() == Line2D([], [], ls=ls).get_linestyle() and len(set(line.get_ydata())) == 1
               for ax in axes[0] for line in ax.get_lines()):
            handles.append(Line2D([], [], ls=ls, lw=1.2, color="0.35"))
            labels.append(text)
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize="small", frameon=False)
    rows_of_legend = -(-len(labels) // 3)
    fig.tight_layout(rect=(0, 0.06 + 0.05 * rows_of_legend, 1, titles(fig, title, marks, fig.get_figheight())))
    return save(fig, Path(path))
