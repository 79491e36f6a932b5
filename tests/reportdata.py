"""Run folders fabricated in the schema-1 run-record layout (config.json `data`/`backbone`/
`settings`, metrics.json `sanity` and AUPRC), for the report tests that need a given provenance or a
degenerate head without training one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cxrfeat.labels import TASKS
from heads.metrics import auroc_report

TEST_SETS = ("nih-cxr-lt", "mimic-cxr-lt")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def contract_config(task: int, model: str, seed: int, *, seeds: int, random_backbone: bool, synthetic: bool | None,
                    rows: dict[str, int], limit: int | None = None, lr: float = 3e-3, mode: str = "features") -> dict:
    quantum = model.startswith("dqc")
    backbone = ({"name": "random", "random": True, "seed": 0, "revision": None, "sha256": None} if random_backbone
                else {"name": "microsoft/resnet-50", "random": False, "seed": None, "revision": "abc123def4567890",
                      "sha256": "f" * 64})
    return {
        "sweep": "fab", "task": task, "task_name": f"cxr-{task}", "labels": list(TASKS[task]), "model": model,
        "seed": seed, "training": {"lr": lr, "batch_size": 32, "max_epochs": 30, "patience": 5},
        "param_counts": {"backbone": 23_508_032, "classical_preprocess": 2048 * task + task,
                         "quantum": 3 * task if quantum else 0, "classical_postprocess": task * task + task if quantum else 0},
        "data": {"dataset": "nih-cxr-lt", "synthetic": synthetic, "rows": rows, "views": 4, "limit": limit,
                 "sources": {k: {"dataset": k if k in TEST_SETS else "nih-cxr-lt", "split": "test" if k in TEST_SETS
                                 else k, "synthetic": synthetic} for k in rows}},
        "backbone": backbone,
        "settings": {"lr": lr, "batch_size": 32, "max_epochs": 30, "patience": 5, "feature_norm": "standardize",
                     "layers": 3 if quantum else None, "backend": "fast" if quantum else None,
                     "circuit_init": "uniform" if quantum else None, "seeds": seeds, "mode": mode,
                     "freeze_backbone": None, "limit": limit},
    }


def fabricate_runs(root: Path, *, name: str = "fab", task: int = 8, models=("cdl", "dqc"), seeds=(1, 2, 3),
                   n: int = 60, random_backbone: bool = True, synthetic: bool | None = True,
                   constant: dict | None = None, record_sanity: bool = True, extra_flags: dict | None = None,
                   still_improving: dict | None = None) -> Path:
    """runs/<name>/cxr-<task>/<model>/seed-<s>/ with every file of docs/design.md "Run layout", schema-1 keys.

    `constant[(model, seed)]`: that run predicts a constant for every label (a saturated DQC), and
    records it in metrics.json `sanity` when `record_sanity`. `extra_flags[(model, seed)]`: flags
    recorded only in metrics.json (e.g. saturated_inputs). `still_improving[(model, seed)]`: the
    validation loss falls until the last epoch.
    """
    constant, extra_flags, still_improving = constant or {}, extra_flags or {}, still_improving or {}
    sweep = root / "runs" / name
    labels = TASKS[task]
    rng = np.random.default_rng(7)
    truth = {}
    for ts in TEST_SETS:
        y = (rng.random((n, len(labels))) < np.linspace(0.4, 0.1, len(labels))).astype(np.int64)
        y[:2], y[2:4] = 1, 0
        if ts == "mimic-cxr-lt":
            y[4:][rng.random((n - 4, len(labels))) < 0.1] = -1
        truth[ts] = y
    rows = {"train": 120, "val": 40, **{ts: n for ts in TEST_SETS}}
    for model in models:
        for seed in seeds:
            d = sweep / f"cxr-{task}" / model / f"seed-{seed}"
            (d / "predictions").mkdir(parents=True)
            config = contract_config(task, model, seed, seeds=len(seeds), random_backbone=random_backbone,
                                     synthetic=synthetic, rows=rows)
            (d / "config.json").write_text(json.dumps(config))
            epochs = 8 + seed
            best = epochs if still_improving.get((model, seed)) else epochs - 3
            hist = [{"epoch": e, "train_loss": 0.7 * math.exp(-e / 5) + 0.01 * seed,
                     "val_loss": 0.6 - 0.02 * min(e, best) + 0.01 * max(0, e - best), "seconds": 0.5}
                    for e in range(1, epochs + 1)]
            (d / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
            (d / "best.safetensors").write_bytes(b"")
            prng = np.random.default_rng(100 * seed + len(model))
            test_sets, const_labels = {}, {}
            for ts, y in truth.items():
                strength = (1.5 if model == "cdl" else 0.9) * (1 + 0.1 * seed)
                prob = _sigmoid(strength * (2 * (y == 1) - 1) + prng.normal(0, 1.2, y.shape))
                if constant.get((model, seed)):
                    prob = np.full(y.shape, 0.25)
                    const_labels[ts] = list(labels)
                np.savez(d / "predictions" / f"{ts}.npz", ids=np.array([f"{ts}-{i}" for i in range(n)]), y_true=y,
                         y_prob=prob.astype(np.float32), label_names=np.array(labels))
                test_sets[ts] = auroc_report(y, prob, list(labels))
            flags = (["constant_predictions"] if const_labels else []) + list(extra_flags.get((model, seed), []))
            if still_improving.get((model, seed)):
                flags.append("still_improving")
            metrics = {"complete": True, "task": task, "model": model, "seed": seed, "best_epoch": best,
                       "epochs": epochs, "test_sets": test_sets}
            if record_sanity:
                metrics["sanity"] = {
                    "ok": not flags, "flags": flags,
                    "details": {"constant_labels": const_labels, "saturated_fraction": 0.97 if flags else 0.1,
                                "saturation_threshold": 0.5, "best_epoch": best, "epochs": epochs, "max_epochs": 30,
                                "nan": False},
                    "messages": [f"{f} (fabricated)" for f in flags]}
            (d / "metrics.json").write_text(json.dumps(metrics))
            (d / "DONE").write_text("")
    (sweep / "sweep.json").write_text(json.dumps({"name": name, "tasks": [task], "models": list(models),
                                                  "seeds": len(seeds)}))
    return sweep
