"""Prepare your own text for training.

    python data/custom/prepare.py --input=my_text.txt                  # character-level
    python data/custom/prepare.py --input=folder_of_txt --tokenizer=gpt2   # GPT-2 BPE
    python data/custom/prepare.py --input=my_text.txt --tokenizer=bpe --vocab_size=4096   # a BPE of your own
    python train.py --dataset=custom

Takes a text file, or every .txt file under a folder, tokenises it and writes train.bin / val.bin
(first 90% / last 10%) and meta.json to data/custom/:
- char: one id per distinct character;
- gpt2: GPT-2's BPE, needed to fine-tune GPT-2;
- bpe: a byte-level BPE of --vocab_size tokens trained on this text (Hugging Face tokenizers), saved
  as tokenizer.json beside the token files; each file is a document, followed by <|endoftext|>.
Ids are stored as uint16 when the vocabulary fits (up to 65,536 tokens), else uint32.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, installed or not

from nanogpt.command_line import load_config, setting  # noqa: E402
from nanogpt.data import prepare_bpe, prepare_text, read_documents  # noqa: E402
from nanogpt.errors import run_main  # noqa: E402
from nanogpt.files import check_writable_folder  # noqa: E402

HERE = Path(__file__).resolve().parent


@dataclass
class CustomSettings:
    input: str = setting("", "a text file or a folder of .txt files; empty: data/custom/input.txt")
    tokenizer: str = setting(
        "char",
        "'char' (one id per distinct character), 'gpt2' (GPT-2 BPE) or 'bpe' (trained on this text)",
        choices=("char", "gpt2", "bpe"),
    )
    vocab_size: int = setting(
        4096,
        "with tokenizer=bpe: tokens in the vocabulary, the 256 bytes and <|endoftext|> included",
        within="[257, 1048576]",
    )
    out_dir: str = setting("", "where to write train.bin, val.bin, meta.json; empty: data/custom/")


def read_settings(argv):
    return load_config(CustomSettings, argv, script="data/custom/prepare.py")


def main():
    cfg = read_settings(sys.argv[1:])
    out_dir = cfg.out_dir or HERE
    check_writable_folder(out_dir, "out_dir")
    documents = read_documents(cfg.input or HERE / "input.txt")
    if cfg.tokenizer == "bpe":
        prepare_bpe(documents, cfg.vocab_size, out_dir)
    else:
        prepare_text("\n\n".join(documents), cfg.tokenizer, out_dir)


if __name__ == "__main__":
    run_main(main)
