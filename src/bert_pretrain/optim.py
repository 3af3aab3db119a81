"""LAMB as MLPerf BERT trains with it: parameter groups, the optimizer, the learning-rate schedule.

The semantics are those of the MLPerf v1.0 reference (TF `lamb_optimizer_v1` + `tf.clip_by_global_norm`)
and of NVIDIA's PyTorch submission (apex `FusedLAMB` / `DistributedFusedLAMB` with `use_nvlamb=False`,
`LinearWarmupPolyDecayScheduler`):

- gradients are clipped to a global L2 norm of `max_grad_norm`, over all parameters of all groups;
- Adam moments with bias correction; update = m_hat / (sqrt(v_hat) + eps) + weight_decay * w;
- the layer-wise trust ratio ||w|| / ||update|| (1 when either norm is 0) only where the group's
  weight decay is non-zero (LayerNorm and bias parameters are excluded from both), one per tensor of
  the reference: the fused QKV weight gets three, one each for its query, key and value blocks;
- w -= lr * ratio * update.

The update runs as multi-tensor `torch._foreach_*` ops over each group's lists, or (`compiled=True`)
as torch.compile'd units of one encoder layer each (lamb_compiled.py: the same math in fewer passes
over memory). Neither reads a tensor back to the host, so a step does not synchronise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from bert_pretrain.kernels.lamb_compiled import TensorPlan, compiled_unit, trust_ratio, unit_key

# A parameter whose name contains any of these gets no weight decay (and no trust ratio).
NO_DECAY_NAME_PARTS = ("bias", "gamma", "beta", "LayerNorm")
# The reference's fixed LAMB settings (not tunable under the MLPerf rules).
LAMB_EPSILON = 1e-6
MAX_GRAD_NORM = 1.0
# Parameters that fuse several of the reference's tensors as equal row blocks: the model's one QKV
# projection holds the reference's query, key and value weights, and LAMB gives each its own trust ratio.
FUSED_ROW_BLOCKS = {".qkv.weight": 3}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The reference's two LAMB groups for `model`: [decayed, not decayed].

    Every parameter appears once (a tied weight, such as the decoder/word-embedding matrix, is
    listed by `named_parameters()` under its first name only). Each group carries the names of its
    parameters under "param_names" (PyTorch's own key for them) for logs and tests, and under
    "segments" how many of the reference's tensors each one holds (3 for a fused QKV weight).
    """
    decay = {"params": [], "param_names": [], "segments": []}
    no_decay = {"params": [], "param_names": [], "segments": []}
    for name, param in model.named_parameters():
        group = no_decay if any(part in name for part in NO_DECAY_NAME_PARTS) else decay
        group["params"].append(param)
        group["param_names"].append(name)
        group["segments"].append(next((k for suffix, k in FUSED_ROW_BLOCKS.items() if name.endswith(suffix)), 1))
    decay["weight_decay"] = weight_decay
    no_decay["weight_decay"] = 0.0
    return [decay, no_decay]


def _check_hyperparameters(lr, betas, eps, weight_decay, max_grad_norm) -> None:
    if not (isinstance(lr, torch.Tensor) or lr >= 0.0):
        raise ValueError(f"LAMB learning rate must be >= 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(f"LAMB betas must be two values in [0, 1), got {betas}")
    if eps < 0.0:
        raise ValueError(f"LAMB epsilon must be >= 0, got {eps}")
    if weight_decay < 0.0:
        raise ValueError(f"LAMB weight decay must be >= 0, got {weight_decay}")
    if max_grad_norm is not None and max_grad_norm <= 0.0:
        raise ValueError(f"max_grad_norm must be > 0 (or None to switch clipping off), got {max_grad_norm}")


class Lamb(torch.optim.Optimizer):
    """LAMB with MLPerf BERT semantics, multi-tensor or compiled (see the module docstring).

    Args:
        params: parameters or parameter groups (see `parameter_groups`); fp32 only (keep fp32 master
            weights and run the model under autocast for reduced precision).
        lr: learning rate; the training loop may overwrite `param_groups[i]["lr"]` with a Python
            float (or a 0-d tensor on the parameters' device) before every step.
        betas: (beta1, beta2) of the Adam moments.
        eps: added to sqrt(v_hat) (the reference uses 1e-6).
        weight_decay: decoupled weight decay; also switches the trust ratio on for its group.
        max_grad_norm: global gradient-norm clip over all groups; None switches clipping off.
        compiled: run the update as torch.compile'd units, one per encoder layer (lamb_compiled.py):
            the same results in fewer passes over memory. Set it where the model is compiled. Units
            are found from the groups' "param_names" (as `parameter_groups` makes them); groups
            without names form one unit, which compiles slowly for a deep model.

    `step()` clips `p.grad` in place (as `torch.nn.utils.clip_grad_norm_` does). Parameters
    without a gradient are skipped. The bias-correction step count lives in each group as
    `group["step"]` (the number of updates applied; a step skipped by a GradScaler does not
    count), so `state_dict()` / `load_state_dict()` restore everything. `last_grad_norm` holds the
    global gradient norm of the last step (before clipping) as a device tensor, for logging.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 4e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = LAMB_EPSILON,
        weight_decay: float = 0.01,
        max_grad_norm: float | None = MAX_GRAD_NORM,
        compiled: bool = False,
    ):
        _check_hyperparameters(lr, betas, eps, weight_decay, max_grad_norm)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, step=0)
        super().__init__(params, defaults)
        self.max_grad_norm = max_grad_norm
        self.compiled = compiled
        # A dict, not an attribute: torch.compile can trace a dict update inside step(), not a setattr.
        self._stats: dict[str, torch.Tensor] = {}
        for group in self.param_groups:
            for param in group["params"]:
                if param.dtype != torch.float32:
                    raise ValueError(
                        f"Lamb keeps fp32 weights and moments but got a {param.dtype} parameter; "
                        "keep the model in fp32 and use autocast for fp16/bf16"
                    )

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, keeping this optimizer's "segments" where the saved groups have none (older checkpoints)."""
        segments = [group.get("segments") for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, kept in zip(self.param_groups, segments):
            group.setdefault("segments", kept)

    @property
    def last_grad_norm(self) -> torch.Tensor | None:
        """The global gradient L2 norm of the last step, before clipping (a 0-d device tensor)."""
        return self._stats.get("grad_norm")

    @torch.no_grad()
    def step(self, closure=None):
        """Clip all gradients to the global norm, then apply one LAMB update to every group."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [(group, *self._with_grads(group)) for group in self.param_groups]
        all_grads = [grad for _, _, grads, _ in work for grad in grads]
        if not all_grads:
            return loss
        clip = self._clip_factor(all_grads)
        if self.compiled:
            self._update_compiled(work, clip)
            return loss
        if clip is not None:
            torch._foreach_mul_(all_grads, clip)
        for group, params, grads, segments in work:
            if params:
                self._update_group(group, params, grads, segments)
        return loss

    def _with_grads(self, group: dict) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        segments = group.get("segments") or [1] * len(group["params"])
        kept = [(param, k) for param, k in zip(group["params"], segments) if param.grad is not None]
        if any(param.grad.is_sparse for param, _ in kept):
            raise ValueError("Lamb does not support sparse gradients")
        return [p for p, _ in kept], [p.grad for p, _ in kept], [k for _, k in kept]

    def _clip_factor(self, grads: list[torch.Tensor]) -> torch.Tensor | None:
        """max_grad_norm / max(global_norm, max_grad_norm) (tf.clip_by_global_norm), None without clipping."""
        global_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self._stats["grad_norm"] = global_norm
        if self.max_grad_norm is None:
            return None
        # 1 exactly when the norm is within bounds; no host-side test of the tensor.
        return self.max_grad_norm / global_norm.clamp(min=self.max_grad_norm)

    def _moments(self, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        for param in params:
            state = self.state[param]
            if not state:
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return [self.state[p]["exp_avg"] for p in params], [self.state[p]["exp_avg_sq"] for p in params]

    @staticmethod
    def _bias_corrections(group: dict) -> tuple[float, float]:
        """Count this update in `group["step"]`; return (factor, eps_root) of its bias corrections.

        m_hat / (sqrt(v_hat) + eps) == factor * m / (sqrt(v) + eps_root) with factor = sqrt(bc2) / bc1
        and eps_root = eps * sqrt(bc2): the corrections become scalars folded into other ops, saving
        passes over the weights.
        """
        beta1, beta2 = group["betas"]
        group["step"] += 1
        root_bc2 = math.sqrt(1.0 - beta2 ** group["step"])
        return root_bc2 / (1.0 - beta1 ** group["step"]), group["eps"] * root_bc2

    def _update_group(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor],
                      segments: list[int]) -> None:
        beta1, beta2 = group["betas"]
        factor, eps_root = self._bias_corrections(group)
        exp_avgs, exp_avg_sqs = self._moments(params)
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)  # m = beta1 m + (1 - beta1) g
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denominators, eps_root)
        lr, weight_decay = group["lr"], group["weight_decay"]
        if weight_decay != 0.0:
            updates = torch._foreach_mul(params, weight_decay)
            torch._foreach_addcdiv_(updates, exp_avgs, denominators, value=factor)
            del denominators
            # One trust ratio per reference tensor: a fused parameter's row blocks are views, updated in place.
            params, updates = _row_blocks(params, segments), _row_blocks(updates, segments)
            scales = (_trust_ratios(params, updates) * -lr).unbind()  # (len(params),) -> 0-d tensors
            torch._foreach_addcmul_(params, updates, list(scales))
        else:
            updates = torch._foreach_div(exp_avgs, denominators)
            torch._foreach_mul_(updates, -lr * factor)
            torch._foreach_add_(params, updates)

    def _update_compiled(self, work: list, clip: torch.Tensor | None) -> None:
        """The update of every group through lamb_compiled's units (see that module)."""
        units: dict[str, tuple[list, list, list, list, list]] = {}
        group_scalars = []
        for index, (group, params, grads, segments) in enumerate(work):
            if not params:
                group_scalars.append(None)
                continue
            factor, eps_root = self._bias_corrections(group)
            beta1, beta2 = group["betas"]
            values = (group["lr"], factor, eps_root, group["weight_decay"], beta1, 1.0 - beta1, beta2, 1.0 - beta2)
            group_scalars.append(tuple(_cpu_scalar(value) for value in values))
            names = dict(zip(map(id, group["params"]), group.get("param_names") or ()))
            decayed = group["weight_decay"] != 0.0
            for param, grad, exp_avg, exp_avg_sq, k in zip(params, grads, *self._moments(params), segments):
                unit = units.setdefault(unit_key(names.get(id(param))), ([], [], [], [], []))
                for items, item in zip(unit, (param, grad, exp_avg, exp_avg_sq, TensorPlan(index, k, decayed))):
                    items.append(item)
        update = compiled_unit()
        for params, grads, exp_avgs, exp_avg_sqs, plans in units.values():
            update(params, grads, exp_avgs, exp_avg_sqs, tuple(plans), group_scalars, clip)


def _cpu_scalar(value: float | torch.Tensor) -> torch.Tensor:
    """A Python float as a 0-d float64 CPU tensor (compiled code takes it as an argument, not a constant)."""
    return value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)


def _row_blocks(tensors: list[torch.Tensor], segments: list[int]) -> list[torch.Tensor]:
    """Each tensor, or its `k` equal row blocks (views) where it fuses k of the reference's tensors."""
    return [block for tensor, k in zip(tensors, segments) for block in (tensor.chunk(k) if k > 1 else (tensor,))]


def _trust_ratios(params, updates) -> torch.Tensor:
    """(len(params),) ||w|| / ||update|| per tensor, 1 where either norm is 0."""
    return trust_ratio(torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(updates)))


def warmup_steps_for(max_steps: float, warmup_proportion: float, warmup_steps: int) -> int:
    """The warmup length in optimizer steps: `warmup_steps`, or int(max_steps * warmup_proportion)
    when `warmup_steps` is 0 (the reference's `--warmup_steps` / `--warmup_proportion`)."""
    if warmup_steps < 0 or warmup_proportion < 0:
        raise ValueError(f"warmup_steps ({warmup_steps}) and warmup_proportion ({warmup_proportion}) must be >= 0")
    return int(warmup_steps) if warmup_steps != 0 else int(max_steps * warmup_proportion)


def warmup_start_for(warmup_steps: int, start_warmup_step: int) -> int:
    """The step the warmup starts at: the reference ignores `--start_warmup_step` (uses 0) when
    `--warmup_steps` is 0 and the warmup length comes from `--warmup_proportion`."""
    return int(start_warmup_step) if warmup_steps != 0 else 0


def lr_at(
    step: int,
    base_lr: float,
    warmup_steps: int,
    total_steps: float,
    start_warmup_step: int = 0,
    degree: float = 1.0,
) -> float:
    """The learning rate of the next update, as NVIDIA's `LinearWarmupPolyDecayScheduler`.

    `step` is the number of optimizer updates already applied (0 for the first update; updates
    skipped for fp16 overflow do not count, as TF's global step; NVIDIA's DistributedFusedLAMB
    advances its own step on a skipped update too, which moves its rate and bias correction by the
    few early skips). NVIDIA sets the rate right before each update from
    last = step + 1, offset = 1 if start_warmup_step == 0 else 0, and position = last - offset -
    start_warmup_step:

    - position < warmup_steps: lr = base_lr * position / (warmup_steps + 1e-6)  (linear warmup);
    - otherwise: lr = base_lr * (1 - min((last - offset) / total_steps, 1)) ** degree  (decay to 0).

    With start_warmup_step == 0 this equals the TF reference at global_step = step (up to the
    1e-6); with a negative start (the RCP table's -76, -700) the offset is 0, so NVIDIA's warmup and
    decay both run one step ahead of TF's (1 - (step + 1) / total in the decay). A positive start
    would make the reference's rate negative before the warmup starts; here it is 0 there.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    last = step + 1 - (1 if start_warmup_step == 0 else 0)
    position = last - start_warmup_step
    if position < warmup_steps:
        return base_lr * max(position, 0) / (warmup_steps + 1e-6)
    return base_lr * (1.0 - min(last / total_steps, 1.0)) ** degree


@dataclass(frozen=True)
class LrSchedule:
    """The learning-rate schedule as one value: built once from the reference's flags, asked for the rate
    before each update (`at`), and logged whole to the MLPerf log."""

    base_lr: float
    warmup_steps: int
    total_steps: float
    start_warmup_step: int = 0
    degree: float = 1.0  # the poly decay's power: 1, a linear decay to 0, in BERT's and MLPerf's runs

    @classmethod
    def from_flags(cls, learning_rate: float, max_steps: float, warmup_proportion: float, warmup_steps: int,
                   start_warmup_step: int) -> LrSchedule:
        return cls(learning_rate, warmup_steps_for(max_steps, warmup_proportion, warmup_steps), max_steps,
                   warmup_start_for(warmup_steps, start_warmup_step))

    def at(self, step: int) -> float:
        """The rate of the next update after `step` applied ones (`lr_at`)."""
        return lr_at(step, self.base_lr, self.warmup_steps, self.total_steps, self.start_warmup_step, self.degree)
