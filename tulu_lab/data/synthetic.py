"""Synthetic GSM-style word problems for the embedded default model, and the rows built from them.

A small model learns the recipe's stages on problems it can almost solve, so the default data are
short templated stories with integer arithmetic. Every problem is drawn from ``random.Random(seed)``
(never the global RNG): the same arguments always give the same problems.

DEFAULT DIFFICULTY (what downstream training uses): 1 or 2 steps (``min_steps=1, max_steps=2``),
operands drawn from 2..20 (``low=2, high=20``); multipliers are at most 5, divisions are exact.

A problem is a story (shopping, money, ages, travel, bakery, garden) built from a start and a chain
of operations; each operation is one solution line with its calculation written out, e.g.

    Tom buys 3 packs of 4 pens, so he has 3 * 4 = 12 pens.
    After giving away 5, he has 12 - 5 = 7 pens.
    #### 7

The last line is exactly "#### N" (GSM8K's convention), so both lm-evaluation-harness' strict regex
``#### (-?[0-9.,]+)`` and the last-number rule find the answer. Answers are positive integers.

Each problem has a ``key`` = (template, setup, start numbers, ((operation, operand), ...)) that
leaves out names, items and wording: two problems with the same key are the same problem, however
phrased. ``id`` is a hash of the key. Generation and :func:`make_splits` deduplicate by the key and
by the normalised question text, so a train and a test split never share a problem.

Rows (the Tülu formats read by :mod:`tulu_lab.data.loaders`): :func:`rlvr_row`, :func:`sft_row`,
:func:`preference_row` (chosen: the correct solution; rejected: one step's arithmetic slipped and the
error carried through to a wrong final answer).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from tulu_lab.data.synthetic_ifeval import IFEVAL_DATASET, IFEvalPrompt, generate_ifeval_prompts
from tulu_lab.data.synthetic_math import MATH_DATASET, MATH_INSTRUCTION, MathProblem, generate_math_problems

GSM_INSTRUCTION = "\nSolve step by step and end with a line '#### <answer>'."
GSM_DATASET = "gsm8k"  # the verifier name in RLVR rows

DEFAULT_MIN_STEPS = 1
DEFAULT_MAX_STEPS = 2
DEFAULT_LOW = 2
DEFAULT_HIGH = 20

_MAX_MULTIPLIER = 5  # "6 times as many" reads oddly in these stories
_MAX_MISSES = 5000   # consecutive draws without a new problem before giving up
_OPERATOR = {"product": "*", "add": "+", "sub": "-", "mul": "*", "div": "/"}


@dataclass(frozen=True)
class WordProblem:
    """One synthetic word problem.

    question  the story and its question (no instruction; see :func:`gsm_prompt`)
    solution  one line per step with the calculation, then "#### N"
    answer    N, a positive integer
    n_steps   the number of calculation lines
    key       (template, setup, start, ops): what makes two problems the same, wording aside
    """

    id: str
    template: str
    question: str
    solution: str
    answer: int
    n_steps: int
    key: tuple
    # each solution line with "{equation}" where its calculation goes (used to write wrong solutions)
    step_frames: tuple[str, ...] = field(repr=False, compare=False)

    @property
    def prompt(self) -> str:
        return gsm_prompt(self)


# ---------------------------------------------------------------------------------------------
# Story templates
# ---------------------------------------------------------------------------------------------

_NAMES = (("Tom", "he"), ("Mia", "she"), ("Sam", "he"), ("Ava", "she"), ("Leo", "he"), ("Zoe", "she"),
          ("Ben", "he"), ("Emma", "she"), ("Omar", "he"), ("Lina", "she"), ("Raj", "he"), ("Nora", "she"),
          ("Carlos", "he"), ("Ines", "she"), ("Kenji", "he"), ("Yuki", "she"), ("Felix", "he"),
          ("Amara", "she"), ("Hugo", "he"), ("Priya", "she"), ("Ivan", "he"), ("Chloe", "she"),
          ("Malik", "he"), ("Sofia", "she"))
_PRONOUNS = {"he": {"he": "he", "him": "him", "his": "his"}, "she": {"he": "she", "him": "her", "his": "her"}}
_RELATIVES = ("sister", "brother", "cousin", "neighbour", "friend")


@dataclass(frozen=True)
class _Op:
    question: str   # sentence added to the story
    step: str       # solution line, with "{equation}"
    final_question: str | None = None  # replaces the story's question (a division changes what is asked)


@dataclass(frozen=True)
class _Template:
    name: str
    context: Callable[[random.Random], dict]
    given: str | None            # start stated outright: 0 steps
    product: _Op | None          # start as "a groups of b": 1 step
    ops: dict[str, tuple[_Op, ...]]
    question: str
    div_anywhere: bool = False   # else a division may only be the last step
    max_value: int = 100_000


def _items(*choices: tuple[str, str, str]) -> Callable[[random.Random], dict]:
    def context(rng: random.Random) -> dict:
        item, container, containers = rng.choice(choices)
        return {"item": item, "box": container, "boxes": containers}
    return context


def _no_context(rng: random.Random) -> dict:
    return {}


def _vehicle(rng: random.Random) -> dict:
    return {"vehicle": rng.choice(("train", "bus", "truck", "coach", "van")),
            "other": rng.choice(("car", "motorbike", "second bus", "delivery van"))}


def _baked(rng: random.Random) -> dict:
    return {"item": rng.choice(("cookies", "muffins", "rolls", "cupcakes", "bagels"))}


def _planted(rng: random.Random) -> dict:
    return {"item": rng.choice(("apple trees", "tomato plants", "rose bushes", "pumpkin plants", "pear trees"))}


def _purchase(rng: random.Random) -> dict:
    return {"thing": rng.choice(("a book", "lunch", "a movie ticket", "a new game", "art supplies"))}


_TEMPLATES: dict[str, _Template] = {t.name: t for t in (
    _Template(
        name="shopping",
        context=_items(("pens", "pack", "packs"), ("stickers", "sheet", "sheets"), ("marbles", "bag", "bags"),
                       ("crayons", "box", "boxes"), ("stamps", "book", "books"), ("beads", "jar", "jars")),
        given="{Name} has {a} {item}.",
        product=_Op("{Name} buys {a} {boxes} of {item} with {b} {item} in each {box}.",
                    "{Name} buys {a} {boxes} of {b} {item}, so {he} has {equation} {item}."),
        ops={
            "add": (_Op("{He} then gets {n} more {item} from {his} {relative}.",
                        "After getting {n} more, {he} has {equation} {item}."),
                    _Op("Later {he} finds {n} more {item} in {his} bag.",
                        "With the {n} {he} finds, {he} has {equation} {item}."),
                    _Op("{He} buys another {n} {item} at the shop.",
                        "Buying {n} more gives {him} {equation} {item}.")),
            "sub": (_Op("{He} gives {n} {item} to {his} {relative}.",
                        "After giving away {n}, {he} has {equation} {item}."),
                    _Op("{He} loses {n} {item} on the way home.",
                        "After losing {n}, {he} has {equation} {item}."),
                    _Op("{He} uses {n} {item} for a school project.",
                        "After using {n}, {he} has {equation} {item} left.")),
            "mul": (_Op("Over the summer {his} collection grows to {n} times as many {item}.",
                        "{n} times as many is {equation} {item}."),
                    _Op("By winter {he} has {n} times as many {item} as that.",
                        "By winter {he} has {equation} {item}.")),
            "div": (_Op("{He} shares all of {his} {item} equally among {n} friends.",
                        "Each friend gets {equation} {item}.",
                        "How many {item} does each friend get?"),),
        },
        question="How many {item} does {Name} have now?",
    ),
    _Template(
        name="money",
        context=_purchase,
        given="{Name} has ${a} in {his} wallet.",
        product=_Op("{Name} works for {a} hours and earns ${b} an hour.",
                    "{Name} works {a} hours at {b} dollars an hour, so {he} earns {equation} dollars."),
        ops={
            "add": (_Op("{His} {relative} gives {him} ${n} more.",
                        "With the gift {he} has {equation} dollars."),
                    _Op("{He} earns another ${n} washing cars.",
                        "After washing cars {he} has {equation} dollars."),
                    _Op("{He} sells an old toy for ${n}.",
                        "After selling the toy {he} has {equation} dollars.")),
            "sub": (_Op("{He} spends ${n} on {thing}.",
                        "After paying for {thing}, {he} has {equation} dollars."),
                    _Op("{He} pays ${n} for a bus pass.",
                        "After buying the bus pass {he} has {equation} dollars."),
                    _Op("{He} gives ${n} to a local charity.",
                        "After the donation {he} has {equation} dollars.")),
            "mul": (_Op("By the end of the year {his} savings grow to {n} times that amount.",
                        "{n} times as much is {equation} dollars."),
                    _Op("After a good month {he} has {n} times as much money as before.",
                        "{He} now has {equation} dollars.")),
            "div": (_Op("{He} splits all of {his} money equally into {n} envelopes.",
                        "Each envelope gets {equation} dollars.",
                        "How many dollars go into each envelope?"),),
        },
        question="How many dollars does {Name} have now?",
    ),
    _Template(
        name="ages",
        context=_no_context,
        given="{first} is {a} years old.",
        product=None,
        ops={
            "add": (_Op("{new} is {n} years older than {prev}.", "{new} is {equation} years old."),),
            "sub": (_Op("{new} is {n} years younger than {prev}.", "{new} is {equation} years old."),),
            "mul": (_Op("{new} is {n} times as old as {prev}.", "{new} is {equation} years old."),),
            "div": (_Op("{new} is one {nth} as old as {prev}.", "{new} is {equation} years old."),),
        },
        question="How old is {last}?",
        div_anywhere=True,
        max_value=110,
    ),
    _Template(
        name="travel",
        context=_vehicle,
        given="A {vehicle} travels {a} km away from the station.",
        product=_Op("A {vehicle} leaves the station and travels at {b} km per hour for {a} hours.",
                    "In {a} hours at {b} km per hour the {vehicle} travels {equation} km."),
        ops={
            "add": (_Op("Then it travels another {n} km in the same direction.",
                        "After {n} km more it is {equation} km from the station."),
                    _Op("After a short stop it goes {n} km farther.",
                        "Going {n} km farther puts it {equation} km from the station.")),
            "sub": (_Op("Then it turns around and travels {n} km back toward the station.",
                        "Coming back {n} km leaves it {equation} km from the station."),
                    _Op("It then heads {n} km back toward the station to pick up a passenger.",
                        "Heading back {n} km leaves it {equation} km from the station.")),
            "div": (_Op("A {other} covers that same distance in {n} hours.",
                        "The {other} travels {equation} km per hour.",
                        "How many km per hour does the {other} travel?"),),
        },
        question="How many km from the station is the {vehicle} now?",
    ),
    _Template(
        name="bakery",
        context=_baked,
        given="A baker has {a} {item}.",
        product=_Op("A baker makes {a} trays of {item} with {b} {item} on each tray.",
                    "The baker makes {a} trays of {b}, so there are {equation} {item}."),
        ops={
            "add": (_Op("Then the baker makes {n} more {item}.",
                        "With {n} more there are {equation} {item}."),
                    _Op("A helper brings {n} more {item} from the other shop.",
                        "With the {n} from the other shop there are {equation} {item}.")),
            "sub": (_Op("The baker sells {n} {item} in the morning.",
                        "After selling {n}, there are {equation} {item} left."),
                    _Op("{n} of the {item} get burnt and are thrown away.",
                        "Without the {n} burnt ones, there are {equation} {item} left."),
                    _Op("A customer buys {n} {item} for a party.",
                        "After the customer's order, there are {equation} {item} left.")),
            "div": (_Op("The baker packs all of the {item} into boxes of {n}.",
                        "That fills {equation} boxes.",
                        "How many boxes does the baker fill?"),),
        },
        question="How many {item} does the baker have now?",
    ),
    _Template(
        name="garden",
        context=_planted,
        given="A farmer has {a} {item}.",
        product=_Op("A farmer plants {a} rows of {item} with {b} in each row.",
                    "The farmer plants {a} rows of {b}, which is {equation} {item}."),
        ops={
            "add": (_Op("Later the farmer plants {n} more {item}.",
                        "After planting {n} more, there are {equation} {item}."),
                    _Op("A neighbour gives the farmer {n} more {item}.",
                        "With the neighbour's {n}, there are {equation} {item}.")),
            "sub": (_Op("A storm destroys {n} of the {item}.",
                        "After the storm, {equation} {item} remain."),
                    _Op("The farmer sells {n} of the {item} at the market.",
                        "After the sale, {equation} {item} remain.")),
            "mul": (_Op("Over the years the farm grows to {n} times as many {item}.",
                        "{n} times as many is {equation} {item}."),
                    _Op("Ten years later the farmer has {n} times as many {item}.",
                        "Ten years later there are {equation} {item}.")),
            "div": (_Op("The farmer splits all of the {item} equally among {n} fields.",
                        "Each field gets {equation} {item}.",
                        "How many {item} are in each field?"),),
        },
        question="How many {item} does the farmer have now?",
    ),
)}

TEMPLATE_NAMES = tuple(_TEMPLATES)
_NTH = {2: "half", 3: "third", 4: "quarter", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth",
        9: "ninth", 10: "tenth"}


# ---------------------------------------------------------------------------------------------
# Arithmetic of a key
# ---------------------------------------------------------------------------------------------

def _apply(kind: str, value: int, operand: int) -> int:
    if kind == "add":
        return value + operand
    if kind == "sub":
        return value - operand
    if kind == "mul":
        return value * operand
    if kind == "div":
        return value // operand
    raise ValueError(f"unknown operation {kind!r}")


def _equations(key: tuple, slip: tuple[int, int] | None = None) -> tuple[list[str], int] | None:
    """The calculation of each step and the final value; ``slip=(step, delta)`` adds ``delta`` to that
    step's result and carries the error on. None if a slipped chain stops being whole and positive."""
    _, setup, start, ops = key
    equations = []
    if setup == "product":
        a, b = start
        value = a * b
        if slip and slip[0] == 0:
            value += slip[1]
        equations.append(f"{a} * {b} = {value}")
        offset = 1
    else:
        (value,) = start
        offset = 0
    for index, (kind, operand) in enumerate(ops):
        if kind == "div" and value % operand:
            return None
        result = _apply(kind, value, operand)
        if slip and slip[0] == index + offset:
            result += slip[1]
        equations.append(f"{value} {_OPERATOR[kind]} {operand} = {result}")
        value = result
        if value <= 0:
            return None
    return equations, value


def answer_from_key(key: tuple) -> int:
    """Recompute a problem's answer from its key alone (no text involved)."""
    worked = _equations(key)
    if worked is None:
        raise ValueError(f"key {key!r} does not describe a whole-number problem")
    return worked[1]


# ---------------------------------------------------------------------------------------------
# Drawing problems
# ---------------------------------------------------------------------------------------------

def _feasible_operands(kind: str, value: int, low: int, high: int, template: _Template) -> list[int]:
    if kind == "add":
        candidates = range(low, high + 1)
    elif kind == "sub":
        candidates = range(low, min(high, value - 1) + 1)
    elif kind == "mul":
        candidates = range(2, min(high, _MAX_MULTIPLIER) + 1)
    elif kind == "div":
        limit = high if template.name != "ages" else min(high, max(_NTH))
        # a quotient of at least 2 keeps "1 boxes" and "one half as old as 2" out of the stories
        candidates = [d for d in range(max(2, low), min(limit, value // 2) + 1) if value % d == 0]
    else:
        raise ValueError(kind)
    return [n for n in candidates if 0 < _apply(kind, value, n) <= template.max_value]


def _fill(text: str, context: dict) -> str:
    # str.format would trip over braces in the text; the placeholders are a small closed set
    for name, value in context.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def _draw(rng: random.Random, template: _Template, n_steps: int, low: int, high: int) -> WordProblem | None:
    person, pronoun = rng.choice(_NAMES)
    forms = _PRONOUNS[pronoun]
    others = [name for name, _ in _NAMES if name != person]
    rng.shuffle(others)
    people = [person] + others
    context = {"Name": person, "first": person, "he": forms["he"], "He": forms["he"].capitalize(),
               "him": forms["him"], "his": forms["his"], "His": forms["his"].capitalize(),
               "relative": rng.choice(_RELATIVES), **template.context(rng)}

    use_product = template.product is not None and (template.given is None or rng.random() < 0.5)
    if use_product:
        start = (rng.randint(low, high), rng.randint(low, high))
        value = start[0] * start[1]
        sentences = [_fill(template.product.question, {**context, "a": start[0], "b": start[1]})]
        frames = [_fill(template.product.step, {**context, "a": start[0], "b": start[1]})]
        n_ops = n_steps - 1
    else:
        start = (rng.randint(low, high),)
        value = start[0]
        sentences = [_fill(template.given, {**context, "a": start[0]})]
        frames = []
        n_ops = n_steps

    ops, final_question, used_phrases = [], template.question, set()
    for position in range(n_ops):
        is_last = position == n_ops - 1
        choices = []
        for kind in template.ops:
            if kind == "div" and not (is_last or template.div_anywhere):
                continue
            operands = _feasible_operands(kind, value, low, high, template)
            if operands:
                choices.append((kind, operands))
        if not choices:
            return None  # a dead end (e.g. nothing left to subtract): the caller draws again
        kind, operands = rng.choice(choices)
        operand = rng.choice(operands)
        # a phrase not yet used in this story, where one is left, so steps do not read the same
        fresh = [p for p in template.ops[kind] if p.question not in used_phrases]
        phrase = rng.choice(fresh or template.ops[kind])
        used_phrases.add(phrase.question)
        step_context = {**context, "n": operand, "prev": people[position], "new": people[position + 1],
                        "nth": _NTH.get(operand, "")}
        sentences.append(_fill(phrase.question, step_context))
        frames.append(_fill(phrase.step, step_context))
        if phrase.final_question:
            final_question = phrase.final_question
        ops.append((kind, operand))
        value = _apply(kind, value, operand)
    sentences.append(_fill(final_question, {**context, "last": people[n_ops]}))

    key = (template.name, "product" if use_product else "given", start, tuple(ops))
    equations, answer = _equations(key)
    solution_lines = [frame.replace("{equation}", equation) for frame, equation in zip(frames, equations)]
    return WordProblem(
        id="gsm-syn-" + hashlib.sha1(repr(key).encode()).hexdigest()[:12],
        template=template.name,
        question=" ".join(sentences),
        solution="\n".join(solution_lines + [f"#### {answer}"]),
        answer=answer,
        n_steps=len(equations),
        key=key,
        step_frames=tuple(frames),
    )


def normalise_question(text: str) -> str:
    """Lower-case, punctuation-free, single-spaced text: the form used to spot duplicate questions."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _check_difficulty(min_steps: int, max_steps: int, low: int, high: int) -> None:
    if not (isinstance(min_steps, int) and isinstance(max_steps, int) and 1 <= min_steps <= max_steps):
        raise ValueError(f"need 1 <= min_steps <= max_steps, got min_steps={min_steps!r}, max_steps={max_steps!r}")
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        raise ValueError(f"need 1 <= low <= high, got low={low!r}, high={high!r}")


def generate_word_problems(n: int, seed: int = 0, *, min_steps: int = DEFAULT_MIN_STEPS,
                           max_steps: int = DEFAULT_MAX_STEPS, low: int = DEFAULT_LOW,
                           high: int = DEFAULT_HIGH, templates: Iterable[str] | None = None,
                           exclude: Iterable[WordProblem] = ()) -> list[WordProblem]:
    """``n`` distinct GSM-style word problems, the same for the same arguments.

    n_steps of each problem is drawn uniformly from min_steps..max_steps (the DEFAULT is 1..2);
    operands are drawn from low..high (DEFAULT 2..20). ``templates`` restricts the stories (see
    TEMPLATE_NAMES). Problems sharing a key or a normalised question with an earlier one, or with
    anything in ``exclude``, are skipped. Raises ValueError when the settings cannot yield ``n``
    distinct problems (a narrow number range with few steps has only so many).
    """
    _check_difficulty(min_steps, max_steps, low, high)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    names = tuple(templates) if templates is not None else TEMPLATE_NAMES
    unknown = [name for name in names if name not in _TEMPLATES]
    if unknown or not names:
        raise ValueError(f"unknown template(s) {unknown}; choose from {TEMPLATE_NAMES}")
    chosen = [_TEMPLATES[name] for name in names]

    rng = random.Random(seed)
    seen_keys = {problem.key for problem in exclude}
    seen_texts = {normalise_question(problem.question) for problem in exclude}
    problems: list[WordProblem] = []
    misses = 0  # draws in a row that gave nothing new: many means the space is used up
    while len(problems) < n and misses < _MAX_MISSES:
        problem = _draw(rng, rng.choice(chosen), rng.randint(min_steps, max_steps), low, high)
        text = normalise_question(problem.question) if problem is not None else None
        if problem is None or problem.key in seen_keys or text in seen_texts:
            misses += 1
            continue
        misses = 0
        seen_keys.add(problem.key)
        seen_texts.add(text)
        problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"found only {len(problems)} distinct problems of the {n} asked for with steps "
                         f"{min_steps}..{max_steps} and numbers {low}..{high}; widen the number range")
    return problems


def make_splits(n_train: int, n_test: int, seed: int = 0, *, kind: str = "gsm8k", **options) -> tuple[list, list]:
    """(train, test) synthetic items that share no problem.

    kind     "gsm8k" (WordProblem, the default), "math" (MathProblem) or "ifeval" (IFEvalPrompt).
    options  keyword arguments of the generator: for gsm8k min_steps, max_steps, low, high,
             templates (see :func:`generate_word_problems`); for math low, high, kinds; for
             ifeval functions.

    Items are compared by key and by question text (normalised for word problems). The test split
    is drawn first, so it depends only on (n_test, seed, options), not on n_train.
    """
    generators = {"gsm8k": generate_word_problems, "math": generate_math_problems,
                  "ifeval": generate_ifeval_prompts}
    if kind not in generators:
        raise ValueError(f"kind must be one of {sorted(generators)}, got {kind!r}")
    generate = generators[kind]
    test = generate(n_test, seed, **options)
    # a derived seed: the train stream must not replay the test stream's draws
    train = generate(n_train, seed * 1_000_003 + 7919, exclude=test, **options)
    return train, test


# ---------------------------------------------------------------------------------------------
# Wrong solutions for preference pairs
# ---------------------------------------------------------------------------------------------

def wrong_solution(problem: WordProblem, seed: int = 0) -> tuple[str, int]:
    """A plausible but wrong worked solution: one step's result is off by a small amount and every
    later step builds on it. Returns (solution text ending "#### M", M) with M != problem.answer."""
    rng = random.Random(f"{seed}:{problem.id}")
    tries = [(step, delta) for step in range(problem.n_steps) for delta in (-3, -2, -1, 1, 2, 3, 10, -10)]
    rng.shuffle(tries)
    # the last step can always slip upward, so the loop always finds one
    tries.append((problem.n_steps - 1, 1))
    for slip in tries:
        worked = _equations(problem.key, slip)
        if worked is None or worked[1] == problem.answer:
            continue
        equations, wrong = worked
        lines = [frame.replace("{equation}", equation) for frame, equation in zip(problem.step_frames, equations)]
        return "\n".join(lines + [f"#### {wrong}"]), wrong
    raise AssertionError("unreachable: a final-step slip of +1 always gives a wrong answer")


# ---------------------------------------------------------------------------------------------
# Tülu-format rows
# ---------------------------------------------------------------------------------------------

def gsm_prompt(problem: WordProblem | str) -> str:
    """The user turn for a word problem: the question followed by GSM_INSTRUCTION."""
    question = problem.question if isinstance(problem, WordProblem) else problem
    return question + GSM_INSTRUCTION


def _user_turn(item) -> tuple[str, str, str]:
    """(prompt, ground truth, dataset) for any synthetic item."""
    if isinstance(item, WordProblem):
        return gsm_prompt(item), str(item.answer), GSM_DATASET
    if isinstance(item, MathProblem):
        return item.problem + MATH_INSTRUCTION, item.answer, MATH_DATASET
    if isinstance(item, IFEvalPrompt):
        return item.prompt, item.ground_truth, IFEVAL_DATASET
    raise TypeError(f"expected a WordProblem, MathProblem or IFEvalPrompt, got {type(item).__name__}")


def rlvr_row(item: WordProblem | MathProblem | IFEvalPrompt) -> dict:
    """``{"id", "messages": [user prompt], "ground_truth", "dataset"}`` (dataset: gsm8k/math/ifeval)."""
    prompt, ground_truth, dataset = _user_turn(item)
    return {"id": item.id, "messages": [{"role": "user", "content": prompt}],
            "ground_truth": ground_truth, "dataset": dataset}


def sft_row(item: WordProblem | MathProblem) -> dict:
    """``{"id", "messages": [user prompt, assistant worked solution]}``."""
    if isinstance(item, IFEvalPrompt):
        raise TypeError("IFEval-style prompts have no reference response to imitate; use rlvr_row")
    prompt, _, _ = _user_turn(item)
    return {"id": item.id, "messages": [{"role": "user", "content": prompt},
                                        {"role": "assistant", "content": item.solution}]}


def preference_row(problem: WordProblem, seed: int = 0) -> dict:
    """``{"id", "chosen": [user, correct solution], "rejected": [user, wrong solution]}``.

    The rejected solution comes from :func:`wrong_solution` (a slipped step carried through), so
    it ends with a wrong "#### M" while keeping the format of the chosen one.
    """
    if not isinstance(problem, WordProblem):
        raise TypeError(f"preference pairs are built from WordProblem, got {type(problem).__name__}")
    user = {"role": "user", "content": gsm_prompt(problem)}
    rejected_text, _ = wrong_solution(problem, seed)
    return {"id": problem.id,
            "chosen": [user, {"role": "assistant", "content": problem.solution}],
            "rejected": [dict(user), {"role": "assistant", "content": rejected_text}]}
