"""Every attention backend computes softmax(QK^T/sqrt(d))V within each sequence, as a float64 loop does."""

import math

import pytest
import torch

from bert_pretrain.attention import BACKENDS, packed_attention, padded_attention, resolve_backend, unsupported_reason

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def reference(q, k, v, lengths):
    """Per-sequence attention in float64 over packed (N, heads, d) inputs, written out."""
    out, start = [], 0
    for length in lengths:
        qs, ks, vs = (x[start:start + length].double().transpose(0, 1) for x in (q, k, v))  # (h, L, d)
        probs = torch.softmax(qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        out.append((probs @ vs).transpose(0, 1))
        start += length
    return torch.cat(out)


def packed_inputs(lengths, heads=2, head_dim=8, device=CPU, dtype=torch.float32, seed=0):
    """q, k, v as views of one (N, 3, heads, d) projection (as the model makes them) and cu_seqlens."""
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(sum(lengths), 3, heads, head_dim, generator=generator).to(device, dtype).requires_grad_()
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)
    return qkv, cu


def cpu_backends():
    return [b for b in BACKENDS if b != "auto" and unsupported_reason(b, CPU, torch.float32, 0.0, 8) is None]


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_padded_backends_match_the_reference(backend):
    lengths = [5, 9, 1, 7]
    qkv, cu = packed_inputs(lengths)
    q, k, v = qkv.unbind(1)
    expected = reference(q, k, v, lengths)
    padded = torch.zeros(len(lengths), max(lengths), 3, 2, 8)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, (start, length) in enumerate(zip(cu[:-1].tolist(), lengths)):
        padded[i, :length] = qkv[start:start + length].detach()
        mask[i, :length] = True
    out = padded_attention(*padded.unbind(2), mask, backend=backend)  # (B, T, heads, d)
    torch.testing.assert_close(out[mask].double(), expected.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", cpu_backends())
def test_packed_backends_match_the_reference_values_and_gradients(backend):
    lengths = [5, 9, 1, 16, 7]
    qkv, cu = packed_inputs(lengths)
    grad_out = torch.randn(sum(lengths), 2, 8, generator=torch.Generator().manual_seed(1))
    expected = reference(*qkv.unbind(1), lengths)
    (expected * grad_out.double()).sum().backward()
    expected_grad, qkv.grad = qkv.grad.clone(), None
    inputs = qkv.detach() if backend == "flex" else qkv  # PyTorch has no FlexAttention backward on the CPU
    out = packed_attention(*inputs.unbind(1), cu, max(lengths), backend=backend)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    if backend != "flex":
        (out * grad_out).sum().backward()
        torch.testing.assert_close(qkv.grad, expected_grad.float(), rtol=1e-4, atol=1e-5)


def test_a_padding_segment_changes_nothing_for_the_real_sequences():
    lengths = [4, 6]
    qkv, cu = packed_inputs(lengths + [3])  # a trailing third segment, as packing's pad_to_multiple adds
    out = packed_attention(*qkv.unbind(1), cu, 6, backend="sdpa")
    expected = reference(*qkv[:10].unbind(1), lengths)
    torch.testing.assert_close(out[:10].double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["flash", "varlen"])
def test_flash_kernels_are_called_with_the_signature_this_pytorch_has(backend):
    """On the meta device: argument order, output shape and autograd of the CUDA-only ops, on any PyTorch."""
    qkv, _ = packed_inputs([40, 60], heads=4, head_dim=64)
    qkv = qkv.detach().to("meta", torch.bfloat16).requires_grad_()
    cu = torch.tensor([0, 40, 100], dtype=torch.int32, device="meta")
    out = packed_attention(*qkv.unbind(1), cu, 60, backend=backend)
    assert out.shape == (100, 4, 64)
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape


def test_auto_resolution_and_clear_refusals():
    assert resolve_backend("auto", CPU, torch.float32, 0.1, packed=True) == "sdpa"
    assert resolve_backend("flash", CPU, torch.bfloat16, 0.1, packed=False) == "sdpa"  # padded: nothing to unpad
    assert resolve_backend("math", CPU, torch.float32, 0.0, packed=False) == "math"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("flash", CPU, torch.bfloat16, 0.1)
    with pytest.raises(ValueError, match="dropout"):
        resolve_backend("varlen", CPU, torch.bfloat16, 0.1)
    with pytest.raises(ValueError, match="unknown"):
        resolve_backend("fast", CPU, torch.float32, 0.0)


def cuda_backends(dtype):
    device = torch.device("cuda")
    return [b for b in BACKENDS if b != "auto" and unsupported_reason(b, device, dtype, 0.0, 64) is None]


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_backends_match_the_reference_in_half_precision(dtype):
    lengths = [100, 512, 7, 300, 64]
    device = torch.device("cuda")
    for backend in cuda_backends(dtype):
        qkv, cu = packed_inputs(lengths, heads=4, head_dim=64, device=device, dtype=dtype)
        expected = reference(*qkv.detach().cpu().unbind(1), lengths)
        out = packed_attention(*qkv.unbind(1), cu, max(lengths), backend=backend)
        error = (out.double().cpu() - expected).norm() / expected.norm()
        assert error < 1e-2, f"{backend}: relative error {error:.2e}"
        out.float().square().sum().backward()
        assert torch.isfinite(qkv.grad).all(), backend


@pytest.mark.gpu
@CUDA
def test_cuda_gradients_of_flash_match_math():
    lengths = [100, 512, 7, 300]
    device = torch.device("cuda")
    grads = {}
    for backend in ("math", "flash"):
        qkv, cu = packed_inputs(lengths, heads=4, head_dim=64, device=device, dtype=torch.bfloat16)
        packed_attention(*qkv.unbind(1), cu, max(lengths), backend=backend).float().square().sum().backward()
        grads[backend] = qkv.grad.float()
    error = (grads["flash"] - grads["math"]).norm() / grads["math"].norm()
    assert error < 2e-2, f"relative gradient error {error:.2e}"


@pytest.mark.gpu
@CUDA
def test_flash_attention_dropout_is_seeded_and_keeps_the_mean():
    qkv, cu = packed_inputs([256, 256], heads=4, head_dim=64, device=torch.device("cuda"), dtype=torch.bfloat16)
    q, k, v = qkv.detach().unbind(1)
    v = torch.ones_like(v)  # attention of ones is ones; dropout scales kept weights by 1/(1-p)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(packed_attention(q, k, v, cu, 256, backend="flash", dropout_p=0.1))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], torch.ones_like(outs[0]))
    assert abs(outs[0].float().mean().item() - 1.0) < 0.02
