"""LoRA fine-tuning of a small random GPT-2 (saved with save_pretrained): it learns, only the adapters
change, its checkpoint is small and resumes bit for bit, every script reads it, and its PEFT export
loads in transformers with the same logits."""

import json

import pytest
import torch

from helpers import assert_user_error, run_script, run_torchrun
from nanogpt.checkpoint import load_checkpoint, model_from_checkpoint
from nanogpt.hf import gpt_from_pretrained

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.slow


def lora_run(hf_gpt2_dir, bpe_data_dir, out_dir, *extra):
    return run_script(
        "train.py",
        "config/finetune_shakespeare_lora.py",
        f"--init_from={hf_gpt2_dir}",
        f"--data_dir={bpe_data_dir}",
        f"--out_dir={out_dir}",
        "--block_size=64",
        "--batch_size=4",
        "--gradient_accumulation_steps=2",
        "--eval_iters=10",
        "--device=cpu",
        "--compile=False",
        "--lora_rank=8",
        "--learning_rate=1e-2",
        *extra,
    )


@pytest.fixture(scope="module")
def lora_out(hf_gpt2_dir, bpe_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    result = lora_run(hf_gpt2_dir, bpe_data_dir, out, "--max_iters=20", "--eval_interval=10")
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def val_losses(out):
    return [
        r["val_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"
    ]


def test_lora_lowers_val_loss_and_changes_only_the_adapters(lora_out, hf_gpt2_dir):
    out, stdout = lora_out
    losses = val_losses(out)
    assert losses[-1] < losses[0] - 0.1, losses  # 10.82 -> 10.45 when measured
    assert "(LoRA adapters) train" in stdout and "memory plan" in stdout
    checkpoint = load_checkpoint(out, "latest")
    assert checkpoint["lora"] == dict(rank=8, alpha=32.0, targets="both", dropout=0.05, base=str(hf_gpt2_dir.resolve()))
    assert checkpoint["model"] and all(".lora_" in key for key in checkpoint["model"])
    # the frozen weights of the rebuilt model are the base's, bit for bit; the adapters' B has moved from 0
    model = model_from_checkpoint(checkpoint, merge=False)
    base = gpt_from_pretrained(str(hf_gpt2_dir)).state_dict()
    for name, value in model.state_dict().items():
        if ".lora_" not in name:
            expected = base[name.replace(".base_layer", "")]
            # wpe cropped to 64
            assert torch.equal(value, expected[: len(value)] if name == "transformer.wpe.weight" else expected), name
    assert all(value.abs().max() > 0 for name, value in checkpoint["model"].items() if "lora_B" in name)


def test_lora_checkpoint_is_under_5_percent_of_a_full_fine_tune(lora_out, hf_gpt2_dir, bpe_data_dir, tmp_path):
    full = run_script(
        "train.py",
        "config/finetune_shakespeare.py",
        f"--init_from={hf_gpt2_dir}",
        f"--data_dir={bpe_data_dir}",
        f"--out_dir={tmp_path}",
        "--block_size=64",
        "--batch_size=4",
        "--gradient_accumulation_steps=1",
        "--max_iters=1",
        "--eval_interval=1",
        "--eval_iters=1",
        "--device=cpu",
        "--compile=False",
    )
    assert full.returncode == 0, full.stderr
    lora_bytes, full_bytes = (lora_out[0] / "ckpt.pt").stat().st_size, (tmp_path / "ckpt.pt").stat().st_size
    assert lora_bytes < 0.05 * full_bytes, (lora_bytes, full_bytes)


def test_lora_resumes_bit_for_bit(hf_gpt2_dir, bpe_data_dir, tmp_path):
    whole = lora_run(hf_gpt2_dir, bpe_data_dir, tmp_path / "whole", "--max_iters=10", "--eval_interval=5")
    first = lora_run(hf_gpt2_dir, bpe_data_dir, tmp_path / "split", "--max_iters=5", "--eval_interval=5")
    second = lora_run(
        hf_gpt2_dir, bpe_data_dir, tmp_path / "split", "--max_iters=10", "--eval_interval=5", "--init_from=resume"
    )
    for result in (whole, first, second):
        assert result.returncode == 0, result.stderr
    assert val_losses(tmp_path / "whole") == val_losses(tmp_path / "split")
    a, b = load_checkpoint(tmp_path / "whole", "latest"), load_checkpoint(tmp_path / "split", "latest")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    # resuming with other adapters is refused before anything is written
    again = lora_run(
        hf_gpt2_dir, bpe_data_dir, tmp_path / "split", "--max_iters=12", "--init_from=resume", "--lora_rank=4"
    )
    assert_user_error(again, "is a LoRA run of", "--lora_rank=8")


def test_merged_model_gives_the_adapter_model_logits(lora_out):
    checkpoint = load_checkpoint(lora_out[0], "latest")
    adapted, merged = model_from_checkpoint(checkpoint, merge=False).eval(), model_from_checkpoint(checkpoint).eval()
    assert not any(".lora_" in name for name in merged.state_dict())
    tokens = torch.randint(50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens, tokens)[0], adapted(tokens, tokens)[0], atol=1e-5, rtol=0)


def test_scripts_read_a_lora_checkpoint(lora_out, tmp_path):
    out = lora_out[0]
    sampled = run_script(
        "sample.py", f"--out_dir={out}", "--num_samples=1", "--max_new_tokens=5", "--start=ROMEO:", "--device=cpu"
    )
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("ROMEO:")
    evaluated = run_script("eval.py", f"--out_dir={out}", "--device=cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    assert abs(float(evaluated.stdout.split("loss ")[1].split()[0]) - val_losses(out)[-1]) < 0.2


def test_exports_load_in_transformers_and_peft_with_the_same_logits(lora_out, hf_gpt2_dir, tmp_path):
    out = lora_out[0]
    merged_dir, adapters_dir = tmp_path / "merged", tmp_path / "adapters"
    assert run_script("export.py", f"--out_dir={out}", f"--to={merged_dir}").returncode == 0
    result = run_script("export.py", f"--out_dir={out}", f"--to={adapters_dir}", "--adapters_only=True")
    assert result.returncode == 0, result.stderr
    assert json.loads((adapters_dir / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    ours = model_from_checkpoint(load_checkpoint(out, "best")).eval()  # what export.py reads
    base = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2_dir).eval()
    tokens = torch.randint(50257, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base_logits = base(tokens).logits
        with_adapters = peft.PeftModel.from_pretrained(base, adapters_dir).eval()
        expected = ours(tokens, tokens)[0]
        torch.testing.assert_close(with_adapters(tokens).logits, expected, atol=1e-5, rtol=0)
        merged = transformers.GPT2LMHeadModel.from_pretrained(merged_dir).eval()
        torch.testing.assert_close(merged(tokens).logits, expected, atol=1e-5, rtol=0)
    assert (expected - base_logits).abs().max() > 1e-3  # the adapters changed the model


def test_lora_under_ddp_and_compile(hf_gpt2_dir, bpe_data_dir, tmp_path):
    result = run_torchrun(
        "train.py",
        "config/finetune_shakespeare_lora.py",
        f"--init_from={hf_gpt2_dir}",
        f"--data_dir={bpe_data_dir}",
        f"--out_dir={tmp_path}",
        "--block_size=64",
        "--batch_size=4",
        "--gradient_accumulation_steps=2",
        "--eval_iters=4",
        "--device=cpu",
        "--compile=True",
        "--lora_rank=8",
        "--learning_rate=1e-2",
        "--max_iters=6",
        "--eval_interval=6",
    )
    assert result.returncode == 0, result.stderr
    losses = val_losses(tmp_path)
    assert losses[-1] < losses[0], losses
    assert all(".lora_" in key for key in load_checkpoint(tmp_path)["model"])


def test_lora_refusals(hf_gpt2_dir, bpe_data_dir, data_dir, tmp_path):
    out = f"--out_dir={tmp_path / 'o'}"
    base = (
        "train.py",
        "config/finetune_shakespeare_lora.py",
        f"--data_dir={bpe_data_dir}",
        out,
        "--device=cpu",
        "--block_size=64",
    )
    assert_user_error(run_script(*base, "--init_from=scratch"), "lora_rank trains adapters on pretrained weights")
    assert_user_error(
        run_script(*base, f"--init_from={hf_gpt2_dir}", "--optimizer=muon"),
        "lora_rank cannot be combined with optimizer='muon'",
    )
    assert_user_error(
        run_script(*base, f"--init_from={hf_gpt2_dir}", "--fsdp=True"), "lora_rank cannot be combined with fsdp"
    )
    assert not (tmp_path / "o").exists()
    # a full model's checkpoint: not resumed as LoRA, and no adapters to export
    tiny = (
        "train.py",
        "config/train_shakespeare_char.py",
        f"--data_dir={data_dir}",
        out,
        "--device=cpu",
        "--compile=False",
        "--n_layer=1",
        "--n_embd=32",
        "--n_head=2",
        "--block_size=16",
        "--batch_size=2",
        "--max_iters=1",
        "--eval_interval=1",
        "--eval_iters=1",
    )
    full = run_script(*tiny)
    assert full.returncode == 0, full.stderr
    resumed = run_script(*tiny, "--init_from=resume", "--lora_rank=8")
    assert_user_error(resumed, "is a full model, not a LoRA run")
    exported = run_script("export.py", out, f"--to={tmp_path / 'a'}", "--adapters_only=True")
    assert_user_error(exported, "is a full model, not a LoRA run: it has no adapters")
