"""A child process that ends with its parent: `die_with_parent()`, called in the child at its start.

A parent killed with SIGKILL cannot stop its children, and an orphan goes on writing into the folders
the next run will use (a training worker its checkpoints, a `prepare` worker its shard). On Linux the
kernel sends the child a signal when its parent exits (PR_SET_PDEATHSIG); elsewhere nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# The launcher's pid, for the workers it starts (torchrun passes its own environment on to them).
LAUNCHER_PID_VARIABLE = "BERT_PRETRAIN_LAUNCHER_PID"


def die_with_parent(parent_pid: int | None = None, signal_number: int = signal.SIGTERM) -> bool:
    """Have the kernel send `signal_number` to this process when its parent exits; returns whether it
    could. SIGTERM, so a training worker stops as on a scheduler's stop (its checkpoint, then exit).

    `parent_pid` is the parent as it was when it started this process: one that died before this call
    cannot be noticed by the kernel any more (the orphan is already someone else's child), so when the
    parent now differs the signal is sent at once. Without it, the parent of this moment is taken.
    """
    if not sys.platform.startswith("linux"):
        return False
    expected = os.getppid() if parent_pid is None else parent_pid
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal_number), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != expected:  # the parent died before the request was in place
        os.kill(os.getpid(), signal_number)
    return True
