"""Fitting a model in memory: the plan train.py prints against the memory a step really takes, the refusal
of a step that cannot fit, activation checkpointing (same gradients, fewer saved activations) and the
Adafactor optimizer."""

import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from helpers import REPO, SCRIPT_TIMEOUT, TINY_MODEL, assert_user_error, run_script
from nanogpt.config import TrainSettings, gpt_config
from nanogpt.errors import SettingError
from nanogpt.model import GPT, GPTConfig
from nanogpt.training.memory_plan import model_shapes, plan_memory

# train.py's own set-up and steps in a fresh Python: the peak resident set of three steps above the
# resident set before the model is built, and what train.py's plan said. The plan counts the bytes of
# the tensors alive at the peak; so that the resident set follows them, every block of more than 1 MiB
# is its own mapping, given back when freed (glibc's mmap threshold, fixed). train.py on the CPU keeps
# freed memory in the heap instead, which is faster and holds more (references/training.md, "Memory")
MEASURE = """
import ctypes, sys
from pathlib import Path
import torch
import train
from nanogpt.model import GPT, GPTConfig
from nanogpt.training.distributed import processes
from nanogpt.training.optimizers import make_optimizers

def kib(key):
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in lines if line.startswith(key + ":"))

M_MMAP_THRESHOLD = -3
train.keep_freed_memory = lambda: ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
cfg = train.read_settings(sys.argv[1:])
# one step of a tiny model first: the code pages of torch's kernels that a first step faults in are not the model's
warm = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=65))
x = torch.zeros(1, 16, dtype=torch.long)
warm(x, x)[1].backward()
make_optimizers(warm, 0.1, 1e-3, (0.9, 0.95), "cpu", cfg.optimizer)[0].step()
del warm
with processes(cfg) as procs:
    before = kib("VmRSS")
    setup, progress = train.set_up(cfg, procs)
    batch = setup.batches()
    for _ in range(3):
        _, batch = setup.step(batch, setup.batches)
    print(f"measured {(kib('VmHWM') - before) / 2**20:.3f} GiB")
"""

# three shapes of 200-230 MB of float32 weights: one the optimizer state dominates, one its activations,
# one with gradient accumulation and Adafactor
SHAPES = [
    ["--n_layer=4", "--n_embd=1024", "--n_head=16", "--batch_size=2", "--block_size=64"],
    ["--n_layer=8", "--n_embd=768", "--n_head=12", "--batch_size=8", "--block_size=256"],
    [
        "--n_layer=2",
        "--n_embd=1536",
        "--n_head=16",
        "--batch_size=4",
        "--block_size=128",
        "--gradient_accumulation_steps=2",
        "--optimizer=adafactor",
        "--beta2=0.95",  # the config's AdamW beta2, which Adafactor does not read
    ],
]


def gib(text, label):
    match = re.search(rf"{label}\s+([\d.,]+) (GiB|MiB)", text)
    return float(match.group(1).replace(",", "")) / (1024 if match.group(2) == "MiB" else 1)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("shape", SHAPES, ids=["optimizer-bound", "activation-bound", "accumulating-adafactor"])
def test_plan_is_within_15_percent_of_the_measured_peak(shape, data_dir, tmp_path):
    settings = [
        "config/train_shakespeare_char.py",
        f"--data_dir={data_dir}",
        f"--out_dir={tmp_path}",
        "--device=cpu",
        "--compile=False",
        "--dropout=0.0",
        "--gradient_accumulation_steps=1",
        *shape,
    ]
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *settings], cwd=REPO, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    planned, measured = gib(result.stdout, "peak"), gib(result.stdout, "measured")
    assert gib(result.stdout, "weights") > 0.18  # at least ~200 MB of weights
    assert abs(planned - measured) <= 0.15 * measured, result.stdout


@pytest.mark.parametrize(
    "switches",
    [
        {},
        dict(bias=False),
        dict(rotary=True, rmsnorm=True, tie_embeddings=False),
        dict(qk_norm=True, relu2=True, bias=False, rmsnorm=True),
    ],
)
def test_the_plan_counts_the_models_own_parameters(switches):
    config = GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=70, **switches)
    assert model_shapes(config) == {name: tuple(p.shape) for name, p in GPT(config).named_parameters()}


def test_plan_counts_what_each_switch_saves():
    cfg = TrainSettings(n_layer=4, n_embd=256, n_head=4, block_size=256, batch_size=8, gradient_accumulation_steps=1)
    shape = gpt_config(cfg, 50304)
    plain = plan_memory(shape, cfg, "float32", "cpu")
    n = plain.parameters
    assert n == sum(p.numel() for p in GPT(shape).parameters())
    assert (plain.weights, plain.gradients, plain.optimizer) == (4 * n, 4 * n, 8 * n)  # AdamW: 16 bytes a parameter
    adafactor = plan_memory(shape, replace(cfg, optimizer="adafactor"), "float32", "cpu")
    assert adafactor.optimizer < 0.01 * plain.optimizer
    recomputed = plan_memory(shape, replace(cfg, activation_checkpointing=True), "float32", "cpu")
    fused = plan_memory(shape, replace(cfg, fused_loss=True), "float32", "cpu")
    assert recomputed.activations < plain.activations and fused.activations < plain.activations
    lora = plan_memory(shape, replace(cfg, lora_rank=8), "bfloat16", "cpu")
    # the frozen base in bfloat16; per adapted layer rank x (in + out) parameters train
    per_block = 8 * ((256 + 768) + (256 + 256) + (256 + 1024) + (1024 + 256))
    assert lora.trained == 4 * per_block and lora.weights == 2 * n + 4 * lora.trained
    assert lora.gradients == 4 * lora.trained and lora.optimizer == 8 * lora.trained


def test_a_step_that_cannot_fit_is_refused_before_the_model_loads(data_dir, tmp_path):
    # about 3.5 TB of weights: never allocated, since the plan stops the run first
    result = run_script(
        "train.py",
        "config/train_shakespeare_char.py",
        f"--data_dir={data_dir}",
        f"--out_dir={tmp_path / 'o'}",
        "--device=cpu",
        "--compile=False",
        "--n_layer=200",
        "--n_embd=12288",
        "--n_head=96",
        "--block_size=64",
        "--batch_size=1",
    )
    assert_user_error(result, "a training step needs about")
    message = result.stderr
    # the weights dominate: Adafactor is named with its figure (and the config's AdamW beta2 reset, which it
    # would not use); checkpointing, which would save nothing here, is not
    assert (
        "cpu has" in message
        and "--optimizer=adafactor --beta2=0.95 (" in message
        and "--activation_checkpointing=True (" not in message
    )
    assert "--memory_check=warn" in message
    assert not (tmp_path / "o" / "ckpt.pt").exists()


def test_memory_check_warn_goes_on(capsys):
    # the same refusal as a warning: here a model that fits, with the free memory taken as 1 byte
    from nanogpt.training.memory_plan import check_memory_plan

    cfg = TrainSettings(n_layer=1, n_embd=64, n_head=2, block_size=32, batch_size=2, memory_check="warn")
    shape = gpt_config(cfg, 65)
    plan = replace(plan_memory(shape, cfg, "float32", "cpu"), free=1)
    check_memory_plan(plan, shape, cfg, "float32", 1, pretrained=True)  # says so, does not raise
    assert capsys.readouterr().out.startswith("warning: a training step needs about")
    with pytest.raises(SettingError, match="--lora_rank=16"):
        check_memory_plan(plan, shape, replace(cfg, memory_check="error"), "float32", 1, pretrained=True)


def saved_bytes(model, x):
    """Bytes of the distinct tensors the forward pass keeps for the backward, and the gradients."""
    storages = {}

    def keep(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        _, loss = model(x, x)
    loss.backward()
    return sum(storages.values()), loss, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_activation_checkpointing_gives_the_same_loss_and_gradients_with_less_saved(dropout):
    x = torch.randint(65, (4, 64), generator=torch.Generator().manual_seed(0))
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = GPT(
            GPTConfig(
                n_layer=4,
                n_head=4,
                n_embd=64,
                block_size=64,
                vocab_size=65,
                dropout=dropout,
                activation_checkpointing=recompute,
            )
        )
        results.append(saved_bytes(model, x))
    (plain_bytes, plain_loss, plain_grads), (recomputed_bytes, recomputed_loss, recomputed_grads) = results
    torch.testing.assert_close(recomputed_loss, plain_loss, atol=1e-6, rtol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(recomputed_grads[name], grad, atol=1e-6, rtol=0)
    assert recomputed_bytes < 0.5 * plain_bytes


@pytest.mark.slow
def test_adafactor_and_checkpointing_train_and_resume_exactly(data_dir, tmp_path):
    from helpers import assert_same_training

    common = [
        "train.py",
        "config/train_shakespeare_char.py",
        f"--data_dir={data_dir}",
        *TINY_MODEL,
        "--optimizer=adafactor",
        "--beta2=0.95",  # the config's AdamW beta2, which Adafactor does not read
        "--activation_checkpointing=True",
        "--learning_rate=1e-2",
        "--warmup_iters=0",
        "--eval_iters=5",
        "--log_interval=5",
    ]
    whole = run_script(
        *common, f"--out_dir={tmp_path / 'whole'}", "--max_iters=40", "--lr_decay_iters=40", "--eval_interval=20"
    )
    assert whole.returncode == 0, whole.stderr
    first = run_script(
        *common, f"--out_dir={tmp_path / 'split'}", "--max_iters=20", "--lr_decay_iters=40", "--eval_interval=20"
    )
    assert first.returncode == 0, first.stderr
    second = run_script(
        *common,
        f"--out_dir={tmp_path / 'split'}",
        "--max_iters=40",
        "--lr_decay_iters=40",
        "--eval_interval=20",
        "--init_from=resume",
    )
    assert second.returncode == 0, second.stderr
    assert_same_training(tmp_path / "whole", tmp_path / "split", tolerance=0)
    losses = [float(v) for v in re.findall(r"val loss ([\d.]+)", whole.stdout)]
    assert losses[-1] < losses[0] - 0.3  # 4.19 -> 3.71 when measured
