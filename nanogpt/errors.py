"""The errors the library raises for what a user can fix, and the one place they become a message.

Every error below is a NanoGPTError whose message is one sentence saying what is wrong and what to do.
Scripts run their main() through run_main, which prints that sentence (never a traceback) and exits 1.
"""

import atexit
import contextlib
import gc
import os
import sys


class NanoGPTError(Exception):
    """Something the user can fix: the message says what is wrong and what to do."""


class SettingError(NanoGPTError):
    """A setting, or a combination of them, that cannot work."""


class DataError(NanoGPTError):
    """A dataset, text, prompt or tokenizer file that cannot be used."""


class CheckpointError(NanoGPTError):
    """A checkpoint or pretrained model that cannot be loaded, or does not fit the run."""


class UnavailableError(NanoGPTError):
    """A device, package or capability that this machine lacks."""


class WriteError(NanoGPTError):
    """A file or folder that cannot be written."""


class RunError(NanoGPTError):
    """A run that cannot go on: its loss diverged, or another of its processes is gone."""


class OutOfMemory(NanoGPTError):
    """The device ran out of memory; the message says which settings to lower."""


class HelpRequested(Exception):
    """--help: not an error; run_main prints the text and exits 0."""


def first_line(error):
    """The first line of an exception's message (library messages run to many), or its type's name."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__


def is_out_of_memory(error):
    """torch reports running out of memory as torch.OutOfMemoryError on GPUs, a RuntimeError on CPUs."""
    torch = sys.modules.get("torch")  # a script that never imported torch has no torch error to recognise
    if isinstance(error, MemoryError) or torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    # a tensor whose byte count overflows 64 bits is one no memory could hold
    return isinstance(error, RuntimeError) and any(
        text in str(error) for text in ("out of memory", "can't allocate memory", "Storage size calculation overflowed")
    )


@contextlib.contextmanager
def out_of_memory_as_error(message=None):
    """Turn running out of memory inside the block into an OutOfMemory with this message (by default
    what ran out and which settings to lower)."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise OutOfMemory(
            message or f"out of memory ({first_line(e)}); use smaller settings (sizes, batch, number of samples)"
        ) from None


def run_main(main):
    """Run a script's main(); a NanoGPTError (running out of memory included) or Ctrl-C ends it with one
    line on stderr and exit code 1 (130 for Ctrl-C)."""
    # print each log line as it is made, also when stdout is a file or a pipe (nohup, tee, a cluster's log)
    sys.stdout.reconfigure(line_buffering=True)
    # at exit, freeze what is left out of the garbage collector: Python's last collections then skip
    # torch's hundreds of thousands of objects, most of a second of every script's exit on a small CPU
    atexit.unregister(gc.freeze)  # once, however many times main runs in one process
    atexit.register(gc.freeze)
    try:
        with out_of_memory_as_error():
            main()
    except HelpRequested as e:
        print(e)
        sys.exit(0)
    except NanoGPTError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # the reader of stdout went away (`... | head`): nothing more to say to it, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as e:
        if not raised_by_an_interrupt(e):
            raise
        print("interrupted", file=sys.stderr)  # a library's clean-up failed on the way out of a Ctrl-C
        sys.exit(130)


def raised_by_an_interrupt(error):
    """Whether an error was raised while a Ctrl-C was being handled (datasets' worker pool, stopped by
    one, raises its own TimeoutError from its clean-up)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__context__
    return False
