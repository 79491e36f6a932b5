"""Shared CLI plumbing for every command of `cxrfeat`, `heads` and `analysis` (`friendly`).

- `UserError` -> `error: <message>` on stderr, exit status 2.
- any `OSError` -> `error: <path>: <reason>` (a full disk also names the folder and its free
  space), exit status 2.
- Ctrl-C (`KeyboardInterrupt`) -> `interrupted: re-run the same command to resume`, exit status 130.
- anything else is a bug: one line naming the exception, exit status 1.

Set the environment variable `CXR_DEBUG=1` to get the full Python traceback instead (bug reports).
"""

from __future__ import annotations

import functools
import os
import sys

import click
import typer

from cxrfeat.errors import UserError, os_error_message

DEBUG_ENV = "CXR_DEBUG"


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
