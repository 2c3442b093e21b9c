"""Generation backends: one ``generate(prompts, ...) -> list[Generation]`` interface, two engines.

* ``LocalBackend(model, tokenizer)``: the in-process sampler of ``tulu_lab.generate`` (transformers
  model, KV cache, batched).
* ``OpenAIBackend(base_url, model)``: any server that speaks the OpenAI HTTP API -- vLLM, SGLang,
  ``transformers serve`` -- which is how a Tülu 3 70B/405B checkpoint is evaluated: the weights live on
  the GPU machines, this process only sends prompts.

``tulu_lab.evaluate.evaluate`` and the prompt probe accept either in place of a local model.

How OpenAIBackend maps the API onto ``Generation``:

* message-list prompts go to ``/v1/chat/completions`` (the server applies the model's chat template);
  string prompts go to ``/v1/completions`` as they are. With ``chat=False`` and a ``tokenizer``, message
  lists are rendered here with the tokenizer's template and sent as text (to control the template).
* ``finish_reason``: "length" -> "length"; "stop" -> "stop" when a stop string ended the text (vLLM
  reports it in ``stop_reason``; ``transformers serve`` leaves it in the text), else "eos".
  ``Generation.stopped`` is True only for "eos", as in the local sampler (RLVR's non-stop penalty
  treats both the same way on either engine).
* stop strings are cut from the returned text, whatever the server did with them.
* ``num_samples`` is sent as ``n``; servers that ignore ``n`` (``transformers serve``) get follow-up
  requests until every prompt has its samples, with the seed advanced so samples differ.
* log-probs are asked for (``request_logprobs``) and kept when the server returns them; token ids
  only when the server returns them (vLLM's ``return_tokens_as_token_ids``, via ``extra_body``) or a
  ``tokenizer`` is given to re-encode the text; otherwise empty.
* transient failures (connection errors, timeouts, HTTP 429 and 5xx) are retried with exponential
  backoff (``Retry-After`` honoured, capped); other HTTP errors fail at once with the server's message.
* ``timeout`` bounds each attempt as a whole: the body is read in chunks against one deadline, so a
  server that trickles bytes cannot hold a request past it.
* replies are checked before use: a reply that is not ``{"choices": [{...}]}``, or whose ``content``
  / ``text`` is not a string, fails with an error naming the request and the field.
* ``identity`` (what evaluation caches results under) includes a fingerprint of the served weights:
  a fixed greedy probe request whose text and rounded log-probs are hashed, so a server restarted
  with other weights under the same name is not mistaken for the old one.
* at most ``max_concurrency`` requests are in flight (a thread pool over one shared httpx client).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Sequence

import httpx

from tulu_lab.generate import Generation, format_prompt
from tulu_lab.generate import generate as local_generate

__all__ = ["LocalBackend", "OpenAIBackend", "OpenAIBackendError", "call_generate"]

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0
# The weights probe: a fixed question answered greedily in a few tokens.
PROBE_PROMPT = ({"role": "user", "content": "Name the largest planet of the solar system."},)
PROBE_TOKENS = 8


class OpenAIBackendError(RuntimeError):
    """A request to an OpenAI-compatible server failed for good (bad request, or retries exhausted)."""


def call_generate(backend, prompts: Sequence, **kwargs) -> list[Generation]:
    """Call ``backend.generate`` with only the keyword arguments its signature accepts.

    Lets evaluation pass its full settings (seed, batch_size, progress) to any object with a
    ``generate(prompts, max_new_tokens=..., temperature=..., stop=...)`` method.
    """
    parameters = inspect.signature(backend.generate).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in parameters}
    return list(backend.generate(prompts, **kwargs))


# --------------------------------------------------------------------------------------------------
# Local transformers model
# --------------------------------------------------------------------------------------------------

class LocalBackend:
    """An in-process model behind the backend interface (``tulu_lab.generate.generate``)."""

    def __init__(self, model, tokenizer):
        if tokenizer is None:
            raise ValueError("LocalBackend needs the model's tokenizer, got tokenizer=None")
        self.model = model
        self.tokenizer = tokenizer

    @property
    def name(self) -> str:
        return str(getattr(self.model, "name_or_path", "") or type(self.model).__name__)

    def generate(self, prompts: Sequence, *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, num_samples: int = 1, seed: int | None = 0, batch_size: int = 16,
                 stop: Sequence[str] | None = None, progress: bool | None = None) -> list[Generation]:
        """Same arguments and result as ``tulu_lab.generate.generate``."""
        return local_generate(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, num_samples=num_samples, seed=seed,
                              batch_size=batch_size, stop=stop, progress=progress)


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP server
# --------------------------------------------------------------------------------------------------

def _api_root(base_url: str) -> str:
    """"http://host:8000", "http://host:8000/" and "http://host:8000/v1" all become ".../v1"."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {base_url!r}")
    root = base_url.rstrip("/")
    return root if root.endswith("/v1") else root + "/v1"


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class OpenAIBackend:
    """Generate through an OpenAI-compatible server (vLLM, SGLang, ``transformers serve``).

    Args:
        base_url: the server, e.g. "http://127.0.0.1:8000/v1" ("/v1" is added when missing).
        model: the model name the server knows (``GET /v1/models`` lists them).
        api_key: sent as a bearer token (local servers accept anything).
        timeout: seconds for one attempt in all (connect, send, and reading the whole reply). Long
            generations on a busy server need more.
        max_retries: retries after the first attempt, for connection errors, timeouts, 429 and 5xx.
        max_concurrency: requests in flight at once.
        chat: send message lists to /v1/chat/completions. With chat=False they are rendered here with
            ``tokenizer``'s chat template and sent to /v1/completions.
        tokenizer: optional; renders message lists when chat=False and re-encodes responses into
            ``Generation.token_ids`` when the server does not return ids.
        request_logprobs: ask for the sampled tokens' log-probs (servers that cannot, ignore it).
        backoff: first retry delay in seconds; doubled each retry, with jitter, capped at 30 s.
        extra_body: server-specific request fields added to every request (e.g. vLLM's
            {"return_tokens_as_token_ids": True}); strict servers reject fields they do not know.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY", timeout: float = 60,
                 max_retries: int = 3, max_concurrency: int = 8, chat: bool = True, tokenizer=None,
                 request_logprobs: bool = True, backoff: float = 0.5, extra_body: dict | None = None):
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be the server's model name (a non-empty string), got {model!r}")
        if timeout <= 0 or max_retries < 0 or max_concurrency < 1 or backoff < 0:
            raise ValueError(f"need timeout > 0, max_retries >= 0, max_concurrency >= 1, backoff >= 0; got "
                             f"{timeout}, {max_retries}, {max_concurrency}, {backoff}")
        self.base_url = _api_root(base_url)
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_concurrency = int(max_concurrency)
        self.chat = bool(chat)
        self.tokenizer = tokenizer
        self.request_logprobs = bool(request_logprobs)
        self.backoff = float(backoff)
        self.extra_body = dict(extra_body or {})
        self._client = httpx.Client(timeout=httpx.Timeout(self.timeout),
                                    headers={"Authorization": f"Bearer {api_key}"},
                                    limits=httpx.Limits(max_connections=self.max_concurrency))
        self._rng = random.Random(0)  # jitter only; a private generator keeps global RNG untouched
        self._rng_lock = threading.Lock()  # guards _rng and requests_sent across worker threads
        self.requests_sent = 0        # attempts, retries included (for tests and diagnostics)

    # -- identity ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.model

    def weights_fingerprint(self) -> str:
        """A hash of the served model's greedy answer to a fixed probe (text and log-probs rounded
        to 0.1 nat, coarse enough for batch-to-batch noise, fine enough to tell fine-tunes apart).

        Sends one short request each time it is called: a server restarted with other weights
        under the same name answers differently, so nothing cached for the old weights is reused.
        """
        prompt = list(PROBE_PROMPT) if self.chat else PROBE_PROMPT[0]["content"]
        if not self.chat and self.tokenizer is not None:
            prompt = format_prompt(list(PROBE_PROMPT), self.tokenizer)
        [probe] = self.generate([prompt], max_new_tokens=PROBE_TOKENS, temperature=0.0, seed=0, progress=False)
        material = json.dumps({"text": probe.text, "finish": probe.finish_reason,
                               "logprobs": [round(x, 1) for x in probe.logprobs]})
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    @property
    def identity(self) -> str:
        """What evaluation caches results under: the server, the served name, the request settings
        and a fingerprint of the weights behind the name (one probe request per read)."""
        extra = json.dumps(self.extra_body, sort_keys=True, default=str)
        return (f"openai:{self.base_url}:{self.model}:chat={self.chat}:extra={extra}"
                f":weights={self.weights_fingerprint()}")

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r})"

    # -- HTTP ------------------------------------------------------------------------------------
    def _sleep_before_retry(self, attempt: int, response: httpx.Response | None) -> None:
        delay = self.backoff * (2 ** attempt)
        with self._rng_lock:
            delay *= 1.0 + 0.25 * self._rng.random()  # jitter: concurrent clients do not retry in lockstep
        if response is not None:
            hinted = _retry_after_seconds(response)
            if hinted is not None:
                delay = max(delay, hinted)
        time.sleep(min(delay, MAX_BACKOFF_S))

    def _post_once(self, url: str, body: dict) -> tuple[int, bytes, httpx.Response]:
        """One attempt: (status, body bytes), read against a deadline of ``timeout`` seconds in all."""
        deadline = time.monotonic() + self.timeout
        with self._client.stream("POST", url, json=body) as response:
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"the reply took longer than {self.timeout:g} s in all")
            return response.status_code, b"".join(chunks), response

    def _post(self, path: str, body: dict) -> dict:
        """POST with retries; returns the decoded JSON object or raises OpenAIBackendError."""
        url = self.base_url + path
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            response = None
            with self._rng_lock:
                self.requests_sent += 1
            try:
                status, content, response = self._post_once(url, body)
            except httpx.TimeoutException as exc:
                last_problem = f"timed out after {self.timeout:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:  # refused, reset, closed mid-response
                last_problem = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                text = content.decode("utf-8", errors="replace")
                if status < 400:
                    try:
                        reply = json.loads(content)
                    except ValueError:
                        raise OpenAIBackendError(f"POST {url}: the server answered {status} "
                                                 f"with non-JSON content {text[:200]!r}") from None
                    if not isinstance(reply, dict):
                        raise OpenAIBackendError(f"POST {url}: expected a JSON object with 'choices', got "
                                                 f"{type(reply).__name__} {text[:200]!r}")
                    return reply
                detail = text[:500]
                if status not in RETRY_STATUS:
                    raise OpenAIBackendError(f"POST {url}: HTTP {status} (not retried): {detail}")
                last_problem = f"HTTP {status}: {detail}"
            if attempt < self.max_retries:
                self._sleep_before_retry(attempt, response)
        raise OpenAIBackendError(f"POST {url} failed after {self.max_retries + 1} attempts; last: {last_problem}")

    # -- requests and responses ------------------------------------------------------------------
    def _request_for(self, prompt, *, n: int, max_new_tokens: int, temperature: float, top_p: float,
                     seed: int | None, stop: list[str] | None) -> tuple[str, dict]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_new_tokens, "temperature": temperature,
                                "top_p": top_p, "n": n}
        if seed is not None:
            body["seed"] = int(seed)
        if stop:
            body["stop"] = list(stop)
        if isinstance(prompt, str) or not self.chat:
            if not isinstance(prompt, str):
                if self.tokenizer is None:
                    raise ValueError("OpenAIBackend(chat=False) got a message-list prompt but no tokenizer to "
                                     "render it: pass tokenizer=..., or chat=True to let the server render it")
                prompt = format_prompt(prompt, self.tokenizer)
            body["prompt"] = prompt
            if self.request_logprobs:
                body["logprobs"] = 1
            path = "/completions"
        else:
            body["messages"] = [{"role": m["role"], "content": m["content"]} for m in prompt]
            if self.request_logprobs:
                body["logprobs"] = True
            path = "/chat/completions"
        body.update(self.extra_body)
        return path, body

    def _parse_choice(self, choice: dict, chat_endpoint: bool, stop: list[str] | None,
                      prompt_text: str, prompt_index: int) -> Generation:
        if not isinstance(choice, dict):
            raise ValueError(f"a choice must be an object, got {choice!r:.200}")
        if chat_endpoint:
            message = choice.get("message")
            if not isinstance(message, dict):
                raise ValueError(f"choice 'message' must be an object, got {message!r:.200}")
            raw, field = message.get("content"), "message.content"
        else:
            raw, field = choice.get("text"), "text"
        if raw is not None and not isinstance(raw, str):
            raise ValueError(f"choice {field} must be a string, got {type(raw).__name__} {raw!r:.100}")
        text = raw or ""
        tokens: list[str] = []
        logprobs: list[float] = []
        lp = choice.get("logprobs")
        if isinstance(lp, dict):
            if chat_endpoint and isinstance(lp.get("content"), list):
                tokens = [str(t.get("token", "")) for t in lp["content"]]
                logprobs = [float(t["logprob"]) for t in lp["content"] if t.get("logprob") is not None]
            elif isinstance(lp.get("token_logprobs"), list):
                tokens = [str(t) for t in lp.get("tokens") or []]
                logprobs = [float(x) for x in lp["token_logprobs"] if x is not None]

        server_reason = choice.get("finish_reason")
        stop_reason = choice.get("stop_reason")  # vLLM: the matched stop string, a stop token id, or None
        cut = min((text.find(s) for s in (stop or []) if s and s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        if server_reason == "length":
            finish = "length"
        elif server_reason == "stop":
            finish = "stop" if (cut >= 0 or isinstance(stop_reason, str)) else "eos"
        else:
            finish = str(server_reason) if server_reason else "length"

        token_ids: list[int] = []
        if tokens and all(t.startswith("token_id:") for t in tokens):
            token_ids = [int(t.split(":", 1)[1]) for t in tokens]
        elif self.tokenizer is not None and text:
            token_ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        extra = {"server_finish_reason": server_reason}
        if stop_reason is not None:
            extra["stop_reason"] = stop_reason
        if tokens:
            extra["tokens"] = tokens
        return Generation(prompt=prompt_text, text=text, token_ids=token_ids, logprobs=logprobs,
                          stopped=finish == "eos", finish_reason=finish, prompt_index=prompt_index, extra=extra)

    def _samples_for_prompt(self, index: int, prompt, *, num_samples: int, max_new_tokens: int,
                            temperature: float, top_p: float, seed: int | None,
                            stop: list[str] | None) -> list[Generation]:
        chat_endpoint = not isinstance(prompt, str) and self.chat
        if isinstance(prompt, str):
            prompt_text = prompt
        elif self.chat:
            prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)  # a readable record only
        else:
            prompt_text = format_prompt(prompt, self.tokenizer) if self.tokenizer is not None else ""
        samples: list[Generation] = []
        for request_number in range(num_samples):  # one request when the server honours n
            missing = num_samples - len(samples)
            if missing == 0:
                break
            request_seed = None if seed is None else seed + 1000003 * index + request_number
            path, body = self._request_for(prompt, n=missing, max_new_tokens=max_new_tokens,
                                           temperature=temperature, top_p=top_p, seed=request_seed, stop=stop)
            reply = self._post(path, body)
            choices = reply.get("choices")
            if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
                raise OpenAIBackendError(f"POST {self.base_url}{path}: expected 'choices' to be a non-empty list "
                                         f"of objects, got: {str(reply)[:300]}")
            choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
            usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
            for choice in choices[:missing]:
                try:
                    generation = self._parse_choice(choice, chat_endpoint, stop, prompt_text, index)
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    raise OpenAIBackendError(f"POST {self.base_url}{path}: malformed reply ({exc}): "
                                             f"{str(reply)[:300]}") from None
                if usage.get("prompt_tokens") is not None:
                    generation.extra["prompt_tokens"] = usage["prompt_tokens"]
                samples.append(generation)
        return samples

    def generate(self, prompts: Sequence, *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, num_samples: int = 1, seed: int | None = 0, batch_size: int | None = None,
                 stop: Sequence[str] | None = None, progress: bool | None = None) -> list[Generation]:
        """Responses for ``prompts`` (strings or message lists), ``num_samples`` each, prompt-major.

        Same interface as ``tulu_lab.generate.generate``; ``batch_size`` is ignored (the server
        batches), concurrency is ``max_concurrency``. ``seed`` is sent per request (offset by the
        prompt's position), so results do not depend on the order requests finish in.
        """
        from tqdm.auto import tqdm

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        prompts = list(prompts)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) and not (isinstance(prompt, (list, tuple)) and prompt and all(
                    isinstance(m, dict) and "role" in m and "content" in m for m in prompt)):
                raise ValueError(f"prompts[{i}] must be a string or a non-empty list of {{role, content}} "
                                 f"messages, got {prompt!r:.100}")
        stop_list = [s for s in stop] if stop else None
        results: list[list[Generation] | None] = [None] * len(prompts)
        show = progress if progress is not None else len(prompts) > 1
        settings = dict(num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, seed=seed, stop=stop_list)
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool, \
                tqdm(total=len(prompts), desc="requests", disable=not show, unit="prompt") as bar:
            futures = {pool.submit(self._samples_for_prompt, i, p, **settings): i for i, p in enumerate(prompts)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()  # queued requests are dropped; those in flight finish on their own
                raise
        return [g for samples in results for g in samples]
