"""Benchmark evaluation: prompts, scoring, tidy frame, JSONL, cache keys; tiny model and scripted backends."""

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from tulu_lab.evaluate import BENCHMARKS, evaluate, gsm8k_strict_answer, model_fingerprint, popqa_correct
from tulu_lab.generate import Generation, generate

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K_TEST = SHARED / "gsm8k" / "test.jsonl"
IFEVAL = SHARED / "ifeval" / "input_data.jsonl"
POPQA_FIXTURE = Path(__file__).parent / "fixtures" / "popqa_small.tsv"
needs_shared = pytest.mark.skipif(not GSM8K_TEST.is_file(), reason=f"benchmark data not found at {SHARED}")


class ScriptedBackend:
    """A backend whose answers are fixed in advance, keyed by the last user message."""

    def __init__(self, answers, default=""):
        self.answers, self.default = answers, default
        self.calls = []

    def generate(self, prompts, *, max_new_tokens, temperature, stop=None, seed=None):
        self.calls.append({"prompts": list(prompts), "max_new_tokens": max_new_tokens, "stop": stop,
                           "temperature": temperature})
        out = []
        for i, prompt in enumerate(prompts):
            text = self.answers.get(prompt[-1]["content"], self.default)
            out.append(Generation(prompt=str(prompt), text=text, token_ids=[], logprobs=[], stopped=True,
                                  finish_reason="eos", prompt_index=i))
        return out


def _value(frame, metric):
    row = frame[frame.metric == metric]
    assert len(row) == 1, frame
    return float(row.value.iloc[0]), int(row.n.iloc[0]), float(row.stderr.iloc[0])


# --- scoring helpers -------------------------------------------------------------------------------

def test_gsm8k_strict_accepts_both_harness_formats_and_nothing_else():
    assert gsm8k_strict_answer("so 3 + 4 = 7\n#### 7") == "7"
    assert gsm8k_strict_answer("3 + 4 = 7. The answer is 1,070.") == "1070"
    assert gsm8k_strict_answer("The answer is -5.") == "-5"
    assert gsm8k_strict_answer("3 + 4 = 7, so 7 apples") is None


def test_popqa_alias_match_ignores_case_only():
    assert popqa_correct(" the city of SALZBURG, Austria", ["Salzburg"])
    assert popqa_correct("Madame Curie", ["Marie Curie", "madame curie"])
    assert not popqa_correct("Vienna", ["Salzburg", "Salzburg, Austria"])
    assert not popqa_correct("anything", ["  "])


# --- scripted backends: the numbers are known by construction ---------------------------------------

def test_gsm8k_metrics_frame_and_jsonl(tmp_path):
    rows = [{"question": "Q one?", "answer": "1+1=2\n#### 2"},
            {"question": "Q two?", "answer": "#### 1,080"},
            {"question": "Q three?", "answer": "#### -3"},
            {"question": "Q four?", "answer": "#### 10"}]
    backend = ScriptedBackend({
        "Q: Q one?\nA:": "1 + 1 = 2. The answer is 2.",       # strict and flexible
        "Q: Q two?\nA:": "It costs 1,080 dollars in total.",   # flexible only
        "Q: Q three?\nA:": "#### -3 and then 4 more",          # strict only (last number is 4)
        "Q: Q four?\nA:": "The answer is 9.",                   # neither
    })
    frame = evaluate(backend, None, "GSM8K", data=rows, shots=2, max_new_tokens=32, model_name="scripted",
                     stage="SFT", output_dir=tmp_path, progress=False)
    assert list(frame.columns[:7]) == ["model", "stage", "benchmark", "metric", "value", "n", "stderr"]
    assert set(frame.model) == {"scripted"} and set(frame.stage) == {"SFT"} and set(frame.benchmark) == {"gsm8k"}
    flex, n, se = _value(frame, "exact_match_flex")
    assert (flex, n) == (0.5, 4) and se == pytest.approx(math.sqrt(0.25 / 4))
    assert _value(frame, "exact_match_strict")[0] == 0.5
    assert frame.set_index("metric").loc["exact_match_flex", "primary"]
    assert set(frame.shots) == {2} and set(frame.max_new_tokens) == {32}

    # the prompt: 2 Wei et al. exemplars as chat turns, then the question; the budget and stop passed on
    call = backend.calls[0]
    assert call["max_new_tokens"] == 32 and call["temperature"] == 0.0 and call["stop"] == ["Q:"]
    prompt = call["prompts"][0]
    assert [m["role"] for m in prompt] == ["user", "assistant"] * 2 + ["user"]
    assert prompt[1]["content"].endswith("The answer is 6.")

    written = [json.loads(line) for line in Path(frame.attrs["paths"]["jsonl"]).read_text().splitlines()]
    assert [r["exact_match_flex"] for r in written] == [True, True, False, False]
    assert [r["exact_match_strict"] for r in written] == [True, False, True, False]
    assert written[2]["answer_flex"] == "4" and written[1]["gold"] == "1,080"
    saved = pd.read_csv(frame.attrs["paths"]["csv"])
    assert saved.value.tolist() == frame.value.tolist()
    meta = json.loads(Path(frame.attrs["paths"]["json"]).read_text())
    assert meta["settings"]["shots"] == 2 and meta["settings"]["max_new_tokens"] == 32


def test_ifeval_four_metrics_by_hand(tmp_path):
    rows = [{"key": 1, "prompt": "Write about cats. Use lowercase and no commas.",
             "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"], "kwargs": [{}, {}]},
            {"key": 2, "prompt": "Write about dogs without commas.",
             "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
            {"key": 3, "prompt": "Write about birds in lowercase.",
             "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}]
    backend = ScriptedBackend({
        rows[0]["prompt"]: "cats are nice, and soft",          # lowercase yes, comma no -> 1 of 2
        rows[1]["prompt"]: "Dogs are loyal friends",           # passes
        rows[2]["prompt"]: "Sure! Here it is:\nbirds sing sweetly in the morning light and fly over the green hills",
        # ^ strict fails ("S"), loose passes (IFEval's variant without the first line)
    })
    frame = evaluate(backend, None, "ifeval", data=rows, model_name="scripted", output_dir=tmp_path,
                     progress=False)
    assert frame.metric.tolist() == ["prompt_level_loose", "prompt_level_strict", "inst_level_loose",
                                     "inst_level_strict"]
    assert _value(frame, "prompt_level_strict")[:2] == (pytest.approx(1 / 3), 3)
    assert _value(frame, "prompt_level_loose")[:2] == (pytest.approx(2 / 3), 3)
    assert _value(frame, "inst_level_strict")[:2] == (pytest.approx(2 / 4), 4)
    assert _value(frame, "inst_level_loose")[:2] == (pytest.approx(3 / 4), 4)
    assert backend.calls[0]["prompts"][0] == [{"role": "user", "content": rows[0]["prompt"]}]
    assert backend.calls[0]["max_new_tokens"] == BENCHMARKS["ifeval"].max_new_tokens


def test_popqa_fixture_exemplars_are_not_scored(tmp_path):
    backend = ScriptedBackend({}, default="no idea")
    frame = evaluate(backend, None, "popqa", data=POPQA_FIXTURE, shots=3, model_name="scripted",
                     output_dir=tmp_path, progress=False)
    prompts = backend.calls[0]["prompts"]
    assert len(prompts) == 12 - 3 and _value(frame, "exact_match") == (0.0, 9, 0.0)
    first = prompts[0]
    assert [m["role"] for m in first] == ["user", "assistant"] * 3 + ["user"]
    assert first[0]["content"] == "Q: What is Marie Curie's occupation? A:" and first[1]["content"] == "physicist"
    assert all(p[-1]["content"].startswith("Q: ") and p[-1]["content"].endswith(" A:") for p in prompts)
    assert "What is Marie Curie's occupation?" not in {p[-1]["content"][3:-3] for p in prompts}
    assert backend.calls[0]["stop"] == ["\n\n"] and backend.calls[0]["max_new_tokens"] == 15


def test_math_flex_scoring(tmp_path):
    rows = [{"problem": "Half of one?", "answer": "\\frac{1}{2}"}, {"problem": "Two plus two?", "answer": "4"}]
    backend = ScriptedBackend({
        "Problem:\nHalf of one?\n\nSolution:": "It is $\\boxed{\\frac12}$.\nFinal Answer: The final answer is "
                                              "$\\frac12$. I hope it is correct.",
        "Problem:\nTwo plus two?\n\nSolution:": "The final answer is $5$.",
    })
    frame = evaluate(backend, None, "math", data=rows, model_name="scripted", output_dir=tmp_path, progress=False)
    assert _value(frame, "exact_match_flex")[:2] == (0.5, 2)
    assert len(backend.calls[0]["prompts"][0]) == 2 * 4 + 1  # 4 Minerva exemplars


# --- errors ----------------------------------------------------------------------------------------

def test_bad_arguments_and_rows_are_named(tmp_path):
    backend = ScriptedBackend({})
    with pytest.raises(ValueError, match="benchmark must be one of"):
        evaluate(backend, None, "mmlu", data=[], output_dir=tmp_path)
    with pytest.raises(ValueError, match=r"data\[1\].*'question'"):
        evaluate(backend, None, "gsm8k", data=[{"question": "a", "answer": "#### 1"}, {"answer": "#### 2"}],
                 output_dir=tmp_path)
    with pytest.raises(ValueError, match="zero-shot"):
        evaluate(backend, None, "ifeval", shots=2, data=[], output_dir=tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate(torch.nn.Linear(2, 2), None, "gsm8k", data=[], output_dir=tmp_path)
    with pytest.raises(TypeError, match="generate"):
        evaluate(object(), None, "gsm8k", data=[], output_dir=tmp_path)


def test_without_data_the_shipped_set_is_scored_offline(tmp_path, monkeypatch):
    from tulu_lab.data import DataSourceNotFoundError, load_gsm8k

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    first, second = load_gsm8k(limit=2)  # the shipped test set's first problems (answers 18 and 3)
    assert first["final_answer"] != second["final_answer"]
    backend = ScriptedBackend({}, default=f"#### {first['final_answer']}")
    frame = evaluate(backend, None, "gsm8k", limit=2, shots=0, output_dir=tmp_path, progress=False)
    accuracy, n, _ = _value(frame, "exact_match_flex")
    assert (accuracy, n) == (0.5, 2)
    # PopQA is not shipped: its hub id fails offline with a message that says what to pass instead
    with pytest.raises(DataSourceNotFoundError, match="local file"):
        evaluate(ScriptedBackend({}), None, "popqa", limit=2, output_dir=tmp_path, progress=False)


# --- the tiny model end to end: real generation, cache, fingerprints -------------------------------

@needs_shared
def test_tiny_model_matches_generate_and_caches(tiny, tmp_path):
    model, tok = tiny
    kwargs = dict(data=GSM8K_TEST, limit=5, shots=1, max_new_tokens=6, batch_size=2, output_dir=tmp_path,
                  progress=False)
    frame = evaluate(model, tok, "gsm8k", **kwargs)
    assert frame.attrs["cached"] is False and set(frame.n) == {5}
    records = [json.loads(l) for l in Path(frame.attrs["paths"]["jsonl"]).read_text().splitlines()]
    assert len(records) == 5
    # what evaluate recorded is what the sampler produces for the same prompts, in data order
    direct = generate(model, tok, [r["prompt"] for r in records], max_new_tokens=6, stop=["Q:"], batch_size=8)
    assert [r["response"] for r in records] == [g.text for g in direct]
    assert records[0]["prompt"][-1]["content"].startswith("Q: Janet")

    again = evaluate(model, tok, "gsm8k", stage="base", **kwargs)
    assert again.attrs["cached"] is True and set(again.stage) == {"base"}
    assert again.value.tolist() == frame.value.tolist()
    # a different budget is a different result
    other = evaluate(model, tok, "gsm8k", **{**kwargs, "max_new_tokens": 7})
    assert other.attrs["cached"] is False and set(other.max_new_tokens) == {7}


def test_fingerprint_follows_weights_and_lora():
    from peft import get_peft_model
    from transformers import LlamaForCausalLM

    from tulu_lab.models import lora_config
    from tulu_lab.tiny import tiny_llama_config

    def tiny_model(seed):
        torch.manual_seed(seed)
        return LlamaForCausalLM(tiny_llama_config(64))

    model = tiny_model(1)
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before and model_fingerprint(tiny_model(2)) != before
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.01)  # one tensor of one layer changes
    assert model_fingerprint(model) != before

    peft_model = get_peft_model(model, lora_config(r=2))
    with_lora = model_fingerprint(peft_model)
    with torch.no_grad():
        lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
        lora_b[-1].add_(0.001)  # what a training step does to one zero-initialised adapter matrix
    assert model_fingerprint(peft_model) != with_lora


@needs_shared
def test_template_is_part_of_the_cache_key(tiny_model_dir, tmp_path):
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.models import load_model

    model, tok = load_model(tiny_model_dir, dtype="fp32", verbose=False)
    install_tulu_template(tok)
    kwargs = dict(data=IFEVAL, limit=2, max_new_tokens=3, output_dir=tmp_path, progress=False)
    first = evaluate(model, tok, "ifeval", **kwargs)
    tok.chat_template = tok.chat_template.replace("<|user|>", "<|human|>")
    second = evaluate(model, tok, "ifeval", **kwargs)
    assert first.attrs["paths"]["csv"] != second.attrs["paths"]["csv"] and second.attrs["cached"] is False
