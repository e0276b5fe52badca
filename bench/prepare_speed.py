"""Preparing web text: our two prepare scripts against build-nanogpt's fineweb.py on the same parquet file.

    python bench/prepare_speed.py --build_nanogpt=PATH [--sizes=20,80] [--pairs=2] [--num_proc=2]
    python bench/prepare_speed.py --sizes=1 --pairs=1          # ours alone, on a tiny file

Makes a parquet file of documents for each size (MB of text: the WikiText-2 sample of ../shared/data in
documents of about 4,000 characters, repeated until the size is reached) and tokenises it with each, one
after the other, --pairs times: data/fineweb/prepare.py and data/openwebtext/prepare.py with --num_proc
processes, and build-nanogpt's fineweb.py (its multiprocessing pool over the rows, tiktoken's
encode_ordinary, uint16 shards) with its `load_dataset` call pointed at the same file and os.cpu_count()
set so that its cpu_count() // 2 processes are --num_proc too. Each run is a whole process, its Hugging
Face datasets cache empty (all convert the parquet file to Arrow alike). Prints, per size and project, the
median wall time, tokens/s (every token written, the <|endoftext|> of each document included, over the
whole process), and the peak memory of the process and its workers together (the sum of their proportional
set sizes, sampled every 20 ms: pages the workers share with their parent count once; and its anonymous
part, without the mapped Arrow files); last, each of ours over theirs in tokens/s, per size. PATH is a
build-nanogpt checkout (or any folder holding its fineweb.py).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nanogpt.files import shared_data_dir  # noqa: E402

OURS = ["data/fineweb/prepare.py", "data/openwebtext/prepare.py"]
# build-nanogpt's fineweb.py reads the hub; this runs it unchanged on a local parquet file instead
THEIR_RUNNER = """
import os, runpy, sys
import datasets
script, parquet, processes = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = datasets.load_dataset
datasets.load_dataset = lambda *args, **kwargs: load("parquet", data_files=parquet, split="train")
os.cpu_count = lambda: 2 * processes  # fineweb.py starts cpu_count() // 2 workers
runpy.run_path(script, run_name="__main__")
"""


def web_documents(length=4000):
    """The WikiText-2 sample's paragraphs, in order, joined into documents of about `length` characters
    (FineWeb-Edu's documents average a few thousand)."""
    source = shared_data_dir()
    if source is None or not (source / "webtext_sample").is_dir():
        sys.exit("this benchmark reads ../shared/data/webtext_sample (or $NANOGPT_SHARED_DATA)")
    documents, current = [], ""
    for path in sorted((source / "webtext_sample").glob("*.txt")):
        for paragraph in path.read_text(encoding="utf-8").splitlines(keepends=True):
            current += paragraph
            if len(current) >= length:
                documents.append(current)
                current = ""
    return documents


def write_parquet(path, megabytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs, documents, size = web_documents(), [], 0
    while size < megabytes * 1e6:
        documents.append(docs[len(documents) % len(docs)])
        size += len(documents[-1].encode("utf-8"))
    pq.write_table(pa.table({"text": documents}), path, row_group_size=1000)  # ~4 MB groups, as web dumps have
    return len(documents), size


def tree_pss_mb(pid):
    """The summed proportional set size of a process and all its descendants, in MB, and of it the
    anonymous part (memory they own, not pages of files they map, which the kernel can drop)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, anon, todo = 0, 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                elif line.startswith("Pss_Anon:"):
                    anon += int(line.split()[1])
        except OSError:
            pass
    return total / 1024, anon / 1024


def timed(command, cwd, env):
    """(wall seconds, (peak tree PSS, peak anonymous PSS) in MB) of a command, which must succeed."""
    t0 = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak, done = [(0.0, 0.0)], threading.Event()

    def sample():
        while not done.is_set():
            now = tree_pss_mb(process.pid)
            peak[0] = tuple(max(a, b) for a, b in zip(peak[0], now))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output = process.communicate()[0].decode(errors="replace")
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{output[-3000:]}")
    return seconds, peak[0]


def run_ours(script, parquet, work, env, num_proc, val_tokens):
    """One of our prepare scripts on the file: fineweb's with a tenth of the tokens for val.bin,
    openwebtext's with its own val fraction."""
    out = work / "ours"
    command = [sys.executable, str(REPO / script), f"--input={parquet}", f"--out_dir={out}", f"--num_proc={num_proc}"]
    if "fineweb" in script:
        command.append(f"--val_tokens={val_tokens}")
    seconds, peak = timed(command, REPO, env)
    tokens = sum(p.stat().st_size for p in out.glob("*.bin")) // 2
    return seconds, peak, tokens


def run_theirs(parquet, work, env, num_proc, build_nanogpt):
    folder = work / "theirs"
    folder.mkdir()
    (folder / "fineweb.py").write_bytes((Path(build_nanogpt) / "fineweb.py").read_bytes())
    (folder / "runner.py").write_text(THEIR_RUNNER)
    command = [sys.executable, "runner.py", "fineweb.py", str(parquet), str(num_proc)]
    seconds, peak = timed(command, folder, env)
    tokens = sum(len(np.load(p, mmap_mode="r")) for p in (folder / "edu_fineweb10B").glob("*.npy"))
    return seconds, peak, tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build_nanogpt", default="", help="a build-nanogpt checkout; empty: ours alone")
    parser.add_argument("--sizes", default="20,80", help="MB of text in each parquet file, comma-separated")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--num_proc", type=int, default=2)
    args = parser.parse_args()
    projects = OURS + (["build-nanogpt"] if args.build_nanogpt else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for megabytes in (float(s) for s in args.sizes.split(",")):
            parquet = Path(tmp) / f"docs_{megabytes:g}MB.parquet"
            n_docs, size = write_parquet(parquet, megabytes)
            results = {p: [] for p in projects}
            for pair in range(args.pairs):
                for project in projects:
                    work = Path(tmp) / f"{project.replace('/', '_')}-{megabytes:g}-{pair}"
                    work.mkdir()
                    env = dict(os.environ, HF_DATASETS_CACHE=str(work / "hf-cache"))
                    if project in OURS:
                        # a tenth of the tokens (about 4.5 bytes each) to val.bin, the rest to a train shard
                        result = run_ours(project, parquet, work, env, args.num_proc, int(size / 45))
                    else:
                        result = run_theirs(parquet, work, env, args.num_proc, args.build_nanogpt)
                    results[project].append(result)
                    seconds, peak, tokens = result
                    print(f"{size / 1e6:.3g} MB, {project}: {seconds:.1f} s, {tokens:,} tokens, peak {peak[0]:.0f} MB")
            rows.append((size, n_docs, results))
    print(f"\n{args.num_proc} processes each; medians of {args.pairs} run(s)\n")
    print("| text | documents | project | wall | tokens | tokens/s | peak PSS, all processes | of it anonymous |")
    print("|---|---|---|---|---|---|---|---|")
    speed = {}
    for size, n_docs, results in rows:
        for project, runs in results.items():
            seconds = statistics.median(r[0] for r in runs)
            tokens = runs[0][2]
            speed[size, project] = tokens / seconds
            pss, anon = (statistics.median(r[1][k] for r in runs) for k in (0, 1))
            print(
                f"| {size / 1e6:.3g} MB | {n_docs:,} | {project} | {seconds:.1f} s | {tokens:,} | "
                f"{tokens / seconds:,.0f} | {pss:.0f} MB | {anon:.0f} MB |"
            )
    if args.build_nanogpt:
        print()
        for size, _, _ in rows:
            for ours in OURS:
                ratio = speed[size, ours] / speed[size, "build-nanogpt"]
                print(f"{size / 1e6:.3g} MB: {ours} / build-nanogpt tokens/s = {ratio:.2f}")


if __name__ == "__main__":
    main()
