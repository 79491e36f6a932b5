"""`analysis`: the paper's tables and figures from a runs folder."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cxrfeat.cliutil import App, friendly

app = App(
    help="Analysis: turn a sweep's runs into the paper's tables, statistics and figures.\n\n"
    "Typical use: `analysis report --runs runs/demo`.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main() -> None:
    """Analysis: turn a sweep's runs into the paper's tables, statistics and figures."""


class SelectBy(StrEnum):
    val_loss = "val-loss"
    val_auroc = "val-auroc"


@app.command()
@friendly
def report(
    runs: Annotated[Path | None, typer.Option(help="Sweep folder runs/<name> (default: the only sweep under runs/).")] = None,
    features: Annotated[Path | None, typer.Option(help="Feature stores for Table I and the label order (default: the sweep's own "
                                                  "features folder, else features/, else the stores its runs name).")] = None,
    bench: Annotated[list[Path] | None, typer.Option(
        help="`heads bench` results for Table III: a JSON file (used as given) or a folder (only this machine's "
             "records, matched by CPU model and cores; others are listed as other machines'). Repeatable. "
             "Default: this machine's records under bench/.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: reports/<sweep name>).")] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs of mean AUROC.")] = 1000,
    select: Annotated[SelectBy, typer.Option(
        help="A hyper-parameter grid (runs/<sweep>/<task>/<model>/<config>/seed-<s>/): per task x model, report the "
             "configuration with the lowest mean validation loss over seeds (val-loss) or the highest mean "
             "validation AUROC (val-auroc). Validation data only; ignored outside a grid.")] = SelectBy.val_loss,
    tasks: Annotated[str | None, typer.Option(
        help="Report only these tasks of the sweep, comma-separated (e.g. `cxr-8,cxr-14` or `8,14`).")] = None,
    models: Annotated[str | None, typer.Option(help="Report only these models, comma-separated (e.g. `cdl,dqc`).")] = None,
    test_sets: Annotated[str | None, typer.Option(
        help="Report only these test sets, comma-separated (e.g. `mimic-cxr-lt`).")] = None,
    routing: Annotated[list[Path] | None, typer.Option(
        help="Routing tables for the circuit section: a `heads export` folder, a folder of them, a `heads routing "
             "--out` folder or a routing.json. Repeatable. Default: the exports of this sweep's runs under "
             "exports/.")] = None,
) -> None:
    """Write report.md, tables/*.csv|tex and figures/*.png for a sweep (paper section IV).

    Example: `analysis report --runs runs/demo --tasks cxr-8 --test-sets nih-cxr-lt --out reports/demo-cxr8`;
    with the routing cost of an export: `analysis report --runs runs/demo --routing exports/dqc8`.
    """
    from analysis.report import build_report

    def split(v):
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    path = build_report(runs=runs, features=features, bench=bench, out=out, resamples=resamples, select=select.value,
                        tasks=split(tasks), models=split(models), test_sets=split(test_sets), routing=routing)
    print(f"wrote {path} (tables in {path.parent / 'tables'}, figures in {path.parent / 'figures'})")


if __name__ == "__main__":  # `python -m analysis.cli`
    app()
