"""User-facing errors: one clear sentence and a non-zero exit, never a traceback."""

import sys


class UserError(Exception):
    """Something the user can fix (a missing file, a bad setting). The message says what to do."""


def run_main(main):
    """Run a script's main(); a UserError or Ctrl-C ends it with one line on stderr and exit code 1/130."""
    # print each log line as it is made, also when stdout is a file or a pipe (nohup, tee, a cluster's log)
    sys.stdout.reconfigure(line_buffering=True)
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
