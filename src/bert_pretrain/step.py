"""One optimizer step: forward/backward over the micro-batches, mixed precision, optimizer update.

Shared by `train` and `bench` (which build what it steps with build.py), so the benchmark times exactly
what training runs. In bf16 and fp32
nothing here reads a tensor back to the host: the returned sums stay on the device until the caller
reads them at log time. In fp16, `GradScaler.step` reads its overflow flag back (every optimizer
without `_step_supports_amp_scaling` makes it), and the loss scale is read at that same point.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bert_pretrain import devices
from bert_pretrain.batch import Batch
from bert_pretrain.model import SUM_NAMES
from bert_pretrain.options.fields import PRECISIONS


@dataclass
class StepResult:
    sums: torch.Tensor  # (len(SUM_NAMES),) float64 on the device; "loss" is the mean over micro-batches
    skipped: bool  # the update was skipped for an fp16 overflow
    loss_scale: float | None  # fp16: the loss scale after this step; None without loss scaling

    @property
    def overflow_explained(self) -> bool:
        """Skipped for an fp16 overflow while the scale is still sane (>= 1): the loss may be inf, no update
        was applied, and the scaler has lowered the scale; routine, not a divergence."""
        return self.skipped and self.loss_scale is not None and self.loss_scale >= 1.0


def autocast(device: torch.device, precision: str):
    """The autocast context for `precision` ('fp32' runs without one; 'fp8' is bf16 autocast, the float8
    products coming from the layers fp8.convert_encoder swapped in)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=devices.autocast_type(device), dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device, init_scale: float = 2.0**20) -> torch.amp.GradScaler:
    """Dynamic loss scaling for fp16 (growth every 2000 clean steps, as the reference); a no-op otherwise."""
    return torch.amp.GradScaler(
        device.type, init_scale=init_scale, growth_interval=2000, enabled=precision == "fp16"
    )


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    micro_batches: Sequence[Batch],
    precision: str,
    device: torch.device,
) -> StepResult:
    """Accumulate gradients over `micro_batches` and take one optimizer step.

    Each micro-batch's loss is divided by the number of micro-batches (the reference's
    accumulation). Under DDP, gradients are all-reduced only on the last micro-batch. Gradients
    are unscaled before the optimizer so its global-norm clip sees the true values, and set to
    None afterwards.
    """
    accumulation = len(micro_batches)
    sums = torch.zeros(len(SUM_NAMES), dtype=torch.float64, device=device)
    for index, batch in enumerate(micro_batches):
        last = index == accumulation - 1
        no_sync = getattr(model, "no_sync", None)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with autocast(device, precision):
                out = model(batch.to(device, non_blocking=True))
            scaler.scale(out.loss / accumulation).backward()
        sums += out.sums()
    sums[0] /= accumulation
    scaler.unscale_(optimizer)
    # fp16: GradScaler.step reads its overflow flag back to the host anyway, so reading the scale around it
    # costs no extra wait; it lowers the scale exactly when it skipped the step for inf/NaN gradients.
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scale_before is None:
        return StepResult(sums=sums, skipped=False, loss_scale=None)
    scale = scaler.get_scale()
    return StepResult(sums=sums, skipped=scale < scale_before, loss_scale=scale)
