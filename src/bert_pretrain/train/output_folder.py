"""The training run's --output_dir: one writer at a time, made writable before anything is read, left as it was
found by a run refused while setting up, and never mixed with an earlier run's checkpoints and logs."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

from bert_pretrain.distributed import DistInfo, broadcast_object
from bert_pretrain.errors import InputError
from bert_pretrain.folder_lock import LOCK_FILE, hold_folder
from bert_pretrain.train.checkpoint import CheckpointSchedule, checkpoints_in
from bert_pretrain.train.metrics import METRICS_FILE, PLOT_FILE, SUMMARY_FILE, TENSORBOARD_DIR


def _require_writable_folder(output_dir: Path) -> None:
    """--output_dir exists as a folder (made here if missing) this process can write: found now, not as a traceback
    from the first log line or checkpoint."""
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output_dir {output_dir}: is a file; pass a folder (it is created if missing)")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as err:  # a regular file on the way (ENOTDIR), no permission, a read-only file system
        raise InputError(f"--output_dir {output_dir}: cannot be written ({err.strerror or err}); pass a folder "
                         "this user may write to, on a writable file system") from None


def hold_output_folder(output_dir: Path, info: DistInfo, stack: ExitStack) -> bool:
    """Make this run the only writer of --output_dir until `stack` closes (see folder_lock.py). Rank 0 alone
    writes the folder, so it holds the lock; a second launch's rank 0 is refused, and every process of that
    launch raises the same error. True on the process that made the folder (it did not exist), for
    `remove_unused_folder`."""
    refusal, made = None, False
    if info.is_main:
        try:
            made = not output_dir.exists()
            _require_writable_folder(output_dir)
            stack.enter_context(hold_folder(output_dir, "--output_dir", "this training run's checkpoints and logs"))
        except InputError as err:
            refusal, made = str(err), False
    refusal = broadcast_object(refusal)
    if refusal is not None:
        raise InputError(refusal)
    return made


def remove_unused_folder(output_dir: Path) -> None:
    """A run refused while setting up leaves the --output_dir it made as it found it, absent: the folder goes
    when it holds nothing but the lock file. Called while the lock is held, so no other run is writing there."""
    try:
        if [path.name for path in output_dir.iterdir()] == [LOCK_FILE]:
            (output_dir / LOCK_FILE).unlink()
            output_dir.rmdir()
    except OSError:  # what cannot go stays: the lock file means nothing once its process has ended
        pass


def earlier_run_files(output_dir: Path, phase2: bool) -> list[Path]:
    """What a run of this phase left in `output_dir`: its checkpoints, MLPerf logs (the one in progress
    too), metrics.jsonl, metrics.png, summary.json and TensorBoard folder."""
    if not output_dir.is_dir():
        return []
    logs = [output_dir / name for name in (METRICS_FILE, PLOT_FILE, SUMMARY_FILE, TENSORBOARD_DIR)]
    logs += sorted(output_dir.glob("mlperf.log*")) + sorted(output_dir.glob("mlperf_resumed_*.log*"))
    return checkpoints_in(output_dir, phase2) + [path for path in logs if path.exists()]


def refuse_an_earlier_runs_folder(info: DistInfo, schedule: CheckpointSchedule) -> None:
    """A new run in a folder that holds another run's checkpoints would mix its logs with that run's and,
    keeping --keep_n_most_recent_checkpoints, delete its own newer checkpoints as the older ones; one that
    holds only its logs (--skip_checkpoint) would have them replaced without a word."""
    found = earlier_run_files(schedule.output_dir, schedule.phase2) if info.is_main else []
    if _record_nothing(found):
        found = []  # a run stopped before it logged anything (Ctrl-C while compiling, a kill): the next one replaces them
    earlier = broadcast_object([path.name for path in found])  # rank 0 decides, so every process raises
    if earlier:
        named = ", ".join(earlier[:4]) + (f" and {len(earlier) - 4} more" if len(earlier) > 4 else "")
        kinds = (("checkpoints", any(name.endswith(".pt") for name in earlier)),
                 ("logs", not all(name.endswith(".pt") for name in earlier)))
        what = " and ".join(kind for kind, present in kinds if present)
        raise InputError(f"{schedule.output_dir}: holds the {what} of an earlier run ({named}); pass "
                         "--resume_from_checkpoint to continue it, or another --output_dir for a new run (or delete "
                         "them)")


# MLPerf log events that only a run that trained writes: an eval's result, the end of a block or of the run.
_RESULT_EVENTS = ('"key": "eval_accuracy"', '"key": "block_stop"', '"key": "run_stop"')


def _record_nothing(files: list[Path]) -> bool:
    """Whether `earlier_run_files` are all a run leaves that stopped before its first record: no checkpoint, no
    summary, no line in metrics.jsonl, no result in its MLPerf log (the plot and TensorBoard folder then show
    nothing either). A new run replaces them and loses nothing."""
    for path in files:
        if path.suffix == ".pt" or path.name == SUMMARY_FILE:
            return False
        if path.name == METRICS_FILE and path.read_text(encoding="utf-8", errors="replace").strip():
            return False
        if path.name.startswith("mlperf") and path.is_file():
            with open(path, encoding="utf-8", errors="replace") as log:
                if any(event in line for line in log for event in _RESULT_EVENTS):
                    return False
    return True
