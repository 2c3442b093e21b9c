"""The prompt probe and the ablation explorer, driven headlessly: set values, click, wait, read the widgets."""

import math
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest

from tulu_lab.generate import Generation
from tulu_lab.widgets import (
    AblationExplorer,
    PromptProbe,
    benchmark_examples,
    logprob_color,
    probe_checkpoints,
    rlvr_score,
    synthetic_examples,
    token_logprob_html,
)

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


class ScriptedBackend:
    """A backend that returns fixed responses (to test verdicts and rewards exactly)."""

    def __init__(self, text, stopped=True, logprobs=None, tokens=None):
        self.text, self.stopped = text, stopped
        self.tokens = tokens if tokens is not None else re.findall(r"\S+\s*", text)
        self.logprobs = logprobs if logprobs is not None else [-0.5] * len(self.tokens)
        self.calls = []

    def generate(self, prompts, *, max_new_tokens=256, temperature=0.0, top_p=1.0, num_samples=1, seed=0):
        self.calls.append(dict(prompts=prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, num_samples=num_samples, seed=seed))
        return [Generation(prompt="p", text=self.text, token_ids=list(range(len(self.tokens))),
                           logprobs=list(self.logprobs), stopped=self.stopped,
                           finish_reason="eos" if self.stopped else "length", extra={"tokens": self.tokens})
                for _ in range(num_samples)]


class BrokenBackend:
    def generate(self, prompts, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")


# ---------------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------------

def test_rlvr_score_matches_the_recipe():
    assert rlvr_score(True, True) == 10.0
    assert rlvr_score(False, True) == 0.0
    assert rlvr_score(True, False) == -10.0   # no EOS replaces the score, even when correct
    assert rlvr_score(False, False) == -10.0


def test_token_html_colours_and_tooltips():
    out = token_logprob_html(["The", " cat<", "\n"], [0.0, math.log(0.01), -20.0])
    assert out.count("class='tulu-token'") == 3
    assert "cat&lt;" in out and "↵<br>" in out          # escaped, newline visible
    assert "p = 0.010" in out and "log-prob -20.000" in out
    assert logprob_color(0.0) != logprob_color(-3.0) != logprob_color(-6.0)
    assert logprob_color(-6.0) == logprob_color(-50.0)  # clipped at the floor
    assert "hsl(120" in logprob_color(0.0) and "hsl(0," in logprob_color(-6.0)
    with pytest.raises(ValueError, match="2 tokens but 1 log-probs"):
        token_logprob_html(["a", "b"], [0.0])


def test_synthetic_examples_are_rlvr_rows():
    examples = synthetic_examples(1, seed=3)
    assert [e["dataset"] for e in examples] == ["gsm8k", "math", "ifeval"]
    assert all(e["ground_truth"] and e["messages"][0]["role"] == "user" for e in examples)


@pytest.mark.skipif(not os.path.isdir(DATA), reason="shared benchmark data not present")
def test_benchmark_examples_from_real_files():
    examples = benchmark_examples(DATA, n_per_benchmark=1)
    assert [e["dataset"] for e in examples] == ["gsm8k", "math"]
    assert examples[0]["label"].startswith("GSM8K") and examples[0]["ground_truth"]


def test_benchmark_examples_skip_missing_files(tmp_path):
    assert benchmark_examples(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# PromptProbe
# ---------------------------------------------------------------------------------------------

def test_probe_with_tiny_models_click_wait_read(tiny):
    model, tokenizer = tiny
    probe = PromptProbe({"SFT": (model, tokenizer), "DPO": (model, tokenizer)}, max_new_tokens=6)
    probe.prompt.value = "What is 3 + 4?"
    probe.seed.value = 1
    probe.temperature.value = 1.0
    probe.num_samples.value = 2
    probe.button.click()
    results = probe.wait(timeout=120)
    assert set(results) == {"SFT", "DPO"} and not probe.errors
    for name, samples in results.items():
        assert len(samples) == 2
        for s in samples:
            assert 1 <= len(s.tokens) == len(s.logprobs) <= 6
            assert all(lp <= 0 for lp in s.logprobs)
            assert s.reward is None  # no verifier chosen
        html = probe.columns[name].value
        assert name in html and html.count("class='tulu-token'") == sum(len(s.tokens) for s in samples)
    # the same model, settings and seed give the same samples in both columns
    assert [s.text for s in results["SFT"]] == [s.text for s in results["DPO"]]
    assert "run 1 done: 2 model(s)" in probe.status.value
    assert "What is 3 + 4?" in probe.shown_prompt.value
    assert probe.progress.value == 2 and not probe.button.disabled
    frame = probe.results_frame()
    assert list(frame["model"]) == ["SFT", "SFT", "DPO", "DPO"]


def test_probe_example_sets_prompt_and_verifier_and_scores():
    examples = synthetic_examples(1, seed=0)
    right = ScriptedBackend(f"So the answer is {examples[0]['ground_truth']}.")
    wrong = ScriptedBackend("So the answer is 123456.")
    rambling = ScriptedBackend(f"The answer is {examples[0]['ground_truth']} and", stopped=False)
    probe = PromptProbe({"right": right, "wrong": wrong, "no EOS": rambling}, examples=examples, threaded=False)
    picked = probe.select_example("synthetic GSM")
    assert probe.prompt.value == picked["prompt"]
    assert probe.dataset.value == "gsm8k" and probe.ground_truth.value == picked["ground_truth"]
    probe.max_new_tokens.value, probe.top_p.value = 17, 0.9
    results = probe.generate()
    assert right.calls[0]["max_new_tokens"] == 17 and right.calls[0]["top_p"] == 0.9
    assert right.calls[0]["prompts"] == [[{"role": "user", "content": picked["prompt"]}]]
    assert (results["right"][0].correct, results["right"][0].reward) == (True, 10.0)
    assert (results["wrong"][0].correct, results["wrong"][0].reward) == (False, 0.0)
    assert (results["no EOS"][0].correct, results["no EOS"][0].reward) == (True, -10.0)
    assert "correct</b> · RLVR reward +10" in probe.columns["right"].value
    assert "wrong</b> · RLVR reward +0" in probe.columns["wrong"].value
    assert "RLVR reward -10 (no EOS: penalty)" in probe.columns["no EOS"].value
    probe.select_example(2)  # the IFEval one switches the verifier
    assert probe.dataset.value == "ifeval"
    probe.prompt.value = "Say hello in French."  # an edited prompt is a free prompt: no verifier
    assert (probe.example.value, probe.dataset.value, probe.ground_truth.value) == (-1, "none", "")


def test_probe_error_shows_in_error_area_and_others_still_run(tiny):
    probe = PromptProbe({"good": tiny, "broken": BrokenBackend()}, max_new_tokens=3)
    probe.button.click()
    results = probe.wait(timeout=120)
    assert "broken: RuntimeError: CUDA out of memory (simulated)" in probe.error.value
    assert "Traceback" not in probe.error.value
    assert results["broken"] == [] and len(results["good"]) == 1
    assert "failed" in probe.columns["broken"].value and "class='tulu-token'" in probe.columns["good"].value
    assert "1 failed" in probe.status.value and probe.progress.bar_style == "danger"
    assert "RuntimeError" in probe.last_traceback


def test_probe_bad_inputs_are_reported_in_the_widget():
    probe = PromptProbe({"m": ScriptedBackend("hi")}, threaded=False)
    probe.prompt.value = "   "
    assert probe.generate() == {}
    assert "prompt is empty" in probe.error.value
    probe.prompt.value = "hello"
    probe.dataset.value = "math"   # a verifier without a ground truth: shown unscored, with a note
    results = probe.generate()
    assert results["m"][0].reward is None and "needs a ground truth" in probe.error.value
    probe.dataset.value, probe.ground_truth.value = "ifeval", "not json"  # malformed ground truth
    results = probe.generate()
    assert results["m"][0].reward is None and "m verifier" in probe.error.value


def test_probe_controls_start_at_the_given_settings():
    probe = PromptProbe({"m": ScriptedBackend("a")}, max_new_tokens=2048, num_samples=16, temperature=2.0, seed=7)
    assert (probe.max_new_tokens.value, probe.num_samples.value, probe.temperature.value, probe.seed.value) == \
        (2048, 16, 2.0, 7)


def test_probe_defaults_come_from_the_recipe_rlvr_config():
    from tulu_lab import pipeline
    from tulu_lab.config import RLVRConfig
    from tulu_lab.recipe import load_recipe

    recipe = pipeline.rlvr_config()
    probe = PromptProbe({"m": ScriptedBackend("a")}, threaded=False)
    assert probe.rlvr_config == recipe
    assert (probe.temperature.value, probe.max_new_tokens.value) == (recipe.temperature, recipe.max_new_tokens)
    assert recipe.temperature == load_recipe().rlvr.temperature != 1.0
    # another config: its temperature, length, reward and penalty
    cfg = RLVRConfig.cpu_preset(temperature=0.9, max_new_tokens=40, non_stop_penalty=0.0, correct_reward=1.0)
    examples = synthetic_examples(1, seed=0)
    rambling = ScriptedBackend(f"The answer is {examples[0]['ground_truth']} and", stopped=False)
    right = ScriptedBackend(f"So the answer is {examples[0]['ground_truth']}.")
    probe = PromptProbe({"right": right, "no EOS": rambling}, examples=examples, rlvr_config=cfg, threaded=False)
    assert (probe.temperature.value, probe.max_new_tokens.value) == (0.9, 40)
    probe.select_example("synthetic GSM")
    results = probe.generate()
    assert right.calls[0]["temperature"] == 0.9 and right.calls[0]["max_new_tokens"] == 40
    assert results["right"][0].reward == 1.0 and results["no EOS"][0].reward == 0.0
    assert rlvr_score(True, False, cfg) == 0.0 and rlvr_score(True, False) == -10.0


def test_probe_rejects_bad_arguments():
    with pytest.raises(ValueError, match="non-empty dict"):
        PromptProbe({})
    with pytest.raises(TypeError, match=r"models\['x'\]"):
        PromptProbe({"x": 42})
    with pytest.raises(ValueError, match=r"examples\[0\]"):
        PromptProbe({"m": ScriptedBackend("a")}, examples=[{"prompt": "no messages"}])
    with pytest.raises(ValueError, match="dataset 'chess'"):
        PromptProbe({"m": ScriptedBackend("a")},
                    examples=[{"messages": [{"role": "user", "content": "q"}], "dataset": "chess"}])


def test_probe_checkpoints_falls_back_and_finds_stages(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import shutil

    import tulu_lab.models as models

    loaded = []
    real_load = models.load_model
    monkeypatch.setattr(models, "load_model", lambda name, **kw: loaded.append(str(name)) or real_load(
        tiny_model_dir if name == "smollm2-135m" else name, **kw))
    found = probe_checkpoints(tmp_path)
    assert list(found) == ["instruct"] and loaded == ["smollm2-135m"]
    assert "No stage checkpoints" in capsys.readouterr().out
    for stage in ("sft", "rlvr"):
        shutil.copytree(tiny_model_dir, tmp_path / f"{stage}-embedded" / "final")
    found = probe_checkpoints(tmp_path)
    assert list(found) == ["SFT", "RLVR"]
    from tulu_lab.chat import TULU_CHAT_TEMPLATE

    assert found["SFT"][1].chat_template == TULU_CHAT_TEMPLATE  # the format the stages were trained in
    assert list(probe_checkpoints(tmp_path, smoke=True)) == ["RLVR"]


# ---------------------------------------------------------------------------------------------
# AblationExplorer
# ---------------------------------------------------------------------------------------------

def sweep_frame():
    rows = []
    for beta in (0.01, 0.05, 0.1):
        for lr in (1e-5, 3e-5):
            for seed in (0, 1):
                for step in range(1, 6):
                    rows.append(dict(beta=beta, learning_rate=lr, seed=seed, step=step,
                                     reward=step * (1 - beta) + seed, kl=step * beta,
                                     **{"completions/mean_length": 50 - step}, accuracy=0.1 * step))
    return pd.DataFrame(rows)


def legend_labels(fig):
    return [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]


def test_explorer_guesses_axes_and_draws():
    explorer = AblationExplorer(sweep_frame())
    assert explorer.grid == ["beta", "learning_rate", "seed"]
    assert explorer.metrics[:3] == ["reward", "kl", "completions/mean_length"] and "accuracy" in explorer.metrics
    assert explorer.x.value == "step" and explorer.color_by.value == "beta"
    assert len(explorer.figure.axes) == 3
    assert legend_labels(explorer.figure) == ["beta=0.01", "beta=0.05", "beta=0.1"]
    assert explorer.image.value[:4] == b"\x89PNG"
    # mean over seeds and learning rates: reward at step 5, beta 0.1 = 5 * 0.9 + mean(seed) 0.5
    point = explorer.plotted.query("beta == 0.1 and metric == 'reward' and step == 5")
    assert point["mean"].item() == pytest.approx(5.0) and point["n"].item() == 4
    assert "seed (2)" in explorer.info.value and "learning_rate (2)" in explorer.info.value


def test_explorer_updates_when_dropdowns_change():
    explorer = AblationExplorer(sweep_frame())
    first = explorer.figure
    explorer.color_by.value = "seed"
    assert explorer.figure is not first
    assert legend_labels(explorer.figure) == ["seed=0", "seed=1"]
    explorer.metric_select.value = ("accuracy",)
    assert len(explorer.figure.axes) == 1 and explorer.figure.axes[0].get_title() == "accuracy"
    explorer.filters["beta"].value = (0.05,)
    assert set(explorer.selection()["beta"]) == {0.05}
    explorer.color_by.value = "beta"
    assert legend_labels(explorer.figure) == ["beta=0.05"]
    explorer.filters["beta"].value = ()
    assert explorer.figure is None and "nothing to draw" in explorer.info.value


def test_explorer_rejects_unusable_frames():
    with pytest.raises(ValueError, match="non-empty"):
        AblationExplorer(pd.DataFrame())
    with pytest.raises(ValueError, match="no x column"):
        AblationExplorer(pd.DataFrame({"beta": [0.1], "reward": [1.0]}))
    with pytest.raises(ValueError, match="color_by='lr'"):
        AblationExplorer(sweep_frame(), color_by="lr")
    with pytest.raises(ValueError, match="'nope' is not a column"):
        AblationExplorer(sweep_frame(), metrics=["nope"])
    frame = pd.DataFrame({"step": np.arange(3), "algorithm": ["ppo"] * 3, "reward": [1.0, 2.0, 3.0]})
    assert AblationExplorer(frame).grid == ["algorithm"]


def test_explorer_reads_a_sweep_table():
    """The layout of tulu_lab.sweep.sweep_table: axes, seed, cell, step, episodes, metrics, final."""
    frame = sweep_frame().drop(columns=["learning_rate"])
    frame.insert(2, "cell", [f"beta={b}_seed={s}" for b, s in zip(frame["beta"], frame["seed"])])
    frame["episodes"] = frame["step"] * 16
    frame["eval/accuracy"] = frame["accuracy"] / 2
    frame["final"] = frame["step"] == 5
    explorer = AblationExplorer(frame)
    assert explorer.grid == ["beta", "seed", "cell"] and "final" not in explorer.metrics
    assert explorer.x.value == "episodes" and "eval/accuracy" in explorer.metrics
    explorer.color_by.value = "cell"
    assert len(legend_labels(explorer.figure)) == 6


def test_benchmark_examples_default_to_the_shipped_sets():
    examples = benchmark_examples(n_per_benchmark=2)
    assert [e["dataset"] for e in examples] == ["gsm8k", "gsm8k", "math", "math"]
    assert examples[0]["id"] == "gsm8k/test/0" and examples[0]["ground_truth"] == "18"
