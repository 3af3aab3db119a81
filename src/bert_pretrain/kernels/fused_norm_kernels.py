"""The Triton kernels of fused_norm.py (see there for what they compute and why); imported only when used.

Named fused_norm_* so that profiles tell them apart (step_profile counts them on their own). Both
kernels work on tiles of ROWS rows x BLOCK columns (BLOCK: the row width rounded up to a power of
two; fused_norm._tile picks the shapes). Module-level functions on purpose: Triton's interpreter
(TRITON_INTERPRET=1) swaps `tl` in a kernel's globals, which it cannot do for a name captured in a
closure.
"""

import triton
import triton.language as tl


@triton.jit
def _keep(seed_ptr, rows, dropout_p, BLOCK: tl.constexpr):
    """The dropout keep mask of the given rows' BLOCK elements each.

    One Philox call gives four numbers (`rand4x`), so a row takes BLOCK / 4 calls at counters
    row * BLOCK / 4 + j (unique per element); element 4j + m takes the m-th number of call j.
    `tl.rand` would make one call per element and use a quarter of it: four times the integer work,
    which by our estimate would take about as long as the kernel's memory traffic.
    """
    quarter: tl.constexpr = BLOCK // 4
    counters = rows[:, None] * quarter + tl.arange(0, quarter)[None, :]
    u0, u1, u2, u3 = tl.rand4x(tl.load(seed_ptr), counters)
    uniform = tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), (rows.shape[0], BLOCK))
    return uniform >= dropout_p


@triton.jit
def fused_norm_forward(h_ptr, h_bias_ptr, residual_ptr, weight_ptr, bias_ptr, y_ptr, z_ptr, mean_ptr, rstd_ptr,
                       seed_ptr, keep_ptr, n_rows, width, dropout_p, keep_scale, eps,
                       APPLY_DROPOUT: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    inside = (rows < n_rows)[:, None] & (cols < width)[None, :]
    index = rows[:, None] * width + cols[None, :]  # < 2**31, checked by the caller
    h_bias = tl.load(h_bias_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + index, mask=inside, other=0.0).to(tl.float32) + h_bias[None, :]
    if APPLY_DROPOUT:
        keep = _keep(seed_ptr, rows, dropout_p, BLOCK)
        tl.store(keep_ptr + index, keep.to(tl.uint8), mask=inside)
        h = tl.where(keep, h * keep_scale, 0.0)
    residual = tl.load(residual_ptr + index, mask=inside, other=0.0).to(tl.float32)
    z = (h + residual).to(z_ptr.dtype.element_ty)  # rounded as the unfused code's sum is
    tl.store(z_ptr + index, z, mask=inside)
    z = z.to(tl.float32)
    mean = tl.sum(z, axis=1) / width
    centred = tl.where(inside, z - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / width + eps)
    weight = tl.load(weight_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
    y = centred * rstd[:, None] * weight[None, :] + bias[None, :]
    tl.store(y_ptr + index, y.to(y_ptr.dtype.element_ty), mask=inside)
    tl.store(mean_ptr + rows, mean, mask=rows < n_rows)
    tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)


@triton.jit
def fused_norm_backward(dy_ptr, z_ptr, weight_ptr, mean_ptr, rstd_ptr, keep_ptr, d_residual_ptr, d_h_ptr,
                        partials_ptr, n_rows, width, keep_scale,
                        APPLY_DROPOUT: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Each program takes every num_programs-th tile and sums its rows' gradients of the LayerNorm weight
    and bias and of h's bias into partials[0], [1] and [2] at its own row."""
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    weight = tl.load(weight_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
    d_weight = tl.zeros([BLOCK], dtype=tl.float32)
    d_bias = tl.zeros([BLOCK], dtype=tl.float32)
    d_h_bias = tl.zeros([BLOCK], dtype=tl.float32)
    for tile in range(program, tl.cdiv(n_rows, ROWS), tl.num_programs(0)):
        rows = tile * ROWS + tl.arange(0, ROWS)
        inside = (rows < n_rows)[:, None] & (cols < width)[None, :]
        index = rows[:, None] * width + cols[None, :]
        dy = tl.load(dy_ptr + index, mask=inside, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + index, mask=inside, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=rows < n_rows, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rows < n_rows, other=0.0)
        normalized = tl.where(inside, (z - mean[:, None]) * rstd[:, None], 0.0)
        weighted = dy * weight[None, :]
        c_normalized = tl.sum(normalized * weighted, axis=1) / width
        c_mean = tl.sum(weighted, axis=1) / width
        dz = (weighted - normalized * c_normalized[:, None] - c_mean[:, None]) * rstd[:, None]
        d_weight += tl.sum(dy * normalized, axis=0)
        d_bias += tl.sum(dy, axis=0)
        tl.store(d_residual_ptr + index, dz.to(d_residual_ptr.dtype.element_ty), mask=inside)
        if APPLY_DROPOUT:
            keep = tl.load(keep_ptr + index, mask=inside, other=0)
            dz = tl.where(keep != 0, dz * keep_scale, 0.0)
        d_h_bias += tl.sum(dz, axis=0)
        tl.store(d_h_ptr + index, dz.to(d_h_ptr.dtype.element_ty), mask=inside)
    at = partials_ptr + program * width + cols
    stride = tl.num_programs(0) * width
    tl.store(at, d_weight, mask=cols < width)
    tl.store(at + stride, d_bias, mask=cols < width)
    tl.store(at + 2 * stride, d_h_bias, mask=cols < width)
