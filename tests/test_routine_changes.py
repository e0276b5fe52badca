"""The README's "what you touch" holds: on a scratch copy of the checkout, a model switch, a sampling
option and a step metric are added by the documented edits alone (README.md, Layout), and each reaches
everything the README says it does: train.py's settings, checkpoints and the memory plan; sample.py
and the server's /v1/completions; metrics.jsonl."""

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch

from helpers import REPO, SCRIPT_TIMEOUT, run_script, start_server, stop_server

# each edit: (file, the text it follows or replaces, the new text); one place each, as the README says
SWITCH = [
    (
        "nanogpt/model.py",
        "    zero_init_proj: bool = switch(",
        '    parallel_residual: bool = switch(False, "attention and MLP side by side on one norm", gpt2_format=False)\n'
        "    zero_init_proj: bool = switch(",
    ),
    (  # the use: the Block, its norm and its forward
        "nanogpt/model.py",
        "        self.ln_2 = make_norm(config)\n",
        "        self.ln_2 = None if config.parallel_residual else make_norm(config)\n",
    ),
    (
        "nanogpt/model.py",
        "        x = x + self.attn(self.ln_1(x), cache, layer, rotary)\n",
        "        if self.ln_2 is None:\n"
        "            h = self.ln_1(x)\n"
        "            return x + self.attn(h, cache, layer, rotary) + self.mlp(h)\n"
        "        x = x + self.attn(self.ln_1(x), cache, layer, rotary)\n",
    ),
]
OPTION = [
    (
        "nanogpt/generation/sampling.py",
        "    seed: int = 0\n",
        '    min_p: float | None = option(None, "keep tokens min_p as likely as the top one", "[0, 1]", 0.0, True)\n'
        "    seed: int = 0\n",
    ),
    (  # the use, in sample_tokens
        "nanogpt/generation/sampling.py",
        "def sample_tokens(logits, temperature, top_k, top_p, stream",
        "def sample_tokens(logits, temperature, top_k, top_p, min_p, stream",
    ),
    (
        "nanogpt/generation/sampling.py",
        "        scaled = scaled.masked_fill(torch.zeros_like(drop)",
        "        drop |= probs < min_p[:, None] * probs[:, :1]\n"
        "        scaled = scaled.masked_fill(torch.zeros_like(drop)",
    ),
]
METRIC = [
    (
        "nanogpt/training/step.py",
        "        return stats, (X, Y)\n",
        '        stats["weight_norm"] = torch.stack([p.detach().norm() for p in self.model.parameters()]).norm()\n'
        "        return stats, (X, Y)\n",
    ),
]
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--device=cpu"]


def scratch_copy(tmp_path, edits):
    copy = tmp_path / "checkout"
    ignored = shutil.ignore_patterns(".git", ".venv", ".nanogpt", "out*", "__pycache__", "*.bin", "wandb")
    shutil.copytree(REPO, copy, ignore=ignored)
    for path, old, new in edits:
        text = (copy / path).read_text()
        assert text.count(old) == 1, f"{path} no longer has the place the README names: {old!r}"
        (copy / path).write_text(text.replace(old, new))
    return copy


def test_the_readme_names_the_places_these_edits_touch():
    layout = (REPO / "README.md").read_text().split("## Layout", 1)[1]
    for place in ("`switch(...)`", "`GPTConfig`", "`option(...)`", "`sample_tokens`", "`TrainingStep`"):
        assert place in layout, place
    assert {path for path, _, _ in SWITCH + OPTION + METRIC} == {
        "nanogpt/model.py",
        "nanogpt/generation/sampling.py",
        "nanogpt/training/step.py",
    }


@pytest.mark.slow
def test_a_switch_an_option_and_a_metric_each_reach_every_script(data_dir, tmp_path, tmp_path_factory):
    copy = scratch_copy(tmp_path, SWITCH + OPTION + METRIC)
    out = copy / "out-scratch"
    train = run_script(
        "train.py", f"--data_dir={data_dir}", "--dataset=shakespeare_char", f"--out_dir={out}", *TINY,
        "--max_iters=4", "--eval_interval=4", "--eval_iters=1", "--log_interval=2", "--compile=False",
        "--parallel_residual=True", cwd=copy,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    # the switch: a setting, in the checkpoint, and counted by the memory plan as the model has it
    assert "--parallel_residual=False" in run_script("train.py", "--help", cwd=copy).stdout
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    assert checkpoint["model_args"]["parallel_residual"] and checkpoint["config"]["parallel_residual"]
    assert not any(".ln_2." in name for name in checkpoint["model"])
    counts = subprocess.run(
        [sys.executable, "-c", PLAN_AGAINST_MODEL], cwd=copy, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
    )
    planned, built, without_switch = map(int, counts.stdout.split())
    assert planned == built < without_switch, counts.stdout + counts.stderr
    # the metric: in every train record of metrics.jsonl
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["weight_norm"] > 0 for r in records if r["kind"] == "train"] == [True, True]
    # the option: a sample.py setting, checked against its limits, and used: min_p=1 keeps the top token alone
    sample = ["sample.py", f"--out_dir={out}", "--device=cpu", "--num_samples=1", "--max_new_tokens=30", "--seed=3"]
    assert "--min_p=None" in run_script("sample.py", "--help", cwd=copy).stdout
    refused = run_script(*sample, "--min_p=2", cwd=copy)
    assert refused.returncode == 1 and "min_p must be at least 0 and at most 1" in refused.stderr
    greedy = run_script(*sample, "--temperature=0", cwd=copy)
    top_only = run_script(*sample, "--temperature=1.5", "--top_k=None", "--min_p=1", cwd=copy)
    drawn = run_script(*sample, "--temperature=1.5", "--top_k=None", cwd=copy)
    assert greedy.returncode == top_only.returncode == drawn.returncode == 0, top_only.stderr
    assert top_only.stdout == greedy.stdout != drawn.stdout
    # ... and a field of /v1/completions, with the same effect and the same limits
    process, base, log = start_server(out, tmp_path_factory, "--checkpoint=latest", cwd=copy)
    try:
        body = {"prompt": "ROMEO:", "max_tokens": 30, "seed": 3}
        greedy_text = complete(base, dict(body, temperature=0))[1]["choices"][0]["text"]
        assert complete(base, dict(body, temperature=1.5, min_p=1.0))[1]["choices"][0]["text"] == greedy_text
        status, answer = complete(base, dict(body, min_p=-1))
        assert status == 400 and "min_p must be at least 0 and at most 1" in answer["error"]["message"]
    finally:
        stop_server(process, log)


# run in the scratch copy: the plan's parameter count, the built model's, and the plan's without the switch
PLAN_AGAINST_MODEL = """
from nanogpt.config import TrainSettings
from nanogpt.model import GPT, GPTConfig
from nanogpt.training.memory_plan import plan_memory
shape = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, parallel_residual=True)
plain = GPTConfig(**{**vars(shape), "parallel_residual": False})
planned, without_switch = (plan_memory(c, TrainSettings(), "float32", "cpu").parameters for c in (shape, plain))
print(planned, sum(p.numel() for p in GPT(shape).parameters()), without_switch)
"""


def complete(base, body):
    """(status, JSON answer) of one POST /v1/completions."""
    request = urllib.request.Request(
        base + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
