"""Symbolic equality of math answers with a hard time limit, via a worker subprocess.

math-verify (sympy underneath) decides that "\\frac12" equals "0.5" or that "(x+1)^2" equals
"x^2+2x+1", but some inputs never finish: ``9^{9^{9^{9}}}`` makes sympy build a gigantic integer
in C code, and a long run of "{" hangs its parser. math-verify's own time-out uses SIGALRM, which
only works in the main thread and cannot interrupt C code. So the comparison runs in a separate
Python process (``symbolic_worker.py``): the caller waits at most until its deadline, and on
overrun the worker is killed and a fresh one started in the background.

One worker serves the whole process; calls from several threads take turns (waiting for the turn
counts against each caller's deadline). A process created by fork starts its own worker.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["SymbolicChecker", "start_symbolic_worker", "symbolic_equal"]

_WORKER_SCRIPT = Path(__file__).with_name("symbolic_worker.py")


class _WorkerGone(Exception):
    """The worker process exited (crashed, or was killed by the memory limit)."""


class SymbolicChecker:
    """Owns one worker process and answers "is any candidate equal to gold?" before a deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._owner_pid = os.getpid()
        self._buffer = b""
        self._ready = False

    # -- process management ------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker now (it takes about a second to import sympy) if it is not running."""
        with self._lock:
            self._ensure_started()

    def _ensure_started(self) -> None:
        if self._owner_pid != os.getpid():  # forked child: the parent's pipes are not ours
            self._process, self._owner_pid = None, os.getpid()
        if self._process is not None and self._process.poll() is None:
            return
        self._process = subprocess.Popen(
            [sys.executable, "-u", str(_WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self._buffer = b""
        self._ready = False

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if process is not None:
            for pipe in (process.stdin, process.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass

    def close(self) -> None:
        """Stop the worker (it restarts on the next call)."""
        with self._lock:
            self._kill()

    # -- protocol ----------------------------------------------------------------------------
    def _read_line(self, deadline: float) -> dict | None:
        """One JSON line from the worker, or None on time-out; _WorkerGone if it exited."""
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _WorkerGone
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def equal(self, gold: str, candidates: list[str], deadline: float) -> bool:
        """True if math-verify finds one of ``candidates`` equal to ``gold`` before ``deadline``.

        ``deadline`` is a ``time.monotonic()`` value. Past it the answer is False.
        """
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        try:
            self._ensure_started()
            if not self._ready:
                if self._read_line(deadline) is None:
                    return False  # still importing: leave it starting for the next call
                self._ready = True
            request = json.dumps({"gold": gold, "candidates": candidates}) + "\n"
            self._process.stdin.write(request.encode())
            self._process.stdin.flush()
            reply = self._read_line(deadline)
            if reply is None:  # overran the deadline: the worker is stuck, replace it
                self._restart_after_failure()
                return False
            return bool(reply.get("equal", False))
        except (_WorkerGone, OSError, ValueError):
            self._restart_after_failure()
            return False
        finally:
            self._lock.release()

    def _restart_after_failure(self) -> None:
        # Kill the stuck or dead worker and start the next one right away, so that it has
        # imported sympy by the time the next question comes.
        self._kill()
        self._ensure_started()


_default_checker = SymbolicChecker()
atexit.register(_default_checker.close)


def symbolic_equal(gold: str, candidates: list[str], timeout_s: float) -> bool:
    """True if the shared worker finds a candidate equal to ``gold`` within ``timeout_s`` seconds."""
    return _default_checker.equal(gold, candidates, time.monotonic() + timeout_s)


def start_symbolic_worker() -> None:
    """Start the shared worker ahead of time (it needs about a second to import sympy)."""
    _default_checker.start()
