"""`python -m bert_pretrain.launch [torchrun options] -m bert_pretrain train ...`: torchrun, with the
exit code and the output of the worker that failed.

torchrun answers a worker that exits non-zero with a page of `ChildFailedError` traceback and exit code
1, and a SIGTERM sent to it with a `SignalException` traceback, also exit code 1. Our workers already
print what went wrong (one line and exit code 2 for bad input, their traceback otherwise), so this
launcher adds only one line, for a worker killed by a signal, and exits as a single process would:
the first failed worker's code, or 128 + the signal's number. The train_bert_pretraining_amp_dist.sh
script calls it; it takes exactly torchrun's options. Its workers stop (SIGTERM: a checkpoint, then
exit) when it is killed outright, as they do when it is stopped by a signal.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

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
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        if failure.exitcode >= 0:
            return failure.exitcode
        name = _signal_name(-failure.exitcode)
        print(f"bert-pretrain launch: the process of rank {rank} was killed by {name}", file=sys.stderr)
        return 128 - failure.exitcode
    except SignalException as err:  # this launcher got the signal; the workers had it forwarded and stopped
        print(f"bert-pretrain launch: stopped by {_signal_name(err.sigval)}", file=sys.stderr)
        return 128 + int(err.sigval)
    return 0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


if __name__ == "__main__":
    sys.exit(main())
