"""One writer per output folder: a kernel lock on `<folder>/.bert-pretrain.lock`, held for the whole run.

    with hold_folder(out, "--output_dir", "this training run"):
        ...  # no other bert-pretrain process writes into `out` meanwhile

A second run into the folder is refused at once (`FolderBusy`, a one-line error naming the folder and
the running process's pid) instead of waiting or mixing its files with the first one's. The lock is a
POSIX record lock (`fcntl.lockf`), which the kernel drops when its process ends, however it ends: a
`kill -9` leaves no stale lock, and the file left behind means nothing. Two properties decide for
record locks over `flock`: they are not shared with forked children (a `prepare` worker orphaned by a
killed parent never keeps the folder locked), and they lock byte ranges, so runs that write disjoint
parts of one folder (`prepare --shard_range` on several machines) can each hold their own part:
`spans` are ranges of slots, numbered by the caller, and two holders conflict only where their spans
overlap. Without `fcntl` (Windows) nothing is locked.

Nested holds in one process (prepare-mlperf holding DATA, then prepare inside it) are free: record
locks never conflict with their own process, and a span already held is not taken or dropped again.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bert_pretrain.errors import InputError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".bert-pretrain.lock"
WHOLE_FOLDER = ((0, 0),)  # a record lock of length 0 reaches the end of any file: every slot

# What this process holds, per lock file: the open descriptor and the spans (closing any descriptor of
# the file would drop all of this process's locks on it, so there is one, closed with the last span).
_held: dict[Path, tuple[int, list[tuple[int, int]]]] = {}


class FolderBusy(InputError):
    """Another process holds (part of) the folder; `pid` is its process id, when the system says."""

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


@contextmanager
def hold_folder(folder: str | Path, option: str, writer: str,
                spans: Sequence[tuple[int, int]] = WHOLE_FOLDER) -> Iterator[None]:
    """Hold `spans` (ranges [start, end) of slots; the default: the whole folder) of `folder`'s lock,
    creating the folder and the lock file if needed; raise FolderBusy when another process holds any
    of them. `option` names the folder in messages ("--output_dir"); `writer` says what this run writes
    there ("shards 0 to 15")."""
    if fcntl is None:
        yield
        return
    path = _lock_path(Path(folder), option)
    descriptor, held = _held.get(path) or (_open(path, option), [])
    _held[path] = (descriptor, held)
    taken: list[tuple[int, int]] = []
    try:
        for span in spans:
            if any(_contains(mine, span) for mine in held):
                continue  # nested: an outer hold of this process has it, and keeps it
            # unlocking a span that partly overlaps an outer one would drop the overlap from the outer hold
            assert not any(_overlap(mine, span) for mine in held), f"{span} partly overlaps {held}"
            _lock(descriptor, span, path.parent, option, writer)
            held.append(span)
            taken.append(span)
        yield
    finally:
        for span in taken:
            fcntl.lockf(descriptor, fcntl.LOCK_UN, _length(span), span[0])
            held.remove(span)
        if not held:
            del _held[path]
            os.close(descriptor)


def _lock_path(folder: Path, option: str) -> Path:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder}: is a file; pass a folder (it is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{option} {folder}: cannot write the output folder ({err.strerror or err}); "
                         f"pick a writable {option}") from None
    return folder.resolve() / LOCK_FILE


def _open(path: Path, option: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise InputError(f"{option} {path.parent}: cannot write the output folder ({err.strerror or err}); "
                         f"pick a writable {option}") from None


def _lock(descriptor: int, span: tuple[int, int], folder: Path, option: str, writer: str) -> None:
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB, _length(span), span[0])
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES):  # held by another process; anything else is a bug
            raise
        pid = _holder(descriptor, span)
        who = f"another bert-pretrain process (pid {pid})" if pid else "another bert-pretrain process"
        raise FolderBusy(f"{option} {folder}: {who} is writing into this folder, where this run would write "
                         f"{writer}; wait for it to finish (or stop it), or pass another {option}", pid) from None


def _end(span: tuple[int, int]) -> int:
    return span[1] if span[1] > span[0] else sys.maxsize  # length 0: to the end


def _contains(outer: tuple[int, int], inner: tuple[int, int]) -> bool:
    return outer[0] <= inner[0] and _end(inner) <= _end(outer)


def _overlap(one: tuple[int, int], two: tuple[int, int]) -> bool:
    return one[0] < _end(two) and two[0] < _end(one)


def _length(span: tuple[int, int]) -> int:
    return max(span[1] - span[0], 0)


# struct flock's fields in order: Linux puts the type first, the BSDs (macOS) the offsets.
if sys.platform == "darwin" or "bsd" in sys.platform:
    _FLOCK, _FIELDS = "qqihh", ("start", "len", "pid", "type", "whence")
else:
    _FLOCK, _FIELDS = "hhqqi", ("type", "whence", "start", "len", "pid")


def _holder(descriptor: int, span: tuple[int, int]) -> int | None:
    """The pid of a process whose lock overlaps `span` (F_GETLK), or None when it cannot be told (on a
    network file system it may be another machine's process)."""
    asked = {"type": fcntl.F_WRLCK, "whence": os.SEEK_SET, "start": span[0], "len": _length(span), "pid": 0}
    request = struct.pack(_FLOCK, *(asked[name] for name in _FIELDS)).ljust(64, b"\0")  # room for padding
    try:
        answer = fcntl.fcntl(descriptor, fcntl.F_GETLK, request)
    except OSError:
        return None
    found = dict(zip(_FIELDS, struct.unpack_from(_FLOCK, answer)))
    return found["pid"] if found["type"] != fcntl.F_UNLCK and found["pid"] > 0 else None
