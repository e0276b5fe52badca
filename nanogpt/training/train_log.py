"""A run's log: metrics.jsonl (a run record, then one JSON object per logged step or eval), wandb when
asked, and the loss-curve PNG drawn from metrics.jsonl."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from nanogpt.errors import UnavailableError, WriteError
from nanogpt.files import hold_folder, write_atomically

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"


def append_record(out_dir, record):
    """One more line of metrics.jsonl; a failed write (a full disk) ends the run in one sentence, its
    checkpoints untouched (a line cut short is skipped when the file is read)."""
    path = Path(out_dir) / METRICS_NAME
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise WriteError(
            f"could not append to {path} ({e.strerror or e}); free some space and run again (from its last "
            "checkpoint, if it has one, with --init_from=resume)"
        ) from None


def run_record(cfg, iter_num, tokens_per_iter, tokenizer_meta):
    """The first record of a run (and of each resumed part): its full settings, the code's git commit
    and when it started."""
    return dict(
        kind="run",
        iter=iter_num,
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        commit=git_commit(),
        config=asdict(cfg),
        tokens_per_iter=tokens_per_iter,
        tokenizer=tokenizer_meta["tokenizer"],
        vocab_size=tokenizer_meta["vocab_size"],
    )


def git_commit():
    """The commit of the code that runs, with '+changes' if files differ from it; None outside git."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+changes" if status.stdout.strip() else "")


# what every record of a kind holds (train.py writes them; compare.py and loss.png read them): a line
# without its kind's fields is not one of this project's records (a hand-edited or foreign line)
RECORD_FIELDS = {
    "run": {"config": dict, "tokenizer": str, "vocab_size": int},
    "train": {"loss": float, "tokens": float, "train_seconds": float},
    "eval": {"train_loss": float, "val_loss": float, "tokens": float, "train_seconds": float},
    "hellaswag": {"acc": float, "acc_norm": float, "tokens": float, "train_seconds": float},
}


def is_record(value):
    """Whether a parsed line is a record: a kind, a whole-number iter and the kind's fields (a float
    field takes any number)."""
    if not isinstance(value, dict) or value.get("kind") not in RECORD_FIELDS:
        return False
    fields = {"iter": int, **RECORD_FIELDS[value["kind"]]}
    kinds = {int: (int,), float: (int, float), str: (str,), dict: (dict,)}
    return all(isinstance(value.get(k), kinds[t]) and not isinstance(value.get(k), bool) for k, t in fields.items())


def read_records(out_dir):
    """The records of out_dir's metrics.jsonl, skipping lines that are not (one cut short by a crash, or
    any other JSON)."""
    path = Path(out_dir) / METRICS_NAME
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if is_record(record):
            records.append(record)
    return records


def keep_records_through(out_dir, iter_num):
    """On resume, drop what a crashed run logged after the checkpoint it resumes from."""
    records = "".join(json.dumps(r) + "\n" for r in read_records(out_dir) if r["iter"] <= iter_num).encode()
    write_atomically({Path(out_dir) / METRICS_NAME: lambda f: f.write(records)}, len(records))


def open_run_log(cfg, iter_num, tokens_per_iter, tokenizer_meta):
    """Start a run's log (rank 0 only): metrics.jsonl afresh, or cut back to the step a run resumes
    from, then its run record, and wandb when cfg.wandb_log; returns the wandb module, or None. Before
    its first write the run becomes out_dir's one writer (a second run into it is refused)."""
    hold_folder(cfg.out_dir, "out_dir")
    metrics = Path(cfg.out_dir) / METRICS_NAME
    if metrics.exists() and not metrics.is_file():
        raise WriteError(f"{metrics} is not a file (a folder?); move it away, then run again")
    if iter_num == 0:
        open(Path(cfg.out_dir) / METRICS_NAME, "w").close()
    else:
        keep_records_through(cfg.out_dir, iter_num)
    # what compare.py reads to tell runs apart; a resumed run adds one where it continues
    append_record(cfg.out_dir, run_record(cfg, iter_num, tokens_per_iter, tokenizer_meta))
    if not cfg.wandb_log:
        return None
    try:
        import wandb
    except ImportError:
        raise UnavailableError("wandb_log=True needs wandb: pip install wandb (or pip install -e '.[wandb]')") from None
    wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=asdict(cfg))
    return wandb


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
        ax.plot(
            [r["iter"] for r in steps],
            [r["loss"] for r in steps],
            color="tab:blue",
            alpha=0.35,
            lw=1,
            label="train (batch)",
        )
    if evals:
        ax.plot(
            [r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", color="tab:blue", label="train (eval)"
        )
        ax.plot(
            [r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange", label="val (eval)"
        )
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


class LossPlotter:
    """Redraws loss.png in a child process whenever asked, so a training step never waits for matplotlib
    (its import and one drawing take about 0.7 s on a small CPU). The child runs at a lower priority,
    draws the latest metrics on each request, and ends when the pipe closes; if it cannot draw (no
    matplotlib), it says so once and training goes on."""

    def __init__(self, out_dir):
        self.out_dir = str(Path(out_dir).resolve())
        self.child = None

    def request(self):
        if self.child is None:
            # nanogpt importable wherever train.py was started from, installed or not
            package_root = str(Path(__file__).resolve().parents[2])
            env = dict(
                os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
            )
            # a session of its own: a Ctrl-C meant for training must not interrupt a drawing
            self.child = subprocess.Popen(
                [sys.executable, "-m", "nanogpt.training.train_log", self.out_dir],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
                env=env,
            )
        try:
            self.child.stdin.write("draw\n")
            self.child.stdin.flush()
        except OSError:
            pass  # the child has ended: it said why

    def finish(self, timeout=60):
        """Wait for the last drawing, so loss.png is up to date when the run says it is done."""
        if self.child is None:
            return
        try:
            self.child.stdin.close()
        except OSError:
            pass
        try:
            self.child.wait(timeout)
        except subprocess.TimeoutExpired:
            self.child.kill()


def draw_on_request(out_dir):
    """The child's side of LossPlotter: one drawing per line read, until the pipe closes."""
    os.nice(10)  # training gets the cores first
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("note: loss.png is not drawn: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return
    for _ in sys.stdin:
        try:
            plot_loss_curve(out_dir)
        except (OSError, ValueError, RuntimeError) as e:  # a full disk: checkpoints matter more, and say so
            print(f"note: loss.png could not be drawn: {e}", file=sys.stderr)


if __name__ == "__main__":
    draw_on_request(sys.argv[1])
