"""What the three CLIs print: tables that fit the width, and progress that suits where it goes.

On a terminal, progress is a live line per task (description, bar, done/total, rate, elapsed, ETA,
status), laid out for the terminal's width: the bar takes only the room left, and a line too long
for a narrow terminal wraps instead of being cut. Anywhere else (a SLURM output file, `nohup`, CI, a
pipe) it is plain text lines, no ANSI codes and no cursor movement: one when a task starts, one each
time another tenth of it is done or `CXR_PROGRESS_EVERY` seconds (default 60) have passed since the
last with something new, and one when it ends. `CXR_PROGRESS` chooses: `auto` (the default: a bar on
a terminal, lines elsewhere), `bar`, `lines` or `off` (no progress output at all). See docs/console.md.

Tables are fitted to the console's width (80 columns outside a terminal, or `COLUMNS`) by `fit`:
columns wrap at spaces, the widest first, down to their longest word; no cell is ever cut to "…".
"""

from __future__ import annotations

import math
import os
import time

from rich.console import Console, Group
from rich.progress import Progress, Task, TaskID
from rich.table import Table
from rich.text import Text

from cxrfeat.errors import UserError

PROGRESS_ENV = "CXR_PROGRESS"
EVERY_ENV = "CXR_PROGRESS_EVERY"
MODES = ("auto", "bar", "lines", "off")
DEFAULT_EVERY_S = 60.0
STEP = 0.1  # a plain line each time another tenth of a task is done


def make_console(*, stderr: bool = False, **kwargs) -> Console:
    """The console of every command: no guessing of numbers or paths to colour, 80 columns outside a
    terminal (rich's default; `COLUMNS` overrides it), colour and styles only on a terminal."""
    return Console(stderr=stderr, highlight=False, **kwargs)


def progress_mode(console: Console) -> str:
    """`bar`, `lines` or `off`: what `CXR_PROGRESS` asks for, `auto` meaning a bar only on a terminal."""
    value = os.environ.get(PROGRESS_ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise UserError(f"{PROGRESS_ENV}={value!r}: expected one of {', '.join(MODES)}")
    if value != "auto":
        return value
    return "bar" if console.is_terminal and not console.is_dumb_terminal else "lines"


def progress_every() -> float:
    value = os.environ.get(EVERY_ENV, "").strip()
    if not value:
        return DEFAULT_EVERY_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or not math.isfinite(seconds):
        raise UserError(f"{EVERY_ENV}={value!r}: expected a positive number of seconds")
    return seconds


def progress(console: Console | None = None, *, unit: str = "", transient: bool = False) -> Progress:
    """A `rich.progress.Progress` for `console` (default: stderr) in the mode `progress_mode` picks.

    Use it as rich's: `add_task(description, total=..., **fields)`, `update`, `advance`,
    `remove_task`, as a context manager. `unit` names what is counted (rates read "12.3 img/s", or
    "4.1 s/epoch" below one a second); a task's own `unit=` field overrides it. A `status` field is
    shown after the numbers.
    """
    console = console or make_console(stderr=True)
    mode = progress_mode(console)
    if mode == "bar":
        return LiveProgress(console=console, unit=unit, transient=transient)
    return LineProgress(console=console, unit=unit, silent=mode == "off")


# ------------------------------------------------------------------------------------------ formatting
def clock(seconds: float | None) -> str:
    """H:MM:SS, or -:--:-- when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def rate(speed: float | None, unit: str) -> str:
    """'12.3 img/s', '4.1 s/epoch' (slower than one a second), '' without a unit or a measured speed."""
    if not unit or not speed:
        return ""
    return f"{speed:.1f} {unit}/s" if speed >= 1 else f"{1 / speed:.1f} s/{unit}"


def task_speed(task: Task) -> float | None:
    """Units per second: rich's estimate over its recent samples, else (and once finished) the mean since
    the task started."""
    if task.finished and task.finished_time:
        return task.completed / task.finished_time or None
    speed = task.speed
    elapsed = task.finished_time if task.finished else task.elapsed
    if not speed and task.completed and elapsed:
        speed = task.completed / elapsed
    return speed or None


def task_numbers(task: Task, unit: str) -> list[str]:
    """done/total, percent, rate, elapsed, ETA of a task: the fields both progress modes show."""
    done = int(task.completed)
    fields = [f"{done}/{int(task.total)}" if task.total is not None else str(done)]
    if task.total:
        fields.append(f"{100 * min(task.completed / task.total, 1.0):.0f}%")
    speed = task_speed(task)
    if r := rate(speed, task.fields.get("unit", unit)):
        fields.append(r)
    fields.append(f"{clock(task.finished_time if task.finished else task.elapsed)} elapsed")
    if not task.finished and task.total is not None:
        fields.append(f"ETA {clock(task.remaining / speed if speed else None)}")
    return fields


class LiveProgress(Progress):
    """Rich's live display, one line per task laid out by `task_numbers` for the console's width."""

    BAR_MIN, BAR_MAX = 10, 40

    def __init__(self, *, console: Console, unit: str = "", transient: bool = False):
        super().__init__(console=console, transient=transient, speed_estimate_period=60.0)
        self.unit = unit

    def make_tasks_table(self, tasks):  # rich's hook: what the live display draws
        return Group(*(self.task_line(t, self.console.width) for t in tasks if t.visible))

    def task_line(self, task: Task, width: int) -> Text:
        numbers = "  ".join(task_numbers(task, self.unit))
        status = str(task.fields.get("status") or "")
        head = Text(str(task.description), style="bold")
        tail = numbers + (f"  {status}" if status else "")
        room = width - head.cell_len - len(tail) - 4
        line = head.copy()
        if task.total and room >= self.BAR_MIN:
            n = min(room, self.BAR_MAX)
            filled = int(n * min(task.completed / task.total, 1.0))
            line.append("  ")
            line.append("━" * filled, style="bar.finished" if task.finished else "bar.complete")
            line.append("━" * (n - filled), style="bar.back")
        line.append("  " + tail)
        line.overflow = "fold"  # a narrow terminal wraps it; nothing is cut
        return line


class LineProgress(Progress):
    """No live display: plain lines on the console, at the rate the module docstring describes."""

    def __init__(self, *, console: Console, unit: str = "", silent: bool = False):
        super().__init__(console=console, disable=True, speed_estimate_period=120.0)
        self.unit, self.silent, self.every = unit, silent, progress_every()
        self._last: dict[TaskID, tuple[float, int, tuple]] = {}  # time, tenths done, what was shown

    def add_task(self, description, start=True, total=100.0, completed=0, visible=True, **fields) -> TaskID:
        task_id = super().add_task(
            description, start=start, total=total, completed=completed, visible=visible, **fields
        )
        self._emit(task_id, force=True)
        return task_id

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._emit(task_id)

    def advance(self, task_id, advance=1) -> None:
        super().advance(task_id, advance)
        self._emit(task_id)

    def remove_task(self, task_id) -> None:
        self._emit(task_id, force=True)
        self._last.pop(task_id, None)
        super().remove_task(task_id)

    def stop(self) -> None:
        for task_id in list(self._last):
            self._emit(task_id)
        super().stop()

    def _emit(self, task_id: TaskID, *, force: bool = False) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None or self.silent or not task.visible:
            return
        shown = (task.description, int(task.completed), task.total, str(task.fields.get("status") or ""))
        now = time.monotonic()
        tenths = int(task.completed / task.total / STEP) if task.total else 0
        last = self._last.get(task_id)
        if last is not None and (last[2] == shown or last[2][1:3] == shown[1:3] and task.finished):
            return  # nothing new to say (a finished task is not reported again for a new status)
        due = force or last is None or task.finished or tenths > last[1] or now - last[0] >= self.every
        if not due:
            return
        self._last[task_id] = (now, tenths, shown)
        status = shown[3]
        text = f"{task.description}: {', '.join(task_numbers(task, self.unit))}" + (
            f" | {status}" if status else ""
        )
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------ tables
def _plain(cell) -> str:
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return ""


def _height(cells: list[list[list[int]]], width: int) -> int:
    """Lines that the cells of a column take at `width` (each cell: lines of word lengths), wrapped at spaces."""
    total = 0
    for cell in cells:
        for words in cell:
            lines, used = 1, -1
            for w in words:
                if used + 1 + w > width and used >= 0:
                    lines, used = lines + 1, w
                else:
                    used += 1 + w
            total += lines
    return total


def _overhead(table: Table) -> int:
    return table._extra_width + sum(table._get_padding_width(i) for i in range(len(table.columns)))


def fit(table: Table, width: int) -> Table:
    """Set the column widths of `table` (rows added) so that it spans at most `width` columns with no
    cell cut. A table too wide for its borders loses them (a plain header rule, columns one space
    apart); then the widest column wraps at spaces first, each down to its longest word (a `no_wrap`
    column keeps its lines whole); only when that is not enough does the widest column fold (break
    inside a word), every character still shown."""
    from rich import box
    from rich.cells import cell_len

    columns = table.columns
    n = len(columns)
    if not n:
        return table
    cells = [
        [
            [[cell_len(w) for w in line.split()] for line in t.splitlines()]
            for t in (_plain(col.header), *(_plain(c) for c in col._cells))
        ]
        for col in columns
    ]
    natural = [max([sum(ws) + len(ws) - 1 for c in col for ws in c if ws] or [1]) for col in cells]
    words = [
        nat if col.no_wrap else max([w for c in cl for ws in c for w in ws] or [1])
        for col, cl, nat in zip(columns, cells, natural, strict=True)
    ]
    if sum(natural) + _overhead(table) > width and table.box is not None:
        table.box, table.show_edge, table.pad_edge = box.SIMPLE_HEAD, False, False
    budget = max(width - _overhead(table), n)
    widths = list(natural)
    height = [_height(cl, w) for cl, w in zip(cells, widths, strict=True)]
    while sum(widths) > budget:  # wrap at spaces: the column that grows by the fewest lines (the widest of
        shrinkable = [i for i in range(n) if widths[i] > words[i]]  # equals), down to its longest word
        if not shrinkable:
            break
        taller = {i: _height(cells[i], widths[i] - 1) for i in shrinkable}
        i = min(shrinkable, key=lambda i: (taller[i] - height[i], -widths[i]))
        widths[i] -= 1
        height[i] = taller[i]
    while sum(widths) > budget:  # fold inside words: the widest column, down to 4 cells
        i = max(range(n), key=lambda i: widths[i])
        if widths[i] <= 4:
            break
        widths[i] -= 1
    for col, w, nat in zip(columns, widths, natural, strict=True):
        col.no_wrap = False
        col.overflow = "fold"
        if w < nat:
            col.width = w
    return table


def print_table(console: Console, table: Table) -> None:
    """Print `table` fitted to the console's width (`fit`)."""
    console.print(fit(table, console.width))
