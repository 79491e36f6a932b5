"""The one error type shown to users as a clean message (no traceback) by every CLI, and the
words for operating-system errors (`os_error_message`): the path, the reason, and for a full disk
the folder and its free space."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class UserError(Exception):
    """Bad input or options: the message names the file, row, column or option at fault."""


def free_space(path: str | os.PathLike) -> tuple[Path, int] | None:
    """(nearest existing folder at or above `path`, its free bytes), or None when it cannot be known."""
    p = Path(path).absolute()
    for folder in (p, *p.parents):
        try:
            if folder.is_dir():
                return folder, shutil.disk_usage(folder).free
        except OSError:
            return None
    return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def os_error_message(e: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for an OSError: `<path>: <reason>`; a full disk adds the folder's free space."""
    where = e.filename if e.filename is not None else path
    reason = e.strerror or (os.strerror(e.errno) if e.errno else str(e) or type(e).__name__)
    msg = f"{where}: {reason}" if where is not None else reason
    if e.filename2 is not None:
        msg = f"{where} -> {e.filename2}: {reason}"
    if e.errno == errno.ENOSPC and where is not None:
        free = free_space(where)
        if free is not None:
            msg += f" ({free[0]} has {human_bytes(free[1])} free)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and where is not None:
        msg += " (the folder is read-only or not yours: choose another output folder or fix its permissions)"
    return msg


def refuse_multi_process(what: str, scale_out: str) -> None:
    """Refuse a multi-process JAX launch (`jax.distributed`, `jax.process_count() > 1`): every process
    would do the same work and write the same files. `what` names the command, `scale_out` the way
    to spread it over jobs instead."""
    import jax

    if jax.process_count() > 1:
        raise UserError(f"this is a multi-process JAX launch ({jax.process_count()} processes): {what} runs on one "
                        f"process's local devices only. To scale out, {scale_out}")
