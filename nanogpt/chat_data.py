"""Conversation files to a chat dataset (data/chat/prepare.py): each line of a .jsonl file checked, the
conversations split into train and val, rendered with the chat template (nanogpt/chat.py) and written
with the loss mask and where each conversation starts."""

import json
import time
from pathlib import Path

import numpy as np

from nanogpt.chat import CHAT_TOKENS, check_messages, render
from nanogpt.data import load_meta, shown_path, write_dataset
from nanogpt.errors import DataError
from nanogpt.tokenizer import BPE_FILE, meta_from_hf_folder, tokenizer_from_meta, train_bpe, without_chat_tokens


def read_conversations(path, need_answer=True):
    """The conversations of a .jsonl file (one {"messages": [...]} a line) or of every .jsonl file under a
    folder, as lists of (role, content) turns; anything wrong is one sentence naming the file and line."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*.jsonl") if p.is_file()) if path.is_dir() else [path]
    if not path.exists():
        raise DataError(f"input {path} not found; pass --input=FILE.jsonl (or a folder of .jsonl files)")
    if not files:
        raise DataError(f"{path} holds no .jsonl files")
    conversations = []
    for file in files:
        try:
            lines = file.read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise DataError(f"{file} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        for number, line in enumerate(lines, start=1):
            if line.strip():
                conversations.append(conversation_from_line(line, f"{file} line {number}", need_answer))
    if not conversations:
        raise DataError(f'{path} holds no conversations; write one {{"messages": [...]}} object a line')
    return conversations


def conversation_from_line(line, where, need_answer):
    try:
        record = json.loads(line)
    except ValueError:
        raise DataError(f'{where} is not JSON; write one {{"messages": [...]}} object a line') from None
    if not isinstance(record, dict) or "messages" not in record:
        raise DataError(f'{where} has no "messages": write {{"messages": [{{"role": ..., "content": ...}}]}}')
    try:
        return check_messages(record["messages"], need_answer)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


def encode_conversations(tokenizer, conversations, block_size):
    """(ids, mask, starts) of the conversations one after another, starts where each begins, and the
    counts of those cut (longer than block_size + 1 tokens, cut there: the end of a long answer is lost)
    and skipped (no answer left within block_size + 1 tokens)."""
    ids, mask, starts, cut, skipped = [], [], [], 0, 0
    for turns in conversations:
        conversation_ids, conversation_mask = render(tokenizer, turns)
        if len(conversation_ids) > block_size + 1:
            conversation_ids, conversation_mask = (
                conversation_ids[: block_size + 1],
                conversation_mask[: block_size + 1],
            )
            if not any(conversation_mask):
                skipped += 1
                continue
            cut += 1
        starts.append(len(ids))
        ids += conversation_ids
        mask += conversation_mask
    return ids, mask, starts, cut, skipped


def base_vocabulary(kind, conversations, vocab_size, vocab_from):
    """(meta, tokenizer_json) of the vocabulary under the chat tokens: that of vocab_from (a dataset
    folder or a model folder, so that its model can be fine-tuned), else GPT-2's, the conversations'
    characters, or a BPE trained on them."""
    if vocab_from:
        folder = Path(vocab_from)
        if not folder.is_dir():
            raise DataError(f"--vocab_from={vocab_from}: no such folder; give a dataset folder or a model folder")
        meta = meta_from_hf_folder(folder) if (folder / "config.json").is_file() else load_meta(folder)
        meta = without_chat_tokens(meta)
        return {k: v for k, v in meta.items() if k != "dtype"}, None
    texts = [content for turns in conversations for _, content in turns]
    if kind == "char":
        chars = sorted(set("".join(texts)))
        return {"tokenizer": "char", "vocab_size": len(chars), "chars": chars}, None
    if kind == "bpe":
        tokenizer_json = train_bpe(texts, vocab_size)
        return {"tokenizer": "bpe", "tokenizer_json": tokenizer_json}, tokenizer_json
    return {"tokenizer": "gpt2"}, None


def prepare_chat(cfg, out_dir):
    """The whole of data/chat/prepare.py after its settings: conversations read and checked, split by
    conversation into train and val, rendered, and written with their masks and starts."""
    t0 = time.time()
    conversations = read_conversations(cfg.input)
    meta, tokenizer_json = base_vocabulary(cfg.tokenizer, conversations, cfg.vocab_size, cfg.vocab_from)
    meta["chat_tokens"] = CHAT_TOKENS
    tokenizer = tokenizer_from_meta(meta)
    meta["vocab_size"] = tokenizer.vocab_size
    if tokenizer_json is not None:
        meta.pop("tokenizer_json")
        meta["tokenizer_file"] = BPE_FILE
    order = np.random.default_rng(cfg.seed).permutation(len(conversations))
    n_val = max(1, round(len(conversations) * cfg.val_fraction))
    if len(conversations) < 2:
        raise DataError(f"{cfg.input} holds one conversation; train and val need at least one each")
    splits, arrays, counts = {"val": order[:n_val], "train": order[n_val:]}, {}, [0, 0]
    for split, chosen in splits.items():
        ids, mask, starts, cut, skipped = encode_conversations(
            tokenizer, [conversations[i] for i in chosen], cfg.block_size
        )
        if not starts:
            raise DataError(f"no {split} conversation has an answer within --block_size={cfg.block_size} tokens")
        splits[split] = ids
        arrays[f"{split}_mask.bin"] = np.asarray(mask, dtype=np.uint8)
        arrays[f"{split}_starts.bin"] = np.asarray(starts, dtype=np.int64)
        counts = [counts[0] + cut, counts[1] + skipped]
    meta = write_dataset(out_dir, splits["train"], splits["val"], meta, tokenizer_json, arrays)
    answer_tokens = int(arrays["train_mask.bin"].sum())
    print(
        f"{len(conversations):,} conversations ({len(splits['train']):,} train tokens, {answer_tokens:,} of them"
        f" answers; {len(splits['val']):,} val tokens); {counts[0]} cut and {counts[1]} skipped at"
        f" --block_size={cfg.block_size}; {time.time() - t0:.1f} s; written to {shown_path(out_dir)}"
    )
    return meta
