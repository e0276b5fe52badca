"""Prepare OpenWebText (or any large text collection) in GPT-2 BPE tokens, for pretraining GPT-2.

    python data/openwebtext/prepare.py                          # the Hugging Face dataset (~54 GB download)
    python data/openwebtext/prepare.py --input=folder --num_proc=4   # local .txt / .jsonl / .parquet files
    python data/openwebtext/prepare.py --max_docs=10000          # a small slice, to try things out

Loads the documents with Hugging Face `datasets` (the parquet copy of Skylion007/openwebtext, which
current `datasets` versions load; nanoGPT's loading script no longer runs), tokenises them in
parallel with GPT-2 BPE (tiktoken), ending each document with <|endoftext|>, holds out a small val
split (nanoGPT's: the same documents, in the same order), and streams train.bin / val.bin (uint16) to
disk as the workers return them, then meta.json, with progress bars.
Result for the full dataset: about 9B train tokens (17 GB) and 4M val tokens.
"""

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, installed or not

from nanogpt.command_line import load_config, setting  # noqa: E402
from nanogpt.data import shown_path, token_dtype  # noqa: E402
from nanogpt.errors import DataError, run_main  # noqa: E402
from nanogpt.files import check_writable_folder, hold_folder, write_atomically  # noqa: E402
from nanogpt.tokenizer import GPT2_VOCAB_SIZE  # noqa: E402
from nanogpt.web_documents import check_input_apart, is_text, load_documents, texts, tokenized_documents  # noqa: E402

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


def write_split(f, part, num_proc, name, counts):
    """The ids of every document of `part`, one after another, written to f as the workers return them (the
    split never has to fit in memory); counts[name] gets how many tokens that is."""
    from tqdm import tqdm

    counts[name] = 0
    documents = tokenized_documents(texts(part), num_proc, end_of_text_first=False)  # nanoGPT's: text, then EOT
    with contextlib.closing(documents), tqdm(total=len(part), unit="doc", desc=f"tokenizing {name}") as bar:
        for ids in documents:
            f.write(ids.tobytes())
            counts[name] += len(ids)
            bar.update()


def main():
    args = read_settings(sys.argv[1:])
    out_dir = Path(args.out_dir or HERE)
    check_writable_folder(out_dir, "out_dir")
    check_input_apart(args.input, out_dir)
    t0 = time.time()
    documents = load_documents(
        args.input, args.hf_dataset, args.max_docs, args.num_proc, revision=args.revision
    ).filter(lambda batch: [is_text(text) for text in batch["text"]], batched=True)
    if len(documents) < 2:
        raise DataError("fewer than two non-empty documents: nothing to split into train and val")
    n_val = max(1, int(len(documents) * args.val_fraction))
    split = documents.train_test_split(test_size=n_val, seed=args.seed, shuffle=True)
    print(f"{len(split['train']):,} train and {len(split['test']):,} val documents")

    # both files, then meta.json, or none: a full disk or a crash never leaves a half-written or mismatched set
    counts, dtype = {}, token_dtype(GPT2_VOCAB_SIZE)
    writers = {
        out_dir / f"{name}.bin": lambda f, part=part, name=name: write_split(f, part, args.num_proc, name, counts)
        for name, part in (("train", split["train"]), ("val", split["test"]))
    }
    meta = '{"tokenizer": "gpt2", "vocab_size": %d, "dtype": "%s"}\n' % (GPT2_VOCAB_SIZE, dtype)
    writers[out_dir / "meta.json"] = lambda f: f.write(meta.encode())
    hold_folder(out_dir, "out_dir")  # and one writer at a time
    write_atomically(writers, documents.data.nbytes // 2)  # about 4 bytes of text a token, 2 bytes an id
    total = sum(counts.values())
    for name, n in counts.items():
        print(f"{name}.bin: {n:,} tokens")
    seconds = time.time() - t0
    print(
        f"{total:,} tokens in {seconds:.1f} s: {total / seconds:,.0f} tokens/s with num_proc={args.num_proc}; "
        f"written to {shown_path(out_dir)}"
    )


if __name__ == "__main__":
    run_main(main)
