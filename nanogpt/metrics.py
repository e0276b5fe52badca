"""metrics.jsonl (one JSON object per logged step or eval) and the loss-curve PNG drawn from it."""

import json
import os
from pathlib import Path

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"


def append_record(out_dir, record):
    with open(Path(out_dir) / METRICS_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_records(out_dir):
    path = Path(out_dir) / METRICS_NAME
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return records


def keep_records_through(out_dir, iter_num):
    """On resume, drop what a crashed run logged after the checkpoint it resumes from."""
    records = [r for r in read_records(out_dir) if r["iter"] <= iter_num]
    path = Path(out_dir) / METRICS_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def plot_loss_curve(out_dir):
    """Train and val loss against iterations, into out_dir/loss.png."""
    import matplotlib

    matplotlib.use("Agg")  # draw to a file; no display needed
    import matplotlib.pyplot as plt

    records = read_records(out_dir)
    steps = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if steps:
        ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], color="tab:blue", alpha=0.35, lw=1, label="train (batch)")
    if evals:
        ax.plot([r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", color="tab:blue", label="train (eval)")
        ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange", label="val (eval)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(Path(out_dir).resolve().name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(out_dir) / "loss.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, Path(out_dir) / PLOT_NAME)
