"""Shared fixtures: tiny Shakespeare prepared once, and one small model trained once, per test session.

Data comes from ../shared/data (offline copy) or the download, exactly as a user's run would get it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Every test process runs on this machine. Left alone, torchrun tells its workers to meet at the host's
# fully qualified name and gloo binds to whatever the host name resolves to; on a machine whose name
# resolves to an address it cannot reach itself on, the workers wait for each other without end.
os.environ.setdefault("PET_LOCAL_ADDR", "127.0.0.1")  # torchrun's --local-addr
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if sys.platform == "darwin" else "lo")
# a user's stdout to a pipe or file is block-buffered unless the scripts flush their log lines themselves;
# tests that wait for a log line check that they do
os.environ.pop("PYTHONUNBUFFERED", None)

# a script that has not finished in this long is stuck; fail the test instead of waiting for ever
SCRIPT_TIMEOUT = 300
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

# a model small enough to train in well under a minute on two CPU cores
TINY_MODEL = [
    "--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=32", "--batch_size=16",
    "--dropout=0.0", "--gradient_accumulation_steps=1", "--device=cpu", "--compile=False",
]
TINY_TRAIN = TINY_MODEL + [
    "--max_iters=300", "--lr_decay_iters=300", "--warmup_iters=20", "--learning_rate=3e-3", "--min_lr=3e-4",
    "--eval_interval=150", "--eval_iters=20", "--log_interval=10", "--always_save_checkpoint=False",
]


def run_script(*args, cwd=REPO, env=None):
    """Run one of the repo's scripts in a fresh Python, as a user would."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)


def run_torchrun(*args):
    """Run a script in two processes under torchrun (gloo on the CPU), as a user would."""
    return subprocess.run([*TORCHRUN, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)


def assert_user_error(result, *fragments):
    """A clean failure: non-zero exit, one 'error:' line on stderr naming what is wrong, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data folder holding shakespeare_char, prepared by the real prepare script."""
    root = tmp_path_factory.mktemp("data")
    result = run_script("data/shakespeare_char/prepare.py", f"--out_dir={root / 'shakespeare_char'}")
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory):
    """out_dir of a tiny model trained on shakespeare_char, with the run's stdout."""
    out_dir = tmp_path_factory.mktemp("run")
    result = run_script(
        "train.py", "config/train_shakespeare_char.py", *TINY_TRAIN,
        f"--data_dir={data_dir}", f"--out_dir={out_dir}",
    )
    assert result.returncode == 0, result.stderr
    return out_dir, result.stdout
