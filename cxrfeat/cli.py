"""`cxrfeat`: stage one of the toolkit (datasets, synthetic data, feature extraction into Zarr)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Stage one: chest X-ray datasets and ResNet50 feature extraction into Zarr stores.\n\n"
    "Typical use: `cxrfeat synth` (synthetic demo data), then `cxrfeat extract --split train` "
    "(and val, test), then `cxrfeat info features/nih-cxr-lt/train.zarr`.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
