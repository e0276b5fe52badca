"""Multiple-choice evaluation (eval.py --task): HellaSwag's format and our own, scored as build-nanogpt
scores them, checked against transformers, on a trained model, and on bad files."""

import json
import random
import re

import pytest
import torch

from helpers import TINY_MODEL, assert_user_error, free_port, public_data, run_script, run_torchrun, skip_when_offline
from nanogpt.checkpoint import load_model_and_tokenizer
from nanogpt import multiple_choice
from nanogpt.multiple_choice import accuracy, loglikelihoods, read_items
from nanogpt.training.evaluation import task_items

pytestmark = pytest.mark.slow  # every test here starts processes or trains

# HellaSwag's own format (a line of its validation file has more keys; these are the ones read)
HELLASWAG_LINES = [
    {
        "ctx": "A man is sitting on a roof. He",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "label": 3,
    },
    {
        "ctx": "A lady walks to a barbell. She bends down and grabs the pole. The lady",
        "endings": [
            "swings and lands in her arms.",
            "pulls the barbell forward.",
            "pulls a rope attached to the barbell.",
            "stands and lifts the weight over her head.",
        ],
        "label": 3,
    },
    {
        "ctx": (
            "Two women in a child are shown in a canoe while a man pulls the canoe while standing in the water, "
            "with other individuals visible in the background. The child and a different man"
        ),
        "endings": [
            "are then shown paddling down a river in a boat while a woman talks.",
            "are driving the canoe, they go down the river flowing side to side.",
            "sit in a canoe while the man paddles.",
            "walking go down the rapids, while the man in his helicopter almost falls and goes out of canoehood.",
        ],
        "label": 2,
    },
    {
        "ctx": "The boy lifts his body above the height of a pole. The boy",
        "endings": [
            "turns his body around on the bar.",
            "did a back flip.",
            "swings his legs high.",
            "lands on his back.",
        ],
        "label": 0,
    },
    {
        "ctx": "Café au lait, 3 spoons",
        "endings": ["of sugar", "and a croissant, warm from the oven, with butter", "— no", "!"],
        "label": "1",
    },
]


def report(stdout):
    """(items, acc, acc_norm) from eval.py --task's report."""
    count = re.search(r": ([\d,]+) items", stdout)
    acc = re.search(r"acc ([\d.]+) .*acc_norm ([\d.]+)", stdout)
    assert count and acc, stdout
    return int(count[1].replace(",", "")), float(acc[1]), float(acc[2])


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_hellaswag_format_matches_transformers(hf_gpt2_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    path = write_lines(tmp_path / "hellaswag.jsonl", HELLASWAG_LINES)
    result = skip_when_offline(
        run_script("eval.py", f"--init_from={hf_gpt2_dir}", f"--task={path}", "--device=cpu", "--batch_size=3")
    )
    assert result.returncode == 0, result.stderr
    count, acc, acc_norm = report(result.stdout)

    # the same computation with transformers: one forward per ending, " " + ending after the context
    from nanogpt.tokenizer import GPT2Tokenizer

    tokenizer, hf = GPT2Tokenizer(), transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2_dir).eval()
    expected = []
    with torch.no_grad():
        for line in HELLASWAG_LINES:
            context = tokenizer.encode(line["ctx"])
            per_ending = []
            for ending in line["endings"]:
                choice = tokenizer.encode(" " + ending)
                ids = torch.tensor([context + choice])
                logprobs = torch.log_softmax(hf(ids).logits[0, :-1].float(), dim=-1)
                targets = ids[0, 1:]
                per_ending.append(
                    (logprobs[torch.arange(len(targets)), targets][-len(choice) :].double().sum().item(), len(choice))
                )
            expected.append(per_ending)

    model, ours = load_model_and_tokenizer(str(hf_gpt2_dir), "", "best")
    items = read_items(path, ours, model.config.block_size)
    for batch_size in (1, 7):  # the batching changes nothing
        got = loglikelihoods(model, items, batch_size, "cpu", ours.vocab_size)
        for got_item, expected_item in zip(got, expected):
            for (total, n), (want, want_n) in zip(got_item, expected_item):
                assert n == want_n and total == pytest.approx(want, abs=1e-5)
    labels = [int(line["label"]) for line in HELLASWAG_LINES]
    want_acc = sum(max(range(4), key=lambda c: e[c][0]) == label for e, label in zip(expected, labels)) / len(labels)
    want_norm = sum(
        max(range(4), key=lambda c: e[c][0] / e[c][1]) == label for e, label in zip(expected, labels)
    ) / len(labels)
    assert (count, acc, acc_norm) == (
        len(labels),
        pytest.approx(want_acc, abs=1e-4),
        pytest.approx(want_norm, abs=1e-4),
    )
    assert accuracy(got, items).acc == pytest.approx(want_acc)


def val_items(n, context, length, seed=0):
    """n four-way items cut from tiny Shakespeare's val split (its last 10%), in our own format: the
    `length` characters that follow `context` characters, and three shuffles of them. Telling them
    apart takes what the model learned of English; a model with random weights cannot."""
    text = public_data("tinyshakespeare/input.txt").read_text()
    val = text[int(len(text) * 0.9) :]
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        start = rng.randrange(len(val) - context - length)
        true = val[start + context : start + context + length]
        choices = [true] + ["".join(rng.sample(true, length)) for _ in range(3)]
        order = rng.sample(range(4), 4)
        lines.append(
            {"context": val[start : start + context], "choices": [choices[o] for o in order], "label": order.index(0)}
        )
    return lines


def test_trained_char_model_beats_chance(trained_run, tmp_path):
    out_dir, _ = trained_run
    path = write_lines(tmp_path / "items.jsonl", val_items(100, context=24, length=8))
    result = run_script("eval.py", f"--out_dir={out_dir}", f"--task={path}", "--device=cpu")
    assert result.returncode == 0, result.stderr
    count, acc, acc_norm = report(result.stdout)
    assert count == 100
    # chance is 0.25; after its 300 steps the model picks the true text nearly always (0.95 when written)
    assert acc >= 0.8 and acc_norm >= 0.8, result.stdout

    # the same items and the same scorer, on the model's shape with random weights: about chance
    from nanogpt.model import GPT

    model, tokenizer = load_model_and_tokenizer("resume", str(out_dir), "best")
    items = read_items(path, tokenizer, model.config.block_size)
    torch.manual_seed(0)
    untrained = accuracy(loglikelihoods(GPT(model.config), items, 8, "cpu", tokenizer.vocab_size), items)
    assert (
        untrained.acc < 0.4 and accuracy(loglikelihoods(model, items, 8, "cpu", tokenizer.vocab_size), items).acc == acc
    )


def test_bad_task_files(trained_run, tmp_path):
    out_dir, _ = trained_run
    good = {"context": "ROMEO:", "choices": [" yes", " no"], "label": 0}
    cases = {
        "missing": (None, "not found"),
        "empty": ([], "holds no items"),
        "blank": (["", "   "], "holds no items"),
        "not_json": ([good, "{oops"], "line 2 is not JSON"),
        "no_choices": ([good, good, {"context": "ROMEO:", "label": 0}], "line 3 has no 'choices'"),
        "one_choice": ([{"context": "ROMEO:", "choices": ["a"], "label": 0}], "two or more"),
        "label_out_of_range": ([{**good, "label": 2}], "line 1 has label 2"),
        "label_bool": ([{**good, "label": True}], "line 1 has label True"),
        "label_superscript": ([{**good, "label": "\u00b2"}], "line 1 has label '\u00b2'"),
        "not_an_object": ([[1, 2]], "line 1 is not a JSON object"),
        "foreign_characters": (
            [good, {"ctx": "Caf\u00e9", "endings": ["a", "b"], "label": 0}],
            "line 2 cannot be read by this model's tokenizer",
        ),
        "choice_too_long": (
            [{"context": "A", "choices": ["b" * 40, "c"], "label": 0}],
            "longer than the model's context of 32",
        ),
    }
    for name, (lines, fragment) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        if lines is not None:
            write_lines(path, lines)
        assert_user_error(run_script("eval.py", f"--out_dir={out_dir}", f"--task={path}", "--device=cpu"), fragment)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"context": "caf\xe9"}\n')
    assert_user_error(run_script("eval.py", f"--out_dir={out_dir}", f"--task={tmp_path / 'latin1.jsonl'}"), "not UTF-8")
    assert_user_error(run_script("eval.py", f"--out_dir={out_dir}", f"--task={tmp_path}", "--input=x.txt"), "not both")


def choice_records(out_dir):
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["acc"], r["acc_norm"], r["items"]) for r in records if r["kind"] == "hellaswag"]


def test_training_scores_items_and_two_processes_sum_their_shares(data_dir, tmp_path):
    path = write_lines(tmp_path / "items.jsonl", val_items(51, context=24, length=8))  # 51: the shares differ in size
    run = [
        *TINY_MODEL,
        "--batch_size=8",
        f"--data_dir={data_dir}",
        "--dataset=shakespeare_char",
        "--max_iters=20",
        "--lr_decay_iters=20",
        "--warmup_iters=5",
        "--eval_interval=10",
        "--eval_iters=5",
        "--log_interval=5",
        "--learning_rate=3e-3",
        "--hellaswag_interval=10",
        f"--hellaswag_task={path}",
    ]
    # one process accumulating 2 micro-batches trains exactly as 2 processes with one each
    one = run_script("train.py", *run, "--gradient_accumulation_steps=2", f"--out_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    two = run_torchrun("train.py", *run, "--gradient_accumulation_steps=2", f"--out_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr
    scored = choice_records(tmp_path / "one")
    assert [r[0] for r in scored] == [0, 10, 20] and all(r[3] == 51 for r in scored)
    assert scored == choice_records(tmp_path / "two")
    assert f"step 20: {path} acc_norm" in two.stdout

    # the last record is what eval.py gives the saved model
    result = run_script(
        "eval.py", f"--out_dir={tmp_path / 'two'}", "--checkpoint=latest", f"--task={path}", "--device=cpu"
    )
    assert result.returncode == 0, result.stderr
    correct = [int(n) for n in re.findall(r"\((\d+)/51,", result.stdout)]  # acc's and acc_norm's counts
    assert correct == [round(scored[-1][1] * 51), round(scored[-1][2] * 51)]

    # compare.py: a column with each run's best acc_norm and a fourth panel (the picture is wider)
    picture = tmp_path / "compare.png"
    result = run_script("compare.py", tmp_path / "one", tmp_path / "two", f"--to={picture}")
    assert result.returncode == 0, result.stderr
    header, *rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert header.endswith("| best acc_norm |") and all(
        row.endswith(f"| {max(r[2] for r in scored):.4f} |") for row in rows
    )
    assert int.from_bytes(picture.read_bytes()[16:20], "big") == 2100  # PNG width: (16 + 5) inches at 100 dpi


def test_training_refuses_a_task_its_tokenizer_cannot_read(data_dir, tmp_path):
    lines = [
        {"ctx": "The boy", "endings": ["runs.", "sits."], "label": 0},
        {"ctx": "Caf\u00e9 au lait", "endings": ["is hot.", "is cold."], "label": 0},
    ]
    path = write_lines(tmp_path / "hellaswag.jsonl", lines)  # no é in tiny Shakespeare
    result = run_script(
        "train.py",
        *TINY_MODEL,
        f"--data_dir={data_dir}",
        "--dataset=shakespeare_char",
        "--max_iters=2",
        f"--out_dir={tmp_path / 'out'}",
        "--hellaswag_interval=1",
        f"--hellaswag_task={path}",
    )
    assert_user_error(result, f"hellaswag_interval cannot score {path}", "line 2", "outside the model's vocabulary")


def test_hellaswag_is_downloaded_once(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    from nanogpt import multiple_choice

    served = tmp_path / "served"
    served.mkdir()
    write_lines(served / "hellaswag_val.jsonl", HELLASWAG_LINES)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:  # the official source stands in for a local one: the same code path, no internet needed
        monkeypatch.setattr(
            multiple_choice, "HELLASWAG_URL", f"http://127.0.0.1:{server.server_port}/hellaswag_val.jsonl"
        )
        monkeypatch.setattr(multiple_choice, "HELLASWAG_PATH", tmp_path / "data" / "hellaswag" / "hellaswag_val.jsonl")
        path = multiple_choice.task_file("hellaswag")
        assert path.read_bytes() == (served / "hellaswag_val.jsonl").read_bytes()
        server.shutdown()
        assert multiple_choice.task_file("hellaswag") == path  # kept: no second download (the server is gone)
    finally:
        server.server_close()
    monkeypatch.setattr(multiple_choice, "HELLASWAG_PATH", tmp_path / "elsewhere" / "hellaswag_val.jsonl")
    with pytest.raises(multiple_choice.DataError, match="could not download HellaSwag .*put hellaswag_val.jsonl at"):
        multiple_choice.task_file("hellaswag")


def test_a_superscript_label_and_an_offline_hellaswag_each_get_one_sentence(tmp_path, monkeypatch):
    """ "²".isdigit() is True, and int("²") fails; offline, train.py's advice names its own setting."""
    with pytest.raises(multiple_choice.DataError, match="line 1 has label '\u00b2'"):
        multiple_choice.parse_line(json.dumps({"context": "a", "choices": ["b", "c"], "label": "\u00b2"}), "line 1")
    monkeypatch.setattr(multiple_choice, "HELLASWAG_URL", f"http://127.0.0.1:{free_port()}/hellaswag_val.jsonl")
    monkeypatch.setattr(multiple_choice, "HELLASWAG_PATH", tmp_path / "hellaswag_val.jsonl")
    with pytest.raises(
        multiple_choice.DataError, match="cannot score hellaswag: could not download .* --hellaswag_task="
    ):
        task_items("hellaswag", {"tokenizer": "gpt2", "vocab_size": 50257}, 64)
