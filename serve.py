"""Serve a trained model: OpenAI's completions API, with streaming, and a page to try it in a browser.

    python serve.py --out_dir=out-shakespeare-char         # the best checkpoint, on http://127.0.0.1:8000
    python serve.py --init_from=gpt2 --port=8080            # GPT-2 weights (a name or a Hugging Face folder)
    python serve.py --out_dir=out --host=0.0.0.0 --api_key=SECRET

Requests that arrive while others generate join the running batch at the next step. Needs the serve
extra: pip install -e '.[serve]'. python serve.py --help lists every setting.
"""

import os
import socket
import sys
from dataclasses import dataclass

from nanogpt.checkpoint import check_model_source, load_model_and_tokenizer
from nanogpt.command_line import load_config, setting
from nanogpt.config import CHECKPOINTS, DTYPES, quantize_setting
from nanogpt.errors import SettingError, UnavailableError, run_main
from nanogpt.system import resolve_device, resolve_dtype


@dataclass
class ServeSettings:
    out_dir: str = setting("out", "folder holding the checkpoint to serve (with init_from='resume')")
    init_from: str = setting("resume", "'resume' (checkpoint in out_dir) or a GPT-2 name or Hugging Face folder")
    checkpoint: str = setting(
        "best", "with init_from='resume': 'best' (best.pt) or 'latest' (ckpt.pt)", choices=CHECKPOINTS
    )
    host: str = setting("127.0.0.1", "address to listen on; 0.0.0.0 opens the server to the network")
    port: int = setting(8000, "port to listen on", within="[1, 65535]")
    api_key: str = setting("", "if set (or NANOGPT_API_KEY), every request but /health needs Authorization: Bearer KEY")
    max_rows: int = setting(32, "most completions generated together in one batch", within="[1, 4096]")
    max_queue: int = setting(128, "most completions waiting for a row; past it requests get 429", within="[0, 100000]")
    max_body_bytes: int = setting(
        1 << 20,
        "largest request body; a larger one is refused (413) as soon as it passes this, announced or not",
        within="[1, inf)",
    )
    max_tokens_limit: int = setting(
        4096,
        "largest max_tokens a request may ask for: generation slides past the model's context, so this "
        "bounds a request's time, not its length",
        within="[1, inf)",
    )
    device: str = setting("auto", "'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda'")
    dtype: str = setting("auto", "'auto', 'float32', 'bfloat16' or 'float16'", choices=DTYPES)
    quantize: str = quantize_setting()


def read_settings(argv):
    """The settings, refused in one sentence if they cannot work, before the model loads."""
    cfg = load_config(ServeSettings, argv, script="serve.py")
    check_model_source(cfg.init_from)
    cfg.api_key = cfg.api_key or os.environ.get("NANOGPT_API_KEY", "")
    resolve_dtype(cfg.dtype, resolve_device(cfg.device), cfg.quantize)
    return cfg


def main():
    cfg = read_settings(sys.argv[1:])
    try:
        import uvicorn

        from nanogpt.serving.server import create_app
    except ImportError:
        raise UnavailableError("serving needs FastAPI and uvicorn: pip install -e '.[serve]'") from None
    from nanogpt.generation.engine import Engine, inference_model

    check_port_free(cfg.host, cfg.port)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, cfg.quantize)
    model, tokenizer = load_model_and_tokenizer(cfg.init_from, cfg.out_dir, cfg.checkpoint, dtype)
    model = inference_model(model, device, dtype, cfg.quantize)
    name = (
        os.path.basename(os.path.normpath(cfg.out_dir))
        if cfg.init_from == "resume"
        else os.path.basename(os.path.normpath(cfg.init_from))
    )
    app = create_app(
        Engine(model),
        tokenizer,
        name,
        cfg.max_rows,
        cfg.max_queue,
        cfg.max_tokens_limit,
        cfg.api_key,
        cfg.max_body_bytes,
    )

    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {cfg.host}: anyone who can reach this machine can use the model"
            + ("" if cfg.api_key else "; set --api_key"),
            file=sys.stderr,
        )
    shown_host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    base = f"http://{shown_host}:{cfg.port}"
    print(
        f"serving {name} ({model.get_num_params() / 1e6:.2f}M parameters, context {model.config.block_size}) "
        f"on {device}"
    )
    print(f"  page: {base}/" + (f"?key={cfg.api_key}" if cfg.api_key else ""))
    print(f"  API:  {base}/v1 (OpenAI completions; e.g. openai.OpenAI(base_url='{base}/v1', api_key=...))")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


def check_port_free(host, port):
    """Refuse a host or port that cannot be listened on before the model loads (uvicorn would log a
    traceback-like line and exit)."""
    try:
        with socket.create_server((host, port), reuse_port=False):
            pass
    except OSError as e:
        raise SettingError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host"
        ) from None


if __name__ == "__main__":
    run_main(main)
