"""Lower-precision weights for generation: --quantize=int8 (nanogpt/generation/int8_weights.py) and
bfloat16 keep a trained model's loss within 1% of float32's (the figure bench/README.md states), the int8
rows are the nearest levels to the float weights, and a Hugging Face folder loads straight into the asked
dtype."""

import re
import subprocess

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_user_error, run_script
from nanogpt.hf import gpt_from_pretrained
from nanogpt.generation.int8_weights import Int8Linear, quantize_linears
from nanogpt.system import resolve_dtype


@pytest.mark.parametrize("in_features", [64, 24])  # PyTorch's CPU kernel, and the fallback for other widths
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int8_rows_are_the_nearest_levels_and_the_product_is_theirs(in_features, dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(in_features, 40).to(dtype)
    with torch.no_grad():
        linear.weight[3] = 0.0  # a row of zeros stays zeros (no division by a zero scale)
    int8 = Int8Linear(linear)
    weight, scale = linear.weight.detach().float(), int8.scale.float()[:, None]
    levels = int8.weight.float()
    assert int8.weight.dtype == torch.int8 and levels.abs().max() <= 127
    # the nearest of the 255 levels: off by at most half a step, and each row's largest magnitude is 127 steps
    assert ((levels * scale - weight).abs() <= scale / 2 * 1.01 + 1e-6).all()
    assert (levels.abs().amax(dim=1)[torch.arange(40) != 3] == 127).all() and (levels[3] == 0).all()
    x = torch.randn(5, 7, in_features).to(dtype)
    expected = F.linear(x.float(), levels * scale, linear.bias.float())
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(int8(x).float(), expected, atol=tolerance, rtol=tolerance)


def test_quantized_model_keeps_its_logits_and_frees_a_tied_head(hf_gpt2_dir):
    model = gpt_from_pretrained(str(hf_gpt2_dir), torch.bfloat16).eval()
    tokens = torch.randint(50257, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, _ = model(tokens, targets=tokens)
        assert quantize_linears(model) == 2 * 4 + 1  # four matrices a block, and the head
        after, _ = model(tokens, targets=tokens)
    assert isinstance(model.lm_head, Int8Linear) and model.transformer.wte.weight.dtype == torch.bfloat16
    assert ((after.float() - before.float()).norm() / before.float().norm()) < 0.02


def test_auto_dtype_is_bfloat16_on_the_cpu_under_int8():
    assert resolve_dtype("auto", "cpu", "int8") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "float32"


@pytest.mark.slow
def test_int8_and_bfloat16_keep_the_loss_within_one_percent(trained_run):
    """eval.py on the trained char model's val split, in each weight format sample.py offers."""
    losses = {}
    for name, flags in {
        "float32": ["--dtype=float32"],
        "bfloat16": ["--dtype=bfloat16"],
        "int8": ["--quantize=int8", "--dtype=auto"],
    }.items():
        result = run_script("eval.py", f"--out_dir={trained_run[0]}", "--device=cpu", *flags)
        assert result.returncode == 0, result.stderr
        losses[name] = float(re.search(r"loss ([0-9.]+) nats", result.stdout).group(1))
    assert losses["float32"] < 3.0  # a trained model, not one at chance (ln 65 = 4.17)
    for name in ("bfloat16", "int8"):
        assert abs(losses[name] / losses["float32"] - 1) < 0.01, losses


@pytest.mark.slow
def test_sample_takes_int8_and_refuses_other_formats(trained_run):
    result = run_script(
        "sample.py", f"--out_dir={trained_run[0]}", "--quantize=int8", "--num_samples=2", "--max_new_tokens=40"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("---------------") == 2 and len(result.stdout) > 80
    result = run_script("sample.py", f"--out_dir={trained_run[0]}", "--quantize=int4")
    assert_user_error(result, "quantize", "int4")


def test_untied_and_openai_named_folders_load_with_transformers_logits(tmp_path):
    """An untied GPT-2 keeps its own head; a file with GPT2Model's names (OpenAI's, no "transformer.")
    loads too; each straight into the dtype asked for."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=2, tie_word_embeddings=False)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    hf_model.save_pretrained(tmp_path / "untied")
    tokens = torch.randint(50257, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(tokens).logits
    ours = gpt_from_pretrained(str(tmp_path / "untied")).eval()
    assert not ours.config.tie_embeddings and ours.lm_head.weight is not ours.transformer.wte.weight
    torch.testing.assert_close(ours(tokens, targets=tokens)[0].detach(), expected, atol=1e-5, rtol=0)

    tied = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=2))
    tied.eval().save_pretrained(tmp_path / "openai")
    state = load_file(tmp_path / "openai" / "model.safetensors")
    save_file(
        {k.removeprefix("transformer."): v.contiguous() for k, v in state.items()},
        tmp_path / "openai" / "model.safetensors",
    )
    with torch.no_grad():
        expected = tied(tokens).logits
    ours = gpt_from_pretrained(str(tmp_path / "openai"), torch.bfloat16).eval()
    assert ours.lm_head.weight is ours.transformer.wte.weight and ours.lm_head.weight.dtype == torch.bfloat16
    assert all(p.is_contiguous() for p in ours.parameters())
    torch.testing.assert_close(ours.float()(tokens, targets=tokens)[0].detach(), expected, atol=2e-2, rtol=2e-2)


def test_a_damaged_weights_file_is_one_sentence(hf_gpt2_dir, tmp_path):
    folder = tmp_path / "damaged"
    folder.mkdir()
    (folder / "config.json").write_bytes((hf_gpt2_dir / "config.json").read_bytes())
    (folder / "model.safetensors").write_bytes((hf_gpt2_dir / "model.safetensors").read_bytes()[:5000])
    result = run_script("sample.py", f"--init_from={folder}", "--max_new_tokens=5", "--num_samples=1")
    progress, rest = result.stderr.split("\n", 1)  # the line loading prints first
    assert progress.startswith("loading GPT-2 weights from")
    result = subprocess.CompletedProcess(result.args, result.returncode, result.stdout, rest)
    assert_user_error(result, "could not read", "model.safetensors", "save the model again")
