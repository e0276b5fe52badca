"""What the tests share: how to run the repo's scripts as a user would (alone, under torchrun, as two
"nodes", serve.py in the background), the tiny model's settings, and the checks of a clean failure and of
two runs that trained alike."""

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

# a script that has not finished in this long is stuck; fail the test instead of waiting for ever
SCRIPT_TIMEOUT = 300
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

# a model small enough to train in well under a minute on two CPU cores
TINY_MODEL = [
    "--n_layer=2",
    "--n_head=2",
    "--n_embd=64",
    "--block_size=32",
    "--batch_size=16",
    "--dropout=0.0",
    "--gradient_accumulation_steps=1",
    "--device=cpu",
    "--compile=False",
]
TINY_TRAIN = TINY_MODEL + [
    "--max_iters=300",
    "--lr_decay_iters=300",
    "--warmup_iters=20",
    "--learning_rate=3e-3",
    "--min_lr=3e-4",
    "--eval_interval=150",
    "--eval_iters=20",
    "--log_interval=10",
    "--always_save_checkpoint=False",
]

# a short run under torchrun: evaluations at 0, 10 and 20, a checkpoint at each
DDP_RUN = TINY_MODEL + [
    "--dataset=shakespeare_char",
    "--batch_size=8",
    "--max_iters=20",
    "--lr_decay_iters=20",
    "--warmup_iters=5",
    "--eval_interval=10",
    "--eval_iters=5",
    "--log_interval=5",
    "--always_save_checkpoint=True",
    "--learning_rate=3e-3",  # the backend follows the device: gloo on the CPU
]


# setting combinations tried per script by test_settings_fuzz.py, reported at the end of the run
FUZZ_COUNTS = {}
# per script, how test_script_fuzz.py's end-to-end cases ended: {"ran": n, "refused": n, "other": n}
SCRIPT_OUTCOMES = {}


def run_script(*args, cwd=REPO, env=None):
    """Run one of the repo's scripts in a fresh Python, as a user would."""
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
    )


def child_pids(pid):
    """The processes whose parent is pid (read from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue  # not a process, or one that just ended
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def run_torchrun(*args, timeout=SCRIPT_TIMEOUT, preexec_fn=None):
    """Run a script in two processes under torchrun (gloo on the CPU), as a user would. On a timeout its
    workers are killed too (torchrun starts each in a session of its own), so a hung run leaves nothing behind.
    preexec_fn runs in torchrun's process before it starts (e.g. to set a limit the workers inherit)."""
    command = [*TORCHRUN, *map(str, args)]
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in child_pids(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.kill()
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_two_launchers(*args, timeout=SCRIPT_TIMEOUT):
    """The multi-node command, rehearsed on one machine: two torchrun launchers ("nodes") of one process
    each, meeting at a c10d rendezvous on a loopback port. Returns both launchers' results."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = []
    for node in (0, 1):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node_rank={node}",
            "--nproc_per_node=1",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            *map(str, args),
        ]
        # output to files: a pipe read only after the other launcher ends could fill and stall both
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        processes.append(
            (subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, text=True, start_new_session=True), out, err)
        )
    deadline = time.time() + timeout
    results = []
    try:
        for process, out, err in processes:
            process.wait(timeout=max(1, deadline - time.time()))
            out.seek(0), err.seek(0)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read()))
    finally:
        for process, out, err in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            out.close(), err.close()
    return results


def eval_losses(out_dir):
    """(iteration, val loss) of every evaluation a run logged."""
    records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["val_loss"]) for r in records if r["kind"] == "eval"]


def assert_same_training(out_a, out_b, tolerance=1e-5, key_bias=True):
    """Two runs logged the same val losses at the same steps and saved the same weights. key_bias=False
    leaves out the attention's key biases: their gradient is zero but for rounding (softmax ignores a
    shift every key shares), and once the weights are trained (a fine-tune) AdamW scales that noise,
    which differs with the order of a sum, into full-size steps."""
    from nanogpt.checkpoint import load_checkpoint

    evals_a, evals_b = eval_losses(out_a), eval_losses(out_b)
    assert [i for i, _ in evals_a] == [i for i, _ in evals_b]
    for (_, a), (_, b) in zip(evals_a, evals_b):
        assert abs(a - b) <= tolerance, (evals_a, evals_b)
    weights_a, weights_b = load_checkpoint(out_a)["model"], load_checkpoint(out_b)["model"]
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        a, b = weights_a[key], weights_b[key]
        if not key_bias and key.endswith("attn.c_attn.bias"):
            width = len(a) // 3  # query, key, value
            a, b = torch.cat([a[:width], a[2 * width :]]), torch.cat([b[:width], b[2 * width :]])
        torch.testing.assert_close(a, b, atol=tolerance, rtol=1e-4)


def assert_user_error(result, *fragments):
    """A clean failure: non-zero exit, one 'error:' line on stderr naming what is wrong, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(out_dir, tmp_path_factory, *extra, cwd=REPO):
    """serve.py (of the checkout at cwd) in the background; returns (process, base URL, log) once /health
    answers."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve") / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "serve.py", f"--out_dir={out_dir}", "--device=cpu", f"--port={port}", *extra],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=1) as response:
                if response.status == 200:
                    return process, base, log
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    log.seek(0)
    process.kill()
    raise AssertionError(f"the server did not start: {log.read()}")


def stop_server(process, log):
    process.terminate()
    process.wait(timeout=30)
    log.close()


@contextlib.contextmanager
def browser():
    """Debian's chromium, headless, driven by Selenium (the test is skipped where it is not installed)."""
    import pytest

    webdriver = pytest.importorskip("selenium.webdriver")
    if not shutil.which("chromedriver") or not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("no chromium/chromedriver here: scripts/test.sh installs them with apt-get where it can")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(condition, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


# public data the tests read, where it is published: fetched once when ../shared/data has no copy
GITHUB_FILES = "https://raw.githubusercontent.com/"
WIKITEXT_2 = GITHUB_FILES + "pytorch/examples/main/word_language_model/data/wikitext-2/"
PUBLIC_DATA = {
    "tinyshakespeare/input.txt": GITHUB_FILES + "karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "webtext_sample/wikitext2_valid.txt": WIKITEXT_2 + "valid.txt",
    "webtext_sample/wikitext2_test.txt": WIKITEXT_2 + "test.txt",
}
FETCHED = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nanogpt-tests"
OFFLINE = "the test data is neither in ../shared/data ($NANOGPT_SHARED_DATA) nor downloadable here"


def public_data(relative):
    """A public data file (a key of PUBLIC_DATA): the offline copy, else the one fetched into the cache,
    else fetched now. Offline with neither, the test is skipped and says why."""
    import pytest

    from nanogpt.files import shared_data_dir

    shared = shared_data_dir()
    if shared is not None and (shared / relative).is_file():
        return shared / relative
    fetched = FETCHED / relative
    if not fetched.is_file():
        try:
            with urllib.request.urlopen(PUBLIC_DATA[relative], timeout=30) as response:
                data = response.read()
        except OSError as e:
            pytest.skip(f"{OFFLINE}: {relative} ({e})")
        fetched.parent.mkdir(parents=True, exist_ok=True)
        temporary = fetched.with_name(f"{fetched.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, fetched)
    return fetched


def skip_when_offline(result):
    """A script's result, or a skip when it failed for want of public data it had to download."""
    import pytest

    if result.returncode != 0 and (
        "could not download" in result.stderr or "could not load the GPT-2 tokenizer" in result.stderr
    ):
        pytest.skip(f"{OFFLINE}: {result.stderr.strip()}")
    return result


# -- the chat task: a short word from the user, the assistant's answer is the word reversed ---------------


def reversal_words(n, seed=0):
    """n distinct random three-letter lowercase words, in random order (a base model has no reason to
    reverse them)."""
    rng, words = random.Random(seed), set()
    while len(words) < n:
        words.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3)))
    return rng.sample(sorted(words), n)


def write_conversations(path, words, answered=True):
    """One conversation a line per word: the user's word, and (answered) the assistant's reversal."""
    with open(path, "w", encoding="utf-8") as f:
        for word in words:
            messages = [{"role": "user", "content": word}]
            if answered:
                messages.append({"role": "assistant", "content": word[::-1]})
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def held_out_accuracy(out_dir, questions, answers_file, *extra):
    """The share of --chat --prompts answers (greedy) that are the user's word reversed."""
    result = run_script(
        "sample.py",
        f"--out_dir={out_dir}",
        "--chat",
        f"--prompts={questions}",
        f"--output={answers_file}",
        "--device=cpu",
        "--temperature=0",
        "--max_new_tokens=8",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    conversations = [json.loads(line)["messages"] for line in open(answers_file, encoding="utf-8")]
    right = sum(m[-1]["content"] == m[0]["content"][::-1] for m in conversations)
    return right / len(conversations)
