"""Extraction: images -> ResNet embeddings of several views -> `<out>/<dataset>/<split>.zarr`.

The pipeline keeps the backbone busy: a thread pool decodes and preprocesses the images of the
next steps while the jitted backbone runs on the current one; the augmented views are made on the
device from the one decoded image. Work is done a store chunk at a time and every chunk is marked
done only after its embeddings are written, so a killed run (kill -9 included) resumes at the first
unfinished chunk. Every backbone call starts at a chunk boundary with a fixed shape, so a resumed
store equals an uninterrupted one bit for bit.

Every local device works: each call's batch is split over `jax.local_devices()` (a `batch` mesh,
`cxrfeat.devices`), the parameters replicated; the decode pool grows with the device count. Beyond
one process, `--part i/N` lets N processes (cluster array jobs, or several on one node) fill
disjoint chunk ranges of one store at the same time (`_extract_part`); the result equals a store
made by one process, bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from cxrfeat import devices as devs
from cxrfeat import locks
from cxrfeat.errors import UserError, os_error_message, refuse_multi_process
from cxrfeat.store import (
    COMPLETE,
    DEFAULT_CHUNK_ROWS,
    FeatureStore,
    ids_digest,
    layout_path,
    lock_path,
    parse_part,
    part_chunks,
    part_lock_path,
    part_locks,
)
from cxrfeat.synth import is_synthetic

DEFAULT_SEED = 0
DEFAULT_BATCH = 64  # backbone forward passes per device and call


@dataclass
class ExtractTiming:
    """Where the time went: decode+preprocess (summed over worker threads) vs the backbone."""

    images: int = 0
    forwards: int = 0
    wall_s: float = 0.0
    decode_s: float = 0.0  # summed over threads
    decode_wait_s: float = 0.0  # time the main loop waited for decoded images
    backbone_s: float = 0.0
    devices: int = 1
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        ips = self.images / self.wall_s if self.wall_s else 0.0
        return {
            "images": self.images,
            "forward_passes": self.forwards,
            "wall_s": round(self.wall_s, 3),
            "images_per_s": round(ips, 2),
            "decode_preprocess_s_summed_over_threads": round(self.decode_s, 3),
            "waited_for_decode_s": round(self.decode_wait_s, 3),
            "backbone_s": round(self.backbone_s, 3),
            "devices": self.devices,
        }


def default_views(split: str) -> int:
    return 8 if split == "train" else 1


@functools.lru_cache(maxsize=8)
def _embed_views_fn(module, views: int, seed: int):
    """Jitted (params, stats, images (b,H,W,C), rows (b,)) -> (b, views, D) embeddings.

    Laid out by its inputs: images and rows split along the batch over the mesh, parameters
    replicated (see `_Embedder`). Memoised (modules compare by value) so that the runs of one
    process (parts, splits, tests) compile once per shape."""
    from cxrfeat.augment import make_views

    def fn(params, stats, images, rows):
        x = make_views(images, seed, rows, views) if views > 1 else images[:, None]
        b = x.shape[0]
        emb = module.apply({"params": params, "batch_stats": stats}, x.reshape((b * views,) + x.shape[2:]))
        return emb.reshape(b, views, -1)

    return jax.jit(fn)


class _Embedder:
    """The backbone on every device of a mesh: `slab` images per device and call, the batch axis
    split over the devices, parameters replicated once."""

    def __init__(self, backbone, views: int, seed: int, slab: int, devices=None):
        self.mesh = devs.batch_mesh(devices)
        self.n_devices = self.mesh.devices.size
        self.per_call = slab * self.n_devices
        self.batch = devs.batch_sharding(self.mesh)
        same = devs.replicated(self.mesh)
        self.params = jax.device_put(backbone.params, same)
        self.stats = jax.device_put(backbone.batch_stats, same)
        self.fn = _embed_views_fn(backbone.module, views, seed)

    def __call__(self, images: np.ndarray, rows: np.ndarray) -> np.ndarray:
        x = jax.device_put(images, self.batch)
        r = jax.device_put(rows, self.batch)
        return np.asarray(self.fn(self.params, self.stats, x, r))


def extract(
    *,
    dataset: str,
    split: str,
    data_dir: str | Path | None = None,
    out: str | Path = "features",
    name: str | None = None,
    csv: str | Path | None = None,
    source_split: str | None = None,
    label_columns: Sequence[str] = (),
    views: int | None = None,
    weights: str = "microsoft/resnet-50",
    batch_size: int | None = None,
    workers: int | None = None,
    limit: int | None = None,
    dtype: str = "float16",
    skip_bad: bool = False,
    overwrite: bool = False,
    repair: bool = False,
    seed: int = DEFAULT_SEED,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    part: str | tuple[int, int] | None = None,
    devices=None,
    backbone=None,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> tuple[Path, ExtractTiming]:
    """Extract one split into `<out>/<name>/<split>.zarr`; resumes an unfinished store with the same settings.

    `name`: the dataset's name (`cxrfeat.datasets.dataset_name`): the paper's datasets' own; for
    `dataset="csv"` (the user's own data) `name`, else the data folder's name.

    `batch_size` is the number of backbone forward passes per device and call (images x views,
    default 64; at most one store chunk of images); each call gives every device of `devices`
    (default every local device) its own slab of rows (`_fill`). `backbone` may be given to reuse a
    loaded one (tests); `announce` receives loud notices (random weights).

    Without `part`, one process works on the whole store (its lock file `<split>.zarr.lock`; a
    second one waits, naming the owner). A complete store is verified: a damaged one is refused, or
    with `repair` only its damaged chunks are recomputed (equal bit for bit to the original).
    `overwrite` builds the new store as `<split>.zarr.new` beside the old one and swaps it in only
    when complete.

    With `part` ("i/N" or (i, N)) this process fills only the i-th of N contiguous ranges of row
    chunks (`_extract_part`), so that N processes fill one store at the same time.
    """
    refuse_multi_process("cxrfeat extract", "start independent processes (without jax.distributed) on one shared "
                         "--out folder: `cxrfeat extract --part i/N` for parts of one store, one per split or "
                         "dataset otherwise; each uses every local device")
    from cxrfeat.augment import AUGMENTATION
    from cxrfeat.datasets import load_split
    from cxrfeat.preprocess import PREPROCESSING

    say = announce or (lambda msg: print(msg, file=sys.stderr))
    part = parse_part(part) if isinstance(part, str) else (tuple(part) if part is not None else None)
    if part is not None:
        parse_part(f"{part[0]}/{part[1]}")  # the same checks for a tuple
        if overwrite:
            raise UserError(f"--part {part[0]}/{part[1]} and --overwrite exclude each other: one part cannot replace a "
                            f"store that other parts are filling. Delete the store (or run --overwrite without "
                            f"--part), then start the parts")
        if repair:
            raise UserError(f"--part {part[0]}/{part[1]} and --repair exclude each other: --repair redoes only the "
                            f"damaged chunks of a complete store; run it once, without --part")
    n_devices = len(devices) if devices is not None else jax.local_device_count()
    views = default_views(split) if views is None else views
    if views < 1:
        raise UserError(f"--views must be >= 1, got {views}")
    if batch_size is None:
        batch_size = DEFAULT_BATCH
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if dtype not in ("float16", "float32"):
        raise UserError(f"--dtype must be float16 or float32, not {dtype!r}")
    if workers is None:
        workers = devs.decode_workers(os.cpu_count(), n_devices)
    elif workers < 1:
        raise UserError(f"--workers must be >= 1 (decode threads), got {workers}")
    if chunk_rows < 1:
        raise UserError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if repair and overwrite:
        raise UserError("--repair and --overwrite exclude each other: --repair redoes only the damaged chunks, "
                        "--overwrite rebuilds the whole store")
    given_dir = data_dir
    data_dir = Path(data_dir) if data_dir is not None else Path("data") / dataset
    name = store_name(dataset, given_dir, data_dir, csv, name, out, split, say)
    ds = load_split(dataset, data_dir, split, csv=csv, source_split=source_split, label_columns=label_columns)
    n = len(ds.ids) if limit is None else min(limit, len(ds.ids))
    if n == 0:
        raise UserError(f"{ds.source}: no rows to extract")
    if ds.missing_labels:
        say(missing_labels_notice(ds))
    ids, paths, rows_in_csv = ds.ids[:n], ds.paths[:n], ds.rows[:n]

    if backbone is None:
        from cxrfeat.backbone import RANDOM_WEIGHTS_WARNING, load_backbone

        backbone = load_backbone(weights, seed=seed)
        if backbone.description.get("random"):
            say(RANDOM_WEIGHTS_WARNING)
    settings = _jsonable({
        "dataset": name,
        "split": split,
        "rows": n,
        "ids_digest": ids_digest(ids),
        "label_names": ds.label_names,
        "views": views,
        "dim": backbone.dim,
        "dtype": dtype,
        "seed": seed,
        "backbone": backbone.description,
        "preprocessing": PREPROCESSING,
        "augmentation": AUGMENTATION,
        "chunk_rows": chunk_rows,
    })
    path = layout_path(out, name, split)
    args = {"dataset": dataset, "name": name if dataset == "csv" else None, "split": split, "data_dir": str(data_dir), "csv": str(csv) if csv else None,
            "source_split": source_split, "label_columns": list(label_columns) or None, "out": str(out),
            "views": views, "weights": weights, "limit": limit, "dtype": dtype, "seed": seed, "skip_bad": skip_bad}
    create = dict(
        ids=ids, labels=ds.labels[:n], label_names=ds.label_names, views=views, dim=backbone.dim, dtype=dtype,
        chunk_rows=chunk_rows, settings=settings,
        attrs={
            "dataset": name,
            "split": split,
            "source": str(ds.source),
            "synthetic": is_synthetic(data_dir),
            "backbone": backbone.description,
            "preprocessing": PREPROCESSING,
            "augmentation": AUGMENTATION if views > 1 else {"views": "view 0 only (no augmentation)"},
            "seed": seed,
            "extract_args": args,
        },
    )
    timing = ExtractTiming()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder: {os_error_message(e, path.parent)}") from None
    fill = dict(paths=paths, ids=ids, rows_in_csv=rows_in_csv, source=ds.source, views=views, batch_size=batch_size,
                workers=workers, seed=seed, backbone=backbone, devices=devices, skip_bad=skip_bad, progress=progress,
                say=say, timing=timing)
    if part is not None:
        _extract_part(path, part, settings=settings, create=create, fill=fill, say=say)
    else:
        with locks.acquire(lock_path(path), what=f"feature store {path}"):
            _refuse_live_parts(path, None)
            _recover_swap(path)
            if repair and not path.exists():
                raise UserError(f"--repair: no feature store at {path} to repair. --out names the features folder "
                                f"that holds the damaged store (`cxrfeat verify FOLDER` names it and its repair "
                                f"command); without --repair this command builds a new store there")
            target = path.with_name(path.name + NEW) if overwrite and path.exists() else path
            store = _open_or_create(target, settings, overwrite=overwrite and target == path, create=create)
            if store.complete:
                if overwrite and target != path:
                    _swap(path, target)
                    return path, timing
                damage = store.verify()
                if not damage and repair:  # the user expected damage here: a wrong --out, most likely
                    raise UserError(f"--repair: {path} is complete and every file matches its checksum, nothing "
                                    f"to repair. If a damaged copy lives elsewhere, pass --out the features folder "
                                    f"that holds it (`cxrfeat verify FOLDER` names it and its repair command)")
                if not damage:
                    say(f"{path}: already complete and verified, nothing to do")
                    return path, timing
                if not repair:
                    raise UserError(store.damage_message(damage))
                if any(d.chunk is None for d in damage):
                    raise UserError(f"{path}: damage outside the row chunks ({'; '.join(str(d) for d in damage if d.chunk is None)}) "
                                    f"cannot be repaired chunk by chunk: {store.repair_hint(rebuild=True)}")
                bad = sorted({d.chunk for d in damage})
                say(f"{path}: repairing {len(bad)} damaged chunk(s) {', '.join(map(str, bad))}: "
                    + "; ".join(str(d) for d in damage[:5]))
                store.mark_for_repair(bad)
            chunks = range(store.n_chunks)
            _reopen_redone(store, target, chunks, say)
            _fill(store, target, chunks, **fill)
            timing.skipped = store.finalize(timing=timing.as_dict())  # computed once, from `valid`
            if target != path:
                _swap(path, target)
    if timing.skipped:
        say(f"{len(timing.skipped)} image(s) skipped and recorded in {path} (skipped_ids): {', '.join(timing.skipped)}")
    return path, timing


def _extract_part(path: Path, part: tuple[int, int], *, settings: dict, create: dict, fill: dict, say) -> None:
    """Fill part i/N of the store at `path` while other processes fill the other parts.

    - The part's own lock (`<split>.zarr.part-i-of-N.lock`) is held throughout: one process per part.
    - The store lock is held only for the moments that touch the whole store: creation (the first
      part creates it, the others open it and check that its settings match), the check that no other
      partition (another N) or whole-store run is live, the un-marking of this part's chunks that
      must be redone, and finalisation. Under it, whichever part finds every chunk done writes
      `COMPLETE`, exactly once; a part that finds others unfinished says how far they are.
    - It writes only its own chunks (each chunk's embeddings, `valid` slice, checksum sidecar and
      progress flag are files of their own) and its record `parts/part-i-of-N.json`.
    """
    i, n = part
    timing: ExtractTiming = fill["timing"]
    with locks.acquire(part_lock_path(path, part), what=f"part {i}/{n} of feature store {path}"):
        with locks.acquire(lock_path(path), what=f"feature store {path}"):
            _refuse_live_parts(path, part)
            _recover_swap(path)
            store = _open_or_create(path, settings, overwrite=False, create=create)
            if store.complete:
                damage = store.verify()
                if damage:
                    raise UserError(store.damage_message(damage))
                say(f"{path}: already complete and verified, nothing to do for part {i}/{n}")
                return
            chunks = part_chunks(store.n_chunks, part)
            _reopen_redone(store, path, chunks, say)
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            record = {"chunks": [chunks.start, chunks.stop], "host": locks.HOST, "pid": os.getpid(),
                      "started": started, "state": "running"}
            store.write_part(part, record)
        _fill(store, path, chunks, **fill)
        store.write_part(part, {**record, "state": "done", "timing": timing.as_dict()})
        with locks.acquire(lock_path(path), what=f"feature store {path}"):
            store = FeatureStore.open(path, mode="r+", require_complete=False)  # a fresh look at the marker
            if store.complete:
                return
            done = store.done_chunks()
            if not done.all():
                say(f"{path}: part {i}/{n} done ({len(chunks)} chunk(s)); {int((~done).sum())} of {store.n_chunks} "
                    f"chunk(s) of other parts still to write (`cxrfeat info {path}` shows each part); the part that "
                    f"finishes last completes the store")
                return
            parts = {f"{r['part']}/{r['parts']}": r.get("timing", {}) for r in store.parts()}
            timing.skipped = store.finalize(timing={**timing.as_dict(), "finalised_by_part": f"{i}/{n}",
                                                    "parts": parts})
            say(f"{path}: complete (finalised by part {i}/{n})")


def _refuse_live_parts(path: Path, part: tuple[int, int] | None) -> None:
    """Under the store lock: refuse to work beside live processes of another partition of the store.

    A whole-store run (`part` None) refuses while any part is live; part i/N refuses while a part of
    another N is. Each process holds its own lock before checking, so of two conflicting processes
    the later one to check always sees the other. Locks of dead processes of this host are ignored;
    those of other hosts cannot be checked and count as live (the message names the file)."""
    live = {}
    for other, lock in part_locks(path).items():
        if part is not None and other[1] == part[1]:
            continue
        owner = locks.read_owner(lock)
        if owner is not None and not locks.is_stale(owner):
            live[other] = (lock, owner)
    if not live:
        return
    shown = "; ".join(f"part {a}/{b} by {locks.describe(o)} ({lk})" for (a, b), (lk, o) in list(live.items())[:3])
    if part is None:
        raise UserError(f"{path} is being filled in parts right now ({shown}): let them finish, or run the missing "
                        f"ones with the same --part i/N; a whole-store run would write their chunks too. Remove a "
                        f"lock file only if its process is gone")
    raise UserError(f"{path} is being filled as {len(live)} part(s) of another partition ({shown}): use the same "
                    f"N in --part i/N as they do (their chunk ranges differ from those of --part {part[0]}/{part[1]}). "
                    f"Remove a lock file only if its process is gone")


def _reopen_redone(store: FeatureStore, path: Path, chunks: range, say) -> None:
    """Among the done `chunks`, un-mark those to be redone: damaged since they were written, or with
    skipped rows (the image may have been fixed; the chunk's other rows come out the same).

    Called under the store lock: no part can finalise the store while a chunk is being redone."""
    done = store.done_chunks()
    done_here = [int(i) for i in chunks if done[i]]
    if not done_here:
        return
    damage = store.verify(done_here)
    if any(d.chunk is None for d in damage):
        raise UserError(store.damage_message([d for d in damage if d.chunk is None]))
    redo = {d.chunk for d in damage}
    if redo:
        say(f"{path}: redoing {len(redo)} damaged chunk(s): {', '.join(str(d) for d in damage[:5])}")
    try:
        valid = store.valid
    except UserError:  # a chunk to be redone cannot be read: then read the others one by one
        valid = None
    for i in done_here:
        a, b = store.chunk_bounds(i)
        if i not in redo and not (valid[a:b] if valid is not None else store.read("valid", slice(a, b))).all():
            redo.add(i)
    if redo:
        store.mark_for_repair(sorted(redo))


def store_name(dataset: str, given_dir, data_dir: Path, csv, name: str | None, out, split: str, say) -> str:
    """The dataset name the store is filed under (`cxrfeat.datasets.dataset_name`). A `--dataset csv`
    store begun under `csv` from the same files (before stores of a user's own data were named after
    it) is continued there, with a notice, unless the named one exists."""
    from cxrfeat.datasets import dataset_name

    chosen = dataset_name(dataset, given_dir, csv, name)
    if dataset != "csv" or name is not None or chosen == "csv" or layout_path(out, chosen, split).exists():
        return chosen
    legacy = layout_path(out, "csv", split)
    try:
        args = json.loads((legacy / "zarr.json").read_text())["attributes"]["extract_args"]
    except (OSError, ValueError, KeyError, TypeError):
        return chosen
    if args.get("data_dir") == str(data_dir) and args.get("csv") == (str(csv) if csv else None):
        say(f"{legacy}: continuing this store of the same CSV, made before stores of your own data were named after "
            f"it (csv); an extraction with --name {chosen} would file it under {layout_path(out, chosen, split)}")
        return "csv"
    return chosen


def missing_labels_notice(ds) -> str:
    """Which of the 19 task labels a dataset's CSV lacks, and what the store will then not serve."""
    from cxrfeat.labels import TASKS

    lost = [f"CXR-{k}" for k, names in TASKS.items() if any(n in ds.missing_labels for n in names)]
    how = ("are stored as unknown (-1) in every row" if ds.name == "mimic-cxr-lt"
           else "will be absent from the store")
    return (f"warning: {ds.source} has no column for {len(ds.missing_labels)} of the 19 task labels: "
            f"{', '.join(ds.missing_labels)}; they {how}, so task(s) {', '.join(lost) or 'none'} "
            f"cannot be trained or tested on it")


def _fill(store: FeatureStore, path: Path, chunks: range, *, paths, ids, rows_in_csv, source, views: int,
          batch_size: int, workers: int, seed: int, backbone, devices, skip_bad: bool, progress: bool, say,
          timing: ExtractTiming) -> None:
    """Compute every chunk of `chunks` not yet done (the caller finalises).

    The unit of work of a device is a slab: `slab` consecutive rows of one chunk, starting at a
    multiple of `slab` within it (the last slab of a chunk padded with zero images). A call gives
    each device one slab, taken in order from the chunks to do; a slab is computed with the same
    shape and contents however many devices there are, whichever process (part, resume) does it and
    whichever slabs share its call, so the store's bits do not depend on any of that."""
    from cxrfeat.preprocess import ImageError, load_and_preprocess

    done = store.done_chunks()
    todo = [i for i in chunks if not done[i]]
    slab = min(max(1, batch_size // views), store.chunk_rows)
    embedder = _Embedder(backbone, views, seed, slab, devices)
    n_dev = embedder.n_devices

    def decode(row: int):
        t0 = time.perf_counter()
        try:
            arr = load_and_preprocess(paths[row])
            err = None
        except ImageError as e:
            arr, err = None, e
        return arr, err, time.perf_counter() - t0

    def load(chunk: int):
        """Decoded images and valid flags of a chunk (waiting for the decode pool)."""
        a, b = store.chunk_bounds(chunk)
        t0 = time.perf_counter()
        results = [f.result() for f in pending.pop(chunk)]
        timing.decode_wait_s += time.perf_counter() - t0
        images = np.zeros((b - a, 224, 224, 3), np.float32)
        valid = np.ones(b - a, bool)
        for j, (arr, err, secs) in enumerate(results):
            timing.decode_s += secs
            if err is None:
                images[j] = arr
                continue
            row = a + j
            if not skip_bad:
                raise UserError(
                    f"{err} (id {ids[row]}, {source} line {rows_in_csv[row]}). "
                    f"Fix or remove the image, or pass --skip-bad to record it as skipped. "
                    f"Chunks already written are kept; rerun the same command to resume."
                )
            valid[j] = False
            say(f"skipped {ids[row]} ({source} line {rows_in_csv[row]}): {err}")
        return images, valid

    start_wall = time.perf_counter()
    total = sum(store.chunk_bounds(i)[1] - store.chunk_bounds(i)[0] for i in todo)
    bar = _progress() if progress else contextlib.nullcontext()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool, bar as prog:
        task = prog.add_task(str(path), total=total) if prog else None
        pending: dict[int, list[Future]] = {}

        def submit(k: int) -> None:
            if k < len(todo) and todo[k] not in pending:
                a, b = store.chunk_bounds(todo[k])
                pending[todo[k]] = [pool.submit(decode, r) for r in range(a, b)]

        # Keep the decode pool busy ahead of the devices: the chunks of two calls, two images per thread.
        ahead = max(3, 1 + -(-2 * workers // store.chunk_rows), 1 + -(-2 * n_dev * slab // store.chunk_rows))
        for k in range(min(ahead, len(todo))):
            submit(k)
        open_chunks: dict[int, dict] = {}  # chunk -> images, valid, out, slabs left
        slabs: list[tuple[int, int]] = []  # (chunk, offset) waiting for a call

        def call(take: list[tuple[int, int]]) -> None:
            t1 = time.perf_counter()
            batch = np.zeros((n_dev * slab, 224, 224, 3), np.float32)
            rows = np.zeros(n_dev * slab, np.int32)
            for j, (chunk, off) in enumerate(take):
                c = open_chunks[chunk]
                e = min(len(c["valid"]), off + slab)
                batch[j * slab: j * slab + e - off] = c["images"][off:e]
                rows[j * slab: (j + 1) * slab] = store.chunk_bounds(chunk)[0] + off + np.arange(slab)
            out = embedder(batch, rows)
            timing.backbone_s += time.perf_counter() - t1
            for j, (chunk, off) in enumerate(take):
                c = open_chunks[chunk]
                e = min(len(c["valid"]), off + slab)
                c["out"][off:e] = out[j * slab: j * slab + e - off]
                c["left"] -= 1
                if c["left"] == 0:
                    write(chunk, open_chunks.pop(chunk))

        def write(chunk: int, c: dict) -> None:
            c["out"][~c["valid"]] = 0.0
            store.write_chunk(chunk, c["out"], c["valid"])
            n = len(c["valid"])
            timing.images += n
            timing.forwards += n * views
            if prog:
                prog.update(task, advance=n)

        for k, chunk in enumerate(todo):
            submit(k + ahead)
            images, valid = load(chunk)
            offsets = range(0, len(valid), slab)
            open_chunks[chunk] = {"images": images, "valid": valid, "left": len(offsets),
                                  "out": np.zeros((len(valid), views, backbone.dim), np.float32)}
            slabs += [(chunk, off) for off in offsets]
            while len(slabs) >= n_dev or (k == len(todo) - 1 and slabs):
                call(slabs[:n_dev])
                del slabs[:n_dev]
    timing.wall_s = time.perf_counter() - start_wall
    timing.devices = n_dev


NEW = ".new"  # `--overwrite` builds `<name>.zarr.new` beside the old store and swaps it in when complete
OLD = ".old"


def _swap(path: Path, new: Path) -> None:
    """Put the complete store `new` in place of `path` (two renames; `_recover_swap` finishes a cut one)."""
    old = path.with_name(path.name + OLD)
    try:
        if old.exists():
            shutil.rmtree(old)
        os.rename(path, old)
        os.rename(new, path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise UserError(f"cannot replace {path} by {new}: {os_error_message(e, path)}") from None


def _recover_swap(path: Path) -> None:
    """Finish (or undo) a swap cut between its two renames, so that `path` exists again if it did."""
    new, old = path.with_name(path.name + NEW), path.with_name(path.name + OLD)
    if path.exists() or not old.exists():
        return
    if (new / COMPLETE).exists():
        os.rename(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(old, path)


def _open_or_create(path: Path, settings: dict, *, overwrite: bool, create: dict) -> FeatureStore:
    """Under the store's lock: resume the store at `path` (same settings), or create it. A store there
    of another dataset or split (copied or renamed into this place) is refused, naming both."""
    expect = {"dataset": create["attrs"]["dataset"], "split": create["attrs"]["split"]}
    if path.exists() and path.name.endswith(NEW):
        # A previous --overwrite that did not finish: resume it if it is the same extraction.
        try:
            store = FeatureStore.open(path, mode="r+", require_complete=False, **expect)
            if store.attrs.get("settings") == settings:
                return store
        except UserError:
            pass
        shutil.rmtree(path)
    if path.exists():
        if overwrite:  # `--overwrite` of a store that is not there any more in full: nothing to keep
            shutil.rmtree(path)
        else:
            store = FeatureStore.open(path, mode="r+", require_complete=False, **expect)
            old = store.attrs.get("settings")
            if old != settings:
                diff = sorted(k for k in set(old or {}) | set(settings) if (old or {}).get(k) != settings.get(k))
                raise UserError(
                    f"{path} exists with different settings ({', '.join(diff)}); refusing to mix them. "
                    f"Use another --out, or pass --overwrite to replace it."
                )
            return store
    FeatureStore.create(path, **create)
    store = FeatureStore.open(path, mode="r+", require_complete=False)
    if store.attrs.get("settings") != settings:  # another process created it at the same moment
        raise UserError(f"{path} was just created by another process with different settings")
    return store


def _jsonable(obj):
    import json

    return json.loads(json.dumps(obj))


def _progress():
    """Progress of an extraction (`cxrfeat.console.progress`): images done, images/s, elapsed and ETA."""
    from cxrfeat.console import progress

    return progress(unit="img")


def export_h5(store_path: str | Path, out: str | Path) -> Path:
    """Write a complete store's arrays and attributes to HDF5 (atomically: temp file then rename)."""
    import json

    import h5py

    store = FeatureStore.open(store_path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    g = store.group
    with h5py.File(tmp, "w") as f:
        f.create_dataset("embeddings", data=np.asarray(g["embeddings"][:]), chunks=True, compression="gzip")
        f.create_dataset("labels", data=store.labels)
        f.create_dataset("ids", data=store.ids.astype(object), dtype=h5py.string_dtype())
        f.create_dataset("valid", data=store.valid)
        for key, value in store.attrs.items():
            f.attrs[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    os.replace(tmp, out)
    return out
