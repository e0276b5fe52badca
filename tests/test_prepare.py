import json
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, SCRIPT_TIMEOUT, assert_user_error, public_data, run_script, skip_when_offline
from nanogpt.files import LOCK_NAME
from nanogpt.tokenizer import CharTokenizer

pytestmark = pytest.mark.slow  # every test here starts processes


def test_tiny_shakespeare_counts_and_roundtrip(data_dir):
    folder = data_dir / "shakespeare_char"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["tokenizer"] == "char" and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == 65 == len(meta["chars"])
    train = np.fromfile(folder / "train.bin", dtype=np.uint16)
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)
    assert (len(train), len(val)) == (1_003_854, 111_540)

    text = public_data("tinyshakespeare/input.txt").read_text()
    tokenizer = CharTokenizer(meta["chars"])
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # the files hold exactly the encoded text, split 90/10
    assert tokenizer.decode(train.tolist()) + tokenizer.decode(val.tolist()) == text


def test_prepare_from_given_input(tmp_path):
    source = tmp_path / "mine.txt"
    source.write_text("abcabc\nhello world\n" * 50)
    out = tmp_path / "prepared"
    result = run_script("data/shakespeare_char/prepare.py", f"--input={source}", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert "".join(meta["chars"]) == "\n abcdehlorw"
    assert "vocabulary of 12" in result.stdout


def test_prepare_empty_input_is_a_clear_error(tmp_path):
    empty = tmp_path / "input.txt"
    empty.write_text("")
    result = run_script("data/shakespeare_char/prepare.py", f"--input={empty}", f"--out_dir={tmp_path / 'x'}")
    assert_user_error(result, "is empty")
    assert not (tmp_path / "x").exists()


def test_prepare_missing_input_is_a_clear_error(tmp_path):
    result = run_script("data/shakespeare_char/prepare.py", f"--input={tmp_path / 'nope.txt'}")
    assert_user_error(result, "not found")


def test_prepare_runs_from_any_directory(tmp_path):
    result = skip_when_offline(
        run_script(REPO / "data/shakespeare_char/prepare.py", f"--out_dir={tmp_path}", cwd=tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "train.bin").stat().st_size == 2 * 1_003_854


def test_a_full_disk_leaves_the_prepared_dataset_as_it_was(data_dir, tmp_path):
    """A write that fails part way (a file-size limit, as a full disk does) leaves no temporary file and
    the previous train.bin, val.bin and meta.json byte-identical: all three are replaced or none."""
    out = tmp_path / "prepared"
    shutil.copytree(data_dir / "shakespeare_char", out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_NAME}
    source = tmp_path / "more.txt"
    source.write_text("a different text, so that a torn write would show\n" * 20_000)  # train.bin: 1.8 MB

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))

    result = subprocess.run(
        [sys.executable, "data/shakespeare_char/prepare.py", f"--input={source}", f"--out_dir={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        preexec_fn=limit_file_size,
    )
    assert_user_error(result, f"could not write train.bin, val.bin and meta.json to {out}", "MB free", "are intact")
    # every file as it was (besides the lock file the failed run held)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_NAME} == before


def test_token_ids_past_the_vocabulary_are_refused_in_one_sentence(data_dir, tmp_path):
    """A train.bin written with another tokenizer: refused when the dataset opens (before the run writes
    anything) if the bad ids are near the start, else by the batch that draws them."""
    from helpers import TINY_MODEL

    good = data_dir / "shakespeare_char"
    for name, bad_from in (("early", 1000), ("late", 1 << 24)):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for file in ("val.bin", "meta.json"):
            shutil.copy(good / file, folder / file)
        ids = np.resize(np.fromfile(good / "train.bin", dtype=np.uint16), bad_from + (1 << 20))
        ids[bad_from:] = 70  # the vocabulary has 65 characters
        ids.tofile(folder / "train.bin")
        out = tmp_path / f"out-{name}"
        result = run_script(
            "train.py",
            *TINY_MODEL,
            f"--data_dir={tmp_path / 'data'}",
            f"--dataset={name}",
            f"--out_dir={out}",
            "--max_iters=50",
            "--eval_interval=25",
            "--eval_iters=10",
        )
        where = folder / "train.bin" if name == "early" else f"the train split of {folder}"
        assert_user_error(result, f"{where} holds token id 70, not below the vocabulary size of 65", "prepare it again")
        if name == "early":
            assert not out.exists() or not list(out.iterdir())  # nothing written


def test_without_the_offline_copy_tests_fetch_or_skip_never_error(tmp_path):
    """On a machine without ../shared/data the tests that read public data fetch it (with a network) or
    are skipped saying why (without one); none of them errors."""
    empty = tmp_path / "no-shared-data"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NANOGPT_ALLOWED_SKIPS_ONLY"}
    env.update(
        NANOGPT_SHARED_DATA=str(empty),
        TIKTOKEN_CACHE_DIR=str(empty / "tiktoken"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    selection = [
        "tests/test_prepare.py::test_tiny_shakespeare_counts_and_roundtrip",
        "tests/test_prepare.py::test_prepare_runs_from_any_directory",
        "tests/test_eval.py::test_char_model_default_text_is_its_val_split",
        "tests/test_bpe.py",
        "tests/test_multiple_choice.py::test_hellaswag_format_matches_transformers",
        "tests/test_fineweb.py::test_shards_hold_whole_documents_in_order",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *selection],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "error" not in summary and "failed" not in summary, summary
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("neither in ../shared/data" in line for line in skipped), skipped

    # as CI runs the suite, a skip for want of data is a failure
    if skipped:
        strict = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", selection[1]],
            cwd=REPO,
            env=dict(env, NANOGPT_ALLOWED_SKIPS_ONLY="1"),
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
        )
        assert (
            strict.returncode == 1
            and "skipped, and not allowed to be: tests/test_prepare.py::test_prepare_runs_from_any_directory"
            in strict.stdout
        )


def test_ctrl_c_in_the_middle_of_a_write_leaves_no_temporary_file(tmp_path):
    """Ctrl-C arrives while the second file of a set is being written: both temporary files go, the old
    files stay, and the interrupt goes on to run_main (which says 'interrupted')."""
    from nanogpt.files import write_atomically

    (tmp_path / "train.bin").write_bytes(b"old")

    def interrupted(f):
        f.write(b"x" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically({tmp_path / "train.bin": lambda f: f.write(b"new"), tmp_path / "val.bin": interrupted}, 1003)
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["train.bin"] and (tmp_path / "train.bin").read_bytes() == b"old"
    )


def test_a_token_file_of_odd_length_is_one_sentence(data_dir, tmp_path):
    folder = tmp_path / "data" / "odd"
    shutil.copytree(data_dir / "shakespeare_char", folder)
    with open(folder / "train.bin", "ab") as f:
        f.write(b"\x00")  # half a uint16
    result = run_script(
        "train.py", f"--data_dir={tmp_path / 'data'}", "--dataset=odd", f"--out_dir={tmp_path / 'out'}", "--device=cpu"
    )
    assert_user_error(result, "train.bin has 2,007,709 bytes, not a whole number of uint16 tokens: it is damaged")


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["shakespeare_char", "shakespeare", "custom", "openwebtext", "fineweb", "chat"])
def test_a_prepare_script_starts_without_torch(dataset):
    """Preparing data needs numpy and a tokenizer, not torch's second of imports and its memory, which
    the tokenising workers would each inherit."""
    check = f"import sys; sys.path.insert(0, 'data/{dataset}'); import prepare; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stdout + result.stderr
