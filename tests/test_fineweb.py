"""data/fineweb/prepare.py on a few local parquet rows: shards that hold whole documents in order, an
interrupted run that continues to the same files, and training on the shards as one stream."""

import json
import os
import re
import signal
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import REPO, SCRIPT_TIMEOUT, TINY_MODEL, public_data, run_script
from nanogpt.data import Dataset
from nanogpt.tokenizer import GPT2Tokenizer

pytestmark = pytest.mark.slow  # every test here starts processes

SHARDS = ["--shard_tokens=20000", "--val_tokens=5000"]


def documents():
    """Wikipedia articles from the WikiText-2 sample (split at their titles), with one long article made
    of several in the middle: it fills a file of its own, larger than shard_tokens."""
    text = public_data("webtext_sample/wikitext2_valid.txt").read_text()
    articles = [a.strip() for a in re.split(r"\n(?= = [^=])", text) if a.strip()][:30]
    return articles[:20] + ["\n".join(articles[20:26]), "   "] + articles[26:]  # and an empty document


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("fineweb_source") / "rows.parquet"
    docs = documents()
    pq.write_table(pa.table({"text": docs, "id": [f"doc{i}" for i in range(len(docs))]}), path)
    return path


def prepare(parquet, out_dir, *extra, preexec_fn=None):
    env = dict(os.environ, HF_DATASETS_CACHE=str(out_dir.parent / "hf_cache"))  # the arrow copy of the rows, shared
    command = [
        sys.executable,
        "data/fineweb/prepare.py",
        f"--input={parquet}",
        f"--out_dir={out_dir}",
        "--num_proc=2",
        *SHARDS,
        *extra,
    ]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, preexec_fn=preexec_fn
    )


def files(out_dir):
    return {p.name: p.read_bytes() for p in sorted(out_dir.glob("*.bin"))}


def test_shards_hold_whole_documents_in_order(parquet, tmp_path):
    out = tmp_path / "data" / "fineweb"
    result = prepare(parquet, out)
    assert result.returncode == 0, result.stderr
    assert "tokens/s with num_proc=2" in result.stdout
    assert json.loads((out / "meta.json").read_text()) == {"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16"}
    assert not (out / "prepare_state.json").exists()

    tokenizer = GPT2Tokenizer()
    expected = [[tokenizer.eot_token] + tokenizer.encode(d, ordinary=True) for d in documents() if d.strip()]
    names = ["val.bin"] + [f"train_{i:06d}.bin" for i in range(len(files(out)) - 1)]
    assert sorted(names) == sorted(files(out))
    shards = [np.fromfile(out / name, dtype=np.uint16) for name in names]
    # every document once, in order, each beginning with <|endoftext|>; no file starts inside one
    assert np.concatenate(shards).tolist() == [t for ids in expected for t in ids]
    assert all(shard[0] == tokenizer.eot_token for shard in shards)
    document_starts = set(np.cumsum([0] + [len(ids) for ids in expected]).tolist())
    assert set(np.cumsum([0] + [len(s) for s in shards]).tolist()) <= document_starts
    # full files: the next document would not have fit; a file over shard_tokens is one long document
    assert len(shards[0]) <= 5000 and all(len(s) <= 20000 or (s == tokenizer.eot_token).sum() == 1 for s in shards[1:])
    assert any(len(s) > 20000 for s in shards)

    # training reads the train shards as one stream: a window may cross from one shard into the next
    stream = Dataset(tmp_path / "data", "fineweb").tokens("train")
    joined = np.concatenate(shards[1:])
    assert len(stream) == len(joined)
    first_end = len(shards[1])
    assert stream[first_end - 10 : first_end + 10].tolist() == joined[first_end - 10 : first_end + 10].tolist()
    assert np.asarray(stream).tolist() == joined.tolist()
    trained = run_script(
        "train.py",
        *TINY_MODEL,
        "--dataset=fineweb",
        f"--data_dir={tmp_path / 'data'}",
        f"--out_dir={tmp_path / 'run'}",
        "--max_iters=3",
        "--eval_iters=2",
        "--eval_interval=3",
        "--block_size=64",
    )
    assert trained.returncode == 0, trained.stderr


def test_an_interrupted_run_continues_to_the_same_files(parquet, tmp_path):
    straight = tmp_path / "straight"
    assert prepare(parquet, straight).returncode == 0

    # a file-size limit below the long document's file: the run stops there, with the files before it kept
    out = tmp_path / "interrupted"
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, resource.RLIM_INFINITY))  # noqa: E731
    stopped = prepare(parquet, out, preexec_fn=limit)
    assert stopped.returncode != 0 and "Traceback" not in stderr_text(stopped)
    assert stderr_text(stopped).splitlines()[-1].startswith("error: ")
    state = json.loads((out / "prepare_state.json").read_text())
    kept = files(out)
    assert 0 < state["train_shards"] < len(files(straight)) - 1 and len(kept) == state["train_shards"] + 1
    assert all(kept[name] == files(straight)[name] for name in kept)

    # other settings cannot continue it; the same ones do, to the straight run's files, byte for byte
    other = prepare(parquet, out, "--shard_tokens=30000")
    assert other.returncode != 0 and "begun with other settings (shard_tokens)" in other.stderr
    resumed = prepare(parquet, out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"continuing: {state['documents']:,} documents" in resumed.stdout
    assert files(out) == files(straight) and not (out / "prepare_state.json").exists()
    again = prepare(parquet, out)
    assert again.returncode != 0 and "already holds a prepared dataset" in again.stderr


def stderr_text(result):
    """stderr without the progress bar's redrawn lines (they end in carriage returns, not newlines)."""
    return "\n".join(line.split("\r")[-1] for line in result.stderr.splitlines())


def test_text_that_is_not_a_string_an_input_holding_the_output_and_an_unfinished_folder(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    source = tmp_path / "source"
    source.mkdir()
    docs = documents()
    pq.write_table(pa.table({"text": docs[:10] + [None] + docs[10:]}), source / "rows.parquet")
    out = tmp_path / "out"
    made = prepare(source, out)
    assert made.returncode == 0, made.stderr
    assert "note: 2 documents skipped: empty, or their text is not a string" in made.stdout  # None and "   "
    owt = run_script("data/openwebtext/prepare.py", f"--input={source}", f"--out_dir={tmp_path / 'owt'}")
    assert owt.returncode == 0, owt.stderr
    inside = prepare(source, source / "dataset")
    assert inside.returncode == 1 and "holds --out_dir" in inside.stderr.splitlines()[-1]
    assert not (source / "dataset" / "prepare_state.json").exists()
    # a folder still being prepared trains on what it holds, and says so
    (out / "prepare_state.json").write_text("{}")
    args = [*TINY_MODEL, f"--data_dir={tmp_path}", "--dataset=out", "--max_iters=1", "--eval_iters=1"]
    trained = run_script("train.py", *args, f"--out_dir={tmp_path / 'run'}")
    assert trained.returncode == 0 and "is still being prepared (prepare_state.json is there)" in trained.stderr


def test_ctrl_c_ends_prepare_and_its_workers_in_one_line_and_the_rerun_continues(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: the workers too."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({"text": documents() * 120}), path)  # a few seconds of tokenising on two cores
    out = tmp_path / "out"
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf_cache"))
    command = [sys.executable, "data/fineweb/prepare.py", f"--input={path}", f"--out_dir={out}", "--num_proc=2"]
    process = subprocess.Popen(
        [*command, *SHARDS], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "prepare_state.json").exists():
        time.sleep(0.05)  # the first file is written: the workers are tokenising
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)  # no hang
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr_text(subprocess.CompletedProcess([], 130, stdout, stderr)).splitlines()[-1] == "interrupted"
    resumed = subprocess.run(
        [*command, *SHARDS], cwd=REPO, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
    )
    assert resumed.returncode == 0 and "continuing:" in resumed.stdout, resumed.stderr


def test_ctrl_c_ends_openwebtext_prepare_and_its_workers_in_one_line(tmp_path):
    """datasets' worker pool, stopped by a SIGINT to the whole group, raises its own error on the way out."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({"text": documents() * 200}), path)
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf_cache"))  # nothing tokenised is cached yet
    command = [sys.executable, "data/openwebtext/prepare.py", f"--input={path}", f"--out_dir={tmp_path / 'out'}"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [*command, "--num_proc=2"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + 120
        while time.time() < deadline and "tokenizing train" not in log.read_text():
            time.sleep(0.05)
        time.sleep(1)  # the workers are tokenising
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)  # no hang
    said = stderr_text(subprocess.CompletedProcess([], 130, "", log.read_text()))
    assert process.returncode == 130 and "Traceback" not in said and said.splitlines()[-1] == "interrupted", said


def test_the_prepare_benchmark_runs_on_a_tiny_file():
    """bench/prepare_speed.py, ours alone (build-nanogpt is not here): both scripts, the same tokens."""
    result = run_script("bench/prepare_speed.py", "--sizes=0.3", "--pairs=1")
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| 0.3 MB")]
    assert [row[2] for row in rows] == ["data/fineweb/prepare.py", "data/openwebtext/prepare.py"]
    assert rows[0][4] == rows[1][4] and int(rows[0][4].replace(",", "")) > 50_000  # tokens
