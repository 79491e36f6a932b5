"""The Zarr v3 feature store: `features/<dataset>/<split>.zarr`.

Layout (docs/design.md "Feature store"):

- `embeddings` float16|float32 (N, V, D), chunked along N (one file per chunk of `chunk_rows` rows).
- `labels` int8 (N, L): 1, 0, or -1 for unknown; attribute `label_names`.
- `ids` strings (N,), row-aligned.
- `valid` bool (N,), chunked like the embeddings: False for rows skipped with `--skip-bad`. Every
  chunk's slice is written with its embeddings, so a resumed store holds exactly what an
  uninterrupted one does. Readers drop invalid rows.
- `progress` bool (number of chunks,), one file per chunk, mirrors the chunks written.

Integrity (nothing read as fill values, nothing silently damaged):

- `checksums/created.json` holds the sha256 of every file written at creation (the metadata
  `zarr.json` files, the `labels` and `ids` chunks); `checksums/chunk-<i>.json` the sha256 of the
  chunk files of row chunk i (its embeddings and `valid` chunk), written atomically right after
  those files and before the chunk counts as done. Each sidecar has exactly one writer.
- `COMPLETE` (JSON, written atomically by `finalize`) is the completion marker: the sha256 of every
  chunk file of every array, `skipped_ids` (computed once from `valid`), `completed` and `timing`.
  `zarr.json` is never rewritten after creation. A store without `COMPLETE` is incomplete.
- `FeatureStore.open` (every reader: sweep, shots, report, `cxrfeat export`) checks that every chunk
  file of every array exists and matches its checksum (`verify`: hashing files on threads, ~1 GB/s)
  and refuses a damaged store naming the array, the chunk, the store and the repair command
  (`cxrfeat extract ... --repair` recomputes only the damaged chunks, bit for bit). `load` verifies
  the store itself when `open` did not, so rows are never read from a damaged or unfinished store;
  `integrity` checks what a store should hold so far, complete or not (`cxrfeat info`, `cxrfeat verify`).
- Every metadata file (`zarr.json` of the group and of each array, `COMPLETE`) is parsed by
  `atomic.read_json` before Zarr sees it: a damaged one is a one-line error naming it.

Layout: a store of dataset D and split S lives at `<features>/D/S.zarr` (`layout_path`; `layout_of`
maps a path back to (D, S)). Its attributes record D and S, and `FeatureStore.open(path, dataset=D,
split=S)` refuses a store that holds another dataset or split (copied or renamed into the wrong place);
stores written before those attributes existed cannot be checked and are accepted.

Several writers (`cxrfeat extract --part i/N`, `cxrfeat.extract._extract_part`): every file above
that a row chunk owns (its embeddings and `valid` chunk files, its `progress` flag, its sidecar) is
written by the one process filling that chunk, so N processes fill disjoint chunk ranges
(`part_chunks`) at the same time. Each part records itself in `parts/part-<i>-of-<N>.json` (its
chunk range and state; one writer each) and holds `<split>.zarr.part-<i>-of-<N>.lock`; creation and
`finalize` happen under the store lock `<split>.zarr.lock`, so the store is created once (the first
creator wins) and completed once, by whichever part finds every chunk done. The format is the one
of single-process stores (format version 1): stores written before parts existed read unchanged.

Attributes (`zarr.json`): `format_version`, `dataset`, `split`, `source`, `synthetic`, `label_names`,
`backbone`, `preprocessing`, `augmentation`, `views`, `dim`, `seed`, `dtype`, `rows`, `chunk_rows`,
`created`, `package_version`, `settings` (what must match for a resume), `extract_args` (the command
that made it); `FeatureStore.attrs` adds `complete`, `completed`, `skipped_ids` and `timing` from
`COMPLETE`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cxrfeat import __version__, atomic
from cxrfeat.errors import UserError, os_error_message
from cxrfeat.slices import parse_slice, slice_range

FORMAT_VERSION = 1
DEFAULT_CHUNK_ROWS = 64
COMPLETE = "COMPLETE"
CHECKSUMS = "checksums"
CREATED = "created.json"
# Every array is written with all its chunks, even those equal to the fill value, so that a missing
# chunk file always means damage (Zarr would otherwise read it as fill values).
WRITE_ALL = {"write_empty_chunks": True}
HASH_THREADS = 8


def ids_digest(ids) -> str:
    """A short digest of the row ids, so that a resumed store is known to hold the same rows."""
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Damage:
    """One damaged part of a store: `key` is the file (or array) relative to the store."""

    key: str
    problem: str
    chunk: int | None = None  # the row chunk it belongs to (None: written at creation)

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}" + (f" (row chunk {self.chunk})" if self.chunk is not None else "")


SPLIT_ORDER = ("train", "val", "test")


def split_key(split: str) -> tuple[int, str]:
    """The order in which splits are listed everywhere: train, val, test, then any others by name."""
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def store_key(path: str | Path) -> tuple:
    """Stores and folders in listing order: by folder, then by split (`split_key` of the `.zarr` name)."""
    path = Path(path)
    return (*path.parent.parts, *(split_key(path.stem) if path.suffix == ".zarr" else (-1, path.name)))


def layout_path(features: str | Path, dataset: str, split: str) -> Path:
    """Where the store of `dataset`/`split` lives under a features folder: `<features>/<dataset>/<split>.zarr`."""
    return Path(features) / dataset / f"{split}.zarr"


def layout_of(path: str | Path) -> tuple[str, str] | None:
    """(dataset, split) that a store path names by the layout `<features>/<dataset>/<split>.zarr`
    (the inverse of `layout_path`); None for a path whose name does not end in `.zarr`."""
    path = Path(path)
    if path.suffix != ".zarr" or not path.stem or not path.parent.name:
        return None
    return path.parent.name, path.stem


def lock_path(path: str | Path) -> Path:
    """The lock file of a store (beside it, so that it exists before the store does)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


# ------------------------------------------------------------------------------------------ parts
PARTS = "parts"  # `<store>/parts/part-<i>-of-<N>.json`: one record per `--part i/N` run, one writer each


def parse_part(spec: str | None) -> tuple[int, int] | None:
    """'i/N' -> (i, N) with 1 <= i <= N (`cxrfeat.slices`); None -> None (the whole store in one process)."""
    return None if spec is None else parse_slice(spec, "--part", "2/4 (the second of 4 parts)")


def part_chunks(n_chunks: int, part: tuple[int, int]) -> range:
    """The row chunks of part i of N: the i-th of N contiguous, near-equal ranges (empty when N > chunks)."""
    return slice_range(n_chunks, part)


def part_lock_path(path: str | Path, part: tuple[int, int]) -> Path:
    """The lock file held by the process filling part i/N of a store (beside the store)."""
    path = Path(path)
    return path.with_name(f"{path.name}.part-{part[0]}-of-{part[1]}.lock")


def part_locks(path: str | Path) -> dict[tuple[int, int], Path]:
    """The part lock files beside a store: (i, N) -> lock path."""
    path = Path(path)
    out = {}
    for p in path.parent.glob(f"{path.name}.part-*-of-*.lock"):
        middle = p.name[len(path.name) + len(".part-"):-len(".lock")]
        i, _, n = middle.partition("-of-")
        if i.isdigit() and n.isdigit():
            out[(int(i), int(n))] = p
    return dict(sorted(out.items()))


class FeatureStore:
    """An open feature store (complete or still being written)."""

    DATA = "embeddings"
    WHAT = "feature store"
    ROW_ARRAYS = ("embeddings", "valid", "progress")  # chunked by rows: chunk index = row chunk
    CREATED_ARRAYS = ("labels", "ids")

    def __init__(self, path: str | Path, group: zarr.Group):
        self.path = Path(path)
        self.group = group
        self._marker: dict | None = None
        self._verified = False  # every file checked against its checksum (`check`) since opening

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
        """Create an empty store for N rows; embeddings are filled chunk by chunk afterwards.

        Creation is race-free: when another process creates the same store at the same moment, the
        first one wins and this returns the winner's store (the caller then checks its settings).
        """

        def data(g: zarr.Group, n: int, rows: int) -> None:
            g.create_array("embeddings", shape=(n, views, dim), chunks=(rows, views, dim), dtype=dtype, config=WRITE_ALL)

        meta = {**attrs, "views": int(views), "dim": int(dim)}
        build_group(path, ids=ids, labels=labels, label_names=label_names, dtype=dtype, chunk_rows=chunk_rows,
                    settings=settings, meta=meta, make_data=data)
        return cls.open(path, mode="r+", require_complete=False)

    @classmethod
    def _check_kind(cls, path: Path, g: zarr.Group) -> None:
        if g.attrs.get("format_version") != FORMAT_VERSION or g.attrs.get("kind") is not None:
            raise UserError(f"{path}: not a cxrfeat feature store (format_version {g.attrs.get('format_version')!r}, "
                            f"kind {g.attrs.get('kind')!r})")

    @classmethod
    def _hint(cls) -> str:
        return "run `cxrfeat extract` first"

    @classmethod
    def _remake_hint(cls) -> str:
        """What to do about a store whose group metadata is unreadable (so its recorded command is too)."""
        if cls.DATA == FeatureStore.DATA:
            return "rebuild it: re-run the `cxrfeat extract` command that made it with --overwrite"
        return f"delete the {cls.WHAT} and make it again ({cls._hint()})"

    @classmethod
    def open(cls, path: str | Path, *, mode: str = "r", require_complete: bool = True, verify: bool = True,
             dataset: str | None = None, split: str | None = None) -> FeatureStore:
        """Open a store; refuse a missing, foreign, damaged or (by default) incomplete one with a clear message.

        With `require_complete` (every reader) the whole store is verified (`verify`) unless `verify=False`
        (then `load` verifies it). `dataset` and `split`, when given, are what the caller expects the
        store to hold (`expect`): a store that holds another dataset or split is refused.
        """
        path = Path(path)
        g = open_group(path, mode, what=cls.WHAT, hint=cls._hint(), remedy=cls._remake_hint())
        cls._check_kind(path, g)
        store = cls(path, g)
        store.expect(dataset=dataset, split=split)
        missing = []
        for name in (*store.ROW_ARRAYS, *store.CREATED_ARRAYS):
            try:  # parsed here first: Zarr itself would fail on a damaged one with a bare JSONDecodeError
                atomic.read_json(path / name / "zarr.json", what=f"the metadata of array {name!r} of {cls.WHAT} "
                                 f"{path}", remedy=store.repair_hint(rebuild=True))
            except FileNotFoundError:
                missing.append(name)
            except OSError as e:
                raise UserError(f"{path}: cannot read array {name!r}: {os_error_message(e)}") from None
        if missing:
            raise UserError(f"{path}: damaged {cls.WHAT}: array(s) {', '.join(missing)} missing. "
                            f"{store.repair_hint(rebuild=True)}")
        if not (path / CHECKSUMS / CREATED).is_file():
            raise UserError(f"{path}: {cls.WHAT} without checksums (written by an older version of the toolkit, or "
                            f"damaged: {CHECKSUMS}/{CREATED} is missing). {store.repair_hint(rebuild=True)}")
        if require_complete:
            if not store.complete:
                raise UserError(store.incomplete_message())
            if verify:
                store.check()
        return store

    def expect(self, *, dataset: str | None = None, split: str | None = None) -> None:
        """Refuse a store that holds another dataset or split than the caller expects (one was copied or
        renamed into the wrong place). A store without these attributes (older versions) is accepted."""
        attrs = self.group.attrs
        held = {"dataset": attrs.get("dataset"), "split": attrs.get("split")}
        wanted = {"dataset": dataset, "split": split}
        if all(wanted[k] is None or held[k] is None or str(held[k]) == str(wanted[k]) for k in held):
            return
        says = " ".join(str(v) for v in wanted.values() if v is not None)
        holds = " ".join(str(held[k]) for k in held if held[k] is not None)
        home = ""
        if held["dataset"] is not None and held["split"] is not None and layout_of(self.path) is not None:
            home = f"; its place is {layout_path(self.path.parent.parent, held['dataset'], held['split'])}"
        raise UserError(f"{self.path}: this {self.WHAT} holds {holds}, not {says} (copied or renamed?){home}; "
                        f"the {says} {self.WHAT} belongs here ({self._hint()})")

    def incomplete_message(self) -> str:
        done = int(self.done_chunks().sum())
        cmd = self.command_here()
        again = f"`{cmd}`" if cmd else "the same `cxrfeat extract` command"
        return (f"{self.path}: incomplete {self.WHAT} ({done}/{self.n_chunks} chunks written). Finish it by "
                f"running {again} again (it resumes), or pass --overwrite to start anew.")

    def command_here(self, *flags: str) -> str | None:
        """The `cxrfeat extract` command (plus `flags`) that writes this store where it is now: its recorded
        arguments with `--out` the features folder that holds it (a store copied or moved elsewhere is
        repaired there, not where it was made). A note follows when that command cannot reach it: the
        store is not at `<features>/<dataset>/<split>.zarr` for its own dataset and split, or the images
        folder it was made from is not found from here. None when the store has no recorded arguments."""
        args = self.group.attrs.get("extract_args")
        if not isinstance(args, dict):
            return None
        dataset, split = args.get("dataset"), args.get("split")
        notes = []
        if dataset and split and layout_of(self.path) != (dataset, split):
            notes.append(f"first move it to <features>/{dataset}/{split}.zarr, where `cxrfeat extract --out "
                         f"<features>` writes it, then run it with that --out")
        args = {**args, "out": str(self.path.parent.parent)}
        if args.get("data_dir") and not Path(args["data_dir"]).is_dir():
            notes.append(f"its images were read from {args['data_dir']}, not found from here: point --data-dir at them")
        cmd = " ".join([extract_command(args), *flags])
        return cmd + (f" ({'; '.join(notes)})" if notes else "")

    def repair_hint(self, *, rebuild: bool = False) -> str:
        """The command that repairs this store (`--repair`), or rebuilds it (`--overwrite`): `command_here`."""
        flag = "--overwrite" if rebuild else "--repair"
        cmd = self.command_here(flag)
        if cmd is not None:
            return f"{'Rebuild' if rebuild else 'Repair'} it with: {cmd}"
        return (f"{'Rebuild' if rebuild else 'Repair'} it by re-running the `cxrfeat extract` command that made it "
                f"with {flag} and --out {self.path.parent.parent}")

    # ---------------------------------------------------------------- properties
    def marker(self) -> dict | None:
        """The completion marker (`COMPLETE`), None while the store is incomplete."""
        if self._marker is None:
            try:
                self._marker = atomic.read_json(
                    self.path / COMPLETE, what=f"the completion marker of {self.WHAT} {self.path}",
                    remedy=f"delete it and re-run the command that made the {self.WHAT}: it checks every chunk "
                           f"again and completes it")
            except FileNotFoundError:
                return None
            except OSError as e:
                raise UserError(f"{self.path / COMPLETE}: unreadable completion marker ({os_error_message(e)}). "
                                f"{self.repair_hint()}") from None
        return self._marker

    @property
    def attrs(self) -> dict[str, Any]:
        out = dict(self.group.attrs)
        m = self.marker()
        out.update({"complete": m is not None, "skipped_ids": list(m.get("skipped_ids", [])) if m else []})
        if m:
            out.update({k: m[k] for k in ("completed", "timing") if k in m})
        return out

    @property
    def complete(self) -> bool:
        return self.marker() is not None

    @property
    def label_names(self) -> list[str]:
        return list(self.group.attrs["label_names"])

    @property
    def views(self) -> int:
        return int(self.group.attrs["views"])

    @property
    def n_rows(self) -> int:
        return int(self.group.attrs.get("rows", self._array("ids").shape[0]))

    @property
    def chunk_rows(self) -> int:
        return int(self.group.attrs["chunk_rows"])

    @property
    def n_chunks(self) -> int:
        return max(1, -(-self.n_rows // self.chunk_rows)) if self.n_rows else 0

    def _array(self, name: str) -> zarr.Array:
        try:
            return self.group[name].with_config(WRITE_ALL)
        except KeyError:
            raise UserError(f"{self.path}: damaged {self.WHAT}: array {name!r} missing. "
                            f"{self.repair_hint(rebuild=True)}") from None

    def read(self, name: str, selection: Any = slice(None)) -> np.ndarray:
        """Read an array; a missing array or an undecodable chunk is a UserError naming both."""
        arr = self._array(name)
        try:
            return np.asarray(arr[selection])
        except Exception as e:  # noqa: BLE001 - zstd/codec errors on a truncated or corrupt chunk file
            raise UserError(f"{self.path}: damaged {self.WHAT}: array {name!r} cannot be read "
                            f"({type(e).__name__}: {e}). {self.repair_hint()}") from None

    @property
    def ids(self) -> np.ndarray:
        return np.array([str(i) for i in self.read("ids")])

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.read("labels"), dtype=np.int8)

    @property
    def valid(self) -> np.ndarray:
        return np.asarray(self.read("valid"), dtype=bool)

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        start = i * self.chunk_rows
        return start, min(self.n_rows, start + self.chunk_rows)

    def _sidecar(self, i: int) -> Path:
        return self.path / CHECKSUMS / f"chunk-{i}.json"

    def done_chunks(self) -> np.ndarray:
        """Boolean mask of the chunks already written: those whose checksums were recorded."""
        out = np.zeros(self.n_chunks, dtype=bool)
        try:
            names = set(os.listdir(self.path / CHECKSUMS))
        except FileNotFoundError:
            return out
        for i in range(self.n_chunks):
            out[i] = f"chunk-{i}.json" in names
        return out

    # ---------------------------------------------------------------- chunk files and checksums
    def _meta(self, name: str) -> dict:
        return json.loads((self.path / name / "zarr.json").read_bytes())

    def _array_files(self, name: str, meta: dict, chunk: int | None = None) -> list[tuple[str, int | None]]:
        """The chunk files of array `name` (all, or only row chunk `chunk`), with their row chunk."""
        shape = meta["shape"]
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        enc = meta.get("chunk_key_encoding", {})
        sep = enc.get("configuration", {}).get("separator", "/")
        prefix = "c" + sep if enc.get("name", "default") == "default" else ""
        counts = [max(1, math.ceil(s / g)) for s, g in zip(shape, grid, strict=True)]
        row = name in self.ROW_ARRAYS
        if chunk is not None:
            counts[0] = 1
        out = []
        for idx in np.ndindex(*counts):
            if chunk is not None:
                idx = (chunk, *idx[1:])
            key = f"{name}/{prefix}{sep.join(str(k) for k in idx)}" if idx else f"{name}/c"
            out.append((key, int(idx[0]) if row and idx else None))
        return out

    def expected_files(self) -> tuple[dict[str, int | None], list[Damage]]:
        """Every file the complete store must hold (relative key -> row chunk), and arrays found missing."""
        keys: dict[str, int | None] = {"zarr.json": None}
        damage: list[Damage] = []
        for name in (*self.ROW_ARRAYS, *self.CREATED_ARRAYS):
            try:
                meta = self._meta(name)
            except FileNotFoundError:
                damage.append(Damage(name, "array missing"))
                continue
            except (OSError, ValueError) as e:
                damage.append(Damage(f"{name}/zarr.json", f"unreadable array metadata ({e})"))
                continue
            keys[f"{name}/zarr.json"] = None
            keys.update(self._array_files(name, meta))
        return keys, damage

    def recorded_checksums(self) -> dict[str, str]:
        """The checksums recorded so far: `COMPLETE`'s manifest, or the sidecars of an unfinished store."""
        m = self.marker()
        if m is not None:
            return dict(m.get("checksums", {}))
        out: dict[str, str] = {}
        for f in [self.path / CHECKSUMS / CREATED] + [self._sidecar(i) for i in np.nonzero(self.done_chunks())[0]]:
            try:
                out.update(json.loads(f.read_text()))
            except (OSError, ValueError):
                pass  # a torn sidecar: its files count as unrecorded (the chunk is redone)
        return out

    def verify(self, chunks: list[int] | None = None) -> list[Damage]:
        """Check that every file of the store (or of the given row chunks and the created files) exists
        and matches its recorded sha256; return what is damaged (empty: intact)."""
        expected, damage = self.expected_files()
        if chunks is not None:
            wanted = set(chunks)
            expected = {k: c for k, c in expected.items() if c is None or c in wanted}
        recorded = self.recorded_checksums()
        progress_keys = {k for k in expected if k.startswith("progress/c")}
        todo = []
        for key, chunk in expected.items():
            if key in recorded:
                todo.append((key, chunk))
            elif not (chunks is not None and key in progress_keys):  # progress is recorded at finalisation
                problem = "missing" if not (self.path / key).exists() else "no checksum recorded"
                damage.append(Damage(key, problem, chunk))

        def check(item):
            key, chunk = item
            try:
                digest = file_sha256(self.path / key)
            except FileNotFoundError:
                return Damage(key, "missing", chunk)
            except OSError as e:
                return Damage(key, f"unreadable ({e.strerror})", chunk)
            if digest != recorded[key]:
                size = (self.path / key).stat().st_size
                return Damage(key, f"checksum mismatch ({size} bytes; truncated or corrupt)", chunk)
            return None

        with ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="verify") as pool:
            damage += [d for d in pool.map(check, todo) if d is not None]
        return sorted(damage, key=lambda d: (d.chunk is not None, d.chunk or 0, d.key))

    def check(self) -> None:
        """`verify` and raise a UserError naming the damaged array(s), chunk(s), the store and the repair."""
        damage = self.verify()
        if damage:
            raise UserError(self.damage_message(damage))
        self._verified = True

    def integrity(self) -> list[Damage]:
        """What is damaged among the files the store should hold by now (empty: intact): every file of
        a complete store; the files written at creation and the chunks done of an incomplete one."""
        if self.complete:
            return self.verify()
        return self.verify([int(i) for i in np.nonzero(self.done_chunks())[0]])

    def damage_message(self, damage: list[Damage]) -> str:
        shown = "; ".join(str(d) for d in damage[:3]) + (f"; and {len(damage) - 3} more" if len(damage) > 3 else "")
        rebuild = any(d.chunk is None for d in damage)
        return (f"{self.path}: damaged {self.WHAT}: {shown} (`cxrfeat verify {self.path}` lists all). "
                f"{self.repair_hint(rebuild=rebuild)}")

    # ---------------------------------------------------------------- writing
    def _check_chunk(self, i: int, data: np.ndarray) -> None:
        start, stop = self.chunk_bounds(i)
        if data.shape[0] != stop - start:
            raise ValueError(f"chunk {i} expects {stop - start} rows, got {data.shape[0]}")

    def write_chunk(self, i: int, data: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Write chunk i's data (rows of the chunk, ...) and its `valid` slice (all True by default),
        record their checksums, then mark it done."""
        self._check_chunk(i, data)
        start, stop = self.chunk_bounds(i)
        valid = np.ones(stop - start, bool) if valid is None else np.asarray(valid, bool)
        try:
            self._sidecar(i).unlink(missing_ok=True)  # redone: not done until rewritten and recorded
            self._array(self.DATA)[start:stop] = data.astype(self.group.attrs["dtype"])
            self._array("valid")[start:stop] = valid
            keys = [k for name in (self.DATA, "valid") for k, _ in self._array_files(name, self._meta(name), i)]
            atomic.write_json(self._sidecar(i), {k: file_sha256(self.path / k) for k in keys})
            self._array("progress")[i] = True
        except OSError as e:
            raise UserError(self.write_error(e, f"chunk {i}")) from None

    def write_error(self, e: OSError, what: str) -> str:
        return (f"cannot write {what} of {self.path}: {os_error_message(e, self.path)}. The chunks written so far "
                f"are kept: fix that and re-run the same command (it resumes)")

    def finalize(self, skipped_ids: list[str] | None = None, *, timing: dict | None = None) -> list[str]:
        """Mark the store complete: verify every chunk, then write `COMPLETE` (atomically) with the
        checksums of every file, and the skipped ids computed from `valid`. Returns the skipped ids."""
        if not self.done_chunks().all():
            raise RuntimeError("finalize called before every chunk was written")
        try:
            prog = self._array("progress")
            for key, chunk in self._array_files("progress", self._meta("progress")):
                if not (self.path / key).exists():
                    prog[chunk] = True
            recorded = self.recorded_checksums()
            recorded.update({k: file_sha256(self.path / k) for k, _ in self._array_files("progress", self._meta("progress"))})
            damage = self.verify(list(range(self.n_chunks)))
            if damage:
                shown = "; ".join(str(d) for d in damage[:3])
                raise UserError(f"{self.path}: {len(damage)} file(s) damaged before completion ({shown}). "
                                f"Re-run the same command: damaged chunks are redone.")
            skipped = [str(i) for i in self.ids[~self.valid]]
            if skipped_ids is not None and list(skipped_ids) != skipped:
                raise ValueError(f"skipped ids {skipped_ids} differ from the rows marked invalid {skipped}")
            marker = {"complete": True, "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "skipped_ids": skipped, "timing": timing or {}, "checksums": recorded}
            atomic.write_json(self.path / COMPLETE, marker)
        except OSError as e:
            raise UserError(self.write_error(e, "the completion marker")) from None
        self._marker = None
        return skipped

    def part_file(self, part: tuple[int, int]) -> Path:
        return self.path / PARTS / f"part-{part[0]}-of-{part[1]}.json"

    def write_part(self, part: tuple[int, int], record: dict) -> None:
        """Record what part i/N of this store did (only that part's lock holder writes its file)."""
        try:
            atomic.write_json(self.part_file(part), {"part": part[0], "parts": part[1], **record})
        except OSError as e:
            raise UserError(self.write_error(e, f"the record of part {part[0]}/{part[1]}")) from None

    def parts(self) -> list[dict]:
        """The records of the `--part` runs that worked on this store, sorted by (N, i)."""
        out = []
        for f in sorted((self.path / PARTS).glob("part-*-of-*.json")):
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue  # being replaced right now (atomic) or damaged: progress is read from the chunks
        return sorted(out, key=lambda r: (r.get("parts", 0), r.get("part", 0)))

    def mark_for_repair(self, chunks: list[int]) -> None:
        """Make a complete store incomplete again with the given row chunks to be redone."""
        (self.path / COMPLETE).unlink(missing_ok=True)
        self._marker = None
        for i in chunks:
            self._sidecar(i).unlink(missing_ok=True)

    # ---------------------------------------------------------------- reading
    def load(self, labels: list[str] | tuple[str, ...] | None = None, dtype=np.float32) -> Features:
        """All valid rows in memory; `labels` picks (and orders) label columns, erroring on missing ones.

        Only a complete store that matches its checksums is read (verified here unless `open` did it):
        a missing or damaged chunk of any array is refused, never read as fill values."""
        if not self.complete:
            raise UserError(self.incomplete_message())
        if not self._verified:
            self.check()
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
        emb = self.read("embeddings")[keep].astype(dtype, copy=False)
        ids = self.ids
        if not np.isfinite(emb).all():
            bad = np.unique(np.nonzero(~np.isfinite(emb))[0])
            raise UserError(f"{self.path}: NaN or Inf features in {len(bad)} row(s), e.g. ids {', '.join(ids[keep][bad[:5]])}")
        return Features(
            embeddings=emb,
            labels=self.labels[keep][:, cols],
            ids=ids[keep],
            label_names=list(labels),
            attrs=self.attrs,
            path=self.path,
        )


def extract_command(args: dict) -> str:
    """`cxrfeat extract ...` from the recorded extraction arguments (those that differ from the defaults)."""
    import shlex

    parts = ["cxrfeat", "extract"]
    for key in ("dataset", "name", "split", "source_split", "data_dir", "csv", "label_columns", "out", "views", "weights",
                "limit", "dtype", "seed"):
        value = args.get(key)
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value))
        parts += [f"--{key.replace('_', '-')}", shlex.quote(str(value))]
    if args.get("skip_bad"):
        parts.append("--skip-bad")
    return " ".join(parts)


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


# ------------------------------------------------------------------------------------------ creation
def _creating_name(path: Path) -> Path:
    from cxrfeat.locks import HOST

    return path.with_name(f"{path.name}.creating-{HOST}-{os.getpid()}-{secrets.token_hex(3)}")


def remove_dead_creations(path: str | Path) -> None:
    """Remove `<store>.creating-*` folders left by processes of this host that are no longer running
    (never one a live process is building). The old unsuffixed `.creating` is removed after an hour."""
    from cxrfeat.locks import HOST, _pid_alive

    path = Path(path)
    if not path.parent.is_dir():
        return
    for p in path.parent.glob(f"{path.name}.creating*"):
        rest = p.name[len(path.name) + len(".creating"):]
        dead = False
        if rest == "":
            try:
                dead = time.time() - p.stat().st_mtime > 3600
            except OSError:
                continue
        elif rest.startswith(f"-{HOST}-"):
            pid = rest[len(HOST) + 2:].split("-")[0]
            dead = pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))
        if dead:
            shutil.rmtree(p, ignore_errors=True)


def build_group(path: str | Path, *, ids, labels, label_names, dtype: str, chunk_rows: int, settings: dict,
                meta: dict, make_data) -> bool:
    """Create a store folder: `labels`, `ids`, `valid` (chunked like the data), one `progress` flag per
    chunk of rows, the data array made by `make_data(group, n, rows_per_chunk)`, the attributes every
    store carries and `checksums/created.json`.

    It is built under a name private to this process and renamed into place at the end, so a
    half-created store never exists and two processes creating the same store at once cannot
    collide: the first rename wins, the other's copy is discarded. Returns True if this call created it.
    """
    path = Path(path)
    n = len(ids)
    labels = np.asarray(labels, dtype=np.int8)
    if labels.shape != (n, len(label_names)):
        raise ValueError(f"labels shape {labels.shape} does not match {n} ids x {len(label_names)} labels")
    if dtype not in ("float16", "float32"):
        raise UserError(f"--dtype must be float16 or float32, not {dtype!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_creations(path)
        tmp = _creating_name(path)
        try:
            g = zarr.open_group(str(tmp), mode="w")
            rows = max(1, min(chunk_rows, n))
            make_data(g, n, rows)
            g.create_array("labels", shape=labels.shape, chunks=(max(1, n), max(1, labels.shape[1])), dtype="int8",
                           config=WRITE_ALL)[:] = labels
            g.create_array("ids", shape=(n,), chunks=(max(1, n),), dtype=str,
                           config=WRITE_ALL)[:] = np.asarray([str(i) for i in ids])
            g.create_array("valid", shape=(n,), chunks=(rows,), dtype="bool", fill_value=True, config=WRITE_ALL)
            g.create_array("progress", shape=(max(1, -(-n // rows)),), chunks=(1,), dtype="bool", fill_value=False,
                           config=WRITE_ALL)
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
            })))
            files = ["zarr.json"] + [f"{a}/zarr.json" for a in g.array_keys()]
            files += [str(p.relative_to(tmp).as_posix()) for a in ("labels", "ids") for p in (tmp / a / "c").rglob("*")
                      if p.is_file()]
            atomic.write_json(tmp / CHECKSUMS / CREATED, {k: file_sha256(tmp / k) for k in sorted(files)})
            try:
                os.rename(tmp, path)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                    raise
                return False  # another process created it first: theirs stands
            return True
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise UserError(f"cannot create {path}: {os_error_message(e, path)}") from None


def open_group(path: Path, mode: str, *, what: str, hint: str, remedy: str | None = None) -> zarr.Group:
    """Open a Zarr group, or a clear error naming `what` is missing (and `hint`) or unreadable (and `remedy`)."""
    if not (path / "zarr.json").exists():
        raise UserError(f"{path}: no {what} here ({hint})")
    try:  # parsed here first: Zarr itself would fail on a damaged one with a bare JSONDecodeError
        atomic.read_json(path / "zarr.json", what=f"the metadata of {what} {path}", remedy=remedy)
    except OSError as e:
        raise UserError(f"{path}: not a readable {what}: {os_error_message(e)}") from None
    try:
        return zarr.open_group(str(path), mode=mode)
    except Exception as e:  # noqa: BLE001 - anything zarr raises means "not a store we can read"
        raise UserError(f"{path}: not a readable Zarr {what} ({e})") from e
