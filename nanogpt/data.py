"""Datasets on disk and the batches drawn from them.

A prepared dataset is a folder with
    train.bin, val.bin   token ids, one after another, as raw unsigned integers (a large split may
                         instead be numbered shards, train_000000.bin, train_000001.bin, ..., read
                         as one stream: data/fineweb/prepare.py writes them as they fill)
    meta.json            the tokenizer ("char" with its characters, "gpt2", or "bpe" with its
                         tokenizer.json beside) and the id dtype
Training reads the .bin files through np.memmap, so a dataset larger than memory works. Only drawing
batches needs torch, which is imported there: the prepare scripts use this module and start without it.
"""

import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanogpt.command_line import setting
from nanogpt.errors import DataError, SettingError
from nanogpt.files import REPO_ROOT, check_writable_folder, hold_folder, read_utf8, shared_data_dir, write_atomically
from nanogpt.tokenizer import (
    BPE_FILE,
    GPT2_VOCAB_SIZE,
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    check_meta,
    train_bpe,
)


def find_source_text(given, local_path, shared_relative, url):
    """Text to prepare a dataset from: the --input path if given, else the local copy, else the
    offline shared copy, else a download (saved to local_path so it happens once)."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise DataError(f"input file {given} not found")
        return read_text(path)
    if local_path.is_file():
        return read_text(local_path)
    shared = shared_data_dir()
    if shared is not None and (shared / shared_relative).is_file():
        print(f"using the offline copy {shared / shared_relative}")
        return read_text(shared / shared_relative)
    print(f"downloading {url} ...")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as e:
        raise DataError(f"could not download {url} ({e}); put the text at {local_path} or pass --input=PATH") from None
    local_path.write_bytes(data)
    return read_text(local_path)


def read_text(path):
    text = read_utf8(path, "text file")
    if not text:
        raise DataError(f"{path} is empty: there is no text in it")
    return text


def token_dtype(vocab_size):
    """The smallest unsigned integer type that holds every id: uint16 up to 65,536 tokens."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def write_dataset(out_dir, train_ids, val_ids, meta, tokenizer_json=None, arrays=None):
    """Write train.bin, val.bin, meta.json (and a bpe dataset's tokenizer.json, and any further arrays, file
    name -> numpy array: a chat dataset's masks and starts), all or none; meta gets the id dtype added."""
    out_dir = Path(out_dir)
    hold_folder(out_dir, "out_dir")  # one writer at a time
    meta = dict(meta, dtype=token_dtype(meta["vocab_size"]))
    stored = {
        "train.bin": np.asarray(train_ids, dtype=meta["dtype"]),
        "val.bin": np.asarray(val_ids, dtype=meta["dtype"]),
    }
    stored.update(arrays or {})
    files = {out_dir / name: array.tofile for name, array in stored.items()}
    files[out_dir / "meta.json"] = lambda f: f.write((json.dumps(meta, ensure_ascii=False, indent=1) + "\n").encode())
    if tokenizer_json is not None:
        files[out_dir / BPE_FILE] = lambda f: f.write(tokenizer_json.encode())
    write_atomically(files, sum(a.nbytes for a in stored.values()) + len(tokenizer_json or ""))
    return meta


TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


@dataclass
class ShakespeareSettings:
    input: str = setting("", "text file to use instead of input.txt beside prepare.py")
    out_dir: str = setting("", "where to write train.bin, val.bin, meta.json; empty: beside prepare.py")


def prepare_tiny_shakespeare(cfg, tokenizer_kind, dataset_dir):
    """The whole of data/shakespeare*/prepare.py after reading its settings: finding the text,
    tokenising, writing."""
    out_dir = cfg.out_dir or dataset_dir
    check_writable_folder(out_dir, "out_dir")
    text = find_source_text(
        cfg.input, Path(dataset_dir) / "input.txt", "tinyshakespeare/input.txt", TINY_SHAKESPEARE_URL
    )
    prepare_text(text, tokenizer_kind, out_dir)


def prepare_text(text, tokenizer_kind, out_dir):
    """Tokenise text (char-level: its own characters; gpt2: GPT-2 BPE), split it 90/10 into train and
    val, and write the dataset to out_dir. Prints what it did and how fast."""
    t0 = time.time()
    if tokenizer_kind == "char":
        chars = sorted(set(text))
        tokenizer = CharTokenizer(chars)
        meta = {"tokenizer": "char", "vocab_size": len(chars), "chars": chars}
        shown = "".join(chars) if len(chars) <= 100 else "".join(chars[:100]) + "..."
        print(f"{len(text):,} characters, vocabulary of {len(chars)}: {shown!r}")
    elif tokenizer_kind == "gpt2":
        tokenizer = GPT2Tokenizer()
        meta = {"tokenizer": "gpt2", "vocab_size": tokenizer.vocab_size}
        print(f"{len(text):,} characters, GPT-2 BPE vocabulary of {tokenizer.vocab_size:,}")
    else:
        raise SettingError(f"unknown tokenizer {tokenizer_kind!r}; use char or gpt2")
    n = len(text)
    train_ids = tokenizer.encode(text[: int(n * 0.9)], ordinary=True)
    val_ids = tokenizer.encode(text[int(n * 0.9) :], ordinary=True)
    return finish_dataset(out_dir, train_ids, val_ids, meta, t0)


def prepare_bpe(documents, vocab_size, out_dir):
    """Train a byte-level BPE of vocab_size tokens on the documents, tokenise them, each followed by
    <|endoftext|> (as GPT-2's data), split the ids 90/10 into train and val, and write the dataset and
    its tokenizer.json to out_dir."""
    t0 = time.time()
    print(
        f"{len(documents):,} document(s), {sum(map(len, documents)):,} characters; training a BPE of "
        f"{vocab_size:,} tokens"
    )
    tokenizer_json = train_bpe(documents, vocab_size)
    tokenizer = BPETokenizer(tokenizer_json)
    if tokenizer.vocab_size < vocab_size:
        print(
            f"note: this text has too few distinct pieces for {vocab_size:,} tokens; the vocabulary has "
            f"{tokenizer.vocab_size:,}"
        )
    ids = []
    for document in documents:
        ids += tokenizer.encode(document, ordinary=True) + [tokenizer.eot_token]
    split = int(len(ids) * 0.9)
    meta = {"tokenizer": "bpe", "vocab_size": tokenizer.vocab_size, "tokenizer_file": BPE_FILE}
    return finish_dataset(out_dir, ids[:split], ids[split:], meta, t0, tokenizer_json)


def finish_dataset(out_dir, train_ids, val_ids, meta, t0, tokenizer_json=None):
    if not train_ids or not val_ids:
        raise DataError("the text is too short to split into train and val; use more text")
    meta = write_dataset(out_dir, train_ids, val_ids, meta, tokenizer_json)
    seconds = time.time() - t0
    print(
        f"train has {len(train_ids):,} tokens, val has {len(val_ids):,} tokens ({meta['dtype']});"
        f" {(len(train_ids) + len(val_ids)) / seconds:,.0f} tokens/s; written to {shown_path(out_dir)}"
    )
    return meta


def shown_path(path):
    """Relative to the current folder when inside it, else absolute: whichever reads better."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else os.path.abspath(path)


def read_documents(path):
    """The documents to prepare: a file's text, or that of every .txt file under a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"{path} holds no .txt files")
        return [read_text(f) for f in files]
    if not path.is_file():
        raise DataError(f"input {path} not found; pass --input=PATH (a text file or a folder of .txt files)")
    return [read_text(path)]


def prepare_command(dataset):
    script = REPO_ROOT / "data" / dataset / "prepare.py"
    return f"python data/{dataset}/prepare.py" if script.is_file() else f"a prepare script for data/{dataset}"


def load_meta(dataset_dir):
    """Read and check meta.json. A folder without one is nanoGPT's: characters where its meta.pkl says
    so (nanoGPT's shakespeare_char), else GPT-2 token ids (its openwebtext, its shakespeare)."""
    from nanogpt.from_nanogpt import META_PKL, read_meta_pkl  # it imports torch, needed only for nanoGPT's folders

    path = Path(dataset_dir) / "meta.json"
    if not path.is_file() and (Path(dataset_dir) / META_PKL).is_file():
        return dict(read_meta_pkl(Path(dataset_dir) / META_PKL), dtype="uint16")  # nanoGPT writes uint16
    if not path.is_file():
        return {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB_SIZE, "dtype": "uint16"}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); prepare the dataset again") from None
    check_meta(meta, path)
    meta.setdefault("dtype", token_dtype(meta["vocab_size"]))
    return meta


UNFINISHED = "prepare_state.json"  # in a dataset folder while a prepare script still writes it (fineweb's)
SCANNED_TOKENS = 1 << 24  # of each split, when a dataset is opened: before a run writes anything


def split_files(folder, split):
    """The files of a split: split.bin, else its numbered shards in order (none: an empty list)."""
    single = folder / f"{split}.bin"
    return [single] if single.is_file() else sorted(p for p in folder.glob(f"{split}_[0-9]*.bin") if p.is_file())


class TokenStream:
    """A split stored as numbered shards, read as one stream of tokens: a window may run from the end
    of one shard into the next. A shard is mapped only when a window touches it."""

    def __init__(self, paths, dtype):
        self.paths, self.dtype = paths, dtype
        self.ends = np.cumsum([p.stat().st_size // dtype.itemsize for p in paths])

    def __len__(self):
        return int(self.ends[-1])

    def __getitem__(self, window):
        start, stop, _ = window.indices(len(self))
        pieces, k = [], int(np.searchsorted(self.ends, start, side="right"))
        while start < stop:
            shard_start = int(self.ends[k - 1]) if k else 0
            end = min(stop, int(self.ends[k]))
            pieces.append(np.memmap(self.paths[k], dtype=self.dtype, mode="r")[start - shard_start : end - shard_start])
            start, k = end, k + 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)


class Dataset:
    """train.bin / val.bin (or their shards) of one prepared dataset, with random (x, y) batches for training."""

    def __init__(self, data_dir, name):
        self.dir = Path(data_dir) / name
        self.files = {split: split_files(self.dir, split) for split in ("train", "val")}
        for split, paths in self.files.items():
            if not paths:
                raise DataError(
                    f"dataset {name!r} is not prepared ({self.dir / f'{split}.bin'} is missing): run "
                    f"{prepare_command(name)}"
                )
        if (self.dir / UNFINISHED).is_file():
            print(
                f"note: {self.dir} is still being prepared ({UNFINISHED} is there): only the"
                f" {len(self.files['train'])} train file(s) written so far are read; finish it with"
                f" {prepare_command(name)} and the same settings",
                file=sys.stderr,
            )
        self.meta = load_meta(self.dir)
        self.dtype = np.dtype(self.meta["dtype"])
        for path in self.files["train"] + self.files["val"]:
            size = path.stat().st_size
            if size % self.dtype.itemsize:
                raise DataError(
                    f"{path} has {size:,} bytes, not a whole number of {self.dtype} tokens: it is damaged;"
                    f" prepare it again ({prepare_command(name)})"
                )
        for split in ("train", "val"):  # the start of each split now (a few ms), every batch later (get_batch)
            self.check_ids(self.tokens(split)[:SCANNED_TOKENS], self.files[split][0])
        self.chat = (self.dir / "train_mask.bin").is_file()  # conversations (data/chat/prepare.py)
        if self.chat:
            self.check_chat_files(name)

    def check_ids(self, ids, where):
        """Refuse ids at or past the vocabulary meta.json gives: a file written with another tokenizer."""
        top = int(ids.max()) if len(ids) else 0
        if top >= self.meta["vocab_size"]:
            raise DataError(
                f"{where} holds token id {top:,}, not below the vocabulary size of "
                f"{self.meta['vocab_size']:,} in its meta.json:"
                " it was written with another tokenizer, or is damaged; prepare it again "
                f"({prepare_command(self.dir.name)})"
            )

    def check_chat_files(self, name):
        """A chat dataset's masks (one byte a token) and starts (where each conversation begins) must fit
        its tokens: else it was written by another prepare, or only in part."""
        for split in ("train", "val"):
            n = len(self.tokens(split))
            mask, starts = self.dir / f"{split}_mask.bin", self.dir / f"{split}_starts.bin"
            if not (mask.is_file() and starts.is_file()) or mask.stat().st_size != n or not starts.stat().st_size:
                raise DataError(
                    f"{self.dir} holds conversations whose {split} mask or starts do not fit its {n:,} tokens: it"
                    f" is damaged; prepare it again ({prepare_command(name)})"
                )

    def chat_windows(self, split, offsets, block_size):
        """Where each window of a chat batch begins: at the start of the conversation each offset falls in
        (packed after it come the next ones), no later than the last full window."""
        starts = np.memmap(self.dir / f"{split}_starts.bin", dtype=np.int64, mode="r")  # not read whole every batch
        last = len(self.tokens(split)) - block_size - 1
        picked = starts[np.searchsorted(starts, np.asarray(offsets), side="right") - 1]
        return np.minimum(picked, last).tolist()

    def tokens(self, split):
        paths = self.files[split]
        if len(paths) > 1:
            return TokenStream(paths, self.dtype)
        # a fresh memmap per call: a long-lived one keeps every page it touched and slowly fills RAM
        return np.memmap(paths[0], dtype=self.dtype, mode="r")

    def check_length(self, block_size):
        for split in ("train", "val"):
            n = len(self.tokens(split))
            if n <= block_size:
                raise DataError(
                    f"the {split} split of {self.dir} has {n} token{'s' if n != 1 else ''}, not more than "
                    f"block_size {block_size}; use a smaller --block_size or more text"
                )

    def get_batch(self, split, batch_size, block_size, device, generator, rank=0, world_size=1):
        """batch_size random windows: x is block_size tokens, y the same shifted one to the right.

        Under DDP every process holds the same generator and draws the offsets of all world_size
        micro-batches, keeping its own: the processes see different data, and together exactly the
        batches one process with world_size times the accumulation steps would see.
        """
        import torch

        data = self.tokens(split)
        for r in range(world_size):
            offsets = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
            if r == rank:
                starts = offsets.tolist()
        if self.chat:
            starts = self.chat_windows(split, starts, block_size)
        # one copy of block_size + 1 tokens per row; x and y are views into it
        rows = np.stack([data[i : i + block_size + 1] for i in starts])
        # on a GPU an id past the table is an opaque device assert
        self.check_ids(rows, f"the {split} split of {self.dir}")
        rows = torch.from_numpy(rows.astype(np.int64))
        if device.startswith("cuda"):
            # pinned memory lets the copy run asynchronously while the GPU is busy
            rows = rows.pin_memory().to(device, non_blocking=True)
        elif device != "cpu":
            rows = rows.to(device)
        if not self.chat:
            return rows[:, :-1], rows[:, 1:]
        # the loss counts only what the model should say: every other target is -1, which it skips
        mask = np.memmap(self.dir / f"{split}_mask.bin", dtype=np.uint8, mode="r")
        said = torch.from_numpy(np.stack([mask[i + 1 : i + block_size + 1] for i in starts]).astype(bool))
        return rows[:, :-1], rows[:, 1:].masked_fill(~said.to(rows.device), -1)


class TrainBatches:
    """One process's training batches, drawn in turn from a generator seeded alike in every process
    (see Dataset.get_batch). `position` is the generator's state from before the batch last drawn: a
    checkpoint keeps it, so that a resumed run draws that batch again (an exact resume)."""

    def __init__(self, data, batch_size, block_size, device, seed, rank=0, world_size=1):
        self.data, self.shape, self.device, self.rank, self.world_size = (
            data,
            (batch_size, block_size),
            device,
            rank,
            world_size,
        )
        import torch

        self.generator = torch.Generator().manual_seed(seed)
        self.position = self.generator.get_state()

    def __call__(self):
        self.position = self.generator.get_state()
        return self.data.get_batch("train", *self.shape, self.device, self.generator, self.rank, self.world_size)
