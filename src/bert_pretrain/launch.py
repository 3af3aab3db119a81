"""`python -m bert_pretrain.launch [torchrun options] -m bert_pretrain train ...`: torchrun, with the
exit code and the output of the worker that failed.

torchrun answers a worker that exits non-zero with a page of `ChildFailedError` traceback and exit code
1, and a SIGTERM sent to it with a `SignalException` traceback, also exit code 1. Our workers already
print what went wrong (one line and exit code 2 for bad input, their traceback otherwise), so this
launcher adds only one line, for a worker killed by a signal, and exits as a single process would:
the failed worker's code, or 128 + the signal's number. With a restart budget (`--max_restarts`),
torchrun starts the workers again after a failure (each continues from its newest checkpoint,
train/recovery.py); once the budget is spent, one line names the cause of the last failure: the
error line the failing worker left for torchrun (failure_cause.py), else its signal or exit code.
The train_bert_pretraining_amp_dist.sh script calls it; it takes exactly torchrun's options. Its workers stop (SIGTERM: a checkpoint, then
exit) when it is killed outright, as they do when it is stopped by a signal.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from bert_pretrain.parent_death import LAUNCHER_PID_VARIABLE


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The agent's own ERROR lines repeat what the worker printed, with pids and paths.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # The workers are this process's children: told its pid, a worker that starts after this process was
    # killed outright notices (see parent_death.py) and stops instead of training on alone.
    os.environ[LAUNCHER_PID_VARIABLE] = str(os.getpid())
    # Each attempt's workers get a store of their own: on the rendezvous' store, which outlives a restart, a
    # restarted worker can read an address the previous attempt's worker left and fail to connect
    # (pytorch/pytorch#135712, #167288; seen here as gloo's "connectFullMesh failed" on a second restart).
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = _cause(err)
        if args.max_restarts > 0:  # torchrun gives up only once the budget is spent
            print(f"bert-pretrain launch: stopped after {args.max_restarts} restart(s), the budget (MAX_RESTARTS, "
                  f"torchrun's --max_restarts); the last failure: {_describe(rank, failure)}", file=sys.stderr)
        elif failure.exitcode < 0:
            print(f"bert-pretrain launch: {_describe(rank, failure)}", file=sys.stderr)
        return failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
    except SignalException as err:  # this launcher got the signal; the workers had it forwarded and stopped
        print(f"bert-pretrain launch: stopped by {_signal_name(err.sigval)}", file=sys.stderr)
        return 128 + int(err.sigval)
    return 0


def _cause(err) -> tuple[int, object]:
    """The failed worker that says why (failure_cause.py: its error line), else one killed by a signal other than
    the SIGTERM torchrun stops the rest with, else one that exited non-zero, else the first to fail: the others
    of the attempt only lost contact with it or were stopped."""
    failures = sorted(err.failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    for says_why in (lambda f: Path(f.error_file).is_file(),
                     lambda f: f.exitcode < 0 and f.exitcode != -signal.SIGTERM,
                     lambda f: f.exitcode > 0):
        for rank, failure in failures:
            if says_why(failure):
                return rank, failure
    return err.get_first_failure()


def _describe(rank: int, failure) -> str:
    if Path(failure.error_file).is_file():
        return f"rank {rank}: {failure.message}"
    if failure.exitcode < 0:
        return f"the process of rank {rank} was killed by {_signal_name(-failure.exitcode)}"
    return f"the process of rank {rank} exited with code {failure.exitcode}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


if __name__ == "__main__":
    sys.exit(main())
