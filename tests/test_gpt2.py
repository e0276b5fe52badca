"""GPT-2 scale paths on a small scale: HF weight import, BPE data, fine-tuning, custom and web-text
data, and DDP through torchrun (gloo, CPU)."""

import json

import numpy as np
import pytest
import torch

from helpers import (
    DDP_RUN,
    REPO,
    TINY_MODEL,
    assert_same_training,
    assert_user_error,
    eval_losses,
    public_data,
    run_script,
    run_torchrun,
    run_two_launchers,
    skip_when_offline,
)
from nanogpt.checkpoint import load_checkpoint
from nanogpt.hf import gpt_from_pretrained
from nanogpt.tokenizer import GPT2Tokenizer

transformers = pytest.importorskip("transformers")


def test_imported_weights_give_the_same_logits(hf_gpt2_dir):
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2_dir).eval()
    ours = gpt_from_pretrained(str(hf_gpt2_dir)).eval()
    tokens = torch.randint(50257, (2, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf_model(tokens).logits
        logits, _ = ours(tokens, targets=tokens)  # with targets: logits at every position
    assert ours.config.block_size == 128 and ours.config.bias
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_shakespeare_bpe_counts_and_roundtrip(bpe_data_dir):
    folder = bpe_data_dir / "shakespeare"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta == {"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16"}
    train = np.fromfile(folder / "train.bin", dtype=np.uint16)
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)
    assert (len(train), len(val)) == (301_966, 36_059)  # the counts nanoGPT documents
    text = public_data("tinyshakespeare/input.txt").read_text()
    tokenizer = GPT2Tokenizer()
    assert tokenizer.decode(train.tolist()) + tokenizer.decode(val.tolist()) == text


# measured on the 2-core CPU: val loss went from 10.82 (about ln 50257) to 7.67 and 7.83 (two seeds) in 15 steps
FINETUNE_VAL_LOSS_BOUND = 9.5


@pytest.mark.slow
def test_finetune_from_a_local_hf_gpt2_lowers_val_loss(hf_gpt2_dir, bpe_data_dir, tmp_path):
    out = tmp_path / "ft"
    result = run_script(
        "train.py",
        "config/finetune_shakespeare.py",
        f"--init_from={hf_gpt2_dir}",
        f"--data_dir={bpe_data_dir}",
        f"--out_dir={out}",
        "--block_size=64",
        "--batch_size=4",
        "--gradient_accumulation_steps=2",
        "--max_iters=15",
        "--eval_interval=15",
        "--eval_iters=10",
        "--learning_rate=3e-3",
        "--device=cpu",
        "--compile=False",
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in records if r["kind"] == "eval"]
    assert abs(evals[0] - np.log(50257)) < 0.5  # random weights guess uniformly
    assert evals[-1] < FINETUNE_VAL_LOSS_BOUND
    checkpoint = load_checkpoint(out)
    assert checkpoint["model_args"]["block_size"] == 64  # cropped from 128
    assert checkpoint["model_args"]["dropout"] == 0.1  # the config's dropout replaces GPT-2's

    sampled = run_script("sample.py", f"--out_dir={out}", "--num_samples=2", "--max_new_tokens=20", "--start=ROMEO:")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("ROMEO:")


@pytest.mark.slow
def test_sample_from_a_hf_folder(hf_gpt2_dir):
    result = skip_when_offline(
        run_script("sample.py", f"--init_from={hf_gpt2_dir}", "--num_samples=1", "--max_new_tokens=10", "--start=Hello")
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Hello")


@pytest.mark.slow
def test_pretrained_bad_inputs(hf_gpt2_dir, bpe_data_dir, data_dir, tmp_path):
    base = (
        "train.py",
        "config/finetune_shakespeare.py",
        f"--data_dir={bpe_data_dir}",
        f"--out_dir={tmp_path / 'o'}",
        "--device=cpu",
    )
    assert_user_error(run_script(*base, "--init_from=gpt2-huge"), "init_from 'gpt2-huge' is not a GPT-2 model")
    assert_user_error(
        run_script(*base, f"--init_from={hf_gpt2_dir}", "--block_size=256"),
        "block_size 256 is larger than the 128 positions",
    )
    not_gpt2 = tmp_path / "bert"
    not_gpt2.mkdir()
    (not_gpt2 / "config.json").write_text('{"model_type": "bert"}')
    assert_user_error(run_script(*base, f"--init_from={not_gpt2}"), "holds a 'bert' model, not GPT-2")
    assert_user_error(run_script(*base, f"--init_from={tmp_path}"), "holds no config.json")
    char_data = (
        "train.py",
        "config/finetune_shakespeare.py",
        "--dataset=shakespeare_char",
        f"--data_dir={data_dir}",
        f"--out_dir={tmp_path / 'o'}",
    )
    assert_user_error(
        run_script(*char_data, f"--init_from={hf_gpt2_dir}", "--block_size=64"),
        "reads a vocabulary of 50257 GPT-2 BPE tokens, but dataset 'shakespeare_char' has a vocabulary of 65 "
        "characters",
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "tokenizer,text,dtype",
    [
        ("char", "hello world, hello custom data\n" * 40, "uint16"),
        ("gpt2", "Some ordinary English text about nothing much.\n" * 40, "uint16"),
        # more than 65,536 distinct characters: ids no longer fit in 16 bits
        (
            "char",
            "".join(chr(c) for c in range(0x4E00, 0x4E00 + 20000))
            + "".join(chr(c) for c in range(0x20000, 0x20000 + 50000)),
            "uint32",
        ),
    ],
)
def test_custom_data_roundtrip(tmp_path, tokenizer, text, dtype):
    from nanogpt.data import load_meta
    from nanogpt.tokenizer import tokenizer_from_meta

    source = tmp_path / "texts"
    source.mkdir()
    (source / "a.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "data" / "custom"
    result = skip_when_offline(
        run_script("data/custom/prepare.py", f"--input={source}", f"--tokenizer={tokenizer}", f"--out_dir={out}")
    )
    assert result.returncode == 0, result.stderr
    meta = load_meta(out)
    assert meta["dtype"] == dtype
    ids = np.concatenate([np.fromfile(out / f"{s}.bin", dtype=dtype) for s in ("train", "val")])
    assert tokenizer_from_meta(meta).decode(ids.tolist()) == text
    if dtype == "uint32":
        assert ids.max() >= 2**16
    trained = run_script(
        "train.py",
        *TINY_MODEL,
        "--dataset=custom",
        f"--data_dir={tmp_path / 'data'}",
        f"--out_dir={tmp_path / 'run'}",
        "--max_iters=3",
        "--eval_iters=2",
        "--eval_interval=3",
    )
    assert trained.returncode == 0, trained.stderr


@pytest.mark.slow
def test_webtext_prepare_end_to_end(tmp_path):
    out = tmp_path / "owt"
    result = run_script(
        "data/openwebtext/prepare.py",
        f"--input={public_data('webtext_sample/wikitext2_valid.txt').parent}",
        "--num_proc=2",
        "--val_fraction=0.05",
        f"--out_dir={out}",
    )
    assert result.returncode == 0, result.stderr
    assert "tokens/s with num_proc=2" in result.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == "gpt2" and meta["dtype"] == "uint16"
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    eot = GPT2Tokenizer().eot_token
    assert len(train) > 400_000 and len(val) > 10_000
    assert train[-1] == eot and val[-1] == eot  # every document ends with <|endoftext|>
    assert (train == eot).sum() > 4000  # one per non-empty line of the two files
    assert f"{len(train):,} tokens" in result.stdout


@pytest.mark.slow
def test_ddp_matches_a_single_process_and_two_launchers_match_one(data_dir, tmp_path):
    """2 processes x 1 accumulation step == 1 process x 2 accumulation steps: same data, same update. And
    the multi-node path (torchrun on each machine, a c10d rendezvous), rehearsed with two launchers of one
    process each on this machine, equals one launcher with 2 processes."""
    args = ["train.py", *DDP_RUN, "--gradient_accumulation_steps=2", f"--data_dir={data_dir}"]
    ddp_out, single_out, nodes_out = tmp_path / "ddp", tmp_path / "single", tmp_path / "nodes"
    ddp = run_torchrun(*args, f"--out_dir={ddp_out}")
    assert ddp.returncode == 0, ddp.stderr
    assert "2 process(es)" in ddp.stdout
    assert "tokens per iteration: 512 = 1 accumulation steps x 2 processes x 8 sequences x 32 tokens" in ddp.stdout
    single = run_script(*args, f"--out_dir={single_out}")
    assert single.returncode == 0, single.stderr
    assert [i for i, _ in eval_losses(ddp_out)] == [0, 10, 20]
    assert_same_training(ddp_out, single_out)

    nodes = run_two_launchers(*args, f"--out_dir={nodes_out}")
    for node in nodes:
        assert node.returncode == 0, node.stderr
    assert "2 process(es)" in nodes[0].stdout + nodes[1].stdout
    assert_same_training(nodes_out, ddp_out)


@pytest.mark.slow
def test_ddp_with_more_processes_than_the_batch_allows(data_dir, tmp_path):
    result = run_torchrun(
        "train.py", *DDP_RUN, "--gradient_accumulation_steps=3", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'o'}"
    )
    assert result.returncode != 0
    assert "error: gradient_accumulation_steps (3) must be a multiple of the number of processes (2)" in result.stderr


@pytest.mark.slow
def test_bench_prints_speed(data_dir):
    result = run_script(
        "bench.py",
        "--n_layer=2",
        "--n_head=2",
        "--n_embd=64",
        "--block_size=32",
        "--batch_size=4",
        "--device=cpu",
        "--dataset=shakespeare_char",
        f"--data_dir={data_dir}",
        "--iters=3",
        "--warmup_iters=1",
    )
    assert result.returncode == 0, result.stderr
    assert "time per iteration:" in result.stdout and "tokens/s" in result.stdout
    assert "of this CPU's measured float32 matmul peak" in result.stdout
    synthetic = run_script(
        "bench.py",
        "--n_layer=1",
        "--n_head=1",
        "--n_embd=32",
        "--block_size=16",
        "--batch_size=2",
        "--real_data=False",
        "--device=cpu",
        "--iters=2",
        "--warmup_iters=1",
    )
    assert synthetic.returncode == 0, synthetic.stderr
    # train.py's step, accumulation and Muon included: tokens/s count every micro-batch
    muon = run_script(
        "bench.py",
        "--n_layer=1",
        "--n_head=1",
        "--n_embd=32",
        "--block_size=16",
        "--batch_size=2",
        "--real_data=False",
        "--device=cpu",
        "--iters=2",
        "--warmup_iters=1",
        "--gradient_accumulation_steps=3",
        "--optimizer=muon",
    )
    assert muon.returncode == 0, muon.stderr
    assert "3 x 2 x 16 tokens a step, optimizer muon" in muon.stdout and "timed: 2 steps, last loss" in muon.stdout
    # a training config's step: its model switches and optimizer count, its other keys are left out
    modern = run_script(
        "bench.py",
        "config/train_gpt2_modern.py",
        "--n_layer=1",
        "--n_head=2",
        "--n_embd=32",
        "--block_size=16",
        "--batch_size=2",
        "--real_data=False",
        "--gradient_accumulation_steps=1",
        "--device=cpu",
        "--iters=1",
        "--warmup_iters=0",
        "--fused_loss=True",
    )
    assert modern.returncode == 0, modern.stderr
    assert "optimizer muon" in modern.stdout
    assert (
        "changed from GPT-2: rotary=True, rmsnorm=True, qk_norm=True, relu2=True, tie_embeddings=False, "
        "logit_softcap=30.0, zero_init_proj=True, fused_loss=True"
    ) in modern.stdout


@pytest.mark.slow
def test_profile_lists_where_the_step_time_goes():
    result = run_script(
        "bench/profile_step.py",
        "--n_layer=1",
        "--n_head=2",
        "--n_embd=32",
        "--block_size=16",
        "--batch_size=2",
        "--steps=1",
        "--rows=1000",
    )
    assert result.returncode == 0, result.stderr
    assert "aten::mm" in result.stdout
    share = float(result.stdout.split("matrix multiplies and attention ")[1].split("%")[0])
    # the share is the matmul and attention rows' Self CPU % in the table it prints (every row, with --rows=1000)
    import runpy

    matmul_ops = runpy.run_path(str(REPO / "bench" / "profile_step.py"))["MATMUL_OPS"]

    def is_matmul(name):  # the table cuts long names to "...": a cut name stands for the op it begins
        return name in matmul_ops or name.endswith("...") and any(op.startswith(name[:-3]) for op in matmul_ops)

    rows = [line.split() for line in result.stdout.splitlines() if line.split() and is_matmul(line.split()[0])]
    listed = sum(float(row[1].rstrip("%")) for row in rows)
    assert rows and share == pytest.approx(listed, abs=0.05 * len(rows) + 0.05)


@pytest.mark.slow
def test_fsdp_matches_ddp_and_its_checkpoint_loads_unsharded(data_dir, tmp_path):
    outs = {}
    for fsdp in (False, True):
        outs[fsdp] = tmp_path / f"fsdp_{fsdp}"
        result = run_torchrun(
            "train.py",
            *DDP_RUN,
            "--gradient_accumulation_steps=4",
            f"--fsdp={fsdp}",
            f"--data_dir={data_dir}",
            f"--out_dir={outs[fsdp]}",
        )
        assert result.returncode == 0, result.stderr

    assert_same_training(outs[True], outs[False])  # the same keys too: a plain state dict, gathered from the shards
    # the FSDP checkpoint resumes in one process, without sharding
    resumed = run_script(
        "train.py",
        *DDP_RUN,
        "--gradient_accumulation_steps=8",
        "--max_iters=25",
        f"--data_dir={data_dir}",
        f"--out_dir={outs[True]}",
        "--init_from=resume",
    )
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(outs[True])["iter_num"] == 25


@pytest.mark.slow
def test_fsdp_without_torchrun(data_dir, tmp_path):
    result = run_script("train.py", *DDP_RUN, "--fsdp=True", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'o'}")
    assert_user_error(result, "fsdp=True shards the model over processes that torchrun starts")
