r"""Standard few-shot exemplars and few-shot chat prompts for GSM8K, MATH and PopQA.

The exemplars are the fixed ones every report uses, written out here so evaluation needs no network:

* GSM8K: the 8 chain-of-thought exemplars of Wei et al. (2022), "Chain-of-Thought Prompting Elicits
  Reasoning in Large Language Models", Table 20 -- as used by lm-evaluation-harness ``gsm8k_cot``
  (lm_eval/tasks/gsm8k/gsm8k-cot.yaml) and OLMES' 8-shot GSM8K. Answers end "The answer is N.".
* MATH: the 4 Minerva exemplars of Lewkowycz et al. (2022), "Solving Quantitative Reasoning Problems
  with Language Models", Appendix D.2 -- as used by lm-evaluation-harness ``minerva_math``
  (lm_eval/tasks/minerva_math/utils.py). Solutions put the answer in ``\boxed{}`` and end
  "Final Answer: The final answer is X. I hope it is correct.". The stray "}" after the first problem
  is in the original prompt and is kept so that prompts match published evaluations.
* PopQA has no fixed exemplars: they are drawn from the data (OLMES uses 15 for 8B/70B).

Few-shot examples become multi-turn chat (the OLMES "::tulu" setting, ``fewshot_as_multiturn``):
one user/assistant pair per exemplar, then the question as the last user turn. The user turns use
lm-evaluation-harness' text formats (``GSM8K_QUESTION_FORMAT`` etc.).
"""

from __future__ import annotations

GSM8K_QUESTION_FORMAT = "Q: {question}\nA:"
MATH_QUESTION_FORMAT = "Problem:\n{problem}\n\nSolution:"
POPQA_QUESTION_FORMAT = "Q: {question} A:"

# Wei et al. (2022), Table 20; text as in lm-evaluation-harness gsm8k-cot.yaml.
GSM8K_COT_EXEMPLARS: tuple[dict, ...] = (
    {"question": "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
                 "After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "answer": "There are 15 trees originally. Then there were 21 trees after some more were planted. "
               "So there must have been 21 - 15 = 6. The answer is 6."},
    {"question": "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "answer": "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."},
    {"question": "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "answer": "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
               "After eating 35, they had 74 - 35 = 39. The answer is 39."},
    {"question": "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. "
                 "How many lollipops did Jason give to Denny?",
     "answer": "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. "
               "So he gave Denny 20 - 12 = 8. The answer is 8."},
    {"question": "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. "
                 "How many toys does he have now?",
     "answer": "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
               "5 + 4 = 9. The answer is 9."},
    {"question": "There were nine computers in the server room. Five more computers were installed each day, "
                 "from monday to thursday. How many computers are now in the server room?",
     "answer": "There were originally 9 computers. For each of 4 days, 5 more computers were added. "
               "So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29."},
    {"question": "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
                 "How many golf balls did he have at the end of wednesday?",
     "answer": "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
               "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."},
    {"question": "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "answer": "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. "
               "So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8."},
)

# Lewkowycz et al. (2022), Appendix D.2; text as in lm-evaluation-harness minerva_math/utils.py.
MINERVA_MATH_EXEMPLARS: tuple[dict, ...] = (
    {"problem": r"Find the domain of the expression  $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.}",
     "solution": r"""The expressions inside each square root must be non-negative. Therefore, $x-2 \ge 0$, so $x\ge2$, and $5 - x \ge 0$, so $x \le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\boxed{[2,5)}$.
Final Answer: The final answer is $[2,5)$. I hope it is correct.""",
     "answer": "[2,5)"},
    {"problem": r"If $\det \mathbf{A} = 2$ and $\det \mathbf{B} = 12,$ then find $\det (\mathbf{A} \mathbf{B}).$",
     "solution": r"""We have that $\det (\mathbf{A} \mathbf{B}) = (\det \mathbf{A})(\det \mathbf{B}) = (2)(12) = \boxed{24}.$
Final Answer: The final answer is $24$. I hope it is correct.""",
     "answer": "24"},
    {"problem": "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, "
                "how many times must Terrell lift them in order to lift the same total weight?",
     "solution": r"""If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\cdot 12\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\cdot15\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:
\begin{align*}
30n&=480\\
\Rightarrow\qquad n&=480/30=\boxed{16}
\end{align*}
Final Answer: The final answer is $16$. I hope it is correct.""",
     "answer": "16"},
    {"problem": r"""If the system of equations

\begin{align*}
6x-4y&=a,\\
6y-9x &=b.
\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero,
find $\frac{a}{b},$ assuming $b$ is nonzero.""",
     "solution": r"""If we multiply the first equation by $-\frac{3}{2}$, we obtain

$$6y-9x=-\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have

$$-\frac{3}{2}a=b\Rightarrow\frac{a}{b}=\boxed{-\frac{2}{3}}.$$
Final Answer: The final answer is $-\frac{2}{3}$. I hope it is correct.""",
     "answer": r"-\frac{2}{3}"},
)

DEFAULT_SHOTS = {"gsm8k": 8, "math": 4, "popqa": 15}


def _pair_gsm8k(example: dict) -> tuple[str, str]:
    return GSM8K_QUESTION_FORMAT.format(question=example["question"]), example["answer"]


def _pair_math(example: dict) -> tuple[str, str]:
    return MATH_QUESTION_FORMAT.format(problem=example["problem"]), example["solution"]


def _pair_popqa(example: dict) -> tuple[str, str]:
    # OLMES answers a PopQA exemplar with its first listed alias
    return POPQA_QUESTION_FORMAT.format(question=example["question"]), example["possible_answers"][0]


_FIELDS = {"gsm8k": ("question", "answer"), "math": ("problem", "solution"), "popqa": ("question", "possible_answers")}
_PAIR = {"gsm8k": _pair_gsm8k, "math": _pair_math, "popqa": _pair_popqa}
_DEFAULT_EXEMPLARS = {"gsm8k": GSM8K_COT_EXEMPLARS, "math": MINERVA_MATH_EXEMPLARS, "popqa": None}


def format_question(task: str, question: str) -> str:
    """The user-turn text for one question of ``task`` ("gsm8k", "math" or "popqa")."""
    if task not in _PAIR:
        raise ValueError(f"task must be one of {sorted(_PAIR)}, got {task!r}")
    field = _FIELDS[task][0]
    return {"gsm8k": GSM8K_QUESTION_FORMAT, "math": MATH_QUESTION_FORMAT,
            "popqa": POPQA_QUESTION_FORMAT}[task].format(**{field: question})


def build_fewshot_messages(task: str, question: str, *, n_shots: int | None = None,
                           exemplars: list[dict] | tuple[dict, ...] | None = None,
                           system_prompt: str | None = None) -> list[dict]:
    """Few-shot chat for ``task``: [system?] + n_shots (user, assistant) pairs + the question as user.

    task       "gsm8k" (default 8 shots, Wei et al. exemplars), "math" (4 Minerva exemplars) or
               "popqa" (default 15 shots; ``exemplars`` must be given, e.g. rows of load_popqa).
    question   the GSM8K question / MATH problem / PopQA question, without any formatting.
    n_shots    how many exemplars, taken in order; 0 gives a zero-shot prompt in the same format.
    exemplars  dicts with the task's fields (gsm8k: question, answer; math: problem, solution;
               popqa: question, possible_answers). An exemplar whose question equals ``question``
               is skipped so the answer never leaks into the prompt.

    Returns a list of {"role", "content"} messages ending with the user turn to be answered.
    """
    if task not in _PAIR:
        raise ValueError(f"task must be one of {sorted(_PAIR)}, got {task!r}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    n_shots = DEFAULT_SHOTS[task] if n_shots is None else n_shots
    if not isinstance(n_shots, int) or n_shots < 0:
        raise ValueError(f"n_shots must be a non-negative integer, got {n_shots!r}")
    pool = exemplars if exemplars is not None else _DEFAULT_EXEMPLARS[task]
    if pool is None:
        if n_shots > 0:
            raise ValueError(f"task {task!r} has no fixed exemplars: pass exemplars=[...] "
                             f"(e.g. rows from load_popqa) or n_shots=0")
        pool = ()
    question_field, answer_field = _FIELDS[task]
    usable = []
    for index, example in enumerate(pool):
        missing = [f for f in (question_field, answer_field) if f not in example]
        if missing:
            raise ValueError(f"exemplar {index} for {task!r} lacks field {missing[0]!r}; "
                             f"expected fields {question_field!r} and {answer_field!r}")
        if example[question_field].strip() != question.strip():
            usable.append(example)
    if n_shots > len(usable):
        raise ValueError(f"n_shots={n_shots} but only {len(usable)} usable exemplars for {task!r}")

    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for example in usable[:n_shots]:
        user_text, assistant_text = _PAIR[task](example)
        messages.append({"role": "user", "content": user_text})
        messages.append({"role": "assistant", "content": assistant_text})
    messages.append({"role": "user", "content": format_question(task, question)})
    return messages
