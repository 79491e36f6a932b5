"""Shared CLI plumbing for every command of `cxrfeat`, `heads` and `analysis`: `App` (help that reads as
prose, flags shown as flags) and `friendly` (errors as one line).

`App` is `typer.Typer` with two changes to `--help`: a docstring's paragraphs are reflowed to the
terminal's width (`prose`; lines indented deeper than their paragraph, e.g. an example command, stay
verbatim), and a boolean flag reads `--json`, not `--json <bool>` (Typer shows a type for every option).

`friendly`:

- `UserError` -> `error: <message>` on stderr, exit status 2.
- any `OSError` -> `error: <path>: <reason>` (a full disk also names the folder and its free
  space), exit status 2.
- Ctrl-C (`KeyboardInterrupt`) -> `interrupted: re-run the same command to resume`, exit status 130.
- anything else is a bug: one line naming the exception, exit status 1.

Set the environment variable `CXR_DEBUG=1` to get the full Python traceback instead (bug reports).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys

import click
import typer
import typer.core

from cxrfeat.errors import UserError, os_error_message

DEBUG_ENV = "CXR_DEBUG"


def prose(doc: str | None) -> str | None:
    """A docstring as `--help` shows it: the lines of each paragraph joined into one line (the terminal
    wraps it), a line indented deeper than its paragraph's first line, or any line of an indented
    paragraph (a block of example commands), kept verbatim on its own line, a line starting with "- "
    starting a new line (lists)."""
    if not doc:
        return doc
    paragraphs = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        lines = para.split("\n")
        base = len(lines[0]) - len(lines[0].lstrip())
        if base > 0:  # an indented block (examples): every line as written
            paragraphs.append("\n".join(line.rstrip() for line in lines))
            continue
        out: list[str] = []
        joinable = False  # may the next prose line continue the last output line?
        for line in lines:
            indent = len(line) - len(line.lstrip())
            if indent > base:
                out.append(line.rstrip())
                joinable = False
            elif joinable and not line.lstrip().startswith("- "):
                out[-1] = f"{out[-1]} {line.strip()}"
            else:
                out.append(line.rstrip())
                joinable = True
        paragraphs.append("\n".join(out))
    return "\n\n".join(paragraphs)


def _flags_as_flags(params) -> None:
    """Typer shows `<bool>` after every option of type bool, as if it took a value: an empty metavar
    shows nothing."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class _Command(typer.core.TyperCommand):
    def format_help(self, ctx, formatter):
        _flags_as_flags(self.get_params(ctx))
        return super().format_help(ctx, formatter)


class _Group(typer.core.TyperGroup):
    def format_help(self, ctx, formatter):
        _flags_as_flags(self.get_params(ctx))
        return super().format_help(ctx, formatter)


class App(typer.Typer):
    """`typer.Typer` for the three CLIs: help as prose (`prose`), flags without `<bool>`."""

    def __init__(self, *, help: str | None = None, **kwargs):  # noqa: A002 - Typer's own name
        super().__init__(cls=_Group, help=prose(help), **kwargs)

    def command(self, name: str | None = None, *, cls=None, help: str | None = None, **kwargs):  # noqa: A002
        def register(f):
            text = prose(help if help is not None else inspect.getdoc(f))
            return super(App, self).command(name, cls=cls or _Command, help=text, **kwargs)(f)

        return register


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _fault_message(e: BaseException) -> str:
    if isinstance(e, OSError):
        return os_error_message(e)
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller --batch-size)"
    return str(e)


def friendly(fn):
    """Decorate a Typer command so that every failure is one clear line and a non-zero exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if debug():
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except (UserError, OSError, MemoryError) as e:  # faults a user can fix: one line, exit status 2
            print(f"error: {_fault_message(e)}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print("interrupted: re-run the same command to resume", file=sys.stderr)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.exceptions.Abort,
                SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback with CXR_DEBUG=1
            text = str(e).splitlines()[0] if str(e) else ""
            print(f"error: internal error {type(e).__name__}: {text} (this is a bug: re-run with {DEBUG_ENV}=1 "
                  f"for the traceback and report it)", file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper
