"""A BPE tokenizer of the user's own, trained on the WikiText sample with Hugging Face tokenizers: exact
round trips, and a model that trains, resumes, samples (with its data folder gone), evaluates and
exports with it; bad vocab sizes and damaged tokenizers end in one sentence."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from helpers import TINY_MODEL, assert_user_error, public_data, run_script
from nanogpt.checkpoint import load_checkpoint
from nanogpt.data import Dataset
from nanogpt.training.train_log import read_records
from nanogpt.tokenizer import tokenizer_from_meta

pytestmark = pytest.mark.slow  # every test here starts processes

VOCAB = 1024
BPE_RUN = TINY_MODEL + [
    "--dataset=custom",
    "--max_iters=40",
    "--lr_decay_iters=40",
    "--warmup_iters=5",
    "--eval_interval=20",
    "--eval_iters=5",
    "--log_interval=10",
    "--learning_rate=3e-3",
    "--block_size=64",
    "--batch_size=8",
]


@pytest.fixture(scope="module")
def wikitext():
    return public_data("webtext_sample/wikitext2_valid.txt")


@pytest.fixture(scope="module")
def bpe_data(wikitext, tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe_data")
    result = run_script(
        "data/custom/prepare.py",
        f"--input={wikitext}",
        "--tokenizer=bpe",
        f"--vocab_size={VOCAB}",
        f"--out_dir={root / 'custom'}",
    )
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def bpe_run(bpe_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe_run")
    result = run_script("train.py", *BPE_RUN, f"--data_dir={bpe_data}", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr
    return out


def test_prepared_ids_round_trip_exactly(bpe_data, wikitext):
    folder = bpe_data / "custom"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta == {"tokenizer": "bpe", "vocab_size": VOCAB, "tokenizer_file": "tokenizer.json", "dtype": "uint16"}
    tokenizer = tokenizer_from_meta(Dataset(bpe_data, "custom").meta)
    ids = np.concatenate([np.fromfile(folder / f"{split}.bin", dtype=np.uint16) for split in ("train", "val")]).tolist()
    text = wikitext.read_text()
    assert ids[-1] == tokenizer.eot_token  # the document ends with <|endoftext|>, as GPT-2's data
    assert tokenizer.decode(ids[:-1]) == text and tokenizer.encode(text, ordinary=True) == ids[:-1]
    odd = "caf\u00e9 \U0001f642 <|endoftext|>\ttabs\n\n  spaces \u4e2d\u6587"
    assert tokenizer.decode(tokenizer.encode(odd, ordinary=True)) == odd  # any text: every byte has a token
    assert tokenizer.encode("<|endoftext|>") == [tokenizer.eot_token]  # as a special token only when asked
    byte_lengths = tokenizer.token_byte_lengths()
    assert sum(byte_lengths[i] for i in ids[:-1]) == len(text.encode("utf-8"))


def test_model_trains_resumes_and_samples_without_its_data(bpe_run, bpe_data, tmp_path):
    evals = [r for r in read_records(bpe_run) if r["kind"] == "eval"]
    assert evals[0]["val_loss"] > evals[-1]["val_loss"] + 0.5  # measured: 6.94 -> 5.71
    assert load_checkpoint(bpe_run)["model_args"]["vocab_size"] == VOCAB  # already a multiple of 64
    resumed = run_script(
        "train.py", *BPE_RUN, "--max_iters=50", "--init_from=resume", f"--data_dir={bpe_data}", f"--out_dir={bpe_run}"
    )
    assert resumed.returncode == 0, resumed.stderr
    moved = tmp_path / "data"
    shutil.copytree(bpe_data, moved)
    shutil.rmtree(bpe_data / "custom")
    try:
        result = run_script(
            "sample.py", f"--out_dir={bpe_run}", "--start=The", "--num_samples=1", "--max_new_tokens=20", "--seed=3"
        )
    finally:
        shutil.copytree(moved / "custom", bpe_data / "custom")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The") and len(result.stdout) > 20


def test_export_loads_with_autotokenizer_and_gives_the_same_ids(bpe_run, bpe_data, wikitext, tmp_path):
    transformers = pytest.importorskip("transformers")
    result = run_script("export.py", f"--out_dir={bpe_run}", f"--to={tmp_path / 'hf'}")
    assert result.returncode == 0, result.stderr
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = tokenizer_from_meta(load_checkpoint(bpe_run)["tokenizer"])
    text = wikitext.read_text()[:50_000]
    assert theirs(text)["input_ids"] == ours.encode(text, ordinary=True)
    assert theirs.eos_token_id == ours.eot_token
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert model.config.vocab_size == VOCAB and model.config.eos_token_id == ours.eot_token
    # and train.py / sample.py read the exported folder with the same tokenizer
    sampled = run_script(
        "sample.py", f"--init_from={tmp_path / 'hf'}", "--start=The", "--num_samples=1", "--max_new_tokens=5"
    )
    assert sampled.returncode == 0, sampled.stderr


def test_char_and_bpe_models_compare_in_bits_per_byte(bpe_run, wikitext, tmp_path):
    char_data = tmp_path / "data"
    assert (
        run_script("data/custom/prepare.py", f"--input={wikitext}", f"--out_dir={char_data / 'custom'}").returncode == 0
    )
    char_run = tmp_path / "char_run"
    result = run_script("train.py", *BPE_RUN, f"--data_dir={char_data}", f"--out_dir={char_run}")
    assert result.returncode == 0, result.stderr
    result = run_script("compare.py", bpe_run, char_run, f"--to={tmp_path / 'c.png'}")
    assert result.returncode == 0, result.stderr
    assert "best val bits per byte" in result.stdout  # the tokenizers differ: nats per token would not compare
    # eval.py scores the same bytes of a text with either model
    sample_text = tmp_path / "t.txt"
    sample_text.write_text(wikitext.read_text()[:4000])
    scored = {}
    for run in (bpe_run, char_run):
        out = run_script("eval.py", f"--out_dir={run}", f"--input={sample_text}", "--device=cpu").stdout
        scored[run] = int(re.search(r"([\d,]+) bytes scored", out)[1].replace(",", ""))
    assert scored[bpe_run] == len(sample_text.read_bytes())  # from <|endoftext|>: every byte
    assert scored[char_run] == len(sample_text.read_bytes()) - 1  # the first character is given


def test_bad_vocab_sizes_and_damaged_tokenizers(bpe_data, bpe_run, wikitext, tmp_path):
    result = run_script(
        "data/custom/prepare.py",
        f"--input={wikitext}",
        "--tokenizer=bpe",
        "--vocab_size=200",
        f"--out_dir={tmp_path / 'x'}",
    )
    assert_user_error(result, "vocab_size must be at least 257")
    broken = tmp_path / "broken"
    shutil.copytree(bpe_data, broken)
    (broken / "custom" / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    result = run_script("train.py", *BPE_RUN, f"--data_dir={broken}", f"--out_dir={tmp_path / 'o'}")
    assert_user_error(result, "tokenizer.json cannot be read as a tokenizer.json", "prepare the dataset again")
    (broken / "custom" / "tokenizer.json").unlink()
    result = run_script("train.py", *BPE_RUN, f"--data_dir={broken}", f"--out_dir={tmp_path / 'o'}")
    assert_user_error(result, "tokenizer.json is missing")
    # a checkpoint whose saved tokenizer is damaged
    checkpoint = torch.load(bpe_run / "best.pt", weights_only=True)
    checkpoint["tokenizer"]["tokenizer_json"] = "not json"
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    torch.save(checkpoint, damaged / "best.pt")
    result = run_script("sample.py", f"--out_dir={damaged}", "--num_samples=1", "--max_new_tokens=5")
    assert_user_error(result, "the tokenizer saved in", "the checkpoint is damaged")
