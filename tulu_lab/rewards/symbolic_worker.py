"""Worker process for symbolic answer comparison (run as a script by ``symbolic.py``).

It reads one JSON request per line on stdin, {"gold": str, "candidates": [str, ...]}, and writes
one JSON reply per line, {"equal": bool}: whether math-verify finds any candidate equal to the
gold answer. It never evaluates text as Python; math-verify parses LaTeX into sympy objects.

The parent enforces the time limit by killing this process, which works even when sympy is
stuck inside C code (a huge integer power) where a signal could not interrupt it. Time-outs
inside math-verify are therefore switched off here (they rely on SIGALRM). The address space is
capped so that a runaway expression raises MemoryError instead of exhausting the machine. When
the parent exits, stdin closes and the worker ends after its current comparison.
"""

import json
import logging
import os
import resource
import sys

# Run as a script, this file's folder is first on sys.path; drop it so that sibling modules
# can never shadow the libraries imported below.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

MEMORY_LIMIT_BYTES = 4 * 1024**3


def _answers_equal(gold_text, candidate_texts, parse, verify):
    gold = parse(gold_text, parsing_timeout=None)
    if not gold:
        return False
    for text in candidate_texts:
        candidate = parse(text, parsing_timeout=None)
        if candidate and verify(gold, candidate, timeout_seconds=None):
            return True
    return False


def main():
    # Replies go to the real stdout only; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    logging.disable(logging.WARNING)
    from math_verify import parse, verify

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = MEMORY_LIMIT_BYTES if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT_BYTES, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))

    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            request = json.loads(line)
            equal = _answers_equal(request["gold"], request["candidates"], parse, verify)
        except Exception:  # noqa: BLE001 - any failure to parse or compare means "not equal"
            equal = False
        replies.write(json.dumps({"equal": bool(equal)}) + "\n")


if __name__ == "__main__":
    main()
