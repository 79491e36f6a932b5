"""Atomic file writes: write to a temporary name in the same folder, then rename.

Files are created with the mode an ordinary `open()` would give them (0o666 minus the process
umask, e.g. 0644 under umask 022), not `mkstemp`'s private 0600, so that collaborators who share
a results folder can read them (`current_umask` reads the umask thread-safely); folders are made by
`mkdir`, which honours the umask itself.
After the rename the folder itself is fsynced, so the new name survives a crash.

`read_json` is the one reader of JSON files a user could damage (a truncated copy, an edit by hand,
a disk that filled up before this writer existed): a damaged file is a one-line `UserError` naming
the file, where it stopped parsing, what the file is and what to do, never a JSONDecodeError.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from cxrfeat.errors import UserError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status).

    Elsewhere it can only be read by setting it: that is done under a lock, setting the most private
    mask (0o077) for the instant before the old one is restored, so a file another thread creates in
    that instant can only come out more private, never less.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a new file, as `open()` would make it: 0o666 & ~umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder so that a rename in it is durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true or false", type(None): "null"}


def read_json(path: str | os.PathLike, *, what: str, remedy: str | None = None, expect: type | None = dict) -> Any:
    """The parsed content of the JSON file `path`; a damaged one is a one-line `UserError`:
    "<path>: not valid JSON (line L column C): <what> is damaged; <remedy>".

    `what` says what the file is ("the sweep record of runs/demo"), `remedy` what to do about it.
    `expect` is the type the top level must have (an object by default; None: anything). A missing or
    unreadable file raises the OSError (FileNotFoundError, ...) for the caller to handle or report.
    """
    path = Path(path)
    data = path.read_bytes()
    tail = f": {what} is damaged" + (("; " if remedy[:1].islower() else ". ") + remedy if remedy else "")
    if not data.strip():
        raise UserError(f"{path}: not valid JSON (empty file){tail}")
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}){tail}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid JSON (not UTF-8 text at byte {e.start}){tail}") from None
    except RecursionError:
        raise UserError(f"{path}: not valid JSON (nested too deeply){tail}") from None
    if expect is not None and not isinstance(obj, expect):
        raise UserError(f"{path}: holds {_JSON_TYPES.get(type(obj), type(obj).__name__)} where JSON "
                        f"{_JSON_TYPES.get(expect, expect.__name__)} belongs{tail}")
    return obj


def _default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
