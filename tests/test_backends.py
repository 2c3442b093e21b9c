"""Generation backends over real HTTP on loopback.

Two kinds of server, both real sockets, no mocked client:
* a small scripted server (http.server) that misbehaves on purpose: 503s, 429 with Retry-After, slow
  answers, servers that ignore ``n``, vLLM-style ``stop_reason`` -- for retries, timeouts, concurrency
  and response parsing, with bounded request counts;
* ``transformers serve`` on a tiny random Llama folder (greedy output must equal the local sampler's)
  and, marked slow, on the embedded SmolLM2-135M-Instruct, through which 20 GSM8K problems are evaluated.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tulu_lab.backends import LocalBackend, OpenAIBackend, OpenAIBackendError, call_generate

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


# --------------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible server
# --------------------------------------------------------------------------------------------------

def _completion_reply(body, text="ok", finish="length", **choice_extra):
    if "messages" in body:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish}
    choice.update(choice_extra)
    return {"id": "x", "object": "chat.completion", "choices": [choice], "usage": {"prompt_tokens": 3}}


class ScriptedServer:
    """ThreadingHTTPServer on 127.0.0.1 whose answers come from ``respond(body, count) -> (status, json, headers)``."""

    def __init__(self, respond, delay=0.0):
        self.respond, self.delay = respond, delay
        self.bodies, self.lock = [], threading.Lock()
        self.in_flight = self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append({"path": self.path, **body})
                    count = len(server.bodies)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    status, payload, headers = server.respond(body, count)
                    data = json.dumps(payload).encode()
                    self.send_response(status)
                    for key, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(respond, delay=0.0):
        servers.append(ScriptedServer(respond, delay))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _backend(url, **kwargs):
    return OpenAIBackend(url, "test-model", backoff=0.01, **kwargs)


# --- retries, timeouts, errors ---------------------------------------------------------------------

def test_retries_two_503s_then_succeeds(scripted):
    server = scripted(lambda body, n: (503, {"error": "busy"}, {}) if n <= 2 else (200, _completion_reply(body), {}))
    backend = _backend(server.url, max_retries=3)
    [gen] = backend.generate(["Hello"], max_new_tokens=4)
    assert gen.text == "ok" and len(server.bodies) == 3 and backend.requests_sent == 3


def test_429_waits_for_retry_after(scripted):
    server = scripted(lambda body, n: (429, {}, {"Retry-After": "0.4"}) if n == 1 else (200, _completion_reply(body), {}))
    started = time.perf_counter()
    [gen] = _backend(server.url).generate(["Hello"], max_new_tokens=4)
    assert gen.text == "ok" and time.perf_counter() - started >= 0.4 and len(server.bodies) == 2


def test_gives_up_after_max_retries(scripted):
    server = scripted(lambda body, n: (500, {"error": "boom"}, {}))
    with pytest.raises(OpenAIBackendError, match=r"after 3 attempts.*HTTP 500.*boom"):
        _backend(server.url, max_retries=2).generate(["Hello"], max_new_tokens=4)
    assert len(server.bodies) == 3


def test_client_errors_are_not_retried(scripted):
    server = scripted(lambda body, n: (400, {"detail": "max_tokens too large"}, {}))
    with pytest.raises(OpenAIBackendError, match=r"HTTP 400 \(not retried\).*max_tokens too large"):
        _backend(server.url, max_retries=3).generate(["Hello"], max_new_tokens=4)
    assert len(server.bodies) == 1


def test_timeout_then_retry_then_error(scripted):
    server = scripted(lambda body, n: (200, _completion_reply(body), {}), delay=1.5)
    started = time.perf_counter()
    with pytest.raises(OpenAIBackendError, match=r"after 2 attempts.*timed out after 0.3 s"):
        _backend(server.url, timeout=0.3, max_retries=1).generate(["Hello"], max_new_tokens=4)
    assert len(server.bodies) == 2 and time.perf_counter() - started < 1.5


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    backend = _backend(f"http://127.0.0.1:{port}", max_retries=2)
    with pytest.raises(OpenAIBackendError, match="after 3 attempts.*connection failed"):
        backend.generate(["Hello"], max_new_tokens=4)
    assert backend.requests_sent == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIBackend("localhost:8000", "m")
    with pytest.raises(ValueError, match="model"):
        OpenAIBackend("http://127.0.0.1:1", "")
    backend = OpenAIBackend("http://127.0.0.1:1", "m", chat=False)
    with pytest.raises(ValueError, match="no tokenizer"):
        backend.generate([[{"role": "user", "content": "hi"}]], max_new_tokens=2, progress=False)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        backend.generate(["ok", 42], max_new_tokens=2)


# --- requests and parsing ---------------------------------------------------------------------------

def test_request_fields_and_response_mapping(scripted):
    def respond(body, n):
        if "messages" in body:  # transformers serve style: the stop string is left in the text
            return 200, _completion_reply(body, "The answer is 4.\nQ: next", "stop",
                                          logprobs={"content": [{"token": "The", "logprob": -0.5},
                                                                {"token": " answer", "logprob": -0.25}]}), {}
        if body["prompt"] == "eos":
            return 200, _completion_reply(body, "done", "stop",
                                          logprobs={"tokens": ["do", "ne"], "token_logprobs": [-1.0, -2.0]}), {}
        if body["prompt"] == "vllm":  # vLLM style: stop string removed, reported in stop_reason
            return 200, _completion_reply(body, "Paris", "stop", stop_reason="\n\n"), {}
        return 200, _completion_reply(body, "and so on and so", "length"), {}

    server = scripted(respond)
    backend = _backend(server.url.removesuffix("/v1"))  # "/v1" is added
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    gens = backend.generate([messages, "eos", "vllm", "long"], max_new_tokens=7, temperature=0.5, top_p=0.9,
                            seed=11, stop=["Q:", "\n\n"], progress=False)
    chat, eos, vllm, long = gens
    assert chat.text == "The answer is 4.\n" and chat.finish_reason == "stop" and not chat.stopped
    assert chat.logprobs == [-0.5, -0.25] and chat.extra["tokens"] == ["The", " answer"]
    assert eos.text == "done" and eos.finish_reason == "eos" and eos.stopped and eos.logprobs == [-1.0, -2.0]
    assert vllm.text == "Paris" and vllm.finish_reason == "stop" and not vllm.stopped
    assert long.finish_reason == "length" and not long.stopped
    assert [g.prompt_index for g in gens] == [0, 1, 2, 3]

    by_prompt = {b.get("prompt", "chat"): b for b in server.bodies}
    chat_body = by_prompt["chat"]
    assert chat_body["path"] == "/v1/chat/completions" and chat_body["messages"] == messages
    assert chat_body["logprobs"] is True and chat_body["model"] == "test-model"
    assert (chat_body["max_tokens"], chat_body["temperature"], chat_body["top_p"], chat_body["n"]) == (7, 0.5, 0.9, 1)
    assert chat_body["stop"] == ["Q:", "\n\n"]
    assert by_prompt["eos"]["path"] == "/v1/completions" and by_prompt["eos"]["logprobs"] == 1
    seeds = [b["seed"] for b in server.bodies]
    assert len(set(seeds)) == 4  # one per prompt, fixed by position


def test_servers_that_ignore_n_get_follow_up_requests(scripted):
    server = scripted(lambda body, n: (200, _completion_reply(body, f"sample {n}", "length"), {}))
    gens = _backend(server.url).generate(["a", "b"], num_samples=3, temperature=1.0, max_new_tokens=3,
                                         progress=False)
    assert len(gens) == 6 and [g.prompt_index for g in gens] == [0, 0, 0, 1, 1, 1]
    assert len(server.bodies) == 6 and sorted(b["n"] for b in server.bodies) == [1, 1, 2, 2, 3, 3]
    assert len({b["seed"] for b in server.bodies}) == 6
    assert len({g.text for g in gens}) == 6


def test_concurrency_is_bounded(scripted):
    server = scripted(lambda body, n: (200, _completion_reply(body), {}), delay=0.3)
    started = time.perf_counter()
    gens = _backend(server.url, max_concurrency=3).generate([f"p{i}" for i in range(9)], max_new_tokens=2,
                                                            progress=False)
    assert len(gens) == 9 and server.max_in_flight == 3
    assert time.perf_counter() - started < 9 * 0.3  # really concurrent


def test_call_generate_passes_only_accepted_arguments():
    class Minimal:
        def generate(self, prompts, max_new_tokens, temperature, stop=None):
            return [(p, max_new_tokens, temperature, stop) for p in prompts]

    out = call_generate(Minimal(), ["x"], max_new_tokens=3, temperature=0.0, stop=["\n"], seed=1, batch_size=4)
    assert out == [("x", 3, 0.0, ["\n"])]


def test_local_backend_is_the_local_sampler(tiny):
    from tulu_lab.generate import generate

    model, tok = tiny
    prompts = [[{"role": "user", "content": "What is 3 + 4?"}], "Tom has 12 apples"]
    local = LocalBackend(model, tok).generate(prompts, max_new_tokens=6)
    assert [g.token_ids for g in local] == [g.token_ids for g in generate(model, tok, prompts, max_new_tokens=6)]
    with pytest.raises(ValueError, match="tokenizer"):
        LocalBackend(model, None)


# --------------------------------------------------------------------------------------------------
# transformers serve: a real server process on loopback
# --------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_transformers_serve(folder, log_path, startup_s=240, dtype="float32"):
    """Start `transformers serve FOLDER` on 127.0.0.1; returns (process, base_url) or skips with the reason.

    float32 by default: CPUs without AVX-512 BF16 / AMX emulate bf16 matrix products, many times slower.
    """
    import httpx

    cli = Path(sys.executable).parent / "transformers"
    if not cli.is_file():
        pytest.skip(f"`transformers` CLI not found next to {sys.executable}")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        pytest.skip("transformers serve needs FastAPI and uvicorn: pip install 'transformers[serving]'")
    port = _free_port()
    # One intra-op thread: on a small shared CPU, OpenMP threads spinning against other processes made
    # generation about 10x slower than a single thread.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = open(log_path, "w")
    process = subprocess.Popen([str(cli), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
                                "--device", "cpu", "--dtype", dtype, "--log-level", "warning"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(1)
    _stop(process)
    tail = Path(log_path).read_text()[-800:]
    pytest.skip(f"transformers serve did not come up within {startup_s} s (exit code {process.poll()}); log tail:\n{tail}")


def _stop(process):
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    """A tiny random Llama folder with the Tülu template, served by `transformers serve`."""
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.tiny import make_tiny_llama

    folder = tmp_path_factory.mktemp("served-tiny")
    _, tokenizer = make_tiny_llama(folder, seed=0)
    install_tulu_template(tokenizer)
    tokenizer.save_pretrained(folder)  # the server renders chat with this template
    process, url = _start_transformers_serve(folder, folder / "serve.log")
    yield folder, url
    _stop(process)


@pytest.mark.slow  # the server process takes 15-30 s to start here
def test_transformers_serve_greedy_equals_local_sampler(tiny_server):
    from tulu_lab.chat import install_tulu_template
    from tulu_lab.generate import generate
    from tulu_lab.models import load_model

    folder, url = tiny_server
    model, tok = load_model(folder, dtype="fp32", verbose=False)
    install_tulu_template(tok)
    prompts = [[{"role": "user", "content": "Tom has 12 apples and buys 5 more. How many apples does he have?"}],
               "<|user|>\nWhat is 3 + 4?\n<|assistant|>\n"]
    with OpenAIBackend(url, str(folder), timeout=120, max_concurrency=2) as backend:
        served = backend.generate(prompts, max_new_tokens=12, progress=False)
    local = generate(model, tok, prompts, max_new_tokens=12)

    def visible(text):  # the server decodes with skip_special_tokens=True
        return text.replace("<pad>", "").replace("<|endoftext|>", "")

    assert [visible(g.text) for g in served] == [visible(g.text) for g in local]
    assert all(g.finish_reason in ("length", "eos") for g in served)
    assert [g.finish_reason == "length" for g in served] == [g.finish_reason == "length" for g in local]


@pytest.mark.slow
def test_transformers_serve_stop_strings_are_cut(tiny_server):
    folder, url = tiny_server
    with OpenAIBackend(url, str(folder), timeout=120) as backend:
        [full] = backend.generate(["<|user|>\nHi\n<|assistant|>\n"], max_new_tokens=16, progress=False)
        # a stop string the random model really produces: its first new ASCII character after the start
        text = full.text
        candidates = [c for i, c in enumerate(text) if i >= 2 and c.isascii() and c.isprintable()
                      and not c.isspace() and text.find(c) == i]
        if not candidates:
            pytest.skip(f"the random model's answer {text!r} has no usable stop character")
        stop = candidates[0]
        [cut] = backend.generate(["<|user|>\nHi\n<|assistant|>\n"], max_new_tokens=16, stop=[stop], progress=False)
    assert cut.text == full.text[:full.text.find(stop)] and cut.finish_reason == "stop" and not cut.stopped


@pytest.mark.slow
@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason=f"GSM8K test file not found at {GSM8K_TEST}")
def test_openai_backend_evaluates_20_gsm8k_problems_through_a_real_server(tmp_path):
    """The embedded SmolLM2-135M-Instruct behind `transformers serve`; 2-shot, 64 new tokens to keep it short (the server decodes one request at a time)."""
    from tulu_lab.evaluate import evaluate
    from tulu_lab.models import embedded_model_dir

    folder = embedded_model_dir(verbose=False)
    process, url = _start_transformers_serve(folder, tmp_path / "serve.log")
    try:
        with OpenAIBackend(url, str(folder), timeout=600, max_concurrency=2, max_retries=1) as backend:
            frame = evaluate(backend, None, "gsm8k", data=GSM8K_TEST, limit=20, shots=2, max_new_tokens=64,
                             output_dir=tmp_path / "eval", stage="SFT", progress=False)
    finally:
        _stop(process)
    assert set(frame.n) == {20} and frame.metric.tolist() == ["exact_match_flex", "exact_match_strict"]
    assert frame.model.iloc[0] == folder.name and frame.value.between(0, 1).all()
    records = [json.loads(l) for l in Path(frame.attrs["paths"]["jsonl"]).read_text().splitlines()]
    assert len(records) == 20 and all(r["response"].strip() for r in records)
    assert {r["finish_reason"] for r in records} <= {"eos", "stop", "length"}
    # an instruct model answers arithmetic questions with numbers, nearly always
    assert sum(r["answer_flex"] is not None for r in records) >= 15
    print(frame.to_string())
