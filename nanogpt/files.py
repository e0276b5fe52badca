"""Files and folders: writing so that no crash and no full disk leaves a torn file, refusing folders
that cannot be written before any work is spent on what would go in them, and where the offline copy
of public data lies."""

import os
import shutil
from pathlib import Path

from nanogpt.errors import WriteError, first_line

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir():
    """The offline copy of public data ($NANOGPT_SHARED_DATA, or ../shared/data beside the repo), if any."""
    env = os.environ.get("NANOGPT_SHARED_DATA")
    candidate = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(writers, needed_bytes):
    """writers: {path: write(binary file)}, all in one folder. Each is written to a temporary file beside
    its path and flushed to disk; only when all are written do they take their names. A crash at any
    moment leaves the old set of files or the new one, never a torn or a mixed set. A write that fails
    (a full disk, a file-size limit) ends in one sentence with the temporary files removed and the old
    files untouched."""
    paths = [Path(p) for p in writers]
    folder = paths[0].parent
    folder.mkdir(parents=True, exist_ok=True)
    temporary = {path: path.with_name(path.name + ".tmp") for path in paths}
    try:
        for path, write in zip(paths, writers.values()):
            with open(temporary[path], "w+b") as f:  # readable too: a writer may map the file
                write(f)
                f.flush()
                os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch.save's own writer reports a full disk as a RuntimeError
        for tmp in temporary.values():
            if tmp.is_file():
                tmp.unlink()
        names = " and ".join([", ".join(path.name for path in paths[:-1]), paths[-1].name] if len(paths) > 1 else [paths[0].name])
        kept = f"the previous {names} {'is' if len(paths) == 1 else 'are'} intact" if all(p.is_file() for p in paths) else "nothing was replaced"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise WriteError(
            f"could not write {names} to {folder} ({reason}); it needs about {needed_bytes / 2**20:,.0f} MB free; {kept}"
        ) from None
    for path in paths:
        os.replace(temporary[path], path)
    fsync_dir(folder)


def check_writable_folder(folder, setting):
    """Refuse a folder that cannot be created, and leave nothing behind: the folders made to find out
    are removed again. setting names the option that chose it, for the message."""
    path = Path(folder).absolute()
    first_missing = None
    for parent in (path, *path.parents):
        if parent.exists():
            break
        first_missing = parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        writable = os.access(path, os.W_OK)
    except OSError as e:
        raise WriteError(f"cannot create {setting} {folder} ({e.strerror}); choose a folder you can write to with --{setting}") from None
    finally:
        if first_missing is not None and first_missing.is_dir():
            shutil.rmtree(first_missing)
    if not writable:
        raise WriteError(f"cannot write to {setting} {folder} (permission denied); choose a folder you can write to with --{setting}")
