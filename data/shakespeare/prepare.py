"""Prepare tiny Shakespeare in GPT-2 BPE tokens: the data for fine-tuning GPT-2.

    python data/shakespeare/prepare.py [--input=PATH] [--out_dir=FOLDER]

Reads data/shakespeare/input.txt (downloading it when missing, or taking the offline copy in
../shared/data), encodes it with GPT-2's tokenizer (tiktoken) and writes train.bin / val.bin (first
90% / last 10%, uint16) and meta.json next to this file.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, installed or not

from nanogpt.data import find_source_text, prepare_text  # noqa: E402
from nanogpt.errors import run_main  # noqa: E402

HERE = Path(__file__).resolve().parent
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="text file to use instead of input.txt")
    parser.add_argument("--out_dir", default=str(HERE), help="where to write train.bin, val.bin, meta.json")
    args = parser.parse_args()
    text = find_source_text(args.input, HERE / "input.txt", "tinyshakespeare/input.txt", URL)
    prepare_text(text, "gpt2", args.out_dir)


if __name__ == "__main__":
    run_main(main)
