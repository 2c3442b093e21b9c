r"""Benchmark evaluation: GSM8K, MATH, IFEval and PopQA in the Tülu 3 (OLMES "::tulu") settings.

    evaluate(model_or_backend, tokenizer, "gsm8k", data="path/to/test.jsonl") -> pandas.DataFrame

returns tidy rows ``model, stage, benchmark, metric, value, n, stderr`` (plus ``shots``,
``max_new_tokens`` and ``primary``, the headline metric), values as fractions in [0, 1] and
``stderr = sqrt(p (1 - p) / n)``. Beside it, in ``output_dir``, it writes ``<key>.jsonl`` (one line
per example: prompt, response, finish reason, extracted answer, verdicts), ``<key>.csv`` (the frame)
and ``<key>.json`` (every setting used, timings). A second call with the same model weights, chat
template, benchmark, settings and data reads those files instead of generating again. While it runs,
each finished batch is appended to ``<key>.partial.jsonl``; a run that crashed resumes from it.

Settings (defaults; ``shots`` and ``max_new_tokens`` override, and what was used is recorded):

=========  =====  ==========  ===================================================================
benchmark  shots  new tokens  prompt and scoring
=========  =====  ==========  ===================================================================
gsm8k      8      512         Wei et al. CoT exemplars as a multi-turn chat; greedy; exact match
                              ``exact_match_flex`` (last number, the headline) and
                              ``exact_match_strict`` (see below)
math       4      1024        Minerva exemplars as a multi-turn chat; greedy; ``exact_match_flex``
                              (boxed / Minerva "final answer" / last $...$; string or symbolic match)
ifeval     0      2048        the prompt as one user turn; greedy; ``prompt_level_loose`` (headline),
                              ``prompt_level_strict``, ``inst_level_loose``, ``inst_level_strict``
popqa      15     15          "Q: ... A:" exemplars (the first ``shots`` rows of the data, which are
                              then not evaluated) as a multi-turn chat; stop at a blank line;
                              ``exact_match``: any alias of ``possible_answers`` in the output,
                              ignoring case. The 405B table used 3 shots (``POPQA_SHOTS_405B``).
=========  =====  ==========  ===================================================================

Where this departs from OLMES, on purpose:

* GSM8K "strict": lm-evaluation-harness's strict-match regex is ``#### (-?[0-9.,]+)`` for the plain
  task, ``The answer is (-?[0-9.,]+).`` for the CoT task whose exemplars this prompt uses. A
  response matches strictly when either appears (the first one found, as written), so the strict
  score measures format-following under either convention instead of being zero by construction.
* Stop strings ("Q:" for GSM8K, "Problem:" for MATH) end a response that starts a new few-shot
  turn of its own; EOS ends the rest. They cut runaway generations short on slow machines and do
  not change a verdict (the answer comes before them).

Prompts are message lists rendered by the tokenizer's chat template (for a backend: by the
server), so the template is part of the setting: ``tulu_lab.chat.install_tulu_template`` sets the
Tülu one, an instruct model's own template is used otherwise. The cache key includes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from tulu_lab.backends import LocalBackend, call_generate
from tulu_lab.paths import check_writable, resolve_output_dir

__all__ = ["BENCHMARKS", "EVAL_VERSION", "POPQA_SHOTS_405B", "BenchmarkSpec", "evaluate", "model_fingerprint",
           "gsm8k_strict_answer", "popqa_correct"]

# Bumped whenever prompts or scoring change, so stale cached results are not reused.
EVAL_VERSION = 1
POPQA_SHOTS_405B = 3
FRAME_COLUMNS = ["model", "stage", "benchmark", "metric", "value", "n", "stderr", "shots", "max_new_tokens",
                 "primary"]


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    shots: int                   # default few-shot count (OLMES "::tulu")
    max_new_tokens: int          # default generation budget
    stop: tuple[str, ...]        # stop strings besides EOS
    metrics: tuple[str, ...]     # reported metrics, headline first
    hf_id: str                   # its Hugging Face id (without ``data``: the shipped copy; PopQA: this id)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "gsm8k": BenchmarkSpec("gsm8k", 8, 512, ("Q:",), ("exact_match_flex", "exact_match_strict"), "openai/gsm8k"),
    "math": BenchmarkSpec("math", 4, 1024, ("Problem:",), ("exact_match_flex",), "HuggingFaceH4/MATH-500"),
    "ifeval": BenchmarkSpec("ifeval", 0, 2048, (), ("prompt_level_loose", "prompt_level_strict",
                                                      "inst_level_loose", "inst_level_strict"), "google/IFEval"),
    "popqa": BenchmarkSpec("popqa", 15, 15, ("\n\n",), ("exact_match",), "akariasai/PopQA"),
}


# --------------------------------------------------------------------------------------------------
# Data: loading, validation of in-memory rows, few-shot prompts
# --------------------------------------------------------------------------------------------------

def _load_rows(benchmark: str, data) -> list[dict]:
    """Rows of ``benchmark`` from a path / HF id (the data loaders) or a list of dicts (checked here)."""
    from tulu_lab import data as loaders

    if data is None or isinstance(data, (str, os.PathLike)):
        load = {"gsm8k": loaders.load_gsm8k, "math": loaders.load_math, "ifeval": loaders.load_ifeval,
                "popqa": loaders.load_popqa}[benchmark]
        return load() if data is None else load(data)  # no data: the shipped test set (PopQA: the hub)
    if not isinstance(data, (list, tuple)):
        raise TypeError(f"data must be a path, a Hugging Face dataset id or a list of row dicts, "
                        f"got {type(data).__name__}")
    required = {"gsm8k": ("question",), "math": ("problem", "answer"),
                "ifeval": ("prompt", "instruction_id_list", "kwargs"), "popqa": ("question", "possible_answers")}
    rows = []
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise ValueError(f"data[{index}]: expected a dict with fields {required[benchmark]}, got {row!r:.80}")
        missing = [f for f in required[benchmark] if f not in row]
        if missing:
            raise ValueError(f"data[{index}]: {benchmark} row lacks field {missing[0]!r} "
                             f"(expected fields {required[benchmark]})")
        row = dict(row)
        if benchmark == "gsm8k" and "final_answer" not in row:
            final = loaders.gsm8k_final_answer(str(row.get("answer", "")))
            if final is None:
                raise ValueError(f"data[{index}]: gsm8k row needs 'final_answer' or an 'answer' ending in '#### N'")
            row["final_answer"] = final
        if benchmark == "popqa":
            aliases = row["possible_answers"]
            if isinstance(aliases, str):
                aliases = json.loads(aliases)
            if not isinstance(aliases, list) or not aliases or not all(isinstance(a, str) for a in aliases):
                raise ValueError(f"data[{index}]: possible_answers must be a non-empty list of strings, got {aliases!r}")
            row["possible_answers"] = aliases
        if benchmark == "ifeval" and len(row["instruction_id_list"]) != len(row["kwargs"]):
            raise ValueError(f"data[{index}]: instruction_id_list and kwargs differ in length")
        row.setdefault("id", f"{benchmark}/{index}")
        rows.append(row)
    return rows


def _prompt(benchmark: str, row: dict, shots: int, exemplars: list[dict]) -> list[dict]:
    from tulu_lab.data import build_fewshot_messages

    if benchmark == "gsm8k":
        return build_fewshot_messages("gsm8k", row["question"], n_shots=shots)
    if benchmark == "math":
        return build_fewshot_messages("math", row["problem"], n_shots=shots)
    if benchmark == "popqa":
        return build_fewshot_messages("popqa", row["question"], n_shots=shots, exemplars=exemplars)
    return [{"role": "user", "content": row["prompt"]}]


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------

_ANSWER_IS_RE = re.compile(r"The answer is (-?[0-9.,]+)")


def gsm8k_strict_answer(text: str) -> str | None:
    """The "#### N" answer (lm-eval gsm8k strict-match), else "The answer is N" (gsm8k-cot), or None."""
    from tulu_lab.rewards import extract_gsm8k_answer

    answer = extract_gsm8k_answer(text, mode="strict")
    if answer is None:
        match = _ANSWER_IS_RE.search(text)
        if match:
            answer = match.group(1).replace(",", "").rstrip(".") or None
    return answer


def _same_number(answer: str | None, gold: str) -> bool:
    from tulu_lab.rewards import gsm8k_gold_answer

    if answer is None:
        return False
    try:
        return Decimal(answer.replace(",", "").replace("$", "")) == gsm8k_gold_answer(gold)
    except InvalidOperation:
        return False


def popqa_correct(response: str, possible_answers: Sequence[str]) -> bool:
    """True when any alias occurs in the response, ignoring case (OLMES / PopQA "any alias" match)."""
    lowered = response.lower()
    return any(alias.strip() and alias.strip().lower() in lowered for alias in possible_answers)


def _score(benchmark: str, row: dict, response: str) -> dict:
    """Verdicts and extracted answers for one example (what the JSONL records)."""
    from tulu_lab.rewards import extract_gsm8k_answer, extract_math_answer, ifeval_check, verify_math

    if benchmark == "gsm8k":
        flexible, strict = extract_gsm8k_answer(response, mode="flexible"), gsm8k_strict_answer(response)
        return {"gold": row["final_answer"], "answer_flex": flexible, "answer_strict": strict,
                "exact_match_flex": _same_number(flexible, row["final_answer"]),
                "exact_match_strict": _same_number(strict, row["final_answer"])}
    if benchmark == "math":
        return {"gold": row["answer"], "answer": extract_math_answer(response),
                "exact_match_flex": bool(verify_math(response, row["answer"]))}
    if benchmark == "ifeval":
        try:
            verdict = ifeval_check(row["prompt"], response, row["instruction_id_list"], row["kwargs"])
        except ValueError as exc:
            raise ValueError(f"IFEval row {row.get('id')!r}: {exc}") from exc
        return {"instruction_id_list": row["instruction_id_list"], **verdict}
    return {"gold": row["possible_answers"], "exact_match": popqa_correct(response, row["possible_answers"])}


def _metric_rows(benchmark: str, records: list[dict]) -> list[tuple[str, float, int]]:
    """(metric, value, n) per metric, headline first."""
    out = []
    for metric in BENCHMARKS[benchmark].metrics:
        if metric.startswith("inst_level"):
            verdicts = [bool(v) for r in records for v in r[metric]]
        else:
            verdicts = [bool(r[metric]) for r in records]
        n = len(verdicts)
        out.append((metric, sum(verdicts) / n if n else float("nan"), n))
    return out


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n > 0 and not math.isnan(p) else float("nan")


# --------------------------------------------------------------------------------------------------
# Model identity (the cache key)
# --------------------------------------------------------------------------------------------------

def _sample_bytes(tensor, limit: int) -> bytes:
    """A strided sample of a tensor's values as bytes: cheap, and it changes when training does."""
    flat = tensor.detach().reshape(-1)
    if flat.device.type == "meta" or flat.numel() == 0:
        return b""
    step = max(1, flat.numel() // limit)
    return flat[::step][:limit].float().cpu().numpy().tobytes()


def model_fingerprint(model, values_per_tensor: int = 256) -> str:
    """A short hash of a model's weights: every parameter's name, shape and dtype, and a strided
    sample of its values (LoRA adapters included, so a trained adapter changes it). Reading a few
    hundred values per tensor costs milliseconds even for large models, unlike hashing every byte."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype};".encode())
        digest.update(_sample_bytes(parameter, values_per_tensor))
    return digest.hexdigest()[:16]


def _tokenizer_fingerprint(tokenizer) -> str:
    if tokenizer is None:
        return "none"
    parts = [str(getattr(tokenizer, "name_or_path", "")), str(getattr(tokenizer, "chat_template", "")),
             str(getattr(tokenizer, "eos_token", "")), str(len(tokenizer))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def _model_label(model_or_backend, model_name: str | None) -> str:
    if model_name:
        return model_name
    name = (getattr(model_or_backend, "name_or_path", None) or getattr(model_or_backend, "name", None)
            or type(model_or_backend).__name__)
    return Path(str(name).rstrip("/")).name or str(name)


def _identity(model_or_backend, tokenizer, model_name: str | None) -> str | None:
    """What distinguishes this model's results, or None when nothing stable is known (no caching)."""
    import torch

    if isinstance(model_or_backend, torch.nn.Module):
        name = str(getattr(model_or_backend, "name_or_path", "") or "")
        return f"local:{name}:{model_fingerprint(model_or_backend)}:tok={_tokenizer_fingerprint(tokenizer)}"
    if isinstance(model_or_backend, LocalBackend):
        return _identity(model_or_backend.model, model_or_backend.tokenizer, model_name)
    identity = getattr(model_or_backend, "identity", None)
    if identity:
        return str(identity)
    return f"backend:{model_name}" if model_name else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "model"


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------

def _frame(label: str, stage: str, benchmark: str, metrics: list[tuple[str, float, int]], shots: int,
           max_new_tokens: int) -> pd.DataFrame:
    rows = [{"model": label, "stage": stage, "benchmark": benchmark, "metric": metric, "value": value, "n": n,
             "stderr": _stderr(value, n), "shots": shots, "max_new_tokens": max_new_tokens, "primary": i == 0}
            for i, (metric, value, n) in enumerate(metrics)]
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def _prompt_size(prompt) -> int:
    return len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)


def evaluate(model_or_backend, tokenizer, benchmark: str, *, limit: int | None = None, shots: int | None = None,
             batch_size: int = 16, seed: int = 0, data: str | os.PathLike | Sequence[dict] | None = None,
             max_new_tokens: int | None = None, model_name: str | None = None, stage: str | None = None,
             output_dir: str | os.PathLike = "runs/eval", use_cache: bool = True,
             progress: bool = True) -> pd.DataFrame:
    """Evaluate a model (or a generation backend) on one benchmark; returns a tidy DataFrame.

    Args:
        model_or_backend: a transformers causal LM (with ``tokenizer``), or any object with
            ``generate(prompts, max_new_tokens=, temperature=, stop=, ...) -> list[Generation]``
            (``tulu_lab.backends.OpenAIBackend`` / ``LocalBackend``); ``tokenizer`` may be None then.
        tokenizer: the model's tokenizer; its chat template renders the prompts.
        benchmark: "gsm8k" | "math" | "ifeval" | "popqa" (any case).
        limit: evaluate only the first ``limit`` examples.
        shots: few-shot count instead of the benchmark's default (8 / 4 / 0 / 15).
        batch_size: rows decoded together by the local sampler.
        seed: sampler seed (decoding is greedy; the seed matters only to backends that sample anyway).
        data: a local file or folder, a Hugging Face dataset id, or a list of row dicts. Default: the
            test set shipped with the package (GSM8K, MATH-500, IFEval); PopQA's Hugging Face id.
        max_new_tokens: generation budget instead of the default (512 / 1024 / 2048 / 15).
        model_name: the name shown in the ``model`` column (default: the model's folder or hub name);
            for a backend without an ``identity`` it also keys the cache.
        stage: label for the ``stage`` column ("base", "SFT", "DPO", "RLVR", ...).
        output_dir: where ``<key>.jsonl`` / ``.csv`` / ``.json`` are written and the cache is read;
            "runs/..." lies under ``$TULU_LAB_RUNS`` when set (``tulu_lab.paths.resolve_output_dir``).
            It must be writable: that is checked before anything is generated.
        use_cache: reuse results from ``output_dir`` when model, template, settings and data match,
            and resume an interrupted evaluation from its ``<key>.partial.jsonl``.
        progress: show a progress bar over examples.

    Returns:
        DataFrame with columns model, stage, benchmark, metric, value (fraction), n, stderr, shots,
        max_new_tokens, primary; ``attrs`` holds the settings, the file paths and whether it was cached.
    """
    import torch
    from tqdm.auto import tqdm

    if not isinstance(benchmark, str) or benchmark.strip().lower() not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {sorted(BENCHMARKS)} (any case), got {benchmark!r}")
    benchmark = benchmark.strip().lower()
    spec = BENCHMARKS[benchmark]
    shots = spec.shots if shots is None else shots
    max_new_tokens = spec.max_new_tokens if max_new_tokens is None else max_new_tokens
    if not isinstance(shots, int) or shots < 0:
        raise ValueError(f"shots must be a non-negative integer, got {shots!r}")
    if benchmark == "ifeval" and shots != 0:
        raise ValueError(f"IFEval is zero-shot; got shots={shots}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    if isinstance(model_or_backend, torch.nn.Module):
        if tokenizer is None:
            raise ValueError("evaluate() got a local model without its tokenizer; pass the tokenizer, or wrap "
                             "the model in a backend object")
        backend = LocalBackend(model_or_backend, tokenizer)
    elif callable(getattr(model_or_backend, "generate", None)):
        backend = model_or_backend
    else:
        raise TypeError(f"model_or_backend must be a torch model or have a generate(prompts, ...) method, "
                        f"got {type(model_or_backend).__name__}")
    label = _model_label(model_or_backend, model_name)
    stage = "" if stage is None else str(stage)

    rows = _load_rows(benchmark, data)
    exemplars: list[dict] = []
    if benchmark == "popqa":
        # PopQA has no fixed exemplars: the first rows serve, and are kept out of the scored set.
        if shots > len(rows) - 1:
            raise ValueError(f"PopQA with shots={shots} needs more than {shots} rows of data, got {len(rows)}")
        exemplars, rows = rows[:shots], rows[shots:]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"no {benchmark} examples to evaluate (data={data!r}, limit={limit})")

    settings = {"benchmark": benchmark, "shots": shots, "max_new_tokens": max_new_tokens, "limit": limit,
                "seed": seed, "temperature": 0.0, "stop": list(spec.stop), "n_examples": len(rows),
                "eval_version": EVAL_VERSION}
    data_hash = hashlib.sha256(json.dumps([exemplars, rows], sort_keys=True, default=str).encode()).hexdigest()[:16]
    identity = _identity(model_or_backend, tokenizer, model_name)
    key_material = json.dumps({"identity": identity, "settings": settings, "data": data_hash}, sort_keys=True)
    key = f"{_slug(label)}-{benchmark}-{hashlib.sha256(key_material.encode()).hexdigest()[:12]}"
    output_dir = resolve_output_dir(output_dir, "eval")
    paths = {kind: output_dir / f"{key}.{kind}" for kind in ("csv", "jsonl", "json")}

    if use_cache and identity is not None and all(p.is_file() for p in paths.values()):
        meta = json.loads(paths["json"].read_text())
        if meta.get("key_material") == key_material:
            frame = pd.read_csv(paths["csv"], keep_default_na=False, na_values=[""])
            frame["model"], frame["stage"] = label, stage
            frame.attrs.update(settings=meta["settings"], paths={k: str(v) for k, v in paths.items()}, cached=True,
                               seconds=meta.get("seconds"))
            return frame

    check_writable(output_dir, "evaluate: output_dir")  # before any generation, not after it
    prompts = [_prompt(benchmark, row, shots, exemplars) for row in rows]
    # Records are appended to <key>.partial.jsonl as each chunk finishes; a rerun after a crash keeps
    # them (same key: same model, settings and data) and generates only what is missing.
    partial = output_dir / f"{key}.partial.jsonl"
    records: dict[int, dict] = {}
    if use_cache and identity is not None:
        records = _read_partial(partial, prompts)
    elif partial.exists():
        partial.unlink()
    # Longest prompts first: similar lengths share a batch, and the bar shows the slowest part early.
    order = sorted((i for i in range(len(prompts)) if i not in records), key=lambda i: -_prompt_size(prompts[i]))
    chunk = max(batch_size * 4, 1)
    started = time.perf_counter()
    with tqdm(total=len(prompts), initial=len(records), desc=f"{benchmark} ({label})", disable=not progress,
              unit="ex") as bar:
        for start in range(0, len(order), chunk):
            indices = order[start:start + chunk]
            outputs = call_generate(backend, [prompts[i] for i in indices], max_new_tokens=max_new_tokens,
                                    temperature=0.0, top_p=1.0, num_samples=1, seed=seed, batch_size=batch_size,
                                    stop=list(spec.stop) or None, progress=False)
            if len(outputs) != len(indices):
                raise RuntimeError(f"the backend returned {len(outputs)} generations for {len(indices)} prompts")
            fresh = [_record(benchmark, i, rows[i], prompts[i], generation) for i, generation in zip(indices, outputs)]
            with partial.open("a", encoding="utf-8") as handle:
                for record in fresh:
                    handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            records.update((r["index"], r) for r in fresh)
            bar.update(len(indices))
    seconds = time.perf_counter() - started

    ordered = [records[i] for i in range(len(prompts))]
    metrics = _metric_rows(benchmark, ordered)
    frame = _frame(label, stage, benchmark, metrics, shots, max_new_tokens)

    _write_atomic(paths["jsonl"], "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in ordered))
    _write_atomic(paths["csv"], frame.to_csv(index=False))
    finish_counts = pd.Series([r["finish_reason"] for r in ordered]).value_counts().to_dict()
    meta = {"key": key, "key_material": key_material, "model": label, "identity": identity, "settings": settings,
            "data_hash": data_hash, "seconds": seconds, "finish_reasons": finish_counts,
            "new_tokens_total": sum(r["new_tokens"] for r in ordered), "resumed_examples": len(prompts) - len(order)}
    _write_atomic(paths["json"], json.dumps(meta, indent=1, default=str))  # last: a complete entry marks the cache valid
    partial.unlink(missing_ok=True)
    frame.attrs.update(settings=settings, paths={k: str(v) for k, v in paths.items()}, cached=False,
                       seconds=seconds)
    return frame


def _record(benchmark: str, index: int, row: dict, prompt, generation) -> dict:
    """What the JSONL keeps for one example: prompt, response, finish reason and the verdicts."""
    return {"index": index, "id": row.get("id"), "prompt": prompt, "response": generation.text,
            "finish_reason": generation.finish_reason, "new_tokens": len(generation.token_ids),
            **_score(benchmark, row, generation.text)}


def _read_partial(path: Path, prompts: list) -> dict[int, dict]:
    """Records a crashed run appended, by index; a torn last line or a record for another prompt is dropped."""
    records: dict[int, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the line being written when the process died
        index = record.get("index") if isinstance(record, dict) else None
        if isinstance(index, int) and 0 <= index < len(prompts) and record.get("prompt") == prompts[index]:
            records[index] = record
    return records


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
