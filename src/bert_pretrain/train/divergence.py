"""Checkpoints only from sane states: the divergence rule, and which checkpoint it vouches for.

The rule. Before each save, a state is divergent when
  - a weight is NaN or infinite, or
  - the training loss (the mean over all processes of the steps since the last check) is NaN or infinite, or
  - that loss exceeds max(RATIO x median of the RECENT last recorded losses, FLOOR).
Recorded losses are the sane ones of these checks and of the log points (each already a mean over all
processes); a loss that trips the rule is never recorded, so a blow-up cannot raise the level it is
judged against.

Why these numbers. BERT's loss (masked-LM + next-sentence cross-entropy) starts near ln(vocab) + ln 2,
about 11 for the 30,522-token vocab, and falls to about 1.5 by the MLPerf target; spikes of 2-3x its
recent level happen and recover. A median over the last RECENT = 20 losses ignores a few spikes, and a
RATIO of 10 leaves 3x headroom above the largest of them; the FLOOR of 30 lies above any vocab's
starting loss (ln of 10^12 tokens is 28), so a run with no record yet (the first check, a resumed run)
is judged by it alone, and a late spike back to the starting level (7x a median of 1.5) still passes.
A learning rate orders of magnitude too high gives losses of 1e5-1e12 within a step or two, far beyond.

Which checkpoint a check vouches for. The loss of step N comes from the weights after step N-1, so the
losses before a save say nothing of the weights being saved: a checkpoint written at step N is pending
until the loss of the next step, its weights' own loss, is judged. A pending checkpoint whose own loss
trips the rule is deleted (its weights are diverged, though finite); one whose own loss passes is the
newest that passed, the one a divergence error names and `CheckpointSchedule.remove_old` keeps.

The check is one fused reduction over the weights (`torch._foreach_norm` with ord inf: each tensor's
largest magnitude, never an overflow) and one all-reduce, only at save time; every process computes
the same verdict from the reduced values, so no process saves or stops alone. Between checks a step
adds one device-side sum and no host synchronisation.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from bert_pretrain.distributed import all_reduce_sum, world_size
from bert_pretrain.errors import InputError
from bert_pretrain.step import StepResult

RATIO = 10.0
FLOOR = 30.0
RECENT = 20


class LossRecord:
    """The last RECENT sane losses and the limit they set."""

    def __init__(self):
        self._recent: deque[float] = deque(maxlen=RECENT)

    def limit(self) -> float:
        return max(RATIO * statistics.median(self._recent), FLOOR) if self._recent else FLOOR

    def trips(self, loss: float) -> bool:
        """Divergent: not finite, or above the limit."""
        return not math.isfinite(loss) or loss > self.limit()

    def observe(self, loss: float) -> None:
        """Record `loss` unless it trips the rule."""
        if not self.trips(loss):
            self._recent.append(loss)

    def describe(self, loss: float) -> str:
        if not math.isfinite(loss):
            return f"{loss} (not finite)"
        if not self._recent:
            return f"{loss:.4g}, above {FLOOR:g} (no earlier loss recorded yet)"
        return (f"{loss:.4g}, above {self.limit():.4g} ({RATIO:g}x the median {statistics.median(self._recent):.4g} "
                f"of the last {len(self._recent)} recorded losses, at least {FLOOR:g})")


@dataclass(frozen=True)
class Reading:
    """One check's reduced values (the same on every process)."""

    loss: float | None  # the mean loss of the steps since the last check; None when there was none
    own_loss: float | None  # the loss of the first step after the last save; None when not seen yet
    bad_tensors: int  # weight tensors holding a NaN or an infinity
    largest_weight: float


def largest_magnitudes(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """Each tensor's largest |value| (NaN where it holds one), one fused reduction, on the device."""
    return torch.stack([norm.float() for norm in torch._foreach_norm(list(parameters), math.inf)])


class DivergenceGuard:
    """Applies the rule at each save (see the module docstring); `passed` is the newest checkpoint that passed."""

    def __init__(self, device: torch.device, is_main: bool, resumed_from: Path | None = None):
        self.device, self.is_main = device, is_main
        self.record = LossRecord()
        self.passed: Path | None = None
        # the checkpoint whose own loss is still to come: this run's last save, or the one it resumed from
        self._pending, self._pending_ours = resumed_from, False
        self._awaiting_own = resumed_from is not None
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._own_loss = torch.zeros((), dtype=torch.float64, device=device)
        self._own_seen = False
        self._counted = 0  # steps in _loss_sum
        self._span_steps = (0, 0)  # the first and the last of them

    def add(self, result: StepResult, step: int) -> None:
        """One training step's loss (no host synchronisation). A step skipped for an fp16 overflow applied
        nothing and its loss may be inf: it is left out, as the loop leaves it out of its own stop."""
        if result.overflow_explained:
            return
        loss = result.sums[0]
        self._loss_sum += loss
        self._span_steps = (self._span_steps[0] if self._counted else step, step)
        self._counted += 1
        if self._awaiting_own:
            self._own_loss.copy_(loss)
            self._own_seen, self._awaiting_own = True, False

    def check(self, parameters: Iterable[torch.Tensor], step: int) -> None:
        """Before a save at `step` (a collective): raises InputError when the state is divergent."""
        reading = self._read(parameters)
        removed = self._settle_pending(reading)
        problems = []
        if reading.bad_tensors:
            problems.append(f"{reading.bad_tensors} weight tensor(s) hold NaN or infinite values after step {step}")
        if reading.loss is not None and self.record.trips(reading.loss):
            problems.append(f"{self._span()} is {self.record.describe(reading.loss)}; the largest weight is "
                            f"{reading.largest_weight:.3g}")
        if problems:
            raise self._error("; ".join(problems), removed)
        if reading.loss is not None:
            self.record.observe(reading.loss)
        self._loss_sum.zero_()
        self._counted = 0

    def saved(self, path: Path) -> None:
        """This run wrote `path`: it is pending until its own loss is seen."""
        self._pending, self._pending_ours, self._awaiting_own, self._own_seen = path, True, True, False

    def stopped(self, parameters: Iterable[torch.Tensor], problem: str) -> InputError:
        """The error for the loop's own stop on a non-finite loss (a collective: the pending checkpoint is
        judged first, so the error names one that passed)."""
        return self._error(problem, self._settle_pending(self._read(parameters)))

    def _read(self, parameters: Iterable[torch.Tensor]) -> Reading:
        magnitudes = largest_magnitudes(parameters)
        values = torch.stack([self._loss_sum, self._own_loss,
                              (~torch.isfinite(magnitudes)).sum().double(), magnitudes.max().double()])
        loss_sum, own_sum, bad, largest = (all_reduce_sum(values) / world_size()).tolist()
        return Reading(loss=loss_sum / self._counted if self._counted else None,
                       own_loss=own_sum if self._own_seen else None,
                       bad_tensors=round(bad * world_size()), largest_weight=largest)

    def _settle_pending(self, reading: Reading) -> Path | None:
        """Judge the pending checkpoint by its own loss; returns it when it was deleted for failing."""
        if self._pending is None or reading.own_loss is None:
            return None
        pending, ours, self._pending, self._own_seen = self._pending, self._pending_ours, None, False
        if not self.record.trips(reading.own_loss):
            self.passed = pending
            return None
        if ours and self.is_main:
            pending.unlink(missing_ok=True)
        return pending if ours else None

    def _span(self) -> str:
        first, last = self._span_steps
        return f"the loss of step {last}" if first == last else f"the mean loss of steps {first}-{last}"

    def _error(self, problem: str, removed: Path | None) -> InputError:
        deleted = (f"; {removed.name}, the last one written, was deleted: the loss its own weights give trips "
                   "the same check") if removed else ""
        if self.passed is None:
            return InputError(f"training diverged: {problem}; stopped without saving (no checkpoint of this run "
                              f"passed the divergence check{deleted}); start again with a lower --learning_rate")
        return InputError(f"training diverged: {problem}; stopped without saving (the last checkpoint that passed "
                          f"the divergence check is {self.passed}{deleted}); resume from it with "
                          f"--resume_from_checkpoint {self.passed} and a lower --learning_rate")
