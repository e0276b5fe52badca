"""Load on serve.py: N concurrent clients for T seconds against a server on a loopback port, and the same
requests sent one at a time, side by side. Prints requests/s, tokens/s, time to first token and latency
(p50 / p99) for each, and the ratio of tokens/s.

    python bench/serve_load.py --out_dir=out-shakespeare-char --clients=32 --max_tokens=64 --seconds=20

It starts the server itself (python serve.py --device=cpu ...) and stops it at the end. Every request is a
streamed completion of max_tokens tokens (no stop), so tokens/s counts generated tokens.
"""

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [
    "ROMEO:",
    "JULIET:",
    "First Citizen:\n",
    "KING RICHARD III:\n",
    "To be, or not",
    "O",
    "What say you",
    "MENENIUS:\n",
]


def start_server(args):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "serve.py",
        f"--out_dir={args.out_dir}",
        f"--device={args.device}",
        f"--port={port}",
        f"--max_rows={args.clients}",
    ]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            return server, base
        except OSError:
            time.sleep(0.2)
    server.kill()
    sys.exit("the server did not start")


def one_request(client, base, prompt, max_tokens):
    """(time to first token, latency, tokens) of one streamed completion."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "stream": True}
    with client.stream("POST", base + "/v1/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            if first is None and choice["text"]:
                first = time.perf_counter() - t0
            if choice["finish_reason"] is not None:
                tokens = max_tokens
    return first if first is not None else time.perf_counter() - t0, time.perf_counter() - t0, tokens


def load(base, clients, seconds, max_tokens):
    """clients threads, each sending requests back to back until `seconds` have passed."""
    results, lock = [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(k):
        with httpx.Client() as client:
            i = k
            while time.perf_counter() < deadline:
                result = one_request(client, base, PROMPTS[i % len(PROMPTS)], max_tokens)
                with lock:
                    results.append(result)
                i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - t0


def summary(label, results, elapsed):
    firsts = sorted(r[0] for r in results)
    latencies = sorted(r[1] for r in results)
    tokens = sum(r[2] for r in results)

    def p(values, q):
        return values[min(len(values) - 1, int(q * len(values)))]

    return dict(
        label=label,
        requests=len(results),
        rps=len(results) / elapsed,
        tps=tokens / elapsed,
        ttft50=statistics.median(firsts),
        ttft99=p(firsts, 0.99),
        lat50=statistics.median(latencies),
        lat99=p(latencies, 0.99),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="out-shakespeare-char")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    server, base = start_server(args)
    try:
        one_request(httpx.Client(), base, "warm up", 8)
        rows = [summary("one at a time", *load(base, 1, args.seconds, args.max_tokens))]
        rows.append(summary(f"{args.clients} concurrent", *load(base, args.clients, args.seconds, args.max_tokens)))
    finally:
        server.terminate()
        server.wait()
    print(f"\n{args.max_tokens} tokens a request, {args.seconds:.0f} s each, server on {args.device}")
    print("| clients | requests | requests/s | tokens/s | TTFT p50 / p99 (s) | latency p50 / p99 (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['label']} | {r['requests']} | {r['rps']:.2f} | {r['tps']:,.0f} | {r['ttft50']:.3f} / "
            f"{r['ttft99']:.3f} | {r['lat50']:.2f} / {r['lat99']:.2f} |"
        )
    print(f"concurrent / one at a time, tokens/s: {rows[1]['tps'] / rows[0]['tps']:.1f}x")


if __name__ == "__main__":
    main()
