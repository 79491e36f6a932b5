"""Dataset readers: NIH-CXR-LT, MIMIC-CXR-LT (external test) and a generic CSV -> `Dataset`.

Every reader returns the same `Dataset`: row-aligned ids, image paths (resolved, not opened: a
missing image is reported by extraction with its file and CSV line), int8 labels in {1, 0, -1}
(-1 = unknown) and canonical label names. Label columns are recognised by their canonical name or
a known alias (`cxrfeat.labels.canonical`): the 19 NIH-CXR-LT labels and the CXR-LT 2023/2024
findings (`cxrfeat.labels.KNOWN_LABELS`); other columns (subject ids, view positions, report
flags) are ignored. Label order: the known labels present, in canonical order (the 19 first),
then `No Finding` when present.

Layouts
-------
- ``nih-cxr-lt``: ``<data_dir>/miccai2023_nih-cxr-lt_labels_{split}.csv`` with an ``id`` column
  (the PNG file name). Images lie flat in ``<data_dir>`` or ``<data_dir>/images/``, or in the
  NIH download's ``<data_dir>/images_001/images/`` ... ``images_012/images/``.
- ``mimic-cxr-lt``: one CSV in ``<data_dir>``, the first that exists of
  ``miccai2023_mimic-cxr-lt_labels_{split}.csv``, ``mimic-cxr-lt_{split}.csv``, ``{split}.csv``,
  else the only ``*.csv`` there. Columns ``dicom_id`` (the id) and ``path`` or ``fpath`` (relative
  to ``<data_dir>``, e.g. ``files/p10/p10000032/s50414267/<dicom_id>.jpg``; built from
  ``subject_id`` and ``study_id`` when absent); optional ``ViewPosition``: when present only AP
  and PA rows are kept. A label that is absent, blank or -1 (uncertain) is stored as -1; all 19
  task labels are always present (an absent column is all -1). The CXR-LT 2023 release (files
  ``train.csv``, ``development.csv``, ``test.csv`` with ``fpath`` and the 26 classes) reads as it
  is, for training too; its split names map to ours with ``source_split`` (``cxrfeat extract
  --split val --source-split development``).
- ``csv``: ``--csv FILE`` (default ``<data_dir>/{split}.csv``) with an ``id`` column (a file name
  found like NIH images) and/or a ``path``/``fpath`` column (relative to ``<data_dir>``, or
  absolute), and 0/1 label columns (-1 or blank = unknown): the known labels by name, and any other
  columns named by ``label_columns`` (``--label-columns``), in that order after the known ones.
  Its stores and test set are named after the data, not ``csv`` (`dataset_name`); a CSV with none of
  the paper's 19 labels is a dataset of its own labels, and is not warned about the paper's tasks.
"""

from __future__ import annotations

import csv as csvmod
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrfeat.errors import UserError
from cxrfeat.labels import KNOWN_LABELS, LABELS, NO_FINDING, PAPER_DATASETS, canonical, check_name, slug

DATASETS = ("nih-cxr-lt", "mimic-cxr-lt", "csv")

# Accepted label cell values. Blank means unknown (-1), like an uncertain -1.
_VALUES = {"1": 1, "0": 0, "-1": -1, "": -1, "1.0": 1, "0.0": 0, "-1.0": -1}
_FRONTAL = {"AP", "PA"}
_PATH_COLUMNS = ("path", "fpath")  # a relative image path (CXR-LT 2023 calls it fpath)
# Other names of our splits in released label files (CXR-LT 2023: development), for the error's hint.
_SPLIT_ALIASES = {"val": ("development", "dev", "valid", "validation"), "train": ("training",)}


@dataclass
class Dataset:
    """One split of a dataset: rows of (id, image path, labels)."""

    name: str
    split: str
    ids: list[str]
    paths: list[Path]
    labels: np.ndarray  # int8 (N, L) in {1, 0, -1}
    label_names: list[str]
    source: Path
    rows: list[int]  # the CSV line number of each row (header = line 1)
    missing_labels: list[str] = field(default_factory=list)  # task labels without a column in the CSV

    def __len__(self) -> int:
        return len(self.ids)

    def label_counts(self) -> dict[str, int]:
        """Positives per label."""
        return {name: int((self.labels[:, j] == 1).sum()) for j, name in enumerate(self.label_names)}


def load_split(dataset: str, data_dir: str | Path, split: str, *, csv: str | Path | None = None,
               source_split: str | None = None, label_columns=()) -> Dataset:
    """Read one split of `dataset` (one of `DATASETS`) from `data_dir`; see the module docstring for layouts.

    `source_split`: the split's name in the dataset's own files (CXR-LT 2023's `development` for our
    `val`); the result is still called `split`. `label_columns`: extra label columns of a generic CSV.
    """
    data_dir = Path(data_dir)
    if label_columns and dataset != "csv":
        raise UserError(f"--label-columns is for --dataset csv; {dataset} has its own label columns")
    file_split = source_split or split
    if dataset == "nih-cxr-lt":
        ds = _load_nih(data_dir, file_split)
    elif dataset == "mimic-cxr-lt":
        ds = _load_mimic(data_dir, file_split, csv)
    elif dataset == "csv":
        ds = _load_generic(data_dir, file_split, csv, tuple(label_columns))
    else:
        raise UserError(f"unknown --dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    ds.split = split
    return ds


def dataset_name(dataset: str, data_dir: str | Path | None = None, csv: str | Path | None = None,
                 name: str | None = None) -> str:
    """The name a dataset's stores (`<features>/<name>/<split>.zarr`) and test set go by: the paper's
    datasets their own; `--dataset csv` the user's `name` (`--name`), else the name of the folder of its
    label CSV (`csv`'s, else `data_dir` as given), made folder-safe (`Clinic Data` -> `clinic-data`).
    A name that is unsafe in a folder name or one of the paper's is a one-line `UserError`."""
    if dataset != "csv":
        if name is not None and name != dataset:
            raise UserError(f"--name {name!r} is for --dataset csv (your own data); {dataset} stores are named {dataset}")
        return dataset
    if name is not None:
        return check_name(name, "--name", "clinic")
    folder = Path(csv).resolve().parent if csv is not None else Path(data_dir) if data_dir is not None else None
    derived = slug(folder.resolve().name if folder is not None else "") or "csv"
    if derived in PAPER_DATASETS:
        raise UserError(f"--dataset csv reads {folder} as your own data, and that folder's name {derived} is the "
                        f"paper's dataset's: name yours with --name (e.g. --name {derived}-own), or read it with "
                        f"--dataset {derived}")
    return derived


def nih_csv(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"miccai2023_nih-cxr-lt_labels_{split}.csv"


def mimic_csv(data_dir: str | Path, split: str) -> Path:
    """The MIMIC-CXR-LT label CSV of `split` in `data_dir` (see the module docstring for the names tried)."""
    data_dir = Path(data_dir)
    names = [f"miccai2023_mimic-cxr-lt_labels_{split}.csv", f"mimic-cxr-lt_{split}.csv", f"{split}.csv"]
    for name in names:
        if (data_dir / name).is_file():
            return data_dir / name
    found = sorted(data_dir.glob("*.csv")) if data_dir.is_dir() else []
    if len(found) == 1:
        return found[0]
    what = f"found {', '.join(p.name for p in found)}" if found else "found no CSV"
    hint = ""
    stems = {p.stem for p in found}
    alias = next((a for a in _SPLIT_ALIASES.get(split, ()) if a in stems), None)
    if alias:
        hint = f"; to read {alias}.csv as split {split!r}, add --source-split {alias}"
    raise UserError(f"{data_dir}: no MIMIC-CXR-LT label CSV for split {split!r}: looked for {', '.join(names)} "
                    f"({what}){hint}")


# ------------------------------------------------------------------------------------------ readers
def _load_nih(data_dir: Path, split: str) -> Dataset:
    source = nih_csv(data_dir, split)
    table = _read_csv(source)
    table.require(["id"])
    ids = table.column("id")
    _check_unique(ids, table, "id")
    index = image_index(data_dir)
    paths = [index.get(i, data_dir / i) for i in ids]
    names, labels = _labels(table, all_tasks=False)
    return Dataset("nih-cxr-lt", split, ids, paths, labels, names, source, table.lines, _missing(table))


def _load_mimic(data_dir: Path, split: str, csv: str | Path | None) -> Dataset:
    source = Path(csv) if csv is not None else mimic_csv(data_dir, split)
    table = _read_csv(source)
    table.require(["dicom_id"])
    path_col = table.path_column()
    if path_col is None:
        table.require(["path"], ["fpath"], ["subject_id", "study_id"])
    if "ViewPosition" in table.header:
        views = table.column("ViewPosition")
        table = table.subset([k for k, v in enumerate(views) if v.strip().upper() in _FRONTAL])
    ids = table.column("dicom_id")
    _check_unique(ids, table, "dicom_id")
    if path_col is not None:
        rel = table.column(path_col)
    else:
        rel = [
            f"files/p{s[:2]}/p{s}/s{st}/{d}.jpg"
            for s, st, d in zip(table.column("subject_id"), table.column("study_id"), ids, strict=True)
        ]
    paths = [data_dir / r for r in rel]
    names, labels = _labels(table, all_tasks=True)
    return Dataset("mimic-cxr-lt", split, ids, paths, labels, names, source, table.lines, _missing(table))


def _load_generic(data_dir: Path, split: str, csv: str | Path | None, label_columns: tuple[str, ...] = ()) -> Dataset:
    source = Path(csv) if csv is not None else data_dir / f"{split}.csv"
    table = _read_csv(source)
    table.require(["id"], ["path"], ["fpath"])
    path_col = table.path_column()
    if path_col is not None:
        rel = table.column(path_col)
        paths = [data_dir / r for r in rel]  # an absolute path stays absolute
        ids = table.column("id") if "id" in table.header else rel
    else:
        ids = table.column("id")
        index = image_index(data_dir)
        paths = [index.get(i, data_dir / i) for i in ids]
    _check_unique(ids, table, "id" if "id" in table.header else path_col)
    names, labels = _labels(table, all_tasks=False, extra=label_columns)
    return Dataset("csv", split, ids, paths, labels, names, source, table.lines, _missing(table, own_ok=True))


# ------------------------------------------------------------------------------------------ images
def image_index(data_dir: str | Path) -> dict[str, Path]:
    """File name -> path for the images of an NIH-style folder (flat, `images/`, or `images_0NN/images/`).

    One `os.scandir` per folder: fast for the 112,120 NIH images.
    """
    data_dir = Path(data_dir)
    folders = [data_dir, data_dir / "images"]
    if data_dir.is_dir():
        with os.scandir(data_dir) as it:
            parts = sorted(e.name for e in it if e.is_dir() and e.name.startswith("images_"))
        for name in parts:
            folders += [data_dir / name / "images", data_dir / name]
    index: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for e in it:
                if e.is_file() and e.name not in index:
                    index[e.name] = folder / e.name
    return index


# ------------------------------------------------------------------------------------------ CSV
class _Table:
    """A CSV held as columns of strings, with each row's line number for messages."""

    def __init__(self, source: Path, header: list[str], records: list[list[str]], lines: list[int]):
        self.source, self.header, self.records, self.lines = source, header, records, lines
        self._col = {name: k for k, name in enumerate(header)}

    def column(self, name: str) -> list[str]:
        k = self._col[name]
        return [r[k].strip() for r in self.records]

    def subset(self, keep: list[int]) -> _Table:
        return _Table(self.source, self.header, [self.records[k] for k in keep], [self.lines[k] for k in keep])

    def path_column(self) -> str | None:
        """The image-path column (`path`, else `fpath`), or None."""
        return next((c for c in _PATH_COLUMNS if c in self._col), None)

    def require(self, *groups: list[str]) -> None:
        """Pass when every column of at least one group is present."""
        if any(all(n in self._col for n in g) for g in groups):
            return
        need = " or ".join("+".join(g) for g in groups)
        raise UserError(f"{self.source}: missing column(s): needs {need}; it has {', '.join(self.header)}")


def _read_csv(path: Path) -> _Table:
    if not path.is_file():
        hint = f" (it has: {', '.join(sorted(p.name for p in path.parent.glob('*.csv')))})" if path.parent.is_dir() else ""
        raise UserError(f"{path}: label CSV not found{hint}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csvmod.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise UserError(f"{path}: empty CSV (no header line)")
            dup = sorted({h for h in header if header.count(h) > 1})
            if dup:
                raise UserError(f"{path}: duplicate column(s) {', '.join(dup)} in the header")
            records, lines = [], []
            for rec in reader:
                if not rec or (len(rec) == 1 and not rec[0].strip()):
                    continue
                if len(rec) != len(header):
                    raise UserError(f"{path} line {reader.line_num}: {len(rec)} fields, the header has {len(header)}")
                records.append(rec)
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise UserError(_not_utf8(path)) from None
    except csvmod.Error as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from e
    except OSError as e:
        raise UserError(f"{path}: cannot read the label CSV ({e.strerror})") from None
    return _Table(path, header, records, lines)


def _missing(table: _Table, own_ok: bool = False) -> list[str]:
    """The task labels (of the 19) that no column of the CSV names: extraction warns about them.
    `own_ok`: a CSV naming none of them is a dataset of its own labels, and lacks none."""
    present = {canonical(col) for col in table.header}
    missing = [name for name in LABELS if name not in present]
    return [] if own_ok and len(missing) == len(LABELS) else missing


def _not_utf8(path: Path) -> str:
    """Where the first non-UTF-8 byte of a file is: its line (and column), not a byte offset."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        return (f"{path} line {line}, column {col}: byte 0x{raw[e.start]:02x} is not UTF-8 ({e.reason}); "
                f"save the CSV as UTF-8")
    return f"{path}: not valid UTF-8; save the CSV as UTF-8"


def _check_unique(ids: list[str], table: _Table, column: str) -> None:
    seen: dict[str, int] = {}
    for i, line in zip(ids, table.lines, strict=True):
        if i == "":
            raise UserError(f"{table.source} line {line}: empty {column!r}")
        if i in seen:
            raise UserError(f"{table.source}: duplicate {column} {i!r} on lines {seen[i]} and {line}")
        seen[i] = line


def _labels(table: _Table, *, all_tasks: bool, extra: tuple[str, ...] = ()) -> tuple[list[str], np.ndarray]:
    """Label columns -> (canonical names, int8 matrix). `all_tasks`: absent task labels become all -1.
    `extra`: columns taken as labels although their names are not known labels (after the known ones)."""
    where: dict[str, str] = {}  # canonical name -> column
    extra_names: list[str] = []
    for col in dict.fromkeys(c.strip() for c in extra if c.strip()):
        if col not in table.header:
            raise UserError(f"--label-columns {col!r}: {table.source} has no such column "
                            f"(it has {', '.join(table.header)})")
        name = canonical(col)
        if name in KNOWN_LABELS or name == NO_FINDING:
            continue  # a known label is taken by name anyway
        if col in ("id", "dicom_id", *_PATH_COLUMNS):
            raise UserError(f"--label-columns {col!r}: that column holds ids or paths, not labels")
        where[name] = col
        extra_names.append(name)
    for col in table.header:
        name = canonical(col)
        if name in KNOWN_LABELS or name == NO_FINDING:
            if name in where:
                raise UserError(f"{table.source}: columns {where[name]!r} and {col!r} both name the label {name!r}")
            where[name] = col
    names = [n for n in KNOWN_LABELS if n in where or (all_tasks and n in LABELS)] + extra_names
    if NO_FINDING in where:
        names.append(NO_FINDING)
    if not where:
        raise UserError(
            f"{table.source}: no label columns found (it has {', '.join(table.header)}); "
            f"expected some of: {', '.join(KNOWN_LABELS)}, {NO_FINDING}; name your own label columns with "
            f"--label-columns"
        )
    out = np.full((len(table.records), len(names)), -1, dtype=np.int8)
    for j, name in enumerate(names):
        if name not in where:
            continue
        col = where[name]
        values = table.column(col)
        try:
            out[:, j] = [_VALUES[v] for v in values]
        except KeyError:
            k = next(k for k, v in enumerate(values) if v not in _VALUES)
            raise UserError(
                f"{table.source} line {table.lines[k]}, column {col!r}: label value {values[k]!r} "
                f"(allowed: 1, 0, -1 or blank for unknown)"
            ) from None
    return names, out
