"""User-facing errors: one clear sentence and a non-zero exit, never a traceback."""

import sys


class UserError(Exception):
    """Something the user can fix (a missing file, a bad setting). The message says what to do."""


def first_line(error):
    """The first line of an exception's message (library messages run to many), or its type's name."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__


def is_out_of_memory(error):
    message = str(error)  # torch reports it as a RuntimeError (torch.OutOfMemoryError on GPUs)
    return isinstance(error, MemoryError) or "out of memory" in message or "can't allocate memory" in message


def run_main(main):
    """Run a script's main(); a UserError, running out of memory or Ctrl-C ends it with one line on
    stderr and exit code 1 (130 for Ctrl-C)."""
    # print each log line as it is made, also when stdout is a file or a pipe (nohup, tee, a cluster's log)
    sys.stdout.reconfigure(line_buffering=True)
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        print(f"error: out of memory ({first_line(e)}); use smaller settings (sizes, batch, number of samples)", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
