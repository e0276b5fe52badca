"""fp8=True: refused in one sentence where float8 matmuls cannot run; on the CPU, torchao's float8 layers
(emulated there) are checked to sit where they should and to train like the bfloat16 model."""

import importlib.util
import json
import os

import pytest

from helpers import REPO, assert_user_error, run_script

pytestmark = pytest.mark.slow  # every test here starts processes

# scripts/test.sh installs torchao here, off the suite's own path (see there why)
FP8_EXTRA = REPO / ".venv" / "fp8-extra"

# run in a process of its own, with torchao on its path: the swapped layers, and 12 steps of memorising one
# batch with and without them
SWAP_AND_TRAIN = """
import json, torch
from torchao.float8.float8_linear import Float8Linear
from nanogpt.model import GPT, GPTConfig
from nanogpt.system import float8_training
from nanogpt.training.optimizers import make_optimizers

def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=96, bias=False))

def train(model, steps, x, y):
    optimizer = make_optimizers(model, 0.0, 3e-3, (0.9, 0.95), "cpu")[0]
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses

reference, model = tiny_gpt(), tiny_gpt()
names = list(model.state_dict())
swapped_count = float8_training(model)
generator = torch.Generator().manual_seed(1)
x, y = torch.randint(0, 96, (8, 32), generator=generator), torch.randint(0, 96, (8, 32), generator=generator)
print(json.dumps(dict(
    swapped_count=swapped_count,
    swapped=sorted(name for name, m in model.named_modules() if isinstance(m, Float8Linear)),
    same_state_dict=list(model.state_dict()) == names,
    head_tied=model.lm_head.weight is model.transformer.wte.weight,
    bf16=train(reference, 12, x, y),  # 12 steps: float8 is emulated on the CPU, about 1 s a step
    fp8=train(model, 12, x, y),
)))
"""


def test_fp8_is_refused_without_a_float8_gpu(tmp_path):
    for command in (("train.py", f"--out_dir={tmp_path}"), ("bench.py",)):
        result = run_script(*command, "--fp8=True", "--device=cpu")
        assert_user_error(result, "fp8=True needs an NVIDIA GPU with float8 matmuls", "not device 'cpu'")


def test_float8_layers_replace_the_blocks_linears_and_train_like_bfloat16():
    if not FP8_EXTRA.is_dir() and importlib.util.find_spec("torchao") is None:
        pytest.skip("torchao is not installed (scripts/test.sh installs it into .venv/fp8-extra)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FP8_EXTRA), str(REPO)])}
    result = run_script("-c", SWAP_AND_TRAIN, env=env)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["swapped_count"] == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each block
    assert found["swapped"] == sorted(
        f"transformer.h.{i}.{layer}"
        for i in range(2)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )
    assert found["same_state_dict"]  # checkpoints are the same either way
    assert found["head_tied"]  # the head stays tied to the embedding, and not float8
    bf16, fp8 = found["bf16"], found["fp8"]
    assert fp8[0] == pytest.approx(bf16[0], abs=0.02)  # the same model, its matmuls rounded to float8
    assert fp8[-1] < fp8[0] - 1.0  # it learns (memorising one batch) ...
    # ... about as far as bfloat16 does (measured: 4.5726 -> 2.8536 in bfloat16, 4.5724 -> 2.8546 in float8)
    assert abs(fp8[-1] - bf16[-1]) < 0.15 * (bf16[0] - bf16[-1])
