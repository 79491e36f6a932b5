"""Read `heads bench` results (`bench/*.json`) defensively for Table III.

A file holds either a list of records or an object with the records under `records`, `results`,
`rows` or `steps` (its other scalar fields, such as the machine, apply to every record). A record
names a model, a task or number of qubits, a back end, and the median and standard deviation of
the seconds per training step; what else is present (peak memory, machine) is shown too.

Which records are "measured here": `heads bench` names its files after the machine
(`cpu-<cpu model>-<cores>c.json`, `<platform>-<accelerator>.json`) and records `machine_details`
(cpu, cpu_cores, platform, devices). A file is this machine's when those details (or, for files
without them, its name) match this machine's CPU model and core count (and, for an accelerator
file, a visible accelerator of that kind). Notes name files by their name only, never a full path.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LIST_KEYS = ("records", "results", "rows", "steps", "benchmarks")
_MACHINE_KEYS = ("machine", "device", "gpu", "platform", "host")


@dataclass
class BenchRecord:
    model: str
    qubits: int | None
    backend: str
    median_s: float
    sd_s: float
    machine: str
    peak_memory: str
    source: Path
    details: dict[str, Any] = field(default_factory=dict)  # the file's machine_details

    @property
    def task(self) -> str:
        return f"cxr-{self.qubits}" if self.qubits else "?"


def load_bench(folder: str | Path) -> tuple[list[BenchRecord], list[str]]:
    """Every readable record of `folder/*.json`, and notes on what could not be read."""
    return load_bench_files(sorted(Path(folder).glob("*.json")))


def load_bench_files(files) -> tuple[list[BenchRecord], list[str]]:
    """Every readable record of the given `heads bench` JSON files, and notes on what could not be read."""
    records, notes = [], []
    for path in map(Path, files):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            notes.append(f"{path.name}: unreadable JSON ({e}), left out")
            continue
        shared: dict[str, Any] = {}
        items = data
        if isinstance(data, dict):
            shared = {k: v for k, v in data.items() if not isinstance(v, list | dict)}
            for k in _MACHINE_KEYS:  # machine described as an object, e.g. {"gpu": ..., "cpu": ...}
                if isinstance(data.get(k), dict):
                    shared[k] = ", ".join(f"{a}: {b}" for a, b in data[k].items() if not isinstance(b, list | dict))
            items = next((data[k] for k in _LIST_KEYS if isinstance(data.get(k), list)), [])
        if not isinstance(items, list):
            notes.append(f"{path.name}: no list of benchmark records, left out")
            continue
        kept = 0
        details = data.get("machine_details") if isinstance(data, dict) and isinstance(data.get("machine_details"), dict) else {}
        for item in items:
            rec = _record({**shared, **item}, path) if isinstance(item, dict) else None
            if rec is not None:
                rec.details = details
                records.append(rec)
                kept += 1
        if items and not kept:
            notes.append(f"{path.name}: not a `heads bench` step-time file (no record with a model and a median "
                         "step time), left out")
    return records, notes


def load_bench_paths(paths) -> tuple[list[BenchRecord], list[str]]:
    """Records of the given files and folders (each folder's *.json), and notes."""
    records, notes = [], []
    for p in paths:
        p = Path(p)
        r, n = load_bench(p) if p.is_dir() else load_bench_files([p])
        records += r
        notes += n
    return records, notes


def this_machine() -> dict[str, Any]:
    """This machine's CPU model, core count and the file-name stem `heads bench` gives a CPU run here."""
    from heads.bench import _cpu_model, _slug

    cpu, cores = _cpu_model(), os.cpu_count()
    return {"cpu": cpu, "cores": cores, "slug": f"cpu-{_slug(cpu)}-{cores}c"}


def _accelerators() -> list[str]:
    try:
        import jax

        return [d.device_kind for d in jax.devices() if d.platform != "cpu"]
    except Exception:  # noqa: BLE001 - no accelerator visible
        return []


def is_this_machine(rec: BenchRecord, here: dict[str, Any] | None = None) -> bool:
    """Whether a record was measured on this machine (see the module docstring)."""
    here = here or this_machine()
    d = rec.details or {}
    if d.get("cpu") is not None or d.get("cpu_cores") is not None:
        same_cpu = d.get("cpu") == here["cpu"] and d.get("cpu_cores") == here["cores"]
        if not same_cpu:
            return False
        if d.get("platform", "cpu") == "cpu":
            return True
        kinds = set(d.get("devices") or [])
        return bool(kinds) and kinds <= set(_accelerators())
    stem = rec.source.stem
    return stem == here["slug"] or stem.startswith(here["slug"] + "-")


def _record(d: dict[str, Any], source: Path) -> BenchRecord | None:
    model = d.get("model") or d.get("head")
    median = _number(d, ("median_s", "median_seconds", "median", "step_median_s", "median_step_s", "seconds_median"))
    if median is None:
        median = _first_number_with(d, "median")
    if model is None or median is None:
        return None
    sd = _number(d, ("sd_s", "std_s", "sd", "std", "sd_seconds", "std_seconds"))
    if sd is None:
        sd = _first_number_with(d, "sd_") or _first_number_with(d, "std")
    qubits = d.get("qubits", d.get("n_qubits", d.get("labels", d.get("n_labels"))))
    if qubits is None and d.get("task") is not None:
        digits = "".join(ch for ch in str(d["task"]) if ch.isdigit())
        qubits = int(digits) if digits else None
    try:
        qubits = int(qubits) if qubits is not None else None
    except (TypeError, ValueError):
        qubits = None
    machine = next((str(d[k]) for k in _MACHINE_KEYS if d.get(k)), "")
    mem_key = next((k for k in d if "mem" in k.lower() and isinstance(d[k], int | float | str)), None)
    backend = d.get("backend") or d.get("simulator") or ("-" if str(model).lower().startswith("cdl") else "?")
    return BenchRecord(
        model=str(model),
        qubits=qubits,
        backend=str(backend),
        median_s=median,
        sd_s=sd if sd is not None else math.nan,
        machine=machine,
        peak_memory=f"{d[mem_key]} ({mem_key})" if mem_key else "",
        source=source,
    )


def _number(d: dict[str, Any], keys) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def _first_number_with(d: dict[str, Any], fragment: str) -> float | None:
    for k, v in d.items():
        if fragment in k.lower() and isinstance(v, int | float) and not isinstance(v, bool):
            unit = k.lower().rsplit("_", 1)[-1]
            return float(v) * {"ms": 1e-3, "us": 1e-6, "ns": 1e-9}.get(unit, 1.0)
    return None
