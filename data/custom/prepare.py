"""Prepare your own text for training.

    python data/custom/prepare.py --input=my_text.txt                  # character-level
    python data/custom/prepare.py --input=folder_of_txt --tokenizer=gpt2   # GPT-2 BPE
    python train.py --dataset=custom

Takes a text file, or every .txt file under a folder, tokenises it (char: one id per distinct
character; gpt2: GPT-2 BPE, needed to fine-tune GPT-2), and writes train.bin / val.bin (first 90% /
last 10%) and meta.json to data/custom/. Ids are stored as uint16 when the vocabulary fits
(up to 65,536 tokens), else uint32.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, installed or not

from nanogpt.data import prepare_text, read_text_files  # noqa: E402
from nanogpt.errors import run_main  # noqa: E402

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(HERE / "input.txt"), help="a text file or a folder of .txt files (default data/custom/input.txt)")
    parser.add_argument("--tokenizer", choices=["char", "gpt2"], default="char", help="char-level or GPT-2 BPE")
    parser.add_argument("--out_dir", default=str(HERE), help="where to write train.bin, val.bin, meta.json")
    args = parser.parse_args()
    prepare_text(read_text_files(args.input), args.tokenizer, args.out_dir)


if __name__ == "__main__":
    run_main(main)
