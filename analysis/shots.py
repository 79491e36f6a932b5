"""Measurement shots and effective width of a sweep's DQCs, for the report (files of `heads shots`).

`heads shots` writes `shots.json` and `width.json` into DQC run folders (see `heads.shots`). These
functions collect them under a sweep folder:

- `shots_table(sweep_dir)` — one row per (task, configuration, test set, sampling, readout error,
  shot count): AUROC mean ± sd over all draws of all seeds (seeds × repeats pooled), the shot
  noise alone (mean over seeds of the sd over repeats), mean AUPRC, and the exact AUROC (mean ± sd
  over the same seeds).
- `shots_figure(rows, path)` — AUROC against shots (log x), one panel per test set, one line per
  task, the exact AUROC as a dashed line of the same colour; `marks` as on every report figure.
- `width_table(sweep_dir)` — one row per (task, configuration, test set, threshold): qubits, how
  many qubits carry signal (sd of the exact ⟨Z_k⟩ over the test set above the threshold) per seed
  and on average, and the per-qubit sd averaged over seeds.
- `width_figure(rows, path)` — the per-qubit sd against the qubit index (log y), the threshold dashed.

`configuration` is the grid configuration's folder (empty for a single-configuration sweep), so grid
members never mix. The runs are the sweep's (`heads.runs.iter_runs`), in either layout.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path

from cxrfeat.errors import UserError
from cxrfeat.labels import task_sort_key
from heads import runs

SHOTS_FILE = "shots.json"
WIDTH_FILE = "width.json"
WIDTH_FLOOR = 1e-6  # the lowest sd a width figure draws (a constant qubit has sd 0)


def _documents(sweep_dir: str | Path, name: str) -> Iterator[tuple[runs.Run, dict]]:
    """(run, parsed `name`) for every run of the sweep that has the file."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: no such sweep folder")
    for run in runs.iter_runs(sweep_dir):
        f = run.path / name
        if not f.is_file():
            continue
        try:
            yield run, json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{f}: unreadable ({e}); re-run `heads shots {f.parent}`") from None


def _task(doc: dict) -> str | None:
    """The task's name ('cxr-8'); older files recorded the label count (8)."""
    t = doc.get("run", {}).get("task")
    if t is None:
        return None
    return f"cxr-{t}" if isinstance(t, int) or str(t).isdigit() else str(t)


def _group_order(item: tuple[tuple, dict]) -> tuple:
    """Rows by task (`cxrfeat.labels.task_sort_key`; unknown tasks first), then the rest of their key."""
    task, *rest = item[0]
    return ((-1, "") if task is None else task_sort_key(task), *rest)


def _mean(values: Sequence[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


def _sd(values: Sequence[float]) -> float | None:
    return float(statistics.stdev(values)) if len(values) > 1 else None


def shots_table(sweep_dir: str | Path) -> list[dict]:
    """Rows of AUROC against shots over the sweep's DQC runs (module doc); [] when none has shots.json."""
    sweep_dir = Path(sweep_dir)
    groups: dict[tuple, dict] = {}
    for run, doc in _documents(sweep_dir, SHOTS_FILE):
        settings = doc.get("settings", {})
        seed = doc.get("run", {}).get("seed")
        for test_set, entry in doc.get("test_sets", {}).items():
            for cell in entry.get("shots", []):
                key = (_task(doc), run.config_name, test_set, settings.get("sampling", "marginal"),
                       float(settings.get("readout_error", 0.0)), int(cell["shots"]))
                g = groups.setdefault(key, {"draws": [], "auprc": [], "shot_sd": [], "exact": [], "exact_auprc": [],
                                            "seeds": [], "task_name": doc.get("run", {}).get("task_name")})
                draws = [v for v in cell.get("auroc", []) if v is not None]
                g["draws"].extend(draws)
                g["auprc"].extend(v for v in cell.get("auprc", []) if v is not None)
                if len(draws) > 1:
                    g["shot_sd"].append(statistics.stdev(draws))
                exact = entry.get("exact", {})
                if exact.get("mean_auroc") is not None:
                    g["exact"].append(exact["mean_auroc"])
                if exact.get("mean_auprc") is not None:
                    g["exact_auprc"].append(exact["mean_auprc"])
                g["seeds"].append(seed)
    rows = []
    for (task, config, test_set, sampling, readout, shots), g in sorted(groups.items(), key=_group_order):
        rows.append({
            "task": task, "task_name": g["task_name"] or (f"cxr-{task}" if task is not None else None),
            "configuration": config, "test_set": test_set, "sampling": sampling, "readout_error": readout,
            "shots": shots, "seeds": len(g["seeds"]), "draws": len(g["draws"]),
            "auroc_mean": _mean(g["draws"]), "auroc_sd": _sd(g["draws"]),
            "shot_sd": _mean(g["shot_sd"]), "auprc_mean": _mean(g["auprc"]),
            "exact_auroc": _mean(g["exact"]), "exact_auroc_sd": _sd(g["exact"]),
            "exact_auprc": _mean(g["exact_auprc"]),
        })
    return rows


def shots_figure(rows: Sequence[dict], path: str | Path, *, title: str | None = None, marks=()) -> Path | None:
    """AUROC against shots (log x) per test set and task, exact AUROC dashed; None when no rows."""
    if not rows:
        return None
    from analysis.figures import plt, save, titles

    test_sets = list(dict.fromkeys(r["test_set"] for r in rows))
    fig, axes = plt.subplots(1, len(test_sets), figsize=(5.2 * len(test_sets), 4.3), squeeze=False, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines = list(dict.fromkeys((r["task"], r["configuration"], r["sampling"], r["readout_error"]) for r in rows))
    for ax, test_set in zip(axes[0], test_sets, strict=True):
        for i, line in enumerate(lines):
            pts = sorted((r for r in rows if r["test_set"] == test_set
                          and (r["task"], r["configuration"], r["sampling"], r["readout_error"]) == line
                          and r["auroc_mean"] is not None), key=lambda r: r["shots"])
            if not pts:
                continue
            task, config, sampling, readout = line
            label = str(task).upper() + (f" {config}" if config else "")
            if len({ln[2:] for ln in lines}) > 1:
                label += f" ({sampling}, p={readout:g})"
            colour = colours[i % len(colours)]
            ax.errorbar([r["shots"] for r in pts], [r["auroc_mean"] for r in pts],
                        yerr=[r["auroc_sd"] or 0.0 for r in pts], marker="o", capsize=3, color=colour, label=label)
            exact = pts[0]["exact_auroc"]
            if exact is not None:
                ax.axhline(exact, linestyle="--", color=colour, linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("shots per example")
        ax.set_title(test_set, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("mean AUROC ± sd over draws (dashed: exact ⟨Z⟩)", fontsize=8)
    axes[0][-1].legend(fontsize="small")
    top = titles(fig, title, marks, fig.get_figheight())
    fig.tight_layout(rect=(0, 0, 1, top))
    return save(fig, Path(path))  # the watermark, then an atomic write


def width_table(sweep_dir: str | Path) -> list[dict]:
    """Rows of effective width over the sweep's DQC runs (module doc); [] when none has width.json."""
    sweep_dir = Path(sweep_dir)
    groups: dict[tuple, dict] = {}
    for run, doc in _documents(sweep_dir, WIDTH_FILE):
        for test_set, w in doc.get("test_sets", {}).items():
            key = (_task(doc), run.config_name, test_set, float(w["threshold"]))
            g = groups.setdefault(key, {"above": [], "sd": [], "seeds": [], "qubits": w["qubits"],
                                        "task_name": doc.get("run", {}).get("task_name")})
            g["above"].append(int(w["above"]))
            g["sd"].append(w["sd"])
            g["seeds"].append(doc.get("run", {}).get("seed"))
    rows = []
    for (task, config, test_set, threshold), g in sorted(groups.items(), key=_group_order):
        n = g["qubits"]
        rows.append({
            "task": task, "task_name": g["task_name"], "configuration": config, "test_set": test_set,
            "threshold": threshold, "qubits": n, "seeds": g["seeds"],
            "above_mean": _mean(g["above"]), "above_per_seed": g["above"],
            "sd_per_qubit": [statistics.fmean(sd[k] for sd in g["sd"]) for k in range(n)],
        })
    return rows


def width_figure(rows: Sequence[dict], path: str | Path, *, title: str | None = None, marks=()) -> Path | None:
    """sd over the test set of each exact ⟨Z_k⟩ against the qubit index k (log y), per test set; None when no rows.

    One line per (task, configuration), averaged over seeds; each threshold of the rows dashed. An sd
    below `WIDTH_FLOOR` (a constant qubit) is drawn at the floor, which the axis label states.
    """
    if not rows:
        return None
    from analysis.figures import plt, save, titles

    test_sets = list(dict.fromkeys(r["test_set"] for r in rows))
    fig, axes = plt.subplots(1, len(test_sets), figsize=(5.2 * len(test_sets), 4.0), squeeze=False, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines = list(dict.fromkeys((r["task"], r["configuration"]) for r in rows))
    widest = max(r["qubits"] for r in rows)
    for ax, test_set in zip(axes[0], test_sets, strict=True):
        for i, line in enumerate(lines):
            row = next((r for r in rows if r["test_set"] == test_set and (r["task"], r["configuration"]) == line), None)
            if row is None:
                continue
            task, config = line
            sd = [max(v, WIDTH_FLOOR) for v in row["sd_per_qubit"]]
            ax.plot(range(len(sd)), sd, marker="o", ms=3.5, color=colours[i % len(colours)],
                    label=str(task).upper() + (f" {config}" if config else "") + f" ({row['above_mean']:g}/{row['qubits']})")
        for t in sorted({r["threshold"] for r in rows if r["test_set"] == test_set}):
            ax.axhline(max(t, WIDTH_FLOOR), ls="--", lw=0.9, color="0.3")
            ax.text(widest - 1, max(t, WIDTH_FLOOR), f" threshold {t:g}", va="bottom", ha="right", fontsize=7, color="0.3")
        ax.set_yscale("log")
        ax.set_xlabel("qubit k (⟨Z_k⟩ after the last ring: parity of k+1 bits)", fontsize=8)
        ax.set_xticks(range(0, widest, max(1, widest // 10)))
        ax.set_title(test_set, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", title="task (qubits above)", title_fontsize="small")
    axes[0][0].set_ylabel(f"sd of ⟨Z_k⟩ over the test set (floor {WIDTH_FLOOR:g})", fontsize=8)
    top = titles(fig, title, marks, fig.get_figheight())
    fig.tight_layout(rect=(0, 0, 1, top))
    return save(fig, Path(path))  # the watermark, then an atomic write
