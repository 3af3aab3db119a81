"""The Triton kernels of fused_norm.py (see there for what they compute and why); imported only when used.

Module-level functions on purpose: Triton's interpreter (TRITON_INTERPRET=1) swaps `tl` in a
kernel's globals, which it cannot do for a name captured in a closure.
"""

import triton
import triton.language as tl


@triton.jit
def _keep(seed_ptr, row, dropout_p, BLOCK: tl.constexpr):
    """The dropout keep mask of one row's BLOCK elements, the same in the forward and the backward.

    One Philox call gives four numbers (`rand4x`), so a row takes BLOCK / 4 calls at counters
    row * BLOCK / 4 + j (unique per element); element 4j + m takes the m-th number of call j.
    `tl.rand` would make one call per element and use a quarter of it: four times the integer work,
    which at BERT-large's sizes costs about as much as the kernel's memory traffic.
    """
    quarter: tl.constexpr = BLOCK // 4
    u0, u1, u2, u3 = tl.rand4x(tl.load(seed_ptr), row * quarter + tl.arange(0, quarter))
    uniform = tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), (BLOCK,))
    return uniform >= dropout_p


@triton.jit
def forward(h_ptr, residual_ptr, weight_ptr, bias_ptr, y_ptr, z_ptr, mean_ptr, rstd_ptr, seed_ptr,
            width, dropout_p, keep_scale, eps, APPLY_DROPOUT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < width
    index = row * width + cols  # < 2**31, checked by the caller
    h = tl.load(h_ptr + index, mask=inside, other=0.0).to(tl.float32)
    if APPLY_DROPOUT:
        h = tl.where(_keep(seed_ptr, row, dropout_p, BLOCK), h * keep_scale, 0.0)
    residual = tl.load(residual_ptr + index, mask=inside, other=0.0).to(tl.float32)
    z = (h + residual).to(z_ptr.dtype.element_ty)  # rounded as the unfused code's sum is
    tl.store(z_ptr + index, z, mask=inside)
    z = z.to(tl.float32)
    mean = tl.sum(z, axis=0) / width
    centred = tl.where(inside, z - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / width + eps)
    weight = tl.load(weight_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    y = centred * rstd * weight + bias
    tl.store(y_ptr + index, y.to(y_ptr.dtype.element_ty), mask=inside)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)

@triton.jit
def backward(dy_ptr, z_ptr, weight_ptr, mean_ptr, rstd_ptr, seed_ptr, d_residual_ptr, d_h_ptr,
             partial_weight_ptr, partial_bias_ptr, rows, width, dropout_p, keep_scale,
             APPLY_DROPOUT: tl.constexpr, BLOCK: tl.constexpr):
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < width
    weight = tl.load(weight_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    d_weight = tl.zeros([BLOCK], dtype=tl.float32)
    d_bias = tl.zeros([BLOCK], dtype=tl.float32)
    for row in range(program, rows, tl.num_programs(0)):
        index = row * width + cols
        dy = tl.load(dy_ptr + index, mask=inside, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + index, mask=inside, other=0.0).to(tl.float32)
        normalized = tl.where(inside, (z - tl.load(mean_ptr + row)) * tl.load(rstd_ptr + row), 0.0)
        weighted = dy * weight
        c_normalized = tl.sum(normalized * weighted, axis=0) / width
        c_mean = tl.sum(weighted, axis=0) / width
        dz = (weighted - normalized * c_normalized - c_mean) * tl.load(rstd_ptr + row)
        d_weight += dy * normalized
        d_bias += dy
        tl.store(d_residual_ptr + index, dz.to(d_residual_ptr.dtype.element_ty), mask=inside)
        if APPLY_DROPOUT:
            dz = tl.where(_keep(seed_ptr, row, dropout_p, BLOCK), dz * keep_scale, 0.0)
        tl.store(d_h_ptr + index, dz.to(d_h_ptr.dtype.element_ty), mask=inside)
    tl.store(partial_weight_ptr + program * width + cols, d_weight, mask=inside)
    tl.store(partial_bias_ptr + program * width + cols, d_bias, mask=inside)
