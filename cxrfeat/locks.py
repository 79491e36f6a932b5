"""Lock files: one process at a time on one piece of work (a run group, a store).

A lock is a file created with `O_CREAT | O_EXCL` (atomic on local and NFSv3+ file systems) that
holds JSON with the owner's host, pid and start time. A lock left by a process that has died on
the same host is stale: the next process takes it over, with a message. A lock held by a live
process (or by a process on another host, whose liveness cannot be known here) is respected:
`try_acquire` returns None, `acquire` waits for it (or fails after `timeout` seconds).

    with locks.acquire(path / ".lock", what="run group cxr-8/dqc"):
        ...

Locks are advisory: they protect the toolkit's own processes from each other.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from cxrfeat.errors import UserError

HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by somebody else
        return True
    return True


def read_owner(path: str | Path) -> dict | None:
    """The owner recorded in a lock file, or None when there is none (or it cannot be read yet)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_stale(owner: dict | None) -> bool:
    """A lock whose owner ran on this host and is no longer alive."""
    if not owner or owner.get("host") != HOST:
        return False
    pid = owner.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid)


def describe(owner: dict | None) -> str:
    if not owner:
        return "another process"
    return f"pid {owner.get('pid')} on {owner.get('host')} (since {owner.get('started')})"


class Lock:
    """A held lock; `release()` (or leaving the `with` block) removes the file."""

    def __init__(self, path: Path, owner: dict):
        self.path = path
        self.owner = owner
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            if read_owner(self.path) == self.owner:
                Path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_acquire(path: str | Path, *, what: str = "this work", quiet: bool = False) -> Lock | None:
    """Take the lock at `path` if it is free (or stale); None if a live process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = {"host": HOST, "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "what": what, "argv": sys.argv[:8]}
    data = (json.dumps(owner) + "\n").encode()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            old = read_owner(path)
            if old is None:
                # Being written by its creator right now, or damaged: damaged only if it stays unreadable.
                time.sleep(0.05)
                old = read_owner(path)
                if old is None and _age(path) > 10:
                    _take_over(path, None, what, quiet)
                    continue
                if old is None:
                    return None
            if is_stale(old):
                _take_over(path, old, what, quiet)
                continue
            return None
        except OSError as e:
            raise UserError(f"{path}: cannot create a lock file ({os.strerror(e.errno or errno.EIO)})") from None
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return Lock(path, owner)
    return None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _take_over(path: Path, old: dict | None, what: str, quiet: bool) -> None:
    if not quiet:
        print(f"note: taking over the stale lock of {what} left by {describe(old)}, which is no longer running "
              f"({path})", file=sys.stderr)
    # Rename first, so two processes taking over at once cannot both succeed on the new file.
    grave = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.replace(path, grave)
    except FileNotFoundError:
        return
    if read_owner(grave) != old:  # somebody took it over and locked it between our read and the rename
        try:
            os.link(grave, path)  # put it back, unless yet another lock appeared meanwhile
        except OSError:
            pass
    grave.unlink(missing_ok=True)


def acquire(path: str | Path, *, what: str = "this work", timeout: float | None = None,
            poll: float = 0.5, quiet: bool = False) -> Lock:
    """Take the lock, waiting while a live process holds it (at most `timeout` seconds, None: forever)."""
    t0 = time.monotonic()
    said = False
    while True:
        lock = try_acquire(path, what=what, quiet=quiet)
        if lock is not None:
            return lock
        owner = read_owner(path)
        if timeout is not None and time.monotonic() - t0 >= timeout:
            raise UserError(f"{what} is locked by {describe(owner)} ({path}); wait for it to finish, or remove the "
                            f"lock file if that process is gone")
        if not said and not quiet:
            print(f"waiting: {what} is being worked on by {describe(owner)} ({path})", file=sys.stderr)
            said = True
        time.sleep(poll)
