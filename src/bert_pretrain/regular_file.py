"""A file read as input must be a regular file, checked before it is opened.

Opening a FIFO blocks until something writes to it; a character device such as /dev/zero never ends; a
folder named like a data file is no file at all. Each is one line naming what the path really is, so the
user is not told that it is "missing" or sent to look for damage.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bert_pretrain.errors import InputError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_regular(path: str | Path) -> str | None:
    """What `path` is when it exists but is not a regular file (following symlinks, which are named with
    their target), e.g. 'a FIFO (named pipe)'; None for a regular file or a path that does not exist."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:  # absent, or a dangling symlink: the caller's own "no such file" says so
        return None
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return f"{kind} (a symlink to {os.path.realpath(path)})" if path.is_symlink() else kind


def require_regular(path: str | Path, fix: str) -> None:
    """InputError `PATH: is a FIFO (named pipe), not a regular file; FIX` unless `path` is a regular file or
    does not exist (left to the caller's own message)."""
    kind = not_regular(path)
    if kind is not None:
        raise InputError(f"{path}: is {kind}, not a regular file; {fix}")
