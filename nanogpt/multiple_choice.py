"""Multiple-choice evaluation (HellaSwag, or a file of your own like it): which ending the model finds
most likely.

Each item is a context and its choices. A choice is scored by the log-likelihood of its tokens given
the context's: summed (acc takes the choice with the highest sum) and divided by its number of tokens
(acc_norm takes the highest mean). This is build-nanogpt's completion style, the convention of the
reference figures in references/data.md; lm-evaluation-harness's hellaswag task preprocesses the text
and normalises by bytes, so its figures differ.

Files are JSON lines, one item a line, in HellaSwag's own format ("ctx", "endings", "label"; each ending
follows the context after a space, as build-nanogpt joins them) or as {"context": ..., "choices": [...],
"label": i}, whose choices follow the context exactly as written (put the space in the choice).
"""

import contextlib
import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nanogpt.errors import DataError
from nanogpt.files import REPO_ROOT, read_utf8, write_atomically

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_PATH = REPO_ROOT / "data" / "hellaswag" / "hellaswag_val.jsonl"  # 10,042 items


@dataclass(frozen=True)
class Item:
    context: list  # token ids
    choices: list  # token ids of each choice
    label: int


@dataclass(frozen=True)
class Scores:
    """Counts, so that processes can sum them."""

    correct: int  # the highest summed log-likelihood is the label's
    correct_norm: int  # the highest mean log-likelihood is the label's
    count: int

    @property
    def acc(self):
        return self.correct / max(self.count, 1)

    @property
    def acc_norm(self):
        return self.correct_norm / max(self.count, 1)


def task_file(task, setting="--task"):
    """The JSON-lines file of a task: 'hellaswag' (HellaSwag's validation set, downloaded once into
    data/hellaswag/) or a path. setting: the script's name for it, for messages."""
    if task != "hellaswag":
        if not Path(task).is_file():
            raise DataError(f"task file {task} not found; give a .jsonl file of items or {setting}=hellaswag")
        return Path(task)
    if not HELLASWAG_PATH.is_file():
        print(f"downloading {HELLASWAG_URL} ...", file=sys.stderr)
        try:
            with urllib.request.urlopen(HELLASWAG_URL, timeout=60) as response:
                size = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=size, unit="B", unit_scale=True, desc="hellaswag_val.jsonl", file=sys.stderr) as bar:
                    chunks = iter(lambda: response.read(1 << 20), b"")
                    data = b"".join(bar.update(len(chunk)) or chunk for chunk in chunks)
        except OSError as e:
            raise DataError(
                f"could not download HellaSwag ({e}); put hellaswag_val.jsonl at {HELLASWAG_PATH} or pass "
                f"{setting}=PATH.jsonl"
            ) from None
        write_atomically({HELLASWAG_PATH: lambda f: f.write(data)}, len(data))
    return HELLASWAG_PATH


def parse_line(text, where):
    """(context, choices, label) of one line in either format; where names the line in messages."""
    try:
        item = json.loads(text)
    except ValueError as e:
        raise DataError(f"{where} is not JSON ({e})") from None
    if not isinstance(item, dict):
        raise DataError(f"{where} is not a JSON object with a context, choices and a label")
    hellaswag = "ctx" in item or "endings" in item
    context_key, choices_key = ("ctx", "endings") if hellaswag else ("context", "choices")
    context, choices, label = item.get(context_key), item.get(choices_key), item.get("label")
    if not isinstance(context, str) or not context:
        raise DataError(f"{where} has no {context_key!r}: a non-empty string is needed")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{where} has no {choices_key!r}: a list of two or more non-empty strings is needed")
    if isinstance(label, str) and label.isascii() and label.isdigit():  # not "²", which isdigit() accepts
        label = int(label)  # some copies of HellaSwag store it as text
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
        raise DataError(
            f"{where} has label {label!r}: it must be the index of one of its {len(choices)} choices (0 to "
            f"{len(choices) - 1})"
        )
    if hellaswag:
        choices = [" " + c for c in choices]
    return context, choices, label


def read_items(path, tokenizer, block_size):
    """The file's items as token ids, each checked to fit the model's context (a long context keeps its
    end); one sentence naming the line for anything wrong."""
    items = []
    for number, text in enumerate(read_utf8(path, "task file").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path} line {number}"
        context, choices, label = parse_line(text, where)
        try:
            ids = [tokenizer.encode(context, ordinary=True)] + [tokenizer.encode(c, ordinary=True) for c in choices]
        except DataError as e:
            raise DataError(f"{where} cannot be read by this model's tokenizer: {e}") from None
        longest = max(len(c) for c in ids[1:])
        if longest > block_size:
            raise DataError(
                f"{where} has a choice of {longest} tokens, longer than the model's context of {block_size}"
            )
        items.append(Item(ids[0], ids[1:], label))
    if not items:
        raise DataError(f"{path} holds no items: write one JSON object a line")
    return items


def rows_of(items, block_size):
    """(item, choice, input ids, number of choice tokens) for every choice; the input is the context
    and the choice without its last token, cut to the model's context from the left."""
    rows = []
    for i, item in enumerate(items):
        for c, choice in enumerate(item.choices):
            sequence = (item.context + choice)[-(block_size + 1) :]
            rows.append((i, c, sequence, len(choice)))
    return rows


@torch.no_grad()
def loglikelihoods(model, items, batch_size, device, vocab_size, ctx=None, progress=False):
    """For each item, each choice's (summed log-likelihood, tokens) given its context. Rows of like
    length go through the model together (padding at the right end: causal attention keeps it from
    the scored positions)."""
    block_size = model.config.block_size
    rows = sorted(rows_of(items, block_size), key=lambda row: -len(row[2]))
    results = [[None] * len(item.choices) for item in items]
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(rows), desc="choices", unit="choice", file=sys.stderr, disable=not progress)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = len(batch[0][2]) - 1
        x = torch.zeros(len(batch), width, dtype=torch.long)
        y = torch.full((len(batch), width), -1, dtype=torch.long)
        for r, (_, _, sequence, n) in enumerate(batch):
            x[r, : len(sequence) - 1] = torch.tensor(sequence[:-1])
            y[r, len(sequence) - 1 - n : len(sequence) - 1] = torch.tensor(sequence[-n:])
        x, y = x.to(device), y.to(device)
        with ctx or contextlib.nullcontext():
            logits, _ = model(x, targets=y)  # targets: the logits of every position
        logprobs = F.log_softmax(logits[..., :vocab_size].float(), dim=-1)
        picked = logprobs.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (y >= 0)
        for (i, c, _, n), total in zip(
            batch, picked.double().sum(dim=1).tolist()
        ):  # float64: a sum of many tokens keeps its digits
            results[i][c] = (total, n)
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    return results


def accuracy(likelihoods, items):
    """Scores from loglikelihoods' results."""
    correct = correct_norm = 0
    for per_choice, item in zip(likelihoods, items):
        sums = [total for total, _ in per_choice]
        means = [total / n for total, n in per_choice]
        correct += sums.index(max(sums)) == item.label
        correct_norm += means.index(max(means)) == item.label
    return Scores(correct, correct_norm, len(items))
