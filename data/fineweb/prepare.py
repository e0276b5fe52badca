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


class Documents:
    """The tokenised documents with one of look-ahead (a document that would overfill a file starts the next),
    on a progress bar. Empty ones (no text) are counted and passed over."""

    def __init__(self, tokenized, bar, first):
        """first: how many documents of the input come before these (a resumed run's), which `done` counts."""
        self.tokenized, self.bar, self.read, self.skipped, self.tokens = tokenized, bar, first, 0, 0
        self.t0 = time.time()
        self.ahead = self._next()

    def _next(self):
        for ids in self.tokenized:
            self.read += 1
            self.bar.update()
            if len(ids):
                return ids
            self.skipped += 1
        return None

    @property
    def done(self):
        """How many documents of the input were taken or passed over."""
        return self.read - (self.ahead is not None)

    def take(self):
        ids, self.ahead = self.ahead, self._next()
        self.tokens += len(ids)
        self.bar.set_postfix_str(f"{self.tokens / max(time.time() - self.t0, 1e-9):,.0f} tokens/s", refresh=False)
        return ids


def write_file(out_dir, state, documents, capacity, val_tokens):
    """Stream the next file (val.bin first, then a train shard) to disk from `documents` until the next one
    would pass `capacity` tokens (a document is never split; the first always goes in), and the state that
    counts it: the two are written together, so a crash leaves both or neither. Returns the new state, the
    file's name and its tokens."""
    name = "val.bin" if state["documents"] == 0 else f"train_{state['train_shards']:06d}.bin"
    tokens, new_state = [0], {}

    def fill(f):
        while documents.ahead is not None and not (tokens[0] and tokens[0] + len(documents.ahead) > capacity):
            ids = documents.take()
            f.write(ids.tobytes())
            tokens[0] += len(ids)
        if documents.ahead is None and name == "val.bin":  # nothing would be left for train
            raise DataError(
                f"the documents hold {tokens[0]:,} tokens, not more than --val_tokens={val_tokens:,}: none would "
                "be left to train on; lower --val_tokens"
            )

    def record(f):  # written after the file: the counts are complete
        shards = state["train_shards"] + (name != "val.bin")
        new_state.update(state, documents=documents.done, train_shards=shards, tokens=state["tokens"] + tokens[0])
        f.write((json.dumps(new_state, indent=1) + "\n").encode())

    write_atomically({out_dir / name: fill, out_dir / STATE_NAME: record}, capacity * 2)
    return new_state, name, tokens[0]


def write_shards(documents, out_dir, state, cfg):
    """Tokenise the documents not yet written, each file streamed to disk as it fills (memory does not grow
    with the input, nor with the size of a file); returns the final state."""
    from tqdm import tqdm

    first = min(state["documents"], len(documents))
    todo = texts(documents.select(range(first, len(documents))))
    with contextlib.ExitStack() as stack:  # the bar closes before an error is said, so the error is the last line
        # <|endoftext|> before each document, as build-nanogpt writes them; leaving this block ends the workers
        tokenized = stack.enter_context(
            contextlib.closing(tokenized_documents(todo, cfg.num_proc, end_of_text_first=True))
        )
        bar = stack.enter_context(tqdm(total=len(documents) - first, unit="doc", desc="tokenizing"))
        stream = Documents(tokenized, bar, first)
        while stream.ahead is not None:
            capacity = cfg.val_tokens if state["documents"] == 0 else cfg.shard_tokens
            state, name, tokens = write_file(out_dir, state, stream, capacity, cfg.val_tokens)
            tqdm.write(f"wrote {name}: {tokens:,} tokens ({state['tokens']:,} so far)")
    if stream.skipped:
        print(f"note: {stream.skipped:,} documents skipped: empty, or their text is not a string")
    if state["documents"] == 0:  # no document had any text
        raise DataError("the documents hold no text: nothing to prepare")
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
