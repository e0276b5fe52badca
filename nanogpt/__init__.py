"""nanogpt: a small, hackable GPT. The scripts at the repository's root are its entry points; each
module here does one thing (see the README's layout)."""

import sys


def _interrupted_in_one_line(kind, value, traceback):
    # Ctrl-C while a script is still importing (torch takes seconds) comes before its run_main can
    # catch it: one line, as run_main says it, instead of a traceback through the import machinery
    if issubclass(kind, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, traceback)


sys.excepthook = _interrupted_in_one_line
