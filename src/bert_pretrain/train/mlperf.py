"""The MLPerf Training log of a BERT run, and the MLPerf eval cadence.

One log satisfies both `python -m mlperf_logging.compliance_checker --usage training --ruleset 1.0.0`
(the v1.0 round this benchmark was defined in) and `--ruleset 5.0.0` (the newest ruleset that still
has BERT): the epsilon is logged under both names it has had (`opt_epsilon` up to 2.0.0,
`opt_lamb_epsilon` from 2.1.0); the submission org/platform/status that 1.0.0 requires are ignored
by 5.0.0; neither ruleset asks for `weights_initialization` events (1.1.0-2.1.0 do). Sample counts
go in `epoch_num` (and `samples_count`) of every eval record, so the RCP checker reads the
convergence point in samples (docs/mlperf.md, "The MLPerf log").

The log is written to `<path>.partial` while the run is in progress and renamed to `<path>` at
`run_stop` (or `close`). Not `atomic_path`: a failed run must keep its log, not lose it.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from mlperf_logging.mllog import constants
from mlperf_logging.mllog.mllog import MLLogger

from bert_pretrain import strict_json

BENCHMARK = "bert"
DIVISIONS = ("closed", "open")
SUBMISSION_STATUSES = ("cloud", "onprem", "preview", "research")
RUN_STATUSES = (constants.SUCCESS, constants.ABORTED)
EPSILON_KEYS = ("opt_epsilon", "opt_lamb_epsilon")
RESTART = "restart"  # a worker torchrun restarted (train/recovery.py): the job's restart count
# Keys `hyperparameters()` insists on: every key the 1.0.0 and 5.0.0 BERT rules require, except the
# epsilon, which may come under either of its names and is logged under both.
REQUIRED_HYPERPARAMETERS = (
    "global_batch_size", "gradient_accumulation_steps", "opt_base_learning_rate",
    "opt_learning_rate_training_steps", "opt_learning_rate_warmup_steps", "num_warmup_steps",
    "start_warmup_step", "opt_lamb_beta_1", "opt_lamb_beta_2", "opt_lamb_weight_decay_rate",
)
# Frames between mllog's caller lookup and the training code that called a public method here.
_STACK_OFFSET = 3


def eval_interval_samples(global_batch_size: int) -> int:
    """Samples between evals under the v1.0 rules: FLOOR(0.05*(230.23*GBS + 3,000,000), 25,000).

    Computed in integers (230.23 = 23023/100) so no float rounding can move a boundary.
    """
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be > 0, got {global_batch_size}")
    return (23023 * global_batch_size + 300_000_000) // 50_000_000 * 25_000


def eval_steps(start_samples: int, interval_samples: int, max_samples: int, global_batch_size: int) -> list[int]:
    """Optimizer steps after which to evaluate: ceil(s / GBS) for s = start, start + interval, ...
    below max_samples (NVIDIA's rounding up to whole steps). An interval <= 0 means no evals (the
    reference's `--eval_iter_samples -1`)."""
    if interval_samples <= 0:
        return []
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be > 0, got {global_batch_size}")
    return [math.ceil(s / global_batch_size) for s in range(start_samples, max_samples, interval_samples)]


def _file_logger(path: Path) -> tuple[logging.Logger, logging.Handler]:
    """A private logger (not registered with `logging`, so nothing global changes) writing to path."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    logger = logging.Logger(f"bert_pretrain.train.mlperf:{path}", level=logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    return logger, handler


def _plain(key: str, value):
    if isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"MLPerf log value for {key!r} must be a bool, int, float or str, got {type(value).__name__}")


class MLPerfLogger:
    """Observer of a training run that writes its MLPerf log; silent when `enabled` is False (not rank 0).

    The loop calls, in this order: init_start, submission, hyperparameters, init_stop, run_start,
    then per block of training (one block per eval interval) block_start, eval_start,
    eval_accuracy, eval_stop, block_stop, and finally run_stop. `samples` arguments are training
    samples seen so far (global, all ranks).
    """

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.enabled = enabled
        self._mllog: MLLogger | None = None
        self._handler: logging.Handler | None = None
        self._block_first_sample = 0
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            logger, self._handler = _file_logger(self.partial_path)
            self._mllog = MLLogger(logger=logger, default_stack_offset=_STACK_OFFSET)

    def _log(self, kind: str, key: str, value=None, metadata: dict | None = None, time_ms: int | None = None) -> None:
        if not self.enabled:
            return
        if self._mllog is None:
            raise RuntimeError(f"MLPerf log {self.path} is closed (after run_stop); cannot log {key!r}")
        # mllog writes the JSON itself: a non-finite number (a diverged eval's accuracy) goes in as null, as
        # strict JSON has it; finite values are passed unchanged, as the compliance checker expects them
        getattr(self._mllog, kind)(key=key, value=strict_json.finite(value), metadata=strict_json.finite(metadata),
                                   time_ms=time_ms)

    def init_start(self, cache_cleared: bool = False, time_ms: int | None = None) -> None:
        """`cache_clear` (True only if the launcher really dropped the OS caches), then `init_start`, at `time_ms`
        (unix milliseconds) when initialisation began before the log was opened."""
        self._log("event", constants.CACHE_CLEAR, value=bool(cache_cleared), time_ms=time_ms)
        self._log("start", constants.INIT_START, time_ms=time_ms)

    def restart(self, count: int, resumed_from: str, samples: int) -> None:
        """A worker torchrun restarted after a failure: which restart, and the checkpoint it continues from ("" for
        the beginning). Not an MLPerf key; the compliance checker allows keys it does not know."""
        self._log("event", RESTART, value=int(count), metadata={"resumed_from": resumed_from, **_at(samples)})

    def submission(self, org: str, platform: str, division: str = "closed", status: str = "onprem") -> None:
        """The submission records (benchmark "bert"); org, e.g. "ACME"; platform, e.g. "1xH100-SXM"."""
        if not org or not platform:
            raise ValueError("the MLPerf submission org and platform must be non-empty")
        if division not in DIVISIONS or status not in SUBMISSION_STATUSES:
            raise ValueError(f"division must be one of {DIVISIONS} and status one of {SUBMISSION_STATUSES}; "
                             f"got {division!r}, {status!r}")
        self._log("event", constants.SUBMISSION_BENCHMARK, value=BENCHMARK)
        self._log("event", constants.SUBMISSION_ORG, value=org)
        self._log("event", constants.SUBMISSION_DIVISION, value=division)
        self._log("event", constants.SUBMISSION_STATUS, value=status)
        self._log("event", constants.SUBMISSION_PLATFORM, value=platform)

    def hyperparameters(self, values: dict) -> None:
        """One event per key, plus the epsilon under both of its names.

        Must contain REQUIRED_HYPERPARAMETERS and one of EPSILON_KEYS; extra keys (d_batch_size,
        max_predictions_per_seq, opt_lamb_learning_rate_decay_poly_power, seed, ...) are logged too.
        Log the weight decay the decayed group really uses (NVIDIA logged 0.0 by mistake).
        """
        values = dict(values)
        missing = [key for key in REQUIRED_HYPERPARAMETERS if key not in values]
        epsilons = {values.pop(key) for key in EPSILON_KEYS if key in values}
        if len(epsilons) != 1:
            missing.append(f"one epsilon value under {' or '.join(EPSILON_KEYS)} (got {sorted(epsilons)})")
        if missing:
            raise ValueError(f"MLPerf hyperparameters are missing: {', '.join(missing)}")
        epsilon = epsilons.pop()
        checked = [(key, _plain(key, value)) for key, value in [*values.items(), *((k, epsilon) for k in EPSILON_KEYS)]]
        for key, value in checked:  # all checked before the first is logged
            self._log("event", key, value=value)

    def init_stop(self) -> None:
        self._log("end", constants.INIT_STOP)

    def run_start(self) -> None:
        self._log("start", constants.RUN_START)

    def block_start(self, samples: int, block_samples: int | None = None) -> None:
        """A block of training starts at `samples`; `block_samples` is how many it will train
        (until the next eval), logged as `epoch_count` (1 when not given; the rules need > 0)."""
        self._block_first_sample = samples
        count = block_samples if block_samples else 1
        self._log("start", constants.BLOCK_START, metadata={
            constants.FIRST_EPOCH_NUM: samples, constants.EPOCH_COUNT: count, constants.SAMPLES_COUNT: samples})

    def block_stop(self, samples: int) -> None:
        self._log("end", constants.BLOCK_STOP, metadata={
            constants.FIRST_EPOCH_NUM: self._block_first_sample, constants.SAMPLES_COUNT: samples})

    def eval_start(self, samples: int) -> None:
        self._log("start", constants.EVAL_START, metadata=_at(samples))

    def eval_accuracy(self, accuracy: float, samples_trained: int) -> None:
        """The eval's masked-LM accuracy (a fraction, 0..1) after `samples_trained` training samples."""
        self._log("event", constants.EVAL_ACCURACY, value=float(accuracy), metadata=_at(samples_trained))

    def eval_stop(self, samples: int) -> None:
        self._log("end", constants.EVAL_STOP, metadata=_at(samples))

    def run_stop(self, status: str, samples: int, eval_samples: int = 10_000) -> None:
        """`train_samples`, `eval_samples` (the eval set size), `run_stop` with status
        "success" (target reached) or "aborted"; then the log is complete and renamed into place."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {status!r}")
        self._log("event", constants.TRAIN_SAMPLES, value=int(samples))
        self._log("event", constants.EVAL_SAMPLES, value=int(eval_samples))
        self._log("end", constants.RUN_STOP, metadata={constants.STATUS: status, **_at(samples)})
        self.close()

    def close(self) -> None:
        """Flush and move the log to its final name; safe to call twice and when disabled."""
        if self._handler is None:
            return
        self._handler.close()
        self._handler, self._mllog = None, None
        os.replace(self.partial_path, self.path)


def _at(samples: int) -> dict:
    """Eval-record metadata: samples trained, as `epoch_num` (1.0.0, RCP checker) and `samples_count`."""
    return {constants.EPOCH_NUM: int(samples), constants.SAMPLES_COUNT: int(samples)}
