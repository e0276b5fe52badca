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

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, installed or not

from nanogpt.data import shown_path, token_dtype  # noqa: E402
from nanogpt.errors import UserError, run_main  # noqa: E402
from nanogpt.tokenizer import GPT2Tokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_documents(args):
    """A datasets.Dataset with a 'text' column: local files when --input is given, else the hub."""
    try:
        import datasets
    except ImportError:
        raise UserError("this script needs Hugging Face datasets: pip install -e '.[data]' (or pip install datasets)") from None
    if args.input:
        source = Path(args.input)
        files = sorted(p for p in source.rglob("*") if p.suffix in BUILDERS) if source.is_dir() else [source]
        if not files or not files[0].is_file():
            raise UserError(f"{args.input} holds no .txt, .jsonl or .parquet files")
        builders = {BUILDERS.get(p.suffix) for p in files}
        if len(builders) != 1 or None in builders:
            raise UserError(f"{args.input} mixes file types {sorted(p.suffix for p in files)}; use one of .txt, .jsonl, .parquet")
        builder = builders.pop()
        # .txt files: one document per line, as in most web-text dumps
        dataset = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train")
    else:
        dataset = datasets.load_dataset(args.hf_dataset, revision=args.revision, split="train", num_proc=args.num_proc)
    if "text" not in dataset.column_names:
        raise UserError(f"the documents have no 'text' column (columns: {dataset.column_names})")
    if args.max_docs:
        dataset = dataset.select(range(min(args.max_docs, len(dataset))))
    return dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="a folder (or file) of .txt, .jsonl or .parquet documents instead of the hub")
    parser.add_argument("--hf_dataset", default="Skylion007/openwebtext", help="dataset on the Hugging Face hub")
    parser.add_argument("--revision", default="refs/convert/parquet", help="hub revision (the parquet conversion)")
    parser.add_argument("--num_proc", type=int, default=8, help="tokenising processes")
    parser.add_argument("--max_docs", type=int, default=0, help="use only the first N documents (0: all)")
    parser.add_argument("--val_fraction", type=float, default=0.0005, help="share of documents held out for val")
    parser.add_argument("--seed", type=int, default=2357)
    parser.add_argument("--out_dir", default=str(HERE))
    args = parser.parse_args()

    t0 = time.time()
    documents = load_documents(args).filter(lambda row: bool(row["text"].strip()))
    if len(documents) < 2:
        raise UserError("fewer than two non-empty documents: nothing to split into train and val")
    n_val = max(1, int(len(documents) * args.val_fraction))
    split = documents.train_test_split(test_size=n_val, seed=args.seed, shuffle=True)
    print(f"{len(split['train']):,} train and {len(split['test']):,} val documents")

    tokenizer = GPT2Tokenizer()  # created here so tiktoken's files are found before the workers start

    def tokenize(row):
        ids = tokenizer.encode(row["text"], ordinary=True)
        ids.append(tokenizer.eot_token)  # documents are separated by <|endoftext|>
        return {"ids": ids, "len": len(ids)}

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    total = 0
    for name, part in (("train", split["train"]), ("val", split["test"])):
        num_proc = min(args.num_proc, len(part)) or 1
        tokenized = part.map(tokenize, remove_columns=part.column_names, desc=f"tokenizing {name}", num_proc=num_proc)
        n_tokens = int(np.sum(tokenized["len"], dtype=np.uint64))
        # write through a memmap, in shards: the whole split never has to fit in memory
        tmp = out_dir / f"{name}.bin.tmp"
        arr = np.memmap(tmp, dtype=dtype, mode="w+", shape=(n_tokens,))
        num_shards = min(1024, len(tokenized))
        pos = 0
        from tqdm import tqdm

        for shard_index in tqdm(range(num_shards), desc=f"writing {name}.bin"):
            shard = tokenized.shard(num_shards=num_shards, index=shard_index, contiguous=True).with_format("numpy")
            if len(shard) == 0:
                continue
            ids = np.concatenate(shard["ids"])
            arr[pos : pos + len(ids)] = ids
            pos += len(ids)
        arr.flush()
        del arr
        tmp.replace(out_dir / f"{name}.bin")  # a half-written file never takes the real name
        total += n_tokens
        print(f"{name}.bin: {n_tokens:,} tokens")
    (out_dir / "meta.json").write_text('{"tokenizer": "gpt2", "vocab_size": %d, "dtype": "%s"}\n' % (tokenizer.vocab_size, dtype))
    seconds = time.time() - t0
    print(f"{total:,} tokens in {seconds:.1f} s: {total / seconds:,.0f} tokens/s with num_proc={args.num_proc}; written to {shown_path(out_dir)}")


if __name__ == "__main__":
    run_main(main)
