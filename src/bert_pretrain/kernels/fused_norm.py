"""The post-LN sublayer's output, LayerNorm(dropout(h + h_bias) + residual), as one Triton kernel each way
(h: the sublayer's dense output without its bias).

Why: in the H200 profiles (BERT-large, 512, bf16; benchmarks/results/profile_*_2026-11-26.md) the
kernels Inductor generates for this (two per layer forward, two backward) took 0.08 ms per call with
16k tokens per micro-batch, about 2 TB/s if they move 9 bytes per element, and 1.33 ms for the backward
with 65k tokens, 4x more per token, where a memory-bound kernel should run near the memory's 4.8 TB/s
at any size. This kernel pair is written to the byte count:

- forward, tiles of a few rows: read h and the residual, add the bias, draw the dropout mask from a
  counter-based random stream (Philox, four numbers per call: fused_norm_kernels._keep), write
  z = dropout(h + h_bias) + residual (rounded to the compute dtype, as the unfused code rounds it),
  y = LayerNorm(z) with statistics in fp32, and the mask as one byte per element: 9 bytes per element
  in bf16;
- backward, each program a strided set of tiles: read dy, z and the mask, write the gradients of the
  residual and of h (the residual's times the mask); the gradients of the LayerNorm's weight and bias
  and of h's bias (sums over rows, which the unfused backward reads the gradients again for) are summed
  per program in fp32 registers and the programs' partial sums added by one small reduction (no
  atomics, so the result does not depend on scheduling). 9 bytes per element in bf16.

One cost the fusion adds: y feeds both the next dense layer and the next residual, so autograd sums
their two gradients with an add kernel of its own (6 bytes per element), which Inductor's unfused
backward folds into its LayerNorm kernel. Storing the mask costs 2 bytes per element over both passes; drawing it again in the backward would
cost a second round of Philox, whose integer work per element we estimate at about the memory time.
The same math as `model._DenseNorm` (mean, variance and normalisation in fp32, output in the input's
dtype); only the dropout mask comes from another random stream. The two kernels are registered as
custom operators with their autograd formula, so `torch.compile` treats them as opaque calls.
Requires Triton (CUDA; `TRITON_INTERPRET=1` runs them on the CPU, slowly, for tests).
"""

from __future__ import annotations

import functools
import importlib
import sys

import torch

from bert_pretrain.errors import InputError

_MAX_ELEMENTS = 2**31 - 1  # the kernels index elements with 32-bit integers
BYTES_PER_ELEMENT = 18  # both kernels together in bf16 (9 bytes each, see above), for the rate they reach


def require(device: torch.device) -> None:
    """Raise the user-facing error for `--fused_norm` where the kernels cannot run on `device`."""
    reason = unavailable_reason(device)
    if reason:
        raise InputError(f"--fused_norm {reason}; run without --fused_norm")


def unavailable_reason(device: torch.device) -> str | None:
    """None when the fused kernels can run on `device`, else why not."""
    import importlib.util
    import os

    if importlib.util.find_spec("triton") is None:
        return "needs the triton package"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "needs a CUDA device (or TRITON_INTERPRET=1)"
    return None


def dropout_add_layer_norm(h: torch.Tensor, h_bias: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor, eps: float, dropout_p: float) -> torch.Tensor:
    """LayerNorm(dropout(h + h_bias, dropout_p) + residual) over the last dimension, in h's dtype.

    h_bias is the bias of the dense layer that made h (computed without it): added here, and its
    gradient summed in the backward kernel, it costs no pass of its own."""
    if h.shape != residual.shape or h.dtype != residual.dtype:
        raise ValueError(f"h {tuple(h.shape)} {h.dtype} and residual {tuple(residual.shape)} {residual.dtype} "
                         "must have the same shape and dtype")
    width = h.shape[-1]
    if h.numel() > _MAX_ELEMENTS:
        raise ValueError(f"{h.numel()} elements exceed the fused kernels' 32-bit element index; "
                         "use smaller micro-batches")
    if dropout_p > 0.0:
        # Philox takes a 64-bit key: 62 random bits make two calls sharing a mask (same seed, same shape)
        # unlikely over any run (31 bits would repeat a seed within about 2**16 calls, ~1,400 steps)
        seed = torch.randint(0, 2**62, (1,), device=h.device, dtype=torch.int64)
    else:
        seed = torch.zeros(1, device=h.device, dtype=torch.int64)
    # contiguous: the kernels index rows as row * width (a no-op for a dense layer's output)
    y = _forward(h.reshape(-1, width).contiguous(), h_bias.contiguous(), residual.reshape(-1, width).contiguous(),
                 weight.contiguous(), bias.contiguous(), seed, float(dropout_p), float(eps))[0]
    return y.view(h.shape)


@torch.library.custom_op("bert_pretrain::dropout_add_layer_norm", mutates_args=())
def _forward(h: torch.Tensor, h_bias: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
             seed: torch.Tensor, dropout_p: float,
             eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, z, mean, rstd, keep) for contiguous (N, H) inputs; the rest is kept for the backward. keep:
    the dropout mask as (N, H) uint8, or an empty tensor without dropout."""
    rows, width = h.shape
    y, z, keep = torch.empty_like(h), torch.empty_like(h), _empty_mask(h, dropout_p)
    mean = torch.empty(rows, device=h.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    if rows:
        tile_rows, block, warps = _tile(width, elements=2048)
        _kernels().fused_norm_forward[(_cdiv(rows, tile_rows),)](
            h, h_bias, residual, weight, bias, y, z, mean, rstd, seed, keep, rows, width,
            dropout_p, _keep_scale(dropout_p), eps, APPLY_DROPOUT=dropout_p > 0.0, ROWS=tile_rows, BLOCK=block,
            num_warps=warps)
    return y, z, mean, rstd, keep


@_forward.register_fake
def _(h, h_bias, residual, weight, bias, seed, dropout_p, eps):
    rows = h.shape[0]
    return (torch.empty_like(h), torch.empty_like(h), h.new_empty((rows,), dtype=torch.float32),
            h.new_empty((rows,), dtype=torch.float32), _empty_mask(h, dropout_p))


def _empty_mask(h: torch.Tensor, dropout_p: float) -> torch.Tensor:
    return torch.empty(h.shape if dropout_p > 0.0 else (0,), device=h.device, dtype=torch.uint8)


@torch.library.custom_op("bert_pretrain::dropout_add_layer_norm_backward", mutates_args=())
def _backward(dy: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
              keep: torch.Tensor, dropout_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                             torch.Tensor, torch.Tensor]:
    """(d residual, d h, d h_bias, d weight, d bias)."""
    rows, width = z.shape
    d_residual, d_h = torch.empty_like(z), torch.empty_like(z)
    tile_rows, block, warps = _tile(width, elements=1024)
    kernel = _kernels().fused_norm_backward
    # args[8], the partial sums, is sized by the grid: `mean` (fp32 too) stands in while the grid is found.
    args = [dy.contiguous(), z, weight, mean, rstd, keep, d_residual, d_h, mean, rows, width, _keep_scale(dropout_p)]
    options = dict(APPLY_DROPOUT=dropout_p > 0.0, ROWS=tile_rows, BLOCK=block, num_warps=warps)
    programs = max(min(_cdiv(rows, tile_rows), _resident_programs(kernel, args, z.device, options)), 1)
    # Each program's sums over its rows of the gradients of weight, bias and h_bias (every program writes
    # its three rows whole, so no zeroing pass), added up below.
    allocate = torch.empty if rows else torch.zeros
    args[8] = partials = allocate(3, programs, width, device=z.device, dtype=torch.float32)
    if rows:
        kernel[(programs,)](*args, **options)
    d_weight, d_bias, d_h_bias = (part.sum(0).to(weight.dtype) for part in partials)  # three tensors, no views
    return d_residual, d_h, d_h_bias, d_weight, d_bias


@_backward.register_fake
def _(dy, z, weight, mean, rstd, keep, dropout_p):
    return (torch.empty_like(z), torch.empty_like(z), torch.empty_like(weight), torch.empty_like(weight),
            torch.empty_like(weight))


def _setup_context(ctx, inputs, output):
    _, h_bias, _, weight, _, _, dropout_p, _ = inputs
    _, z, mean, rstd, keep = output
    ctx.save_for_backward(z, weight, mean, rstd, keep)
    ctx.dropout_p, ctx.h_bias_dtype = dropout_p, h_bias.dtype


def _autograd_backward(ctx, dy, _dz, _dmean, _drstd, _dkeep):
    z, weight, mean, rstd, keep = ctx.saved_tensors
    d_residual, d_h, d_h_bias, d_weight, d_bias = _backward(dy, z, weight, mean, rstd, keep, ctx.dropout_p)
    return d_h, d_h_bias.to(ctx.h_bias_dtype), d_residual, d_weight, d_bias, None, None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _keep_scale(dropout_p: float) -> float:
    return 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _tile(width: int, elements: int) -> tuple[int, int, int]:
    """(rows per tile, BLOCK, warps) for tiles of about `elements`, 8 per thread (one 16-byte load of
    bf16 each). BLOCK is the width rounded up to a power of two, at least 16 (the dropout draws come in
    fours). For BERT's 1024: 2 x 1024 forward (the weight loaded once per 2 rows), 1 x 1024 backward
    (fewer registers per program, so more programs per multiprocessor; ptxas for sm_90: 96 registers
    at 4 warps, against 146 for 4 x 1024 at 8 warps)."""
    block = max(1 << (width - 1).bit_length(), 16)
    rows = max(1, elements // block)
    return rows, block, min(16, max(1, rows * block // 256))


# (device, dtype, options) -> (backward programs that fit at once, "compiled kernel" or "guess")
_RESIDENT: dict[tuple, tuple[int, str]] = {}


def _resident_programs(kernel, args: list, device: torch.device, options: dict) -> int:
    """How many backward programs the GPU holds at once: the grid of a persistent kernel, so that all
    start together and end together (one more round for a few programs would take as long as a full
    one). From the compiled kernel's registers and shared memory, as Triton's fused-softmax tutorial
    sizes its persistent grid (`args`: the launch's arguments, any fp32 tensor standing in for the
    partial sums); 4 per multiprocessor should that API differ; 8 under TRITON_INTERPRET."""
    if device.type != "cuda":
        return 8
    key = (device.index, args[1].dtype, tuple(sorted(options.items())))
    if key not in _RESIDENT:
        import triton

        properties = triton.runtime.driver.active.utils.get_device_properties(device.index)
        try:
            compiled = kernel.warmup(*args, grid=(1,), **options)  # compiles, launches nothing
            compiled._init_handles()
            threads = 32 * options["num_warps"]
            # registers are handed out per warp in units of 256, i.e. per thread in multiples of 8; and a
            # multiprocessor holds at most 2048 threads and 32 programs
            registers = -(-compiled.n_regs // 8) * 8
            fits = min(properties["max_num_regs"] // (registers * threads), 2048 // threads, 32)
            if compiled.metadata.shared:
                fits = min(fits, properties["max_shared_mem"] // compiled.metadata.shared)
            source = "compiled kernel"
        except Exception:  # noqa: BLE001  another Triton's API: a guess (the launch itself still checks)
            fits, source = 4, "guess"
        _RESIDENT[key] = (max(fits, 1) * properties["multiprocessor_count"], source)
    return _RESIDENT[key][0]


@functools.lru_cache(maxsize=None)
def _kernels():
    """fused_norm_kernels, imported on first use: Triton is optional, and reads TRITON_INTERPRET when a
    kernel is defined (so a cleared cache re-imports the module: tests switch between the two modes)."""
    name = "bert_pretrain.kernels.fused_norm_kernels"
    return importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
