"""sample.py: cached and uncached print the same, streaming, many prompts at once, stop texts, errors."""

import json
import subprocess
import sys

import pytest

from helpers import REPO, SCRIPT_TIMEOUT, assert_user_error, run_script

pytestmark = pytest.mark.slow  # every test here starts processes


def sample(out_dir, *args, **kwargs):
    return run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", *args, **kwargs)


def test_sample_py_cached_and_uncached_print_the_same(trained_run):
    out_dir, _ = trained_run
    args = ("--num_samples=3", "--max_new_tokens=80", "--start=ROMEO:", "--seed=3")  # block_size is 32
    cached, uncached = sample(out_dir, *args), sample(out_dir, *args, "--use_cache=False")
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout == uncached.stdout


def test_streamed_output_equals_the_batch_output(trained_run):
    out_dir, _ = trained_run
    args = ("--num_samples=1", "--max_new_tokens=60", "--start=ROMEO:")
    streamed, whole = sample(out_dir, *args, "--stream=True"), sample(out_dir, *args, "--stream=False")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == whole.stdout


def test_prompt_from_stdin(trained_run):
    out_dir, _ = trained_run
    result = subprocess.run(
        [sys.executable, "sample.py", f"--out_dir={out_dir}", "--start=-", "--num_samples=1", "--max_new_tokens=20"],
        cwd=REPO,
        input="JULIET:\n",
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("JULIET:\n")


@pytest.mark.parametrize(
    "arg,fragment",
    [
        ("--max_new_tokens=0", "max_new_tokens must be at least 1"),
        ("--top_k=66", "top_k must be between 1 and the vocabulary size 65"),
        ("--top_k=0", "top_k must be at least 1, got 0"),
        ("--top_p=0", "top_p must be above 0 and at most 1, got 0.0"),
        ("--top_p=1.5", "top_p must be above 0 and at most 1, got 1.5"),
        ("--start=", "start cannot be empty"),
        ("--temperature=-1", "temperature must be at least 0, got -1.0"),
        ("--temperature=nan", "temperature must be a finite number, got nan"),
        ("--batch_size=-1", "batch_size must be at least 0, got -1"),
    ],
)
def test_bad_sampling_settings(trained_run, arg, fragment):
    out_dir, _ = trained_run
    assert_user_error(sample(out_dir, arg), fragment)


def completions(out_dir, tmp_path, lines, *args):
    """Completions of sample.py --prompts for these prompts, read back from its --output file. The prompts
    go in a plain text file, one a line, or where one holds a newline, in a JSON-lines file."""
    output = tmp_path / "out.jsonl"
    if any("\n" in line for line in lines):
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": line}) + "\n" for line in lines))
    else:
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("\n".join(lines) + "\n")
    result = sample(out_dir, f"--prompts={prompts}", f"--output={output}", "--max_new_tokens=30", *args)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["prompt"] for r in records] == lines
    return [r["completion"] for r in records], result


PROMPTS = ["R", "ROMEO:\n", "First Citizen:\nBefore we proceed any further"]  # 1, 7 and 45 characters


@pytest.mark.parametrize("settings", [("--temperature=0",), ("--temperature=1.0", "--top_k=None", "--seed=5")])
def test_many_prompts_at_once_equal_each_prompt_alone(trained_run, tmp_path, settings):
    """Rows of different lengths in one batch, each at its own position: each gives what it gives alone
    (with sampling, row i draws from seed + i, so alone it runs with that seed)."""
    out_dir, _ = trained_run
    together, result = completions(out_dir, tmp_path, PROMPTS, *settings)
    assert "note: 1 prompt(s) longer than the model's context of 32 tokens" in result.stderr  # the 45-character one
    for i, prompt in enumerate(PROMPTS):
        seed = [f"--seed={5 + i}"] if "--seed=5" in settings else []
        alone, _ = completions(out_dir, tmp_path, [prompt], *settings, *seed)
        assert alone == [together[i]]
    assert all(len(c) == 30 for c in together)


def test_stop_text_ends_each_sample_before_it(trained_run, tmp_path):
    out_dir, _ = trained_run
    full, _ = completions(out_dir, tmp_path, PROMPTS, "--temperature=0")
    stopped, _ = completions(out_dir, tmp_path, PROMPTS, "--temperature=0", "--stop=e")
    assert stopped == [text.split("e")[0] for text in full]
    assert any(len(s) < len(f) for s, f in zip(stopped, full))
    # streamed, it prints the same text, holding back what might be the start of the stop text
    streamed = sample(
        out_dir, f"--start={PROMPTS[1]}", "--num_samples=1", "--temperature=0", "--max_new_tokens=30", "--stop=e"
    )
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == PROMPTS[1] + stopped[1] + "\n---------------\n"


def test_prompts_file_errors(trained_run, tmp_path):
    out_dir, _ = trained_run
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_user_error(sample(out_dir, f"--prompts={empty}"), "holds no prompts")
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("ROMEO:\nJULIET:\nfünf\n")
    assert_user_error(sample(out_dir, f"--prompts={foreign}"), "line 3 of", "outside the model's vocabulary")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "ROMEO:"}\n{"text": "x"}\n')
    assert_user_error(sample(out_dir, f"--prompts={bad_json}"), "line 2 of", "'prompt'")
    assert_user_error(sample(out_dir, f"--prompts={tmp_path / 'missing.txt'}"), "not found")
    good = tmp_path / "good.txt"
    good.write_text("ROMEO:\n")
    assert_user_error(
        sample(out_dir, f"--prompts={good}", f"--output={tmp_path / 'no' / 'such' / 'dir.jsonl'}"),
        "cannot write --output",
    )
