"""Tiny synthetic feature stores for the heads tests: Gaussian embeddings with a linear label signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrfeat.labels import LABELS
from cxrfeat.store import FeatureStore

BACKBONE = {"name": "random", "seed": 0}
PREPROCESSING = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def synthetic_split(rng, n, views, dim, signal, *, unknown=0.0):
    """Long-tailed labels (all 19) and embeddings = noise + labels @ signal, views = small jitter."""
    prevalence = np.linspace(0.45, 0.08, len(LABELS))
    y = (rng.random((n, len(LABELS))) < prevalence).astype(np.int8)
    base = rng.normal(size=(n, dim)) + y @ signal
    x = base[:, None, :] + 0.3 * rng.normal(size=(n, views, dim))
    if unknown:
        y[rng.random(y.shape) < unknown] = -1
    return x.astype(np.float32), y


def write_store(path: Path, x, y, *, dataset, split, label_names=LABELS, backbone=BACKBONE, chunk_rows=64):
    n, views, dim = x.shape
    store = FeatureStore.create(
        path, ids=[f"{split}-{i:05d}.png" for i in range(n)], labels=y, label_names=label_names, views=views,
        dim=dim, dtype="float32", chunk_rows=chunk_rows, settings={},
        attrs={"dataset": dataset, "split": split, "backbone": backbone, "preprocessing": PREPROCESSING,
               "augmentation": {"hflip": 0.5, "rotate_degrees": 15}, "seed": 0},
    )
    for i in range(store.n_chunks):
        start, stop = store.chunk_bounds(i)
        store.write_chunk(i, x[start:stop])
    store.finalize([])
    return path


# The stores of most tests that train heads. Heads trained on stores of one shape run the same compiled
# programs (whatever the learning rate, seeds, epochs or feature normalisation: those are data), and the
# suite's persistent compilation cache (tests/conftest.py) compiles a program once for every test that runs it.
SMALL = dict(n_train=60, n_val=20, n_test=20, dim=16)


def make_stores(root: Path, *, n_train=240, n_val=80, n_test=120, views=2, dim=32, external=True, seed=0):
    """features/nih-cxr-lt/{train,val,test}.zarr (+ mimic-cxr-lt/test.zarr with unknown labels)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(len(LABELS), dim)) * 0.8
    for split, n, v in (("train", n_train, views), ("val", n_val, 1), ("test", n_test, 1)):
        x, y = synthetic_split(rng, n, v, dim, signal)
        write_store(root / "nih-cxr-lt" / f"{split}.zarr", x, y, dataset="nih-cxr-lt", split=split)
    if external:
        x, y = synthetic_split(rng, n_test, 1, dim, signal, unknown=0.2)
        y[:, LABELS.index("Hernia")] = 0  # one class only: its AUROC is undefined
        write_store(root / "mimic-cxr-lt" / "test.zarr", x, y, dataset="mimic-cxr-lt", split="test")
    return root


def cli_sweep(root: Path, name: str, *options, **stores):
    """`heads sweep --tasks 8 --seeds 2 --models cdl,dqc` through the CLI on fresh stores under `root`
    (`make_stores(**stores)`), with `options` added; asserts it succeeded. Returns (root, args, result):
    `args` re-runs the same sweep."""
    from typer.testing import CliRunner

    from heads.cli import app

    features = make_stores(root / "features", **stores)
    args = ["sweep", "--tasks", "8", "--seeds", "2", "--models", "cdl,dqc", "--features", features,
            "--runs", root / "runs", "--name", name, *options]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return root, args, result
