"""serve.py as its users meet it: a real server on a free loopback port in a subprocess, the official
openai client, concurrent streams, bad input, a disconnect, an API key, and the page in a real browser."""

import json
import re
import threading
import time
from pathlib import Path

import pytest

from helpers import browser, run_script, start_server, stop_server, wait_until

pytestmark = pytest.mark.slow  # every test here starts processes

openai = pytest.importorskip("openai", reason="the serve tests need the serve extra: pip install -e '.[serve,dev]'")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    out_dir, _ = trained_run
    process, base, log = start_server(out_dir, tmp_path_factory, "--max_rows=16", "--max_tokens_limit=100000")
    yield base
    stop_server(process, log)


def client(base, key="unused"):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)


def metric(base, name):
    """The value of one Prometheus sample (labels included in `name`), 0 if absent."""
    text = httpx.get(base + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def sample_py(out_dir, prompt, tokens):
    result = run_script(
        "sample.py",
        f"--out_dir={out_dir}",
        f"--start={prompt}",
        "--temperature=0",
        f"--max_new_tokens={tokens}",
        "--num_samples=1",
        "--device=cpu",
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n---------------")[0][len(prompt) :]


def test_openai_client_completion_stream_n_and_stop(server, trained_run):
    out_dir, _ = trained_run
    c = client(server)
    plain = c.completions.create(model="any", prompt="ROMEO:", max_tokens=40, temperature=0)
    text = plain.choices[0].text
    assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == 40
    assert plain.usage.prompt_tokens == len("ROMEO:")
    # greedy text is what sample.py writes for the same prompt
    assert text == sample_py(out_dir, "ROMEO:", 40)

    streamed = "".join(
        chunk.choices[0].text
        for chunk in c.completions.create(model="any", prompt="ROMEO:", max_tokens=40, temperature=0, stream=True)
    )
    assert streamed == text

    three = c.completions.create(model="any", prompt="JULIET:", max_tokens=30, n=3, temperature=1.0, seed=7)
    assert sorted(choice.index for choice in three.choices) == [0, 1, 2]
    again = c.completions.create(model="any", prompt="JULIET:", max_tokens=30, n=3, temperature=1.0, seed=7)
    assert [x.text for x in three.choices] == [x.text for x in again.choices]  # a seed repeats them
    assert len({x.text for x in three.choices}) > 1  # and each choice has its own stream
    # so does each of repeated prompts, and each choice of several prompts, all repeated by the seed
    repeated = c.completions.create(model="any", prompt=["JULIET:"] * 3, max_tokens=30, temperature=1.0, seed=7)
    assert [x.text for x in repeated.choices] == [x.text for x in three.choices]
    two = c.completions.create(model="any", prompt=["JULIET:", "ROMEO:"], max_tokens=30, n=2, temperature=1.0, seed=7)
    assert [x.text for x in two.choices][:2] == [x.text for x in three.choices][:2]
    assert len({x.text for x in two.choices}) == 4

    stop = text[10]  # a character the greedy completion holds: it must end there
    stopped = c.completions.create(model="any", prompt="ROMEO:", max_tokens=40, temperature=0, stop=[stop])
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_echo_and_logprobs_score_the_prompt(server):
    """What lm-evaluation-harness's local-completions model asks to score a text."""
    body = {"prompt": "ROMEO: speak", "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}
    choice = httpx.post(server + "/v1/completions", json=body).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert choice["text"].startswith("ROMEO: speak")
    assert logprobs["tokens"][:12] == list("ROMEO: speak")
    assert logprobs["token_logprobs"][0] is None and all(lp < 0 for lp in logprobs["token_logprobs"][1:])
    assert logprobs["text_offset"][:3] == [0, 1, 2]
    # the older scoring request asks for the 10 (up to 20) most likely tokens at each place
    wide = httpx.post(server + "/v1/completions", json=dict(body, logprobs=20)).json()["choices"][0]["logprobs"]
    assert wide["top_logprobs"][0] is None and all(len(top) == 20 for top in wide["top_logprobs"][1:])
    assert wide["token_logprobs"] == logprobs["token_logprobs"]


def test_prompt_only_scoring_stop_cut_logprobs_and_usage_chunk(server):
    """The rest of what lm-evaluation-harness and OpenAI's clients ask of a completions server."""
    scored = {"prompt": "ROMEO: speak", "temperature": 0, "echo": True, "logprobs": 10}
    one = httpx.post(server + "/v1/completions", json=dict(scored, max_tokens=1)).json()
    # max_tokens=0 with echo (the older scoring request): the prompt and its log-probabilities, nothing generated
    zero = httpx.post(server + "/v1/completions", json=dict(scored, max_tokens=0)).json()
    choice = zero["choices"][0]
    assert choice["text"] == "ROMEO: speak" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == list("ROMEO: speak")
    alone, with_one = choice["logprobs"]["token_logprobs"], one["choices"][0]["logprobs"]["token_logprobs"][:12]
    # one token longer: other matmul shapes
    assert alone[0] is None is with_one[0] and alone[1:] == pytest.approx(with_one[1:], abs=1e-5)
    assert zero["usage"] == {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}
    events = stream_events(server, dict(scored, max_tokens=0, stream=True))
    assert "".join(e["choices"][0]["text"] for e in events) == "ROMEO: speak"
    assert events[-1]["choices"][0]["logprobs"]["token_logprobs"] == choice["logprobs"]["token_logprobs"]

    # with a stop string, the log-probabilities end where the text ends
    greedy = httpx.post(
        server + "/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 40, "temperature": 0}
    ).json()["choices"][0]["text"]
    stop = greedy[10]
    cut = httpx.post(
        server + "/v1/completions",
        json={"prompt": "ROMEO:", "max_tokens": 40, "temperature": 0, "stop": [stop], "logprobs": 0},
    ).json()
    logprobs = cut["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == cut["choices"][0]["text"] == greedy[: greedy.index(stop)]
    assert len(logprobs["token_logprobs"]) == len(logprobs["tokens"]) == len(logprobs["text_offset"])

    # stream_options.include_usage: every chunk has usage null, then one chunk without choices has the figures
    c = client(server)
    chunks = list(
        c.completions.create(
            model="any",
            prompt="ROMEO:",
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(chunk.usage is None for chunk in chunks[:-1]) and chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == {
        "prompt_tokens": 6,
        "completion_tokens": 12,
        "total_tokens": 18,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    plain = [e for e in stream_events(server, {"prompt": "ROMEO:", "max_tokens": 3, "stream": True})]
    assert all("usage" not in e for e in plain)


def test_generation_and_logprobs_slide_past_the_context(server):
    """The model's context is 32 tokens; 200 (the page's default) are generated and scored, each token on
    the context generation gave it: greedy tokens are the most likely ones where they were drawn."""
    body = {"prompt": "ROMEO:", "max_tokens": 200, "temperature": 0, "logprobs": 1}
    choice = httpx.post(server + "/v1/completions", json=body).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == 200 and choice["finish_reason"] == "length"
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        assert logprob == pytest.approx(max(top.values()), abs=1e-4) and token in top
    assert httpx.get(server + "/v1/models").json()["data"][0]["max_tokens"] == 100000  # the server's limit


def test_tokenizer_endpoints_answer_as_lm_evaluation_harness_asks(server, trained_run):
    from nanogpt.checkpoint import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer("resume", str(trained_run[0]), "best")
    info = httpx.get(server + "/tokenizer_info").json()
    # a char vocabulary has no end token
    assert info["eos_token"] is None and info["model_max_length"] == 32 and info["vocab_size"] == 65
    tokens = httpx.post(server + "/tokenize", json={"prompt": "ROMEO: speak", "add_special_tokens": False}).json()
    assert tokens == {"tokens": tokenizer.encode("ROMEO: speak"), "count": 12, "max_model_len": 32}
    assert httpx.post(server + "/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": "ROMEO: speak"}
    for path, body, fragment in [
        ("/tokenize", {"text": "x"}, "send the text to tokenize as prompt"),
        ("/tokenize", {"prompt": "caf\u00e9"}, "outside the model's vocabulary"),
        ("/detokenize", {"tokens": [65]}, "below the vocabulary size (65)"),
        ("/detokenize", [1, 2], "below the vocabulary size"),
    ]:
        response = httpx.post(server + path, json=body)
        assert response.status_code == 400 and fragment in response.json()["error"]["message"]
    broken = httpx.post(server + "/detokenize", content=b"{oops")
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]


def stream_events(server, body):
    """The JSON events of a streamed completion, [DONE] left out."""
    with httpx.stream("POST", server + "/v1/completions", json=body) as response:
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_sixteen_concurrent_streams_share_the_batch(server):
    prompts = [("ROMEO:", "JULIET:", "First Citizen:", "O", "KING")[i % 5] + " " * (i % 3) for i in range(16)]
    lengths = [8 + 2 * i for i in range(16)]
    c = client(server)
    alone = [
        c.completions.create(model="any", prompt=p, max_tokens=n, temperature=0).choices[0].text
        for p, n in zip(prompts, lengths)
    ]
    steps_before = metric(server, "nanogpt_rows_per_step_count")
    single_row_steps_before = metric(server, 'nanogpt_rows_per_step_bucket{le="1.0"}')
    together = [None] * 16

    def stream(i):
        chunks = c.completions.create(model="any", prompt=prompts[i], max_tokens=lengths[i], temperature=0, stream=True)
        together[i] = "".join(chunk.choices[0].text for chunk in chunks)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert together == alone
    steps = metric(server, "nanogpt_rows_per_step_count") - steps_before
    single_row_steps = metric(server, 'nanogpt_rows_per_step_bucket{le="1.0"}') - single_row_steps_before
    assert steps > 0 and single_row_steps < steps  # some steps ran several rows at once
    assert steps < sum(lengths)  # fewer steps than one a token


BAD_REQUESTS = [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"max_tokens": 5}).encode(), 400, "prompt is missing"),
    # 0 only with echo
    (
        json.dumps({"prompt": "ROMEO:", "max_tokens": 0}).encode(),
        400,
        "max_tokens must be at least 1",
    ),
    (
        json.dumps({"prompt": "ROMEO:", "stream_options": {"include_usage": True}}).encode(),
        400,
        "stream_options is only for stream: true",
    ),
    (b"[" * 200_000, 400, "nests too deeply"),
    (
        json.dumps({"prompt": "ROMEO:", "max_tokens": 10**9}).encode(),
        400,
        "max_tokens must be at least 1 and at most 100000",
    ),
    (json.dumps({"prompt": "ROMEO:", "temperature": -1}).encode(), 400, "temperature must be at least 0"),
    (b'{"prompt": "ROMEO:", "temperature": NaN}', 400, "temperature must be a finite number"),
    (json.dumps({"prompt": "ROMEO:", "top_p": 0}).encode(), 400, "top_p must be above 0 and at most 1"),
    (json.dumps({"prompt": "ROMEO:", "top_p": 1.5}).encode(), 400, "top_p must be above 0 and at most 1"),
    (json.dumps({"prompt": "ROMEO: \u00e9\u00e8"}).encode(), 400, "characters outside the model's vocabulary"),
    (json.dumps({"prompt": "x" * 100}).encode(), 400, "longer than the model's context of 32"),
    (json.dumps({"prompt": "ROMEO:", "stop": 5}).encode(), 400, "stop must be a string"),
    (json.dumps({"prompt": "ROMEO:", "n": "two"}).encode(), 400, "n must be an integer"),
    (json.dumps({"prompt": "x" * (2 << 20)}).encode(), 413, "larger than 1,048,576 bytes"),
    (b'{"prompt": "a\\ud800", "max_tokens": 1, "echo": true}', 400, "lone surrogate"),
    (b'{"prompt": "ROMEO:", "stop": ["\\udfff"], "stream": true}', 400, "lone surrogate"),
    (json.dumps({"prompt": ["ROMEO:"] * 500, "max_tokens": 1}).encode(), 400, "asks for 500 completions"),
]


@pytest.mark.parametrize("body, status, fragment", BAD_REQUESTS, ids=[f"{s}-{f}" for _, s, f in BAD_REQUESTS])
def test_bad_requests_get_one_sentence(server, body, status, fragment):
    response = httpx.post(server + "/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    message = response.json()["error"]["message"]
    assert fragment in message and "\n" not in message, message


def test_the_server_keeps_serving_after_fifty_bad_requests(server):
    for i in range(50):
        body, status, _ = BAD_REQUESTS[i % len(BAD_REQUESTS)]
        assert httpx.post(server + "/v1/completions", content=body).status_code == status
    good = httpx.post(server + "/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 5})
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 5
    chat = httpx.post(server + "/v1/chat/completions", json={"messages": []})
    assert chat.status_code == 400 and "this model has no chat template" in chat.json()["error"]["message"]
    models = httpx.get(server + "/v1/models").json()
    assert models["data"][0]["context_length"] == 32


def test_the_body_limit_holds_while_the_body_is_read(trained_run, tmp_path_factory):
    out_dir, _ = trained_run
    process, base, log = start_server(out_dir, tmp_path_factory, "--max_body_bytes=2000")
    try:

        def peak_rss_mb():
            status = Path(f"/proc/{process.pid}/status").read_text()
            return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024

        def chunked():  # no Content-Length: 200 MB in 1 MB pieces
            for _ in range(200):
                yield b" " * 1_000_000

        before = peak_rss_mb()
        try:
            response = httpx.post(base + "/v1/completions", content=chunked(), timeout=120)
            assert response.status_code == 413 and "larger than 2,000 bytes" in response.json()["error"]["message"]
        except httpx.HTTPError:
            pass  # the server may answer and close the connection while the client is still sending
        # refused while reading: the server never held the body (reading it whole took 200 MB more)
        assert peak_rss_mb() - before < 50
        announced = httpx.post(base + "/v1/completions", json={"prompt": "x" * 3000})
        assert announced.status_code == 413
        assert httpx.post(base + "/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 2}).status_code == 200
    finally:
        stop_server(process, log)


def test_a_client_that_disconnects_frees_its_row(server):
    freed = metric(server, "nanogpt_rows_freed_by_disconnect_total")
    with httpx.stream(
        "POST", server + "/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 100000, "stream": True}
    ) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)  # a few chunks arrive, then the client goes away mid-stream
    deadline = time.time() + 20
    while time.time() < deadline and metric(server, "nanogpt_rows_freed_by_disconnect_total") == freed:
        time.sleep(0.1)
    assert metric(server, "nanogpt_rows_freed_by_disconnect_total") == freed + 1
    assert metric(server, "nanogpt_rows_running") == 0


def test_api_key(trained_run, tmp_path_factory):
    out_dir, _ = trained_run
    process, base, log = start_server(out_dir, tmp_path_factory, "--api_key=s3cret")
    try:
        assert httpx.get(base + "/health").status_code == 200  # open without a key
        refused = httpx.post(base + "/v1/completions", json={"prompt": "ROMEO:"})
        assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
        assert httpx.get(base + "/").status_code == 401
        assert httpx.get(base + "/?key=s3cret").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            client(base, "wrong").completions.create(model="any", prompt="ROMEO:", max_tokens=3)
        assert (
            client(base, "s3cret")
            .completions.create(model="any", prompt="ROMEO:", max_tokens=3)
            .usage.completion_tokens
            == 3
        )
    finally:
        stop_server(process, log)
    log_text = open(log.name).read()
    assert "page: http://127.0.0.1:" in log_text and "?key=s3cret" in log_text


def test_the_page_in_a_real_browser(server, tmp_path):
    """Debian's chromium and chromium-driver, driven by Selenium: type a prompt, Generate, watch the text
    grow, Stop, watch it stop."""
    with browser() as driver:
        from selenium.webdriver.common.by import By

        driver.get(server + "/")
        wait_until(lambda: "context of 32 tokens" in driver.find_element(By.ID, "model").text)
        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("ROMEO:")
        max_tokens = driver.find_element(By.ID, "max_tokens")
        assert max_tokens.get_attribute("value") == "200"  # the page's default: within the server's limit
        max_tokens.clear()
        max_tokens.send_keys("100000")
        driver.find_element(By.ID, "generate").click()
        completion = lambda: driver.find_element(By.ID, "completion").text  # noqa: E731
        wait_until(lambda: len(completion()) > 0)
        first = len(completion())
        wait_until(lambda: len(completion()) > first + 20)  # it grows as tokens stream in
        driver.find_element(By.ID, "stop").click()
        wait_until(lambda: driver.find_element(By.ID, "generate").is_enabled())
        stopped = len(completion())
        time.sleep(1.0)
        assert len(completion()) == stopped  # nothing more arrives after Stop
        assert driver.find_element(By.ID, "error").text == ""
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10_000
