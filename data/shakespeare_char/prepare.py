"""Prepare tiny Shakespeare for character-level training.

    python data/shakespeare_char/prepare.py [--input=PATH] [--out_dir=FOLDER]

Reads data/shakespeare_char/input.txt (downloading it when it is missing, or taking the offline copy
in ../shared/data), maps each distinct character to an id, and writes train.bin / val.bin (the first
90% / last 10% of the text, as uint16) and meta.json (the characters, in id order) next to this file.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, installed or not

from nanogpt.command_line import load_config  # noqa: E402
from nanogpt.data import ShakespeareSettings, prepare_tiny_shakespeare  # noqa: E402
from nanogpt.errors import run_main  # noqa: E402


def read_settings(argv):
    return load_config(ShakespeareSettings, argv, script="data/shakespeare_char/prepare.py")


def main():
    prepare_tiny_shakespeare(read_settings(sys.argv[1:]), "char", Path(__file__).resolve().parent)


if __name__ == "__main__":
    run_main(main)
