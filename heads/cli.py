"""`heads`: stage two of the toolkit (CDL and DQC heads on cached features, sweeps, benchmarks)."""

from __future__ import annotations

import typer

from cxrfeat.cliutil import App, friendly

app = App(
    help="Stage two: train classical (CDL) and dressed-quantum-circuit (DQC) heads on cached features.\n\n"
    "Typical use: `heads sweep --tasks 8,14,19 --seeds 5`, `heads bench`, `heads params`.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


# ---------------------------------------------------------------- train, sweep, params
from enum import StrEnum  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

_Features = Annotated[Path, typer.Option("--features", help="Features folder: <features>/<dataset>/<split>.zarr.")]
_Runs = Annotated[Path, typer.Option("--runs", help="Runs folder: runs go to <runs>/<name>/<task>/<model>/[<config>/]seed-<s>/ (<task>: cxr-8 etc., or your task's name; <config>: a grid configuration).")]
_Name = Annotated[str, typer.Option("--name", help="Sweep folder name under --runs (shared by `heads train` and `heads sweep`).")]
_Seeds = Annotated[int, typer.Option("--seeds", help="Number of seeds, numbered 1..N, trained together.")]
_Layers = Annotated[int, typer.Option("--layers", help="DQC circuit layers (RY + CNOT ring).")]
_Backend = Annotated[str, typer.Option("--backend", help="Quantum simulator: fast (the cheapest exact method for the width and depth, heads.quantum.method), mps (matrix-product state, linear in n), halves (factored halves), statevector (plain state vector) or pennylane (reference).")]
_Lr = Annotated[float, typer.Option("--lr", help="Adam learning rate.")]
_Batch = Annotated[int, typer.Option("--batch-size", help="Training batch size (the last batch is padded, not dropped).")]
_MaxEpochs = Annotated[int, typer.Option("--max-epochs", help="At most this many epochs.")]
_Patience = Annotated[int, typer.Option("--patience", help="Stop a seed after this many epochs without a lower validation loss.")]
_CircuitInit = Annotated[str, typer.Option("--circuit-init", help="RY angles: uniform in [0, 2pi) (paper text) or normal (std 2pi, its public code).")]
_Dataset = Annotated[str, typer.Option("--dataset", help="Training dataset: its train, val and test stores (<features>/<dataset>/<split>.zarr) are used, and its test set is named after it. Your own CSV data: the --name it was extracted under (docs/own-data.md).")]
_TaskName = Annotated[str, typer.Option("--task-name", help="Name of the task made from your data's own labels (--tasks all or --tasks-file): letters, digits, '.', '_', '-', e.g. clinic-3; it names the run folders and the report's rows. Default: <dataset>-<number of labels> (e.g. clinic-3) for your own dataset, the file's name for --tasks-file; the paper's CXR-8/14/19 keep their names.")]
_FeatureNorm = Annotated[str, typer.Option("--feature-norm", help="none (the paper) or standardize: z-score each embedding dimension with the training split's statistics (needed for random-weight backbones, whose embeddings saturate the DQC's tanh).")]
_External = Annotated[str, typer.Option("--external", help="External test set, used when <features>/<external>/test.zarr exists ('none': never).")]


class ViewsFrom(StrEnum):
    augmented = "augmented"
    all = "all"


_ViewsFrom = Annotated[ViewsFrom, typer.Option("--views-from", help="Stored views an epoch draws its one view per example from: augmented (views 1..V-1, the design; view 0 when the store has only it) or all (0..V-1, view 0 being the plain image).")]
_GRID = ' A comma-separated list sweeps a grid (the product of all such lists; see docs/training.md "Hyper-parameter grids").'
_LrList = Annotated[str, typer.Option("--lr", help="Adam learning rate." + _GRID + " Learning rates train together as per-member data.")]
_LayersList = Annotated[str, typer.Option("--layers", help="DQC circuit layers (RY + CNOT ring)." + _GRID + " CDL ignores it.")]
_BatchList = Annotated[str, typer.Option("--batch-size", help="Training batch size (the last batch is padded, not dropped)." + _GRID)]
_PatienceList = Annotated[str, typer.Option("--patience", help="Stop a seed after this many epochs without a lower validation loss." + _GRID)]
_CircuitInitList = Annotated[str, typer.Option("--circuit-init", help="RY angles: uniform in [0, 2pi) (paper text) or normal (std 2pi, its public code)." + _GRID + " CDL ignores it.")]
_Noise = Annotated[str, typer.Option("--noise", help="Train the DQC under a device noise model: a TOML file or a preset (sycamore-2019; see docs/design.md, Noise). Its circuit averages --trajectories noise trajectories per example, drawn reproducibly per (seed, epoch, row); --backend density trains on the exact noisy circuit (up to 12 qubits). CDL is unaffected.")]
_NoiseScaleList = Annotated[str, typer.Option("--noise-scale", help="Multiply the --noise model's error rates by this (0: the ideal circuit, so 0,1 trains ideal and noisy heads side by side)." + _GRID)]
_TrajectoriesList = Annotated[str, typer.Option("--trajectories", help="Noise trajectories per example and step under --noise (more: a less noisy gradient, proportionally slower)." + _GRID)]
_FeatureNormList = Annotated[str, typer.Option("--feature-norm", help="none (the paper) or standardize: z-score each embedding dimension with the training split's statistics (needed for random-weight backbones, whose embeddings saturate the DQC's tanh)." + _GRID)]


def _spec(*, tasks, tasks_file, tasks_option, models, seeds, features, runs, name, layers, backend, lr, batch_size,
          max_epochs, patience, circuit_init, dataset, external, shard=None, feature_norm="none",
          views_from=ViewsFrom.augmented, noise=None, noise_scale="1", trajectories="1", task_name=None):
    """The sweep of `heads train` and `heads sweep`: `tasks` as the option `tasks_option` gives them (plus
    `tasks_file`, the task of the data's own labels named `task_name`), `models` comma-separated; each of lr, layers, circuit_init, feature_norm,
    batch_size, patience may be a comma-separated list (a grid)."""
    from cxrfeat.errors import UserError
    from cxrfeat.labels import parse_task_specs
    from heads.grid import SETTINGS, parse_values
    from heads.noise import NoiseModel
    from heads.plan import HeadConfig, SweepSpec, parse_models, parse_shard
    from heads.train import TrainConfig

    try:
        tasks = parse_task_specs(tasks, tasks_file, task_name)
    except ValueError as e:
        raise UserError(f"{tasks_option}: {e}") from None
    models = parse_models(models)

    given = {"lr": lr, "layers": layers, "circuit_init": circuit_init, "feature_norm": feature_norm,
             "batch_size": batch_size, "patience": patience, "noise_scale": noise_scale, "trajectories": trajectories}
    values = {k: parse_values(k, given[k]) for k in SETTINGS}
    first = {k: v[0] for k, v in values.items()}
    return SweepSpec(
        tasks=tasks, models=models, seeds=seeds, features=features, runs=runs, name=name, dataset=dataset,
        external=None if external.lower() in ("", "none") else external,
        train=TrainConfig(lr=first["lr"], batch_size=first["batch_size"], max_epochs=max_epochs, patience=first["patience"]),
        head=HeadConfig(layers=first["layers"], backend=backend, circuit_init=first["circuit_init"],
                        noise=None if noise is None else NoiseModel.load(noise), noise_scale=first["noise_scale"],
                        trajectories=first["trajectories"]),
        shard=parse_shard(shard), feature_norm=first["feature_norm"],
        grid={k: v for k, v in values.items() if len(v) > 1}, views_from=ViewsFrom(views_from).value,
    )


def _run(spec) -> None:
    from heads.sweepview import run_with_console

    run_with_console(spec)


@app.command()
@friendly
def train(
    task: Annotated[str, typer.Option("--task", help="Task: 8, 14 or 19 (the paper's CXR-8/14/19), or all (every label of the training store but No Finding).")] = "8",
    tasks_file: Annotated[Path, typer.Option("--tasks-file", help="A task from a file instead of --task: one label name a line, or a label set name (nih-cxr-lt, cxr-lt-2023, cxr-lt-2024).")] = None,
    model: Annotated[str, typer.Option("--model", help="Head: cdl or dqc.")] = "dqc",
    seeds: _Seeds = 5,
    features: _Features = Path("features"),
    runs: _Runs = Path("runs"),
    name: _Name = "sweep",
    layers: _Layers = 3,
    backend: _Backend = "fast",
    lr: _Lr = 1e-4,
    batch_size: _Batch = 32,
    max_epochs: _MaxEpochs = 50,
    patience: _Patience = 5,
    circuit_init: _CircuitInit = "uniform",
    dataset: _Dataset = "nih-cxr-lt",
    external: _External = "mimic-cxr-lt",
    feature_norm: _FeatureNorm = "none",
    views_from: _ViewsFrom = ViewsFrom.augmented,
    noise: _Noise = None,
    noise_scale: Annotated[float, typer.Option("--noise-scale", help="Multiply the --noise model's error rates by this (0: the ideal circuit).")] = 1.0,
    trajectories: Annotated[int, typer.Option("--trajectories", help="Noise trajectories per example and step under --noise.")] = 1,
    task_name: _TaskName = None,
):
    """Train one head (task, model) for every seed at once; finished seeds are skipped.

    Example (your own CSV data, extracted as clinic; docs/own-data.md):
        heads train --dataset clinic --external none --task all --task-name clinic-3 --model dqc
    """
    _run(_spec(tasks="" if tasks_file is not None else str(task), tasks_file=tasks_file, tasks_option="--task",
               models=model, seeds=seeds, features=features, runs=runs, name=name,
               layers=layers, backend=backend, lr=lr, batch_size=batch_size, max_epochs=max_epochs,
               patience=patience, circuit_init=circuit_init, dataset=dataset, external=external,
               feature_norm=feature_norm, views_from=views_from, noise=noise, noise_scale=str(noise_scale),
               trajectories=str(trajectories), task_name=task_name))


@app.command()
@friendly
def sweep(
    tasks: Annotated[str, typer.Option("--tasks", help="Tasks, comma-separated: 8,14,19 (the paper's), all (every label of the training store but No Finding; qubits in its label order). Empty with --tasks-file.")] = "8,14,19",
    seeds: _Seeds = 5,
    models: Annotated[str, typer.Option("--models", help="Heads, comma-separated: cdl,dqc.")] = "cdl,dqc",
    tasks_file: Annotated[Path, typer.Option("--tasks-file", help="One more task from a file: one label name a line (aliases allowed, # comments), or one label set name (nih-cxr-lt, cxr-lt-2023, cxr-lt-2024); named after the file.")] = None,
    shard: Annotated[str, typer.Option("--shard", help="i/N: run only the i-th of N contiguous slices of the grid's runs (cells: task, model, configuration, seed; 1-based). Seeds and configurations of one job still train together.")] = None,
    features: _Features = Path("features"),
    runs: _Runs = Path("runs"),
    name: _Name = "sweep",
    layers: _LayersList = "3",
    backend: _Backend = "fast",
    lr: _LrList = "1e-4",
    batch_size: _BatchList = "32",
    max_epochs: _MaxEpochs = 50,
    patience: _PatienceList = "5",
    circuit_init: _CircuitInitList = "uniform",
    dataset: _Dataset = "nih-cxr-lt",
    external: _External = "mimic-cxr-lt",
    feature_norm: _FeatureNormList = "none",
    views_from: _ViewsFrom = ViewsFrom.augmented,
    noise: _Noise = None,
    noise_scale: _NoiseScaleList = "1",
    trajectories: _TrajectoriesList = "1",
    task_name: _TaskName = None,
):
    """Train the grid tasks x models x configurations x seeds; re-running skips finished runs and redoes unfinished ones.

    Configurations with the same compiled shapes (same model, layers, batch size, feature norm, noise
    scale and trajectories) train together in one program: learning rates, patiences and circuit
    initialisers are per-member data.

    Examples: the paper's sweep; a learning-rate grid; ideal and noisy DQCs side by side (and the CDL
    once); your own CSV data, extracted with `cxrfeat extract --dataset csv --name clinic`
    (docs/own-data.md):

        heads sweep --tasks 8,14,19 --seeds 5
        heads sweep --tasks 8,14,19 --seeds 5 --lr 3e-4,1e-3,3e-3 --name grid
        heads sweep --tasks 8 --noise sycamore-2019 --noise-scale 0,3
        heads sweep --dataset clinic --external none --tasks all --task-name ward
    """
    _run(_spec(tasks=tasks, tasks_file=tasks_file, tasks_option="--tasks", models=models, seeds=seeds, features=features, runs=runs, name=name,
               layers=layers, backend=backend, lr=lr, batch_size=batch_size, max_epochs=max_epochs,
               patience=patience, circuit_init=circuit_init, dataset=dataset, external=external, shard=shard,
               feature_norm=feature_norm, views_from=views_from, noise=noise, noise_scale=noise_scale,
               trajectories=trajectories, task_name=task_name))


@app.command()
@friendly
def params(
    tasks: Annotated[str, typer.Option("--tasks", help="Tasks, comma-separated: 8,14,19.")] = "8,14,19",
    layers: _Layers = 3,
    dim: Annotated[int, typer.Option("--dim", help="Embedding size (2048 for ResNet50).")] = 2048,
):
    """Parameter counts by component (the paper's Table II) for CDL and DQC heads."""
    from cxrfeat.console import make_console, print_table
    from cxrfeat.labels import parse_task_option
    from heads.models import params_table

    print_table(make_console(), params_table(parse_task_option(tasks), layers, dim))


# ---------------------------------------------------------------- finetune (end to end on images)
@app.command()
@friendly
def finetune(
    task: Annotated[str, typer.Option("--task", help="Task: 8, 14 or 19 (the paper's CXR-8/14/19), or all (every label of the training split's CSV but No Finding).")] = "8",
    tasks_file: Annotated[Path, typer.Option("--tasks-file", help="A task from a file instead of --task: one label name a line, or a label set name (nih-cxr-lt, cxr-lt-2023, cxr-lt-2024).")] = None,
    model: Annotated[str, typer.Option("--model", help="Head: cdl or dqc (the run is named <model>-finetune).")] = "dqc",
    seed: Annotated[int, typer.Option("--seed", help="Seed (>= 1): head initialisation, batch order and augmentation.")] = 1,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="NIH-CXR-LT folder (label CSVs and images).")] = Path("data/nih-cxr-lt"),
    external_dir: Annotated[Path, typer.Option("--external-dir", help="MIMIC-CXR-LT folder for the external test (default: mimic-cxr-lt beside --data-dir, used when it exists).")] = None,
    weights: Annotated[str, typer.Option("--weights", help="Backbone: Hugging Face hub name, a local checkpoint folder, or 'random' (smoke runs; recorded).")] = "microsoft/resnet-50",
    freeze_backbone: Annotated[bool, typer.Option("--freeze-backbone", help="Train only the head, on images (the backbone is not differentiated).")] = False,
    init_head_from: Annotated[Path, typer.Option("--init-head-from", help="Start the head from a finished `heads train` run folder (runs/<name>/cxr-<task>/<model>/seed-<s>).")] = None,
    runs: _Runs = Path("runs"),
    name: _Name = "sweep",
    cache: Annotated[Path, typer.Option("--cache", help="Image cache folder: <cache>/<dataset>/<split>.zarr (preprocessed once, float16).")] = Path("features/images"),
    layers: _Layers = 3,
    backend: _Backend = "fast",
    circuit_init: _CircuitInit = "uniform",
    lr: _Lr = 1e-4,
    batch_size: _Batch = 32,
    max_epochs: _MaxEpochs = 50,
    patience: _Patience = 5,
    limit: Annotated[int, typer.Option("--limit", help="Only the first N rows of every split (smoke runs).")] = None,
):
    """Train the ResNet backbone and a CDL or DQC head jointly on images (the paper's end-to-end recipe).

    Images are preprocessed once into --cache; augmentation (flip, ±15° rotation) runs on the device,
    drawn from (seed, epoch, position) so CDL and DQC with one seed see identical batches. Interrupt
    it at any time: the same command resumes after the last completed epoch.
    """
    from cxrfeat.console import make_console
    from cxrfeat.errors import UserError
    from cxrfeat.labels import read_tasks_file
    from heads.finetune import FinetuneOptions
    from heads.finetune import finetune as run_finetune
    from heads.train import TrainConfig

    try:
        opts = FinetuneOptions(
            task=read_tasks_file(tasks_file) if tasks_file is not None else task,
            model=model, seed=seed, data_dir=data_dir, external_dir=external_dir, weights=weights,
            freeze_backbone=freeze_backbone, init_head_from=init_head_from, runs=runs, name=name, cache=cache,
            layers=layers, backend=backend, circuit_init=circuit_init, limit=limit,
            train=TrainConfig(lr=lr, batch_size=batch_size, max_epochs=max_epochs, patience=patience),
        )
        opts.check()
    except ValueError as e:
        raise UserError(f"--task: {e}") from None
    console = make_console(stderr=True)

    def on_epoch(row: dict) -> None:
        mark = " *" if row["improved"] else ""
        console.print(f"epoch {row['epoch']:3d}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}{mark}  "
                      f"{row['seconds']:.1f} s  batches {row['order_digest']}")

    result = run_finetune(opts, say=lambda m: console.print(m), on_epoch=on_epoch)
    for test_set, report in result.metrics.get("test_sets", {}).items():
        mean = report.get("mean_auroc")
        typer.echo(f"{test_set}: mean AUROC {'undefined' if mean is None else f'{mean:.4f}'} "
                   f"({report.get('labels_used')} labels, {report.get('n')} images)")
    for message in (result.metrics.get("sanity") or {}).get("messages", []):
        typer.echo(f"warning: {result.path}: {message}", err=True)
    typer.echo(f"{result.path}: best epoch {result.best_epoch}, val loss {result.best_val_loss:.4f}")
    typer.echo(f"run written to {result.path} (sweep folder {opts.runs / opts.name})")


@app.command("bench-epoch")
@friendly
def bench_epoch(
    tasks: Annotated[str, typer.Option("--tasks", help="Tasks, comma-separated: 8,14,19.")] = "8,14,19",
    models: Annotated[str, typer.Option("--models", help="Heads, comma-separated: cdl,dqc.")] = "cdl,dqc",
    seeds: _Seeds = 5,
    rows: Annotated[int, typer.Option("--rows", help="Training rows (NIH: 78,506); fewer rows are timed and scaled up.")] = 78_506,
    views: Annotated[int, typer.Option("--views", help="Stored views per training row.")] = 8,
    dim: Annotated[int, typer.Option("--dim", help="Embedding size.")] = 2048,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per run in the projected sweep.")] = 50,
    backend: _Backend = "fast",
    layers: _Layers = 3,
    out: Annotated[Path, typer.Option("--out", help="JSON results (default bench/epoch-<platform>.json).")] = None,
):
    """Time one training epoch at the NIH training size for every (task, model), and project the sweep."""
    from cxrfeat.console import make_console
    from cxrfeat.labels import parse_task_option
    from heads.epochbench import run_epoch_bench
    from heads.plan import parse_models

    run_epoch_bench(tasks=parse_task_option(tasks), models=parse_models(models), seeds=seeds, rows=rows, views=views,
                    dim=dim, epochs=epochs, backend=backend, layers=layers, out=out, console=make_console())


# ---------------------------------------------------------------- bench (the paper's Table III)
@app.command()
@friendly
def bench(
    tasks: Annotated[str, typer.Option("--tasks", help="Qubit counts, comma-separated: the tasks 8,14,19, or any n >= 2 (e.g. 16,20,24 on a GPU).")] = "8,14,19",
    backends: Annotated[str, typer.Option("--backends", help="Simulator back ends, comma-separated: fast (the cheapest exact method for n and --layers, heads.quantum.method), mps, halves, statevector, pennylane; and the anchor tensorcircuit (TensorCircuit-NG's JAX state vector, circuit cells only).")] = "fast,pennylane",
    models: Annotated[str, typer.Option("--models", help="What to time, comma-separated: cdl, dqc (full training steps), circuit (the circuit's value and gradient alone).")] = "cdl,dqc,circuit",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per step.")] = 32,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed steps after compiling (fewer when they take over --max-seconds/4).")] = 10,
    steps: Annotated[int, typer.Option("--steps", help="Timed steps (fewer when they take over --max-seconds).")] = 30,
    layers: _Layers = 3,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="Time budget of one cell's timed steps; warm-up gets a quarter of it. At least one step is always timed.")] = 60.0,
    out: Annotated[Path, typer.Option("--out", help="Folder for <machine>.json and <machine>.md.")] = Path("bench"),
    with_backbone: Annotated[bool, typer.Option("--with-backbone", help="Also time ResNet50 (random weights) + head end to end on 224x224 images.")] = False,
    isolate: Annotated[bool, typer.Option("--isolate/--no-isolate", help="Run every cell in its own process, so that its peak memory is its own.")] = True,
    noise: Annotated[str, typer.Option("--noise", help="Time the circuit under this noise model (a TOML file or a preset; with --models circuit and back ends fast/mps = trajectories, density = exact).")] = None,
    trajectories: Annotated[int, typer.Option("--trajectories", help="Noise trajectories per example on the MPS (with --noise).")] = 1,
    anchors: Annotated[str, typer.Option("--anchors", help="With --noise: time the noisy circuit in these independent simulators beside ours (exact density matrix, MPS trajectories), all in one process per width, each checked against the exact value: default.mixed (PennyLane), aer-density, aer-statevector (Qiskit Aer; --trajectories shots per example), or all. --backends and --models are not used; writes <out>/<machine>-anchors.json and .md.")] = None,
):
    """Median seconds per training step of CDL, DQC and the circuit alone, per task and back end (Table III).

    Everything is timed in one run on this machine and written to <out>/<machine>.json (and .md);
    compare back ends by the ratios of one run.

    Examples: every back end at the paper's widths (about 13 minutes on 2 CPU cores); the MPS alone
    at any width; the noisy circuit against PennyLane and Qiskit Aer:

        heads bench --tasks 8,14,19
        heads bench --tasks 19,40,100 --backends fast --models dqc,circuit
        heads bench --tasks 4,8,10,19 --noise sycamore-2019 --anchors all
    """
    if anchors is not None:
        from cxrfeat.console import make_console
        from cxrfeat.errors import UserError
        from heads.noise_bench import ANCHORS, AnchorSettings, run_anchor_bench

        if noise is None:
            raise UserError("--anchors compares noisy simulators: give the noise model with --noise MODEL")
        names = ANCHORS if anchors.strip() == "all" else tuple(a.strip() for a in anchors.split(",") if a.strip())
        try:
            widths = tuple(int(t) for t in tasks.split(",") if t.strip())
        except ValueError:
            raise UserError(f"--tasks must be qubit counts such as 4,8,12, not {tasks!r}") from None
        path, _ = run_anchor_bench(AnchorSettings(noise=noise, widths=widths, anchors=names, trajectories=trajectories,
                                                  batch_size=batch_size, layers=layers, warmup=warmup, steps=steps,
                                                  max_seconds=max_seconds), out, console=make_console(stderr=True))
        typer.echo(f"wrote {path} and {path.with_suffix('.md')}")
        return
    from heads.bench import BenchOptions, run_bench

    path = run_bench(BenchOptions.parse(tasks=tasks, backends=backends, models=models, batch_size=batch_size,
                                        warmup=warmup, steps=steps, layers=layers, max_seconds=max_seconds, out=out,
                                        with_backbone=with_backbone, isolate=isolate, noise=noise,
                                        trajectories=trajectories))
    typer.echo(f"wrote {path} and {path.with_suffix('.md')}")


# ---------------------------------------------------------------- shots (finite measurement shots, effective width)
@app.command()
@friendly
def shots(
    run_dirs: Annotated[list[Path], typer.Argument(help="DQC run folders (runs/<sweep>/cxr-<task>/dqc/seed-<s>) or folders holding them (a sweep: every finished DQC seed under it).", show_default=False)],
    shots: Annotated[str, typer.Option("--shots", help="Shot counts per example, comma-separated.")] = "10,100,1000,10000",
    repeats: Annotated[int, typer.Option("--repeats", help="Independent draws per shot count (AUROC mean ± sd over them).")] = 5,
    readout_error: Annotated[float, typer.Option("--readout-error", help="Probability p that a measured outcome is flipped (0 <= p < 0.5).")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shot draws (with the run's seed, the repeat, the shot count and the test set).")] = 0,
    sampling: Annotated[str, typer.Option("--sampling", help="marginal: each qubit's counts drawn on its own (ignores correlations between qubits); joint: whole bit strings from the exact output distribution (at most 14 qubits).")] = "marginal",
    width_threshold: Annotated[float, typer.Option("--width-threshold", help="A qubit carries signal when the sd of its exact <Z> over the test set exceeds this.")] = 1e-2,
    width_only: Annotated[bool, typer.Option("--width-only", help="Only the effective width (width.json); no shot sampling.")] = False,
    features: Annotated[Path, typer.Option("--features", help="Features folder (default: the one recorded in each run's config.json).")] = None,
):
    """Evaluate trained DQCs with <Z_i> estimated from N shots per example; writes shots.json and width.json.

    Training stays exact; here each qubit's outcome is +-1 with P(-1) = (1 - <Z_i>)/2 (flipped with
    probability --readout-error), the estimates go through the trained post layer and sigmoid, and
    AUROC (mean ± sd over --repeats draws) is set beside the exact AUROC. width.json records, per test
    set, the sd over the examples of every exact <Z_k> and how many qubits exceed --width-threshold.
    """
    from heads import shots as sh

    settings = sh.ShotSettings(shots=sh.parse_shots(shots), repeats=repeats, readout_error=readout_error, seed=seed,
                               sampling=sampling, threshold=width_threshold, width_only=width_only, features=features)
    sh.run_shots(run_dirs, settings)


# ---------------------------------------------------------------- noise (finished heads under a device noise model)
@app.command()
@friendly
def noise(
    run_dirs: Annotated[list[Path], typer.Argument(help="DQC run folders or folders holding them (a sweep: every finished DQC seed under it).", show_default=False)],
    model: Annotated[str, typer.Option("--noise", help="Noise model: a TOML file, or a shipped preset by name (e.g. sycamore-2019).", show_default=False)],
    scale: Annotated[str, typer.Option("--scale", help="Error scales, comma-separated: the model's error rates times each (0 = noiseless).")] = "0,0.1,0.3,1,3",
    trajectories: Annotated[int, typer.Option("--trajectories", help="Noise trajectories per example (method mps).")] = 32,
    method: Annotated[str, typer.Option("--method", help="density (exact, up to 10 qubits), mps (trajectories, any width) or auto (density up to 6 qubits).")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the trajectory draws (with the run's seed, the test set and the example).")] = 0,
    features: Annotated[Path, typer.Option("--features", help="Features folder (default: the one recorded in each run's config.json).")] = None,
):
    """Evaluate trained DQCs under a device noise model at several error scales; writes noise.json.

    Each test example goes through the run's pre layer, the circuit with the model's gate, relaxation
    and readout errors (times each --scale), the post layer and the sigmoid; AUROC and AUPRC per scale
    are set beside the noiseless ones.

    Example:
        heads noise runs/sweep --noise sycamore-2019 --scale 0,1,3,10
    """
    from heads import noise_eval as ne
    from heads.noise import NoiseModel

    settings = ne.NoiseSettings(model=NoiseModel.load(model), scales=ne.parse_scales(scale), trajectories=trajectories,
                                method=method, seed=seed, features=features)
    ne.run_noise(run_dirs, settings)


# ---------------------------------------------------------------- export (a trained DQC as OpenQASM 3 / Qiskit / PennyLane)
class ExportFormat(StrEnum):
    qasm3 = "qasm3"
    qiskit = "qiskit"
    pennylane = "pennylane"


_Layouts = Annotated[str, typer.Option("--layouts", help="Device layouts to route the circuit onto, comma-separated: all-to-all, line, grid, heavy-hex ('' for none).")]
_RoutingNoise = Annotated[str, typer.Option("--noise", help="Noise model (preset or TOML file) whose two-qubit error p2 gives P(no two-qubit error) = (1 - p2)^gates in the routing table.")]


@app.command("export")
@friendly
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A finished DQC run folder (runs/<sweep>/cxr-<task>/dqc/seed-<s>).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (new, empty, or an earlier export of the same run).", show_default=False)],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="qasm3 (OpenQASM 3, Qiskit's importer), pennylane (OpenQASM 3 without the stdgates include, for qml.from_qasm3) or qiskit (QPY).")] = ExportFormat.qasm3,
    images: Annotated[str, typer.Option("--images", help="Image ids, comma-separated: one bound circuit each (looked up in --test-set, or in every test set of the run).")] = None,
    test_set: Annotated[str, typer.Option("--test-set", help="Test set whose first --limit rows are exported (default: the run's first test set).")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Rows of --test-set to export as bound circuits (0: the circuit and arrays only).")] = 10,
    features: Annotated[Path, typer.Option("--features", help="Features folder (default: the one recorded in the run's config.json).")] = None,
    layouts: _Layouts = "all-to-all,line,grid,heavy-hex",
    noise: _RoutingNoise = "sycamore-2019",
    check: Annotated[bool, typer.Option("--check/--no-check", help="Re-run the written circuits in Qiskit (PennyLane for --format pennylane) from the files alone and compare with the head's predictions.")] = True,
):
    """Write a trained DQC as OpenQASM 3 (or Qiskit/PennyLane) circuits, with its classical parts and per-image circuits.

    The folder gets circuit.qasm (inputs angle_k, trained weights bound), head.npz (pre and post
    layers), images/<test set>/<id>.qasm (fully bound) with images.npz (our <Z> and probabilities),
    routing.json and manifest.json (docs/export.md). Example:

        heads export runs/demo/cxr-8/dqc/lr-3e-3/seed-1 --test-set nih-cxr-lt --limit 20 --out exports/dqc8
    """
    from cxrfeat.console import make_console, print_table
    from heads import routing
    from heads.export_run import ExportSettings, export_run, parse_ids

    result = export_run(run_dir, ExportSettings(out=out, format=ExportFormat(fmt).value, images=parse_ids(images),
                                                test_set=test_set, limit=limit, features=features,
                                                layouts=routing.parse_layouts(layouts), noise=noise, check=check))
    if result.routing:
        print_table(make_console(), routing.table(result.routing))
    m = result.manifest
    typer.echo(f"wrote {m['circuit']['file']} ({m['circuit']['qubits']} qubits, {m['circuit']['layers']} layers) and "
               f"{m['images']['count']} image circuit(s) to {result.out}")
    c = m.get("check")
    if c and "skipped" in c:
        typer.echo(f"check skipped: {c['skipped']}")
    elif c:
        typer.echo(f"check: {c['simulator']} on the written files reproduces the head's probabilities to "
                   f"{c['max_abs_probability_difference'] or 0:.1e} and the run's saved predictions to "
                   f"{c['max_abs_run_probability_difference'] or 0:.1e} ({c['images']} images)")


@app.command("routing")
@friendly
def routing_command(
    qubits: Annotated[str, typer.Option("--qubits", help="Circuit widths, comma-separated (the tasks' 8,14,19 or any n >= 2).")] = "8,14,19,40",
    layers: _Layers = 3,
    layouts: _Layouts = "all-to-all,line,grid,heavy-hex",
    noise: _RoutingNoise = "sycamore-2019",
    out: Annotated[Path, typer.Option("--out", help="Folder for routing.json and routing.md (nothing written without it).")] = None,
):
    """Two-qubit gates and depth of the DQC circuit routed onto device layouts by Qiskit's transpiler.

    The CNOT ring needs all-to-all connectivity or SWAPs; each layout is compiled at optimization
    level 1 with seed_transpiler 0 (docs/export.md). Example:

        heads routing --qubits 8,14,19,40 --layers 3 --out bench/routing
    """
    from cxrfeat import atomic
    from cxrfeat.console import make_console, print_table
    from cxrfeat.errors import UserError
    from heads import routing
    from heads.bench import describe_machine

    try:
        widths = [int(w) for w in qubits.split(",") if w.strip()]
    except ValueError:
        raise UserError(f"--qubits {qubits!r}: give whole numbers, e.g. 8,14,19,40") from None
    doc = routing.widths_doc(widths, layers, routing.parse_layouts(layouts), noise)
    print_table(make_console(), routing.table(doc))
    if out is not None:
        machine = describe_machine()
        doc["machine"] = machine["name"]
        atomic.write_json(out / "routing.json", doc)
        atomic.write_text(out / "routing.md", routing.markdown(doc, machine["name"]))
        typer.echo(f"wrote {out / 'routing.json'} and {out / 'routing.md'}")


if __name__ == "__main__":  # `python -m heads.cli`
    app()
