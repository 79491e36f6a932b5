"""What the report needs from the feature stores: label counts per split, and whether data is synthetic.

Stores are `features/<dataset>/<split>.zarr` (docs/design.md "Feature store"); only their labels and
attributes are read, never the embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrfeat.errors import UserError
from cxrfeat.labels import LABELS, NO_FINDING, canonical
from cxrfeat.store import FeatureStore, layout_of, split_key

SYNTHETIC_SENTENCE = (
    "**These results come from SYNTHETIC images** (`cxrfeat synth`), not from real chest X-rays: "
    "they show that the pipeline works, and say nothing about the clinical performance of CDL or DQC."
)


@dataclass
class StoreCounts:
    """Positive counts per label of one store (valid rows only)."""

    dataset: str
    split: str
    path: Path
    rows: int
    positives: dict[str, int]  # canonical label -> number of images with label 1
    unknown: dict[str, int]  # canonical label -> number of images with label -1
    attrs: dict[str, Any]


def label_order_text(names) -> str:
    """How `label_key` orders these labels, in words: the paper's Table I order only for the paper's labels."""
    names = [n for n in names if n != NO_FINDING]
    paper = [n for n in names if n in LABELS]
    if len(paper) == len(names):
        return "canonical (paper Table I) order"
    if not paper:
        return "labels by name"
    return "the paper's labels in its Table I order, then the others by name"


def label_key(name: str) -> tuple[int, str]:
    """Canonical (paper Table I) order first, other labels after, `No Finding` last."""
    if name == NO_FINDING:
        return (len(LABELS) + 1, name)
    return (LABELS.index(name) if name in LABELS else len(LABELS), name)


def read_counts(path: str | Path, *, placed: bool = False) -> StoreCounts:
    """Label counts of one complete store (UserError for a missing, foreign or incomplete one; with
    `placed`, also for one whose dataset and split are not those its place in the layout says)."""
    where = layout_of(path) if placed else None
    store = FeatureStore.open(path, **({"dataset": where[0], "split": where[1]} if where else {}))
    attrs = store.attrs
    labels = store.labels[store.valid]
    names = [canonical(n) for n in store.label_names]
    return StoreCounts(
        dataset=str(attrs.get("dataset") or Path(path).parent.name),
        split=str(attrs.get("split") or Path(path).name.removesuffix(".zarr")),
        path=Path(path),
        rows=int(labels.shape[0]),
        positives={n: int((labels[:, j] == 1).sum()) for j, n in enumerate(names)},
        unknown={n: int((labels[:, j] == -1).sum()) for j, n in enumerate(names)},
        attrs=attrs,
    )


def scan_stores(features: str | Path) -> tuple[list[StoreCounts], list[str]]:
    """Counts of every complete store under `features/<dataset>/<split>.zarr`, plus notes on skipped ones."""
    return read_stores(sorted(Path(features).glob("*/*.zarr")), placed=True)


def provenance_stores(*configs: Any) -> list[Path]:
    """Store paths named in run configs / sweep.json (dicts with a `path` ending in .zarr, any depth)."""
    found: dict[str, None] = {}

    def walk(obj: Any, depth: int = 0) -> None:
        if depth > 6:
            return
        if isinstance(obj, dict):
            path = obj.get("path")
            if isinstance(path, str) and path.rstrip("/").endswith(".zarr"):
                found[path.rstrip("/")] = None
            for v in obj.values():
                walk(v, depth + 1)

    for c in configs:
        walk(c)
    return [Path(p) for p in found]


def read_stores(paths, *, placed: bool = False) -> tuple[list[StoreCounts], list[str]]:
    """Counts of the given stores (skipping, with a note, those that cannot be opened or, with `placed`,
    that are not what their place in the layout says)."""
    found, notes = [], []
    for path in paths:
        try:
            found.append(read_counts(path, placed=placed))
        except UserError as e:
            notes.append(f"skipped {e}")
    found.sort(key=lambda c: (c.dataset != "nih-cxr-lt", c.dataset, split_key(c.split)))
    return found, notes


def training_counts(stores: list[StoreCounts], dataset: str | None = None) -> StoreCounts | None:
    """The training store's counts (of `dataset` when given, else NIH-CXR-LT, else the only one)."""
    train = [c for c in stores if c.split == "train"]
    for want in (dataset, "nih-cxr-lt"):
        for c in train:
            if want and c.dataset == want:
                return c
    return train[0] if len(train) == 1 else None


def occurrence_order(labels, train: StoreCounts | None) -> list[str]:
    """Labels sorted by training occurrence (most positives first; ties in canonical order).

    Without a training store the canonical order is used: it is the paper's Table I order, by
    NIH-CXR-LT occurrence.
    """
    if train is None:
        return sorted(labels, key=label_key)
    return sorted(labels, key=lambda n: (-train.positives.get(n, -1), label_key(n)))


def is_synthetic(*attr_dicts: Any) -> bool:
    """True when any of the given store attributes / run configs says `"synthetic": true` (at any depth).

    A missing key means "not known to be synthetic" (False).
    """

    def walk(obj: Any, depth: int = 0) -> bool:
        if depth > 6:
            return False
        if isinstance(obj, dict):
            if obj.get("synthetic") is True:
                return True
            return any(walk(v, depth + 1) for v in obj.values())
        if isinstance(obj, list):
            return any(walk(v, depth + 1) for v in obj)
        return False

    return any(walk(a) for a in attr_dicts)


def label_frequency_groups(train: StoreCounts | None, labels=LABELS) -> dict[str, list[str]]:
    """Head / medium / tail: the labels ranked by training occurrence, cut into thirds.

    Rank terciles (not absolute counts) so that the groups mean the same on the full NIH-CXR-LT
    (19 labels: 7 / 6 / 6) and on a small synthetic set. Labels are those of the training store
    when there is one, else the canonical 19 in canonical (paper Table I) order.
    """
    pool = [n for n in (train.positives if train else labels) if n != NO_FINDING]
    ranked = occurrence_order(pool, train)
    parts = np.array_split(np.arange(len(ranked)), 3)
    return {g: [ranked[i] for i in idx] for g, idx in zip(("head", "medium", "tail"), parts, strict=True)}
