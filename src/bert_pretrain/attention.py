"""Scaled dot-product attention behind one function, for the padded and the packed layout.

Padded input is (B, T, heads, d) with a key-padding mask (B, T). Packed input is (N, heads, d):
sequences laid end to end, `cu_seqlens` (B+1,) int32 offsets, `max_seqlen` a Python int.

Backends (`BACKENDS`):
  "auto"        the fastest one that supports the call (`resolve_backend`): on CUDA with fp16/bf16
                packed input "flash_attn" when that package is installed, else "flash"; else "sdpa"
  "sdpa"        PyTorch `scaled_dot_product_attention`; packed input is gathered into a padded
                (B, max_seqlen) view on the device, attended, and gathered back
  "math"        softmax(QK^T / sqrt(d) + mask) V written out: the numerical reference for tests
  "flash"       PyTorch's variable-length flash kernel (`aten._flash_attention_forward` with
                `cu_seqlens`, the kernel behind nested-tensor SDPA and `varlen_attn`): no padding,
                attention dropout supported. CUDA, fp16/bf16, sm80+
  "varlen"      `torch.nn.attention.varlen.varlen_attn` (public API, PyTorch >= 2.9): the same
                kernel, but without attention dropout
  "flex"        FlexAttention with a document mask (one block mask per call); no dropout; fast only
                under `torch.compile`; on the CPU PyTorch runs its forward only
  "flash_attn"  the `flash-attn` package's `flash_attn_varlen_func`, when installed
The packed-only backends ("flash", "varlen", "flex", "flash_attn") run padded input through
"sdpa": there is no padding to skip there.

Which backend can run is decided at call time (device, dtype, dropout, installed packages),
never at import, so one code base runs on PyTorch 2.11 and 2.13, with or without a GPU.
Nothing here reads a tensor back to the host.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch
import torch.nn.functional as F

from bert_pretrain import devices

BACKENDS = ("auto", "sdpa", "math", "flash", "varlen", "flex", "flash_attn")
PACKED_ONLY = ("flash", "varlen", "flex", "flash_attn")
_HALF = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)  # resolution runs every forward; installed packages do not change
def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _flash_capable(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the flash kernels cannot run here, or None when they can."""
    if device.type != "cuda":
        return "needs a CUDA device"
    if dtype not in _HALF:
        return f"needs fp16/bf16 inputs, got {dtype}"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "needs an sm80+ GPU (A100, H100, ...)"
    if head_dim > 256 or head_dim % 8:
        return f"needs a head size that is a multiple of 8 up to 256, got {head_dim}"
    return None


def unsupported_reason(backend: str, device: torch.device, dtype: torch.dtype, dropout_p: float,
                       head_dim: int = 64) -> str | None:
    """Why `backend` cannot run packed attention with these inputs, or None when it can."""
    if backend not in BACKENDS:
        return f"unknown attention backend {backend!r}; choose one of {BACKENDS}"
    if backend in ("auto", "sdpa", "math"):
        return None
    if backend in ("varlen", "flex") and dropout_p > 0.0:
        return f"'{backend}' has no attention dropout (dropout_p={dropout_p}); use 'flash' or 'sdpa'"
    if backend == "flex":
        return None if _module_exists("torch.nn.attention.flex_attention") else "needs PyTorch >= 2.5"
    reason = _flash_capable(device, dtype, head_dim)
    if reason:
        return reason
    if backend == "flash" and not (hasattr(torch.ops.aten, "_flash_attention_forward")
                                   and torch.backends.cuda.is_flash_attention_available()):
        return "this PyTorch build has no flash attention"
    if backend == "varlen" and not _module_exists("torch.nn.attention.varlen"):
        return "needs PyTorch >= 2.9 (torch.nn.attention.varlen)"
    if backend == "flash_attn" and not _module_exists("flash_attn"):
        return "the flash-attn package is not installed"
    return None


def attention_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the attention inputs will have: the autocast dtype under autocast, else x's."""
    return devices.autocast_dtype(x.device.type) or x.dtype


@torch.compiler.disable
def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype, dropout_p: float = 0.0,
                    packed: bool = True, head_dim: int = 64) -> str:
    """The concrete backend for a call: "auto" picks the fastest that can run; others are checked.

    `dtype` is the dtype attention will see (the autocast dtype under autocast). Raises
    ValueError naming the reason when an explicitly chosen backend cannot run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if not packed:
        return "math" if backend == "math" else "sdpa"
    reason = unsupported_reason(backend, device, dtype, dropout_p, head_dim)
    if reason:
        raise ValueError(f"attention backend {backend!r}: {reason}")
    if backend != "auto":
        return backend
    for candidate in ("flash_attn", "flash"):
        if unsupported_reason(candidate, device, dtype, dropout_p, head_dim) is None:
            return candidate
    return "sdpa"


def _math_attention(q, k, v, key_mask, dropout_p: float):
    """q, k, v: (B, heads, T, d); key_mask: (B, T) bool or None. Returns (B, heads, T, d)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, h, T, T)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


def padded_attention(q, k, v, key_mask, backend: str = "sdpa", dropout_p: float = 0.0):
    """q, k, v: (B, T, heads, d); key_mask: (B, T) bool, True on real tokens. Returns (B, T, heads, d)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, T, d)
    if backend == "math":
        out = _math_attention(q, k, v, key_mask, dropout_p)
    else:
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out.transpose(1, 2)


def _padded_indices(cu_seqlens, max_seqlen: int, num_tokens: int):
    """Where the packed stream (N,) goes in a padded grid (B, S=max_seqlen).

    Returns `valid` (B, S) bool: cells holding a real token, and `cell` (N,): each token's index in
    the flattened grid. Tensor arithmetic only, so no host synchronisation.
    """
    cu = cu_seqlens.long()
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]  # (B,)
    valid = torch.arange(max_seqlen, device=cu.device)[None, :] < lengths[:, None]  # (B, S)
    token = torch.arange(num_tokens, device=cu.device)  # (N,)
    sequence = torch.searchsorted(cu[1:], token, right=True)  # (N,)
    return valid, sequence * max_seqlen + token - starts[sequence]


def _gathered_attention(q, k, v, cu_seqlens, max_seqlen: int, backend: str, dropout_p: float):
    """Packed attention through a padded view: for "sdpa" and "math".

    Tokens are copied into a zero grid with `index_copy` (its backward is a plain gather) and read
    back with `index_select` (one cell per token), avoiding accumulating scatters in the backward.
    """
    num_tokens, heads, head_dim = q.shape
    valid, cell = _padded_indices(cu_seqlens, max_seqlen, num_tokens)
    grid = (valid.shape[0] * max_seqlen, heads, head_dim)
    padded = [x.new_zeros(grid).index_copy(0, cell, x).view(*valid.shape, heads, head_dim) for x in (q, k, v)]
    out = padded_attention(*padded, valid, backend=backend, dropout_p=dropout_p)  # (B, S, heads, d)
    return out.reshape(grid).index_select(0, cell)  # (N, heads, d)


def _flex_attention(q, k, v, cu_seqlens):
    """FlexAttention over the whole stream with a mask that keeps each token inside its sequence."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    num_tokens = q.shape[0]
    token = torch.arange(num_tokens, device=q.device)
    document = torch.searchsorted(cu_seqlens[1:].long(), token, right=True)  # (N,) sequence of each token

    def same_sequence(batch, head, q_index, kv_index):
        return document[q_index] == document[kv_index]

    block_mask = create_block_mask(same_sequence, None, None, num_tokens, num_tokens, device=q.device)
    q, k, v = (x.transpose(0, 1)[None] for x in (q, k, v))  # (1, heads, N, d)
    return flex_attention(q, k, v, block_mask=block_mask)[0].transpose(0, 1)  # (N, heads, d)


def packed_attention(q, k, v, cu_seqlens, max_seqlen: int, backend: str = "sdpa", dropout_p: float = 0.0):
    """q, k, v: (N, heads, d) packed sequences; cu_seqlens: (B+1,) int32. Returns (N, heads, d).

    Tokens attend only within their own sequence. Every token must lie in some sequence
    (cu_seqlens[0] == 0, cu_seqlens[-1] == N) and no sequence may be empty.
    """
    if backend == "auto" or backend not in BACKENDS:
        backend = resolve_backend(backend, q.device, q.dtype, dropout_p, True, q.shape[-1])
    if backend in ("sdpa", "math"):
        return _gathered_attention(q, k, v, cu_seqlens, max_seqlen, backend, dropout_p)
    if backend == "flash":
        # The op has an autograd formula and draws its dropout mask from PyTorch's CUDA generator.
        return torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, False, False
        )[0]
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p=dropout_p)
    if dropout_p > 0.0:  # varlen and flex have none: never train silently without it
        raise ValueError(f"attention backend {backend!r} has no attention dropout (dropout_p={dropout_p})")
    if backend == "varlen":
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    return _flex_attention(q, k, v, cu_seqlens)
