"""Exact resume, signals, kills, NaN, failed writes, malicious and foreign checkpoints."""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import (
    REPO,
    SCRIPT_TIMEOUT,
    TINY_MODEL,
    TINY_TRAIN,
    TORCHRUN,
    assert_user_error,
    child_pids,
    public_data,
    run_script,
    run_torchrun,
)
from nanogpt.checkpoint import BEST_NAME, CHECKPOINT_NAME, load_checkpoint

pytestmark = pytest.mark.slow  # every test here starts processes

N = 40  # steps before the stop; the full run is 2N
EXACT = TINY_TRAIN + [
    f"--max_iters={2 * N}",
    f"--lr_decay_iters={2 * N}",
    "--warmup_iters=10",
    f"--eval_interval={N}",
    "--log_interval=1",
    "--always_save_checkpoint=True",
    "--dataset=shakespeare_char",
]


def train(data_dir, out_dir, *extra):
    return run_script("train.py", *EXACT, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *extra)


def step_losses(out_dir):
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in records if r["kind"] == "train"}


def assert_same_weights(a, b):
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k  # bitwise


@pytest.fixture(scope="module")
def straight_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    result = train(data_dir, out, "--dropout=0.1")
    assert result.returncode == 0, result.stderr
    return out


def test_stop_and_resume_is_exact(data_dir, straight_run, tmp_path):
    out = tmp_path / "split"
    first = train(data_dir, out, "--dropout=0.1", f"--max_iters={N}")
    assert first.returncode == 0, first.stderr
    second = train(data_dir, out, "--dropout=0.1", "--init_from=resume")
    assert second.returncode == 0, second.stderr
    assert "settings changed since the checkpoint: max_iters 40 -> 80" in second.stdout
    # the same loss at every logged step, and bitwise the same final weights (CPU, with dropout on)
    assert step_losses(out) == step_losses(straight_run)
    assert len(step_losses(out)) == 2 * N
    assert_same_weights(out, straight_run)


@pytest.fixture
def start_training(data_dir):
    """Start train.py in the background; whatever is still running when the test ends is killed."""
    started = []

    def start(launcher, out_dir, *extra):
        # stderr goes to a file: a pipe nobody reads while we wait on stdout could fill up and stall training
        stderr = open(out_dir.parent / f"{out_dir.name}.stderr", "w+")
        args = [*launcher, "train.py", *EXACT, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *extra]
        proc = subprocess.Popen(
            args, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
        proc.stderr_file = stderr
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr_file.close()


def wait_for_line(proc, prefix):
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    proc.stderr_file.seek(0)
    raise AssertionError(f"training ended before printing {prefix!r}: {proc.stderr_file.read()}")


def finish(proc):
    """Wait for a signalled run to end; return its stdout and stderr."""
    stdout, _ = proc.communicate(timeout=60)
    proc.stderr_file.seek(0)
    return stdout, proc.stderr_file.read()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_resume_is_exact(data_dir, straight_run, start_training, tmp_path, signum):
    out = tmp_path / "signalled"
    proc = start_training([sys.executable], out, "--dropout=0.1")
    wait_for_line(proc, "iter 5/")
    proc.send_signal(signum)
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr
    assert f"({signum.name}); resume with:" in stdout
    assert "--init_from=resume" in stdout.splitlines()[-1]
    stopped_at = load_checkpoint(out)["iter_num"]
    assert 5 <= stopped_at < 2 * N
    resumed = train(data_dir, out, "--dropout=0.1", "--init_from=resume")
    assert resumed.returncode == 0, resumed.stderr
    assert step_losses(out) == step_losses(straight_run)
    assert_same_weights(out, straight_run)


def stop_within_seconds(proc, seconds=10):
    """SIGTERM, then the run's stdout once it has ended, which must be within `seconds`."""
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = finish(proc)
    assert time.time() - t0 < seconds, f"took {time.time() - t0:.1f} s to stop"
    assert proc.returncode == 0, stderr
    return stdout


def test_a_stop_during_a_long_first_evaluation_ends_it_at_once(start_training, tmp_path):
    """The evaluation at step 0 of a run set up too big: its projected time is reported after one batch,
    a stop request ends it within seconds, and nothing trained means nothing is written."""
    out = tmp_path / "long_eval"
    proc = start_training([sys.executable], out, "--eval_iters=100000")
    wait_for_line(proc, "note: each evaluation will take about")
    stdout = stop_within_seconds(proc)
    assert "stopped at iter 0 (SIGTERM) before anything was trained; nothing saved" in stdout
    assert not (out / CHECKPOINT_NAME).exists()


def test_a_stop_during_a_later_evaluation_saves_the_steps_since(data_dir, start_training, tmp_path):
    out = tmp_path / "later_eval"
    assert train(data_dir, out, "--max_iters=20", "--eval_interval=20").returncode == 0
    proc = start_training(
        [sys.executable], out, "--init_from=resume", "--max_iters=40", "--eval_interval=20", "--eval_iters=100000"
    )
    wait_for_line(proc, "note: each evaluation will take about")  # the eval at step 40, after 20 steps
    stdout = stop_within_seconds(proc)
    assert "stopped at iter 40 (SIGTERM); resume with:" in stdout
    assert load_checkpoint(out)["iter_num"] == 40


def test_ddp_resume_with_dropout_is_exact(data_dir, tmp_path):
    """Each process draws dropout masks of its own; the checkpoint holds every process's random streams,
    so a resumed 2-process run repeats an unbroken one bit for bit."""
    args = [
        "train.py",
        *EXACT,
        "--dropout=0.1",
        "--gradient_accumulation_steps=2",
        f"--data_dir={data_dir}",
        "--max_iters=20",
        "--lr_decay_iters=20",
        "--eval_interval=10",
    ]
    straight = run_torchrun(*args, f"--out_dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr
    first = run_torchrun(*args, f"--out_dir={tmp_path / 'split'}", "--max_iters=10")
    assert first.returncode == 0, first.stderr
    second = run_torchrun(*args, f"--out_dir={tmp_path / 'split'}", "--init_from=resume")
    assert second.returncode == 0, second.stderr
    assert step_losses(tmp_path / "split") == step_losses(tmp_path / "straight")
    assert_same_weights(tmp_path / "split", tmp_path / "straight")


def test_a_stop_after_the_best_eval_leaves_best_pt_untouched(data_dir, start_training, tmp_path):
    """The stop writes the latest state to ckpt.pt; best.pt, the model of the best eval, stays as it was,
    and sample.py reads it unless asked for the latest."""
    out = tmp_path / "best"
    proc = start_training([sys.executable], out, "--eval_interval=10")
    wait_for_line(proc, "saved checkpoint")  # step 10: the first eval after 0, so the best so far
    best = (out / BEST_NAME).read_bytes()
    wait_for_line(proc, "iter 13/")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr
    assert (out / BEST_NAME).read_bytes() == best
    latest, kept = load_checkpoint(out), load_checkpoint(out, "best")
    assert kept["iter_num"] == 10 and latest["iter_num"] >= 13
    assert "optimizer" not in kept and len(best) < (out / CHECKPOINT_NAME).stat().st_size / 2  # no optimizer state
    assert not torch.equal(kept["model"]["lm_head.weight"], latest["model"]["lm_head.weight"])
    args = (
        "sample.py",
        f"--out_dir={out}",
        "--device=cpu",
        "--num_samples=1",
        "--max_new_tokens=100",
        "--temperature=1.0",
        "--top_k=None",
    )
    best_text, latest_text = run_script(*args), run_script(*args, "--checkpoint=latest")
    assert best_text.returncode == 0, best_text.stderr
    assert best_text.stdout != latest_text.stdout  # the same random draws through other weights
    (out / BEST_NAME).unlink()  # a run saved before best.pt existed: ckpt.pt serves
    assert run_script(*args).stdout == latest_text.stdout


def test_keep_checkpoints_keeps_the_last_n(data_dir, tmp_path):
    out = tmp_path / "kept"
    result = train(data_dir, out, "--eval_interval=10", "--max_iters=40", "--keep_checkpoints=2")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("ckpt-*.pt")) == ["ckpt-000030.pt", "ckpt-000040.pt"]
    assert load_checkpoint(out)["iter_num"] == 40


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(data_dir, start_training, tmp_path):
    """A checkpoint at every step, so most kills land in the middle of writing one."""
    out = tmp_path / "killed"
    kill_args = ["--eval_interval=1", "--eval_iters=1", "--max_iters=100000", "--lr_decay_iters=100000"]
    saved_at = []
    for delay in (0.05, 0.2, 0.45, 0.7, 1.0):
        proc = start_training([sys.executable], out, *kill_args, *(["--init_from=resume"] if saved_at else []))
        wait_for_line(proc, "saved checkpoint")
        time.sleep(delay)
        proc.kill()
        proc.wait()
        checkpoint = load_checkpoint(out)  # never torn
        assert not saved_at or checkpoint["iter_num"] >= saved_at[-1]  # nothing older than what was saved
        saved_at.append(checkpoint["iter_num"])
    assert saved_at == sorted(saved_at) and saved_at[-1] > saved_at[0]
    resumed = train(data_dir, out, "--init_from=resume", f"--max_iters={saved_at[-1] + 3}", "--eval_interval=1000")
    assert resumed.returncode == 0, resumed.stderr
    assert f"iter {saved_at[-1] + 1}/" in resumed.stdout


@pytest.fixture
def finished_run(trained_run, tmp_path):
    """A private copy of the tiny trained run, to damage."""
    out = tmp_path / "copy"
    shutil.copytree(trained_run[0], out)
    return out


def resume(data_dir, out_dir, *extra):
    return run_script(
        "train.py",
        *TINY_TRAIN,
        "--dataset=shakespeare_char",
        f"--data_dir={data_dir}",
        f"--out_dir={out_dir}",
        "--init_from=resume",
        *extra,
    )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, finished_run):
    before = (finished_run / CHECKPOINT_NAME).read_bytes()
    result = resume(
        data_dir,
        finished_run,
        "--learning_rate=1e9",
        "--decay_lr=False",
        "--max_iters=400",
        "--log_interval=1",
        "--grad_clip=0",
    )
    assert_user_error(result, "training loss is", "at step 30", "last good checkpoint")
    assert (finished_run / CHECKPOINT_NAME).read_bytes() == before


def test_failed_checkpoint_write_is_reported_and_the_old_one_kept(data_dir, finished_run):
    before = (finished_run / CHECKPOINT_NAME).read_bytes()
    # a folder where the run's temporary file goes makes the write fail, even for root; the name holds the
    # writer's pid, so the folder is made by the process that then becomes train.py (exec keeps the pid)
    args = [
        *TINY_TRAIN,
        "--dataset=shakespeare_char",
        f"--data_dir={data_dir}",
        f"--out_dir={finished_run}",
        "--init_from=resume",
        "--max_iters=305",
        "--always_save_checkpoint=True",
    ]
    launcher = (
        "import os, sys; os.mkdir(f'{sys.argv[1]}/ckpt.pt.{os.getpid()}.tmp'); os.execv(sys.executable, "
        "[sys.executable, *sys.argv[2:]])"
    )
    result = subprocess.run(
        [sys.executable, "-c", launcher, str(finished_run), "train.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert_user_error(result, "could not write ckpt.pt", "is intact")
    assert (finished_run / CHECKPOINT_NAME).read_bytes() == before


def test_a_full_disk_leaves_no_temporary_file_and_the_old_checkpoint_intact(data_dir, finished_run):
    """A file-size limit makes torch.save's writer fail (a RuntimeError, not an OSError) as a full disk does."""
    before = (finished_run / CHECKPOINT_NAME).read_bytes()
    limit = len(before) // 2  # metrics.jsonl and loss.png stay far below it

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = [
        *TINY_TRAIN,
        "--dataset=shakespeare_char",
        f"--data_dir={data_dir}",
        f"--out_dir={finished_run}",
        "--init_from=resume",
        "--max_iters=305",
        "--always_save_checkpoint=True",
    ]
    result = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        preexec_fn=limit_file_size,
    )
    assert_user_error(
        result,
        f"could not write ckpt.pt to {finished_run}",
        "MB free",
        "is intact",
        "no space left on the device, or a file-size limit",
    )
    assert "enforce fail" not in result.stderr  # torch's words for it say nothing to a user
    assert (finished_run / CHECKPOINT_NAME).read_bytes() == before
    assert not list(finished_run.glob("*.tmp"))  # no temporary file of any process


def test_a_full_disk_under_metrics_jsonl_is_one_sentence(data_dir, tmp_path):
    """metrics.jsonl fills up while the run logs every step, and on resume its rewrite cannot be written."""
    out = tmp_path / "run"
    args = [
        *TINY_MODEL,
        "--dataset=shakespeare_char",
        f"--data_dir={data_dir}",
        f"--out_dir={out}",
        "--log_interval=1",
        "--eval_iters=2",
    ]

    def run(limit, *extra):
        return subprocess.run(
            [sys.executable, "train.py", *args, *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
        )

    # no checkpoint before step 1000: the log is the only file that grows
    full = run(60_000, "--max_iters=400", "--eval_interval=1000", "--lr_decay_iters=400")  # loss.png stays below it
    assert_user_error(full, f"could not append to {out / 'metrics.jsonl'}", "free some space")
    assert 50_000 < (out / "metrics.jsonl").stat().st_size <= 60_000

    saved = run(10**9, "--max_iters=200", "--eval_interval=100", "--lr_decay_iters=400", "--overwrite=True")
    assert saved.returncode == 0, saved.stderr
    log = (out / "metrics.jsonl").read_bytes()
    resumed = run(len(log) // 2, "--max_iters=400", "--eval_interval=100", "--lr_decay_iters=400", "--init_from=resume")
    assert_user_error(resumed, "could not write metrics.jsonl", "the previous metrics.jsonl is intact")
    assert (out / "metrics.jsonl").read_bytes() == log and not list(out.glob("*.tmp"))


def test_settings_are_checked_before_anything_loads(tmp_path):
    """No dataset exists under this data_dir: the setting is refused first."""
    result = run_script("train.py", "--batch_size=0", f"--data_dir={tmp_path}", f"--out_dir={tmp_path / 'out'}")
    assert_user_error(result, "batch_size must be at least 1, got 0")
    result = run_script("train.py", "--out_dir=/proc/forbidden/run", f"--data_dir={tmp_path}")
    assert_user_error(result, "cannot create the folder /proc/forbidden/run (--out_dir")


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, data_dir):
    marker = tmp_path / "pwned"
    payload = RunsCode()
    payload.marker = marker
    torch.save({"model": {}, "model_args": {}, "evil": payload}, tmp_path / CHECKPOINT_NAME)
    assert not marker.exists()
    assert_user_error(run_script("sample.py", f"--out_dir={tmp_path}"), "could not be loaded safely")
    assert_user_error(resume(data_dir, tmp_path), "could not be loaded safely")
    assert not marker.exists()


def test_foreign_checkpoint(tmp_path, data_dir):
    torch.save({"weights": torch.zeros(3)}, tmp_path / CHECKPOINT_NAME)
    assert_user_error(resume(data_dir, tmp_path), "is not a nanogpt checkpoint")


def test_truncated_checkpoint_on_resume(data_dir, finished_run):
    data = (finished_run / CHECKPOINT_NAME).read_bytes()
    (finished_run / CHECKPOINT_NAME).write_bytes(data[:1000])
    assert_user_error(resume(data_dir, finished_run), "corrupt, truncated")


def test_resume_with_another_model_shape(data_dir, finished_run):
    assert_user_error(resume(data_dir, finished_run, "--n_layer=3"), "cannot resume with n_layer=3", "has n_layer=2")


def test_resume_on_a_dataset_with_another_vocabulary(data_dir, finished_run, tmp_path):
    text = tmp_path / "other.txt"
    text.write_text("abcdefgh " * 2000)
    other = data_dir / "other_vocab"
    assert run_script("data/shakespeare_char/prepare.py", f"--input={text}", f"--out_dir={other}").returncode == 0
    result = run_script(
        "train.py",
        *TINY_TRAIN,
        "--dataset=other_vocab",
        f"--data_dir={data_dir}",
        f"--out_dir={finished_run}",
        "--init_from=resume",
    )
    assert_user_error(result, "trained on a vocabulary of 65 characters", "has a vocabulary of 9 characters")


def test_resume_without_a_checkpoint(data_dir, tmp_path):
    assert_user_error(resume(data_dir, tmp_path), "no checkpoint in")


def test_dataset_too_small_for_block_size(data_dir, tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("to be or not to be " * 10)
    assert (
        run_script("data/shakespeare_char/prepare.py", f"--input={text}", f"--out_dir={data_dir / 'tiny'}").returncode
        == 0
    )
    result = run_script(
        "train.py", *TINY_MODEL, "--dataset=tiny", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'o'}"
    )
    assert_user_error(result, "the val split", "not more than block_size 32")


def test_ddp_processes_stop_together_on_sigterm(data_dir, start_training, tmp_path):
    """torchrun passes SIGTERM to its workers; they agree on a step, rank 0 saves, and the run resumes."""
    out = tmp_path / "ddp"
    ddp_args = ["--backend=gloo", "--gradient_accumulation_steps=2"]
    proc = start_training(
        TORCHRUN, out, *ddp_args, "--max_iters=100000", "--lr_decay_iters=100000", "--eval_interval=100000"
    )
    wait_for_line(proc, "iter 5/")
    os.killpg(proc.pid, signal.SIGTERM)  # as a cluster scheduler does: the whole process group
    stdout, stderr = finish(proc)
    assert "(SIGTERM); resume with:" in stdout, stdout + stderr
    # the command that continues it is the torchrun command that was run, not python train.py
    assert (
        stdout.splitlines()[-1]
        .strip()
        .startswith("python -m torch.distributed.run --standalone --nproc_per_node=2 train.py ")
    )
    stopped_at = load_checkpoint(out)["iter_num"]
    assert stopped_at >= 5
    resumed = run_torchrun(
        "train.py",
        *EXACT,
        *ddp_args,
        f"--data_dir={data_dir}",
        f"--out_dir={out}",
        f"--max_iters={stopped_at + 3}",
        "--eval_interval=1000",
        "--init_from=resume",
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"iter {stopped_at + 1}/" in resumed.stdout


@pytest.mark.parametrize("failure", ["nan", "write"])
def test_a_failure_on_one_process_ends_every_process_promptly(data_dir, tmp_path, failure):
    """Rank 0 alone sees the failure (it logs the loss and writes the checkpoint); the other process, waiting
    in a collective, ends too, with one line, and no process shows a traceback or an abort."""
    out = tmp_path / "failing"
    args = [
        *EXACT,
        "--gradient_accumulation_steps=2",
        f"--data_dir={data_dir}",
        f"--out_dir={out}",
        "--eval_interval=10",
    ]
    if failure == "nan":
        args += ["--learning_rate=1e9", "--decay_lr=False", "--grad_clip=0"]
        expected = "error: training loss is nan"
    else:
        expected = f"error: could not write {CHECKPOINT_NAME} to {out}"
    # the write: a file-size limit of 300 kB, below the checkpoint (1.2 MB) and above the run's logs
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))) if failure == "write" else None
    t0 = time.time()
    result = run_torchrun("train.py", *args, timeout=30, preexec_fn=limit)
    assert time.time() - t0 < 30
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert sum(line.startswith(expected) for line in lines) == 1, result.stderr
    assert "error: another process of this run has ended, so this one stops too; its error is above" in lines
    assert 'train.py", line' not in result.stderr and "[rank" not in result.stderr, result.stderr  # no worker traceback
    assert "terminate called" not in result.stderr and "Aborted" not in result.stderr


def test_a_batch_that_does_not_fit_in_memory(data_dir, tmp_path):
    # the first activation alone would be 50,000 x 256 x 1024 floats = 52 GB
    args = (
        "train.py",
        "--dataset=shakespeare_char",
        f"--data_dir={data_dir}",
        f"--out_dir={tmp_path / 'o'}",
        "--device=cpu",
        "--n_layer=1",
        "--n_head=8",
        "--n_embd=1024",
        "--block_size=256",
        "--batch_size=50000",
        "--eval_iters=1",
        "--gradient_accumulation_steps=1",
    )
    # the memory plan sees it coming
    assert_user_error(run_script(*args), "a training step needs about", "lower --batch_size")
    # and where the plan is skipped (or wrong), running out of memory is one line too
    result = run_script(*args, "--memory_check=off")
    assert_user_error(result, "out of memory with batch_size=50000, block_size=256", "--gradient_accumulation_steps")


def test_init_from_auto_starts_then_resumes(data_dir, tmp_path):
    """init_from='auto' lets a restarted job run the same command: fresh when out_dir has no checkpoint,
    resumed when it has one."""
    out = tmp_path / "auto"
    first = train(data_dir, out, "--init_from=auto", "--max_iters=20", "--eval_interval=10")
    assert first.returncode == 0, first.stderr
    assert "training a new model from scratch" in first.stdout
    again = train(data_dir, out, "--init_from=auto", "--max_iters=30", "--eval_interval=10")
    assert again.returncode == 0, again.stderr
    assert f"resuming from {out}" in again.stdout and load_checkpoint(out)["iter_num"] == 30


def worker_with_rank(launcher_pid, rank):
    """The pid of the torchrun worker with this RANK."""
    for pid in child_pids(launcher_pid):
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker with RANK={rank} under {launcher_pid}")


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_never_killed(data_dir, start_training, tmp_path):
    """torchrun --max-restarts=3 with --init_from=auto: one of two workers SIGKILLed between checkpoints;
    torchrun restarts the group, which resumes from the last ckpt.pt, and the run finishes with the losses
    and, bit for bit, the weights of a run never killed with the same checkpoint schedule."""
    schedule = [
        "--gradient_accumulation_steps=2",
        "--max_iters=300",
        "--lr_decay_iters=300",
        "--eval_interval=50",
        "--eval_iters=2",
        "--log_interval=5",
        "--init_from=auto",
    ]
    out = tmp_path / "killed"
    proc = start_training([*TORCHRUN, "--max-restarts=3"], out, *schedule)
    wait_for_line(proc, "saved checkpoint")  # step 50
    wait_for_line(proc, "iter 60/")
    os.kill(worker_with_rank(proc.pid, 1), signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=240)
    proc.stderr_file.seek(0)
    assert proc.returncode == 0, proc.stderr_file.read()
    assert f"resuming from {out}" in stdout and "done: best val loss" in stdout
    straight = run_torchrun(
        "train.py", *EXACT, *schedule, f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'straight'}"
    )
    assert straight.returncode == 0, straight.stderr
    assert step_losses(out) == step_losses(tmp_path / "straight")
    assert_same_weights(out, tmp_path / "straight")


def test_processes_that_cannot_connect_give_up_in_time(data_dir, tmp_path):
    """A torchrun worker whose peer never comes (as after a restart whose connect hangs) exits after
    connect_timeout with one line, so torchrun --max-restarts can start the group again."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    t0 = time.time()
    result = run_script(
        "train.py",
        *EXACT,
        "--connect_timeout=3",
        "--gradient_accumulation_steps=2",
        f"--data_dir={data_dir}",
        f"--out_dir={tmp_path / 'o'}",
        env=env,
    )
    assert time.time() - t0 < 30
    assert_user_error(result, "did not all connect within 3 s")


def test_one_run_writes_into_an_out_dir_at_a_time(data_dir, start_training, tmp_path):
    out = tmp_path / "run"
    first = start_training([sys.executable], out, "--max_iters=100000", "--lr_decay_iters=100000")
    wait_for_line(first, "iter 1/")  # it holds out_dir from before its first write
    second = train(data_dir, out, "--overwrite=True")
    assert_user_error(
        second,
        f"{out} is being written by process {first.pid} on {socket.gethostname()}",
        "train.py",
        "choose another --out_dir",
    )
    os.killpg(first.pid, signal.SIGTERM)
    finish(first)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records].count("run") == 1 and records[0]["kind"] == "run"  # the first run's log alone
    # its lock file is left behind, held by nobody: the next run takes it over
    resumed = train(data_dir, out, "--init_from=resume", f"--max_iters={load_checkpoint(out)['iter_num'] + 2}")
    assert resumed.returncode == 0, resumed.stderr


def test_one_prepare_writes_into_a_folder_at_a_time(tmp_path):
    text = public_data("tinyshakespeare/input.txt")
    hold = (
        "import sys, time; from nanogpt.files import hold_folder; hold_folder(sys.argv[1], 'out_dir'); "
        "print('held', flush=True); time.sleep(300)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            refused = run_script("data/shakespeare_char/prepare.py", f"--input={text}", f"--out_dir={tmp_path}")
            assert_user_error(refused, f"{tmp_path} is being written by process {holder.pid}")
            assert not (tmp_path / "train.bin").exists() and not list(tmp_path.glob("*.tmp"))
        finally:
            holder.kill()
    # the dead holder's lock
    taken_over = run_script("data/shakespeare_char/prepare.py", f"--input={text}", f"--out_dir={tmp_path}")
    assert taken_over.returncode == 0, taken_over.stderr
    assert (tmp_path / "train.bin").stat().st_size == 2 * 1_003_854


def test_resume_runs_and_records_the_checkpoints_shape(data_dir, tmp_path):
    out = tmp_path / "run"
    where = (
        f"--data_dir={data_dir}",
        "--dataset=shakespeare_char",
        f"--out_dir={out}",
        "--device=cpu",
        "--compile=False",
    )
    short = ("--eval_interval=2", "--eval_iters=2", "--log_interval=1", "--warmup_iters=1", "--batch_size=4")
    first = run_script("train.py", *TINY_MODEL, *short, *where, "--max_iters=2", "--lr_decay_iters=4")
    assert first.returncode == 0, first.stderr
    log = (out / "metrics.jsonl").read_bytes()

    # a context longer than the model's positions: refused before anything is written
    grown = run_script("train.py", *short, *where, "--init_from=resume", "--max_iters=4", "--block_size=64")
    assert_user_error(grown, "cannot resume with block_size=64", "--block_size=32 or less")
    assert (out / "metrics.jsonl").read_bytes() == log

    # n_layer, n_embd, block_size ... left at their defaults take the checkpoint's, and that is what is recorded
    resumed = run_script("train.py", *short, *where, "--init_from=resume", "--max_iters=4")
    assert resumed.returncode == 0, resumed.stderr
    assert "n_layer" not in resumed.stdout and "block_size" not in resumed.stdout, resumed.stdout
    checkpoint = load_checkpoint(out)
    for key in ("n_layer", "n_head", "n_embd", "block_size"):
        assert checkpoint["config"][key] == checkpoint["model_args"][key], key
    assert checkpoint["model_args"]["n_layer"] == 2 and checkpoint["config"]["block_size"] == 32


@pytest.mark.parametrize("script", ["train.py", "sample.py"])  # the prepare scripts load no torch
def test_ctrl_c_while_torch_loads_is_one_line(script, tmp_path):
    # SIGINT as a terminal delivers it: a test run started in the background (`&`) ignores it, and so would its children
    process = subprocess.Popen(
        [sys.executable, script, f"--out_dir={tmp_path / 'out'}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 60
    # torch's library is mapped early in `import torch`, a second or more before the import ends
    while "libtorch" not in Path(f"/proc/{process.pid}/maps").read_text() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert stderr.strip() == "interrupted" and stdout == "", stderr
    assert process.returncode != 0
