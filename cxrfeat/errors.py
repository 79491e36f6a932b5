"""The one error type shown to users as a clean message (no traceback) by every CLI."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or options: the message names the file, row, column or option at fault."""
