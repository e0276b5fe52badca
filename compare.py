"""Compare training runs: their curves in one picture and a table of what differs and what it bought.

    python compare.py out-a out-b [out-c ...] [--to=compare.png]

Reads each run's metrics.jsonl (a run still training is read as it stands) and draws val loss (dots)
and train loss (faint lines) against iteration, tokens seen and training time (evaluations left
out), one colour a run. When the runs' tokenizers differ, nats per token do not compare, so val
bits per byte are drawn and tabled instead. The table lists the settings that differ between the
runs, each run's best val figure and when it was reached, its tokens/s, and the training time it took
to reach the worst run's best (the level every run reached).
"""

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from nanogpt.config import load_config, setting
from nanogpt.errors import DataError, SettingError, WriteError, run_main
from nanogpt.training.train_log import METRICS_NAME, read_records

# settings that name or steer a run without changing what it learns
IGNORED_SETTINGS = ("out_dir", "overwrite", "wandb_log", "wandb_project", "wandb_run_name", "log_interval")


@dataclass
class CompareSettings:
    to: str = setting("compare.png", "the picture to write")


def read_settings(argv):
    """The run folders (every argument that is not --key=value) and the settings."""
    folders = [arg for arg in argv if not arg.startswith("-")]
    cfg = load_config(CompareSettings, [arg for arg in argv if arg.startswith("-")], script="compare.py OUT_DIR OUT_DIR [...]")
    if len(folders) < 2:
        raise SettingError("give two or more run folders to compare, e.g. python compare.py out-a out-b")
    if not cfg.to.endswith(".png"):
        raise SettingError(f"--to must name a .png file, got {cfg.to!r}")
    return folders, cfg


@dataclass
class RunLog:
    """One run's metrics.jsonl as compare.py reads it."""

    name: str
    config: dict
    tokenizer: tuple  # (kind, vocab size): runs with different ones are compared in bits per byte
    steps: list  # train records
    evals: list  # eval records


def load_run(out_dir):
    if not (Path(out_dir) / METRICS_NAME).is_file():
        raise DataError(f"{out_dir} holds no {METRICS_NAME}; give the out_dir of a training run")
    records = read_records(out_dir)
    starts = [r for r in records if r["kind"] == "run"]
    evals = [r for r in records if r["kind"] == "eval"]
    if not starts or not evals or "train_seconds" not in evals[-1]:
        raise DataError(f"{out_dir}/{METRICS_NAME} has no run record or no evaluation yet (or was written by an older version); compare runs that have evaluated at least once")
    first = starts[0]
    return RunLog(Path(out_dir).name, first["config"], (first["tokenizer"], first["vocab_size"]), [r for r in records if r["kind"] == "train"], evals)


def differing_settings(runs):
    keys = sorted({key for run in runs for key in run.config} - set(IGNORED_SETTINGS))
    return [key for key in keys if len({repr(run.config.get(key)) for run in runs}) > 1]


def time_to_reach(run, metric, target):
    """Training seconds at the first evaluation at or below target; None if it never got there."""
    return next((r["train_seconds"] for r in run.evals if r[metric] <= target), None)


def summarize(runs, metric):
    """One row per run: its differing settings, best metric, where it was reached, tokens/s, and the
    time to reach the worst run's best."""
    keys = differing_settings(runs)
    bests = [min(run.evals, key=lambda r: r[metric]) for run in runs]
    target = max(best[metric] for best in bests)
    rows = []
    for run, best in zip(runs, bests):
        speeds = [r["tokens_per_sec"] for r in run.steps[len(run.steps) // 10 :]]  # past warm-up
        rows.append(dict(
            run=run.name, settings={key: run.config.get(key) for key in keys}, best=best[metric], best_iter=best["iter"],
            best_tokens=best["tokens"], best_seconds=best["train_seconds"],
            tokens_per_sec=statistics.median(speeds) if speeds else None, seconds_to_target=time_to_reach(run, metric, target),
        ))
    return rows, target


def print_table(rows, metric, target):
    label = "val bits per byte" if metric == "val_bpb" else "val loss"
    print(f"| run | differing settings | best {label} | at iter | at tokens | at train s | tokens/s | train s to {target:.4f} |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "(same)"
        speed = f"{row['tokens_per_sec']:,.0f}" if row["tokens_per_sec"] else "-"
        reached = f"{row['seconds_to_target']:.1f}" if row["seconds_to_target"] is not None else "never"
        print(f"| {row['run']} | {settings} | {row['best']:.4f} | {row['best_iter']} | {row['best_tokens']:,} | {row['best_seconds']:.1f} | {speed} | {reached} |")


def draw(runs, metric, path):
    import matplotlib

    matplotlib.use("Agg")  # draw to a file; no display needed
    import matplotlib.pyplot as plt

    label = "val bits per byte" if metric == "val_bpb" else "loss (nats per token)"
    axes_keys = (("iter", "iteration"), ("tokens", "tokens seen"), ("train_seconds", "training time (s), evaluations left out"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), sharey=True)
    for i, run in enumerate(runs):
        color = f"C{i}"
        for ax, (key, _) in zip(axes, axes_keys):
            if metric == "val_loss" and run.steps:  # a train loss in nats per token is comparable only between like tokenizers
                ax.plot([r[key] for r in run.steps], [r["loss"] for r in run.steps], color=color, alpha=0.3, lw=1)
            ax.plot([r[key] for r in run.evals], [r[metric] for r in run.evals], "o-", color=color, ms=3, label=f"{run.name} (val)")
    for ax, (_, xlabel) in zip(axes, axes_keys):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    axes[0].legend()
    fig.suptitle("val (dots) and train batches (faint)" if metric == "val_loss" else "val bits per byte (the runs' tokenizers differ)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(folders, to):
    """Print the table and write the picture; returns the rows (what tests and bench/recipe.py read)."""
    runs = [load_run(folder) for folder in folders]
    metric = "val_loss" if len({run.tokenizer for run in runs}) == 1 else "val_bpb"
    rows, target = summarize(runs, metric)
    print_table(rows, metric, target)
    try:
        draw(runs, metric, to)
    except OSError as e:
        raise WriteError(f"cannot write {to} ({e.strerror}); choose a writable --to") from None
    print(f"picture: {to}")
    return rows


def main():
    folders, cfg = read_settings(sys.argv[1:])
    compare(folders, cfg.to)


if __name__ == "__main__":
    run_main(main)
