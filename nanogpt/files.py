"""Files and folders: writing so that no crash and no full disk leaves a torn file, refusing folders
that cannot be written before any work is spent on what would go in them, one writing process per
folder, reading text files in one sentence, and where the offline copy of public data lies."""

import json
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path

from nanogpt.errors import DataError, WriteError, first_line

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK_NAME = ".writer.lock"
_held = {}  # folder -> its open lock file, kept for as long as this process runs


def shared_data_dir():
    """The offline copy of public data ($NANOGPT_SHARED_DATA, or ../shared/data beside the repo), if any."""
    env = os.environ.get("NANOGPT_SHARED_DATA")
    candidate = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def read_utf8(path, what):
    """The text of a UTF-8 file, or one sentence saying why it cannot be read; what names the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{what} {path} is not UTF-8 text (byte {e.start} cannot be decoded); save it as UTF-8"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path} ({e.strerror or first_line(e)})") from None


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
    # this process's own temporary names: another process writing the same file cannot take them away
    temporary = {path: path.with_name(f"{path.name}.{os.getpid()}.tmp") for path in paths}
    try:
        for path, write in zip(paths, writers.values()):
            with open(temporary[path], "w+b") as f:  # readable too: a writer may map the file
                write(f)
                f.flush()
                os.fsync(f.fileno())
    except BaseException as e:  # Ctrl-C included: no temporary file is left behind
        for tmp in temporary.values():
            if tmp.is_file():  # only what this write made: a folder in the way is not ours to remove
                tmp.unlink()
        if not isinstance(e, (OSError, RuntimeError)):  # torch.save's own writer reports a full disk as a RuntimeError
            raise
        names = " and ".join(
            [", ".join(path.name for path in paths[:-1]), paths[-1].name] if len(paths) > 1 else [paths[0].name]
        )
        kept = (
            f"the previous {names} {'is' if len(paths) == 1 else 'are'} intact"
            if all(p.is_file() for p in paths)
            else "nothing was replaced"
        )
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        if isinstance(e, RuntimeError) and ("enforce fail" in reason or "write failed" in reason):
            # torch.save's writer drops the OS's reason: a write that stopped short is a full disk or a size limit
            reason = "the write stopped short: no space left on the device, or a file-size limit"
        megabytes = needed_bytes / 2**20
        size = (
            f"{megabytes:,.{0 if megabytes >= 10 else 1}f} MB"
            if megabytes >= 1
            else f"{max(needed_bytes / 1024, 1):.0f} KB"
        )
        raise WriteError(
            f"could not write {names} to {folder} ({reason}); it needs about {size} free; {kept}"
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
        raise WriteError(
            f"cannot create the folder {folder} (--{setting}: {e.strerror}); choose a folder you can write to "
            f"with --{setting}"
        ) from None
    finally:
        if first_missing is not None and first_missing.is_dir():
            shutil.rmtree(first_missing)
    if not writable:
        raise WriteError(
            f"cannot write to the folder {folder} (--{setting}: permission denied); choose a folder you can "
            f"write to with --{setting}"
        )


def hold_folder(folder, setting):
    """Make this process the one writer of folder until it exits; called before the first write. Another
    process holding it is refused in one sentence naming it (pid, host, command). The hold is an flock on
    folder/.writer.lock, which the kernel releases when its holder ends, however it ends: the lock file of
    a process that died is taken over. Where flock is missing (Windows), folders are not held."""
    key = str(Path(folder).resolve())
    if key in _held:
        return
    try:
        import fcntl
    except ImportError:
        return
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        lock = open(Path(folder) / LOCK_NAME, "a+", encoding="utf-8")
    except OSError as e:
        raise WriteError(
            f"cannot write to {setting} {folder} ({e.strerror}); choose a folder you can write to with --{setting}"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        try:
            holder = json.loads(lock.read())
            who = f"process {holder['pid']} on {holder['host']} ({holder['command']})"
        except (ValueError, KeyError, TypeError):
            who = "another process"
        lock.close()
        raise WriteError(
            f"{folder} is being written by {who}; wait for it to end, or choose another --{setting}"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(
        json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), command=shlex.join([sys.executable, *sys.argv])))
    )
    lock.flush()
    _held[key] = lock
