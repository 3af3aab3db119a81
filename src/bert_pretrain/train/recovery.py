"""Automatic recovery: a worker that torchrun restarted continues the run from its own output folder.

The launcher gives torchrun a restart budget (`--max_restarts`; MAX_RESTARTS in
train_bert_pretraining_amp_dist.sh). When a process of the job dies (SIGKILL, a lost node, an error),
torchrun stops the others and starts every worker again, telling each which restart it is
(TORCHELASTIC_RESTART_COUNT) and the budget (TORCHELASTIC_MAX_RESTARTS). A restarted worker needs no
flag from the user: it continues from the newest checkpoint in its --output_dir (every checkpoint left
there passed the divergence check before it was saved; one whose own weights failed it afterwards was
deleted, train/divergence.py), or, with none written yet, starts the run again from the beginning in
the folder its first attempt began (that attempt's partial logs are its own, not an earlier run's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

RESTART_COUNT_VARIABLE = "TORCHELASTIC_RESTART_COUNT"
MAX_RESTARTS_VARIABLE = "TORCHELASTIC_MAX_RESTARTS"


@dataclass(frozen=True)
class Restart:
    """Which restart of the job this worker is (1 for the first), and the budget when torchrun says it."""

    count: int
    budget: int | None

    def __str__(self) -> str:
        return f"restart {self.count}" + (f" of at most {self.budget}" if self.budget is not None else "")


def this_restart() -> Restart | None:
    """The restart torchrun started this worker as; None for the job's first attempt or outside torchrun."""
    count = _whole_number(os.environ.get(RESTART_COUNT_VARIABLE, ""))
    if not count:
        return None
    return Restart(count, _whole_number(os.environ.get(MAX_RESTARTS_VARIABLE, "")))


def _whole_number(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None
