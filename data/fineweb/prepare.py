"""Prepare FineWeb-Edu (10B tokens) in GPT-2 BPE tokens, the data build-nanogpt and llm.c reproduce GPT-2 on.

    python data/fineweb/prepare.py                                  # sample-10BT from the Hugging Face hub
    python data/fineweb/prepare.py --input=folder                   # local .parquet / .jsonl / .txt files
    python data/fineweb/prepare.py --max_docs=100000                # a small slice, to try things out

Loads the documents with Hugging Face `datasets` (HuggingFaceFW/fineweb-edu, config sample-10BT: about
9.7M documents, ~27 GB of parquet), tokenises them in parallel with GPT-2 BPE (tiktoken), each starting
with <|endoftext|>, and writes them in order: the first val_tokens tokens to val.bin (build-nanogpt's
shard 0), the rest as train_000000.bin, train_000001.bin, ... of shard_tokens tokens (uint16), each
written as soon as it fills. A document is never split between two files. An interrupted run (Ctrl-C,
a lost connection, a full disk) continues where it stopped when started again with the same settings:
prepare_state.json says which documents the finished files hold. Training reads the shards as one
stream (nanogpt/data.py).
"""

import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, installed or not

from nanogpt.command_line import load_config, setting  # noqa: E402
from nanogpt.data import UNFINISHED, shown_path, split_files  # noqa: E402
from nanogpt.errors import DataError, SettingError, run_main  # noqa: E402
from nanogpt.files import check_writable_folder, hold_folder, write_atomically  # noqa: E402
from nanogpt.tokenizer import GPT2_VOCAB_SIZE  # noqa: E402
from nanogpt.web_documents import check_input_apart, load_documents, texts, tokenized_documents  # noqa: E402

HERE = Path(__file__).resolve().parent
STATE_NAME = UNFINISHED  # present while the dataset is unfinished
META = {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB_SIZE, "dtype": "uint16"}


@dataclass
class FineWebSettings:
    input: str = setting("", "a folder (or file) of .parquet, .jsonl or .txt documents instead of the hub")
    hf_dataset: str = setting("HuggingFaceFW/fineweb-edu", "dataset on the Hugging Face hub")
    name: str = setting("sample-10BT", "the hub dataset's config: sample-10BT (10B GPT-2 tokens), sample-100BT, ...")
    max_docs: int = setting(0, "use only the first N documents (0: all)", within="[0, inf)")
    shard_tokens: int = setting(
        100_000_000, "tokens per train shard (build-nanogpt's 100M: 200 MB a file)", within="[1, inf)"
    )
    val_tokens: int = setting(100_000_000, "tokens of the first documents held out as val.bin", within="[1, inf)")
    num_proc: int = setting(8, "tokenising processes", within="[1, 1024]")
    out_dir: str = setting("", "where to write val.bin, train_*.bin, meta.json; empty: data/fineweb/")


def read_settings(argv):
    return load_config(FineWebSettings, argv, script="data/fineweb/prepare.py")


def read_state(out_dir, cfg):
    """Where an interrupted run stopped: {"settings", "documents", "train_shards", "tokens"}; a fresh
    start when out_dir holds no dataset; refused when it holds a finished one, or one begun otherwise."""
    recorded = {k: v for k, v in asdict(cfg).items() if k not in ("num_proc", "out_dir")}
    path = out_dir / STATE_NAME
    if not path.is_file():
        if split_files(out_dir, "val") or split_files(out_dir, "train"):
            raise SettingError(
                f"{shown_path(out_dir)} already holds a prepared dataset; remove its .bin files or choose "
                "another --out_dir"
            )
        return {"settings": recorded, "documents": 0, "train_shards": 0, "tokens": 0}
    state = json.loads(path.read_text())
    if state["settings"] != recorded:
        differ = sorted(k for k in recorded if state["settings"].get(k) != recorded[k])
        raise SettingError(
            f"{shown_path(out_dir)} holds an unfinished dataset begun with other settings ({', '.join(differ)});"
            f" continue it with the same settings, or remove {STATE_NAME} and its .bin files to start again"
        )
    print(
        f"continuing: {state['documents']:,} documents ({state['tokens']:,} tokens) are already in val.bin "
        f"and {state['train_shards']} train shard(s)"
    )
    return state


def write_file(out_dir, state, buffer, n_tokens, n_documents):
    """The next file (val.bin first, then a train shard) and the state that counts it, together: a crash
    leaves both or neither. Returns the new state and the file's name."""
    name = "val.bin" if state["documents"] == 0 else f"train_{state['train_shards']:06d}.bin"
    shards = state["train_shards"] + (name != "val.bin")
    state = dict(
        state, documents=state["documents"] + n_documents, train_shards=shards, tokens=state["tokens"] + n_tokens
    )
    write_atomically(
        {
            out_dir / name: lambda f: f.write(buffer[:n_tokens].tobytes()),
            out_dir / STATE_NAME: lambda f: f.write((json.dumps(state, indent=1) + "\n").encode()),
        },
        n_tokens * 2,
    )
    return state, name


def write_shards(documents, out_dir, state, cfg):
    """Tokenise the documents not yet written and write each file as it fills; returns the final state."""
    from tqdm import tqdm

    capacity = cfg.val_tokens if state["documents"] == 0 else cfg.shard_tokens
    # the buffer grows as it fills (doubling, up to the file's size): a huge --val_tokens reserves nothing
    buffer, filled, in_buffer = np.empty(min(capacity, 1 << 24), dtype=np.uint16), 0, 0
    todo = texts(documents.select(range(min(state["documents"], len(documents)), len(documents))))
    t0, tokens_done, skipped = time.time(), 0, 0
    with contextlib.ExitStack() as stack:  # the bar closes before an error is said, so the error is the last line
        # <|endoftext|> before each document, as build-nanogpt writes them; leaving this block ends the workers
        tokenized = stack.enter_context(
            contextlib.closing(tokenized_documents(todo, cfg.num_proc, end_of_text_first=True))
        )
        bar = stack.enter_context(
            tqdm(total=max(len(documents) - state["documents"], 0), unit="doc", desc="tokenizing")
        )
        for ids in tokenized:
            if filled and filled + len(ids) > capacity:  # the file is full: a document is never split
                state, name = write_file(out_dir, state, buffer, filled, in_buffer)
                tqdm.write(f"wrote {name}: {filled:,} tokens ({state['tokens']:,} so far)")
                capacity, filled, in_buffer = cfg.shard_tokens, 0, 0
            if len(ids) > len(buffer) - filled:
                buffer = np.concatenate([buffer[:filled], np.empty(max(len(ids), len(buffer)), dtype=np.uint16)])
            buffer[filled : filled + len(ids)] = ids
            filled, in_buffer, tokens_done = filled + len(ids), in_buffer + 1, tokens_done + len(ids)
            skipped += not len(ids)
            bar.update()
            bar.set_postfix_str(f"{tokens_done / max(time.time() - t0, 1e-9):,.0f} tokens/s", refresh=False)
    if skipped:
        print(f"note: {skipped:,} documents skipped: empty, or their text is not a string")
    if state["documents"] == 0:  # nothing written yet, and nothing will be
        raise DataError(
            f"the documents hold {filled:,} tokens, not more than --val_tokens={cfg.val_tokens:,}: none would "
            "be left to train on; lower --val_tokens"
        )
    if filled:
        state, name = write_file(out_dir, state, buffer, filled, in_buffer)
        print(f"wrote {name}: {filled:,} tokens")
    return state


def main():
    cfg = read_settings(sys.argv[1:])
    out_dir = Path(cfg.out_dir or HERE)
    check_writable_folder(out_dir, "out_dir")
    check_input_apart(cfg.input, out_dir)
    hold_folder(out_dir, "out_dir")  # one writer at a time
    state = read_state(out_dir, cfg)
    t0 = time.time()
    documents = load_documents(
        cfg.input, cfg.hf_dataset, cfg.max_docs, cfg.num_proc, name=None if cfg.input else cfg.name
    )
    tokens_before = state["tokens"]
    state = write_shards(documents, out_dir, state, cfg)
    if state["train_shards"] == 0:
        raise DataError(
            f"all {state['documents']:,} documents went into val.bin ({state['tokens']:,} tokens); remove "
            f"{shown_path(out_dir)}'s"
            f" val.bin and {STATE_NAME} and run again with a lower --val_tokens"
        )
    write_atomically({out_dir / "meta.json": lambda f: f.write((json.dumps(META) + "\n").encode())}, 100)
    (out_dir / STATE_NAME).unlink()
    seconds = time.time() - t0
    new = state["tokens"] - tokens_before
    print(
        f"{state['documents']:,} documents, {state['tokens']:,} tokens: val.bin and {state['train_shards']} "
        f"train shard(s) in {shown_path(out_dir)};"
        f" {new:,} tokens in {seconds:.1f} s ({new / seconds:,.0f} tokens/s with num_proc={cfg.num_proc})"
    )


if __name__ == "__main__":
    run_main(main)
