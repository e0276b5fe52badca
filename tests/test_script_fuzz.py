"""Every script driven past its settings: its real entry point (main, through run_main as a user's run
goes) runs in-process on a tiny model and dataset with a small budget, so a value that is accepted is
also used. Hypothesis draws one or two settings a case from the script's own settings class, with values
meant to break things: sizes up to 2**63, negatives, NaN and infinities, paths that are folders,
devices, /proc files, /dev/full, non-UTF-8 files, documents whose text is null or a number, and each
setting's own choices; train.py also gets config files with fuzzed contents, or resumes a copy of a run
(its metrics.jsonl holding lines that are not records), sample.py fuzzed stdin, serve.py a fuzzed API key
in its environment and hostile requests (lone surrogates in every text field, repeated prompts, more
choices than it can hold); compare.py reads a run whose metrics.jsonl holds foreign lines.

Each outcome is counted per script: ran (to the end, or to the case's time budget), refused in one line
that names a setting it was given, or anything else (a traceback, a refusal that names nothing). The
table is printed at the end of the test run (tests/conftest.py); bench/README.md quotes it.
"""

import contextlib
import dataclasses
import io
import json
import re
import shutil
import signal
import sys
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import REPO, SCRIPT_OUTCOMES, TINY_MODEL, free_port
from nanogpt.errors import run_main
from test_settings_fuzz import script_module, settings_class

pytestmark = pytest.mark.slow  # it trains, samples and serves, a few hundred times over

BUDGET_SECONDS = 3  # a case still running then has run: it is stopped there
EXAMPLES = {
    "train.py": 40,
    "sample.py": 30,
    "bench.py": 20,
    "eval.py": 20,
    "export.py": 12,
    "compare.py": 12,
    "serve.py": 16,
    "data/shakespeare_char/prepare.py": 8,
    "data/shakespeare/prepare.py": 6,
    "data/custom/prepare.py": 8,
    "data/openwebtext/prepare.py": 6,
    "data/fineweb/prepare.py": 6,
    "data/chat/prepare.py": 6,
}
HUGE = [2**31, 2**32 + 1, 2**61, 2**63 - 1, 2**63]


class OutOfTime(BaseException):
    """The case's budget ran out while it was running fine."""


# lines of metrics.jsonl that are JSON but not records of this project's
FOREIGN_RECORDS = '[1, 2, 3]\n{"hello": "world"}\n{"kind": "eval", "iter": 15}\n{"kind": "train", "iter": "x"}\n'


def run_with_foreign_records(run_dir, target):
    """A copy of a run whose metrics.jsonl also holds lines that are not records."""
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns(".writer.lock"))
    with open(Path(target) / "metrics.jsonl", "a") as f:
        f.write(FOREIGN_RECORDS)
    return target


@pytest.fixture
def places(tmp_path_factory, trained_run):
    """Files and folders the path values point at, new for each script (a case may write into them)."""
    root = tmp_path_factory.mktemp("fuzz_places")
    (root / "latin1.txt").write_bytes(b"caf\xe9 au lait\n" * 20)
    (root / "text.txt").write_text("ROMEO: the text of a small run, said twice.\n" * 40)
    (root / "nontext.jsonl").write_text('{"text": null}\n{"text": 7}\n{"text": "ROMEO: a document."}\n' * 20)
    chat = '{"messages": [{"role": "user", "content": "ROMEO?"}, {"role": "assistant", "content": "JULIET."}]}\n'
    (root / "chats.jsonl").write_text(chat * 20)
    (root / "folder").mkdir()
    return {
        "chats": str(root / "chats.jsonl"),
        "folder": str(root / "folder"),
        "latin1": str(root / "latin1.txt"),
        "text": str(root / "text.txt"),
        "nontext": str(root / "nontext.jsonl"),
        "foreign_run": str(run_with_foreign_records(trained_run[0], root / "foreign_run")),
        "missing": str(root / "missing" / "file.txt"),
        "proc": "/proc/self/mem",
        "devfull": "/dev/full",
        "devnull_sub": "/dev/null/sub",
    }


def values_for(hint, places, choices=None):
    """Values for a setting of this type (and, where it declares them, its own choices), as command-line text."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
    paths = [places[k] for k in ("folder", "latin1", "missing", "proc", "devfull", "devnull_sub", "nontext")]
    if base is bool:
        return st.sampled_from(["True", "False", "None", "2"])
    if base is int:
        return st.sampled_from([0, -1, 1, 2, 3, 8, *HUGE, -(2**63)]).map(str) | st.sampled_from(["None", "1.5", "nan"])
    if base is float:
        return st.sampled_from(["nan", "inf", "-inf", "0", "-0.0", "1e-300", "1e300", "0.1", "0.5", "-1", "2"])
    pictures = [
        places["folder"] + "/fuzzed.png",
        "/proc/forbidden/x.png",
        places["folder"] + ".png",
    ]  # compare.py's --to
    texts = ["", " ", "cuda:7", "mps", "gpt2-huge", "FILE:" + places["latin1"], "FILE:" + places["proc"]]
    return st.sampled_from([*texts, *paths, *pictures, *(choices or [])])


def overrides(config_cls, places):
    hints = typing.get_type_hints(config_cls)
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(config_cls)}
    return st.lists(st.sampled_from(sorted(hints)), min_size=1, max_size=2, unique=True).flatmap(
        lambda keys: st.tuples(*[values_for(hints[k], places, choices[k]).map(lambda v, k=k: (k, v)) for k in keys])
    )


def base_args(script, run, places, case_dir):
    """A tiny, quick run of each script; the fuzzed settings come after these and replace them."""
    out_dir, data_dir = run
    tiny = [a for a in TINY_MODEL if not a.startswith("--compile")]
    return {
        "train.py": [
            *tiny,
            f"--data_dir={data_dir}",
            "--dataset=shakespeare_char",
            f"--out_dir={case_dir / 'out'}",
            "--max_iters=2",
            "--eval_interval=2",
            "--eval_iters=1",
            "--log_interval=1",
            "--warmup_iters=1",
            "--lr_decay_iters=2",
        ],
        "sample.py": [f"--out_dir={out_dir}", "--max_new_tokens=4", "--num_samples=2", "--device=cpu"],
        "bench.py": [*tiny, "--real_data=False", "--iters=1", "--warmup_iters=0"],
        "eval.py": [f"--out_dir={out_dir}", "--device=cpu", f"--input={places['text']}"],
        "export.py": [f"--out_dir={out_dir}", f"--to={case_dir / 'hf'}"],
        "compare.py": [places["foreign_run"], str(out_dir), f"--to={case_dir / 'both.png'}"],
        "serve.py": [f"--out_dir={out_dir}", "--device=cpu", f"--port={free_port()}"],
        "data/shakespeare_char/prepare.py": [f"--input={places['text']}", f"--out_dir={case_dir / 'data'}"],
        "data/shakespeare/prepare.py": [f"--input={places['text']}", f"--out_dir={case_dir / 'data'}"],
        "data/custom/prepare.py": [f"--input={places['text']}", f"--out_dir={case_dir / 'data'}", "--vocab_size=300"],
        "data/openwebtext/prepare.py": [
            f"--input={places['text']}",
            f"--out_dir={case_dir / 'data'}",
            "--num_proc=1",
            "--val_fraction=0.1",
        ],
        "data/fineweb/prepare.py": [
            f"--input={places['text']}",
            f"--out_dir={case_dir / 'data'}",
            "--num_proc=1",
            "--val_tokens=10",
            "--shard_tokens=100",
        ],
        "data/chat/prepare.py": [
            f"--input={places['chats']}",
            f"--out_dir={case_dir / 'data'}",
            "--tokenizer=char",
            "--block_size=32",
        ],
    }[script]


@contextlib.contextmanager
def budget(seconds):
    """Stop the case after `seconds`; and give the test run back its own signal handlers (train.py's main
    installs Ctrl-C and SIGTERM handlers of its own)."""

    def out_of_time(signum, frame):
        raise OutOfTime()

    previous = {number: signal.getsignal(number) for number in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        for number, handler in previous.items():
            signal.signal(number, handler)


# raw bodies: a lone surrogate in each text field, repeated prompts, more choices than the server holds
HOSTILE_REQUESTS = [
    ("/v1/completions", b'{"prompt": "a\\ud800", "max_tokens": 1, "echo": true}'),
    ("/v1/completions", b'{"prompt": ["ROMEO:", "\\udfff"], "max_tokens": 1, "stream": true}'),
    ("/v1/completions", b'{"prompt": "ROMEO:", "max_tokens": 1, "stop": ["\\ud83d"]}'),
    ("/v1/completions", b'{"prompt": "ROMEO:", "max_tokens": 1, "user": "\\udc00"}'),
    ("/tokenize", b'{"prompt": "\\ud800"}'),
    ("/v1/completions", b'{"prompt": ["ROMEO:", "ROMEO:", "ROMEO:"], "max_tokens": 2, "n": 2, "seed": 1}'),
    ("/v1/completions", b'{"prompt": "ROMEO:", "max_tokens": 1, "n": 32, "seed": 1}'),
    ("/v1/completions", ('{"prompt": ' + json.dumps(["ROMEO:"] * 500) + ', "max_tokens": 1}').encode()),
]


def serve_one_request(app, host="127.0.0.1", port=0, **kwargs):
    """Instead of uvicorn's loop: one completion and the hostile requests through the app serve.py built
    (FastAPI's test client): each answered, a refusal a one-sentence JSON error, never a 500."""
    from fastapi.testclient import TestClient

    client = TestClient(app)
    response = client.post("/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 3})
    assert response.status_code in (200, 401), response.text
    for path, body in HOSTILE_REQUESTS:
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code in (200, 400, 401, 413, 429), (path, body[:80], response.status_code, response.text)
        if response.status_code != 200:
            assert "\n" not in response.json()["error"]["message"], response.text


def checkout_for(script, tmp_path):
    """Where the script runs from: a prepare script's defaults write beside it (an empty --out_dir is
    "beside prepare.py"), so those run from a copy; the others write only where they are told."""
    if not script.startswith("data/"):
        return REPO
    copy = tmp_path / "checkout"
    (copy / script).parent.mkdir(parents=True)
    shutil.copy2(REPO / script, copy / script)
    return copy


def files_under(folder):
    """{path: (size, mtime)} of every file under folder: what a run may not change."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*") if p.is_file()}


def outcome(script, argv, changed, capsys, monkeypatch, checkout, stdin=None):
    """('ran' | 'refused' | 'other', what it said) for one run of the script's main."""
    module = script_module(script, checkout)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    if script == "serve.py":
        import uvicorn

        monkeypatch.setattr(uvicorn, "run", serve_one_request)
    capsys.readouterr()
    try:
        with budget(BUDGET_SECONDS):
            run_main(module.main)
        return "ran", ""
    except OutOfTime:
        return "ran", "(stopped at the time budget)"
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()
        if e.code in (0, None):
            return "ran", ""
        said = err[-1] if err else ""
        # a refusal names what it refuses: a setting it was given, by name (or, for a path, by the path)
        named = any(name in said for name, _ in changed) or any(
            value and "/" in value and value in said for _, value in changed
        )
        # progress bars may come before it (datasets draws its own); no traceback may
        if said.startswith("error: ") and named and not any("Traceback" in line for line in err):
            return "refused", said
        return "other", f"exit {e.code}: {err[-3:]}"
    except BaseException as e:  # noqa: B036 - anything else is what the fuzz is here to find
        return "other", f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("script", list(EXAMPLES))
def test_every_script_runs_or_refuses_in_one_line(script, trained_run, data_dir, places, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkout = checkout_for(script, tmp_path)
    repo_data = files_under(REPO / "data")
    config_cls = settings_class(script_module(script, checkout))
    counts = {"ran": 0, "refused": 0, "other": 0}
    others = []
    cases = iter(range(10**6))

    extras = st.just(None)
    if script == "train.py":  # a config file first, its contents fuzzed
        extras = st.one_of(
            st.just(None),
            st.sampled_from(
                [
                    b"batch_size = 2**63\n",
                    b"max_iters = 'ten'\n",
                    b"\xff\xfe\n",
                    b"n_layer = [\n",
                    b"learning_rate = float('nan')\n",
                    b"raise SystemExit(5)\n",
                ]
            ),
            st.just("resume"),  # or a copy of the trained run, resumed (with the fuzzed settings)
        )
    elif script == "sample.py":  # --start=- reads the prompt from stdin
        extras = st.one_of(st.just(None), st.sampled_from([b"", b"\xff\xfe caf\xe9", b"ROMEO:" * 2000, b"JULIET:\n"]))
    elif script == "serve.py":
        extras = st.one_of(st.just(None), st.sampled_from(["", "k" * 5000, "caf\u00e9", "key with spaces"]))

    @settings(
        max_examples=EXAMPLES[script],
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(overrides(config_cls, places), extras)
    def case(changed, extra):
        case_dir = tmp_path / f"case{next(cases)}"
        case_dir.mkdir()
        argv = base_args(script, (trained_run[0], data_dir), places, case_dir)
        # given: on the command line; named: what a refusal may name
        given, named, stdin = list(changed), list(changed), None
        if script == "train.py" and extra == "resume":
            resumed = run_with_foreign_records(trained_run[0], case_dir / "resumed")
            argv = [*argv, f"--out_dir={resumed}", "--init_from=resume", "--max_iters=302", "--lr_decay_iters=302"]
            named.append(("init_from", "resume"))
        elif script == "train.py" and extra is not None:
            config = case_dir / "fuzzed_config.py"
            config.write_bytes(extra)
            argv = [str(config), *argv]
            named += [
                ("config file", str(config)),
                *((name.decode(), "") for name in re.findall(rb"^(\w+) *=", extra, re.M)),
            ]
        elif script == "sample.py" and extra is not None:
            stdin = extra
            given.append(("start", "-"))
            named.append(("start", "-"))
        elif script == "serve.py" and extra is not None:
            monkeypatch.setenv("NANOGPT_API_KEY", extra)
            named.append(("api_key", ""))
        argv = [*argv, *(f"--{name}={value}" for name, value in given)]
        kind, said = outcome(script, argv, named, capsys, monkeypatch, checkout, stdin)
        monkeypatch.delenv("NANOGPT_API_KEY", raising=False)
        counts[kind] += 1
        if kind == "other":
            others.append(f"{given} {repr(extra)[:60]}: {said}")

    if checkout != REPO:  # a prepare script: always a case with its default folder, beside the copy
        case = example((("out_dir", ""),), None)(case)
    case()
    SCRIPT_OUTCOMES[script] = counts
    assert not others, "\n".join(others)
    assert files_under(REPO / "data") == repo_data, "the fuzzed runs changed the checkout's data/ folder"
