"""Prepare tiny Shakespeare in GPT-2 BPE tokens: the data for fine-tuning GPT-2.

    python data/shakespeare/prepare.py [--input=PATH] [--out_dir=FOLDER]

Reads data/shakespeare/input.txt (downloading it when missing, or taking the offline copy in
../shared/data), encodes it with GPT-2's tokenizer (tiktoken) and writes train.bin / val.bin (first
90% / last 10%, uint16) and meta.json next to this file.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, installed or not

from nanogpt.command_line import load_config  # noqa: E402
from nanogpt.data import ShakespeareSettings, prepare_tiny_shakespeare  # noqa: E402
from nanogpt.errors import run_main  # noqa: E402


def read_settings(argv):
    return load_config(ShakespeareSettings, argv, script="data/shakespeare/prepare.py")


def main():
    prepare_tiny_shakespeare(read_settings(sys.argv[1:]), "gpt2", Path(__file__).resolve().parent)


if __name__ == "__main__":
    run_main(main)
