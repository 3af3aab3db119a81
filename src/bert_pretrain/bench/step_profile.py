"""Where a training step's time goes: `torch.profiler` over a few steps, summarised by kind of work.

On CUDA it sums the kernels' device time by category (GEMM, attention, compiled Triton kernels,
the optimizer's kernels (multi-tensor or compiled), eager elementwise/reduction kernels, copies) and reports how
busy the GPU was over the profiled wall time: a busy fraction well below 1 means the host, not the
GPU, sets the pace. On the CPU it sums the operators' self time by the same categories.
`bert-pretrain bench --profile DIR` uses it; the numbers say which optimisation can pay.
"""

from __future__ import annotations

import gzip
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bert_pretrain import devices
from bert_pretrain.atomic import atomic_path

# First match wins, so this project's fused LayerNorm kernels (fused_norm.py) are told apart from
# Inductor's, attention (flash kernels can carry "gemm"-like names) is tested before GEMMs, and the
# compiled LAMB's Triton kernels (named after the ops they fuse: sqrt(v), the trust ratio's norms; no
# compiled model kernel has these, LayerNorm's show up as native_layer_norm) before the others.
CATEGORIES = (
    ("fused norm (triton)", re.compile(r"^fused_norm_|dropout_add_layer_norm")),  # fused_norm.py's kernels and ops
    ("attention", re.compile(r"flash|fmha|attention|attn", re.I)),
    ("optimizer", re.compile(r"multi_tensor|foreach|lamb|amp_update_scale|non_finite|Optimizer\.|"
                             r"^triton_\w*_(sqrt|linalg_vector_norm)(_|$)", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|wgmma|(^|::)(_scaled_mm|mm|addmm|bmm|linear|matmul)\b", re.I)),
    ("compiled (triton)", re.compile(r"^triton_|torchinductor|CompiledFunction|CompiledFxGraph|Torch-Compiled", re.I)),
    ("copy / fill", re.compile(r"memcpy|memset|copy|fill|^aten::(to|_to_copy|zero_|zeros|empty)", re.I)),
    ("loss / softmax", re.compile(r"softmax|nll|cross_entropy|argmax", re.I)),
    ("embedding / index", re.compile(r"embedding|index|gather|scatter", re.I)),
)
OTHER = "other elementwise / reduction"


def category(name: str) -> str:
    """The kind of work a kernel or operator name stands for."""
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return OTHER


def _device_rows(averages) -> list[tuple[str, float, int]]:
    """(kernel name, seconds, launches) of the GPU work.

    Kernel rows carry device time and no CPU time. Should a PyTorch version list no such rows, the
    operators' self device time (the kernels each launched itself) is used instead: it also adds up
    without double counting.
    """
    def rows(keep):
        return [(e.key, e.self_device_time_total / 1e6, e.count) for e in averages
                if e.self_device_time_total > 0 and keep(e) and not getattr(e, "is_user_annotation", False)]

    return rows(lambda e: e.self_cpu_time_total == 0) or rows(lambda e: True)


# On the CPU an operator's self time belongs to the work of its outermost enclosing call of these kinds:
# the per-tensor `mul_` inside `_foreach_mul_` is optimizer time, the `bmm` inside SDPA attention time.
_UMBRELLAS = ("optimizer", "attention", "loss / softmax")


def _cpu_rows(events) -> tuple[list[tuple[str, float, int]], dict[str, float]]:
    """Operators (name, self seconds, calls) and seconds by category; self times add up without double counting."""
    by_name: dict[str, list] = {}
    categories: dict[str, float] = {}
    for event in events:
        seconds = event.self_cpu_time_total / 1e6
        if seconds <= 0 or getattr(event, "is_user_annotation", False):
            continue
        label, parent = category(event.name), event.cpu_parent
        while parent is not None:
            if category(parent.name) in _UMBRELLAS:
                label = category(parent.name)
            parent = parent.cpu_parent
        categories[label] = categories.get(label, 0.0) + seconds
        entry = by_name.setdefault(event.name, [0.0, 0])
        entry[0] += seconds
        entry[1] += 1
    return [(name, seconds, calls) for name, (seconds, calls) in by_name.items()], categories


def profile_steps(run_step: Callable[[], object], steps: int, device: torch.device,
                  trace_path: str | Path | None = None, top: int = 12) -> dict:
    """Run `run_step` `steps` times under the profiler; the summary as a JSON-ready dict.

    Keys: `device_kind` ("cuda kernels" or "cpu operators"), `steps`, `wall_s`, `measured_s` (the summed
    kernel or operator time), `busy` (measured / wall, CUDA only), `categories` {name: seconds},
    `top` [[name, seconds, calls], ...]. With `trace_path`, a gzipped Chrome/Perfetto trace is written
    there (to a temporary name, renamed when complete).
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        devices.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            run_step()
        devices.synchronize(device)
        wall = time.perf_counter() - start
    if cuda:
        rows = _device_rows(profiler.key_averages())
        categories: dict[str, float] = {}
        for name, seconds, _ in rows:
            categories[category(name)] = categories.get(category(name), 0.0) + seconds
    else:
        rows, categories = _cpu_rows(profiler.events())
    rows.sort(key=lambda row: -row[1])
    measured = sum(seconds for _, seconds, _ in rows)
    if trace_path is not None:
        _write_trace(profiler, Path(trace_path))
    return {
        "device_kind": "cuda kernels" if cuda else "cpu operators",
        "steps": steps,
        "wall_s": wall,
        "measured_s": measured,
        "busy": measured / wall if cuda and wall > 0 else None,
        "categories": dict(sorted(categories.items(), key=lambda item: -item[1])),
        "top": [[name[:160], seconds, calls] for name, seconds, calls in rows[:top]],
    }


def _write_trace(profiler, path: Path) -> None:
    with tempfile.TemporaryDirectory() as folder, atomic_path(path) as tmp:
        raw = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(raw))
        with open(raw, "rb") as source, gzip.open(tmp, "wb") as target:
            shutil.copyfileobj(source, target)


def format_profile(summary: dict) -> str:
    """Markdown: time by category (share of the measured time), then the top kernels or operators."""
    measured = summary["measured_s"] or 1.0
    per_step = 1e3 / summary["steps"]
    lines = [f"Profile of {summary['steps']} step(s), {summary['device_kind']}: "
             f"wall {summary['wall_s'] * per_step:.1f} ms per step, measured {summary['measured_s'] * per_step:.1f} ms per step"
             + (f", GPU busy {summary['busy']:.0%} of the wall time" if summary.get("busy") is not None else ""),
             "", "| category | ms per step | share |", "|---|---:|---:|"]
    for name, seconds in summary["categories"].items():
        lines.append(f"| {name} | {seconds * per_step:.2f} | {seconds / measured:.1%} |")
    lines += ["", "| top kernels / operators | ms per step | calls per step | category |", "|---|---:|---:|---|"]
    for name, seconds, calls in summary["top"]:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{short}` | {seconds * per_step:.2f} | {calls / summary['steps']:.0f} | {category(name)} |")
    return "\n".join(lines)
