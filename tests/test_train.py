import json
import math
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL, TINY_TRAIN, assert_user_error, run_script
from nanogpt.checkpoint import CHECKPOINT_NAME, load_checkpoint

pytestmark = pytest.mark.slow  # every test here starts processes

# The tiny run (conftest.TINY_TRAIN, 300 steps) reached val loss 2.37-2.42 over three seeds when measured; uniform
# guessing over 65 characters is ln(65) = 4.17. The bound leaves room for other CPUs and torch builds.
TINY_RUN_VAL_LOSS_BOUND = 2.6


def eval_records(out_dir):
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval"], [r for r in records if r["kind"] == "train"]


def test_short_cpu_training_lowers_val_loss(trained_run):
    out_dir, stdout = trained_run
    evals, _ = eval_records(out_dir)
    assert [r["iter"] for r in evals] == [0, 150, 300]
    assert abs(evals[0]["val_loss"] - math.log(65)) < 0.15  # an untrained model guesses uniformly
    assert evals[-1]["val_loss"] < TINY_RUN_VAL_LOSS_BOUND
    assert "val loss" in stdout


def test_log_reports_speed_and_eta(trained_run):
    _, stdout = trained_run
    step_lines = [line for line in stdout.splitlines() if line.startswith("iter ")]
    assert len(step_lines) == 30  # every log_interval=10 of 300 steps
    assert all(" ms/iter" in line and " tok/s" in line and "ETA " in line for line in step_lines)
    assert "tokens per iteration: 512 = 1 accumulation steps x 1 processes x 16 sequences x 32 tokens" in stdout


def test_metrics_and_plot_are_written(trained_run):
    out_dir, _ = trained_run
    evals, steps = eval_records(out_dir)
    assert [r["iter"] for r in steps] == list(range(10, 301, 10))
    assert all(r["tokens_per_sec"] > 0 and r["loss"] > 0 for r in steps)
    png = (out_dir / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_checkpoint_loads_safely_and_holds_the_run(trained_run):
    out_dir, _ = trained_run
    # the file must load with weights_only=True: no pickled objects inside
    raw = torch.load(out_dir / CHECKPOINT_NAME, weights_only=True)
    assert raw["iter_num"] == 300
    assert raw["model_args"]["vocab_size"] == 65 and raw["model_args"]["n_layer"] == 2
    assert raw["tokenizer"]["tokenizer"] == "char"
    assert not any(k.startswith("_orig_mod.") for k in raw["model"])
    assert load_checkpoint(out_dir)["best_val_loss"] < TINY_RUN_VAL_LOSS_BOUND


def test_training_the_same_out_dir_again_keeps_the_checkpoint(trained_run, data_dir):
    out_dir, _ = trained_run
    before = (out_dir / CHECKPOINT_NAME).read_bytes()
    result = run_script(
        "train.py", *TINY_TRAIN, f"--data_dir={data_dir}", "--dataset=shakespeare_char", f"--out_dir={out_dir}"
    )
    assert_user_error(result, "already holds a checkpoint", "--init_from=resume", "--overwrite=True")
    assert (out_dir / CHECKPOINT_NAME).read_bytes() == before


def test_resume_continues_from_the_checkpoint(trained_run, data_dir, tmp_path):
    out_dir, _ = trained_run
    copy = tmp_path / "resumed"
    copy.mkdir()
    for name in (CHECKPOINT_NAME, "metrics.jsonl"):
        (copy / name).write_bytes((out_dir / name).read_bytes())
    result = run_script(
        "train.py",
        *TINY_TRAIN,
        "--max_iters=320",
        f"--data_dir={data_dir}",
        "--dataset=shakespeare_char",
        f"--out_dir={copy}",
        "--init_from=resume",
        "--always_save_checkpoint=True",
    )
    assert result.returncode == 0, result.stderr
    assert "iter 310/320" in result.stdout and "iter 10/" not in result.stdout
    assert load_checkpoint(copy)["iter_num"] == 320
    evals, _ = eval_records(copy)
    assert [r["iter"] for r in evals] == [0, 150, 300, 320]  # the resumed run's log continues the old one


def test_dataset_not_prepared(tmp_path):
    result = run_script(
        "train.py", *TINY_MODEL, "--dataset=shakespeare_char", f"--data_dir={tmp_path}", f"--out_dir={tmp_path / 'o'}"
    )
    assert_user_error(
        result, "dataset 'shakespeare_char' is not prepared", "run python data/shakespeare_char/prepare.py"
    )


def test_bad_config_inputs_fail_cleanly():
    assert_user_error(run_script("train.py", "config/nope.py"), "config file config/nope.py not found")
    assert_user_error(run_script("train.py", "--batch_sise=3"), "did you mean batch_size")
    assert_user_error(run_script("train.py", "--batch_size=three"), "--batch_size expects int")
    assert_user_error(run_script("train.py", "--dropout=1.0"), "dropout must be at least 0 and below 1, got 1.0")


def test_help_lists_keys():
    result = run_script("train.py", "--help")
    assert result.returncode == 0
    assert "--gradient_accumulation_steps=40" in result.stdout and "--init_from='scratch'" in result.stdout


def test_compile_without_a_cpp_compiler_runs_eager_with_a_warning(data_dir, tmp_path):
    # only this Python's folder on PATH: no g++ or clang++ for torch.compile's CPU backend to use
    env = {key: value for key, value in os.environ.items() if key != "CXX"}
    env["PATH"] = str(Path(sys.executable).parent)
    if any(shutil.which(compiler, path=env["PATH"]) for compiler in ("g++", "clang++", "c++")):
        pytest.skip("this Python's folder holds a C++ compiler")
    result = run_script(
        "train.py",
        *TINY_TRAIN,
        "--compile=True",
        "--max_iters=20",
        "--eval_interval=20",
        "--eval_iters=2",
        "--dataset=shakespeare_char",
        f"--data_dir={data_dir}",
        f"--out_dir={tmp_path}",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (
        "warning: compile=True but no C++ compiler was found (install g++ or clang++, or set CXX); running "
        "without torch.compile"
    )
    assert "done: best val loss" in result.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_keep_freed_memory_stops_each_step_faulting_its_memory_in_again():
    """Forward and backward of a model whose MLP activations are 64 MB: by default every step maps its
    large blocks afresh and faults in all their pages (60k-74k faults a step, steps 5-10, when measured);
    after keep_freed_memory the steps reuse the memory (0-2.7k)."""
    code = (
        "import resource, sys, torch\n"
        "from nanogpt.model import GPT, GPTConfig\n"
        "from nanogpt.system import keep_freed_memory\n"
        "if sys.argv[1] == 'keep': keep_freed_memory()\n"
        "torch.manual_seed(0)\n"
        "model = GPT(GPTConfig(n_layer=1, n_head=4, n_embd=256, block_size=256, vocab_size=65))\n"
        "x = torch.randint(65, (64, 256))\n"
        "for step in range(10):\n"
        "    if step == 4: before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    model(x, x)[1].backward()\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 6)\n"
    )
    faults = {}
    for mode in ("default", "keep"):
        result = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
        faults[mode] = int(result.stdout)
    pages_of_one_activation = 64 * 2**20 // resource.getpagesize()
    assert faults["default"] > pages_of_one_activation
    assert faults["keep"] < pages_of_one_activation / 2


def test_training_goes_on_without_matplotlib(data_dir, tmp_path):
    """loss.png is drawn by a child process; one that cannot draw says so once and training is unaffected."""
    blocker = tmp_path / "no_matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker.parent))
    out = tmp_path / "out"
    result = run_script(
        "train.py",
        "config/train_shakespeare_char.py",
        *TINY_MODEL,
        "--max_iters=20",
        "--eval_interval=10",
        "--eval_iters=2",
        f"--data_dir={data_dir}",
        f"--out_dir={out}",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("loss.png is not drawn: matplotlib is not installed") == 1
    assert (out / CHECKPOINT_NAME).is_file() and not (out / "loss.png").exists()


def test_inputs_that_once_ended_in_a_traceback_are_one_line(data_dir, tmp_path):
    """Values each settings check accepts, but the run cannot use (issue 24, items 5, 6 and 9)."""
    train = ("train.py", *TINY_MODEL, "--dataset=shakespeare_char", f"--out_dir={tmp_path / 'o'}")
    assert_user_error(
        run_script(*train, f"--data_dir={data_dir}", "--n_embd=2305843009213693952", "--n_head=1"),
        "a training step needs about",
    )
    too_large = run_script(
        *train, f"--data_dir={data_dir}", "--n_embd=2305843009213693952", "--n_head=1", "--memory_check=off"
    )
    assert_user_error(too_large, "out of memory with batch_size=16", "or make the model smaller")
    assert_user_error(
        run_script(*train, f"--data_dir={data_dir}", "--batch_size=2305843009213693952"), "a training step needs about"
    )
    damaged = tmp_path / "d" / "shakespeare_char"
    shutil.copytree(data_dir / "shakespeare_char", damaged)
    with open(damaged / "train.bin", "ab") as f:
        f.write(b"\0")  # half a token
    assert_user_error(
        run_script(*train, f"--data_dir={tmp_path / 'd'}"),
        "train.bin has 2,007,709 bytes, not a whole number of uint16 tokens",
    )
    assert_user_error(run_script("train.py", "config"), "config file config is a folder")
    assert_user_error(
        run_script(*train, f"--data_dir={data_dir}", f"--init_from={tmp_path / 'no-such-model'}"), "no such folder"
    )
    assert not (tmp_path / "o").exists()
    assert_user_error(
        run_script("data/shakespeare_char/prepare.py", "--input=/proc/self/mem", f"--out_dir={tmp_path / 'p'}"),
        "cannot read text file /proc/self/mem",
    )
    assert_user_error(
        run_script("bench.py", "--device=cpu", "--real_data=False", "--batch_size=2305843009213693952"), "out of memory"
    )


def test_the_time_to_loss_benchmark_runs_on_a_tiny_case(data_dir, tmp_path):
    """bench/time_to_loss.py, ours alone on a tiny config, with a target the first evaluation meets."""
    config = tmp_path / "tiny.py"
    config.write_text(
        "n_layer = 2\nn_head = 2\nn_embd = 64\nblock_size = 32\nbatch_size = 16\ndropout = 0.0\ndevice = 'cpu'\n"
        "compile = False\ngradient_accumulation_steps = 1\nmax_iters = 20\neval_iters = 2\n"
        f"data_dir = {str(data_dir)!r}\ndataset = 'shakespeare_char'\n"
    )
    result = run_script("bench/time_to_loss.py", f"--configs={config}", "--pairs=1", "--target=4.6")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith(f"| {config} |"))
    assert row.split(" | ")[3] == "0" and float(row.split(" | ")[2]) > 0  # step 0's evaluation, its seconds
