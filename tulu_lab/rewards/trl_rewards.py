"""Reward functions in TRL's format, built on ``verify``.

TRL's GRPOTrainer (and RLOO, Online DPO) call ``reward_func(prompts=..., completions=..., **columns)``
where ``columns`` holds the dataset's other columns as lists, one value per completion; for
conversational data each completion is a list of messages [{"role": "assistant", "content": ...}].
The reward is ``correct`` when the verifier accepts the completion and ``incorrect`` otherwise
(Tülu 3 uses 10 and 0). Tülu's non-stop penalty (-10 for a response cut off without EOS) needs the
token ids, so it belongs to the RLVR loop, not here.
"""

from __future__ import annotations

from typing import Any, Callable

from .dispatch import verify
from .symbolic import start_symbolic_worker

__all__ = ["completion_text", "make_verifiable_reward", "verifiable_reward"]


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the assistant messages of a conversation joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)) and all(isinstance(m, dict) for m in completion):
        return "".join(
            _content_text(m.get("content")) for m in completion if m.get("role", "assistant") == "assistant"
        )
    raise ValueError(
        f"a completion must be a string or a list of message dicts, got {type(completion).__name__}"
    )


def _content_text(content: Any) -> str:
    """A message's content: a string, or the text parts of a list [{"type": "text", "text": ...}]."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def _scores(completions, ground_truth, dataset, correct: float, incorrect: float) -> list[float]:
    if not (len(completions) == len(ground_truth) == len(dataset)):
        raise ValueError(
            f"completions ({len(completions)}), ground_truth ({len(ground_truth)}) and "
            f"dataset ({len(dataset)}) must have the same length"
        )
    return [
        correct if verify(name, completion_text(completion), truth) else incorrect
        for completion, truth, name in zip(completions, ground_truth, dataset)
    ]


def make_verifiable_reward(correct: float = 10.0, incorrect: float = 0.0) -> Callable[..., list[float]]:
    """A TRL reward function scoring ``correct`` (Tülu 3: 10) or ``incorrect`` (0) via ``verify``.

    The returned ``f(prompts, completions, ground_truth, dataset, **kwargs) -> list[float]`` needs
    the ``ground_truth`` and ``dataset`` columns (lists as long as ``completions``).
    """

    def verifiable_reward(prompts, completions, ground_truth, dataset, **kwargs) -> list[float]:
        return _scores(completions, ground_truth, dataset, correct, incorrect)

    verifiable_reward.__name__ = f"verifiable_reward_{correct:g}"  # TRL logs rewards by name
    start_symbolic_worker(wait=True)  # so that no MATH answer is judged while sympy imports
    return verifiable_reward


def verifiable_reward(prompts, completions, ground_truth, dataset, **kwargs) -> list[float]:
    """1.0 if ``verify`` accepts the completion, else 0.0 (other scales: ``make_verifiable_reward``)."""
    return _scores(completions, ground_truth, dataset, 1.0, 0.0)
