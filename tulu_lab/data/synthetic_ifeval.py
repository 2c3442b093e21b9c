"""Synthetic IFEval-style prompts with RLVR-IFeval ground truths.

Each prompt is a short writing task plus one verifiable constraint, as in Tülu 3's RLVR IFEval data.
The ground truth is the JSON the ifeval verifier reads: ``{"func_name": NAME, arg: value, ...}``;
the function is called with the response and the other keys as keyword arguments. The functions
used here (a subset of the 25, with their argument names as in open-instruct's if_functions):

    validate_lowercase()                 validate_uppercase()            validate_no_commas()
    validate_word_constraint(N, quantifier)   verify_bullet_points(N)     validate_end(end_phrase)
    validate_title()                     verify_postscript(postscript_marker)
    verify_keywords(keyword_list)        validate_highlighted_sections(N)

Seeded by ``random.Random(seed)``; key = (task, topic, func_name, arguments); generation skips repeats.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Callable, Iterable

IFEVAL_DATASET = "ifeval"  # the verifier name in RLVR rows


@dataclass(frozen=True)
class IFEvalPrompt:
    """One constraint prompt; ``ground_truth`` is the RLVR JSON string (func_name + arguments)."""

    id: str
    prompt: str
    func_name: str
    ground_truth: str
    key: tuple


_TASKS = (
    "Write a short story about {topic}.",
    "Write a short note to a friend about {topic}.",
    "Describe {topic} in a few sentences.",
    "Write a short poem about {topic}.",
    "Write a diary entry about {topic}.",
    "Explain to a child what is special about {topic}.",
)
_TOPICS = (
    "a rainy afternoon", "your favourite food", "learning to ride a bike", "a trip to the beach",
    "the first day of school", "a lost cat", "planting a garden", "a visit to a museum",
    "a snowy morning", "cooking dinner for friends", "a long train ride", "a football match",
    "the night sky", "a busy market", "moving to a new city", "a birthday party",
    "a walk in the forest", "the town library", "a thunderstorm", "making pancakes",
)
_KEYWORDS = ("window", "morning", "laughter", "river", "music", "blue", "quiet", "journey",
             "friend", "bread", "lantern", "garden", "clock", "bridge", "summer", "paper")
_END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional questions.",
                "Any other questions?", "That is all for today.")


def _lowercase(rng: random.Random) -> tuple[dict, str]:
    return {}, "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed."


def _uppercase(rng: random.Random) -> tuple[dict, str]:
    return {}, "Your entire response should be in English and in capital letters only."


def _no_commas(rng: random.Random) -> tuple[dict, str]:
    return {}, "Do not use any commas in your response."


def _word_count(rng: random.Random) -> tuple[dict, str]:
    quantifier = rng.choice(("at least", "at most", "around"))
    count = rng.choice((20, 30, 40, 50, 60, 80, 100, 150))
    return {"N": count, "quantifier": quantifier}, f"Answer with {quantifier} {count} words."


def _bullets(rng: random.Random) -> tuple[dict, str]:
    count = rng.randint(2, 5)
    return {"N": count}, (f"Your answer must contain exactly {count} bullet points. "
                          "Use markdown bullet points such as:\n* This is point 1.\n* This is point 2")


def _end_phrase(rng: random.Random) -> tuple[dict, str]:
    phrase = rng.choice(_END_PHRASES)
    return {"end_phrase": phrase}, (f"Finish your response with this exact phrase: {phrase} "
                                    "No other words should follow this phrase.")


def _title(rng: random.Random) -> tuple[dict, str]:
    return {}, "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."


def _postscript(rng: random.Random) -> tuple[dict, str]:
    marker = rng.choice(("P.S.", "P.P.S."))
    return {"postscript_marker": marker}, f"At the end of your response, please explicitly add a postscript starting with {marker}"


def _keywords(rng: random.Random) -> tuple[dict, str]:
    first, second = rng.sample(_KEYWORDS, 2)
    return {"keyword_list": [first, second]}, f"Include the keywords \"{first}\" and \"{second}\" in the response."


def _highlights(rng: random.Random) -> tuple[dict, str]:
    count = rng.randint(1, 4)
    return {"N": count}, (f"Highlight at least {count} section{'s' if count > 1 else ''} in your answer "
                          "with markdown, i.e. *highlighted section*.")


_CONSTRAINTS: dict[str, Callable[[random.Random], tuple[dict, str]]] = {
    "validate_lowercase": _lowercase,
    "validate_uppercase": _uppercase,
    "validate_no_commas": _no_commas,
    "validate_word_constraint": _word_count,
    "verify_bullet_points": _bullets,
    "validate_end": _end_phrase,
    "validate_title": _title,
    "verify_postscript": _postscript,
    "verify_keywords": _keywords,
    "validate_highlighted_sections": _highlights,
}
IFEVAL_FUNCTIONS = tuple(_CONSTRAINTS)


def generate_ifeval_prompts(n: int, seed: int = 0, *, functions: Iterable[str] | None = None,
                            exclude: Iterable[IFEvalPrompt] = ()) -> list[IFEvalPrompt]:
    """``n`` distinct constraint prompts, one constraint each, functions drawn uniformly."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    names = tuple(functions) if functions is not None else IFEVAL_FUNCTIONS
    unknown = [name for name in names if name not in _CONSTRAINTS]
    if unknown or not names:
        raise ValueError(f"unknown function(s) {unknown}; choose from {IFEVAL_FUNCTIONS}")

    rng = random.Random(seed)
    seen = {item.key for item in exclude} | {item.prompt for item in exclude}
    prompts: list[IFEvalPrompt] = []
    misses = 0  # draws in a row that gave nothing new: many means the space is used up
    while len(prompts) < n and misses < 5000:
        task = rng.randrange(len(_TASKS))
        topic = rng.choice(_TOPICS)
        func_name = rng.choice(names)
        arguments, instruction = _CONSTRAINTS[func_name](rng)
        key = (task, topic, func_name, json.dumps(arguments, sort_keys=True))
        prompt = _TASKS[task].format(topic=topic) + " " + instruction
        if key in seen or prompt in seen:
            misses += 1
            continue
        misses = 0
        seen.update((key, prompt))
        prompts.append(IFEvalPrompt(id="ifeval-syn-" + hashlib.sha1(repr(key).encode()).hexdigest()[:12],
                                    prompt=prompt, func_name=func_name,
                                    ground_truth=json.dumps({"func_name": func_name, **arguments}), key=key))
    if len(prompts) < n:
        raise ValueError(f"found only {len(prompts)} distinct prompts of the {n} asked for; "
                         f"allow more functions")
    return prompts
