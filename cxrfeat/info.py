"""`cxrfeat info`: what a dataset folder, a feature store or an image cache holds (rows, label counts,
provenance), or every one of them under a folder (`cxrfeat info features`, `cxrfeat info data`).

An image cache (`heads finetune`'s `features/images/<dataset>/<split>.zarr`) is a Zarr store like a
feature store, with `images` where a feature store has `embeddings` and `kind: "image-cache"`.

A store or cache is checked against its checksums before anything is counted (`FeatureStore.integrity`:
every file of a complete one, the chunks written so far of an incomplete one): a damaged one is one
line naming the damage, `cxrfeat verify` and the repair, never counts read from fill values. In a
folder listing it is an item of kind "error" (shown as `error: ...`; `cxrfeat info` then exits 2).
"""

from __future__ import annotations

import re
from pathlib import Path

from cxrfeat.console import print_table
from cxrfeat.errors import UserError
from cxrfeat.imagecache import KIND as IMAGE_CACHE_KIND
from cxrfeat.labels import LABELS
from cxrfeat.store import SPLIT_ORDER, store_key
from cxrfeat.synth import is_synthetic

_NIH = re.compile(r"^miccai2023_nih-cxr-lt_labels_(\w+)\.csv$")
_MIMIC = re.compile(r"^(?:miccai2023_mimic-cxr-lt_labels_|mimic-cxr-lt_)(\w+)\.csv$")


SEARCH_DEPTH = 3  # folder levels searched for stores and datasets: features/images/<dataset>/<split>.zarr


def is_store(path: Path) -> bool:
    return (path / "zarr.json").is_file() and (path / "embeddings").exists()


def is_image_cache(path: Path) -> bool:
    return (path / "zarr.json").is_file() and (path / "images").exists()


def is_dataset(path: Path) -> bool:
    try:
        detect_dataset(path)
    except UserError:
        return False
    return True


def _ordered(splits) -> list[str]:
    splits = sorted(set(splits))
    return [s for s in SPLIT_ORDER if s in splits] + [s for s in splits if s not in SPLIT_ORDER]


def detect_dataset(path: str | Path) -> tuple[str, list[str]]:
    """(dataset name, splits) of a dataset folder: NIH-CXR-LT, MIMIC-CXR-LT, or generic `{split}.csv` files."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder")
    names = [p.name for p in path.glob("*.csv")]
    nih = [m.group(1) for n in names if (m := _NIH.match(n))]
    if nih:
        return "nih-cxr-lt", _ordered(nih)
    mimic = [m.group(1) for n in names if (m := _MIMIC.match(n))]
    if mimic:
        return "mimic-cxr-lt", _ordered(mimic)
    if (path / "files").is_dir() and len(names) == 1:
        return "mimic-cxr-lt", [Path(names[0]).stem]
    if names:
        return "csv", _ordered(Path(n).stem for n in names)
    raise UserError(f"{path}: neither a dataset folder (no label CSV), a feature store or image cache (no "
                    f"zarr.json), nor a folder holding any of them")


def dataset_summary(path: str | Path, *, label_columns=(), name: str | None = None) -> dict:
    """Rows and label counts per split of a dataset folder (the paper's Table I for that folder).

    For `{split}.csv` files (your own data): `label_columns` are its own label columns (as for
    `cxrfeat extract --label-columns`) and the dataset goes by `name`, else by its folder's name, as
    its stores and test set will (`cxrfeat.datasets.dataset_name`)."""
    from cxrfeat.datasets import dataset_name, load_split

    path = Path(path)
    reader, splits = detect_dataset(path)
    name_given = name
    if reader == "csv":
        try:
            name = dataset_name("csv", data_dir=path, name=name_given)
        except UserError:
            if name_given is not None:
                raise
            name = "csv"  # a folder named like a paper dataset: extract will ask for --name
    else:
        name = reader
    out = {"kind": "dataset", "dataset": name, "reader": reader, "path": str(path),
           "synthetic": is_synthetic(path), "splits": {}}
    for split in splits:
        ds = load_split(reader, path, split, label_columns=label_columns if reader == "csv" else ())
        out["splits"][split] = {
            "rows": len(ds),
            "source": str(ds.source),
            "label_names": ds.label_names,
            "positives": ds.label_counts(),
            "unknown": {n: int((ds.labels[:, j] == -1).sum()) for j, n in enumerate(ds.label_names)},
        }
    return out


def store_summary(path: str | Path) -> dict:
    """Shape, provenance, label counts and completeness of a feature store (complete or not)."""
    from cxrfeat.store import FeatureStore

    store = FeatureStore.open(path, require_complete=False)
    _refuse_damage(store)
    attrs = store.attrs
    labels, valid = store.labels, store.valid
    done = store.done_chunks()
    return {
        "kind": "store",
        "path": str(store.path),
        "dataset": attrs.get("dataset"),
        "split": attrs.get("split"),
        "synthetic": attrs.get("synthetic"),
        "rows": store.n_rows,
        "valid_rows": int(valid.sum()),
        "views": store.views,
        "dim": attrs.get("dim"),
        "dtype": attrs.get("dtype"),
        "backbone": attrs.get("backbone"),
        "seed": attrs.get("seed"),
        "created": attrs.get("created"),
        "package_version": attrs.get("package_version"),
        "complete": store.complete,
        "chunks_done": int(done.sum()),
        "chunks_total": store.n_chunks,
        "parts": part_progress(store, done),
        "skipped_ids": list(attrs.get("skipped_ids", [])),
        "label_names": store.label_names,
        "positives": {n: int((labels[valid, j] == 1).sum()) for j, n in enumerate(store.label_names)},
        "unknown": {n: int((labels[valid, j] == -1).sum()) for j, n in enumerate(store.label_names)},
    }


def _refuse_damage(store) -> None:
    """A one-line UserError when a file the store should hold by now is missing or fails its checksum."""
    damage = store.integrity()
    if damage:
        raise UserError(store.damage_message(damage))


def part_progress(store, done) -> list[dict]:
    """Per `--part i/N` run recorded in the store: its chunk range, chunks done, and its state
    (done; running, while its lock is held by a live process; stopped: killed or failed, re-run it)."""
    from cxrfeat import locks
    from cxrfeat.store import part_lock_path

    out = []
    for r in store.parts():
        part = (int(r["part"]), int(r["parts"]))
        a, b = (int(x) for x in r.get("chunks", (0, 0)))
        n_done = int(done[a:b].sum())
        owner = locks.read_owner(part_lock_path(store.path, part))
        if n_done == b - a and (r.get("state") == "done" or store.complete):
            state = "done"
        elif owner is not None and not locks.is_stale(owner):
            state = f"running ({locks.describe(owner)})"
        else:
            state = f"stopped: re-run it with --part {part[0]}/{part[1]} to resume"
        out.append({"part": f"{part[0]}/{part[1]}", "chunks": [a, b], "chunks_done": n_done,
                    "chunks_total": b - a, "state": state})
    return out


def cache_summary(path: str | Path) -> dict:
    """Rows, provenance, label counts and completeness of an image cache (complete or not)."""
    from cxrfeat.store import open_group
    from cxrfeat.verify import _kind

    path = Path(path)
    g = open_group(path, "r", what="image cache", hint="`heads finetune` builds it")
    if g.attrs.get("kind") != IMAGE_CACHE_KIND:
        raise UserError(f"{path}: not an image cache of this toolkit (kind {g.attrs.get('kind')!r})")
    cache = _kind(path).open(path, require_complete=False)  # its arrays' metadata parsed and checked there
    _refuse_damage(cache)
    attrs = cache.attrs
    names = cache.label_names
    labels, valid = cache.labels, cache.valid
    done = cache.done_chunks()
    return {
        "kind": IMAGE_CACHE_KIND,
        "path": str(path),
        "dataset": attrs.get("dataset"),
        "split": attrs.get("split"),
        "source": attrs.get("source"),
        "synthetic": attrs.get("synthetic"),
        "rows": int(labels.shape[0]),
        "valid_rows": int(valid.sum()),
        "image_shape": list(g["images"].shape[1:]),
        "dtype": attrs.get("dtype"),
        "preprocessing": attrs.get("preprocessing"),
        "created": attrs.get("created"),
        "package_version": attrs.get("package_version"),
        "complete": cache.complete,
        "chunks_done": int(done.sum()),
        "chunks_total": cache.n_chunks,
        "label_names": names,
        "positives": {n: int((labels[valid, j] == 1).sum()) for j, n in enumerate(names)},
        "unknown": {n: int((labels[valid, j] == -1).sum()) for j, n in enumerate(names)},
    }


def find(path: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Feature stores, image caches and dataset folders under `path`, up to `depth` levels down
    (the inside of a store or a dataset folder is not searched), in listing order (`store_key`: train, val,
    test, then other splits)."""
    found = []
    if depth < 1:
        return found
    for child in sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=store_key):
        if is_store(child) or is_image_cache(child) or (child.suffix != ".zarr" and is_dataset(child)):
            found.append(child)
        elif child.suffix != ".zarr":
            found += find(child, depth - 1)
    return found


def one(path: Path, **csv) -> dict:
    if is_store(path):
        return store_summary(path)
    if is_image_cache(path):
        return cache_summary(path)
    return dataset_summary(path, **csv)


def summary(path: str | Path, *, label_columns=(), name: str | None = None) -> dict | list[dict]:
    """A store, an image cache or a dataset folder (one dict), or every one of them under a folder
    (a list: e.g. `features/nih-cxr-lt`, `features`, `features/images`, `data`). `label_columns`,
    `name`: for folders of your own `{split}.csv` files (`dataset_summary`)."""
    csv = {"label_columns": tuple(label_columns), "name": name}
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if is_store(path) or is_image_cache(path) or not path.is_dir() or is_dataset(path):
        return one(path, **csv)
    found = find(path)
    if found:
        return [_one_or_error(p, **csv) for p in found]
    return dataset_summary(path, **csv)  # raises the "neither ... nor" error


def _one_or_error(path: Path, **csv) -> dict:
    """`one`, or in a listing of many the one-line error of a damaged or unreadable one (kind "error")."""
    try:
        return one(path, **csv)
    except UserError as e:
        return {"kind": "error", "path": str(path), "error": str(e)}


def errors(info: dict | list[dict]) -> list[str]:
    """The error lines of a summary (damaged or unreadable stores and caches in a folder listing)."""
    return [i["error"] for i in (info if isinstance(info, list) else [info]) if i["kind"] == "error"]


# ------------------------------------------------------------------------------------------ rendering
def _label_rows(names_per_col: list[list[str]]) -> list[str]:
    seen = {n for names in names_per_col for n in names}
    return [n for n in LABELS if n in seen] + sorted(seen - set(LABELS))


def label_table(columns: dict[str, dict], *, total: bool = True):
    """A rich Table like the paper's Table I: one row per label, one column per split (positives)."""
    from rich.table import Table

    table = Table()
    table.add_column("Label")
    for col in columns:
        table.add_column(col, justify="right")
    if total and len(columns) > 1:
        table.add_column("Total", justify="right")
    rows = _label_rows([list(c["positives"]) for c in columns.values()])
    for name in rows:
        cells = []
        for c in columns.values():
            pos = c["positives"].get(name)
            unk = c.get("unknown", {}).get(name, 0)
            cells.append("-" if pos is None else f"{pos}" + (f" (+{unk} unk.)" if unk else ""))
        if total and len(columns) > 1:
            cells.append(str(sum(c["positives"].get(name, 0) for c in columns.values())))
        table.add_row(name, *cells)
    table.add_section()
    row_cells = [str(c["rows"]) for c in columns.values()]
    if total and len(columns) > 1:
        row_cells.append(str(sum(c["rows"] for c in columns.values())))
    table.add_row("rows", *row_cells)
    return table


def render(info: dict | list[dict], console) -> None:
    items = info if isinstance(info, list) else [info]
    groups: dict[tuple[str, str], list[dict]] = {}
    for i in items:
        if i["kind"] not in ("dataset", "error"):
            groups.setdefault((i["kind"], str(i.get("dataset"))), []).append(i)
    for (kind, dataset), group in groups.items():  # one table over the splits of each dataset
        if len(group) > 1:
            what = "stores" if kind == "store" else "image caches"
            console.print(f"[bold]Positives per label in the {what} of {dataset}[/] (valid rows)")
            print_table(console, label_table({Path(i["path"]).stem: {**i, "rows": i["valid_rows"]} for i in group}))
    for item in items:
        if item["kind"] == "error":
            continue  # `errors`: printed as `error:` lines on stderr by the CLI
        if item["kind"] == "dataset":
            _render_dataset(item, console)
        elif item["kind"] == IMAGE_CACHE_KIND:
            _render_cache(item, console, counts=len(groups[(item["kind"], str(item.get("dataset")))]) == 1)
        else:
            _render_store(item, console, counts=len(groups[(item["kind"], str(item.get("dataset")))]) == 1)


def _kv_table(title: str, rows: list[tuple[str, str]]):
    """A two-column (name, value) rich table with a left-justified title."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for name, value in rows:
        t.add_row(name, value)
    return t


def _render_cache(info: dict, console, *, counts: bool) -> None:
    flag = "  [bold red]SYNTHETIC DATA[/]" if info.get("synthetic") else ""
    done = f"{info['chunks_done']}/{info['chunks_total']} shards"
    state = (f"[green]complete[/]: {done}" if info["complete"] else
             f"[red]INCOMPLETE[/]: {done} (rerun the same `heads finetune` command to finish it)")
    print_table(console, _kv_table(f"{info['path']} (image cache of `heads finetune`){flag}", [
        ("dataset / split", f"{info['dataset']} / {info['split']}"),
        ("rows", f"{info['rows']}"),
        ("images", f"{' x '.join(map(str, info['image_shape']))}  ({info['dtype']}, preprocessed)"),
        ("source", str(info.get("source"))),
        ("state", state),
        ("created", f"{info.get('created')} (cxr-qtl {info.get('package_version')})"),
    ]))
    if counts:
        console.print("[bold]Positives per label[/] (unk. = unknown)")
        print_table(console, label_table({info["split"] or "rows": {**info, "rows": info["valid_rows"]}}))


def _render_dataset(info: dict, console) -> None:
    flag = "  [bold red]SYNTHETIC DATA (not real X-rays)[/]" if info["synthetic"] else ""
    console.print(f"[bold]{info['path']}[/]: dataset {info['dataset']}{flag}")
    console.print(f"[bold]Positives per label and split[/] ({info['dataset']}; unk. = unknown, -1 or blank)")
    print_table(console, label_table(info["splits"]))


def _render_store(info: dict, console, *, counts: bool) -> None:
    flag = "  [bold red]SYNTHETIC DATA[/]" if info.get("synthetic") else ""
    done = f"{info['chunks_done']}/{info['chunks_total']} chunks"
    state = (f"[green]complete[/]: {done}" if info["complete"] else
             f"[red]INCOMPLETE[/]: {done} (rerun the same `cxrfeat extract` to finish)")
    bb = info.get("backbone") or {}
    backbone = bb.get("name", "?") if isinstance(bb, dict) else str(bb)
    if isinstance(bb, dict) and bb.get("random"):
        backbone += f" [bold red](RANDOM weights, seed {bb.get('seed')})[/]"
    elif isinstance(bb, dict):
        extra = [f"revision {bb['revision'][:12]}" if bb.get("revision") else "",
                 f"sha256 {bb['sha256'][:12]}" if bb.get("sha256") else ""]
        backbone += f" ({', '.join(e for e in extra if e)})" if any(extra) else ""
    skipped = info["skipped_ids"]
    print_table(console, _kv_table(f"{info['path']}{flag}", [
        ("dataset / split", f"{info['dataset']} / {info['split']}"),
        ("rows", f"{info['rows']} ({info['valid_rows']} valid)"),
        ("views x dim", f"{info['views']} x {info['dim']}  ({info['dtype']})"),
        ("backbone", backbone),
        ("state", state),
        *[(f"part {p['part']}", f"{p['chunks_done']}/{p['chunks_total']} chunks"
           + (f" (chunks {p['chunks'][0]}..{p['chunks'][1] - 1})" if p["chunks_total"] else "")
           + f": {p['state']}") for p in info.get("parts", [])],
        ("skipped ids", ", ".join(skipped[:10]) + (f" ... ({len(skipped)} in all)" if len(skipped) > 10 else "")
         if skipped else "none"),
        ("created", f"{info.get('created')} (cxr-qtl {info.get('package_version')})"),
    ]))
    if counts:
        console.print("[bold]Positives per label[/] (valid rows; unk. = unknown)")
        print_table(console, label_table({info["split"] or "rows": {**info, "rows": info["valid_rows"]}}))

