"""Compare training runs: their curves in one picture and a table of what differs and what it bought.

    python compare.py out-a out-b [out-c ...] [--to=compare.png]

Reads each run's metrics.jsonl (a run still training is read as it stands) and draws val loss (dots)
and train loss (faint lines) against iteration, tokens seen and training time (evaluations left
out), one colour a run, and, where runs scored multiple-choice items (hellaswag_interval), their
acc_norm against tokens seen in a panel of its own. When the runs' tokenizers differ, nats per token
do not compare, so val bits per byte are drawn and tabled instead. The table lists the settings that differ between the
runs, each run's best val figure and when it was reached, its tokens/s, and the training time it took
to reach the worst run's best (the level every run reached).
"""

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from nanogpt.command_line import load_config, setting
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
    cfg = load_config(
        CompareSettings, [arg for arg in argv if arg.startswith("-")], script="compare.py OUT_DIR OUT_DIR [...]"
    )
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
    choices: list  # multiple-choice records (hellaswag_interval)


def load_run(out_dir):
    if not (Path(out_dir) / METRICS_NAME).is_file():
        raise DataError(f"{out_dir} holds no {METRICS_NAME}; give the out_dir of a training run")
    records = read_records(out_dir)
    starts = [r for r in records if r["kind"] == "run"]
    evals = [r for r in records if r["kind"] == "eval"]
    if not starts or not evals or "train_seconds" not in evals[-1]:
        raise DataError(
            f"{out_dir}/{METRICS_NAME} has no run record or no evaluation yet (or was written by an older "
            "version); compare runs that have evaluated at least once"
        )
    first = starts[0]
    of_kind = lambda kind: [r for r in records if r["kind"] == kind]  # noqa: E731
    return RunLog(
        Path(out_dir).name,
        first["config"],
        (first["tokenizer"], first["vocab_size"]),
        of_kind("train"),
        evals,
        of_kind("hellaswag"),
    )


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
        rows.append(
            dict(
                run=run.name,
                settings={key: run.config.get(key) for key in keys},
                best=best[metric],
                best_iter=best["iter"],
                best_tokens=best["tokens"],
                best_seconds=best["train_seconds"],
                tokens_per_sec=statistics.median(speeds) if speeds else None,
                seconds_to_target=time_to_reach(run, metric, target),
                best_acc_norm=max((r["acc_norm"] for r in run.choices), default=None),
            )
        )
    return rows, target


def print_table(rows, metric, target):
    label = "val bits per byte" if metric == "val_bpb" else "val loss"
    choices = any(row["best_acc_norm"] is not None for row in rows)
    print(
        (
            f"| run | differing settings | best {label} | at iter | at tokens | at train s | tokens/s | train s "
            f"to {target:.4f} |"
        )
        + (" best acc_norm |" if choices else "")
    )
    print("|---|---|---|---|---|---|---|---|" + ("---|" if choices else ""))
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "(same)"
        speed = f"{row['tokens_per_sec']:,.0f}" if row["tokens_per_sec"] else "-"
        reached = f"{row['seconds_to_target']:.1f}" if row["seconds_to_target"] is not None else "never"
        acc_norm = (
            "" if not choices else f" {row['best_acc_norm']:.4f} |" if row["best_acc_norm"] is not None else " - |"
        )
        print(
            f"| {row['run']} | {settings} | {row['best']:.4f} | {row['best_iter']} | {row['best_tokens']:,} | "
            f"{row['best_seconds']:.1f} | {speed} | {reached} |{acc_norm}"
        )


def draw(runs, metric, path):
    import matplotlib

    matplotlib.use("Agg")  # draw to a file; no display needed
    import matplotlib.pyplot as plt

    label = "val bits per byte" if metric == "val_bpb" else "loss (nats per token)"
    axes_keys = (
        ("iter", "iteration"),
        ("tokens", "tokens seen"),
        ("train_seconds", "training time (s), evaluations left out"),
    )
    choices = any(run.choices for run in runs)
    fig, axes = plt.subplots(1, 3 + choices, figsize=(16 + 5 * choices, 4.8))
    for ax in axes[1:3]:
        ax.sharey(axes[0])
    if choices:
        draw_choices(runs, axes[3])
    for i, run in enumerate(runs):
        color = f"C{i}"
        for ax, (key, _) in zip(axes, axes_keys):
            if (
                metric == "val_loss" and run.steps
            ):  # a train loss in nats per token is comparable only between like tokenizers
                ax.plot([r[key] for r in run.steps], [r["loss"] for r in run.steps], color=color, alpha=0.3, lw=1)
            ax.plot(
                [r[key] for r in run.evals],
                [r[metric] for r in run.evals],
                "o-",
                color=color,
                ms=3,
                label=f"{run.name} (val)",
            )
    for ax, (_, xlabel) in zip(axes, axes_keys):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax is not axes[0]:
            ax.tick_params(labelleft=False)
    axes[0].set_ylabel(label)
    axes[0].legend()
    fig.suptitle(
        "val (dots) and train batches (faint)"
        if metric == "val_loss"
        else "val bits per byte (the runs' tokenizers differ)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_choices(runs, ax):
    """Multiple-choice acc_norm against tokens seen, one colour a run (the loss panels' colours)."""
    for i, run in enumerate(runs):
        if run.choices:
            ax.plot(
                [r["tokens"] for r in run.choices],
                [r["acc_norm"] for r in run.choices],
                "s-",
                color=f"C{i}",
                ms=3,
                label=run.name,
            )
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("acc_norm (multiple choice)")
    ax.grid(alpha=0.3)
    ax.legend()


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
