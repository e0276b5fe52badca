"""compare.py: two short runs in one picture and a table whose figures are the runs' own."""

import math
import statistics
import subprocess
import sys

import pytest
from helpers import REPO, TINY_MODEL, run_script

from nanogpt.training.train_log import read_records

pytestmark = pytest.mark.slow  # every test here starts processes

SHORT_RUN = TINY_MODEL + [
    "--dataset=shakespeare_char",
    "--max_iters=60",
    "--lr_decay_iters=60",
    "--warmup_iters=5",
    "--eval_interval=20",
    "--eval_iters=5",
    "--log_interval=5",
]


@pytest.fixture(scope="module")
def two_runs(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for name, lr in (("slow", "1e-3"), ("fast", "3e-3")):
        result = run_script(
            "train.py", *SHORT_RUN, f"--learning_rate={lr}", f"--data_dir={data_dir}", f"--out_dir={root / name}"
        )
        assert result.returncode == 0, result.stderr
    return root


def table_rows(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_metrics_start_with_the_run_and_carry_time_and_tokens(two_runs):
    records = read_records(two_runs / "fast")
    assert records[0]["kind"] == "run" and records[0]["config"]["learning_rate"] == 3e-3
    assert records[0]["tokenizer"] == "char" and records[0]["vocab_size"] == 65
    steps = [r for r in records if r["kind"] == "train"]
    assert [r["tokens"] for r in steps] == [r["iter"] * 16 * 32 for r in steps]
    seconds = [r["train_seconds"] for r in steps]
    assert seconds == sorted(seconds) and seconds[0] > 0
    evals = [r for r in records if r["kind"] == "eval"]
    assert all(r["eval_seconds"] > 0 for r in evals)
    # char-level ASCII text: one byte a token, so bits per byte is nats per token / ln 2
    assert all(math.isclose(r["val_bpb"], r["val_loss"] / math.log(2), rel_tol=1e-6) for r in evals)


def test_compare_draws_both_runs_and_tables_their_figures(two_runs, tmp_path):
    picture = tmp_path / "both.png"
    result = run_script("compare.py", two_runs / "slow", two_runs / "fast", f"--to={picture}")
    assert result.returncode == 0, result.stderr
    png = picture.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000  # three panels of curves, not an empty canvas
    rows = table_rows(result.stdout)
    assert set(rows) == {"slow", "fast"}
    bests = {}
    for name, cells in rows.items():
        records = read_records(two_runs / name)
        evals = [r for r in records if r["kind"] == "eval"]
        best = min(evals, key=lambda r: r["val_loss"])
        bests[name] = best["val_loss"]
        speeds = [r["tokens_per_sec"] for r in records if r["kind"] == "train"]
        assert cells[1] == f"learning_rate={'0.001' if name == 'slow' else '0.003'}"  # the only setting that differs
        assert cells[2] == f"{best['val_loss']:.4f}" and cells[3] == str(best["iter"])
        assert cells[4] == f"{best['tokens']:,}" and cells[5] == f"{best['train_seconds']:.1f}"
        assert cells[6] == f"{statistics.median(speeds[len(speeds) // 10 :]):,.0f}"
    # every run reaches the worst run's best: that run at its best, the other no later than its own best
    worst = max(bests, key=bests.get)
    worst_best = min((r for r in read_records(two_runs / worst) if r["kind"] == "eval"), key=lambda r: r["val_loss"])
    assert rows[worst][7] == f"{worst_best['train_seconds']:.1f}"
    assert f"train s to {bests[worst]:.4f}" in result.stdout


def test_compare_refuses_what_is_not_a_run(two_runs, tmp_path):
    result = run_script("compare.py", two_runs / "slow", tmp_path)
    assert result.returncode == 1 and "holds no metrics.jsonl" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_script("compare.py", two_runs / "slow")
    assert result.returncode == 1 and "two or more run folders" in result.stderr


def test_a_reader_that_goes_away_ends_compare_quietly(two_runs, tmp_path):
    """python compare.py a b | head -0: stdout is closed before the table is printed."""
    process = subprocess.Popen(
        [sys.executable, "compare.py", str(two_runs / "slow"), str(two_runs / "fast"), f"--to={tmp_path / 'x.png'}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 1 and "Traceback" not in stderr and stderr == "", stderr
