"""Is train.py's step as fast as a plain PyTorch loop over the same model and data?

    python bench/train_step.py [--iters=300] [--device=cpu]

Runs train.py (as a user would, in a subprocess) and a bare loop - memmap batch, forward, backward,
clip, AdamW step - with the same model, batch and thread count, each in its own process, alternating
for --rounds rounds so that drift in the machine's speed hits both alike. Prints the median ms/iter of
each round, the best of each, and their ratio. Needs data/shakespeare_char prepared.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.system import keep_freed_memory  # noqa: E402

MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False, vocab_size=65, dropout=0.0)
BATCH_SIZE = 12


def train_py_ms_per_iter(iters, device):
    with tempfile.TemporaryDirectory() as out_dir:
        args = [
            sys.executable,
            "train.py",
            "config/train_shakespeare_char_cpu.py",
            f"--out_dir={out_dir}",
            f"--device={device}",
            f"--max_iters={iters}",
            f"--lr_decay_iters={iters}",
            "--log_interval=1",
            f"--eval_interval={iters * 10}",
            "--eval_iters=1",
            "--compile=False",
        ]
        subprocess.run(args, cwd=REPO, check=True, capture_output=True)
        records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    times = [r["ms_per_iter"] for r in records if r["kind"] == "train"]
    return statistics.median(times[10:])  # skip the warm-up steps


def plain_loop_ms_per_iter(iters, device):
    if device == "cpu":
        keep_freed_memory()  # the allocator setting train.py makes, so that the loops differ in nothing else
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODEL)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    data = np.memmap(REPO / "data/shakespeare_char/train.bin", dtype=np.uint16, mode="r")
    T = MODEL["block_size"]
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        ix = torch.randint(len(data) - T, (BATCH_SIZE,))
        x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in ix]).to(device)
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in ix]).to(device)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[10:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--plain_loop_only", action="store_true", help="(used internally) time the plain loop and print it"
    )
    args = parser.parse_args()
    if not (REPO / "data/shakespeare_char/train.bin").is_file():
        sys.exit("error: run python data/shakespeare_char/prepare.py first")
    if args.plain_loop_only:
        print(plain_loop_ms_per_iter(args.iters, args.device))
        return
    print(f"model {MODEL}, batch {BATCH_SIZE}, device {args.device}, {torch.get_num_threads()} threads")
    ours_rounds, plain_rounds = [], []
    for r in range(args.rounds):
        ours_rounds.append(train_py_ms_per_iter(args.iters, args.device))
        plain_cmd = [sys.executable, __file__, "--plain_loop_only", f"--iters={args.iters}", f"--device={args.device}"]
        plain_rounds.append(float(subprocess.run(plain_cmd, check=True, capture_output=True, text=True).stdout))
        print(f"round {r + 1}: train.py {ours_rounds[-1]:.2f} ms/iter, plain loop {plain_rounds[-1]:.2f} ms/iter")
    ours, plain = min(ours_rounds), min(plain_rounds)
    print(f"best round: train.py {ours:.2f} ms/iter, plain loop {plain:.2f} ms/iter")
    print(f"train.py / plain loop = {ours / plain:.3f}  (<= 1 means train.py is not slower)")


if __name__ == "__main__":
    main()
