"""The one error type for bad user input (files, flags, configs).

The CLI prints an `InputError` as a one-line message and exits non-zero, without a traceback
(unless `--debug`). Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
from contextlib import contextmanager


class InputError(ValueError):
    """Bad input from the user: the message names the file or option, the problem and the fix."""

    # True once the message is printed (or left to another process to print): the CLI prints nothing more
    reported = False
    # True for input only this process reads (its share of the shards): it prints its own message
    own_to_this_process = False


class SettingsMismatch(InputError):
    """A readable file made with other settings than this run's (a shard's width, its vocab): every
    file of the set will fail alike, so it is never skipped as a damaged one. `problem` names what
    differs, `fix` how to make them agree from this side."""

    def __init__(self, path, problem: str, fix: str):
        super().__init__(f"{path}: {problem}; {fix}")
        self.path, self.problem, self.fix = path, problem, fix


@contextmanager
def said_by_the_first_process():
    """Input every process of a run reads alike (flags, config files, the checkpoint to resume) fails alike on
    every process: an `InputError` raised inside is printed by the first process only (torchrun's RANK 0, or
    a lone process), not once per process. The others mark it reported and still exit with it. An error from
    inside `own_to_this_process` keeps its own process's message."""
    try:
        yield
    except InputError as err:
        if not err.own_to_this_process and os.environ.get("RANK", "0") != "0":
            err.reported = True
        raise


@contextmanager
def own_to_this_process():
    """An `InputError` raised inside comes from input only this process reads (its share of the training shards):
    it may differ between processes, so each prints its own, also inside `said_by_the_first_process`."""
    try:
        yield
    except InputError as err:
        err.own_to_this_process = True
        raise
