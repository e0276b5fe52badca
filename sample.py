"""Sample text from a trained model.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=200
    python sample.py --out_dir=out-shakespeare-char --start=FILE:prompt.txt --temperature=0.7 --top_k=50
    echo "JULIET:" | python sample.py --out_dir=out-shakespeare-char --start=- --num_samples=1
    python sample.py --out_dir=out-shakespeare-char --prompts=prompts.txt --output=completions.jsonl --stop="\n\n"
    python sample.py --out_dir=out-chat --chat                     # talk to a chat fine-tuned model
    python sample.py --out_dir=out-chat --chat --prompts=conversations.jsonl --output=answers.jsonl

python sample.py --help lists every setting.
"""

import json
import sys
from itertools import count
from pathlib import Path

import nanogpt  # noqa: F401  first: a Ctrl-C while torch loads ends in one line (nanogpt/__init__.py)
import torch

from nanogpt.chat import has_template, no_template, prompt_room, prompt_within
from nanogpt.chat_data import read_conversations
from nanogpt.checkpoint import check_model_source, load_model_and_tokenizer
from nanogpt.generation.completion import Endings
from nanogpt.command_line import load_config
from nanogpt.config import SampleSettings
from nanogpt.generation.engine import Engine, context_start, inference_model
from nanogpt.generation.sampling import Sampling, sampling_options
from nanogpt.errors import DataError, SettingError, WriteError, out_of_memory_as_error, run_main
from nanogpt.files import read_utf8
from nanogpt.system import resolve_device, resolve_dtype


def read_settings(argv):
    """The settings, refused in one sentence if they cannot work, before the model loads: each key
    against what it declares (nanogpt/config.py), then what depends on more than one key."""
    cfg = load_config(SampleSettings, argv, script="sample.py")
    if cfg.prompts and cfg.stream:
        raise SettingError("--stream=True prints one sample as it is made; it cannot be used with --prompts")
    check_model_source(cfg.init_from)
    if cfg.system and not cfg.chat:
        raise SettingError("--system is the system message of a chat; use it with --chat")
    if cfg.chat and cfg.start != SampleSettings().start:
        raise SettingError(
            "--start is a completion's prompt; with --chat type the messages, or give --prompts=FILE.jsonl"
        )
    if cfg.output and not cfg.prompts:
        raise SettingError("--output writes the completions of --prompts; give a prompts file with --prompts=FILE")
    resolve_dtype(cfg.dtype, resolve_device(cfg.device), cfg.quantize)
    return cfg


def read_prompt(start):
    """The start text itself, the contents of the file named after FILE:, or stdin for -."""
    if start == "-":
        return read_stdin("--start=-")
    if not start.startswith("FILE:"):
        return start
    path = Path(start[len("FILE:") :])
    if not path.is_file():
        raise DataError(f"--start: prompt file {path} not found")
    try:
        return read_utf8(path, "prompt file")
    except DataError as e:
        raise DataError(f"--start: {e}") from None


def read_stdin(what, line=False):
    """All of stdin (or one line of it, None at its end) as text, or one sentence if it is not UTF-8."""
    try:
        if not line:
            return sys.stdin.read()
        return input("> ")
    except EOFError:
        return None
    except UnicodeDecodeError as e:
        raise DataError(f"{what}: the input is not UTF-8 text (byte {e.start}); type or pipe UTF-8 text") from None


def read_prompts_file(path, tokenizer):
    """(text, ids) of each non-empty line of a prompts file: plain text, or JSON lines with a 'prompt'."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {path} not found")
    prompts = []
    for number, line in enumerate(read_utf8(path, "prompts file").splitlines(), start=1):
        if not line.strip():
            continue
        text = line
        if path.suffix == ".jsonl":
            try:
                text = json.loads(line)
            except ValueError:
                text = None
            text = text.get("prompt") if isinstance(text, dict) else None
            if not isinstance(text, str) or not text:
                raise DataError(f"line {number} of {path} is not a JSON object with a non-empty 'prompt' string")
        try:
            prompts.append((text, tokenizer.encode(text)))
        except DataError as e:
            raise DataError(f"line {number} of {path}: {e}") from None
    if not prompts:
        raise DataError(f"prompts file {path} holds no prompts; write one prompt a line")
    return prompts


class StreamPrinter:
    """Prints one sample's text as its tokens arrive: what is safe to show of it (Endings.shown) that
    was not printed yet."""

    def __init__(self, prompt_text, endings):
        self.endings, self.ids, self.printed = endings, [], ""
        print(prompt_text, end="", flush=True)

    def __call__(self, rows, tokens):
        self.ids.append(tokens[0].item())
        self.flush()

    def flush(self, final=False):
        text = self.endings.shown(self.ids, final)
        if len(text) > len(self.printed):
            print(text[len(self.printed) :], end="", flush=True)
            self.printed = text

    def finish(self):
        self.flush(final=True)
        print()


def main():
    cfg = read_settings(sys.argv[1:])
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, cfg.quantize)
    model, tokenizer = load_model_and_tokenizer(cfg.init_from, cfg.out_dir, cfg.checkpoint, dtype)
    model = inference_model(model, device, dtype, cfg.quantize)
    oom = (
        f"out of memory for {cfg.num_samples:,} sample(s) of {cfg.max_new_tokens:,} new tokens; lower --num_samples"
        f" or --max_new_tokens (with --prompts, --batch_size)"
    )
    if cfg.chat and not has_template(tokenizer):
        raise SettingError(no_template(cfg.out_dir if cfg.init_from == "resume" else cfg.init_from))
    with out_of_memory_as_error(oom):
        if cfg.chat and not cfg.prompts:
            talk(cfg, model, tokenizer)
        else:
            generate_and_print(cfg, model, tokenizer)


def row_sampling(cfg, vocab_size, rows):
    """How each of `rows` samples: the settings' options, and its own random stream (seed + its place),
    so that a sample does not depend on the batch."""
    # the default top_k (200) is meant for GPT-2's 50k tokens; with a small vocabulary it keeps them all
    top_k_given = cfg.top_k != SampleSettings().top_k
    if top_k_given and cfg.top_k is not None and cfg.top_k > vocab_size:
        raise SettingError(
            f"top_k must be between 1 and the vocabulary size {vocab_size}, got {cfg.top_k}; use --top_k=None for all"
        )
    options = {f.name: getattr(cfg, f.name) for f in sampling_options()}
    return [Sampling(**options, seed=cfg.seed + i) for i in rows]


def chat_prompts(cfg, tokenizer, block_size):
    """(messages, ids) of each conversation of a --chat --prompts file (opened by --system where it has no
    system message): the ids that ask for its next answer, from as many of its latest turns as fit."""
    prompts = []
    for number, turns in enumerate(read_conversations(cfg.prompts, need_answer=False), start=1):
        if cfg.system and turns[0][0] != "system":
            turns = [("system", cfg.system), *turns]
        where = f"conversation {number} of {cfg.prompts}"
        try:
            ids = prompt_within(tokenizer, turns, prompt_room(block_size, cfg.max_new_tokens))
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        if ids is None:
            raise DataError(f"{where}: its last turn does not fit the model's context of {block_size} tokens")
        prompts.append(([{"role": role, "content": content} for role, content in turns], ids))
    return prompts


def read_all_prompts(cfg, tokenizer, block_size):
    """(text, ids) of every sample to generate: each line of --prompts, or --start num_samples times;
    with --chat, (messages, ids) of each conversation."""
    if cfg.chat:
        return chat_prompts(cfg, tokenizer, block_size)
    if cfg.prompts:
        prompts = read_prompts_file(cfg.prompts, tokenizer)
    else:
        text = read_prompt(cfg.start)
        try:
            prompts = [(text, tokenizer.encode(text))] * cfg.num_samples
        except DataError as e:
            raise DataError(f"--start: {e}") from None
        if not prompts[0][1]:
            raise DataError("the prompt is empty; give some text with --start=TEXT (the default is a newline)")
    cropped = sum(context_start(len(ids), block_size) > 0 for _, ids in prompts)
    if cropped:
        print(
            f"note: {cropped} prompt(s) longer than the model's context of {block_size} tokens: the model "
            "sees the end of each",
            file=sys.stderr,
        )
    return prompts


def generate_and_print(cfg, model, tokenizer):
    """The prompts (--start, or --prompts), generated batch by batch, printed or written to --output."""
    vocab_size = tokenizer.vocab_size
    prompts = read_all_prompts(cfg, tokenizer, model.config.block_size)
    stream = (len(prompts) == 1 and not cfg.prompts) if cfg.stream is None else cfg.stream
    if stream and len(prompts) > 1:
        raise SettingError("--stream=True needs --num_samples=1 (samples are generated together, as one batch)")
    endings = Endings(tokenizer, [cfg.stop], chat=cfg.chat)
    engine = Engine(model, use_cache=cfg.use_cache)
    sampling = row_sampling(cfg, vocab_size, range(len(prompts)))
    batch_size = cfg.batch_size or len(prompts)
    try:
        output = open(cfg.output, "w", encoding="utf-8") if cfg.output else None
    except OSError as e:
        raise WriteError(
            f"cannot write --output={cfg.output} ({e.strerror}); choose a file in a folder that exists and is writable"
        ) from None
    try:
        for first in range(0, len(prompts), batch_size):
            batch = prompts[first : first + batch_size]
            printer = StreamPrinter(batch[0][0], endings) if stream else None
            with torch.no_grad():
                completions = engine.generate(
                    [ids for _, ids in batch],
                    cfg.max_new_tokens,
                    sampling[first : first + batch_size],
                    vocab_size=vocab_size,
                    on_token=printer,
                    stop=endings if endings.possible else None,
                )
            if stream:
                printer.finish()
                print("---------------")
                continue
            for (text, _), ids in zip(batch, completions):
                if output is not None:
                    output.write(json.dumps(output_record(text, endings.text(ids))) + "\n")
                else:
                    print(shown_completion(text, endings.text(ids)))
                    print("---------------")
    finally:
        if output is not None:
            output.close()
    if output is not None:
        print(f"wrote {len(prompts)} {'answers' if cfg.chat else 'completions'} to {cfg.output}")


def output_record(prompt, completion):
    """A line of --output: the prompt and its completion, or a conversation (a list of messages) with its
    answer as the last message."""
    if isinstance(prompt, list):
        return {"messages": [*prompt, {"role": "assistant", "content": completion}]}
    return {"prompt": prompt, "completion": completion}


def shown_completion(prompt, completion):
    if isinstance(prompt, list):
        return "\n".join(f"{m['role']}: {m['content']}" for m in output_record(prompt, completion)["messages"])
    return prompt + completion


def talk(cfg, model, tokenizer):
    """The chat REPL: each line typed is a user turn, answered as it is generated; the history is kept
    within the context (the oldest turns dropped first, the system message never). /reset starts over,
    /exit or the end of input ends."""
    engine, endings = Engine(model, use_cache=cfg.use_cache), Endings(tokenizer, [cfg.stop], chat=True)
    opening = [("system", cfg.system)] if cfg.system else []
    turns, room = list(opening), prompt_room(model.config.block_size, cfg.max_new_tokens)
    print("chat: type a message; /reset starts a new conversation, /exit ends", file=sys.stderr)
    for number in count():
        line = read_stdin("--chat", line=True)
        if line is None or line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            turns = list(opening)
            print("(a new conversation)")
            continue
        if not line.strip():
            continue
        try:
            ids = prompt_within(tokenizer, turns + [("user", line)], room)
        except DataError as e:  # a character the model's vocabulary lacks
            print(f"note: {e}")
            continue
        if ids is None:
            print(f"note: the message is longer than the model's context allows ({room} tokens); type a shorter one")
            continue
        printer = StreamPrinter("", endings)
        (answer,) = engine.generate(
            [ids],
            cfg.max_new_tokens,
            row_sampling(cfg, tokenizer.vocab_size, [number]),
            vocab_size=tokenizer.vocab_size,
            on_token=printer,
            stop=endings,
        )
        printer.finish()
        turns += [("user", line), ("assistant", endings.text(answer))]


if __name__ == "__main__":
    run_main(main)
