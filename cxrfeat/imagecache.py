"""The preprocessed-image cache of `heads finetune`: `<cache>/<dataset>/<split>.zarr` (the paper's Fig. 3).

Every image is decoded and preprocessed once (`cxrfeat.preprocess.load_and_preprocess`: resize 256,
centre crop 224, ImageNet mean/std) and kept as float16 (N, 224, 224, 3); training then reads batches
of rows from the cache, in any order, on a background thread, and never decodes an image again.
Augmentation is not cached: it happens on the device at run time.

The cache follows the feature store's conventions (`cxrfeat.store`) and reuses its class:

- Zarr v3; `images` float16 (N, 224, 224, 3), chunked along N. A chunk is one row (training reads
  rows in a random order, and reading a whole multi-row chunk for one row would multiply the bytes
  read); rows are grouped into shards of `chunk_rows` rows (one file each) so that a 78,506-image
  split is ~1,200 files, not 78,506. A shard is the unit of writing and of progress.
- `labels` int8 (N, L), `ids`, `valid`, `progress` (one flag per shard, set after the shard is
  written), the attributes of a store (`settings`, `preprocessing`, ...), and
  `kind: "image-cache"` so that neither kind of store can be mistaken for the other.
- Integrity as a feature store: `checksums/` (sha256 of each shard file, recorded when written) and
  the `COMPLETE` marker; a complete cache is verified when opened or reused.
- Building is resumable: an interrupted build continues at the first unwritten shard, and the result
  equals an uninterrupted build; a reader refuses an incomplete cache with the command that finishes it.

float16 keeps ~3 significant digits: its rounding (≤ 5e-4 relative) is far below one grey level of
the 8-bit source (1/255/0.226 ≈ 0.017 in normalised units). Size: 0.3 MB per image (NIH-CXR-LT
train: ~24 GB before compression).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cxrfeat import locks
from cxrfeat.errors import UserError, os_error_message
from cxrfeat.store import FORMAT_VERSION, WRITE_ALL, FeatureStore, build_group, ids_digest, lock_path
from cxrfeat.synth import is_synthetic

KIND = "image-cache"
SIZE = 224
DEFAULT_SHARD_ROWS = 64
DEFAULT_CACHE = Path("features") / "images"


def cache_path(root: str | Path, dataset: str, split: str, limit: int | None = None) -> Path:
    """`<root>/<dataset>/<split>.zarr` (`<split>-first<N>.zarr` for the first N rows only)."""
    name = split if limit is None else f"{split}-first{limit}"
    return Path(root) / dataset / f"{name}.zarr"


def labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int8).tobytes()).hexdigest()[:16]


class ImageCache(FeatureStore):
    """An open image cache (complete or being built); a `FeatureStore` whose array is `images`.

    It has the store's integrity machinery: per-shard checksums, the `COMPLETE` marker, and
    verification when opened complete (a damaged cache is refused; `build_cache` redoes its damaged shards).
    """

    DATA = "images"
    WHAT = "image cache"
    ROW_ARRAYS = ("images", "valid", "progress")

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        ids,
        labels: np.ndarray,
        label_names,
        attrs: dict[str, Any],
        settings: dict[str, Any],
        dtype: str = "float16",
        chunk_rows: int = DEFAULT_SHARD_ROWS,
    ) -> ImageCache:
        """Create an empty cache for N images (race-free, see `build_group`); shards are filled by `write_chunk`."""

        def data(g: zarr.Group, n: int, rows: int) -> None:
            g.create_array("images", shape=(n, SIZE, SIZE, 3), chunks=(1, SIZE, SIZE, 3),
                           shards=(rows, SIZE, SIZE, 3), dtype=dtype, config=WRITE_ALL)

        build_group(path, ids=ids, labels=labels, label_names=label_names, dtype=dtype, chunk_rows=chunk_rows,
                    settings=settings, meta={"kind": KIND, **attrs}, make_data=data)
        return cls.open(path, mode="r+", require_complete=False)

    @classmethod
    def _check_kind(cls, path: Path, g: zarr.Group) -> None:
        if g.attrs.get("kind") != KIND or g.attrs.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{path}: not an image cache of this toolkit (kind {g.attrs.get('kind')!r})")

    @classmethod
    def _hint(cls) -> str:
        return "`heads finetune` builds it"

    def incomplete_message(self) -> str:
        done = int(self.done_chunks().sum())
        return (f"{self.path}: incomplete image cache ({done}/{self.n_chunks} shards written). Run the same "
                f"`heads finetune` command again: it finishes the cache first.")

    def repair_hint(self, *, rebuild: bool = False) -> str:
        cache = self.path.parent.parent  # `heads finetune --cache <cache>` keeps <cache>/<dataset>/<split>.zarr
        if rebuild:
            return (f"Delete {self.path} and re-run the same `heads finetune` command with --cache {cache}: it "
                    f"rebuilds the cache.")
        return f"Re-run the same `heads finetune` command with --cache {cache}: it rebuilds the damaged shards first."

    @property
    def images(self) -> zarr.Array:
        return self._array("images")

    def _check_chunk(self, i: int, images: np.ndarray) -> None:
        start, stop = self.chunk_bounds(i)
        if images.shape != (stop - start, SIZE, SIZE, 3):
            raise ValueError(f"shard {i} expects {(stop - start, SIZE, SIZE, 3)}, got {images.shape}")

    def write_chunk(self, i: int, images: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Write shard i's images (rows of the shard, 224, 224, 3), record its checksums, then mark it done."""
        del valid  # a cache never skips images: a bad image stops the build
        super().write_chunk(i, images)

    def read_rows(self, rows: Iterable[int]) -> np.ndarray:
        """Images of the given rows, in that order (one read per row: rows are single chunks)."""
        arr = self.images
        try:
            return np.stack([arr[int(r)] for r in rows])
        except Exception as e:  # noqa: BLE001 - a shard damaged after the cache was verified
            raise UserError(f"{self.path}: damaged image cache: {type(e).__name__}: {e}. "
                            f"{self.repair_hint()}") from None


def build_cache(
    dataset,
    path: str | Path,
    *,
    limit: int | None = None,
    dtype: str = "float16",
    workers: int | None = None,
    chunk_rows: int = DEFAULT_SHARD_ROWS,
    say: Callable[[str], None] | None = None,
) -> ImageCache:
    """Decode and preprocess the first `limit` rows (all by default) of a `cxrfeat.datasets.Dataset`
    into the cache at `path` (resuming an unfinished one); return the complete, verified cache.

    A missing or corrupt image stops the build with a message naming the file, its id and CSV line;
    the shards already written are kept, so the same command resumes after the image is fixed. One
    process at a time builds a cache (lock file `<cache>.lock`; another waits). Shards of a complete
    cache found damaged are rebuilt (the cache is derived data), with a message.
    """
    from cxrfeat.preprocess import PREPROCESSING, ImageError, load_and_preprocess

    path = Path(path)
    n = len(dataset.ids) if limit is None else min(limit, len(dataset.ids))
    if n == 0:
        raise UserError(f"{dataset.source}: no rows")
    if workers is None:
        workers = min(16, (os.cpu_count() or 2) * 2)
    elif workers < 1:
        raise UserError(f"--workers must be >= 1 (decode threads), got {workers}")
    ids, paths, lines, labels = dataset.ids[:n], dataset.paths[:n], dataset.rows[:n], dataset.labels[:n]
    settings = json.loads(json.dumps({
        "dataset": dataset.name,
        "split": dataset.split,
        "rows": n,
        "ids_digest": ids_digest(ids),
        "labels_digest": labels_digest(labels),
        "label_names": list(dataset.label_names),
        "preprocessing": PREPROCESSING,
        "dtype": dtype,
        "chunk_rows": chunk_rows,
    }))
    say = say or (lambda msg: None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the image cache folder: {os_error_message(e, path.parent)}") from None
    with locks.acquire(lock_path(path), what=f"image cache {path}"):
        if path.exists():
            cache = ImageCache.open(path, mode="r+", require_complete=False)
            old = cache.attrs.get("settings") or {}
            if old != settings:
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise UserError(
                    f"{path} is an image cache made with different settings ({', '.join(diff)}; e.g. the label CSV "
                    f"changed); delete it to rebuild, or pass another --cache folder"
                )
        else:
            ImageCache.create(
                path, ids=ids, labels=labels, label_names=dataset.label_names, dtype=dtype, chunk_rows=chunk_rows,
                settings=settings,
                attrs={"dataset": dataset.name, "split": dataset.split, "source": str(dataset.source),
                       "synthetic": is_synthetic(Path(dataset.source).parent), "preprocessing": PREPROCESSING},
            )
            cache = ImageCache.open(path, mode="r+", require_complete=False)
        done = cache.done_chunks()
        damage = cache.verify() if cache.complete else cache.verify([int(i) for i in np.nonzero(done)[0]])
        if any(d.chunk is None for d in damage):
            raise UserError(cache.damage_message(damage))
        if cache.complete and not damage:
            return cache
        redo = sorted({d.chunk for d in damage})
        if redo:
            say(f"{path}: rebuilding {len(redo)} damaged shard(s): {'; '.join(str(d) for d in damage[:5])}")
            cache.mark_for_repair(redo)
            done = cache.done_chunks()
        todo = [i for i in range(cache.n_chunks) if not done[i]]
        if todo:
            say(f"caching preprocessed images of {dataset.name}/{dataset.split} ({n} rows) in {path}")

        def decode(row: int) -> np.ndarray:
            try:
                return load_and_preprocess(paths[row])
            except ImageError as e:
                raise UserError(
                    f"{e} (id {ids[row]}, {dataset.source} line {lines[row]}). Fix or remove the image; the "
                    f"images cached so far are kept and the same command resumes"
                ) from None

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cache-decode") as pool:
            for shard in todo:
                a, b = cache.chunk_bounds(shard)
                cache.write_chunk(shard, np.stack(list(pool.map(decode, range(a, b)))))
        cache.finalize()
        return cache


def prefetch(load: Callable[[Any], Any], items: Iterable[Any], *, depth: int = 3, workers: int = 2) -> Iterator[Any]:
    """`load(item)` for every item, in order, computed ahead on background threads.

    At most `depth` loads are queued or running while the consumer works on a result; an exception
    in a load is raised where its result is taken. Leaving the loop early cancels what was not started.
    """
    items = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="prefetch") as pool:
        pending: list[Future] = []
        try:
            for item in items:
                pending.append(pool.submit(load, item))
                if len(pending) >= max(1, depth):
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for f in pending:
                f.cancel()
