"""Prepare OpenWebText (or any large text collection) in GPT-2 BPE tokens, for pretraining GPT-2.

    python data/openwebtext/prepare.py                          # the Hugging Face dataset (~54 GB download)
    python data/openwebtext/prepare.py --input=folder --num_proc=4   # local .txt / .jsonl / .parquet files
    python data/openwebtext/prepare.py --max_docs=10000          # a small slice, to try things out

Loads the documents with Hugging Face `datasets` (the parquet copy of Skylion007/openwebtext, which
current `datasets` versions load; nanoGPT's loading script no longer runs), tokenises them in
parallel with GPT-2 BPE (tiktoken), ending each document with <|endoftext|>, holds out a small val
split, and writes train.bin / val.bin (uint16) and meta.json, with progress bars.
Result for the full dataset: about 9B train tokens (17 GB) and 4M val tokens.
"""

import errno
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, installed or not

from nanogpt.command_line import load_config, setting  # noqa: E402
from nanogpt.data import shown_path, token_dtype  # noqa: E402
from nanogpt.errors import DataError, run_main  # noqa: E402
from nanogpt.files import check_writable_folder, hold_folder, write_atomically  # noqa: E402
from nanogpt.tokenizer import GPT2Tokenizer  # noqa: E402
from nanogpt.web_documents import check_input_apart, is_text, load_documents  # noqa: E402

HERE = Path(__file__).resolve().parent


@dataclass
class OpenWebTextSettings:
    input: str = setting("", "a folder (or file) of .txt, .jsonl or .parquet documents instead of the hub")
    hf_dataset: str = setting("Skylion007/openwebtext", "dataset on the Hugging Face hub")
    revision: str = setting("refs/convert/parquet", "hub revision (the parquet conversion)")
    num_proc: int = setting(8, "tokenising processes", within="[1, 1024]")
    max_docs: int = setting(0, "use only the first N documents (0: all)", within="[0, inf)")
    val_fraction: float = setting(0.0005, "share of documents held out for val", within="(0, 1)")
    seed: int = setting(2357, "seed of the train/val split", within="[0, 4294967295]")  # numpy's seed range
    out_dir: str = setting("", "where to write train.bin, val.bin, meta.json; empty: data/openwebtext/")


def read_settings(argv):
    return load_config(OpenWebTextSettings, argv, script="data/openwebtext/prepare.py")


def write_tokens(f, tokenized, n_tokens, dtype, name):
    """The ids of every document, one after another, written through a memmap in shards: the whole split
    never has to fit in memory. The file's space is claimed first, so a full disk is an error here and
    not a crash (a memmap that cannot get its page is killed by SIGBUS)."""
    from tqdm import tqdm

    size = n_tokens * np.dtype(dtype).itemsize
    if hasattr(os, "posix_fallocate"):  # not on macOS
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it: a sparse file below
                raise
    f.truncate(size)
    arr = np.memmap(f, dtype=dtype, mode="r+", shape=(n_tokens,))
    num_shards = min(1024, len(tokenized))
    pos = 0
    for shard_index in tqdm(range(num_shards), desc=f"writing {name}.bin"):
        shard = tokenized.shard(num_shards=num_shards, index=shard_index, contiguous=True).with_format("numpy")
        if len(shard) == 0:
            continue
        ids = np.concatenate(shard["ids"])
        arr[pos : pos + len(ids)] = ids
        pos += len(ids)
    arr.flush()
    del arr


def main():
    args = read_settings(sys.argv[1:])
    out_dir = Path(args.out_dir or HERE)
    check_writable_folder(out_dir, "out_dir")
    check_input_apart(args.input, out_dir)
    t0 = time.time()
    documents = load_documents(
        args.input, args.hf_dataset, args.max_docs, args.num_proc, revision=args.revision
    ).filter(lambda row: is_text(row["text"]))
    if len(documents) < 2:
        raise DataError("fewer than two non-empty documents: nothing to split into train and val")
    n_val = max(1, int(len(documents) * args.val_fraction))
    split = documents.train_test_split(test_size=n_val, seed=args.seed, shuffle=True)
    print(f"{len(split['train']):,} train and {len(split['test']):,} val documents")

    tokenizer = GPT2Tokenizer()  # created here so tiktoken's files are found before the workers start

    def tokenize(row):
        ids = tokenizer.encode(row["text"], ordinary=True)
        ids.append(tokenizer.eot_token)  # documents are separated by <|endoftext|>
        return {"ids": ids, "len": len(ids)}

    dtype = token_dtype(tokenizer.vocab_size)
    writers, total = {}, 0
    for name, part in (("train", split["train"]), ("val", split["test"])):
        num_proc = min(args.num_proc, len(part)) or 1
        tokenized = part.map(tokenize, remove_columns=part.column_names, desc=f"tokenizing {name}", num_proc=num_proc)
        n_tokens = int(np.sum(tokenized["len"], dtype=np.uint64))
        writers[out_dir / f"{name}.bin"] = lambda f, t=tokenized, n=n_tokens, name=name: write_tokens(
            f, t, n, dtype, name
        )
        total += n_tokens
        print(f"{name}.bin: {n_tokens:,} tokens")
    meta = '{"tokenizer": "gpt2", "vocab_size": %d, "dtype": "%s"}\n' % (tokenizer.vocab_size, dtype)
    writers[out_dir / "meta.json"] = lambda f: f.write(meta.encode())
    # all three files or none: a full disk or a crash never leaves a half-written or mismatched set
    hold_folder(out_dir, "out_dir")  # and one writer at a time
    write_atomically(writers, total * np.dtype(dtype).itemsize)
    seconds = time.time() - t0
    print(
        f"{total:,} tokens in {seconds:.1f} s: {total / seconds:,.0f} tokens/s with num_proc={args.num_proc}; "
        f"written to {shown_path(out_dir)}"
    )


if __name__ == "__main__":
    run_main(main)
