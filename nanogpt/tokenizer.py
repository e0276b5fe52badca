"""Text <-> token ids: character-level from a dataset's meta.json, or GPT-2's BPE through tiktoken."""

import os

from nanogpt.data import shared_data_dir
from nanogpt.errors import UserError


class CharTokenizer:
    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    def encode(self, text, ordinary=False):
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            shown = ", ".join(repr(ch) for ch in unknown[:10])
            raise UserError(f"the text has characters outside the model's vocabulary: {shown}; use only characters from the training text")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def token_byte_lengths(self):
        """Each id's length in UTF-8 bytes (what bits per byte divides by)."""
        return [len(ch.encode("utf-8")) for ch in self.chars]


class GPT2Tokenizer:
    def __init__(self):
        import tiktoken

        # offline, tiktoken's files are found in the shared data's ready-made cache
        shared = shared_data_dir()
        if "TIKTOKEN_CACHE_DIR" not in os.environ and shared is not None and (shared / "tiktoken_cache").is_dir():
            os.environ["TIKTOKEN_CACHE_DIR"] = str(shared / "tiktoken_cache")
        try:
            self.enc = tiktoken.get_encoding("gpt2")
        except Exception as e:
            raise UserError(f"could not load the GPT-2 tokenizer ({e}); it needs internet once, or TIKTOKEN_CACHE_DIR set to a cache") from None
        self.eot_token = self.enc.eot_token
        self.vocab_size = self.enc.n_vocab

    def encode(self, text, ordinary=False):
        """ordinary=True reads '<|endoftext|>' in the text as plain characters (for training data)."""
        if ordinary:
            return self.enc.encode_ordinary(text)
        return self.enc.encode(text, allowed_special={"<|endoftext|>"})

    def decode(self, ids):
        return self.enc.decode(ids)

    def token_byte_lengths(self):
        """Each id's length in bytes; <|endoftext|> marks a boundary and stands for no text, so 0."""
        lengths = [len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)]
        lengths[self.eot_token] = 0
        return lengths


def same_vocabulary(a, b):
    """Whether two datasets' (or a checkpoint's and a dataset's) metadata map text to the same ids."""
    return a["tokenizer"] == b["tokenizer"] and a["vocab_size"] == b["vocab_size"] and a.get("chars") == b.get("chars")


def describe_vocabulary(meta):
    kind = "characters" if meta["tokenizer"] == "char" else "GPT-2 BPE tokens"
    return f"a vocabulary of {meta['vocab_size']} {kind}"


def tokenizer_from_meta(meta):
    if meta["tokenizer"] == "char":
        return CharTokenizer(meta["chars"])
    return GPT2Tokenizer()
