"""lm-evaluation-harness itself scores serve.py: its local-completions model, with the tokenizer the server
serves (/tokenize), on a multiple-choice task written to disk, gets eval.py's log-likelihoods and scores."""

import json
import os
import random
import re
import subprocess
import sys

import pytest

from helpers import REPO, public_data, run_script, start_server, stop_server
from nanogpt.checkpoint import load_model_and_tokenizer
from nanogpt.multiple_choice import loglikelihoods, read_items

pytestmark = pytest.mark.slow  # it starts a server and the harness
pytest.importorskip("lm_eval", reason="the harness test needs the eval extra: pip install -e '.[eval]'")

TASK = """task: nanogpt_choices
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def hard_items(n, context=20, length=8, seed=1):
    """Four-way items from tiny Shakespeare's val split whose wrong choices are real text from elsewhere:
    hard enough for a tiny model that its score says something (about half right)."""
    text = public_data("tinyshakespeare/input.txt").read_text()
    val = text[int(len(text) * 0.9) :]
    rng = random.Random(seed)
    items = []
    while len(items) < n:
        starts = [rng.randrange(len(val) - context - length) for _ in range(4)]
        if val[starts[0] + context - 1].isspace():
            continue  # the harness moves a context's trailing space into each choice; eval.py scores them as given
        choices = [val[s + context : s + context + length] for s in starts]
        order = rng.sample(range(4), 4)
        items.append(
            {
                "context": val[starts[0] : starts[0] + context],
                "choices": [choices[o] for o in order],
                "label": order.index(0),
            }
        )
    return items


def test_lm_evaluation_harness_scores_the_server_as_eval_py_does(trained_run, tmp_path_factory, tmp_path):
    out_dir, _ = trained_run
    items_path = tmp_path / "items.jsonl"
    items_path.write_text("".join(json.dumps(item) + "\n" for item in hard_items(60)))
    (tmp_path / "nanogpt_choices.yaml").write_text(TASK.format(items=items_path))

    process, base, log = start_server(out_dir, tmp_path_factory)
    try:
        env = dict(
            os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf_cache")
        )
        harness = subprocess.run(
            [
                sys.executable,
                "-m",
                "lm_eval",
                "--model",
                "local-completions",
                # max_length: the model's context (the harness's default is 2048)
                "--model_args",
                f"base_url={base}/v1/completions,model=nanogpt,max_length=32",
                "--tasks",
                "nanogpt_choices",
                "--include_path",
                str(tmp_path),
                "--output_path",
                str(tmp_path / "results"),
                "--log_samples",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop_server(process, log)
    assert harness.returncode == 0, harness.stderr[-3000:]
    assert "Using remote tokenizer backend" in harness.stderr  # it found /tokenizer_info and /tokenize

    # each choice's log-likelihood as the harness got it from the server, against the scorer eval.py uses
    samples = [
        json.loads(line)
        for path in (tmp_path / "results").rglob("samples_nanogpt_choices_*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(samples) == 60
    model, tokenizer = load_model_and_tokenizer("resume", str(out_dir), "best")
    items = read_items(items_path, tokenizer, model.config.block_size)
    ours = loglikelihoods(model, items, 8, "cpu", tokenizer.vocab_size)
    for sample in samples:
        theirs = [float(resp[0][0]) for resp in sample["resps"]]
        assert theirs == pytest.approx([total for total, _ in ours[sample["doc_id"]]], abs=1e-4)

    result = run_script("eval.py", f"--out_dir={out_dir}", f"--task={items_path}", "--device=cpu")
    assert result.returncode == 0, result.stderr
    acc, acc_norm = map(float, re.search(r"acc ([\d.]+) .*acc_norm ([\d.]+)", result.stdout).groups())
    reported = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())["results"][
        "nanogpt_choices"
    ]
    # acc_norm: the harness divides by the choice's bytes, eval.py by its tokens: one byte a token here
    assert reported["acc,none"] == pytest.approx(acc, abs=1e-4) and reported["acc_norm,none"] == pytest.approx(
        acc_norm, abs=1e-4
    )
    assert 0.3 < acc < 0.9  # the items are neither trivial nor beyond the model
