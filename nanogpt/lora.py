"""LoRA: low-rank adapters trained beside frozen pretrained weights, through Hugging Face PEFT.

PEFT replaces each targeted nn.Linear in place by its LoRA layer, which keeps the Linear as
`base_layer` and adds lora_A (rank x in) and lora_B (out x rank), B starting at zero so the model
starts as its base; the GPT stays the top module, so training, generation and checkpoints see the same
model. Only the adapters train. A LoRA checkpoint holds the adapters alone and names its base (a GPT-2
name or a Hugging Face folder); loading it rebuilds the base and adds them, merged into the weights
(W + B A alpha / rank) for sampling, serving, evaluation and export.
"""

import importlib.util
from pathlib import Path

import torch

from nanogpt.errors import CheckpointError, SettingError, UnavailableError

# the Linear layers each lora_targets choice adapts (PEFT matches a layer by the end of its name)
LORA_LAYERS = {"attention": ("attn.c_attn", "attn.c_proj"), "mlp": ("mlp.c_fc", "mlp.c_proj")}
LORA_LAYERS["both"] = LORA_LAYERS["attention"] + LORA_LAYERS["mlp"]
INSTALL = "LoRA needs peft: pip install -e '.[lora]' (or pip install peft)"


def check_peft():
    if importlib.util.find_spec("peft") is None:
        raise UnavailableError(INSTALL)


def check_lora_settings(cfg):
    """Refuse, before anything loads, what a LoRA run cannot be."""
    if cfg.init_from in ("scratch", "auto"):
        raise SettingError(
            f"lora_rank trains adapters on pretrained weights, and init_from is {cfg.init_from!r}: use --init_from=gpt2"
            f" (or another GPT-2 name, or a Hugging Face folder), or --init_from=resume to continue a LoRA run"
        )
    clashes = [
        name for name, on in (("fsdp", cfg.fsdp), ("fp8", cfg.fp8), ("optimizer='muon'", cfg.optimizer == "muon")) if on
    ]
    if clashes:
        raise SettingError(
            f"lora_rank cannot be combined with {', '.join(clashes)}; LoRA trains with --optimizer=adamw or "
            "adafactor, under DDP or in one process"
        )
    check_peft()


def check_lora_resume(cfg, checkpoint):
    """Refuse a resume whose LoRA settings are not the checkpoint's (its adapters have that shape)."""
    saved = checkpoint.get("lora")
    if saved is None and cfg.lora_rank:
        raise SettingError(
            f"the checkpoint in {cfg.out_dir} is a full model, not a LoRA run; resume without --lora_rank, or export it"
            f" (python export.py --out_dir={cfg.out_dir} --to=FOLDER) and fine-tune --init_from=FOLDER with LoRA"
        )
    if saved is not None:
        wanted = lora_record(cfg, saved["base"])
        changed = [f"--lora_{key}={saved[key]}" for key in ("rank", "alpha", "targets") if wanted[key] != saved[key]]
        if changed:
            raise SettingError(
                f"the checkpoint in {cfg.out_dir} is a LoRA run of {saved['base']}; resume it with its "
                f"settings: {' '.join(changed)}"
            )


def lora_record(cfg, base):
    """What a LoRA checkpoint says of its adapters and base (a folder as an absolute path: a resume or a
    sample from another working directory finds it too)."""
    base = str(Path(base).resolve()) if Path(base).is_dir() else base
    return dict(rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets, dropout=cfg.lora_dropout, base=base)


def run_lora(cfg, checkpoint):
    """The LoRA record of a run (None for a full one): a resumed run's from its checkpoint."""
    if checkpoint is not None:
        return checkpoint.get("lora")
    return lora_record(cfg, cfg.init_from) if cfg.lora_rank else None


def adapters_note(model):
    """', of which N (LoRA adapters) train' where only some of the model's parameters train."""
    trained, total = (
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        sum(p.numel() for p in model.parameters()),
    )
    return f", of which {trained / 1e6:.2f}M (LoRA adapters) train" if trained < total else ""


def peft_config(lora, **extra):
    from peft import LoraConfig

    return LoraConfig(
        r=lora["rank"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(LORA_LAYERS[lora["targets"]]),
        bias="none",
        **extra,
    )


def add_adapters(model, lora, base_dtype=torch.float32):
    """Freeze model and give its targeted Linear layers adapters (float32); the frozen weights are held
    in base_dtype (the training dtype: half the memory in bf16, and autocast would cast them anyway)."""
    try:
        from peft import inject_adapter_in_model
    except ImportError:
        raise UnavailableError(INSTALL) from None
    inject_adapter_in_model(peft_config(lora), model)
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(base_dtype)
    return model


def adapter_state(state_dict):
    """The adapters' entries of a LoRA model's state dict: what its checkpoint keeps."""
    return {k: v for k, v in state_dict.items() if ".lora_" in k}


def merge_adapters(model):
    """Fold every adapter into its Linear's weight and put the plain Linear back: a GPT as any other."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    return model


def model_with_adapters(checkpoint, merge=True, base_dtype=torch.float32, **overrides):
    """The GPT of a LoRA checkpoint: its base with the saved adapters (merged when merge)."""
    from nanogpt.hf import gpt_from_pretrained

    lora = checkpoint["lora"]
    model = gpt_from_pretrained(lora["base"], **overrides)
    model_args = checkpoint["model_args"]
    if model_args["block_size"] < model.config.block_size:
        model.crop_block_size(model_args["block_size"])
    model.grow_vocabulary(model_args["vocab_size"])  # a chat run's turn markers, the same rows as in training
    add_adapters(model, lora, base_dtype)
    missing, unexpected = model.load_state_dict(checkpoint["model"], strict=False)
    if unexpected or any(".lora_" in k for k in missing):
        raise CheckpointError(
            f"the adapters in {checkpoint['path']} do not fit the layers of its base {lora['base']}; it is "
            "damaged or its base has changed"
        )
    return merge_adapters(model) if merge else model


def export_adapters(checkpoint, folder):
    """Write a LoRA checkpoint's adapters as a PEFT adapter folder (adapter_config.json and
    adapter_model.safetensors) for peft.PeftModel.from_pretrained on the transformers GPT-2 of its base.
    transformers keeps GPT-2's matrices as Conv1D, (in, out): hence fan_in_fan_out. The adapters
    themselves have the same shapes either way, and our layer names are GPT-2's."""
    from safetensors.torch import save_file

    lora = checkpoint["lora"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_config(lora, fan_in_fan_out=True, task_type="CAUSAL_LM", base_model_name_or_path=lora["base"]).save_pretrained(
        folder
    )
    # PEFT's file names a tensor by its place in PeftModel (base_model.model. ...) without the adapter's name
    state = {f"base_model.model.{k.replace('.default.', '.')}": v.contiguous() for k, v in checkpoint["model"].items()}
    save_file(state, folder / "adapter_model.safetensors", metadata={"format": "pt"})
