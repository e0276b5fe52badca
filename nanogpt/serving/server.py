"""The HTTP side of serve.py: OpenAI's completions and chat completions APIs (so its client, and
lm-evaluation-harness, work unchanged), a page to try the model, a health check and Prometheus metrics.
Generation is the batcher's: continuous batching on the engine, one running batch for both APIs. A chat
request is a completion whose prompt is the conversation rendered with the chat template (nanogpt/chat.py)
and whose answer ends at the end of the assistant's turn; only the shape of its answer differs.
"""

import asyncio
import hmac
import json
import math
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from nanogpt.chat import JINJA_TEMPLATE, check_messages, has_template, no_template, render
from nanogpt.generation.completion import Endings
from nanogpt.command_line import describe_interval, in_interval, unwrap_optional
from nanogpt.generation.sampling import Sampling, sampling_options
from nanogpt.errors import DataError
from nanogpt.serving.batching import Busy, Job, Batcher

PAGE = Path(__file__).with_name("page.html")


class BadRequest(Exception):
    """A request the server refuses, with the status and the one sentence that says why."""

    def __init__(self, message, status=400, param=None):
        super().__init__(message)
        self.status, self.param = status, param


def error(message, status, param=None):
    kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}
    body = {
        "error": {"message": message, "type": kind.get(status, "invalid_request_error"), "param": param, "code": None}
    }
    return JSONResponse(body, status_code=status)


@dataclass
class Completion:
    """A checked POST /v1/completions body."""

    prompts: list  # (text, ids) per prompt
    max_tokens: int
    sampling: dict  # each of Sampling's options (nanogpt/generation/sampling.py) by name
    n: int
    stop: list
    seed: int
    stream: bool
    echo: bool
    logprobs: int | None  # the top alternatives per token; None: no logprobs
    include_usage: bool  # a stream's last chunk carries the usage
    chat: bool = False  # /v1/chat/completions: the answer ends at the end of the turn, in the chat shape


def number(body, key, default, kind, within):
    """body[key] checked to be a finite number of `kind` (int or float) in the interval `within`, such
    as "[0, 20]" or "(0, 1]"; None where the default is None and the body gives none or null."""
    value = body.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise BadRequest(
            f"{key} must be {'an integer' if kind is int else 'a number'}, got {json.dumps(value)}", param=key
        )
    if not math.isfinite(value):
        raise BadRequest(f"{key} must be a finite number, got {value}", param=key)
    if not in_interval(value, within):
        raise BadRequest(f"{key} must be {describe_interval(within)}, got {value}", param=key)
    return value


def parse_prompts(body, tokenizer, block_size):
    """(text, ids) of each prompt a completions body holds: a text, a list of texts, or token ids."""
    if "prompt" not in body:
        raise BadRequest("prompt is missing: send the text to complete as prompt", param="prompt")
    prompt = body["prompt"]
    if isinstance(prompt, str) or prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise BadRequest("prompt must be a string, a list of strings, or token ids", param="prompt")
    prompts = []
    for item in prompt:
        if isinstance(item, str):
            try:
                ids = tokenizer.encode(item)
            except DataError as e:
                raise BadRequest(str(e), param="prompt") from None
            if not ids and getattr(tokenizer, "eot_token", None) is not None:
                ids = [tokenizer.eot_token]  # GPT-2's way to start from nothing
        elif isinstance(item, list) and all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < tokenizer.vocab_size for t in item
        ):
            ids = item
        else:
            raise BadRequest(
                "prompt must be a string, a list of strings, or token ids below the vocabulary size", param="prompt"
            )
        if not ids:
            raise BadRequest("prompt is empty: send at least one character", param="prompt")
        if len(ids) > block_size:
            raise BadRequest(
                f"prompt is {len(ids)} tokens, longer than the model's context of {block_size}", param="prompt"
            )
        prompts.append((item if isinstance(item, str) else tokenizer.decode(ids), ids))
    return prompts


def parse_completion(body, tokenizer, limits):
    """The Completion a /v1/completions body asks for, within the server's limits (create_app's)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with at least a prompt")
    prompts = parse_prompts(body, tokenizer, limits["block_size"])
    if not isinstance(body.get("echo", False), bool):
        raise BadRequest("echo must be true or false", param="echo")
    echo = body.get("echo", False)
    # with echo, 0 scores the prompt alone (lm-evaluation-harness's older loglikelihood request)
    max_tokens = number(body, "max_tokens", 16, int, f"[{0 if echo else 1}, {limits['max_tokens_limit']}]")
    logprobs = number(body, "logprobs", None, int, "[0, 20]")  # lm-evaluation-harness asks for up to 10
    return generation_request(body, limits, prompts, max_tokens, logprobs, echo=echo)


def parse_chat(body, tokenizer, limits):
    """The Completion a /v1/chat/completions body asks for: its messages, rendered with the chat
    template and ending where the assistant's answer begins, as the one prompt."""
    if not has_template(tokenizer):
        raise BadRequest(f"{no_template('this model')}, or use /v1/completions with a prompt")
    if not isinstance(body, dict) or "messages" not in body:
        raise BadRequest('messages is missing: send the conversation as {"messages": [...]}', param="messages")
    try:
        ids, _ = render(tokenizer, check_messages(body["messages"]), add_generation_prompt=True)
    except DataError as e:
        raise BadRequest(str(e), param="messages") from None
    block_size = limits["block_size"]
    if len(ids) > block_size:
        raise BadRequest(
            f"the conversation is {len(ids)} tokens, longer than the model's context of {block_size}; send fewer"
            " or shorter messages",
            param="messages",
        )
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = number(
        body, key, min(block_size, limits["max_tokens_limit"]), int, f"[1, {limits['max_tokens_limit']}]"
    )
    if not isinstance(body.get("logprobs", False), bool):
        raise BadRequest("logprobs must be true or false", param="logprobs")
    top = number(body, "top_logprobs", None, int, "[0, 20]")
    if top is not None and not body.get("logprobs"):
        raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    logprobs = (top or 0) if body.get("logprobs") else None
    return generation_request(body, limits, [(tokenizer.decode(ids), ids)], max_tokens, logprobs, chat=True)


def generation_request(body, limits, prompts, max_tokens, logprobs, echo=False, chat=False):
    """The Completion of either API: what both take alike (stop, stream, sampling, n, seed) read from
    the body, with the prompts and the options each reads its own way."""
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else [] if stop is None else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise BadRequest("stop must be a string or a list of up to 4 strings", param="stop")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("stream must be true or false", param="stream")
    request = Completion(
        prompts=prompts,
        max_tokens=max_tokens,
        sampling={
            f.name: number(body, f.name, f.default, unwrap_optional(f.type)[0], f.metadata["within"])
            for f in sampling_options()
        },
        n=number(body, "n", 1, int, f"[1, {limits['max_n']}]"),
        stop=stop,
        seed=number(body, "seed", None, int, f"[{-(2**62)}, {2**62 - 1}]"),
        stream=body.get("stream", False),
        echo=echo,
        logprobs=logprobs,
        include_usage=stream_usage(body),
        chat=chat,
    )
    if request.seed is None:
        request.seed = random.randrange(2**31)
    choices = len(prompts) * request.n
    if request.max_tokens and choices > limits["max_choices"]:  # more than the rows and queue could ever take
        raise BadRequest(
            f"this request asks for {choices} completions (prompts x n), more than the {limits['max_choices']} the"
            " server takes at once (--max_rows running, --max_queue waiting); send fewer in each request",
            param="prompt",
        )
    return request


def stream_usage(body):
    """Whether a stream ends with a usage chunk (stream_options.include_usage, as OpenAI's API has it)."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not body.get("stream", False):
        raise BadRequest("stream_options is only for stream: true", param="stream_options")
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise BadRequest('stream_options must be an object such as {"include_usage": true}', param="stream_options")
    return options.get("include_usage", False)


def chat_logprobs(tokens, chosen, tops):
    """The chat API's logprobs: for each generated token its text, log-probability and UTF-8 bytes, and
    (tops given) its most likely alternatives the same way."""

    def entry(token, logprob):
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = []
    for k, (token, logprob) in enumerate(zip(tokens, chosen)):
        alternatives = [entry(t, v) for t, v in tops[k].items()] if tops else []
        content.append(dict(entry(token, logprob), top_logprobs=alternatives))
    return {"content": content, "refusal": None}


def make_metrics():
    registry = CollectorRegistry()
    return registry, {
        "requests": Counter(
            "nanogpt_requests", "completion requests answered, by status", ["status"], registry=registry
        ),
        "tokens": Counter("nanogpt_generated_tokens", "tokens generated", registry=registry),
        "cancelled": Counter(
            "nanogpt_rows_freed_by_disconnect", "rows freed because their client went away", registry=registry
        ),
        "rows_per_step": Histogram(
            "nanogpt_rows_per_step",
            "rows in each decode step",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        ),
        "running": Gauge("nanogpt_rows_running", "rows in the running batch", registry=registry),
        "queue": Gauge("nanogpt_queue_length", "jobs waiting for a row", registry=registry),
        "first_token_seconds": Histogram(
            "nanogpt_time_to_first_token_seconds", "from submission to the first token", registry=registry
        ),
    }


def create_app(
    engine, tokenizer, name, max_rows=32, max_queue=128, max_tokens_limit=4096, api_key=None, max_body_bytes=1 << 20
):
    """The FastAPI app: its batcher generates for every request, and a guard checks the key and size."""
    config = engine.config
    registry, metrics = make_metrics()
    batcher = Batcher(engine, tokenizer.vocab_size, max_rows, max_queue, metrics)
    app = FastAPI(title="nanogpt", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.middleware("http")(guard(api_key, metrics, max_body_bytes))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        model = {
            "id": name,
            "object": "model",
            "owned_by": "nanogpt",
            "context_length": config.block_size,
            "max_tokens": max_tokens_limit,
        }
        return {"object": "list", "data": [model]}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    limits = dict(
        block_size=config.block_size,
        max_tokens_limit=max_tokens_limit,
        max_n=max_rows,
        max_choices=max_rows + max_queue,
        max_body_bytes=max_body_bytes,
    )
    app.post("/v1/completions")(completions_endpoint(batcher, tokenizer, name, metrics, limits, parse_completion))
    app.post("/v1/chat/completions")(completions_endpoint(batcher, tokenizer, name, metrics, limits, parse_chat))
    add_tokenizer_endpoints(app, tokenizer, config.block_size, max_body_bytes)
    return app


def add_tokenizer_endpoints(app, tokenizer, block_size, max_body_bytes):
    """GET /tokenizer_info, POST /tokenize and /detokenize, in the shape vLLM serves them, which
    lm-evaluation-harness's remote tokenizer reads: a client needs no copy of the model's tokenizer."""
    eot = getattr(tokenizer, "eot_token", None)
    end_text = None if eot is None else tokenizer.decode([eot])  # GPT-2's <|endoftext|>; a char vocabulary has none

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {
            "eos_token": end_text,
            "bos_token": end_text,
            "pad_token": None,
            "chat_template": JINJA_TEMPLATE if has_template(tokenizer) else None,
            "model_max_length": block_size,
            "vocab_size": tokenizer.vocab_size,
        }

    @app.exception_handler(BadRequest)
    async def refused(request, e):  # what these endpoints refuse, as /v1/completions says it
        return error(str(e), e.status, e.param)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = parse_json(await read_body(request, max_body_bytes))
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise BadRequest('send the text to tokenize as prompt: {"prompt": "..."}', param="prompt")
        try:
            ids = tokenizer.encode(body["prompt"])
        except DataError as e:
            raise BadRequest(str(e), param="prompt") from None
        return {"tokens": ids, "count": len(ids), "max_model_len": block_size}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = parse_json(await read_body(request, max_body_bytes))
        ids = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < tokenizer.vocab_size for t in ids
        ):
            raise BadRequest(
                f'send token ids below the vocabulary size ({tokenizer.vocab_size}) as tokens: {{"tokens": [...]}}',
                param="tokens",
            )
        return {"prompt": tokenizer.decode(ids)}


async def read_body(request, limit):
    """The body, read no further than `limit` bytes: a larger one, announced or not (a chunked body has
    no Content-Length), is refused as soon as it passes the limit."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the body is larger than {limit:,} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw):
    """The body's JSON, every string in it text: a \\ud800-style escape without its pair is valid JSON
    but no character, and could be neither encoded nor answered."""
    try:
        body = json.loads(raw)
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            "the body holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which is not text"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise BadRequest("the body nests too deeply to be a request") from None
    return body


def guard(api_key, metrics, max_body_bytes):
    """Middleware: every request but /health needs the key, when there is one; a body that says it is
    larger than max_body_bytes is refused before it is read."""

    async def check(request: Request, call_next):
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if request.url.path == "/":
                given = given or request.query_params.get("key", "")
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                metrics["requests"].labels("401").inc()
                return error("a valid API key is needed: send the header Authorization: Bearer KEY", 401)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            metrics["requests"].labels("413").inc()
            return error(f"the body is larger than {max_body_bytes:,} bytes", 413)
        return await call_next(request)

    return check


def completions_endpoint(batcher, tokenizer, name, metrics, limits, parse):
    """POST /v1/completions or /v1/chat/completions (parse: the one's parser): the body checked, its jobs
    queued, the answer whole or streamed."""

    async def completions(request: Request):
        try:
            body = parse_json(await read_body(request, limits["max_body_bytes"]))
            completion = parse(body, tokenizer, limits)
            answer = Answer(completion, tokenizer, batcher, tokenizer.vocab_size, name)
            if completion.max_tokens:
                batcher.submit(answer.jobs)
        except BadRequest as e:
            metrics["requests"].labels(str(e.status)).inc()
            return error(str(e), e.status, e.param)
        except Busy:
            metrics["requests"].labels("429").inc()
            return error(
                f"the server is busy ({batcher.max_rows} rows running and {batcher.max_queue} waiting); try "
                "again shortly",
                429,
            )
        metrics["requests"].labels("200").inc()
        if completion.stream:
            return StreamingResponse(
                answer.events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        try:
            return JSONResponse(await answer.whole())
        except BadRequest as e:
            return error(str(e), e.status)
        finally:
            answer.cancel()

    return completions


class Answer:
    """One request's completions (n per prompt) as they are generated: jobs for the batcher, and the
    response built from their events, whole or streamed."""

    def __init__(self, completion, tokenizer, batcher, vocab_size, model_name):
        self.completion, self.tokenizer, self.batcher, self.vocab_size = completion, tokenizer, batcher, vocab_size
        self.engine = batcher.engine
        self.id = f"{'chatcmpl' if completion.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created, self.model = int(time.time()), model_name
        # a stream's chunks are chat.completion.chunk in the chat API, text_completion as the whole in the other
        self.object = "chat.completion" if completion.chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if completion.chat else "text_completion"
        self.endings = Endings(tokenizer, completion.stop, chat=completion.chat)
        self.opened = set()  # the choices whose first chunk was sent (a chat stream's first delta names the role)
        self.loop = asyncio.get_running_loop()
        self.inbox = asyncio.Queue()  # (job index, event), put there from the batcher's thread
        self.jobs = []
        for _, ids in completion.prompts:
            for _ in range(completion.n):
                index = len(self.jobs)
                # every choice its own random stream: repeated prompts, and n > 1, differ; seed repeats them all
                sampling = Sampling(**completion.sampling, seed=completion.seed + index)
                self.jobs.append(Job(ids, sampling, completion.max_tokens, self.endings.ended, self._deliverer(index)))

    def _deliverer(self, index):
        def deliver(event):  # called on the batcher's thread
            self.loop.call_soon_threadsafe(self.inbox.put_nowait, (index, event))

        return deliver

    def cancel(self):
        for job in self.jobs:
            job.cancelled = True

    async def choice(self, index, ids, reason):
        completion = self.completion
        prompt_text, prompt_ids = completion.prompts[index // completion.n]
        text = self.endings.text(ids)
        logprobs = None if completion.logprobs is None else await self._logprobs(prompt_ids, ids, text)
        if completion.chat:
            message = {"role": "assistant", "content": text}
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason}
        text = (prompt_text if completion.echo else "") + text
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": reason}

    def _kept_ids(self, ids, text):
        """The generated ids that make up the text: up to the one where it was cut (a stop string, the
        end-of-text token), that one included when it begins before the cut."""
        kept = []
        for token in ids:
            if token in self.endings.end_tokens or len(self.tokenizer.decode(kept)) >= len(text):
                break
            kept.append(token)
        return kept

    async def _logprobs(self, prompt_ids, ids, text):
        """OpenAI's logprobs object for the completion (and the prompt, with echo), ending where its text
        ends: one forward over the whole sequence (past the context, one per place the context moves),
        run on a worker thread while the batcher's step is not using the model."""
        decode = self.tokenizer.decode
        ids = self._kept_ids(ids, text)
        sequence = [*prompt_ids, *ids]

        def score():
            with self.batcher.model_lock:
                return self.engine.token_logprobs(sequence, self.completion.logprobs, self.vocab_size)

        chosen, tops = await asyncio.to_thread(score)
        first = 0 if self.completion.echo else len(prompt_ids)
        tokens = [decode([t]) for t in sequence[first:]]
        if ids:  # a token cut by a stop string shows the part of it the text keeps
            before = sum(len(decode([t])) for t in ids[:-1])
            tokens[-1] = tokens[-1][: max(len(text) - before, 0)]
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(token)
        top = [None if t is None else {decode([k]): v for k, v in t.items()} for t in tops[first:]]
        if self.completion.chat:
            return chat_logprobs(tokens, chosen[first:], top if self.completion.logprobs else None)
        return {
            "tokens": tokens,
            "token_logprobs": chosen[first:],
            "top_logprobs": top if self.completion.logprobs else None,
            "text_offset": offsets,
        }

    def usage(self):
        completion_tokens = sum(len(job.ids) for job in self.jobs) if self.completion.max_tokens else 0
        prompt_tokens = sum(len(ids) for _, ids in self.completion.prompts)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    async def whole(self):
        choices = [None] * len(self.jobs)
        if not self.completion.max_tokens:  # echo alone: the prompt and its log-probabilities, nothing generated
            choices = [await self.choice(index, [], "length") for index in range(len(self.jobs))]
        while any(c is None for c in choices):
            index, event = await self.inbox.get()
            if event[0] == "done":
                choices[index] = await self.choice(index, event[1], event[2])
            elif event[0] == "error":
                raise BadRequest(event[1], status=500)
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        }

    def chunk(self, index, text, reason=None, logprobs=None):
        choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": reason}
        if self.completion.chat:
            delta = {"content": text} if index in self.opened else {"role": "assistant", "content": text}
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        self.opened.add(index)
        body = {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.completion.include_usage:
            body["usage"] = None  # as OpenAI: every chunk has the key, the last one (no choices) the figures
        return "data: " + json.dumps(body) + "\n\n"

    async def events(self):
        """Server-sent events in OpenAI's chunk format: text as it becomes safe to show, a last chunk per
        choice with its finish_reason (and logprobs), with include_usage a chunk with the usage, then
        [DONE]. A client that goes away cancels its rows."""
        completion = self.completion
        shown = [""] * len(self.jobs)
        received = [[] for _ in self.jobs]  # each choice's ids so far, from its events
        open_choices = len(self.jobs) if completion.max_tokens else 0
        try:
            for index in range(len(self.jobs)):
                prompt_text, prompt_ids = completion.prompts[index // completion.n]
                if completion.echo:
                    yield self.chunk(index, prompt_text)
                if not completion.max_tokens:  # echo alone: nothing to generate
                    logprobs = None if completion.logprobs is None else await self._logprobs(prompt_ids, [], "")
                    yield self.chunk(index, "", "length", logprobs)
            failed = False
            while open_choices and not failed:
                index, event = await self.inbox.get()
                if event[0] == "error":
                    yield "data: " + json.dumps({"error": {"message": event[1], "type": "server_error"}}) + "\n\n"
                    failed = True
                    continue
                final = event[0] == "done"
                if not final:
                    received[index].append(event[1])
                ids = event[1] if final else received[index]
                text = self.endings.shown(ids, final=final)
                if len(text) > len(shown[index]) or final:
                    delta, shown[index] = text[len(shown[index]) :], max(text, shown[index], key=len)
                    logprobs = None
                    if final and completion.logprobs is not None:
                        logprobs = await self._logprobs(completion.prompts[index // completion.n][1], ids, text)
                    yield self.chunk(index, delta, event[2] if final else None, logprobs)
                open_choices -= final
            if completion.include_usage and not failed:
                usage = {
                    "id": self.id,
                    "object": self.chunk_object,
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage(),
                }
                yield "data: " + json.dumps(usage) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()
