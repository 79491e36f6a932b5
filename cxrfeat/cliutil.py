"""Shared CLI plumbing: user errors become one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import functools
import sys

import typer

from cxrfeat.errors import UserError


def friendly(fn):
    """Decorate a Typer command so that `UserError` prints `error: ...` and exits with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper
