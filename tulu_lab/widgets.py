"""Interactive front ends for the notebooks: the prompt probe and the ablation explorer.

``PromptProbe(models, examples)`` puts checkpoints side by side: one prompt (typed, or picked from
benchmark / synthetic examples with their ground truth), the same sampling settings for every model,
one column per model with each response coloured token by token by its log-probability, and, for
verifiable prompts, the verifier's verdict and the RLVR score (10 if correct, 0 if not, -10 when the
response never emitted EOS; ``tulu_lab.losses.verifiable_score``).

``AblationExplorer(sweep_results)`` draws training curves from a sweep table (one row per logged
step): pick the grid column that colours the lines, filter the others, choose the metrics.

ipywidgets is imported here and nowhere else in the package. Both classes work without a front end:
set the widgets' values, call ``generate()`` / ``update()`` (or ``button.click()``), read the results.
The probe's button runs generation in a background thread so the notebook stays usable; ``wait()``
joins it. Errors are shown as a short message in the widget's error area, never as a traceback.
"""

from __future__ import annotations

import html
import inspect
import io
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import ipywidgets as W

__all__ = [
    "AblationExplorer", "ProbeSample", "PromptProbe", "benchmark_examples", "logprob_color",
    "probe_checkpoints", "rlvr_score", "synthetic_examples", "token_logprob_html",
]

NO_VERIFIER = "none"
VERIFIER_CHOICES = (NO_VERIFIER, "gsm8k", "math", "ifeval")
FREE_PROMPT = "(write your own prompt)"
# Log-probs at or below this get the reddest colour: p = e^-6 = 0.25% is "very unlikely" already.
LOGPROB_FLOOR = -6.0


# ----------------------------------------------------------------------------------------------
# Examples for the probe: RLVR rows {"messages", "ground_truth", "dataset"} (+ optional "label")
# ----------------------------------------------------------------------------------------------

def synthetic_examples(n_per_kind: int = 2, seed: int = 0) -> list[dict]:
    """RLVR rows from the synthetic generators: ``n_per_kind`` GSM-style, MATH-style, IFEval-style."""
    from tulu_lab.data import generate_ifeval_prompts, generate_math_problems, generate_word_problems, rlvr_row

    examples = []
    for kind, items in (("synthetic GSM", generate_word_problems(n_per_kind, seed=seed)),
                        ("synthetic MATH", generate_math_problems(n_per_kind, seed=seed)),
                        ("synthetic IFEval", generate_ifeval_prompts(n_per_kind, seed=seed))):
        for i, item in enumerate(items):
            row = rlvr_row(item)
            row["label"] = f"{kind} {i + 1}: {_shorten(row['messages'][0]['content'])}"
            examples.append(row)
    return examples


def benchmark_examples(data_dir: str | Path | None = None, n_per_benchmark: int = 2) -> list[dict]:
    """RLVR rows from the real GSM8K and MATH-500 test sets, with the same instructions the synthetic
    prompts carry: the copies shipped with the package, or ``data_dir/gsm8k/test.jsonl`` and
    ``data_dir/math/test.jsonl`` when a folder is given (a file missing there is skipped)."""
    from tulu_lab.data import GSM_INSTRUCTION, MATH_INSTRUCTION, load_gsm8k, load_math

    sources = {"gsm8k": None, "math": None}
    if data_dir is not None:
        sources = {name: Path(data_dir) / name / "test.jsonl" for name in sources}
        sources = {name: path for name, path in sources.items() if path.is_file()}
    examples = []
    if "gsm8k" in sources:
        for row in load_gsm8k(sources["gsm8k"], limit=n_per_benchmark):
            examples.append({"id": row["id"], "label": f"GSM8K {row['id']}: {_shorten(row['question'])}",
                             "messages": [{"role": "user", "content": row["question"] + GSM_INSTRUCTION}],
                             "ground_truth": row["final_answer"], "dataset": "gsm8k"})
    if "math" in sources:
        for row in load_math(sources["math"], limit=n_per_benchmark):
            examples.append({"id": row["id"], "label": f"MATH {row['id']}: {_shorten(row['problem'])}",
                             "messages": [{"role": "user", "content": row["problem"] + MATH_INSTRUCTION}],
                             "ground_truth": row["answer"], "dataset": "math"})
    return examples


def _shorten(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _check_example(example: Any, index: int) -> dict:
    """An RLVR row with a single user turn, or a clear error naming the example."""
    if not isinstance(example, Mapping) or "messages" not in example:
        raise ValueError(f"examples[{index}]: expected an RLVR row {{'messages', 'ground_truth', 'dataset'}}, "
                         f"got {example!r:.100}")
    messages = example["messages"]
    users = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str):
        raise ValueError(f"examples[{index}]: 'messages' needs a user turn with string content, got {messages!r:.100}")
    dataset = str(example.get("dataset") or NO_VERIFIER).lower()
    if dataset not in VERIFIER_CHOICES:
        raise ValueError(f"examples[{index}]: dataset {example.get('dataset')!r} is not one of {VERIFIER_CHOICES}")
    prompt = users[-1]["content"]
    label = str(example.get("label") or example.get("id") or _shorten(prompt))
    return {"label": label, "prompt": prompt, "ground_truth": str(example.get("ground_truth") or ""),
            "dataset": dataset}


# ----------------------------------------------------------------------------------------------
# Scoring and the token view (pure functions)
# ----------------------------------------------------------------------------------------------

def rlvr_score(correct: bool, stopped: bool, rlvr_config=None) -> float:
    """The RLVR score of one response, computed by the training code's own function, with the
    reward and non-stop penalty of ``rlvr_config`` (an RLVRConfig; None: the paper's 10 and -10)."""
    import torch

    from tulu_lab.losses import verifiable_score

    amounts = {} if rlvr_config is None else dict(correct_reward=rlvr_config.correct_reward,
                                                  non_stop_penalty=rlvr_config.non_stop_penalty)
    return float(verifiable_score(torch.tensor([bool(correct)]), torch.tensor([bool(stopped)]), **amounts)[0])


def logprob_color(logprob: float) -> str:
    """Background colour for a token: green when the model was sure (p near 1), red when it was not."""
    if logprob is None or not math.isfinite(logprob):
        return "hsl(0, 75%, 80%)"
    share = min(max(logprob / LOGPROB_FLOOR, 0.0), 1.0)  # 0 at p=1, 1 at the floor and below
    return f"hsl({round(120 * (1 - share))}, 70%, {round(88 - 8 * share)}%)"


def _visible(token: str) -> str:
    """A token as HTML text: spaces kept, newlines drawn as ↵ plus a line break."""
    return html.escape(token).replace("\n", "↵<br>")


def token_logprob_html(tokens: Sequence[str], logprobs: Sequence[float]) -> str:
    """Tokens as HTML spans coloured by log-probability, each with a tooltip naming token, log-prob, p."""
    if len(tokens) != len(logprobs):
        raise ValueError(f"token_logprob_html: {len(tokens)} tokens but {len(logprobs)} log-probs")
    spans = []
    for token, logprob in zip(tokens, logprobs):
        p = math.exp(logprob) if logprob is not None and math.isfinite(logprob) else 0.0
        tip = html.escape(f"{token!r}  log-prob {logprob:.3f}  p = {p:.3f}", quote=True)
        spans.append(f"<span class='tulu-token' title=\"{tip}\" style='background:{logprob_color(logprob)};"
                     f"border-radius:2px'>{_visible(token)}</span>")
    return ("<div class='tulu-tokens' style='white-space:pre-wrap;font-family:monospace;font-size:12px;"
            f"line-height:1.6'>{''.join(spans)}</div>")


def logprob_legend() -> str:
    """A one-line key of the colour scale."""
    cells = "".join(f"<span style='background:{logprob_color(math.log(p))};padding:0 4px'>p={p:g}</span>"
                    for p in (1.0, 0.5, 0.2, 0.05, 0.01, 0.0025))
    return f"<div style='font-size:11px'>token colour = probability under the sampling distribution: {cells}</div>"


# ----------------------------------------------------------------------------------------------
# Models for the probe
# ----------------------------------------------------------------------------------------------

class _LocalModel:
    """A (model, tokenizer) pair behind the backend interface (``generate(prompts, ...)``)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def generate(self, prompts, **kwargs):
        from tulu_lab.generate import generate

        return generate(self.model, self.tokenizer, prompts, **kwargs)


def _as_backend(name: str, value: Any):
    if isinstance(value, tuple) and len(value) == 2:
        return _LocalModel(*value)
    if callable(getattr(value, "generate", None)):
        return value
    raise TypeError(f"models[{name!r}]: expected (model, tokenizer) or a backend with a generate(prompts, ...) "
                    f"method (tulu_lab.backends), got {type(value).__name__}")


def _call_generate(backend, prompts, **kwargs):
    """``backend.generate`` with only the keyword arguments it accepts (servers take no batch_size)."""
    parameters = inspect.signature(backend.generate).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in parameters}
    return list(backend.generate(prompts, **kwargs))


def probe_checkpoints(runs: str | Path | None = None, *, stages: Sequence[str] = ("sft", "dpo", "rlvr"),
                      suffix: str = "-embedded", smoke: bool = False, base: str = "smollm2-135m",
                      verbose: bool = True, finals: dict[str, str | Path] | None = None) -> dict[str, tuple]:
    """Load the stage checkpoints earlier notebooks saved (``runs/{stage}{suffix}/final``, or the
    ``finals`` given as ``{stage: folder}``) for the probe.

    Returns ``{"SFT": (model, tokenizer), ...}`` for each folder that exists, with the Tülu chat
    template installed (the format the stages were trained in). When none exists, the starting model
    ``base`` alone (named "instruct", with its own chat template). ``smoke=True`` loads one model only:
    the latest stage found, else ``base``.
    """
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.models import load_model
    from tulu_lab.paths import runs_dir

    runs = Path(runs) if runs is not None else runs_dir()
    found = ({stage.upper(): Path(folder) for stage, folder in finals.items()} if finals is not None
             else {stage.upper(): runs / f"{stage}{suffix}" / "final" for stage in stages})
    found = {name: folder for name, folder in found.items() if (folder / "config.json").is_file()}
    if smoke and found:
        last = list(found)[-1]
        found = {last: found[last]}
    models = {}
    for name, folder in found.items():
        model, tokenizer = load_model(folder, verbose=False)
        models[name] = (model, install_tulu_template(tokenizer))
        if verbose:
            print(f"{name}: {folder}")
    if not models:
        if verbose:
            print(f"No stage checkpoints under {runs} ({', '.join(f'{s}{suffix}/final' for s in stages)}): "
                  f"probing the starting model {base!r} alone. Run notebooks 02-04 to compare the stages.")
        models["instruct"] = load_model(base, verbose=False)
    return models


# ----------------------------------------------------------------------------------------------
# The prompt probe
# ----------------------------------------------------------------------------------------------

@dataclass
class ProbeSample:
    """One response of one model to the probe's prompt."""
    model: str
    sample: int
    text: str
    tokens: list[str]
    logprobs: list[float]
    finish_reason: str
    stopped: bool
    correct: bool | None = None   # None: no verifier chosen (or it failed)
    reward: float | None = None   # the RLVR score; None without a verifier
    seconds: float = 0.0          # wall time of the model's whole call (all samples)
    extra: dict = field(default_factory=dict)


class PromptProbe:
    """Compare checkpoints on one prompt, side by side, token by token.

    Args:
        models: ``{"SFT": (model, tokenizer), "DPO": backend, ...}``: (model, tokenizer) pairs or
            backends (anything with ``generate(prompts, max_new_tokens=, temperature=, top_p=,
            num_samples=, seed=)`` returning ``tulu_lab.generate.Generation`` objects).
        examples: RLVR rows (``messages``, ``ground_truth``, ``dataset``, optional ``label``) offered
            in the example dropdown; picking one sets the prompt, the ground truth and the verifier.
            Default: two synthetic GSM, MATH and IFEval prompts each.
        rlvr_config: the RLVRConfig whose rollouts the probe mirrors (default: the embedded recipe's,
            ``tulu_lab.pipeline.rlvr_config()``): the temperature and max tokens start at its values,
            and scores use its reward and non-stop penalty.
        max_new_tokens, temperature: starting values; None takes them from ``rlvr_config``.
        top_p, seed, num_samples: the controls' starting values.
        threaded: the Generate button runs in a background thread (``wait()`` joins it).

    Display the probe (last expression of a cell, or ``display(probe)``); ``probe.widget`` is the box.
    """

    def __init__(self, models: Mapping[str, Any], examples: Sequence[dict] | None = None, *,
                 rlvr_config=None, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_p: float = 1.0, seed: int = 0, num_samples: int = 1, threaded: bool = True):
        if not isinstance(models, Mapping) or not models:
            raise ValueError("PromptProbe: models must be a non-empty dict {name: (model, tokenizer) or backend}")
        if rlvr_config is None:
            from tulu_lab.pipeline import rlvr_config as recipe_rlvr_config

            rlvr_config = recipe_rlvr_config()
        self.rlvr_config = rlvr_config
        max_new_tokens = rlvr_config.max_new_tokens if max_new_tokens is None else max_new_tokens
        temperature = rlvr_config.temperature if temperature is None else temperature
        self.backends = {str(name): _as_backend(str(name), value) for name, value in models.items()}
        raw = synthetic_examples() if examples is None else list(examples)
        self.examples = [_check_example(example, i) for i, example in enumerate(raw)]
        self.threaded = threaded
        self.results: dict[str, list[ProbeSample]] = {}
        self.errors: dict[str, str] = {}
        self.last_traceback = ""  # the full traceback of the last error, for debugging; not displayed
        self.runs = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

        wide = W.Layout(width="100%")
        self.example = W.Dropdown(options=[(FREE_PROMPT, -1)] + [(e["label"], i) for i, e in enumerate(self.examples)],
                                  value=-1, description="example", layout=wide)
        self.prompt = W.Textarea(value="Name three primary colours.", description="prompt",
                                 layout=W.Layout(width="100%", height="90px"))
        self.dataset = W.Dropdown(options=list(VERIFIER_CHOICES), value=NO_VERIFIER, description="verifier")
        self.ground_truth = W.Text(value="", description="ground truth", placeholder="answer the verifier expects")
        self.temperature = W.FloatSlider(value=temperature, min=0.0, max=max(1.5, temperature), step=0.05,
                                         description="temperature")
        self.top_p = W.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p")
        self.max_new_tokens = W.IntSlider(value=max_new_tokens, min=1, max=max(1024, max_new_tokens), step=1,
                                          description="max tokens")
        self.seed = W.IntText(value=seed, description="seed")
        self.num_samples = W.IntSlider(value=num_samples, min=1, max=max(8, num_samples), description="samples")
        self.button = W.Button(description="Generate", button_style="primary", icon="play")
        self.progress = W.IntProgress(value=0, min=0, max=len(self.backends), description="", bar_style="info")
        self.status = W.HTML(value="ready")
        self.error = W.HTML(value="")
        self.columns = {name: W.HTML(value=self._column_html(name, "<i>no output yet</i>"))
                        for name in self.backends}
        for column in self.columns.values():
            column.add_class("tulu-probe-column")
        self.error.add_class("tulu-probe-error")
        self.status.add_class("tulu-probe-status")
        self.shown_prompt = W.HTML(value="")
        self.shown_prompt.add_class("tulu-probe-prompt")
        self.outputs = W.HBox([W.Box([c], layout=W.Layout(flex="1 1 0", min_width="0", padding="0 6px",
                                                           border="1px solid #ddd"))
                               for c in self.columns.values()], layout=wide)

        self.example.observe(self._on_example, names="value")
        self.prompt.observe(self._on_prompt_edit, names="value")
        self.button.on_click(self._on_click)
        controls = W.VBox([
            W.HBox([self.temperature, self.top_p]),
            W.HBox([self.max_new_tokens, self.num_samples, self.seed]),
            W.HBox([self.dataset, self.ground_truth]),
        ])
        self.widget = W.VBox([self.example, self.prompt, controls,
                              W.HBox([self.button, self.progress, self.status]),
                              self.error, W.HTML(logprob_legend()), self.shown_prompt, self.outputs],
                             layout=wide)

    # -- display ---------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -- examples --------------------------------------------------------------------------------
    def _on_example(self, change):
        if change["new"] is not None and change["new"] >= 0:
            example = self.examples[change["new"]]
            self.prompt.value = example["prompt"]
            self.ground_truth.value = example["ground_truth"]
            self.dataset.value = example["dataset"]

    def _on_prompt_edit(self, change):
        # An edited example is a new prompt: its ground truth and verifier no longer apply.
        index = self.example.value
        if index is not None and index >= 0 and change["new"] != self.examples[index]["prompt"]:
            self.example.value = -1
            self.dataset.value, self.ground_truth.value = NO_VERIFIER, ""

    def select_example(self, which: int | str) -> dict:
        """Pick an example by position or by (the start of) its label; returns it."""
        if isinstance(which, int):
            if not 0 <= which < len(self.examples):
                raise IndexError(f"example {which} out of range: {len(self.examples)} examples")
            index = which
        else:
            matches = [i for i, e in enumerate(self.examples) if e["label"].startswith(which)]
            if not matches:
                raise KeyError(f"no example label starts with {which!r}; labels: "
                               f"{[e['label'] for e in self.examples]}")
            index = matches[0]
        self.example.value = index
        return self.examples[index]

    # -- generation ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _on_click(self, _button=None):
        if self.running:
            self.status.value = "still generating: wait for the current run to finish"
            return
        if not self.threaded:
            self.generate()
            return
        self._thread = threading.Thread(target=self.generate, name="prompt-probe", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> dict[str, list[ProbeSample]]:
        """Wait for a threaded run to finish (TimeoutError after ``timeout`` seconds); returns results."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"PromptProbe: generation still running after {timeout} s")
        return self.results

    def _settings(self) -> dict:
        return dict(max_new_tokens=int(self.max_new_tokens.value), temperature=float(self.temperature.value),
                    top_p=float(self.top_p.value), num_samples=int(self.num_samples.value),
                    seed=int(self.seed.value))

    def generate(self) -> dict[str, list[ProbeSample]]:
        """Run every model on the current prompt and settings; update the columns model by model.

        Returns ``{model name: [ProbeSample per sample]}`` (also in ``self.results``). A model that
        fails gets an empty list, its error goes to ``self.errors`` and the error area; the others run.
        """
        if not self._lock.acquire(blocking=False):
            self._show_error("a generation is already running")
            return self.results
        try:
            return self._generate_all()
        except Exception as err:  # anything unforeseen: a short message in the widget, not a traceback
            self.last_traceback = traceback.format_exc()
            self._show_error(f"{type(err).__name__}: {err}")
            return self.results
        finally:
            self.button.disabled = False
            self._lock.release()

    def _generate_all(self) -> dict[str, list[ProbeSample]]:
        self.runs += 1
        self.results, self.errors = {}, {}
        self.error.value = ""
        prompt = self.prompt.value
        if not prompt.strip():
            self._show_error("the prompt is empty: type one or pick an example")
            return self.results
        dataset, truth = self.dataset.value, self.ground_truth.value.strip()
        if dataset != NO_VERIFIER and not truth:
            self._show_error(f"verifier {dataset!r} needs a ground truth; the responses are shown unscored")
            dataset = NO_VERIFIER
        settings = self._settings()
        messages = [{"role": "user", "content": prompt}]
        self.shown_prompt.value = (f"<div style='font-size:12px'><b>run {self.runs} prompt:</b> "
                                   f"{html.escape(_shorten(prompt, 300))}</div>")

        self.button.disabled = True
        self.progress.max, self.progress.value, self.progress.bar_style = len(self.backends), 0, "info"
        for name in self.columns:
            self.columns[name].value = self._column_html(name, "<i>waiting…</i>")
        start = time.perf_counter()
        for position, (name, backend) in enumerate(self.backends.items()):
            self.status.value = f"run {self.runs}: generating with <b>{html.escape(name)}</b> " \
                                f"({position + 1}/{len(self.backends)})…"
            self.columns[name].value = self._column_html(name, "<i>generating…</i>")
            try:
                self.results[name] = self._run_model(name, backend, messages, settings, dataset, truth)
                self.columns[name].value = self._column_html(name, self._samples_html(self.results[name]))
            except Exception as err:
                self.last_traceback = traceback.format_exc()
                self.results[name] = []
                self.errors[name] = f"{type(err).__name__}: {err}"
                self.columns[name].value = self._column_html(name, "<i style='color:#b00'>failed (see above)</i>")
                self._show_errors()
            self.progress.value = position + 1
        seconds = time.perf_counter() - start
        n_tokens = sum(len(s.logprobs) or len(s.tokens) for samples in self.results.values() for s in samples)
        self.progress.bar_style = "danger" if self.errors else "success"
        self.status.value = (f"run {self.runs} done: {len(self.backends)} model(s), {n_tokens} tokens in "
                             f"{seconds:.1f} s" + (f", {len(self.errors)} failed" if self.errors else ""))
        return self.results

    def _run_model(self, name, backend, messages, settings, dataset, truth) -> list[ProbeSample]:
        start = time.perf_counter()
        generations = _call_generate(backend, [messages], progress=False, **settings)
        seconds = time.perf_counter() - start
        tokenizer = getattr(backend, "tokenizer", None)
        samples = []
        for i, g in enumerate(generations):
            correct = reward = None
            if dataset != NO_VERIFIER:
                from tulu_lab.rewards import start_symbolic_worker, verify
                if dataset == "math":  # judge no answer while sympy is still being imported
                    start_symbolic_worker(wait=True)
                try:
                    correct = bool(verify(dataset, g.text, truth))
                except ValueError as err:  # e.g. a malformed ground truth: say so, keep the text
                    self.errors[f"{name} verifier"] = str(err)
                    self._show_errors()
                else:
                    reward = rlvr_score(correct, g.stopped, self.rlvr_config)
            samples.append(ProbeSample(model=name, sample=i, text=g.text, tokens=_token_strings(g, tokenizer),
                                       logprobs=list(g.logprobs or []), finish_reason=g.finish_reason,
                                       stopped=bool(g.stopped), correct=correct, reward=reward,
                                       seconds=seconds, extra=dict(getattr(g, "extra", {}) or {})))
        return samples

    # -- rendering -------------------------------------------------------------------------------
    def _show_error(self, message: str):
        self.error.value = (f"<div style='color:#b00;border-left:3px solid #b00;padding-left:6px'>"
                            f"{html.escape(message)}</div>")

    def _show_errors(self):
        self._show_error("; ".join(f"{name}: {message}" for name, message in self.errors.items()))

    @staticmethod
    def _column_html(name: str, body: str) -> str:
        return f"<div><h4 style='margin:4px 0'>{html.escape(name)}</h4>{body}</div>"

    @staticmethod
    def _samples_html(samples: list[ProbeSample]) -> str:
        if not samples:
            return "<i>no samples</i>"
        parts = [f"<small>{len(samples)} sample(s) in {samples[0].seconds:.1f} s</small>"]
        scored = [s for s in samples if s.reward is not None]
        if len(samples) > 1 and scored:
            accuracy = sum(bool(s.correct) for s in scored) / len(scored)
            mean = sum(s.reward for s in scored) / len(scored)
            parts.append(f"<div><b>{len(scored)} samples: accuracy {accuracy:.0%}, mean reward {mean:+.1f}</b></div>")
        for s in samples:
            ending = "ended on EOS" if s.stopped else f"no EOS ({s.finish_reason})"
            n = len(s.logprobs) or len(s.tokens)
            head = f"sample {s.sample + 1} · {n} tokens · {ending}"
            verdict = ""
            if s.reward is not None:
                colour = "#117733" if s.correct else "#b00"
                word = "correct" if s.correct else "wrong"
                verdict = (f"<div class='tulu-verdict' style='color:{colour}'><b>{word}</b> · "
                           f"RLVR reward {s.reward:+g}" + ("" if s.stopped else " (no EOS: penalty)") + "</div>")
            if s.tokens and len(s.tokens) == len(s.logprobs):
                body = token_logprob_html(s.tokens, s.logprobs)
            else:  # a backend that returns no per-token log-probs: plain text
                body = ("<div style='white-space:pre-wrap;font-family:monospace;font-size:12px'>"
                        f"{html.escape(s.text)}</div><small>(no per-token log-probs from this backend)</small>")
            parts.append(f"<div style='margin:6px 0'><small>{head}</small>{verdict}{body}</div>")
        return "".join(parts)

    def results_frame(self):
        """The last run as a DataFrame: one row per (model, sample)."""
        import pandas as pd

        rows = [dict(model=s.model, sample=s.sample, text=s.text, tokens=len(s.logprobs) or len(s.tokens),
                     finish_reason=s.finish_reason, correct=s.correct, reward=s.reward,
                     mean_logprob=(sum(s.logprobs) / len(s.logprobs)) if s.logprobs else None,
                     seconds=round(s.seconds, 2))
                for samples in self.results.values() for s in samples]
        return pd.DataFrame(rows)


def _token_strings(generation, tokenizer) -> list[str]:
    """Each generated token as text: from the server's token list, else decoded one id at a time."""
    server_tokens = (getattr(generation, "extra", None) or {}).get("tokens")
    if server_tokens and not all(str(t).startswith("token_id:") for t in server_tokens):
        return [str(t) for t in server_tokens]
    if tokenizer is None or not generation.token_ids:
        return []
    # Decode growing prefixes so a character split over several byte-level tokens shows whole, on the
    # token that completes it; a token that completes nothing shows its own (partial) decoding.
    ids = [int(t) for t in generation.token_ids]
    pieces, previous = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end], skip_special_tokens=False)
        piece = text[len(previous):] if text.startswith(previous) else tokenizer.decode([ids[end - 1]])
        pieces.append(piece or tokenizer.decode([ids[end - 1]], skip_special_tokens=False))
        previous = text
    return pieces


# ----------------------------------------------------------------------------------------------
# The ablation explorer
# ----------------------------------------------------------------------------------------------

X_CANDIDATES = ("episodes", "step", "epoch")
KNOWN_METRICS = ("reward", "kl", "completions/mean_length", "accuracy", "reward_std", "entropy", "loss")
MAX_GRID_VALUES = 12  # a numeric column with more distinct values than this is a metric, not a grid axis


def _looks_like_metric(name: str) -> bool:
    lowered = name.lower()
    return lowered in KNOWN_METRICS or "/" in lowered or any(
        word in lowered for word in ("loss", "reward", "accuracy", "kl", "entropy", "length", "ratio", "score"))


class AblationExplorer:
    """Training curves of a sweep, re-drawn as the controls change.

    Args:
        sweep_results: one row per logged step of each run: an x column (``episodes`` / ``step``),
            grid columns (beta, seed, learning rate, algorithm, task, ...) and metric columns (reward,
            kl, completions/mean_length, accuracy, ...).
        x, metrics, grid: override the guesses (x: first of episodes/step/epoch present; grid: text
            columns and numeric columns with at most 12 values whose name does not look like a
            metric; metrics: the remaining numeric columns; true/false columns are neither).
        color_by: the grid column that colours the lines (default beta if present).

    Lines are means over the rows that share a colour value and an x value (seeds, and any other
    grid value left selected); the band spans their min and max. ``figure`` is the last drawn
    matplotlib Figure and ``plotted`` the summary it drew.
    """

    def __init__(self, sweep_results, *, x: str | None = None, metrics: Sequence[str] | None = None,
                 grid: Sequence[str] | None = None, color_by: str | None = None):
        import pandas as pd

        if not isinstance(sweep_results, pd.DataFrame) or sweep_results.empty:
            raise ValueError("AblationExplorer: sweep_results must be a non-empty pandas DataFrame")
        df = sweep_results.copy()
        columns = list(df.columns)
        x_options = [c for c in X_CANDIDATES if c in columns] if x is None else [x]
        for name in x_options:
            if name not in columns:
                raise ValueError(f"AblationExplorer: x={name!r} is not a column ({columns})")
        if not x_options:
            raise ValueError(f"AblationExplorer: no x column; expected one of {X_CANDIDATES} or x=..., got {columns}")
        flags = [c for c in columns if pd.api.types.is_bool_dtype(df[c])]  # e.g. the sweep table's "final"
        numeric = [c for c in columns if pd.api.types.is_numeric_dtype(df[c]) and c not in flags]
        if grid is None:
            grid = [c for c in columns if c not in X_CANDIDATES and c not in flags and (
                c not in numeric or (df[c].nunique() <= MAX_GRID_VALUES and not _looks_like_metric(c)))]
        if metrics is None:
            metrics = [c for c in numeric if c not in grid and c not in X_CANDIDATES]
            metrics = [m for m in KNOWN_METRICS if m in metrics] + [m for m in metrics if m not in KNOWN_METRICS]
        for name in list(grid) + list(metrics):
            if name not in columns:
                raise ValueError(f"AblationExplorer: {name!r} is not a column ({columns})")
        if not grid:
            raise ValueError(f"AblationExplorer: no grid column to colour lines by among {columns}; pass grid=[...]")
        if not metrics:
            raise ValueError(f"AblationExplorer: no numeric metric column among {columns}; pass metrics=[...]")
        self.df, self.grid, self.metrics = df, list(grid), list(metrics)
        if color_by is None:
            color_by = "beta" if "beta" in self.grid else self.grid[0]
        if color_by not in self.grid:
            raise ValueError(f"AblationExplorer: color_by={color_by!r} is not a grid column ({self.grid})")

        self.x = W.Dropdown(options=x_options, value=x_options[0], description="x axis")
        self.color_by = W.Dropdown(options=self.grid, value=color_by, description="colour by")
        defaults = [m for m in ("reward", "kl", "completions/mean_length") if m in self.metrics] or self.metrics[:3]
        self.metric_select = W.SelectMultiple(options=self.metrics, value=tuple(defaults), description="metrics",
                                              rows=min(6, len(self.metrics)))
        self.filters = {c: W.SelectMultiple(options=self._values(c), value=tuple(self._values(c)),
                                            description=c[:12], rows=min(5, len(self._values(c))))
                        for c in self.grid}
        self.info = W.HTML(value="")
        self.image = W.Image(format="png", layout=W.Layout(max_width="100%"))
        self.figure = None
        self.plotted = None
        for control in [self.x, self.color_by, self.metric_select, *self.filters.values()]:
            control.observe(self.update, names="value")
        self.widget = W.VBox([W.HBox([W.VBox([self.x, self.color_by]), self.metric_select]),
                              W.HBox(list(self.filters.values()), layout=W.Layout(flex_flow="row wrap")),
                              self.info, self.image])
        self.update()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _values(self, column: str) -> list:
        return sorted(self.df[column].dropna().unique().tolist(), key=lambda v: (str(type(v)), v))

    def selection(self):
        """The rows the filters keep."""
        import pandas as pd

        keep = pd.Series(True, index=self.df.index)
        for column, control in self.filters.items():
            keep &= self.df[column].isin(list(control.value))
        return self.df[keep]

    def update(self, *_change):
        """Redraw from the current controls; returns the Figure (None when nothing is left to draw)."""
        from matplotlib.figure import Figure

        from tulu_lab.plotting import style_context

        x, color, metrics = self.x.value, self.color_by.value, list(self.metric_select.value)
        rows = self.selection()
        if rows.empty or not metrics:
            self.info.value = "<i>nothing to draw: every run is filtered out or no metric is selected</i>"
            self.figure, self.plotted = None, None
            self.image.value = b""
            return None
        long = rows.melt(id_vars=[color, x], value_vars=metrics, var_name="metric").dropna(subset=["value"])
        summary = (long.groupby([color, "metric", x], sort=True)["value"]
                   .agg(mean="mean", low="min", high="max", n="count").reset_index())
        averaged = [c for c in self.grid if c != color and rows[c].nunique() > 1]
        self.info.value = (f"{len(rows)} rows; lines are means over "
                           + (", ".join(f"{c} ({rows[c].nunique()})" for c in averaged) or "nothing (one run each)")
                           + ", band = min-max")
        colour_values = sorted(summary[color].unique().tolist(), key=lambda v: (str(type(v)), v))
        with style_context():
            fig = Figure(figsize=(4.0 * len(metrics), 3.2), layout="constrained")
            axes = fig.subplots(1, len(metrics), squeeze=False)[0]
            palette = _palette(colour_values)
            for ax, metric in zip(axes, metrics):
                for value in colour_values:
                    part = summary[(summary[color] == value) & (summary["metric"] == metric)]
                    if part.empty:
                        continue
                    ax.plot(part[x], part["mean"], color=palette[value], label=f"{color}={value:g}"
                            if isinstance(value, float) else f"{color}={value}")
                    if (part["n"] > 1).any():
                        ax.fill_between(part[x], part["low"], part["high"], color=palette[value], alpha=0.18,
                                        linewidth=0)
                ax.set_title(metric)
                ax.set_xlabel(x)
            axes[-1].legend(loc="best", fontsize=7)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=90, facecolor="white")
        self.image.value = buffer.getvalue()
        self.figure, self.plotted = fig, summary
        return fig


def _palette(values: list) -> dict:
    """Ordered numeric values on a sequential colour map, anything else on a qualitative one."""
    from matplotlib import colormaps

    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and len(values) > 1:
        cmap = colormaps["viridis"]
        return {v: cmap(0.1 + 0.8 * i / (len(values) - 1)) for i, v in enumerate(values)}
    cmap = colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(values)}
