"""Process-group setup and the few collectives the project uses; all are no-ops in a single process.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) `init_distributed` joins the
group; otherwise the run is one process and every helper here returns the local value.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bert_pretrain import devices
from bert_pretrain.errors import InputError
from bert_pretrain.parent_death import LAUNCHER_PID_VARIABLE, die_with_parent


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """'auto' picks this process's accelerator device when there is one (CUDA, XPU, MPS, ...), else the CPU."""
    return devices.resolve(requested, local_rank)


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: float = 600.0) -> DistInfo:
    """Join the torchrun process group if there is one; choose this process's device.

    `backend` defaults to torch.distributed's backend for the device type (nccl on CUDA, gloo on the CPU,
    xccl on XPU, a plug-in's own, e.g. hccl). The timeout bounds how long a collective
    waits for a dead peer before every survivor fails with an error instead of hanging.
    """
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker: it stops when its launcher is killed outright
        launcher = os.environ.get(LAUNCHER_PID_VARIABLE, "")
        die_with_parent(int(launcher) if launcher.isdigit() else None)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    devices.set_current(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or devices.process_group_backend(resolved)
        if backend not in devices.known_backends():
            raise InputError(f"--dist_backend {backend}: not a collective backend this PyTorch knows; use one of "
                             f"{', '.join(devices.known_backends())}, or leave it out for {resolved.type}'s default")
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=resolved if backend == "nccl" else None,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place; returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value, src: int = 0):
    """`value` as rank `src` has it, on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(value) -> list:
    """Every process's `value` (picklable), in rank order; `[value]` without a process group."""
    if not is_distributed():
        return [value]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, value)
    return everyone


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
