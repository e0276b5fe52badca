"""Export a trained checkpoint as a Hugging Face transformers GPT-2.

    python export.py --out_dir=out-shakespeare-char --to=hf-shakespeare-char
    python export.py --out_dir=out --to=hf-gpt2-owt --force      # replace a non-empty folder
    python export.py --out_dir=out-lora --to=adapters --adapters_only=True   # a LoRA run's adapters, for PEFT

Writes config.json and model.safetensors, which transformers.GPT2LMHeadModel.from_pretrained loads,
plus the tokenizer: GPT-2's vocab.json / merges.txt for BPE models, char_vocab.json (character -> id)
for char-level ones. The folder also works as --init_from=FOLDER for train.py and sample.py. A LoRA
run exports as its base with the adapters merged in, or with --adapters_only as a PEFT adapter folder
that peft.PeftModel.from_pretrained puts on the transformers GPT-2 of its base.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from nanogpt.checkpoint import load_checkpoint, model_from_checkpoint
from nanogpt.command_line import load_config, setting
from nanogpt.config import CHECKPOINTS
from nanogpt.errors import SettingError, UnavailableError, run_main
from nanogpt.files import check_writable_folder
from nanogpt.hf import export_hf_gpt2
from nanogpt.lora import check_peft, export_adapters
from nanogpt.tokenizer import meta_from_hf_folder


@dataclass
class ExportSettings:
    out_dir: str = setting("out", "folder holding the checkpoint to export")
    to: str = setting("", "folder to write the Hugging Face model into")
    force: bool = setting(False, "write into --to even if it already holds files (they may be replaced)")
    checkpoint: str = setting(
        "best",
        "'best' (best.pt, the lowest val loss) or 'latest' (ckpt.pt, where training stopped)",
        choices=CHECKPOINTS,
    )
    adapters_only: bool = setting(
        False,
        "a LoRA run: write only its adapters, as a PEFT adapter folder (adapter_config.json, "
        "adapter_model.safetensors), instead of the merged model",
    )


def read_settings(argv):
    """The settings, refused in one sentence if they cannot work, before the checkpoint loads."""
    cfg = load_config(ExportSettings, argv, script="export.py")
    if not cfg.to:
        raise SettingError("say where to write the model: --to=FOLDER")
    target = Path(cfg.to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not cfg.force:
        raise SettingError(
            f"{target} already exists and is not empty; choose another --to, or pass --force=True to write into it"
        )
    return cfg


def main():
    cfg = read_settings(sys.argv[1:])
    target = Path(cfg.to)
    # before the checkpoint loads: a place that cannot hold a folder is one sentence
    check_writable_folder(target, "to")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UnavailableError(
            "export needs transformers: pip install -e '.[hf]' (or pip install transformers safetensors)"
        ) from None
    checkpoint = load_checkpoint(cfg.out_dir, cfg.checkpoint)
    if cfg.adapters_only:
        if "lora" not in checkpoint:
            raise SettingError(
                f"{checkpoint['path']} is a full model, not a LoRA run: it has no adapters; export it without "
                "--adapters_only"
            )
        base = checkpoint["lora"]["base"]
        if checkpoint["tokenizer"].get("chat_tokens") and not meta_from_hf_folder(base).get("chat_tokens"):
            raise SettingError(
                f"{checkpoint['path']} was fine-tuned on conversations: its turn markers are embedding rows that its"
                f" base {base} lacks, so its adapters alone cannot chat; export it without --adapters_only"
            )
        check_peft()
        export_adapters(checkpoint, target)
        print(
            f"exported the LoRA adapters to {target}: load them with peft.PeftModel.from_pretrained(model, "
            f"{str(target)!r}) on the GPT-2 {checkpoint['lora']['base']}"
        )
        return
    model = model_from_checkpoint(checkpoint, dropout=0.0)
    export_hf_gpt2(model, target, checkpoint["tokenizer"])
    print(
        f"exported {model.get_num_params() / 1e6:.2f}M parameters to {target}: load it with "
        f"transformers.GPT2LMHeadModel.from_pretrained({str(target)!r})"
    )


if __name__ == "__main__":
    run_main(main)
