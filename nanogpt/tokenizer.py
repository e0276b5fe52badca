"""Text <-> token ids, and the one place that knows the kinds of tokenizer:

    char  one id per distinct character of the training text (meta.json lists them)
    gpt2  GPT-2's BPE, through tiktoken
    bpe   a byte-level BPE trained on the user's text with Hugging Face tokenizers (tokenizer.json)

A dataset's meta.json names its kind; checkpoints keep that metadata (with a bpe tokenizer's whole
tokenizer.json), so a model still samples after its data folder is gone. A chat dataset's meta.json also
lists `chat_tokens` (nanogpt/chat.py): every kind gives them the ids right after its own vocabulary, and
vocab_size counts them. Text never encodes to them: they mark turns, and only the chat template writes them.
"""

import contextlib
import json
import os
from pathlib import Path

from nanogpt.chat import CHAT_TOKENS, JINJA_TEMPLATE
from nanogpt.errors import DataError, first_line
from nanogpt.files import shared_data_dir

KINDS = ("char", "gpt2", "bpe")
EOT = "<|endoftext|>"  # separates documents in GPT-2's data and in bpe data
BPE_FILE = "tokenizer.json"  # a bpe dataset's tokenizer, beside its token files
CHAR_VOCAB_NAME = "char_vocab.json"  # a char-level model's vocabulary, next to its exported weights
GPT2_VOCAB_SIZE = 50257
PREPARE_AGAIN = "prepare the dataset again with python data/custom/prepare.py --tokenizer=bpe"


class CharTokenizer:
    def __init__(self, chars, chat_tokens=()):
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.chars = list(chars) + list(chat_tokens)  # id -> its text (a chat token's, its name)
        self.chat_ids = {token: len(chars) + i for i, token in enumerate(chat_tokens)}
        self.vocab_size = len(self.chars)

    def encode(self, text, ordinary=False):
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            shown = ", ".join(repr(ch) for ch in unknown[:10])
            raise DataError(
                f"the text has characters outside the model's vocabulary: {shown}; use only characters from "
                "the training text"
            )
        return [self.stoi[ch] for ch in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def token_byte_lengths(self):
        """Each id's length in UTF-8 bytes (what bits per byte divides by); a chat token stands for no text."""
        return [0 if ch in self.chat_ids else len(ch.encode("utf-8")) for ch in self.chars]


class GPT2Tokenizer:
    def __init__(self, chat_tokens=()):
        import tiktoken

        try:
            with offline_tiktoken_cache():
                self.enc = tiktoken.get_encoding("gpt2")  # loaded once per process, then kept by tiktoken
        except Exception as e:
            raise DataError(
                f"could not load the GPT-2 tokenizer ({e}); it needs internet once, or TIKTOKEN_CACHE_DIR set "
                "to a cache"
            ) from None
        self.eot_token = self.enc.eot_token
        self.chat_ids = {token: self.enc.n_vocab + i for i, token in enumerate(chat_tokens)}
        if chat_tokens:  # tiktoken's way to extend an encoding: the same merges, more special tokens
            self.enc = tiktoken.Encoding(
                "gpt2-chat",
                pat_str=self.enc._pat_str,
                mergeable_ranks=self.enc._mergeable_ranks,
                special_tokens={**self.enc._special_tokens, **self.chat_ids},
            )
        self.vocab_size = self.enc.n_vocab

    def encode(self, text, ordinary=False):
        """ordinary=True reads '<|endoftext|>' in the text as plain characters (for training data)."""
        if ordinary:
            return self.enc.encode_ordinary(text)
        return self.enc.encode(text, allowed_special={EOT}, disallowed_special=())  # a chat token typed is text

    def decode(self, ids):
        return self.enc.decode(ids)

    def token_byte_lengths(self):
        """Each id's length in bytes; <|endoftext|> marks a boundary and stands for no text, so 0."""
        lengths = [len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)]
        for special in (self.eot_token, *self.chat_ids.values()):
            lengths[special] = 0
        return lengths


@contextlib.contextmanager
def offline_tiktoken_cache():
    """Offline, tiktoken finds its files in the shared data's ready-made cache: TIKTOKEN_CACHE_DIR
    points there while the encoding loads (unless the user set it), and is put back after."""
    shared = shared_data_dir()
    if "TIKTOKEN_CACHE_DIR" in os.environ or shared is None or not (shared / "tiktoken_cache").is_dir():
        yield
        return
    os.environ["TIKTOKEN_CACHE_DIR"] = str(shared / "tiktoken_cache")
    try:
        yield
    finally:
        del os.environ["TIKTOKEN_CACHE_DIR"]


class BPETokenizer:
    """A byte-level BPE from a tokenizer.json: every text encodes (any byte has a token), and decoding
    gives the text back exactly."""

    def __init__(self, tokenizer_json, source="the tokenizer", remedy=PREPARE_AGAIN, chat_tokens=()):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # tokenizers raises plain Exceptions for malformed files
            raise DataError(f"{source} cannot be read as a tokenizer.json ({first_line(e)}); {remedy}") from None
        self.eot_token = self.tok.token_to_id(EOT)
        if self.eot_token is None:
            raise DataError(f"{source} has no {EOT} token; {remedy}")
        self.tok.add_special_tokens(list(chat_tokens))  # appended after the vocabulary
        self.chat_ids = {token: self.tok.token_to_id(token) for token in chat_tokens}
        self.vocab_size = self.tok.get_vocab_size()

    def encode(self, text, ordinary=False):
        """ordinary=True reads '<|endoftext|>' in the text as plain characters (for training data); chat
        tokens always are."""
        self.tok.encode_special_tokens = True  # every special token's text is characters; EOT is put back below
        pieces = [
            self.tok.encode(piece, add_special_tokens=False).ids for piece in ([text] if ordinary else text.split(EOT))
        ]
        return [i for k, piece in enumerate(pieces) for i in ([self.eot_token] if k else []) + piece]

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def token_byte_lengths(self):
        """Each id's length in bytes: byte-level tokens spell one character per byte; <|endoftext|>, 0."""
        special = {token.content for token in self.tok.get_added_tokens_decoder().values()}
        return [
            0 if token in special else len(token) for token in (self.tok.id_to_token(i) for i in range(self.vocab_size))
        ]


def train_bpe(documents, vocab_size):
    """A byte-level BPE of vocab_size tokens (the 256 bytes, <|endoftext|>, then merges) trained on
    documents; returns its tokenizer.json text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split, on bytes
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train_from_iterator(documents, trainer, length=len(documents))
    return tokenizer.to_str()


def tokenizer_from_meta(meta, checkpoint_path=None):
    """The tokenizer a dataset's (or, from checkpoint_path, a checkpoint's) metadata describes."""
    chat_tokens = meta.get("chat_tokens", ())
    if meta["tokenizer"] == "char":
        return CharTokenizer(meta["chars"], chat_tokens)
    if meta["tokenizer"] == "bpe":
        if checkpoint_path is None:
            return BPETokenizer(meta["tokenizer_json"], chat_tokens=chat_tokens)
        return BPETokenizer(
            meta.get("tokenizer_json", ""),
            f"the tokenizer saved in {checkpoint_path}",
            "the checkpoint is damaged: use another one or train again",
            chat_tokens,
        )
    return GPT2Tokenizer(chat_tokens)


def check_meta(meta, path):
    """Refuse a meta.json that names no tokenizer this code knows, in one sentence; a bpe dataset's
    tokenizer.json is read into it, so checkpoints carry it."""
    if not isinstance(meta, dict) or meta.get("tokenizer") not in KINDS or not isinstance(meta.get("vocab_size"), int):
        raise DataError(
            f"{path} must give 'tokenizer' ({', '.join(KINDS)}) and an integer 'vocab_size'; prepare the dataset again"
        )
    chat_tokens = meta.get("chat_tokens", [])
    if not isinstance(chat_tokens, list) or not all(isinstance(t, str) and t for t in chat_tokens):
        raise DataError(f"{path} gives chat_tokens that are not a list of names; prepare the dataset again")
    if meta["tokenizer"] == "char" and len(meta.get("chars", [])) + len(chat_tokens) != meta["vocab_size"]:
        raise DataError(
            f"{path} lists {len(meta.get('chars', []))} characters and {len(chat_tokens)} chat tokens but "
            f"vocab_size {meta['vocab_size']}; prepare the dataset again"
        )
    if meta["tokenizer"] == "bpe" and "tokenizer_json" not in meta:
        bpe_file = Path(path).parent / BPE_FILE
        if not bpe_file.is_file():
            raise DataError(f"{bpe_file} is missing; {PREPARE_AGAIN}")
        meta["tokenizer_json"] = bpe_file.read_text(encoding="utf-8")
        if BPETokenizer(meta["tokenizer_json"], str(bpe_file)).vocab_size + len(chat_tokens) != meta["vocab_size"]:
            raise DataError(f"{bpe_file} does not match the vocab_size in {path}; {PREPARE_AGAIN}")
    return meta


def model_vocab_size(meta):
    """Rows of the model's embedding: BPE vocabularies padded to a multiple of 64 (GPT-2's 50257 ->
    50304: ~25% faster matmuls on GPUs); the extra ids never occur, so the model learns to give them no
    probability. Character vocabularies stay as they are."""
    return meta["vocab_size"] if meta["tokenizer"] == "char" else -(-meta["vocab_size"] // 64) * 64


def end_of_text_id(meta):
    """The <|endoftext|> id: GPT-2's 50256, a trained BPE's own, none for characters."""
    if meta["tokenizer"] == "char":
        return None
    return GPT2_VOCAB_SIZE - 1 if meta["tokenizer"] == "gpt2" else BPETokenizer(meta["tokenizer_json"]).eot_token


def same_vocabulary(a, b):
    """Whether two datasets' (or a checkpoint's and a dataset's) metadata map text to the same ids."""
    keys = ("tokenizer", "vocab_size", "chars", "tokenizer_json", "chat_tokens")
    return all(a.get(key) == b.get(key) for key in keys)


def without_chat_tokens(meta):
    """The vocabulary a chat dataset's is built on: the same ids, less the chat tokens after them."""
    meta = dict(meta)
    return dict(meta, vocab_size=meta["vocab_size"] - len(meta.pop("chat_tokens", [])))


def describe_vocabulary(meta):
    kind = {"char": "characters", "gpt2": "GPT-2 BPE tokens", "bpe": "BPE tokens trained on its text"}[
        meta["tokenizer"]
    ]
    chat = f" (with {len(meta['chat_tokens'])} chat tokens)" if meta.get("chat_tokens") else ""
    return f"a vocabulary of {meta['vocab_size']} {kind}{chat}"


def meta_from_hf_folder(name_or_dir):
    """The tokenizer a pretrained model reads: an exported char-level model's characters, an exported
    bpe model's tokenizer.json, or else GPT-2's BPE (a GPT-2 name, or a folder with GPT-2's files)."""
    folder = Path(name_or_dir)
    if not folder.is_dir():
        return {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB_SIZE}
    if (folder / CHAR_VOCAB_NAME).is_file():
        stoi = json.loads((folder / CHAR_VOCAB_NAME).read_text(encoding="utf-8"))
        chars = sorted(stoi, key=stoi.get)
        meta = {"tokenizer": "char", "vocab_size": len(chars), "chars": chars}
    elif (folder / BPE_FILE).is_file() and not (folder / "vocab.json").is_file():
        # the chat tokens are in the file's added tokens too: the vocabulary under them is the file without them
        tokenizer = json.loads((folder / BPE_FILE).read_text(encoding="utf-8"))
        tokenizer["added_tokens"] = [t for t in tokenizer.get("added_tokens", []) if t["content"] not in CHAT_TOKENS]
        tokenizer_json = json.dumps(tokenizer, ensure_ascii=False)
        meta = {
            "tokenizer": "bpe",
            "vocab_size": BPETokenizer(tokenizer_json, str(folder / BPE_FILE)).vocab_size,
            "tokenizer_json": tokenizer_json,
        }
    else:
        meta = {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB_SIZE}
    if exported_chat_tokens(folder, meta["vocab_size"]):
        meta.update(chat_tokens=CHAT_TOKENS, vocab_size=meta["vocab_size"] + len(CHAT_TOKENS))
    return meta


def exported_chat_tokens(folder, base_size):
    """Whether an exported model's tokenizer has the chat tokens right after its vocabulary (export.py
    writes them as special tokens, which tokenizer.json lists among its added tokens)."""
    path = Path(folder) / BPE_FILE
    if not path.is_file():
        return False
    added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens", [])
    by_id = {token.get("id"): token.get("content") for token in added}
    return [by_id.get(base_size + k) for k in range(len(CHAT_TOKENS))] == CHAT_TOKENS


def write_hf_tokenizer(meta, out_dir):
    """The tokenizer files of an exported model, which AutoTokenizer.from_pretrained(out_dir) loads and
    which give the checkpoint's ids: for a char-level model a tokenizer of one token a character (and
    char_vocab.json, character -> id, which --init_from=FOLDER reads); GPT-2's files; a BPE's own."""
    if meta["tokenizer"] == "char":
        vocab = {ch: i for i, ch in enumerate(meta["chars"])}
        Path(out_dir, CHAR_VOCAB_NAME).write_text(
            json.dumps(vocab, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )
        write_char_tokenizer(vocab, out_dir)
    elif meta["tokenizer"] == "bpe":
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(meta["tokenizer_json"]),
            bos_token=EOT,
            eos_token=EOT,
            unk_token=EOT,
        ).save_pretrained(out_dir)
    else:
        write_gpt2_tokenizer_files(out_dir)
    if meta.get("chat_tokens"):
        add_chat_template(meta["chat_tokens"], out_dir)


def add_chat_template(chat_tokens, out_dir):
    """The chat tokens, as special tokens after the vocabulary, and the chat template (nanogpt/chat.py) in
    an exported tokenizer's files: AutoTokenizer's apply_chat_template then gives the ids we train on."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(out_dir)
    except (OSError, ValueError):  # GPT-2's files could not be written offline (see write_gpt2_tokenizer_files)
        print("note: the chat template is not written: the folder holds no tokenizer to add it to")
        return
    tokenizer.add_special_tokens({"additional_special_tokens": list(chat_tokens)})
    tokenizer.chat_template = JINJA_TEMPLATE
    tokenizer.save_pretrained(out_dir)


def write_char_tokenizer(vocab, out_dir):
    """A Hugging Face tokenizer of one token a character: every character its own piece ((?m). is any
    character, newlines included, in the Oniguruma regexes tokenizers uses), looked up in vocab, and
    the pieces joined back without spaces. A character outside vocab is an error, not a wrong id."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))  # [UNK] is not in vocab: unknown fails
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(out_dir)


def write_gpt2_tokenizer_files(out_dir):
    """GPT-2's vocab.json / merges.txt, from the shared offline copy or the hub, for AutoTokenizer."""
    shared = shared_data_dir()
    source = shared / "gpt2_bpe" if shared is not None else None
    if source is not None and (source / "encoder.json").is_file():
        Path(out_dir, "vocab.json").write_bytes((source / "encoder.json").read_bytes())
        Path(out_dir, "merges.txt").write_bytes((source / "vocab.bpe").read_bytes())
        return
    try:
        from transformers import GPT2TokenizerFast

        GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(out_dir)
    except OSError:
        print("note: GPT-2 tokenizer files not written (offline); load them with AutoTokenizer.from_pretrained('gpt2')")
