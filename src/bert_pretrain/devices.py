"""What differs between devices: the one module that asks PyTorch about accelerators.

Which device a process uses and how many there are, the process-group backend, synchronisation, peak
memory, random states, whether batches go through pinned host memory, and the device's name. Each asks
`torch.accelerator` (torch 2.6+), which serves CUDA, ROCm (as "cuda"), XPU, MPS and out-of-tree backends
(Ascend's "npu", Gaudi's "hpu", ...) alike, where the installed torch has the call, and the device's own
module (`torch.cuda`, `torch.xpu`, ...) where it does not: features are detected, versions never compared.

Only this module and the CUDA-only kernels (tests/test_layers.py lists them) name `torch.cuda`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from bert_pretrain.errors import InputError

# torch 2.5+ raises one out-of-memory type for every device; older ones, CUDA's (a subclass of it since).
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

# Unified memory: the host's pages are the device's, so there is no copy for pinning to speed up.
_UNIFIED_MEMORY = ("mps",)


def accelerator_type() -> str | None:
    """The accelerator this PyTorch drives and can see ('cuda', 'xpu', 'mps', 'npu', ...), None without one."""
    if hasattr(torch, "accelerator"):
        if not torch.accelerator.is_available():
            return None
        found = torch.accelerator.current_accelerator()
        return found.type if found is not None else None
    return "cuda" if torch.cuda.is_available() else None


def count() -> int:
    """How many accelerator devices this process sees (on CUDA, those CUDA_VISIBLE_DEVICES leaves), 0 without any:
    the launcher starts one process per device."""
    if hasattr(torch, "accelerator"):
        return torch.accelerator.device_count() if accelerator_type() is not None else 0
    return torch.cuda.device_count()


def resolve(requested: str, local_rank: int = 0) -> torch.device:
    """The device of `--device` for the process of this local rank: 'auto' is the accelerator when there is one,
    else the CPU; an accelerator's name without an index ('cuda', 'xpu') is its device number `local_rank`."""
    name = requested.strip()
    if name == "auto":
        name = accelerator_type() or "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        reason = str(err).splitlines()[0][:200]
        raise InputError(f"--device {requested}: not a device this PyTorch knows ({reason}); use auto, cpu or an "
                         "accelerator's name (cuda, xpu, mps, or a vendor's such as npu or hpu, with its PyTorch "
                         "plug-in installed)") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if not is_available(device.type):
        raise InputError(f"--device {requested} was asked for, but PyTorch sees no {device.type} device; "
                         "use --device auto or --device cpu")
    return device if device.index is not None else torch.device(device.type, local_rank)


def is_available(device_type: str) -> bool:
    """Whether PyTorch can run on a device of this type here."""
    if device_type == "cpu":
        return True
    if device_type == accelerator_type():
        return True
    module = getattr(torch, device_type, None)  # torch.cuda, torch.xpu, torch.mps, a plug-in's torch.npu, ...
    check = getattr(module, "is_available", None)
    return bool(check()) if callable(check) else False


def set_current(device: torch.device) -> None:
    """Make `device` this process's current device, where kernels and collectives go by default."""
    if device.type == "cpu":
        return
    if _generic(device, "set_device_index"):
        torch.accelerator.set_device_index(device.index if device.index is not None else 0)
    else:
        _module(device).set_device(device)


def synchronize(device: torch.device) -> None:
    """Wait until `device` has finished the work queued on it (for timing); nothing to wait for on the CPU."""
    if device.type == "cpu":
        return
    if _generic(device, "synchronize"):
        torch.accelerator.synchronize(device)
    else:
        _module(device).synchronize(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """The most bytes of tensors allocated on `device` since the process started or `reset_peak_memory`; None
    where the device does not count them (the CPU: see train/metrics.py)."""
    if device.type == "cpu":
        return None
    if _generic(device, "max_memory_allocated"):
        return int(torch.accelerator.max_memory_allocated(device.index))
    read = getattr(_module(device), "max_memory_allocated", None)
    return int(read(device)) if callable(read) else None


def reset_peak_memory(device: torch.device) -> None:
    """Start `peak_memory_bytes` again from what is allocated now."""
    if device.type == "cpu":
        return
    if _generic(device, "reset_peak_memory_stats"):
        torch.accelerator.reset_peak_memory_stats(device.index)
        return
    reset = getattr(_module(device), "reset_peak_memory_stats", None)
    if callable(reset):
        reset(device)


def empty_cache(device: torch.device) -> None:
    """Give the allocator's cached, unused blocks on `device` back (between benchmark cases)."""
    if device.type == "cpu":
        return
    if _generic(device, "empty_cache"):
        torch.accelerator.empty_cache()
        return
    release = getattr(_module(device), "empty_cache", None)
    if callable(release):
        release()


def process_group_backend(device: torch.device) -> str:
    """torch.distributed's default collective backend for this device type: nccl on CUDA (and ROCm's RCCL under
    the same name), gloo on the CPU, and what the installed torch or the vendor's plug-in registered for the
    others (xccl on XPU, hccl on Ascend and Gaudi)."""
    known = getattr(dist.Backend, "default_device_backend_map", {})
    return known.get(device.type, "nccl" if device.type == "cuda" else "gloo")


def known_backends() -> tuple[str, ...]:
    """The collective backends this torch knows, plug-ins' included (for `--dist_backend`)."""
    return tuple(b for b in getattr(dist.Backend, "backend_list", ["gloo", "nccl", "mpi"]) if b != "undefined")


def pins_host_memory(device: torch.device) -> bool:
    """Whether batches are staged in pinned host memory: for the accelerator, whose host-to-device copies run
    asynchronously from pinned pages (`Tensor.pin_memory` pins for it), not for the CPU or unified memory."""
    return device.type not in ("cpu", *_UNIFIED_MEMORY) and device.type == accelerator_type()


def rng_state(device: torch.device) -> torch.Tensor | None:
    """`device`'s random generator state (dropout masks), None on the CPU (torch's CPU state holds it)."""
    if device.type == "cpu":
        return None
    read = getattr(_module(device), "get_rng_state", None)
    return read(device) if callable(read) else None


def set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cpu":
        return
    _module(device).set_rng_state(state, device)


def name(device: torch.device) -> str:
    """The device's product name (e.g. 'NVIDIA H100 80GB HBM3'), 'CPU' on the CPU."""
    if device.type == "cpu":
        return "CPU"
    read = getattr(_module(device), "get_device_name", None)
    return read(device) if callable(read) else device.type.upper()


def autocast_type(device: torch.device) -> str:
    """The device type torch.autocast and GradScaler take for `device`; a clear error where this PyTorch has no
    mixed precision for it."""
    available = getattr(torch.amp, "is_autocast_available", None)
    if callable(available) and not available(device.type):
        raise InputError(f"--device {device.type}: this PyTorch has no autocast for {device.type}, so --fp16, --bf16 "
                         "and --fp8 cannot run there; train in fp32 (leave them out)")
    return device.type


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast gives matrix products on this device type now, None outside autocast."""
    available = getattr(torch.amp, "is_autocast_available", None)
    if callable(available) and not available(device_type):
        return None
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _generic(device: torch.device, call: str) -> bool:
    """Whether torch.accelerator has `call` and drives `device` (it serves the current accelerator only)."""
    accelerator = getattr(torch, "accelerator", None)
    return hasattr(accelerator, call) and device.type == accelerator_type()


def _module(device: torch.device):
    """The device type's own module: torch.cuda, torch.xpu, torch.mps, a plug-in's torch.npu or torch.hpu."""
    module = getattr(torch, device.type, None)
    if module is None:
        raise InputError(f"--device {device.type}: this PyTorch has no torch.{device.type} module; install the "
                         "device's PyTorch plug-in or use --device cpu")
    return module
