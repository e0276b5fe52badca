"""Hugging Face interop: GPT-2 weights in (OpenAI's, or any save_pretrained GPT-2) and out.

Our parameter names are GPT-2's, so the mapping is one to one, except that OpenAI's checkpoints store
the attention and MLP matrices as Conv1D, (in, out), where nn.Linear wants (out, in): those four are
transposed.
"""

import json
import os
import sys
from pathlib import Path

import torch

from nanogpt.chat import END
from nanogpt.errors import CheckpointError, SettingError, UnavailableError, first_line
from nanogpt.tokenizer import end_of_text_id, write_hf_tokenizer

GPT2_SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def is_pretrained_source(init_from):
    """True for a GPT-2 name (gpt2, gpt2-medium, ...) or a local Hugging Face model folder."""
    return init_from in GPT2_SIZES or init_from.startswith("gpt2") or Path(init_from).is_dir()


def not_a_model(init_from, usage):
    """The error for an init_from that names no model; a path to a folder that is not there says so."""
    if "/" in init_from or os.sep in init_from or init_from.startswith("."):
        return SettingError(
            f"init_from {init_from}: no such folder; give a Hugging Face model folder that exists (saved with "
            "save_pretrained or export.py), or a GPT-2 name"
        )
    return SettingError(f"unknown init_from {init_from!r}; use {usage}")


def pretrained_block_size(name_or_dir):
    """The context length of a GPT-2 name or folder, read without loading (or downloading) weights;
    also checks that the folder holds a GPT-2."""
    if not Path(name_or_dir).is_dir():
        if name_or_dir not in GPT2_SIZES:
            raise SettingError(
                f"init_from {name_or_dir!r} is not a GPT-2 model: use one of {', '.join(GPT2_SIZES)} or a "
                "folder saved with save_pretrained"
            )
        return 1024
    config_path = Path(name_or_dir) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{name_or_dir} holds no config.json; it is not a Hugging Face model folder")
    # transformers would build a GPT-2 from another model's config with only a warning
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{config_path} is not valid JSON ({e}); save the model again with save_pretrained"
        ) from None
    if not isinstance(config, dict) or config.get("model_type") != "gpt2":
        raise CheckpointError(
            f"{name_or_dir} holds a {config.get('model_type') if isinstance(config, dict) else config!r} "
            "model, not GPT-2"
        )
    positions = config.get("n_positions", 1024)
    if not isinstance(positions, int) or positions < 1:
        raise CheckpointError(
            f"{config_path} gives n_positions {positions!r}, not a positive whole number; save the model "
            "again with save_pretrained"
        )
    return positions


def load_hf_gpt2(name_or_dir, dtype):
    """(model_args, state_dict in this project's names) of a Hugging Face GPT-2, its tensors in `dtype`.
    A folder's model.safetensors is read directly, a name (or a folder in another
    format) through transformers."""
    pretrained_block_size(name_or_dir)  # checks the name or folder
    print(f"loading GPT-2 weights from {name_or_dir}", file=sys.stderr)  # stderr: sample.py's stdout is the text
    weights_file = Path(name_or_dir) / "model.safetensors"
    if weights_file.is_file():
        hf = json.loads((Path(name_or_dir) / "config.json").read_text(encoding="utf-8"))
        tensors = read_safetensors(weights_file, dtype)
    else:
        hf, tensors = transformers_gpt2(name_or_dir, dtype)
    model_args = dict(gpt2_args(hf, name_or_dir), dropout=0.0)
    state = {}
    for key, value in tensors.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of older transformers versions, not weights
        # OpenAI's own files hold GPT2Model's names (h.0..., wte.weight), without the "transformer." prefix
        state[key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"] = value
    if model_args["tie_embeddings"]:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # a tied head is not stored
    return model_args, state


def read_safetensors(path, dtype):
    """A safetensors file's tensors in `dtype`, the Conv1D matrices transposed. Each is read through a
    mapping of the file of its own: one that needs no change stays the file's pages (no copy), and one
    converted frees its mapping, so loading never holds the weights twice."""
    from safetensors import SafetensorError, safe_open

    def opened():
        return safe_open(path, framework="pt")

    try:
        with opened() as f:
            names = list(f.keys())
        tensors = {}
        for name in names:
            with opened() as f:
                tensor = f.get_tensor(name)
            if name.endswith(CONV1D_WEIGHTS):
                tensor = tensor.t()
            tensors[name] = contiguous_in(tensor, dtype)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"could not read {path} ({first_line(e)}); save the model again") from None
    return tensors


def contiguous_in(tensor, dtype):
    """tensor in dtype and in contiguous memory, in one copy at most (to() alone keeps a transposed view
    as it is when the dtype does not change)."""
    return tensor.to(dtype, memory_format=torch.contiguous_format).contiguous()


def transformers_gpt2(name_or_dir, dtype):
    """(config.json's settings, state_dict with the Conv1D matrices transposed) of a GPT-2 that
    transformers loads: a name (from the hub, or its cache) or a folder in its other formats."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise UnavailableError(
            "loading GPT-2 weights needs transformers: pip install -e '.[hf]' (or pip install transformers)"
        ) from None
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_dir)
    except (OSError, ValueError, KeyError) as e:
        where = "the folder" if Path(name_or_dir).is_dir() else "the Hugging Face hub (is this machine online?)"
        raise CheckpointError(f"could not load a GPT-2 from {name_or_dir} through {where}: {first_line(e)}") from None
    state = {
        key: contiguous_in(value.t() if key.endswith(CONV1D_WEIGHTS) else value, dtype)
        for key, value in hf_model.state_dict().items()
    }
    return hf_model.config.to_dict(), state


def exact_gelu(activation_function, name_or_dir):
    """GPTConfig.exact_gelu for a transformers GPT-2's activation_function: "gelu" is the exact (erf)
    GELU; "gelu_new" (OpenAI's) and "gelu_pytorch_tanh" are the tanh approximation."""
    if activation_function not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(
            f"{name_or_dir} uses activation {activation_function!r}; only GELU (exact or tanh) is supported"
        )
    return activation_function == "gelu"


def pretrained_config(name_or_dir):
    """The GPTConfig of a GPT-2 name or folder, read without loading (or downloading) weights."""
    from nanogpt.model import GPTConfig

    positions = pretrained_block_size(name_or_dir)  # also checks the name or folder
    if not Path(name_or_dir).is_dir():
        return GPTConfig(**gpt2_args(dict(GPT2_SIZES[name_or_dir], n_positions=positions), name_or_dir))
    return GPTConfig(**gpt2_args(json.loads((Path(name_or_dir) / "config.json").read_text("utf-8")), name_or_dir))


def gpt2_args(hf, name_or_dir):
    """GPTConfig's arguments for a transformers GPT-2's settings (its config.json), with its defaults."""
    return dict(
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=hf.get("n_embd", 768),
        block_size=hf.get("n_positions", 1024),
        vocab_size=hf.get("vocab_size", 50257),
        bias=True,
        exact_gelu=exact_gelu(hf.get("activation_function", "gelu_new"), name_or_dir),
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def gpt_from_pretrained(name_or_dir, dtype=torch.float32, **overrides):
    """A GPT holding the weights of a Hugging Face GPT-2 (a name such as gpt2-medium, or a folder), in
    `dtype` (generation loads them straight into its own); overrides may change e.g. dropout."""
    from nanogpt.model import GPT, GPTConfig

    model_args, state = load_hf_gpt2(name_or_dir, dtype)
    # built without weights, then given the loaded tensors themselves: no random initialisation to make and
    # throw away, and no second copy
    with torch.device("meta"):
        model = GPT(GPTConfig(**dict(model_args, **overrides)))
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{name_or_dir} does not hold a GPT-2's weights ({first_line(e)})") from None
    if model.config.tie_embeddings:
        model.transformer.wte.weight = model.lm_head.weight  # one Parameter, as GPT() ties them
    return model


def export_hf_gpt2(model, out_dir, tokenizer_meta):
    """Write model as a transformers GPT-2 (config.json + model.safetensors) into out_dir, with its
    tokenizer's files (nanogpt/tokenizer.py's write_hf_tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from nanogpt.model import architecture_switches

    cfg = model.config
    # e.g. zero_init_proj only changes the start, and untied embeddings GPT-2's format can hold
    inexpressible = [
        f.name for f in architecture_switches() if not f.metadata["gpt2_format"] and getattr(cfg, f.name) != f.default
    ]
    if inexpressible:
        raise SettingError(
            f"this model uses {', '.join(inexpressible)}, which the GPT-2 format cannot express; only classic "
            "GPT-2 models export"
        )
    state = dict(model.state_dict())
    vocab_size = cfg.vocab_size
    if vocab_size > tokenizer_meta["vocab_size"]:
        # drop the padding rows (50304 -> 50257): they are never used, and tools expect the tokenizer's size
        vocab_size = tokenizer_meta["vocab_size"]
        for key in ("transformer.wte.weight", "lm_head.weight"):
            state[key] = state[key][:vocab_size]
    eot = end_of_text_id(tokenizer_meta)
    # a chat model's answer ends at the end of its turn: transformers' generate stops there too
    chat_tokens = tokenizer_meta.get("chat_tokens", [])
    end = tokenizer_meta["vocab_size"] - len(chat_tokens) + chat_tokens.index(END) if chat_tokens else eot
    hf_config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu" if cfg.exact_gelu else "gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=eot,
        eos_token_id=end,
    )
    state = {k: (v.t().contiguous() if k.endswith(CONV1D_WEIGHTS) else v) for k, v in state.items()}
    if not cfg.bias:
        # GPT-2 always has biases; a model trained without them has them all at zero
        hf_model = GPT2LMHeadModel(hf_config)
        for key, value in hf_model.state_dict().items():
            if key.endswith(".bias") and key not in state and not key.endswith(".attn.bias"):
                state[key] = torch.zeros_like(value)
    hf_model = GPT2LMHeadModel(hf_config)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise CheckpointError(
            f"this model does not map onto GPT-2 (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    os.makedirs(out_dir, exist_ok=True)
    hf_model.save_pretrained(out_dir, safe_serialization=True)
    write_hf_tokenizer(tokenizer_meta, out_dir)
