"""Automatic recovery: a worker that torchrun restarted continues the run from its own output folder.

The launcher gives torchrun a restart budget (`--max_restarts`; MAX_RESTARTS in
train_bert_pretraining_amp_dist.sh). When a process of the job dies (SIGKILL, a lost node, an error),
torchrun stops the others and starts every worker again, telling each which restart it is
(TORCHELASTIC_RESTART_COUNT) and the budget (TORCHELASTIC_MAX_RESTARTS). A restarted worker needs no
flag from the user: it continues from the newest checkpoint in its --output_dir (every checkpoint left
there passed the divergence check before it was saved; one whose own weights failed it afterwards was
deleted, train/divergence.py), or, with none written yet, starts the run again from the beginning in
the folder its first attempt began (that attempt's partial logs are its own, not an earlier run's).

Only a folder this job began is continued so: the job's first attempt, once the folder is accepted (not
an earlier run's, train/setup.py), marks it with torchrun's run id (JOB_FILE). A first attempt that was
refused (the folder holds another run's files) marks nothing, so its restarts are refused alike and the
earlier run's files are never taken for this job's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bert_pretrain.atomic import atomic_path

RESTART_COUNT_VARIABLE = "TORCHELASTIC_RESTART_COUNT"
MAX_RESTARTS_VARIABLE = "TORCHELASTIC_MAX_RESTARTS"
RUN_ID_VARIABLE = "TORCHELASTIC_RUN_ID"  # the rendezvous id: the same for every attempt and node of a job
JOB_FILE = ".bert-pretrain.job"


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


def mark_as_this_jobs(output_dir: Path) -> None:
    """Record that this job began `output_dir` (rank 0 of the first attempt, once the folder is accepted)."""
    run_id = os.environ.get(RUN_ID_VARIABLE)
    if run_id:
        with atomic_path(output_dir / JOB_FILE) as tmp:
            tmp.write_text(run_id + "\n", encoding="utf-8")


def began_by_this_job(output_dir: Path) -> bool:
    """Whether this job's first attempt began `output_dir`."""
    run_id = os.environ.get(RUN_ID_VARIABLE)
    try:
        return bool(run_id) and (output_dir / JOB_FILE).read_text(encoding="utf-8").strip() == run_id
    except OSError:
        return False
