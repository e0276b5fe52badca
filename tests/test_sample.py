import random
import re
import subprocess
import sys

import pytest
import torch

from helpers import REPO, SCRIPT_TIMEOUT, assert_user_error, run_script

SEP = "---------------\n"


def sample(out_dir, *args):
    return run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", *args)


@pytest.mark.slow
def test_sampling_is_deterministic_per_seed(trained_run):
    out_dir, _ = trained_run
    args = ("--num_samples=2", "--max_new_tokens=100", "--start=ROMEO:")
    first, again, other = (
        sample(out_dir, *args, "--seed=7"),
        sample(out_dir, *args, "--seed=7"),
        sample(out_dir, *args, "--seed=8"),
    )
    for result in (first, again, other):
        assert result.returncode == 0, result.stderr
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout
    samples = first.stdout.split(SEP)[:-1]
    assert len(samples) == 2 and samples[0] != samples[1]
    assert all(s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 100 + 1 for s in samples)  # + print's newline


@pytest.mark.slow
def test_samples_only_use_the_vocabulary(trained_run):
    out_dir, _ = trained_run
    chars = set(torch.load(out_dir / "ckpt.pt", weights_only=True)["tokenizer"]["chars"])
    result = sample(out_dir, "--num_samples=3", "--max_new_tokens=300", "--temperature=1.5", "--top_k=None")
    assert result.returncode == 0, result.stderr
    text = result.stdout.replace(SEP, "")
    assert set(text) <= chars
    assert len(text) > 900


@pytest.mark.slow
def test_file_prompt(trained_run, tmp_path):
    out_dir, _ = trained_run
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("KING HENRY:\nWhat is")
    from_file = sample(out_dir, f"--start=FILE:{prompt}", "--num_samples=1", "--max_new_tokens=50")
    inline = sample(out_dir, "--start=KING HENRY:\nWhat is", "--num_samples=1", "--max_new_tokens=50")
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.startswith("KING HENRY:\nWhat is")
    assert from_file.stdout == inline.stdout


@pytest.mark.slow
def test_greedy_sampling_ignores_the_seed(trained_run):
    out_dir, _ = trained_run
    a = sample(out_dir, "--temperature=0", "--num_samples=1", "--max_new_tokens=40", "--seed=1")
    b = sample(out_dir, "--temperature=0", "--num_samples=1", "--max_new_tokens=40", "--seed=2")
    assert a.returncode == 0 and a.stdout == b.stdout


@pytest.mark.slow
def test_prompt_outside_vocabulary(trained_run):
    out_dir, _ = trained_run
    result = sample(out_dir, "--start=Hello 🙂 world #")
    assert_user_error(result, "outside the model's vocabulary", "'#'", "'🙂'")


@pytest.mark.slow
def test_missing_prompt_file(trained_run, tmp_path):
    out_dir, _ = trained_run
    assert_user_error(sample(out_dir, f"--start=FILE:{tmp_path / 'none.txt'}"), "prompt file", "not found")


def test_out_dir_without_checkpoint(tmp_path):
    assert_user_error(sample(tmp_path), "no checkpoint in", "train one first")


@pytest.mark.slow
def test_corrupt_checkpoint(tmp_path, trained_run):
    out_dir, _ = trained_run
    data = (out_dir / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt").write_bytes(data[: len(data) // 2])
    assert_user_error(sample(tmp_path), "could not be loaded safely")


@pytest.mark.slow
def test_a_prompt_file_that_is_not_utf8_is_one_line(trained_run, tmp_path):
    out_dir, _ = trained_run
    path = tmp_path / "latin1.txt"
    path.write_bytes("ROMÉO:\n".encode("latin-1"))
    assert_user_error(sample(out_dir, f"--start=FILE:{path}"), f"prompt file {path} is not UTF-8 text")
    assert_user_error(sample(out_dir, f"--prompts={path}"), f"prompts file {path} is not UTF-8 text")


@pytest.mark.slow
def test_a_reader_that_stops_early_ends_no_traceback(trained_run):
    out_dir, _ = trained_run
    command = (
        f"{sys.executable} sample.py --out_dir={out_dir} --device=cpu --num_samples=1 --stream=True "
        "--max_new_tokens=3000 | head -c 20"
    )
    result = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
    assert len(result.stdout) == 20 and "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr


def test_random_bytes_are_refused_without_advice_to_load_them_unsafely(tmp_path):
    from nanogpt.checkpoint import load_checkpoint
    from nanogpt.errors import CheckpointError

    (tmp_path / "ckpt.pt").write_bytes(random.Random(0).randbytes(5000))  # what torch calls a failed weights-only load
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path)
    assert "could not be loaded safely" in str(refused.value) and "weights_only" not in str(refused.value)


@pytest.mark.slow
def test_a_run_without_best_pt_is_read_from_ckpt_pt_and_says_so(trained_run, tmp_path, capsys):
    from nanogpt.checkpoint import load_checkpoint

    (tmp_path / "ckpt.pt").write_bytes((trained_run[0] / "ckpt.pt").read_bytes())
    assert load_checkpoint(tmp_path, "best")["path"] == str(tmp_path / "ckpt.pt")
    assert f"note: {tmp_path} holds no best.pt" in capsys.readouterr().err


@pytest.mark.slow
def test_the_cpu_generation_benchmark_runs_on_a_tiny_model():
    """bench/cpu_generate.py on a 2-layer GPT-2: every decoder, the same tokens, the bound, the loss and
    the peak of each of our weight formats."""
    pytest.importorskip("transformers")
    result = run_script(
        "bench/cpu_generate.py", "--n_layer=2", "--n_embd=64", "--n_head=2", "--tokens=12", "--rounds=1"
    )
    assert result.returncode == 0, result.stderr
    for name in ("float32", "bfloat16", "int8"):
        assert f"ours {name} True" in result.stdout  # greedy tokens equal to transformers'
        assert re.search(rf"\| {name} \(\w+, \w+\) \| [0-9.]+ \| [-+][0-9.]+% \| [0-9,]+ \| [0-9.]+x \|", result.stdout)
    assert "| transformers | " in result.stdout and "of the bound" in result.stdout
