"""Scaled dot-product attention behind one function, for the padded and the packed layout.

Backends:
  "sdpa"  PyTorch's `scaled_dot_product_attention` (flash / memory-efficient / math, chosen by PyTorch)
  "math"  softmax(QK^T / sqrt(d) + mask) V written out: the numerical reference for tests

Padded input is (B, T, heads, d) with a key-padding mask (B, T). Packed input is (N, heads, d)
with `cu_seqlens`; without a variable-length kernel it is gathered into a padded (B, max_seqlen)
view on the device, attended, and scattered back (no host synchronisation: `max_seqlen` is a
Python int).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "math")


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
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, T, d)
    if backend == "math":
        out = _math_attention(q, k, v, key_mask, dropout_p)
    elif backend == "sdpa":
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    else:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    return out.transpose(1, 2)


def packed_attention(q, k, v, cu_seqlens, max_seqlen: int, backend: str = "sdpa", dropout_p: float = 0.0):
    """q, k, v: (N, heads, d) packed sequences; cu_seqlens: (B+1,) int. Returns (N, heads, d)."""
    num_tokens = q.shape[0]
    starts = cu_seqlens[:-1].long()  # (B,)
    lengths = cu_seqlens[1:].long() - starts  # (B,)
    offsets = torch.arange(max_seqlen, device=q.device)  # (S,)
    valid = offsets[None, :] < lengths[:, None]  # (B, S)
    index = (starts[:, None] + offsets[None, :]).clamp(max=num_tokens - 1)  # (B, S)
    padded = [x[index] for x in (q, k, v)]  # each (B, S, heads, d)
    out = padded_attention(*padded, valid, backend=backend, dropout_p=dropout_p)  # (B, S, heads, d)
    return out[valid]  # (N, heads, d): row-major over (B, S) keeps the packed order
