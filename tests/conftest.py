"""Shared fixtures: tiny Shakespeare prepared once, and one small model trained once, per test session.

Data comes from ../shared/data (offline copy) or the download, exactly as a user's run would get it;
offline without either, the tests that need it are skipped with the reason (CI allows no such skip).
The helpers the tests import live in helpers.py; nothing here changes the environment at import.
"""

import os
import sys

import pytest
import torch

from helpers import (
    FUZZ_COUNTS,
    OFFLINE,
    SCRIPT_OUTCOMES,
    TINY_MODEL,
    TINY_TRAIN,
    reversal_words,
    run_script,
    skip_when_offline,
    write_conversations,
)


@pytest.fixture(scope="session", autouse=True)
def local_processes():
    """Every test process runs on this machine. Left alone, torchrun tells its workers to meet at the
    host's fully qualified name and gloo binds to whatever the host name resolves to; on a machine whose
    name resolves to an address it cannot reach itself on, the workers wait for each other without end.
    And a user's stdout to a pipe or file is block-buffered unless the scripts flush their log lines
    themselves; tests that wait for a log line check that they do."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in (
            ("PET_LOCAL_ADDR", "127.0.0.1"),
            ("GLOO_SOCKET_IFNAME", "lo0" if sys.platform == "darwin" else "lo"),
        ):
            if name not in os.environ:  # torchrun's --local-addr; gloo's interface: a user's own value stays
                env.setenv(name, value)
        env.delenv("PYTHONUNBUFFERED", raising=False)
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Offline without the GPT-2 BPE files (../shared/data/tiktoken_cache, or tiktoken's own cache), a
    test that needs them is skipped, saying so, instead of failing."""
    outcome = yield
    error = outcome.excinfo[1] if outcome.excinfo else None
    if error is not None and str(error).startswith("could not load the GPT-2 tokenizer"):
        outcome.force_exception(pytest.skip.Exception(f"{OFFLINE}: {error}", _use_item_location=True))


# the skips CI allows (NANOGPT_ALLOWED_SKIPS_ONLY=1, set by .ci/run): what a CPU machine may lack or be
ALLOWED_SKIPS = ("CUDA", "chromium", "too near the 0.8 line", "holds a C++ compiler")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("NANOGPT_ALLOWED_SKIPS_ONLY") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    unexpected = [r for r in skipped if not any(word in str(r.longrepr) for word in ALLOWED_SKIPS)]
    if unexpected:
        for report in unexpected:
            reporter.write_line(
                f"skipped, and not allowed to be: {report.nodeid}: "
                f"{report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}"
            )
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if SCRIPT_OUTCOMES:
        terminalreporter.write_line("end-to-end fuzzing (tests/test_script_fuzz.py): how each case ended")
        terminalreporter.write_line("| script | cases | ran | refused in one line naming a setting | anything else |")
        terminalreporter.write_line("|---|---|---|---|---|")
        for script, n in SCRIPT_OUTCOMES.items():
            terminalreporter.write_line(
                f"| {script} | {sum(n.values())} | {n['ran']} | {n['refused']} | {n['other']} |"
            )
    if FUZZ_COUNTS:
        terminalreporter.write_line(
            f"settings fuzzing: {sum(FUZZ_COUNTS.values())} cases over {len(FUZZ_COUNTS)} scripts"
            f" ({', '.join(f'{script} {n}' for script, n in FUZZ_COUNTS.items())})"
        )


def prepared(tmp_path_factory, dataset):
    """A data folder holding `dataset`, prepared by its real prepare script."""
    root = tmp_path_factory.mktemp(dataset)
    result = skip_when_offline(run_script(f"data/{dataset}/prepare.py", f"--out_dir={root / dataset}"))
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data folder holding shakespeare_char."""
    return prepared(tmp_path_factory, "shakespeare_char")


@pytest.fixture(scope="session")
def bpe_data_dir(tmp_path_factory):
    """A data folder holding shakespeare in GPT-2 BPE tokens."""
    return prepared(tmp_path_factory, "shakespeare")


@pytest.fixture(scope="session")
def hf_gpt2_dir(tmp_path_factory):
    """A randomly initialised small GPT-2 saved the way Hugging Face models are (save_pretrained)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=64, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory):
    """out_dir of a tiny model trained on shakespeare_char, with the run's stdout."""
    out_dir = tmp_path_factory.mktemp("run")
    result = run_script(
        "train.py",
        "config/train_shakespeare_char.py",
        *TINY_TRAIN,
        f"--data_dir={data_dir}",
        f"--out_dir={out_dir}",
    )
    assert result.returncode == 0, result.stderr
    return out_dir, result.stdout


# the chat fine-tune: the tiny Shakespeare model, exported, then taught to answer a word with it reversed
CHAT_TUNE = TINY_MODEL + [
    "--batch_size=32",
    "--max_iters=200",
    "--lr_decay_iters=200",
    "--warmup_iters=20",
    "--learning_rate=3e-3",
    "--min_lr=3e-4",
    "--eval_interval=100",
    "--eval_iters=10",
    "--log_interval=10",
]


@pytest.fixture(scope="session")
def chat_task(trained_run, tmp_path_factory):
    """The reversal task, prepared on the tiny model's vocabulary: a folder with hf/ (the base model
    exported), chat/ (3,000 training conversations prepared) and held_out.jsonl (200 questions on
    words no training conversation has)."""
    root = tmp_path_factory.mktemp("chat_task")
    words = reversal_words(3200)
    result = run_script("export.py", f"--out_dir={trained_run[0]}", f"--to={root / 'hf'}")
    assert result.returncode == 0, result.stderr
    train = write_conversations(root / "train.jsonl", words[:3000])
    write_conversations(root / "held_out.jsonl", words[3000:], answered=False)
    result = run_script(
        "data/chat/prepare.py",
        f"--input={train}",
        f"--vocab_from={root / 'hf'}",
        "--block_size=32",
        f"--out_dir={root / 'chat'}",
    )
    assert result.returncode == 0, result.stderr
    return root, result.stdout


def fine_tune_chat(task, out_dir, *extra):
    result = run_script(
        "train.py",
        "config/finetune_chat.py",
        *CHAT_TUNE,
        f"--init_from={task / 'hf'}",
        f"--data_dir={task}",
        f"--out_dir={out_dir}",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return out_dir, result.stdout


@pytest.fixture(scope="session")
def chat_run(chat_task, tmp_path_factory):
    """out_dir of the tiny model fine-tuned on the reversal task (full fine-tuning), with its stdout."""
    return fine_tune_chat(chat_task[0], tmp_path_factory.mktemp("chat_run"))
