"""Prepare conversations for chat fine-tuning.

    python data/chat/prepare.py --input=conversations.jsonl            # GPT-2 BPE (fine-tune gpt2*)
    python data/chat/prepare.py --input=folder_of_jsonl --tokenizer=char
    python data/chat/prepare.py --input=chats.jsonl --vocab_from=hf-shakespeare-char   # a model's own vocabulary
    python train.py config/finetune_chat.py

Reads one conversation a line, in OpenAI's messages format:
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}
and writes to data/chat/ the token ids of each conversation rendered with the chat template
(nanogpt/chat.py: special tokens mark the turns), one after another, in train.bin / val.bin (a tenth of
the conversations, drawn with --seed), with train_mask.bin / val_mask.bin (1 on every token the model
should learn to say: the assistant turns and their end marker), train_starts.bin / val_starts.bin
(where each conversation begins) and meta.json (the vocabulary and its chat tokens).
"""

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, installed or not

from nanogpt.chat_data import prepare_chat  # noqa: E402
from nanogpt.command_line import load_config, setting  # noqa: E402
from nanogpt.errors import SettingError, run_main  # noqa: E402
from nanogpt.files import check_writable_folder  # noqa: E402

HERE = Path(__file__).resolve().parent


@dataclass
class ChatSettings:
    input: str = setting("", "a .jsonl file of conversations, or a folder of them")
    tokenizer: str = setting(
        "gpt2",
        "'gpt2' (GPT-2 BPE, to fine-tune GPT-2), 'char' (the conversations' characters) or 'bpe' (trained on them)",
        choices=("gpt2", "char", "bpe"),
    )
    vocab_size: int = setting(
        4096, "with tokenizer=bpe: tokens in the BPE, before the chat tokens", within="[257, 1048576]"
    )
    vocab_from: str = setting(
        "", "a dataset or model folder whose vocabulary to use (the model to fine-tune reads it); replaces --tokenizer"
    )
    block_size: int = setting(
        1024, "the context of the model to train: a longer conversation is cut there, or skipped", within="[2, inf)"
    )
    val_fraction: float = setting(0.1, "the share of conversations held out for val", within="(0, 1)")
    seed: int = setting(1337, "which conversations go to val")
    out_dir: str = setting("", "where to write the dataset; empty: data/chat/")


def read_settings(argv):
    return load_config(ChatSettings, argv, script="data/chat/prepare.py")


def main():
    cfg = read_settings(sys.argv[1:])
    if not cfg.input:
        raise SettingError('give the conversations: --input=FILE.jsonl (one {"messages": [...]} a line)')
    out_dir = cfg.out_dir or HERE
    check_writable_folder(out_dir, "out_dir")
    prepare_chat(cfg, out_dir)


if __name__ == "__main__":
    run_main(main)
