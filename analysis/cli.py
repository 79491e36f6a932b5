"""`analysis`: the paper's tables and figures from a runs folder."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Analysis: turn a sweep's runs into the paper's tables, statistics and figures.\n\n"
    "Typical use: `analysis report --runs runs/demo`.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
