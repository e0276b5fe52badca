"""A nanoGPT user's files carry over: its prepared data folders (train.bin, val.bin, meta.pkl) train with
their own vocabulary, and the ckpt.pt its train.py writes samples, evaluates, exports and resumes here.
The files are written the way nanoGPT's prepare.py and train.py write them."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from helpers import REPO, TINY_MODEL, assert_user_error, run_script
from nanogpt.checkpoint import load_checkpoint
from nanogpt.data import Dataset
from nanogpt.errors import DataError
from nanogpt.from_nanogpt import read_meta_pkl
from nanogpt.model import GPT, GPTConfig
from nanogpt.training.optimizers import make_optimizers
from nanogpt.training.resume import restore_optimizers

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=65, dropout=0.0)


def nanogpt_prepare(text, folder):
    """nanoGPT's data/shakespeare_char/prepare.py: sorted characters, uint16 ids, 90/10 split, meta.pkl."""
    chars = sorted(set(text))
    stoi, itos = {ch: i for i, ch in enumerate(chars)}, {i: ch for i, ch in enumerate(chars)}
    n = len(text)
    folder.mkdir(parents=True)
    np.array([stoi[c] for c in text[: int(n * 0.9)]], dtype=np.uint16).tofile(folder / "train.bin")
    np.array([stoi[c] for c in text[int(n * 0.9) :]], dtype=np.uint16).tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    return chars


def shakespeare(data_dir):
    """The tiny Shakespeare text, from the suite's prepared char dataset."""
    meta = json.loads((data_dir / "shakespeare_char" / "meta.json").read_text())
    ids = np.concatenate(
        [np.fromfile(data_dir / "shakespeare_char" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")]
    )
    return "".join(meta["chars"][i] for i in ids)


def nanogpt_checkpoint(out_dir, dataset="shakespeare_char", step=True):
    """ckpt.pt as nanoGPT's train.py saves it after compile=True: '_orig_mod.' keys, its AdamW (two
    groups over its model's parameters, position table second), best_val_loss a tensor, config a dict.
    nanoGPT's model is this one with the erf GELU (its MLP's nn.GELU())."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE, exact_gelu=True))
    named = dict(model.named_parameters())
    order = ["transformer.wte.weight", "transformer.wpe.weight"] + [
        n for n in named if "wte" not in n and "wpe" not in n
    ]
    groups = [
        {"params": [named[n] for n in order if named[n].dim() >= 2], "weight_decay": 0.1},
        {"params": [named[n] for n in order if named[n].dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99))
    if step:
        x = torch.randint(0, 65, (4, 32))
        model(x, x)[1].backward()
        optimizer.step()
    out_dir.mkdir(parents=True)
    config = dict(dataset=dataset, batch_size=4, compile=True, device="cpu", dtype="float32", learning_rate=1e-3)
    torch.save(
        {
            "model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "model_args": SHAPE,
            "iter_num": 5,
            "best_val_loss": torch.tensor(4.25),
            "config": config,
        },
        out_dir / "ckpt.pt",
    )
    return model, optimizer, order


def test_meta_pkl_that_could_run_code_is_refused_unread(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    nanogpt_prepare("some text\n" * 100, tmp_path / "evil")
    (tmp_path / "evil" / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 1, "itos": Payload()}))
    with pytest.raises(DataError, match="could run code, so it is not read"):
        Dataset(tmp_path, "evil")
    assert not marker.exists()
    (tmp_path / "odd.pkl").write_bytes(pickle.dumps({"vocab_size": 3, "itos": {0: "a", 1: "bc", 2: "d"}}))
    with pytest.raises(DataError, match="not nanoGPT's meta.pkl of a character vocabulary"):
        read_meta_pkl(tmp_path / "odd.pkl")


def test_a_nanogpt_checkpoint_loads_with_its_tokenizer_and_its_optimizer_moments(tmp_path, monkeypatch, capsys):
    model, optimizer, order = nanogpt_checkpoint(tmp_path / "out")
    chars = nanogpt_prepare("to be, or not to be: that is the question.\n" * 20, tmp_path / "data" / "shakespeare_char")
    monkeypatch.chdir(tmp_path)  # nanoGPT's sample.py looks for data/<dataset>/meta.pkl from where it runs
    checkpoint = load_checkpoint("out")
    assert checkpoint["tokenizer"] == {"tokenizer": "char", "vocab_size": len(chars), "chars": chars}
    assert checkpoint["model_args"]["exact_gelu"] and checkpoint["best_val_loss"] == 4.25
    assert "a nanoGPT checkpoint; its tokenizer: a vocabulary of" in capsys.readouterr().err
    ours = GPT(GPTConfig(**checkpoint["model_args"]))
    ours.load_state_dict(checkpoint["model"])
    optimizers = make_optimizers(ours, 0.1, 1e-3, (0.9, 0.99), "cpu")
    restore_optimizers(checkpoint, ours, optimizers, torch.amp.GradScaler("cpu", enabled=False), fsdp=False)
    assert "fresh" not in capsys.readouterr().out
    theirs = {name: optimizer.state[dict(model.named_parameters())[name]] for name in order}
    for name, p in ours.named_parameters():  # each parameter's moments are the ones nanoGPT kept for it
        assert torch.equal(optimizers[0].state[p]["exp_avg"], theirs[name]["exp_avg"]), name
    # an optimizer state of another shape is not forced on the model: a fresh AdamW, said in one line
    state = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    state["optimizer"]["param_groups"][0]["params"].pop()
    torch.save(state, tmp_path / "out" / "ckpt.pt")
    restore_optimizers(load_checkpoint("out"), ours, optimizers, torch.amp.GradScaler("cpu", enabled=False), False)
    assert "optimizer state does not fit this model's AdamW; starting a fresh one" in capsys.readouterr().out


def test_without_meta_pkl_a_nanogpt_checkpoint_reads_gpt2_tokens(tmp_path, monkeypatch):
    nanogpt_checkpoint(tmp_path / "out", dataset="openwebtext", step=False)
    monkeypatch.chdir(tmp_path)
    assert load_checkpoint("out")["tokenizer"]["tokenizer"] == "gpt2"


@pytest.mark.slow
def test_nanogpt_files_train_sample_evaluate_export_and_resume(data_dir, tmp_path):
    chars = nanogpt_prepare(shakespeare(data_dir), tmp_path / "data" / "shakespeare_char")
    # a nanoGPT data folder trains with its meta.pkl's characters (not as GPT-2 tokens)
    trained = run_script(
        REPO / "train.py", *TINY_MODEL, "--dataset=shakespeare_char", "--out_dir=ours", "--max_iters=2",
        "--eval_interval=2", "--eval_iters=1", cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert load_checkpoint(tmp_path / "ours")["tokenizer"]["chars"] == chars
    # nanoGPT's checkpoint: sample (its tokenizer), evaluate, export, resume
    model, _, _ = nanogpt_checkpoint(tmp_path / "out")
    sampled = run_script(REPO / "sample.py", "--out_dir=out", "--device=cpu", "--num_samples=1", cwd=tmp_path)
    assert sampled.returncode == 0 and set(sampled.stdout) <= set(chars) | {"-"}, sampled.stderr
    evaluated = run_script(REPO / "eval.py", "--out_dir=out", "--device=cpu", cwd=tmp_path)
    assert evaluated.returncode == 0 and "bits per byte" in evaluated.stdout, evaluated.stderr
    exported = run_script(REPO / "export.py", "--out_dir=out", "--to=hf", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 65, (2, 32))
    torch.testing.assert_close(hf(x).logits, model.eval()(x, x)[0], atol=1e-5, rtol=0)
    resumed = run_script(
        REPO / "train.py", "--dataset=shakespeare_char", "--out_dir=out", "--init_from=resume", "--device=cpu",
        "--compile=False", "--gradient_accumulation_steps=1", "--batch_size=4", "--max_iters=7",
        "--eval_interval=7", "--eval_iters=1", cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from out" in resumed.stdout and "fresh" not in resumed.stdout
    assert load_checkpoint(tmp_path / "out")["iter_num"] == 7
    changed = run_script(
        REPO / "train.py", "--dataset=shakespeare_char", "--out_dir=out", "--init_from=resume", "--device=cpu",
        "--optimizer=adafactor", cwd=tmp_path,
    )  # fmt: skip
    assert_user_error(changed, "cannot resume with --optimizer=adafactor", "trained with adamw")
