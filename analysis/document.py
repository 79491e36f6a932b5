"""The report being written (`Document`): its Markdown lines and the folders its tables and figures go to.

Shared by `analysis.report` and its sections in `analysis.report_grid` and `analysis.report_shots`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analysis import tables as T
from analysis.collect import Sweep
from analysis.features import StoreCounts


@dataclass
class Document:
    """The report being written: its Markdown lines and where tables and figures go."""

    sweep: Sweep
    out: Path
    train: StoreCounts | None
    marks: tuple[str, ...]  # stamped on every figure ("SYNTHETIC DATA", "RANDOM BACKBONE")
    resamples: int
    settings: dict[tuple[str, str], str] | None  # per-row settings cell when rows differ, else None
    md: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.md.extend(lines)

    def table(self, t: T.Table) -> None:
        t.write(self.out / "tables")
        self.add(f"**{t.title}.** " + (t.note + " " if t.note else "") + f"(`tables/{t.name}.csv`, `.tex`)\n",
                 t.markdown() + "\n")

    def figure(self, path: Path, alt: str) -> None:
        self.add(f"![{alt}]({path.relative_to(self.out).as_posix()})\n")

    def fig_path(self, name: str) -> Path:
        return self.out / "figures" / name
