"""One optimizer step: forward/backward over the micro-batches, mixed precision, optimizer update.

Shared by `train` and `bench`, so the benchmark times exactly what training runs. In bf16 and fp32
nothing here reads a tensor back to the host: the returned sums stay on the device until the caller
reads them at log time. In fp16, `GradScaler.step` reads its overflow flag back (every optimizer
without `_step_supports_amp_scaling` makes it), and the loss scale is read at that same point.

`compile_model` applies `torch.compile` from outside the model (regional compilation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bert_pretrain.batch import Batch
from bert_pretrain.model import BertConfig, BertForPreTraining
from bert_pretrain.optim import LAMB_EPSILON, MAX_GRAD_NORM, Lamb, parameter_groups
from bert_pretrain.options.fields import PRECISIONS
from bert_pretrain.weights import load_weights

# Order of the entries of StepResult.sums.
SUM_NAMES = ("loss", "mlm_loss_sum", "mlm_correct", "mlm_count", "nsp_correct", "nsp_count")


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
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device, init_scale: float = 2.0**20) -> torch.amp.GradScaler:
    """Dynamic loss scaling for fp16 (growth every 2000 clean steps, as the reference); a no-op otherwise."""
    return torch.amp.GradScaler(
        device.type, init_scale=init_scale, growth_interval=2000, enabled=precision == "fp16"
    )


def training_parts(bert_config: BertConfig, device: torch.device, precision: str, *, attention: str = "auto",
                   fused_norm: bool = False, init_checkpoint: str | None = None, learning_rate: float = 4e-4,
                   betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.01,
                   compiled_optimizer: bool = False, init_scale: float = 2.0**20):
    """(model, LAMB, loss scaler): what `train_step` steps, built the same way for train and bench. The
    model takes its initial weights from torch's current seed (the reference initialisation), then from
    `init_checkpoint` if given; LAMB has the reference's fixed epsilon and gradient clip."""
    model = BertForPreTraining(bert_config, attention_backend=attention, fused_norm=fused_norm)
    if init_checkpoint:
        load_weights(model, init_checkpoint, finite=True)  # NaN weights would pass for a diverged step
    model.to(device)
    optimizer = Lamb(parameter_groups(model, weight_decay), lr=learning_rate, betas=betas, eps=LAMB_EPSILON,
                     weight_decay=weight_decay, max_grad_norm=MAX_GRAD_NORM, compiled=compiled_optimizer)
    return model, optimizer, make_grad_scaler(precision, device, init_scale=init_scale)


def compile_model(model: torch.nn.Module, mode: str | None = None, backend: str = "inductor") -> torch.nn.Module:
    """Compile the model's hot regions in place and return the model.

    Each encoder layer, the embeddings, the masked-LM head's transform and the loss are compiled
    (`Module.compile`, so parameter names and checkpoints are unchanged). All encoder layers run one
    compiled graph (parameters are graph inputs), so compiling BERT-large costs about one layer. The
    attention backend is resolved outside the layers. The packed token count is marked dynamic
    before the first call, so batches of any token count share one compilation (keep
    `Batch.max_seqlen` fixed as well, see data/packing.py, or its first change costs one more).
    `backend` is torch.compile's (tests of what Dynamo traces use "aot_eager", which generates no code).
    """
    from bert_pretrain.model import (
        BertEmbeddings,
        BertEncoder,
        BertLayer,
        BertModel,
        BertPredictionHeadTransform,
        PretrainingLoss,
    )

    for module in model.modules():
        if isinstance(module, (BertEmbeddings, BertLayer, BertPredictionHeadTransform, PretrainingLoss)):
            module.compile(mode=mode, backend=backend)
        elif isinstance(module, BertModel):
            module.register_forward_pre_hook(_mark_packed_tokens_dynamic)
        elif isinstance(module, BertEncoder):
            module.register_forward_pre_hook(_mark_hidden_dynamic)
    return model


def _mark_packed_tokens_dynamic(module, args) -> None:
    """Before BertModel.forward(batch, ...): the packed stream's length N varies from batch to batch."""
    batch = args[0]
    if batch.is_packed:
        for tensor in (batch.input_ids, batch.segment_ids, batch.position_ids):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)


def _mark_hidden_dynamic(module, args) -> None:
    """Before BertEncoder.forward(x, batch, ...): x is (N, H) when packed."""
    if args[1].is_packed:
        torch._dynamo.maybe_mark_dynamic(args[0], 0)


def _sums(out) -> torch.Tensor:
    return torch.stack([
        out.loss.detach().double(), out.mlm_loss_sum.double(), out.mlm_correct.double(),
        out.mlm_count.double(), out.nsp_correct.double(), out.nsp_count.double(),
    ])


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
        sums += _sums(out)
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
