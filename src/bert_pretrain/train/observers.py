"""What the training loop reports, and to whom: the MLPerf log, metrics files and the console.

`RunObservers` is called by the loop at fixed points (init, run start, log, block/eval, run stop)
and fans each event out to `MLPerfLogger`, `MetricsWriter` and a progress bar (or, when stderr is
not a terminal, one line per log). Off rank 0 every observer is disabled and nothing is printed.
`StepTracker` keeps the per-step sums on the device so the loop reads them only at log time.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from bert_pretrain.distributed import all_reduce_sum, world_size
from bert_pretrain.model import SUM_NAMES
from bert_pretrain.step import StepResult
from bert_pretrain.train.metrics import MetricsWriter
from bert_pretrain.train.mlperf import MLPerfLogger


class StepTracker:
    """On-device sums of the training steps since the last read, and the first step whose loss was
    non-finite where fp16 loss scaling does not explain it (the update was applied, or the scale
    has already fallen below 1)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._sums = torch.zeros(len(SUM_NAMES), dtype=torch.float64, device=device)
        self._steps = 0
        self.first_bad_step = torch.full((), math.inf, dtype=torch.float64, device=device)

    def add(self, result: StepResult, attempt: int) -> None:
        """Add one step's sums; `attempt` numbers the step for the divergence message. No host sync,
        and no host-to-device copy (the step number enters as a Python scalar)."""
        self._sums += result.sums
        self._steps += 1
        if result.overflow_explained:
            return
        bad = ~torch.isfinite(result.sums[0])
        self.first_bad_step = torch.where(bad, self.first_bad_step.clamp(max=float(attempt)), self.first_bad_step)

    def read(self) -> dict:
        """Means over all processes since the last read (a collective, and a host synchronisation)."""
        sums = dict(zip(SUM_NAMES, all_reduce_sum(self._sums).tolist()))
        processes = world_size()
        values = {
            "loss": sums["loss"] / max(self._steps * processes, 1),
            "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0),
            "mlm_loss": sums["mlm_loss_sum"] / max(sums["mlm_count"], 1.0),
            "nsp_accuracy": sums["nsp_correct"] / max(sums["nsp_count"], 1.0),
        }
        self._sums.zero_()
        self._steps = 0
        return values


def _format(values: dict) -> str:
    parts = []
    for key, value in values.items():
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


class RunObservers:
    """The loop's observers; `enabled` only on rank 0."""

    def __init__(self, output_dir: Path, enabled: bool, mlperf_log: Path, resumed: bool,
                 progress_bar: bool | None, total_steps: int, target_accuracy: float):
        self.enabled = enabled
        self.target = target_accuracy or None
        self.mlperf = MLPerfLogger(mlperf_log, enabled=enabled)
        self.metrics = MetricsWriter(output_dir, enabled=enabled, resume=resumed)
        show_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        self._bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True) if enabled and show_bar else None
        self.block_open = False

    def say(self, message: str) -> None:
        """One line for the person running the job (rank 0 only)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def restarted(self, count: int, resumed_from: Path | None, progress) -> None:
        """This is torchrun's restart `count` of the job, continuing from `resumed_from` (None: from the start)."""
        source = str(resumed_from) if resumed_from is not None else ""
        self.mlperf.restart(count, source, progress.samples)
        self.metrics.restart(progress.step, progress.samples, count, source)

    def run_start(self, step: int) -> None:
        self.mlperf.init_stop()
        self.mlperf.run_start()
        if self._bar is not None:
            self._bar.reset()
            self._bar.update(step)

    def step_done(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def train_log(self, step: int, samples: int, values: dict) -> None:
        self.metrics.train(step, samples, values)
        if self._bar is not None:
            shown = {k: values[k] for k in ("samples_per_s", "loss", "lr", "grad_norm", "loss_scale") if k in values}
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        else:
            self.say(f"step {step}  samples {samples}  {_format(values)}")

    def block_start(self, samples: int, block_samples: int) -> None:
        self.mlperf.block_start(samples, block_samples)
        self.block_open = True

    def eval_start(self, samples: int) -> None:
        self.mlperf.eval_start(samples)

    def eval_done(self, step: int, samples: int, result: dict) -> None:
        self.mlperf.eval_accuracy(result["mlm_accuracy"], samples)
        self.mlperf.eval_stop(samples)
        self.block_stop(samples)
        values = {("eval_samples" if k == "samples" else k): v for k, v in result.items()}
        self.metrics.eval(step, samples, values)
        self.metrics.plot(self.target, background=True)  # drawing stays out of the timed training loop
        self.say(f"eval at step {step} ({samples} samples): masked-LM accuracy {result['mlm_accuracy']:.4f}  "
                 f"loss {result['mlm_loss']:.4f}")

    def block_stop(self, samples: int) -> None:
        if self.block_open:
            self.mlperf.block_stop(samples)
            self.block_open = False

    def run_stop(self, status: str, samples: int, eval_samples: int) -> None:
        self.block_stop(samples)
        self.mlperf.run_stop(status, samples, eval_samples)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.metrics.plot(self.target)
        self.metrics.close()
        self.mlperf.close()
