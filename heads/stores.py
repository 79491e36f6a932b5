"""The feature stores a sweep reads: train, val, test and the external test set, loaded once and
checked together, with the optional feature normalisation (`--feature-norm standardize`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cxrfeat.errors import UserError
from cxrfeat.labels import PAPER_DATASETS, task_labels, task_name
from cxrfeat.store import Features, FeatureStore, check_compatible, layout_path
from heads.plan import DEFAULT_DATASET, SweepSpec
from heads.record import Backbone, Data

store_path = layout_path  # <features>/<dataset>/<split>.zarr


def _extract_hint(features: Path, dataset: str, split: str) -> str:
    """The command that makes a missing store: a paper dataset's reader, else a CSV dataset of that name."""
    ds = ("" if dataset == DEFAULT_DATASET else f" --dataset {dataset}" if dataset in PAPER_DATASETS
          else f" --dataset csv --name {dataset}")
    return f"cxrfeat extract --split {split}{ds} --data-dir <{dataset} folder> --out {features}"


class Stores:
    """The train/val/test stores (and the external test store when it exists), loaded once."""

    def __init__(self, spec: SweepSpec):
        self.features = Path(spec.features)
        wanted = {"train": (spec.dataset, "train"), "val": (spec.dataset, "val"), spec.dataset: (spec.dataset, "test")}
        ext = store_path(spec.features, spec.external, "test") if spec.external else None
        self.external_missing = None
        if spec.external and spec.external != spec.dataset:
            if (ext / "zarr.json").exists():
                wanted[spec.external] = (spec.external, "test")
            else:
                self.external_missing = ext
        for dataset, split in wanted.values():
            path = store_path(spec.features, dataset, split)
            if not (path / "zarr.json").exists():
                raise UserError(f"{path}: no feature store; make it with `{_extract_hint(spec.features, dataset, split)}`")
        self.all: dict[str, Features] = {}
        for key, where in wanted.items():
            store = FeatureStore.open(store_path(spec.features, *where), dataset=where[0], split=where[1])
            # Training embeddings keep their stored dtype (float16 stays float16 on the device; the
            # training step casts each batch); the smaller evaluation sets are read as float32.
            dtype = store.attrs.get("dtype", "float32") if key == "train" else np.float32
            self.all[key] = store.load(dtype=dtype)
        check_compatible(list(self.all.values()))
        self.test_sets = [k for k in self.all if k not in ("train", "val")]
        norms = {c.values["feature_norm"] for m in spec.models for c in spec.configs(m)}
        self._normed: dict[str, np.ndarray] = {}
        self._in_place = False
        self.norm = None  # the standardization constants, when some configuration uses them
        if "standardize" in norms:
            if norms == {"standardize"}:  # nothing needs the raw embeddings: standardize in place
                self.norm = standardize(self.all)
                self._in_place = True
            else:
                self.norm = standardize(self.all, copy=True, out=self._normed)
                self._in_place = False
        backbone = self.all["train"].attrs.get("backbone") or {}
        if "none" in norms and backbone.get("random"):
            print("warning: these features come from a RANDOM-weight backbone; their scale saturates the DQC's "
                  "tanh, so DQC heads may not learn. Consider --feature-norm standardize.", file=sys.stderr)

    def embeddings(self, key: str, feature_norm: str) -> np.ndarray:
        """The embeddings of store `key` as the heads of a configuration with `feature_norm` see them."""
        if feature_norm == "none" or self._in_place:
            return self.all[key].embeddings
        return self._normed[key]

    def labels_for(self, key: str, task: int) -> np.ndarray:
        f = self.all[key]
        names = task_labels(task)
        missing = [n for n in names if n not in f.label_names]
        if missing:
            raise UserError(
                f"{f.path}: the store has no label(s) {', '.join(missing)} needed by {task_name(task).upper()} "
                f"(it has: {', '.join(f.label_names)})"
            )
        return f.labels[:, [f.label_names.index(n) for n in names]]

    def check_task(self, task: int) -> None:
        for key in self.all:
            self.labels_for(key, task)

    def provenance(self) -> dict:
        return {key: {**f.provenance, "synthetic": f.attrs.get("synthetic")} for key, f in self.all.items()}

    def data_record(self, spec: SweepSpec) -> Data:
        """What the runs of this sweep are trained and tested on (the run record's `data`)."""
        sources = {key: {"dataset": f.attrs.get("dataset"), "split": f.attrs.get("split"),
                         "synthetic": f.attrs.get("synthetic")} for key, f in self.all.items()}
        train = self.all["train"].embeddings
        return Data(dataset=spec.dataset, synthetic=any_synthetic(s["synthetic"] for s in sources.values()),
                    rows={key: int(f.embeddings.shape[0]) for key, f in self.all.items()}, views=int(train.shape[1]),
                    limit=None, sources=sources, test_sets=tuple(self.test_sets), dim=int(train.shape[2]),
                    features=str(spec.features), external=spec.external)

    def backbone_record(self) -> Backbone:
        return Backbone.from_description(self.all["train"].attrs.get("backbone"))


def any_synthetic(flags) -> bool | None:
    """True if any store is synthetic, else None if any is unknown (older stores), else False."""
    flags = list(flags)
    if any(f is True for f in flags):
        return True
    return None if any(f is None for f in flags) else False


def standardize(stores: dict[str, Features], *, copy: bool = False, out: dict | None = None) -> dict[str, np.ndarray]:
    """Z-score every store's embeddings with the training store's per-dimension mean and sd: in
    place (float32), or, with `copy`, into float32 copies put in `out` by store key (same values)."""
    x = stores["train"].embeddings
    mean = x.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
    sd = x.std(axis=(0, 1), dtype=np.float64).astype(np.float32)
    sd = np.where(sd > 1e-6, sd, np.float32(1.0))
    for key, f in stores.items():
        y = f.embeddings.astype(np.float32, copy=copy)
        y -= mean
        y /= sd
        if copy:
            out[key] = y
        else:
            f.embeddings = y
    return {"mean": mean, "sd": sd}
