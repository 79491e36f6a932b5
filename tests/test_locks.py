"""Lock files: exclusive, stale locks of dead processes taken over, live ones respected."""

import json
import os
import subprocess
import sys
import threading

import pytest

from cxrfeat import locks
from cxrfeat.errors import UserError


def test_exclusive_and_released(tmp_path):
    path = tmp_path / "x.lock"
    a = locks.try_acquire(path, what="x")
    assert a is not None and json.loads(path.read_text())["pid"] == os.getpid()
    assert locks.try_acquire(path, what="x") is None  # still held (even by this process): refused
    a.release()
    assert not path.exists()
    with locks.acquire(path, what="x") as b:
        assert b.held
    assert not path.exists()


def test_stale_lock_of_dead_process_taken_over(tmp_path, capsys):
    path = tmp_path / "x.lock"
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)
    path.write_text(json.dumps({"host": locks.HOST, "pid": dead, "started": "then"}))
    lock = locks.try_acquire(path, what="cxr-8/dqc")
    assert lock is not None
    assert "stale lock" in capsys.readouterr().err
    lock.release()


def test_live_lock_respected_and_timeout_names_owner(tmp_path):
    path = tmp_path / "x.lock"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path.write_text(json.dumps({"host": locks.HOST, "pid": child.pid, "started": "now"}))
        assert locks.try_acquire(path, what="x") is None
        with pytest.raises(UserError, match=f"pid {child.pid}"):
            locks.acquire(path, what="x", timeout=0.2, poll=0.05, quiet=True)
    finally:
        child.kill()
        child.wait()
    # The owner is gone now: the lock is stale and can be taken.
    assert locks.try_acquire(path, what="x", quiet=True) is not None


def test_racing_threads_one_winner(tmp_path):
    path = tmp_path / "x.lock"
    won = []
    barrier = threading.Barrier(8)

    def go():
        barrier.wait()
        lock = locks.try_acquire(path, what="x", quiet=True)
        if lock is not None:
            won.append(lock)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1


def test_lock_file_honours_umask(tmp_path):
    old = os.umask(0o027)
    try:
        lock = locks.try_acquire(tmp_path / "x.lock")
    finally:
        os.umask(old)
    assert (tmp_path / "x.lock").stat().st_mode & 0o777 == 0o640
    lock.release()
