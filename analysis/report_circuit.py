"""The report's section on the DQC circuit: its drawing per width and depth, and its routing cost.

- One drawing (`analysis.circuit`, the paper's Fig. 2) per distinct (task labels, layers) among the
  DQC runs the report shows — n qubits = the task's labels, layers from each run's settings — with
  the post layer's outputs named in the task's label order and a line of provenance.
- The routing table (two-qubit gates and depth per device layout and width, `heads.routing`) from
  `routing.json` files: those of `heads export` folders of the sweep's runs found under `exports/`
  (the default) or the folders and files given with `analysis report --routing PATH` — an export
  folder, a folder of export folders, a `heads routing --out` folder, or a `routing.json`. Exports
  found by the scan of runs the report does not show (another sweep's, or left out by --tasks or
  --models) are counted, not shown; a named export folder is shown whoever's run it is. A named path that is missing or holds no readable routing file is a one-line
  error; a damaged export met by the scan is left out and named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from analysis import tables as T
from analysis.circuit import circuit_figure
from analysis.collect import ReportRun, Sweep, _shown
from analysis.document import Document
from cxrfeat.errors import UserError

DEFAULT_EXPORTS = Path("exports")
MANIFEST, ROUTING = "manifest.json", "routing.json"  # the names heads.export_run writes


# ------------------------------------------------------------------------------------ drawings
def _seeds(seeds: list[int]) -> str:
    seeds = sorted(set(seeds))
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def circuit_groups(sweep: Sweep) -> tuple[dict[tuple[tuple[str, ...], int], list[ReportRun]], list[str]]:
    """(labels, layers) -> the DQC runs drawn by that figure, and notes on DQC runs whose depth is unknown."""
    groups: dict[tuple[tuple[str, ...], int], list[ReportRun]] = {}
    unknown = []
    for task in sweep.tasks:
        labels = tuple(sweep.label_names(task))
        for model in sweep.models(task):
            if not model.startswith("dqc"):
                continue
            for run in sorted(sweep.runs_of(task, model).values(), key=lambda r: r.seed):
                layers = sweep.settings(run).get("layers")
                if isinstance(layers, int) and layers >= 1 and len(labels) >= 2:
                    groups.setdefault((labels, layers), []).append(run)
                else:
                    unknown.append(f"{task}/{model} seed {run.seed}")
    notes = [f"Not drawn (the run records no circuit depth): {', '.join(unknown)}."] if unknown else []
    return groups, notes


def _dim(run: ReportRun, n: int) -> int | None:
    """The embedding size the pre layer reads: from the recorded parameter count D·n + n."""
    pc = run.record.param_counts or {}
    cp = pc.get("classical_preprocess")
    return cp // n - 1 if isinstance(cp, int) and cp > n and cp % n == 0 else None


def _caption(sweep: Sweep, runs: list[ReportRun]) -> str:
    by_row: dict[str, list[int]] = {}
    for r in runs:
        by_row.setdefault(f"{r.task}/{r.model}" + (f"/{r.config_name}" if r.config_name else ""), []).append(r.seed)
    where = "; ".join(f"{row} {_seeds(s)}" for row, s in by_row.items())
    data = sorted({f"{d.dataset or 'unknown data'}" + (" (SYNTHETIC)" if d.synthetic else "")
                   for d in (sweep.data(r) for r in runs)})
    bbs = []
    for b in (sweep.backbone(r) for r in runs):
        text = "RANDOM-weight backbone" if b.random else f"backbone {b.name}" + (f"@{b.revision[:8]}" if b.revision else "")
        bbs.append(text)
    norms = sorted({str(sweep.settings(r).get("feature_norm") or "none") for r in runs})
    return (f"Sweep {sweep.name}: {where} · data {', '.join(data)} · {', '.join(dict.fromkeys(bbs))} · "
            f"feature norm {', '.join(norms)} · gates and names as heads export writes them")


def draw_circuits(doc: Document) -> list[str]:
    """One circuit figure per distinct (labels, layers) of the report's DQC runs; returns notes."""
    sweep = doc.sweep
    groups, notes = circuit_groups(sweep)
    used: set[str] = set()
    for (labels, layers), runs in sorted(groups.items(), key=lambda kv: (len(kv[0][0]), kv[0][1])):
        n, task = len(labels), runs[0].task
        stem = f"circuit_{n}q_{layers}l"
        if stem in used:  # another task of the same width, other labels
            stem = f"circuit_{task}_{layers}l"
        used.add(stem)
        tasks = ", ".join(dict.fromkeys(r.task.upper() for r in runs))
        title = f"DQC circuit of {tasks}: {n} qubits, {layers} layer{'s' if layers > 1 else ''} (paper Fig. 2)"
        norm = any(sweep.settings(r).get("feature_norm") == "standardize" for r in runs)
        path = circuit_figure(list(labels), layers, doc.fig_path(f"{stem}.png"), title=title,
                              caption=_caption(sweep, runs), marks=doc.marks, dim=_dim(runs[0], n), feature_norm=norm)
        doc.add(f"### {title}\n")
        doc.figure(path, title)
    return notes


# ------------------------------------------------------------------------------------ routing files
@dataclass
class RoutingSource:
    """One routing.json: its document, where it was read, and what it describes."""

    doc: dict
    path: Path
    about: str  # 'export of cxr-8/dqc seed 1' or '`heads routing`'
    export: dict | None = None  # the export's manifest
    in_sweep: bool = True  # an export of one of the sweep's runs (a `heads routing` table: always shown)


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: not a JSON object")
    return doc


def _routing(path: Path) -> dict:
    doc = _read_json(path)
    rows = doc.get("rows")
    if not isinstance(doc.get("transpiler"), dict) or not isinstance(rows, list) or not all(
            isinstance(r, dict) and {"qubits", "layers", "layout", "two_qubit_gates", "depth"} <= r.keys() for r in rows):
        raise UserError(f"{path}: not a routing table (written by `heads routing --out` or `heads export`)")
    return doc


def _run_of(manifest: dict, sweep: Sweep) -> ReportRun | None:
    """The sweep's run an export was made from: the same folder, else the same record (a copied runs folder)."""
    run = manifest.get("run") if isinstance(manifest.get("run"), dict) else {}
    for r in sweep.runs:
        if run.get("path") and Path(run["path"]) == r.path.resolve():
            return r
    for r in sweep.runs:
        if run.get("config") == r.record.to_json():
            return r
    return None


def _export(folder: Path, sweep: Sweep) -> RoutingSource:
    """An export folder's routing table (UserError when it is damaged or has none)."""
    manifest = _read_json(folder / MANIFEST)
    if manifest.get("kind") != "heads export":
        raise UserError(f"{folder / MANIFEST}: not a `heads export` manifest")
    if not (folder / ROUTING).is_file():
        raise UserError(f"{folder}: this export has no {ROUTING} (exported with --layouts ''); export again with --layouts")
    r = _run_of(manifest, sweep)
    if r is not None:
        about = f"export of {r.task}/{r.model}" + (f"/{r.config_name}" if r.config_name else "") + f" seed {r.seed}"
    else:
        config = (manifest.get("run") or {}).get("config") or {}
        about = f"export of a run this report does not show ({config.get('task_name') or config.get('task', '?')})"
    return RoutingSource(_routing(folder / ROUTING), folder, about, manifest, r is not None)


def find_routing(sweep: Sweep, paths: list[Path] | None) -> tuple[list[RoutingSource], list[str]]:
    """The routing tables the report shows (module docstring), and notes on what the scan left out."""
    sources: list[RoutingSource] = []
    notes: list[str] = []
    named = paths is not None and len(paths) > 0
    for given in (paths if named else [DEFAULT_EXPORTS]):
        p = Path(given)
        if not p.exists():
            if named:
                raise UserError(f"--routing {p}: no such file or folder")
            continue
        if p.is_file():
            sources.append(RoutingSource(_routing(p), p, "`heads routing`"))
        elif (p / MANIFEST).is_file():
            sources.append(_export(p, sweep))
        elif (p / ROUTING).is_file():
            sources.append(RoutingSource(_routing(p / ROUTING), p / ROUTING, "`heads routing`"))
        else:  # a folder of export folders
            found, others = 0, 0
            for sub in sorted(d for d in p.iterdir() if d.is_dir() and (d / MANIFEST).is_file()):
                try:
                    src = _export(sub, sweep)
                except UserError as e:
                    notes.append(f"Left out: {e}")
                    continue
                if src.in_sweep:
                    sources.append(src)
                    found += 1
                else:
                    others += 1
            if others:
                notes.append(f"`{_shown(p)}` holds {others} export(s) of runs this report does not show (left out).")
            if named and not found and not others:
                raise UserError(f"--routing {p}: holds no {ROUTING}, export folder or folder of exports")
    return sources, notes


def routing_table(sources: list[RoutingSource]) -> T.Table:
    """One row per (width, layers, layout, transpiler settings) across the sources (identical rows merged)."""
    merged: dict[tuple, dict] = {}
    for src in sources:
        t = src.doc["transpiler"]
        setting = (src.doc.get("qiskit_version"), t.get("optimization_level"), t.get("seed_transpiler"),
                   tuple(t.get("basis_gates") or ()))
        p2 = (src.doc.get("noise") or {}).get("p2")
        model = (src.doc.get("noise") or {}).get("model")
        for r in src.doc["rows"]:
            key = (r["qubits"], r["layers"], r["layout"], setting, r["two_qubit_gates"], r["depth"], model)
            row = merged.setdefault(key, {"row": r, "setting": setting, "model": model, "p2": p2, "from": []})
            row["from"].append(f"{src.about} (`{_shown(src.path)}`)")
    order = {"all-to-all": 0, "line": 1, "grid": 2, "heavy-hex": 3}
    display, raw = [], []
    for key in sorted(merged, key=lambda k: (k[0], k[1], order.get(k[2], 9), k[2], repr(k[3]))):
        m = merged[key]
        r, (qiskit, level, seed, _) = m["row"], m["setting"]
        p = r.get("p_no_two_qubit_error")
        display.append([str(r["qubits"]), str(r["layers"]), r["layout"], str(r.get("device", "")),
                        str(r["two_qubit_gates"]), str(r.get("added_two_qubit_gates", "–")), str(r["depth"]),
                        str(r.get("two_qubit_depth", "–")), "–" if p is None else f"{p:.3f}",
                        f"Qiskit {qiskit}, level {level}, seed {seed}", "; ".join(dict.fromkeys(m["from"]))])
        raw.append([r["qubits"], r["layers"], r["layout"], r.get("device"), r["two_qubit_gates"],
                    r.get("added_two_qubit_gates"), r["depth"], r.get("two_qubit_depth"), p, m["model"], m["p2"],
                    qiskit, level, seed, "; ".join(dict.fromkeys(m["from"]))])
    levels = sorted({str(m["setting"][1]) for m in merged.values()})
    models = sorted({f"{m['model']} (p2 = {m['p2']})" for m in merged.values() if m["model"]})
    return T.Table(
        "routing", "Routing cost of the DQC circuit on device layouts",
        ["Qubits", "Layers", "Layout", "Device", "Two-qubit gates", "Added by routing", "Depth", "Two-qubit depth",
         "P(no 2q error)", "Transpiler", "From"], display,
        ["qubits", "layers", "layout", "device", "two_qubit_gates", "added_two_qubit_gates", "depth", "two_qubit_depth",
         "p_no_two_qubit_error", "noise_model", "p2", "qiskit_version", "optimization_level", "seed_transpiler",
         "source"], raw, align="rrllrrrrrll",
        note=f"The exported circuit (`heads.export.to_qiskit`, measurements included) compiled by Qiskit's transpiler "
             f"onto each layout's coupling map at optimization level {', '.join(levels)} (basis cx, rz, sx, x), which "
             "lays out, routes with SABRE and merges single-qubit gates without resynthesising two-qubit blocks: the "
             "all-to-all count is the ring's n·layers CNOTs and every gate above it is a routing SWAP's. Depth counts "
             "every gate and the measurement. P(no 2q error) = (1 − p2)^(two-qubit gates) under "
             f"{'; '.join(models) or 'the noise model named'} (two-qubit depolarizing only; docs/export.md).")


def circuit_section(doc: Document, routing_paths: list[Path] | None = None) -> None:
    """The drawings and, when routing files are found or named, the routing table (module docstring)."""
    sources, notes = find_routing(doc.sweep, routing_paths)
    groups, _ = circuit_groups(doc.sweep)
    if not groups and not sources:
        return
    doc.add("## The DQC circuit (paper Fig. 2)\n")
    if groups:
        doc.add("Each DQC head of the report, drawn at its width and depth as it is trained and as `heads export` writes "
                "it: the pre layer (blue) gives the angles α_k = tanh(Dense(x))_k·π/2, encoded by R_Y(α_k) on qubit k "
                "after a Hadamard; each layer l applies the trained R_Y(θ_l,k) (yellow) and the CNOT ring k→k+1, "
                "…, n−1→0 (one CNOT at n = 2); every qubit is measured in Z, and ⟨Z_k⟩ is input k of the post layer "
                "(orange), whose output j is the probability of label j. Every label mixes every qubit: no qubit is "
                "one label's score. Indices as in the export's names (`angle_k`, `theta_l_k`).\n")
    notes = draw_circuits(doc) + notes
    if sources:
        doc.add("### Routing cost on device layouts\n")
        exports = [s for s in sources if s.export]
        for s in exports:
            m = s.export
            check = m.get("check") or {}
            if check.get("passed") is not None:
                verdict = (f"its files, run in {check.get('simulator', '?')}, reproduce the head's ⟨Z⟩ and probabilities "
                           f"and the run's saved predictions to {check.get('worst', float('nan')):.1e} over "
                           f"{check.get('images', 0)} images "
                           + ("(passed)" if check["passed"] else f"(**failed**, tolerance {check.get('tolerance')})"))
            else:
                verdict = "no check recorded" + (f" ({check['skipped']})" if check.get("skipped") else "")
            c = m.get("circuit") or {}
            doc.add(f"- `{_shown(s.path)}`: {s.about}, {c.get('qubits', '?')} qubits, {c.get('layers', '?')} layers, "
                    f"{(m.get('images') or {}).get('count', 0)} image circuits; {verdict}.")
        if exports:
            doc.add("")
        doc.table(routing_table(sources))
    if notes:
        doc.add(*[f"- {n}" for n in notes], "")
