"""`heads`: stage two of the toolkit (CDL and DQC heads on cached features, sweeps, benchmarks)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Stage two: train classical (CDL) and dressed-quantum-circuit (DQC) heads on cached features.\n\n"
    "Typical use: `heads sweep --tasks 8,14,19 --seeds 5`, `heads bench`, `heads params`.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
