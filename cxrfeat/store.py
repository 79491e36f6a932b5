"""The Zarr v3 feature store: `features/<dataset>/<split>.zarr`.

Layout (DESIGN "Feature store"):

- `embeddings` float16|float32 (N, V, D), chunked along N; view 0 is the plain image.
- `labels` int8 (N, L): 1, 0, or -1 for unknown; attribute `label_names`.
- `ids` strings (N,), row-aligned.
- `valid` bool (N,): False for rows skipped with `--skip-bad` (their ids are also in the
  `skipped_ids` attribute). Readers drop them.
- `progress` bool (number of chunks,), one file per chunk: a chunk's flag is set only after its
  embeddings are written, so an interrupted extraction resumes at the first unfinished chunk and
  the result equals an uninterrupted run.

Attributes: `format_version`, `dataset`, `split`, `label_names`, `backbone`, `preprocessing`,
`augmentation`, `views`, `seed`, `dtype`, `created`, `package_version`, `settings` (what must
match for a resume), `complete`, `skipped_ids`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cxrfeat import __version__
from cxrfeat.errors import UserError

FORMAT_VERSION = 1
DEFAULT_CHUNK_ROWS = 64


def ids_digest(ids) -> str:
    """A short digest of the row ids, so that a resumed store is known to hold the same rows."""
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class FeatureStore:
    """An open feature store (complete or still being written)."""

    def __init__(self, path: str | Path, group: zarr.Group):
        self.path = Path(path)
        self.group = group

    # ---------------------------------------------------------------- creation and opening
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        ids,
        labels: np.ndarray,
        label_names,
        views: int,
        dim: int,
        dtype: str,
        attrs: dict[str, Any],
        settings: dict[str, Any],
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> FeatureStore:
        """Create an empty store for N rows; embeddings are filled chunk by chunk afterwards."""

        def data(g: zarr.Group, n: int, rows: int) -> None:
            g.create_array("embeddings", shape=(n, views, dim), chunks=(rows, views, dim), dtype=dtype)

        meta = {**attrs, "views": int(views), "dim": int(dim), "skipped_ids": []}
        return cls(path, build_group(path, ids=ids, labels=labels, label_names=label_names, dtype=dtype,
                                     chunk_rows=chunk_rows, settings=settings, meta=meta, make_data=data))

    @classmethod
    def open(cls, path: str | Path, *, mode: str = "r", require_complete: bool = True) -> FeatureStore:
        """Open a store; refuse a missing, foreign or (by default) incomplete one with a clear message."""
        path = Path(path)
        g = open_group(path, mode, what="feature store", hint="run `cxrfeat extract` first")
        if g.attrs.get("format_version") != FORMAT_VERSION or "embeddings" not in g:
            raise UserError(f"{path}: not a cxrfeat feature store (format_version {g.attrs.get('format_version')!r})")
        store = cls(path, g)
        if require_complete and not store.complete:
            done = int(np.asarray(g["progress"][:]).sum())
            raise UserError(
                f"{path}: incomplete feature store ({done}/{store.n_chunks} chunks written). Finish it by "
                f"running the same `cxrfeat extract` command again (it resumes), or pass --overwrite to start anew."
            )
        return store

    # ---------------------------------------------------------------- properties
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    @property
    def label_names(self) -> list[str]:
        return list(self.group.attrs["label_names"])

    @property
    def views(self) -> int:
        return int(self.group.attrs["views"])

    @property
    def n_rows(self) -> int:
        return int(self.group["ids"].shape[0])

    @property
    def chunk_rows(self) -> int:
        return int(self.group.attrs["chunk_rows"])

    @property
    def n_chunks(self) -> int:
        return int(self.group["progress"].shape[0]) if self.n_rows else 0

    @property
    def ids(self) -> np.ndarray:
        return np.array([str(i) for i in self.group["ids"][:]])

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.group["labels"][:], dtype=np.int8)

    @property
    def valid(self) -> np.ndarray:
        return np.asarray(self.group["valid"][:], dtype=bool)

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        start = i * self.chunk_rows
        return start, min(self.n_rows, start + self.chunk_rows)

    def done_chunks(self) -> np.ndarray:
        """Boolean mask of the chunks already written (a flag that cannot be read counts as not done)."""
        arr = self.group["progress"]
        out = np.zeros(self.n_chunks, dtype=bool)
        for i in range(self.n_chunks):
            try:
                out[i] = bool(arr[i])
            except Exception:  # noqa: BLE001 - a flag torn by kill -9 means: redo the chunk
                out[i] = False
        return out

    # ---------------------------------------------------------------- writing
    def write_chunk(self, i: int, embeddings: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Write chunk i's embeddings (rows of the chunk, V, D), then mark it done."""
        start, stop = self.chunk_bounds(i)
        if embeddings.shape[0] != stop - start:
            raise ValueError(f"chunk {i} expects {stop - start} rows, got {embeddings.shape[0]}")
        self.group["embeddings"][start:stop] = embeddings.astype(self.group.attrs["dtype"])
        if valid is not None and not valid.all():
            v = self.group["valid"]
            cur = np.asarray(v[:])
            cur[start:stop] = valid
            v[:] = cur
        self.group["progress"][i] = True

    def finalize(self, skipped_ids: list[str]) -> None:
        if not self.done_chunks().all():
            raise RuntimeError("finalize called before every chunk was written")
        self.group.attrs.update({"complete": True, "skipped_ids": list(skipped_ids),
                                 "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    # ---------------------------------------------------------------- reading
    def load(self, labels: list[str] | tuple[str, ...] | None = None, dtype=np.float32) -> Features:
        """All valid rows in memory; `labels` picks (and orders) label columns, erroring on missing ones."""
        names = self.label_names
        if labels is None:
            cols = list(range(len(names)))
            labels = names
        else:
            missing = [name for name in labels if name not in names]
            if missing:
                raise UserError(f"{self.path}: the store has no label(s) {', '.join(missing)} (it has: {', '.join(names)})")
            cols = [names.index(name) for name in labels]
        keep = self.valid
        emb = np.asarray(self.group["embeddings"][:])[keep].astype(dtype, copy=False)
        if not np.isfinite(emb).all():
            bad = np.unique(np.nonzero(~np.isfinite(emb))[0])
            ids = self.ids[keep][bad[:5]]
            raise UserError(f"{self.path}: NaN or Inf features in {len(bad)} row(s), e.g. ids {', '.join(ids)}")
        return Features(
            embeddings=emb,
            labels=self.labels[keep][:, cols],
            ids=self.ids[keep],
            label_names=list(labels),
            attrs=self.attrs,
            path=self.path,
        )


@dataclass
class Features:
    """Valid rows of a complete store, in memory."""

    embeddings: np.ndarray  # (N, V, D)
    labels: np.ndarray  # (N, L) int8 in {1, 0, -1}
    ids: np.ndarray  # (N,) str
    label_names: list[str]
    attrs: dict[str, Any]
    path: Path

    @property
    def provenance(self) -> dict[str, Any]:
        """What makes two stores comparable: backbone and preprocessing (plus where it came from)."""
        return {
            "path": str(self.path),
            "dataset": self.attrs.get("dataset"),
            "split": self.attrs.get("split"),
            "backbone": self.attrs.get("backbone"),
            "preprocessing": self.attrs.get("preprocessing"),
            "created": self.attrs.get("created"),
        }


def load_features(path: str | Path, labels=None) -> Features:
    """Open a complete store and load it (see `FeatureStore.load`)."""
    return FeatureStore.open(path).load(labels)


def check_compatible(stores: list[Features]) -> None:
    """Refuse stores from different backbones or preprocessing being mixed in one run."""
    if not stores:
        return
    ref = stores[0]
    for other in stores[1:]:
        for key in ("backbone", "preprocessing"):
            if ref.attrs.get(key) != other.attrs.get(key):
                raise UserError(
                    f"stores {ref.path} and {other.path} differ in {key}: "
                    f"{ref.attrs.get(key)!r} vs {other.attrs.get(key)!r}; extract them with the same settings"
                )
        if ref.embeddings.shape[-1] != other.embeddings.shape[-1]:
            raise UserError(f"stores {ref.path} and {other.path} have different embedding sizes")


def build_group(path: str | Path, *, ids, labels, label_names, dtype: str, chunk_rows: int, settings: dict,
                meta: dict, make_data) -> zarr.Group:
    """Create a store folder: `labels`, `ids`, `valid`, one `progress` flag per chunk of rows, the data
    array made by `make_data(group, n, rows_per_chunk)`, and the attributes every store carries.

    It is built under a temporary name and renamed at the end, so a half-created store never exists.
    """
    path = Path(path)
    n = len(ids)
    labels = np.asarray(labels, dtype=np.int8)
    if labels.shape != (n, len(label_names)):
        raise ValueError(f"labels shape {labels.shape} does not match {n} ids x {len(label_names)} labels")
    if dtype not in ("float16", "float32"):
        raise UserError(f"--dtype must be float16 or float32, not {dtype!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".creating")
    if tmp.exists():
        shutil.rmtree(tmp)
    g = zarr.open_group(str(tmp), mode="w")
    rows = max(1, min(chunk_rows, n))
    make_data(g, n, rows)
    g.create_array("labels", shape=labels.shape, chunks=(max(1, n), max(1, labels.shape[1])), dtype="int8")[:] = labels
    g.create_array("ids", shape=(n,), chunks=(max(1, n),), dtype=str)[:] = np.asarray([str(i) for i in ids])
    g.create_array("valid", shape=(n,), chunks=(max(1, n),), dtype="bool", fill_value=True)[:] = True
    g.create_array("progress", shape=(max(1, -(-n // rows)),), chunks=(1,), dtype="bool", fill_value=False)
    g.attrs.update(json.loads(json.dumps({
        "format_version": FORMAT_VERSION,
        **meta,
        "label_names": list(label_names),
        "dtype": dtype,
        "rows": int(n),
        "chunk_rows": int(rows),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "package_version": __version__,
        "settings": settings,
        "complete": False,
    })))
    tmp.rename(path)
    return zarr.open_group(str(path), mode="r+")


def open_group(path: Path, mode: str, *, what: str, hint: str) -> zarr.Group:
    """Open a Zarr group, or a clear error naming `what` is missing or unreadable (and `hint`)."""
    if not (path / "zarr.json").exists():
        raise UserError(f"{path}: no {what} here ({hint})")
    try:
        return zarr.open_group(str(path), mode=mode)
    except Exception as e:  # noqa: BLE001 - anything zarr raises means "not a store we can read"
        raise UserError(f"{path}: not a readable Zarr {what} ({e})") from e
