"""Symbolic equality of math answers with a hard time limit, via worker subprocesses.

math-verify (sympy underneath) decides that "\\frac12" equals "0.5" or that "(x+1)^2" equals
"x^2+2x+1", but some inputs never finish: ``9^{9^{9^{9}}}`` makes sympy build a gigantic integer
in C code, and a long run of "{" hangs its parser. math-verify's own time-out uses SIGALRM, which
only works in the main thread and cannot interrupt C code. So the comparison runs in a separate
Python process (``symbolic_worker.py``); the caller waits at most until its deadline, and on
overrun the worker is killed.

A worker needs about a second of CPU to import sympy (several seconds on a loaded machine), and
waiting for that counts against the caller's deadline. Two things keep it off the common path:
a spare worker is kept warm, so a killed worker is replaced at once; and
``start_symbolic_worker(wait=True)`` lets an evaluation wait for the start-up before its first
question. A question asked while no worker is ready yet is answered False.

One active worker serves the whole process; calls from several threads take turns (waiting for
the turn counts against each caller's deadline). A process created by fork starts its own workers.
POSIX only (``select`` on pipes).
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


class _Worker:
    """One worker process and the bytes it has sent that are not yet read."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", str(_WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self.buffer = b""
        self.ready = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def read_line(self, deadline: float) -> dict | None:
        """One JSON line from the worker, or None on time-out; _WorkerGone if it exited."""
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _WorkerGone
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def wait_ready(self, deadline: float) -> bool:
        if not self.ready and self.read_line(deadline) is not None:
            self.ready = True
        return self.ready

    def ask(self, request: dict, deadline: float) -> dict | None:
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        return self.read_line(deadline)

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass


class SymbolicChecker:
    """Answers "is any candidate equal to gold?" before a deadline, using killable workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: _Worker | None = None
        self._spare: _Worker | None = None
        self._owner_pid = os.getpid()

    def _ensure_workers(self) -> None:
        if self._owner_pid != os.getpid():  # forked child: the parent's pipes are not ours
            self._active, self._spare, self._owner_pid = None, None, os.getpid()
        if self._active is None or not self._active.alive():
            spare_ok = self._spare is not None and self._spare.alive()
            self._active, self._spare = (self._spare if spare_ok else _Worker()), None
        if self._spare is None or not self._spare.alive():
            self._spare = _Worker()

    def _replace_active(self) -> None:
        # The active worker is stuck or dead: kill it and promote the warm spare.
        if self._active is not None:
            self._active.kill()
            self._active = None
        self._ensure_workers()

    def start(self, wait: bool = False, timeout_s: float = 60.0) -> bool:
        """Start the workers if needed; with ``wait``, block until one is ready. True if ready."""
        with self._lock:
            self._ensure_workers()
            if not wait:
                return self._active.ready
            try:
                return self._active.wait_ready(time.monotonic() + timeout_s)
            except _WorkerGone:
                self._replace_active()
                return False

    def equal(self, gold: str, candidates: list[str], deadline: float) -> bool:
        """True if math-verify finds one of ``candidates`` equal to ``gold`` before ``deadline``.

        ``deadline`` is a ``time.monotonic()`` value. Past it the answer is False.
        """
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        try:
            self._ensure_workers()
            if not self._active.wait_ready(deadline):
                return False  # still importing sympy: leave it starting for the next call
            reply = self._active.ask({"gold": gold, "candidates": candidates}, deadline)
            if reply is None:  # overran the deadline: the worker is stuck
                self._replace_active()
                return False
            return bool(reply.get("equal", False))
        except (_WorkerGone, OSError, ValueError):
            self._replace_active()
            return False
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the workers (they restart on the next call)."""
        with self._lock:
            for worker in (self._active, self._spare):
                if worker is not None and self._owner_pid == os.getpid():
                    worker.kill()
            self._active = self._spare = None


_default_checker = SymbolicChecker()
atexit.register(_default_checker.close)


def symbolic_equal(gold: str, candidates: list[str], timeout_s: float) -> bool:
    """True if the shared worker finds a candidate equal to ``gold`` within ``timeout_s`` seconds."""
    return _default_checker.equal(gold, candidates, time.monotonic() + timeout_s)


def start_symbolic_worker(wait: bool = False, timeout_s: float = 60.0) -> bool:
    """Start the shared workers ahead of time; ``wait=True`` blocks until one can answer.

    Evaluations should call ``start_symbolic_worker(wait=True)`` before scoring, so that no
    answer is judged while sympy is still being imported. Returns True once a worker is ready.
    """
    return _default_checker.start(wait=wait, timeout_s=timeout_s)
