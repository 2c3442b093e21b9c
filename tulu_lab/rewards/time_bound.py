"""A deadline for one verifier call, checked cooperatively by the verifiers' own loops.

Verification runs in the caller's thread (RLVR scores thousands of rollouts; a process per call
would cost more than the check). Every scan in the verifiers is linear in the text, so the only
way a call can take long is a long text; the loops over sentences, words, lines and response
variants call ``check_deadline()`` every few thousand steps, and the outermost call turns
``VerifierTimeout`` into a failed verdict. Deadlines nest: an inner bound never extends an outer one.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["VERIFY_TIME_LIMIT_S", "VerifierTimeout", "check_deadline", "remaining", "time_bound"]

# Work stops after this long and the verdict is False; with the last step and the unwinding the
# call returns well inside one second on 1 MB of text.
VERIFY_TIME_LIMIT_S = 0.6

_state = threading.local()


class VerifierTimeout(TimeoutError):
    """A verifier ran past its deadline (the text is too long to check in time)."""


@contextmanager
def time_bound(seconds: float) -> Iterator[float]:
    """Run the block under a deadline ``seconds`` from now (or the enclosing one, if sooner)."""
    outer = getattr(_state, "deadline", None)
    deadline = time.monotonic() + seconds
    if outer is not None:
        deadline = min(deadline, outer)
    _state.deadline = deadline
    try:
        yield deadline
    finally:
        _state.deadline = outer


def check_deadline() -> None:
    """Raise VerifierTimeout when the current thread's deadline has passed (no-op without one)."""
    deadline = getattr(_state, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise VerifierTimeout(f"verifier ran past its deadline by {time.monotonic() - deadline:.3f} s")


def remaining() -> float | None:
    """Seconds left before the current deadline, or None when no deadline is set."""
    deadline = getattr(_state, "deadline", None)
    return None if deadline is None else max(0.0, deadline - time.monotonic())
