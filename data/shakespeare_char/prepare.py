"""Prepare tiny Shakespeare for character-level training.

    python data/shakespeare_char/prepare.py [--input=PATH] [--out_dir=FOLDER]

Reads data/shakespeare_char/input.txt (downloading it when it is missing, or taking the offline copy
in ../shared/data), maps each distinct character to an id, and writes train.bin / val.bin (the first
90% / last 10% of the text, as uint16) and meta.json (the characters, in id order) next to this file.
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
    prepare_text(text, "char", args.out_dir)


if __name__ == "__main__":
    run_main(main)
