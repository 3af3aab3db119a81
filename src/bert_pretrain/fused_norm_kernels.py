"""The Triton kernels of fused_norm.py (see there for what they compute and why); imported only when used.

Module-level functions on purpose: Triton's interpreter (TRITON_INTERPRET=1) swaps `tl` in a
kernel's globals, which it cannot do for a name captured in a closure.
"""

import triton
import triton.language as tl


@triton.jit
def forward(h_ptr, residual_ptr, weight_ptr, bias_ptr, y_ptr, z_ptr, mean_ptr, rstd_ptr, seed_ptr,
            width, dropout_p, keep_scale, eps, APPLY_DROPOUT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < width
    index = row * width + cols  # < 2**31, checked by the caller
    h = tl.load(h_ptr + index, mask=inside, other=0.0).to(tl.float32)
    if APPLY_DROPOUT:
        keep = tl.rand(tl.load(seed_ptr), index) >= dropout_p
        h = tl.where(keep, h * keep_scale, 0.0)
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
            keep = tl.rand(tl.load(seed_ptr), index) >= dropout_p
            dz = tl.where(keep, dz * keep_scale, 0.0)
        tl.store(d_h_ptr + index, dz.to(d_h_ptr.dtype.element_ty), mask=inside)
    tl.store(partial_weight_ptr + program * width + cols, d_weight, mask=inside)
    tl.store(partial_bias_ptr + program * width + cols, d_bias, mask=inside)
