"""metrics.jsonl as the tools read it: lines that are not records are skipped, a folder in its place is
one sentence, and the tokens axis counts what each step saw, across a resume with another batch."""

import json
import shutil

import pytest

from helpers import TINY_MODEL, assert_user_error, run_script
from nanogpt.training.train_log import METRICS_NAME, read_records

FOREIGN = ["[1, 2, 3]", '{"hello": "world"}', '{"kind": "eval", "iter": 15}', '{"kind": "train", "iter": "3"}', "7"]


def test_lines_that_are_not_records_are_skipped(tmp_path):
    run = {"kind": "run", "iter": 0, "config": {}, "tokenizer": "char", "vocab_size": 65}
    step = {"kind": "train", "iter": 1, "loss": 4.2, "tokens": 512, "train_seconds": 0.1}
    evaluation = {"kind": "eval", "iter": 1, "train_loss": 4.1, "val_loss": 4.0, "tokens": 512, "train_seconds": 0.1}
    lines = [json.dumps(run), *FOREIGN, json.dumps(step), '{"kind": "eval", "it', json.dumps(evaluation)]
    (tmp_path / METRICS_NAME).write_text("\n".join(lines) + "\n")
    assert read_records(tmp_path) == [run, step, evaluation]


def train(data_dir, out_dir, *extra):
    return run_script(
        "train.py", *TINY_MODEL, f"--data_dir={data_dir}", "--dataset=shakespeare_char", f"--out_dir={out_dir}",
        "--eval_interval=10", "--eval_iters=2", "--log_interval=5", *extra,
    )  # fmt: skip


@pytest.mark.slow
def test_foreign_lines_a_folder_and_a_resume_with_another_batch(data_dir, tmp_path):
    out = tmp_path / "run"
    assert train(data_dir, out, "--max_iters=10", "--batch_size=4").returncode == 0
    with open(out / METRICS_NAME, "a") as f:
        f.write("\n".join(FOREIGN) + "\n")
    compared = run_script("compare.py", out, out, f"--to={tmp_path / 'compare.png'}")
    assert compared.returncode == 0, compared.stderr
    resumed = train(data_dir, out, "--max_iters=20", "--batch_size=8", "--init_from=resume")
    assert resumed.returncode == 0, resumed.stderr
    tokens = {r["iter"]: r["tokens"] for r in read_records(out) if r["kind"] == "train"}
    assert tokens == {5: 5 * 4 * 32, 10: 10 * 4 * 32, 15: 10 * 4 * 32 + 5 * 8 * 32, 20: 10 * 4 * 32 + 10 * 8 * 32}
    # another optimizer cannot continue the run: refused before anything is written, metrics.jsonl included
    log = (out / METRICS_NAME).read_bytes()
    for optimizer in ("adafactor", "muon"):
        changed = train(data_dir, out, "--max_iters=30", "--init_from=resume", f"--optimizer={optimizer}")
        assert_user_error(changed, f"cannot resume with --optimizer={optimizer}", "trained with adamw")
    assert (out / METRICS_NAME).read_bytes() == log
    # metrics.jsonl that is a folder: one sentence, and the checkpoint is kept
    other = tmp_path / "folder"
    shutil.copytree(out, other)
    (other / METRICS_NAME).unlink()
    (other / METRICS_NAME).mkdir()
    before = (other / "ckpt.pt").read_bytes()
    assert_user_error(train(data_dir, other, "--max_iters=30", "--init_from=resume"), "metrics.jsonl is not a file")
    assert (other / "ckpt.pt").read_bytes() == before
