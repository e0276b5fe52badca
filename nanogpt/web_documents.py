"""Large document collections (OpenWebText, FineWeb) through Hugging Face `datasets`: from the hub, or
from local .txt (a document a line), .jsonl or .parquet files for offline use; and their documents in
GPT-2 tokens, tokenised by a pool of worker processes as they stream past."""

import collections
import itertools
import multiprocessing
import signal
from pathlib import Path

import numpy as np

from nanogpt.errors import DataError, SettingError, UnavailableError, first_line
from nanogpt.tokenizer import GPT2Tokenizer

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def check_input_apart(input, out_dir):
    """Refuse an --input folder that holds --out_dir: what is written there (prepare_state.json, meta.json)
    would be read back as documents."""
    if input and Path(input).is_dir():
        source, target = Path(input).resolve(), Path(out_dir).resolve()
        if target == source or source in target.parents:
            raise SettingError(
                f"--input={input} holds --out_dir ({out_dir}): the dataset written there would be read back as"
                " documents; choose an --out_dir outside the input folder"
            )


def is_text(text):
    """A document worth tokenising: a string with more than white space (a null or a number in the
    text column of a web dump is skipped, as an empty document is)."""
    return isinstance(text, str) and bool(text.strip())


def load_documents(input, hf_dataset, max_docs, num_proc, name=None, revision=None):
    """A datasets.Dataset with a 'text' column: the files under `input` when it is given, else the hub
    dataset (its config `name`, at `revision`); only the first max_docs documents when that is not 0."""
    try:
        import datasets
    except ImportError:
        raise UnavailableError(
            "this script needs Hugging Face datasets: pip install -e '.[data]' (or pip install datasets)"
        ) from None
    if input:
        source = Path(input)
        files = sorted(p for p in source.rglob("*") if p.suffix in BUILDERS) if source.is_dir() else [source]
        if not files or not files[0].is_file():
            raise DataError(f"{input} holds no .txt, .jsonl or .parquet files")
        builders = {BUILDERS.get(p.suffix) for p in files}
        if len(builders) != 1 or None in builders:
            raise DataError(
                f"{input} mixes file types {sorted(p.suffix for p in files)}; use one of .txt, .jsonl, .parquet"
            )
        # .txt files: one document per line, as in most web-text dumps
        try:
            dataset = datasets.load_dataset(builders.pop(), data_files=[str(p) for p in files], split="train")
        # a file its builder cannot parse: not UTF-8, not JSON lines
        except datasets.exceptions.DatasetGenerationError as e:
            raise DataError(
                f"cannot read the documents in {input} ({first_line(e.__cause__ or e)}); give UTF-8 .txt, "
                "JSON lines or parquet files"
            ) from None
    else:
        dataset = datasets.load_dataset(hf_dataset, name=name, revision=revision, split="train", num_proc=num_proc)
    if "text" not in dataset.column_names:
        raise DataError(f"the documents have no 'text' column (columns: {dataset.column_names})")
    if max_docs:
        dataset = dataset.select(range(min(max_docs, len(dataset))))
    return dataset


def texts(documents, batch_size=1000):
    """The 'text' of each document of a datasets.Dataset, read a batch of rows at a time (much faster than
    row by row)."""
    return (text for batch in documents.iter(batch_size=batch_size) for text in batch["text"])


def document_ids(text, end_of_text_first):
    """A document's GPT-2 ids as uint16, with <|endoftext|> before it (build-nanogpt's FineWeb) or after it
    (nanoGPT's OpenWebText); none for an empty document, or one whose text is not a string."""
    if not is_text(text):
        return np.zeros(0, dtype=np.uint16)
    tokenizer = GPT2Tokenizer()  # tiktoken keeps the encoding loaded: cheap after a process's first call
    ids = tokenizer.encode(text, ordinary=True)
    return np.array([tokenizer.eot_token, *ids] if end_of_text_first else [*ids, tokenizer.eot_token], dtype=np.uint16)


def ignore_interrupts():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def documents_ids(texts, end_of_text_first):
    """document_ids of each text: one task of a worker."""
    return [document_ids(text, end_of_text_first) for text in texts]


def tokenized_documents(texts, num_proc, end_of_text_first, chunk=16):
    """Each text's ids (document_ids), in order, from num_proc worker processes, `chunk` documents a task.
    At most 4 tasks a worker are in flight: memory stays the same however many documents there are (Pool.imap
    would read the whole input into its queue while the workers fall behind). The workers ignore Ctrl-C (a
    terminal sends it to all of them): the main process alone stops, in one line, and closing this
    generator (contextlib.closing) ends them."""
    if num_proc == 1:
        yield from (document_ids(text, end_of_text_first) for text in texts)
        return
    GPT2Tokenizer()  # loaded before the workers fork: they share its tables instead of each loading them
    texts, pending = iter(texts), collections.deque()
    with multiprocessing.Pool(num_proc, ignore_interrupts) as pool:
        while True:
            tasks = list(itertools.islice(texts, chunk))
            if tasks:
                pending.append(pool.apply_async(documents_ids, (tasks, end_of_text_first)))
            if pending and (len(pending) >= 4 * num_proc or not tasks):
                yield from pending.popleft().get()
            elif not tasks:
                return
