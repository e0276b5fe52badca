"""Export to a transformers GPT-2 and back."""

import json
import shutil

import pytest
import torch

from helpers import TINY_MODEL, assert_user_error, run_script
from nanogpt.checkpoint import load_checkpoint, model_from_checkpoint

pytestmark = pytest.mark.slow  # every test here starts processes

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out_dir, _ = trained_run
    target = tmp_path_factory.mktemp("export") / "hf"
    result = run_script("export.py", f"--out_dir={out_dir}", f"--to={target}")
    assert result.returncode == 0, result.stderr
    return out_dir, target


def test_exported_char_model_loads_in_transformers_with_the_same_logits(exported):
    out_dir, target = exported
    ours = model_from_checkpoint(load_checkpoint(out_dir)).eval()
    assert not ours.config.bias  # trained without biases: the export fills GPT-2's with zeros
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(target).eval()
    tokens = torch.randint(65, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = ours(tokens, targets=tokens)
        torch.testing.assert_close(hf_model(tokens).logits, expected, atol=1e-5, rtol=0)
    vocab = json.loads((target / "char_vocab.json").read_text())
    assert len(vocab) == 65 and vocab["\n"] == 0


def test_exported_char_model_loads_with_autotokenizer_and_pipeline(exported):
    """AutoTokenizer once gave a char export a one-token GPT-2 tokenizer: "ROMEO:" encoded to nothing."""
    out_dir, target = exported
    chars = load_checkpoint(out_dir)["tokenizer"]["chars"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(target)
    text = "ROMEO:\nWhat, ho!"
    ids = tokenizer(text)["input_ids"]
    assert ids == [chars.index(c) for c in text] and tokenizer.decode(ids) == text
    with pytest.raises(Exception, match="UNK"):  # a character outside the vocabulary is no silent wrong id
        tokenizer("ROMEO: é")
    generate = transformers.pipeline("text-generation", model=str(target), device="cpu")
    out = generate("ROMEO:", max_new_tokens=20, do_sample=False)[0]["generated_text"]
    assert out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 20 and set(out) <= set(chars)


def test_exported_folder_samples_like_the_checkpoint(exported):
    out_dir, target = exported
    args = ("--num_samples=2", "--max_new_tokens=60", "--start=ROMEO:", "--seed=11")
    from_checkpoint = run_script("sample.py", f"--out_dir={out_dir}", *args)
    from_export = run_script("sample.py", f"--init_from={target}", *args)
    assert from_checkpoint.returncode == 0 and from_export.returncode == 0, from_export.stderr
    assert from_export.stdout == from_checkpoint.stdout


def test_exported_folder_trains_again(exported, data_dir, tmp_path):
    _, target = exported
    result = run_script(
        "train.py",
        *TINY_MODEL,
        "--dataset=shakespeare_char",
        f"--data_dir={data_dir}",
        f"--init_from={target}",
        f"--out_dir={tmp_path / 'again'}",
        "--max_iters=4",
        "--eval_interval=4",
        "--eval_iters=2",
    )
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "again")["model_args"]["bias"] is True  # GPT-2 format has biases


def test_bpe_model_export_drops_vocab_padding_and_writes_the_tokenizer(tmp_path):
    from nanogpt.checkpoint import save_checkpoint
    from nanogpt.model import GPT, GPTConfig
    from nanogpt.tokenizer import GPT2Tokenizer

    torch.manual_seed(0)
    args = dict(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=50304, bias=False, dropout=0.0)
    model = GPT(GPTConfig(**args))
    save_checkpoint(
        tmp_path / "run",
        {"model": model.state_dict(), "model_args": args, "tokenizer": {"tokenizer": "gpt2", "vocab_size": 50257}},
    )
    result = run_script("export.py", f"--out_dir={tmp_path / 'run'}", f"--to={tmp_path / 'hf'}")
    assert result.returncode == 0, result.stderr
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert hf_model.config.vocab_size == 50257
    text = "ROMEO: Wherefore art thou, <|endoftext|> Romeo?"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = GPT2Tokenizer().encode(text)
    assert hf_tokenizer(text)["input_ids"] == ids
    tokens = torch.tensor([ids])
    with torch.no_grad():
        expected, _ = model.eval()(tokens, targets=tokens)
        torch.testing.assert_close(hf_model(tokens).logits, expected[..., :50257], atol=1e-5, rtol=0)


def test_export_refuses_a_non_empty_target(exported, tmp_path):
    out_dir, target = exported
    before = (target / "model.safetensors").read_bytes()
    assert_user_error(
        run_script("export.py", f"--out_dir={out_dir}", f"--to={target}"),
        "already exists and is not empty",
        "--force=True",
    )
    assert (target / "model.safetensors").read_bytes() == before
    copy = tmp_path / "copy"
    shutil.copytree(target, copy)
    assert run_script("export.py", f"--out_dir={out_dir}", f"--to={copy}", "--force=True").returncode == 0


def test_export_bad_inputs(tmp_path):
    assert_user_error(run_script("export.py", f"--out_dir={tmp_path}", f"--to={tmp_path / 'hf'}"), "no checkpoint in")
    assert_user_error(run_script("export.py", f"--out_dir={tmp_path}"), "--to=FOLDER")
    assert_user_error(
        run_script("export.py", f"--out_dir={tmp_path}", "--to=/dev/null/sub"),
        "cannot create the folder /dev/null/sub (--to: Not a directory)",
    )
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    assert_user_error(
        run_script("export.py", f"--out_dir={tmp_path}", f"--to={tmp_path / 'hf'}"), "could not be loaded safely"
    )
    assert not (tmp_path / "hf").exists()


def test_exact_gelu_exports_as_gelu_and_imports_back(data_dir, tmp_path):
    """exact_gelu is still GPT-2's format, with activation_function "gelu": transformers computes the
    same logits, and the folder loads back with the switch set."""
    from nanogpt.checkpoint import save_checkpoint
    from nanogpt.hf import gpt_from_pretrained
    from nanogpt.model import GPT, GPTConfig

    meta = json.loads((data_dir / "shakespeare_char" / "meta.json").read_text())
    torch.manual_seed(0)
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=65, bias=True, dropout=0.0, exact_gelu=True)
    model = GPT(GPTConfig(**args)).eval()
    for block in model.transformer.h:
        block.mlp.c_fc.weight.data.mul_(40)  # GELU inputs of a few units, where erf and tanh GELU part
    save_checkpoint(tmp_path / "run", {"model": model.state_dict(), "model_args": args, "tokenizer": meta})
    result = run_script("export.py", f"--out_dir={tmp_path / 'run'}", f"--to={tmp_path / 'hf'}")
    assert result.returncode == 0, result.stderr
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert hf_model.config.activation_function == "gelu"
    tanh = GPT(GPTConfig(**dict(args, exact_gelu=False))).eval()
    tanh.load_state_dict(model.state_dict())
    back = gpt_from_pretrained(tmp_path / "hf").eval()
    assert back.config.exact_gelu
    tokens = torch.randint(65, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = model(tokens, targets=tokens)
        theirs_gap = (hf_model(tokens).logits - expected).abs().max()
        torch.testing.assert_close(back(tokens, targets=tokens)[0], expected, atol=1e-5, rtol=0)
        tanh_gap = (tanh(tokens, targets=tokens)[0] - expected).abs().max()
    # transformers' GELU is the exact one
    assert theirs_gap < 1e-5 and theirs_gap * 10 < tanh_gap, (theirs_gap, tanh_gap)
