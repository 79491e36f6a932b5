"""`cxrfeat`: stage one of the toolkit (datasets, synthetic data, feature extraction into Zarr)."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrfeat.cliutil import App, friendly

app = App(
    help="Stage one: chest X-ray datasets and ResNet50 feature extraction into Zarr stores.\n\n"
    "Typical use: `cxrfeat synth` (synthetic demo data), then `cxrfeat extract --split train` "
    "(and val, test), then `cxrfeat info features/nih-cxr-lt/train.zarr`.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.command()
@friendly
def extract(
    split: str = typer.Option(..., "--split", help="Which split to extract: train, val or test."),
    dataset: str = typer.Option("nih-cxr-lt", "--dataset", help="nih-cxr-lt, mimic-cxr-lt (the paper's external test set, or a CXR-LT 2023 training set) or csv (your own data: {split}.csv files; docs/own-data.md)."),
    name: str = typer.Option(None, "--name", help="For --dataset csv: your dataset's name, which names its stores (<out>/<name>/<split>.zarr), `heads sweep --dataset NAME` and its test set in reports (letters, digits, '.', '_', '-'). Default: the name of the folder holding the label CSV (--csv's, else --data-dir: data/clinic gives clinic)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Dataset folder (default data/<dataset>)."),
    csv: Path = typer.Option(None, "--csv", help="For --dataset csv: the label CSV (default <data-dir>/<split>.csv)."),
    source_split: str = typer.Option(None, "--source-split", help="The split's name in the dataset's own label files, when it differs from --split (CXR-LT 2023: --split val --source-split development)."),
    label_columns: str = typer.Option(None, "--label-columns", help="For --dataset csv: comma-separated columns to take as labels besides the known label names (e.g. 'Scoliosis,Kyphosis')."),
    out: Path = typer.Option(Path("features"), "--out", help="Features folder; the store is <out>/<dataset>/<split>.zarr (<out>/<name>/<split>.zarr for --dataset csv)."),
    views: int = typer.Option(None, "--views", help="Views per image: view 0 plain, the rest augmented (default 8 for train, 1 otherwise)."),
    weights: str = typer.Option("microsoft/resnet-50", "--weights", help="Hugging Face hub name, a local checkpoint folder, or 'random' (offline smoke runs; recorded in the store)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Backbone forward passes per device and call (images x views, default 64; at most one store chunk of images). Every local device (GPU) gets its own batch in each call."),
    workers: int = typer.Option(None, "--workers", help="Decode/preprocess threads (default 8 per device, at least 16, at most 2 x CPU cores)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N rows (quick looks)."),
    dtype: str = typer.Option("float16", "--dtype", help="Embedding dtype in the store: float16 or float32."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip missing/corrupt images (recorded in the store) instead of stopping."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store (e.g. one made with different settings): the new one is built beside it and swapped in only when complete."),
    repair: bool = typer.Option(False, "--repair", help="Recompute only the damaged chunks of a store that `cxrfeat verify` refuses (same options as the command that made it)."),
    seed: int = typer.Option(0, "--seed", help="Augmentation seed: view v of row r is drawn from (seed, r, v)."),
    part: str = typer.Option(None, "--part", help="i/N: fill only the i-th of N chunk ranges of the store, so that N processes (e.g. a cluster array job, --part $((SLURM_ARRAY_TASK_ID+1))/N) fill one store at once; the last part to finish completes it. Same other options in every part; not with --overwrite or --repair."),
):
    """Embed a dataset split with the ResNet50 backbone into a resumable Zarr store, on every local device.

    Kill it at any time and run the same command again: it continues where it stopped. One
    process at a time works on a store (a second one waits for the first), or on one part of it
    with --part i/N (parts run at the same time; the result equals a one-process store bit for bit).

    Example (the store features/nih-cxr-lt/train.zarr, 8 views per image):
        cxrfeat extract --split train --data-dir data/nih-cxr-lt --out features

    Your own data (data/clinic/train.csv with a path column and 0/1 label columns; the store
    features/clinic/train.zarr):
        cxrfeat extract --split train --dataset csv --data-dir data/clinic \\
            --label-columns Scoliosis,Pacemaker
    """
    from cxrfeat.extract import extract as run_extract

    path, timing = run_extract(
        dataset=dataset, split=split, data_dir=data_dir, out=out, name=name, csv=csv, source_split=source_split,
        label_columns=[c for c in (label_columns or "").split(",") if c.strip()], views=views, weights=weights,
        batch_size=batch_size, workers=workers, limit=limit, dtype=dtype, skip_bad=skip_bad,
        overwrite=overwrite, repair=repair, seed=seed, part=part, announce=_announce,
    )
    if timing.images:
        t = timing.as_dict()
        typer.echo(
            f"wrote {path}{f' (part {part})' if part else ''}: {t['images']} images ({t['forward_passes']} views) "
            f"on {t['devices']} device(s) in {t['wall_s']} s = "
            f"{t['images_per_s']} images/s; backbone {t['backbone_s']} s, decode+preprocess "
            f"{t['decode_preprocess_s_summed_over_threads']} s over threads, waited for decode {t['waited_for_decode_s']} s"
        )


@app.command()
@friendly
def export(
    store: Path = typer.Argument(..., help="A complete feature store (.zarr)."),
    out: Path = typer.Argument(..., help="The HDF5 file to write."),
):
    """Write a feature store's arrays and attributes to HDF5 (h5py) for other tools."""
    from cxrfeat.extract import export_h5

    typer.echo(f"wrote {export_h5(store, out)}")


@app.command()
@friendly
def verify(
    paths: list[Path] = typer.Argument(..., help="Feature stores or image caches (.zarr), or folders of them (e.g. features)."),
):
    """Check that every chunk file of every array exists and matches the checksum recorded when it was written.

    Exit status 0 when all are intact, 2 when any is damaged or incomplete (each damaged chunk is named,
    with the command that repairs it). Readers run the same check before using a store.

    Example:
        cxrfeat verify features
    """
    import sys

    from cxrfeat.verify import stores_under, verify_store

    stores = [s for p in paths for s in stores_under(p)]
    bad = 0
    for path in stores:
        verdict = verify_store(path)
        for line in verdict.lines():
            stream = sys.stdout if line.startswith(("ok:", "damaged:")) else sys.stderr
            print(line, file=stream)
        bad += verdict.state != "ok"
    if bad:
        raise typer.Exit(2)


def _announce(message: str) -> None:
    from rich.panel import Panel

    from cxrfeat.console import make_console

    make_console(stderr=True).print(Panel(message, style="bold red", title="notice"))


@app.command()
@friendly
def weights(
    name: str = typer.Argument("microsoft/resnet-50", help="Hub name or local checkpoint folder."),
    or_random: bool = typer.Option(False, "--or-random", help="When it cannot be fetched, say so loudly and print 'random' instead of failing."),
):
    """Fetch (into the Hugging Face cache) and check backbone weights; print the --weights value to use.

    The demo uses `cxrfeat weights microsoft/resnet-50 --or-random`: the pretrained weights when the hub
    (or its cache) has them, else a random-weight ResNet-50, announced on stderr, never silently.
    """
    from cxrfeat.errors import UserError
    from cxrfeat.weights import resolve

    try:
        ckpt = resolve(name)
    except UserError as e:
        if not or_random:
            raise
        _announce(f"Pretrained weights unavailable: {e}\n\nFALLING BACK TO --weights random for this demo.")
        typer.echo("random")
        return
    typer.echo(name, nl=True)
    typer.echo(f"weights ok: {ckpt.provenance}", err=True)


@app.command()
@friendly
def synth(
    out_dir: Path = typer.Argument(Path("data"), help="Where to write nih-cxr-lt/ and mimic-cxr-lt/ (default data)."),
    n_train: int = typer.Option(400, "--n-train", help="Training images (NIH layout)."),
    n_val: int = typer.Option(100, "--n-val", help="Validation images (NIH layout)."),
    n_test: int = typer.Option(200, "--n-test", help="Test images (NIH layout)."),
    n_external: int = typer.Option(200, "--n-external", help="Frontal external-test images (MIMIC layout; a few lateral rows are added)."),
    image_size: int = typer.Option(256, "--image-size", help="Image width in pixels (real NIH images are 1024)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same dataset."),
    labels: int = typer.Option(19, "--labels", help="Disease labels: the paper's 19 (default), or up to 40 (the 19, then the CXR-LT 2023/2024 findings) for wide DQC heads."),
):
    """Write a small SYNTHETIC dataset: NIH-CXR-LT layout (train/val/test) plus a MIMIC-CXR-LT external test set.

    Grey chest-like images on which every label draws its own texture, long-tailed and co-occurring labels (Table I), and a second-hospital shift in the external set. For demos and tests only.
    """
    import time

    from cxrfeat.console import make_console
    from cxrfeat.info import dataset_summary, render
    from cxrfeat.synth import write_synthetic

    t0 = time.perf_counter()
    result = write_synthetic(out_dir, n_train=n_train, n_val=n_val, n_test=n_test, n_external=n_external,
                             image_size=image_size, seed=seed, n_labels=labels)
    console = make_console()
    console.print(f"[bold red]SYNTHETIC[/] data written to {out_dir} in {time.perf_counter() - t0:.1f} s "
                  f"(seed {seed}, {image_size} px wide, {labels} labels): not real chest X-rays.")
    for name in ("nih-cxr-lt", "mimic-cxr-lt"):
        render(dataset_summary(result[name]["path"]), console)


@app.command()
@friendly
def info(
    path: Path = typer.Argument(..., help="A dataset folder (NIH-CXR-LT, MIMIC-CXR-LT or {split}.csv files), a feature store or image cache (.zarr), or a folder holding any of them (e.g. features, data; searched 3 levels deep)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
    label_columns: str = typer.Option("", "--label-columns", help="For a folder of your own {split}.csv files: its label columns whose names are not the paper's labels, comma-separated, as for `cxrfeat extract --label-columns`."),
    name: str = typer.Option(None, "--name", help="For a folder of your own {split}.csv files: the name its stores and test set will go by (`cxrfeat extract --name`). Default: the folder's name."),
):
    """Rows and label counts per split (like the paper's Table I); for a store also views, backbone, dtype and
    completeness; for an image cache its shards and source. A damaged store or cache (a chunk missing or
    failing its checksum) is one `error:` line instead, and the exit status is 2."""
    import json
    import sys

    from cxrfeat.console import make_console
    from cxrfeat.info import errors, render, summary

    result = summary(path, label_columns=[c for c in label_columns.split(",") if c.strip()], name=name)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        render(result, make_console())
    for line in errors(result):
        print(f"error: {line}", file=sys.stderr)
    if errors(result):
        raise typer.Exit(2)


if __name__ == "__main__":  # `python -m cxrfeat.cli`
    app()
