"""Bad input and faults: every probe here once gave a silent wrong result, a hang, a raw library
error or lost work. Each test states the probe; each fails on the behaviour it replaced."""

import json
import math
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tulu_lab.backends import OpenAIBackend, OpenAIBackendError
from tulu_lab.data import DataFormatError, load_gsm8k, load_ifeval, load_popqa, load_rlvr, load_sft
from tulu_lab.evaluate import evaluate
from tulu_lab.generate import Generation
from tulu_lab.rewards import ifeval_check, start_symbolic_worker, verify

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------------------------------
# A fake OpenAI-compatible server whose answers come from its "weights"
# --------------------------------------------------------------------------------------------------

class FakeServer:
    """Serves ``model_name`` on a fixed port; ``weights`` (a dict) decides every answer.

    weights["answer"] is the text of every completion; weights["logprob"] the log-prob of each token.
    ``respond`` may override a whole reply (for malformed replies); ``trickle_s`` sends the body one
    byte at a time with that pause.
    """

    def __init__(self, weights, port=0, model_name="served", respond=None, trickle_s=0.0):
        self.weights, self.respond, self.trickle_s = weights, respond, trickle_s
        self.bodies = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append(body)
                if server.respond is not None:
                    payload = server.respond(body)
                else:
                    text = server.weights["answer"]
                    words = text.split() or [""]
                    logprobs = {"content": [{"token": w, "logprob": server.weights["logprob"]} for w in words]}
                    if "messages" in body:
                        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop", "logprobs": logprobs}
                    else:
                        choice = {"index": 0, "text": text, "finish_reason": "stop",
                                  "logprobs": {"tokens": words, "token_logprobs": [server.weights["logprob"]] * len(words)}}
                    payload = {"choices": [choice], "model": model_name}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if server.trickle_s:
                        for byte in data:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(server.trickle_s)
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


GSM_ROWS = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(1, 5)]


# --------------------------------------------------------------------------------------------------
# 1. Stale evaluation results
# --------------------------------------------------------------------------------------------------

def test_server_restarted_with_other_weights_is_evaluated_again(tmp_path):
    """Probe: evaluate through a server, restart it with other weights under the same name and port:
    the old score came back with no request sent. Now the weights probe changes the cache key."""
    good = FakeServer({"answer": "The answer is 42.", "logprob": -0.1})
    port = good.port
    backend = OpenAIBackend(good.url, "served", backoff=0.01)
    rows = [{"question": "What is 6 * 7?", "answer": "#### 42"}]
    first = evaluate(backend, None, "gsm8k", data=rows, shots=0, max_new_tokens=8, output_dir=tmp_path,
                     progress=False)
    assert first.attrs["cached"] is False and first.value.iloc[0] == 1.0

    again = evaluate(backend, None, "gsm8k", data=rows, shots=0, max_new_tokens=8, output_dir=tmp_path,
                     progress=False)
    assert again.attrs["cached"] is True and again.value.iloc[0] == 1.0  # same weights: served from cache
    good.close()

    other = FakeServer({"answer": "The answer is 41.", "logprob": -2.3}, port=port)  # same name, same URL
    try:
        before = len(other.bodies)
        after_restart = evaluate(OpenAIBackend(other.url, "served", backoff=0.01), None, "gsm8k", data=rows,
                                 shots=0, max_new_tokens=8, output_dir=tmp_path, progress=False)
        assert after_restart.attrs["cached"] is False and after_restart.value.iloc[0] == 0.0
        assert len(other.bodies) - before == 2  # the weights probe and the one question
    finally:
        other.close()


def test_fingerprint_sees_logprobs_when_the_text_is_the_same():
    """Two fine-tunes can agree on the probe's greedy words; their log-probs still differ."""
    a = FakeServer({"answer": "Jupiter.", "logprob": -0.05})
    b = FakeServer({"answer": "Jupiter.", "logprob": -0.9})
    c = FakeServer({"answer": "Jupiter.", "logprob": -0.07})  # batch noise below the rounding
    try:
        prints = [OpenAIBackend(s.url, "served").weights_fingerprint() for s in (a, b, c)]
    finally:
        for s in (a, b, c):
            s.close()
    assert prints[0] != prints[1] and prints[0] == prints[2]


# --------------------------------------------------------------------------------------------------
# 4. IFEval verifier: hang, unknown kwargs, Infinity
# --------------------------------------------------------------------------------------------------

SENTENCES_AT_LEAST_3 = json.dumps({"func_name": "verify_sentence_constraint", "N": 3, "quantifier": "at least"})


def test_sentence_splitting_is_linear():
    """Probe: verify("ifeval", "x.(" * 10000, <sentence count>) ran past 20 s (quadratic splitter)."""
    from tulu_lab.rewards.text_split import count_sentences

    verify("ifeval", "warm up.", SENTENCES_AT_LEAST_3)
    started = time.perf_counter()
    assert count_sentences("x.(" * 10000) == 10001  # the last "(" stands alone
    small = time.perf_counter() - started
    started = time.perf_counter()
    assert count_sentences("x.(" * 100000) == 100001
    large = time.perf_counter() - started
    assert large < 2.0 and large < 30 * max(small, 1e-3)  # 10x the text, about 10x the time
    started = time.perf_counter()
    assert verify("ifeval", "x.(" * 10000, SENTENCES_AT_LEAST_3) is True
    assert time.perf_counter() - started < 1.0


def test_verify_and_ifeval_check_stop_at_their_deadline():
    """A megabyte rollout is answered in under a second (False when it cannot be checked in time)."""
    text = "Hello there. " * 80000  # ~1 MB, 160k sentences
    verify("ifeval", "warm up.", SENTENCES_AT_LEAST_3)
    started = time.perf_counter()
    verdict = verify("ifeval", text, SENTENCES_AT_LEAST_3)
    assert time.perf_counter() - started < 1.0 and isinstance(verdict, bool)

    ids = ["length_constraints:number_sentences", "change_case:capital_word_frequency"]
    kwargs = [{"num_sentences": 3, "relation": "at least"}, {"capital_frequency": 2, "capital_relation": "at least"}]
    started = time.perf_counter()
    result = ifeval_check("p", text, ids, kwargs, time_limit_s=0.05)
    assert time.perf_counter() - started < 1.0
    assert result.get("timed_out") is True and len(result["inst_level_loose"]) == 2
    assert result["inst_level_loose"][-1] is False  # not decided in time: not followed


def test_ifeval_check_rejects_unknown_and_malformed_kwargs():
    """Probe: ifeval_check with an unknown kwarg returned True; N=Infinity raised OverflowError."""
    with pytest.raises(ValueError, match=r"unknown arguments \['num_wordz'\]"):
        ifeval_check("p", "a b c", ["length_constraints:number_words"],
                     [{"num_words": 2, "relation": "at least", "num_wordz": 5}])
    with pytest.raises(ValueError, match="num_words must be a finite integer, got inf"):
        ifeval_check("p", "a b c", ["length_constraints:number_words"],
                     [{"num_words": float("inf"), "relation": "at least"}])
    with pytest.raises(ValueError, match="relation must be one of"):
        ifeval_check("p", "a b c", ["length_constraints:number_words"], [{"num_words": 2, "relation": "most"}])
    with pytest.raises(ValueError, match="keywords must be a list of strings"):
        ifeval_check("p", "a b c", ["keywords:existence"], [{"keywords": "abc"}])
    assert ifeval_check("p", "a b c", ["length_constraints:number_words"],
                        [{"num_words": 2.0, "relation": "at least"}])["prompt_level_strict"]


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e999", "-3", "2.5"])
def test_rlvr_ifeval_non_finite_or_absurd_counts_are_clear_errors(value):
    truth = '{"func_name": "verify_sentence_constraint", "N": %s, "quantifier": "at least"}' % value
    with pytest.raises(ValueError, match="argument N must be"):
        verify("ifeval", "One. Two. Three.", truth)


def test_rlvr_ifeval_huge_count_is_false_not_an_error():
    truth = json.dumps({"func_name": "verify_sentence_constraint", "N": 10 ** 400, "quantifier": "at least"})
    assert verify("ifeval", "One. Two. Three.", truth) is False


# --------------------------------------------------------------------------------------------------
# 5. Work lost, outputs misplaced
# --------------------------------------------------------------------------------------------------

class CrashingBackend:
    """Answers "#### <right answer>" and raises after ``crash_after`` calls."""

    def __init__(self, crash_after=None):
        self.crash_after, self.calls, self.prompts_seen = crash_after, 0, []

    def generate(self, prompts, *, max_new_tokens, temperature, stop=None):
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise RuntimeError("the server went away")
        out = []
        for i, prompt in enumerate(prompts):
            self.prompts_seen.append(prompt[-1]["content"])
            a = int(prompt[-1]["content"].split("What is ")[1].split(" +")[0])
            out.append(Generation(prompt=str(prompt), text=f"#### {2 * a}", token_ids=[1], logprobs=[],
                                  stopped=True, finish_reason="eos", prompt_index=i))
        return out


def test_evaluate_writes_as_it_goes_and_resumes_after_a_crash(tmp_path):
    """Probe: evaluate wrote nothing until every generation ended; a crash lost all of them."""
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(1, 9)]
    settings = dict(data=rows, shots=0, batch_size=1, max_new_tokens=8, model_name="scripted-model",
                    output_dir=tmp_path, progress=False)
    crashing = CrashingBackend(crash_after=1)  # the first chunk (batch_size * 4 = 4 rows) succeeds
    with pytest.raises(RuntimeError, match="went away"):
        evaluate(crashing, None, "gsm8k", **settings)
    [partial] = tmp_path.glob("*.partial.jsonl")
    saved = [json.loads(line) for line in partial.read_text().splitlines()]
    assert len(saved) == 4 and all(r["exact_match_flex"] for r in saved)
    with partial.open("a") as handle:
        handle.write('{"index": 7, "prom')  # a line torn by the crash

    resumed = CrashingBackend()
    frame = evaluate(resumed, None, "gsm8k", **settings)
    assert len(resumed.prompts_seen) == 4  # only the four not written before the crash
    assert frame.value.iloc[0] == 1.0 and frame.n.iloc[0] == 8 and not frame.attrs["cached"]
    written = [json.loads(line) for line in Path(frame.attrs["paths"]["jsonl"]).read_text().splitlines()]
    assert [r["index"] for r in written] == list(range(8))
    assert not partial.exists()
    assert json.loads(Path(frame.attrs["paths"]["json"]).read_text())["resumed_examples"] == 4


def test_unwritable_output_dir_fails_before_any_generation(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    backend = CrashingBackend()
    with pytest.raises(PermissionError, match="output_dir .*a-file.* not writable"):
        evaluate(backend, None, "gsm8k", data=GSM_ROWS, shots=0, max_new_tokens=8, model_name="m",
                 output_dir=blocker / "eval", progress=False)
    assert backend.calls == 0


def test_evaluate_and_presets_write_under_tulu_lab_runs(tmp_path, monkeypatch):
    """Probe: evaluate and the presets' output_dir ignored TULU_LAB_RUNS and wrote under the cwd."""
    from tulu_lab.config import DPOConfig, SFTConfig
    from tulu_lab.paths import resolve_output_dir

    runs = tmp_path / "elsewhere" / "runs"
    monkeypatch.setenv("TULU_LAB_RUNS", str(runs))
    monkeypatch.chdir(tmp_path)
    frame = evaluate(CrashingBackend(), None, "gsm8k", data=GSM_ROWS, shots=0, max_new_tokens=8, model_name="m",
                     progress=False)
    assert Path(frame.attrs["paths"]["jsonl"]).parent == runs / "eval"
    assert not (tmp_path / "runs").exists()
    assert Path(SFTConfig.cpu_preset().output_dir) == runs / "sft-embedded"
    assert Path(DPOConfig.for_scale("8B").output_dir).parent == runs
    assert resolve_output_dir(tmp_path / "mine") == tmp_path / "mine"  # explicit paths are kept
    assert resolve_output_dir("runs/x/y") == runs / "x" / "y"


# --------------------------------------------------------------------------------------------------
# 6. Damaged files and malformed input
# --------------------------------------------------------------------------------------------------

def _tiny_copy(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def test_corrupt_config_json_is_reported_as_corrupt(tiny_model_dir, tmp_path):
    """Probe: a corrupt config.json was reported as "not found, download it"."""
    from tulu_lab.models import CorruptModelError, load_model

    folder = _tiny_copy(tiny_model_dir, tmp_path)
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,')
    with pytest.raises(CorruptModelError, match=r"config\.json is corrupt: not valid JSON") as err:
        load_model(folder, verbose=False)
    assert str(folder / "config.json") in str(err.value) and "download" not in str(err.value)


def test_wrong_typed_config_field_names_file_and_field(tiny_model_dir, tmp_path):
    from tulu_lab.models import CorruptModelError, load_model

    folder = _tiny_copy(tiny_model_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = "two"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptModelError, match=r"config\.json: field 'num_hidden_layers' must be a positive integer"):
        load_model(folder, verbose=False)


def test_truncated_safetensors_names_the_file(tiny_model_dir, tmp_path):
    from tulu_lab.models import CorruptModelError, load_model

    folder = _tiny_copy(tiny_model_dir, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptModelError, match=r"model\.safetensors is truncated"):
        load_model(folder, verbose=False)
    weights.write_bytes(b"\x05\x00")
    with pytest.raises(CorruptModelError, match="not even a safetensors header"):
        load_model(folder, verbose=False)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    """Probe: a damaged newest checkpoint gave a raw SafetensorError with no path and no fallback."""
    from tulu_lab.training import (CorruptCheckpointError, MetricsLog, resume_or_start, save_checkpoint)

    def parts():
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return model, optimizer, scheduler

    model, optimizer, scheduler = parts()
    with torch.no_grad():
        model.weight.fill_(1.0)
    save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {"step": 2})
    with torch.no_grad():
        model.weight.fill_(2.0)
    save_checkpoint(tmp_path, 4, model, optimizer, scheduler, {"step": 4})
    newest = tmp_path / "checkpoint-4" / "trainable.safetensors"
    newest.write_bytes(newest.read_bytes()[:40])

    fresh, optimizer, scheduler = parts()
    step, _ = resume_or_start(tmp_path, fresh, optimizer, scheduler, MetricsLog(tmp_path / "m.jsonl"))
    assert step == 2 and torch.equal(fresh.weight, torch.ones(2, 3))
    assert str(newest) in capsys.readouterr().out

    older = tmp_path / "checkpoint-2" / "state.pt"
    older.write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpointError, match=r"no usable checkpoint.*checkpoint-4.*checkpoint-2.state\.pt"):
        resume_or_start(tmp_path, *parts(), MetricsLog(tmp_path / "m.jsonl"))


def test_empty_data_file_is_an_error_naming_it(tmp_path):
    """Probe: an empty data file loaded as []."""
    for name in ("empty.jsonl", "blank.jsonl", "header-only.tsv"):
        path = tmp_path / name
        path.write_text({"empty.jsonl": "", "blank.jsonl": "\n\n", "header-only.tsv": "question\tpossible_answers\n"}[name])
        load = load_popqa if name.endswith(".tsv") else load_gsm8k
        with pytest.raises(DataFormatError, match=rf"{name}.*the file is empty"):
            load(path)


def test_non_utf8_and_deep_nesting_name_file_and_line(tmp_path):
    """Probe: latin-1 / UTF-16 / deeply nested lines gave raw errors without file and line."""
    good = json.dumps({"question": "q?", "answer": "#### 1"})
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes((good + "\n" + json.dumps({"question": "café?", "answer": "#### 2"}, ensure_ascii=False)
                       + "\n").encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin\.jsonl, line 2: .*byte 0xe9 .*not UTF-8"):
        load_gsm8k(latin)
    utf16 = tmp_path / "wide.jsonl"
    utf16.write_bytes((good + "\n").encode("utf-16"))
    with pytest.raises(DataFormatError, match=r"wide\.jsonl, line 1: .*UTF-16"):
        load_gsm8k(utf16)
    deep = tmp_path / "deep.jsonl"
    deep.write_text(good + "\n" + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(DataFormatError, match=r"deep\.jsonl, line 2: .*nested too deeply"):
        load_gsm8k(deep)
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(DataFormatError, match=r"deep\.json, line 1: .*nested too deeply"):
        load_sft(deep_json)


@pytest.mark.parametrize("suffix,delimiter", [(".tsv", "\t"), (".csv", ",")])
def test_byte_order_mark_in_delimited_files(tmp_path, suffix, delimiter):
    """Probe: a BOM in .tsv/.csv gave a misleading "field 'question' missing"."""
    path = tmp_path / f"popqa{suffix}"
    text = f"question{delimiter}possible_answers\nWho?{delimiter}\"[\"\"Ann\"\"]\"\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    [row] = load_popqa(path)
    assert row["question"] == "Who?" and row["possible_answers"] == ["Ann"]


def test_unparseable_ground_truths_fail_when_rows_load(tmp_path):
    """Probe: ground truth "five" passed the loaders and failed mid-run without naming the row."""
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": "q?", "answer": "#### 5"}) + "\n"
                   + json.dumps({"question": "q?", "answer": "so\n#### five"}) + "\n")
    with pytest.raises(DataFormatError, match=r"gsm\.jsonl, line 2: field 'answer'"):
        load_gsm8k(gsm)

    prompt = [{"role": "user", "content": "q"}]
    for truth, dataset, field in (("five", "gsm8k", "ground_truth"),
                                  ('{"func_name": "verify_sentence_constraint", "N": Infinity, '
                                   '"quantifier": "at least"}', "ifeval", "ground_truth"),
                                  ('{"func_name": "no_such_check"}', "ifeval", "ground_truth"),
                                  ("5", "chess", "dataset")):
        rlvr = tmp_path / "rlvr.jsonl"
        rlvr.write_text(json.dumps({"messages": prompt, "ground_truth": "7", "dataset": "gsm8k"}) + "\n"
                        + json.dumps({"messages": prompt, "ground_truth": truth, "dataset": dataset}) + "\n")
        with pytest.raises(DataFormatError, match=rf"rlvr\.jsonl, line 2: field '{field}'"):
            load_rlvr(rlvr)
    rlvr.write_text(json.dumps({"messages": prompt, "ground_truth": "1,080", "dataset": "GSM8K"}) + "\n"
                    + json.dumps({"messages": prompt, "ground_truth": "\\frac12", "dataset": "MATH"}) + "\n")
    assert len(load_rlvr(rlvr)) == 2


def test_openai_backend_has_a_total_deadline():
    """Probe: a server sending a byte a second held a 2 s timeout for 25 s."""
    server = FakeServer({"answer": "x" * 50, "logprob": -1.0}, trickle_s=0.1)
    try:
        backend = OpenAIBackend(server.url, "served", timeout=1.0, max_retries=0)
        started = time.perf_counter()
        with pytest.raises(OpenAIBackendError, match="timed out after 1 s"):
            backend.generate(["hi"], max_new_tokens=4, progress=False)
        assert time.perf_counter() - started < 2.0
    finally:
        server.close()


@pytest.mark.parametrize("reply,message", [
    ([1, 2, 3], "expected a JSON object with 'choices'"),
    ({"choices": "none"}, "'choices' to be a non-empty list"),
    ({"choices": [[]]}, "'choices' to be a non-empty list of objects"),
    ({"choices": [{"message": "hi"}]}, "choice 'message' must be an object"),
    ({"choices": [{"message": {"content": 42}}]}, "message.content must be a string, got int"),
    ({"choices": [{"message": {"content": ["a"]}}]}, "message.content must be a string, got list"),
    ({"choices": [{"message": {"content": "ok"}, "logprobs": {"content": [{"logprob": "high"}]}}]},
     "malformed reply"),
])
def test_wrong_shaped_replies_are_clear_errors(reply, message):
    """Probe: wrong-shaped JSON answers gave raw AttributeError; an integer content became the text."""
    server = FakeServer({}, respond=lambda body: reply)
    try:
        with pytest.raises(OpenAIBackendError, match=message):
            OpenAIBackend(server.url, "served", max_retries=0).generate([[{"role": "user", "content": "hi"}]],
                                                                       max_new_tokens=4, progress=False)
    finally:
        server.close()


# --------------------------------------------------------------------------------------------------
# load_config refuses non-finite numbers
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["Infinity", "NaN", "-Infinity"])
def test_load_config_refuses_non_finite_numbers(tmp_path, value):
    from tulu_lab.config import SFTConfig, load_config

    path = tmp_path / "sft.json"
    text = json.dumps(SFTConfig.cpu_preset(output_dir=str(tmp_path)).to_dict())
    data = json.loads(text)
    data["learning_rate"] = "__X__"
    path.write_text(json.dumps(data).replace('"__X__"', value))
    with pytest.raises(ValueError, match=r"SFTConfig\.learning_rate must be a finite number"):
        load_config(path)
    with pytest.raises(ValueError, match=r"SFTConfig\.weight_decay must be a finite number"):
        SFTConfig.cpu_preset(output_dir=str(tmp_path), weight_decay=math.inf)


# --------------------------------------------------------------------------------------------------
# Good already: kept that way
# --------------------------------------------------------------------------------------------------

def test_pickled_weights_are_never_unpickled(tiny_model_dir, tmp_path):
    """A folder with only pytorch_model.bin (a pickle that would run code) is refused, the code never runs."""
    from tulu_lab.models import load_model

    folder = _tiny_copy(tiny_model_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"weights": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(Exception):
        load_model(folder, verbose=False)
    assert not marker.exists()


def test_remote_code_in_a_checkpoint_is_never_run(tiny_model_dir, tmp_path):
    from tulu_lab.models import load_model

    folder = _tiny_copy(tiny_model_dir, tmp_path)
    marker = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                    "from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    try:
        load_model(folder, verbose=False)
    except Exception:
        pass  # refusing is fine; running the file is not
    assert not marker.exists()


def test_every_verifier_is_bounded_on_hostile_megabytes():
    """The worst inputs found for each stage, 1 MB each: every verify() returns within a second."""
    start_symbolic_worker(wait=True)
    verify("ifeval", "warm up", SENTENCES_AT_LEAST_3)
    hostile = ["x.(" * 333333, "x. " * 333333, "a" * 1000000, "\n" * 1000000, "{" * 1000000,
               "\\boxed{" * 140000, "*" * 1000000, "[" * 1000000, "1," * 500000]
    truths = {"gsm8k": "12", "math": "\\frac{1}{2}", "ifeval": SENTENCES_AT_LEAST_3}
    for text in hostile:
        for dataset, truth in truths.items():
            started = time.perf_counter()
            verify(dataset, text, truth)
            assert time.perf_counter() - started < 1.0, (dataset, text[:10])


# --------------------------------------------------------------------------------------------------
# Property: every verifier returns within a second on any text up to 1 MB
# --------------------------------------------------------------------------------------------------

def _all_verifiers():
    """(name, call(text)) for gsm8k, math, each of the 25 RLVR IFEval functions and each of the 25
    IFEval benchmark instructions, with valid arguments."""
    import inspect

    from tulu_lab.rewards import IF_FUNCTIONS
    from tulu_lab.rewards.ifeval_benchmark import IFEVAL_CHECKERS

    values = {"N": 3, "quantifier": "at least", "keyword_list": ["a"], "word": "a", "forbidden_words": ["b"],
              "letter": "a", "language": "en", "first_word": "a", "i": 1, "postscript_marker": "P.S.",
              "options": ["yes", "no"], "section_splitter": "Section", "original_prompt": "abc", "end_phrase": "end",
              "num_sentences": 3, "relation": "at least", "num_paragraphs": 2, "num_words": 5, "nth_paragraph": 1,
              "num_placeholders": 1, "num_bullets": 2, "num_highlights": 1, "section_spliter": "Section",
              "num_sections": 2, "prompt_to_repeat": "abc", "capital_frequency": 2, "capital_relation": "at least",
              "keywords": ["a"], "keyword": "a", "frequency": 2, "let_frequency": 3, "let_relation": "less than"}
    calls = [("gsm8k", lambda t: verify("gsm8k", t, "12")), ("math", lambda t: verify("math", t, "\\frac{1}{2}"))]
    for name, function in IF_FUNCTIONS.items():
        truth = json.dumps({"func_name": name, **{p: values[p] for p in list(inspect.signature(function).parameters)[1:]}})
        calls.append((name, lambda t, truth=truth: verify("ifeval", t, truth)))
    for instruction, (_, required) in IFEVAL_CHECKERS.items():
        kwargs = [{k: values[k] for k in required}]
        calls.append((instruction, lambda t, i=instruction, k=kwargs: ifeval_check("p", t, [i], k)))
    return calls


VERIFIER_CALLS = _all_verifiers()


@pytest.fixture(scope="module")
def warm_verifiers():
    from tulu_lab.rewards.language import prepare_language_detector

    start_symbolic_worker(wait=True)
    prepare_language_detector()  # one-time loads are not part of any response's time


def _timed(call, text):
    started = time.perf_counter()
    call(text)
    return time.perf_counter() - started


def test_every_verifier_returns_within_a_second_on_random_text(warm_verifiers):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(VERIFIER_CALLS), st.text(max_size=3000))
    def small(verifier, text):
        assert _timed(verifier[1], text) < 1.0, verifier[0]

    small()


def test_every_verifier_returns_within_a_second_on_random_megabytes(warm_verifiers):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    alphabet = st.sampled_from(list("aA .!?\n\t*-#[]<>{}()\"',$\\0123456789é") + ["\\boxed{", "P.S.", "Section 1"])
    piece = st.lists(alphabet, min_size=1, max_size=400).map("".join) | st.text(min_size=1, max_size=400)

    @settings(max_examples=16, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(VERIFIER_CALLS), piece, st.sampled_from([300_000, 1_000_000]))
    def large(verifier, unit, size):
        text = (unit * (size // len(unit) + 1))[:size]
        seconds = _timed(verifier[1], text)
        timings.append(seconds)
        assert seconds < 1.0, (verifier[0], unit[:40], size)

    timings = []

    large()
    assert len(timings) >= 10  # the examples really ran


@pytest.mark.slow  # two `transformers serve` start-ups, 15-30 s each
def test_weights_fingerprint_through_transformers_serve(tmp_path):
    """A real server: the same folder name served with other weights has another fingerprint."""
    from test_backends import _start_transformers_serve, _stop

    from tulu_lab.tiny import make_tiny_llama

    folder = tmp_path / "served"
    prints = []
    for seed in (0, 0, 1):  # a restart with the same weights, then other weights in the same folder
        if folder.exists():
            shutil.rmtree(folder)
        make_tiny_llama(folder, seed=seed)
        process, url = _start_transformers_serve(folder, tmp_path / f"serve-{seed}.log")
        try:
            with OpenAIBackend(url, str(folder), timeout=120, chat=False) as backend:
                prints.append(backend.weights_fingerprint())
        finally:
            _stop(process)
    assert prints[0] == prints[1] and prints[1] != prints[2]
