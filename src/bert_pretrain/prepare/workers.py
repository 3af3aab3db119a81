"""Processes for `prepare`: a pool of workers, or this process alone when there is one worker."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from typing import Callable, Iterable, Iterator

from bert_pretrain.parent_death import die_with_parent


def _start_method() -> str:
    """fork on Linux: workers start at once and a caller's script needs no `if __name__ == "__main__"`
    guard (forkserver and spawn import the caller's main module again). The workers use no thread
    pool the parent may have (prepare never starts tokenizers' thread pool and does not use torch)."""
    return "fork" if sys.platform == "linux" else "spawn"


def _start_worker(parent_pid: int) -> None:
    """In each worker: Ctrl-C reaches the whole process group, and the parent alone ends the run (it
    terminates the pool), so a worker prints no traceback of its own; a parent killed outright takes
    its workers with it (an orphan would go on writing a shard into the folder the next run uses)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)


class Workers:
    """Runs tasks in `count` processes (a pool), or in this process when count is 1."""

    def __init__(self, count: int):
        self.count = count
        self.pool = None

    def __enter__(self) -> "Workers":
        if self.count > 1:
            self.pool = multiprocessing.get_context(_start_method()).Pool(self.count, initializer=_start_worker,
                                                                      initargs=(os.getpid(),))
        return self

    def __exit__(self, error_type, *_) -> None:
        if self.pool is not None:
            self.pool.terminate() if error_type else self.pool.close()
            self.pool.join()

    def ordered(self, function: Callable, argument_lists: Iterable[tuple]) -> Iterator:
        """function(*args) for each args, results in order, with at most 2 tasks per worker in flight."""
        if self.pool is None:
            yield from (function(*args) for args in argument_lists)
            return
        pending: deque = deque()
        for args in argument_lists:
            pending.append(self.pool.apply_async(function, args))
            if len(pending) >= 2 * self.count:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def unordered(self, function: Callable, items: list) -> Iterator:
        if self.pool is None:
            yield from map(function, items)
        else:
            yield from self.pool.imap_unordered(function, items)

    def call(self, function: Callable, *args):
        """One call, in a worker when there are workers (keeps HF's thread pool out of this process)."""
        return function(*args) if self.pool is None else self.pool.apply(function, args)
