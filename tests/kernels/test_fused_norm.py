"""The fused dropout + residual + LayerNorm kernels (fused_norm.py) against a float64 reference.

On a CUDA device the kernels run compiled (tests marked gpu). On the CPU they run in Triton's
interpreter, which must be switched on before triton is first imported: `test_interpreted` runs this
file's CPU cases in a child process with TRITON_INTERPRET=1. Both need the triton package and are
skipped without it (the CPU build of torch does not bring it; init.sh installs it on Linux x86_64, so
the README's test command runs them).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bert_pretrain.kernels.fused_norm import dropout_add_layer_norm

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = [pytest.param("cpu", id="interpreted", marks=pytest.mark.skipif(
               not INTERPRETED, reason="runs in test_interpreted's child process")),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
               INTERPRETED or not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED or torch.cuda.is_available(), reason="the child process, or CUDA runs the cases")
def test_interpreted():
    """This file's CPU cases, in a child process whose Triton runs kernels in its interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "interpreted",
                            str(Path(__file__))], env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-2000:]
    assert "9 passed" in child.stdout, child.stdout[-1000:]


def _inputs(device, shape=(37, 96), dtype=torch.float32, seed=0):
    """h, h_bias, residual, LayerNorm weight, LayerNorm bias (the vectors in fp32, as parameters are)."""
    generator = torch.Generator().manual_seed(seed)
    width = shape[-1]
    h, residual = (torch.randn(shape, generator=generator).to(device, dtype).requires_grad_() for _ in range(2))
    h_bias = (0.5 * torch.randn(width, generator=generator)).to(device).requires_grad_()
    weight = (1 + 0.1 * torch.randn(width, generator=generator)).to(device).requires_grad_()
    bias = (0.1 * torch.randn(width, generator=generator)).to(device).requires_grad_()
    return h, h_bias, residual, weight, bias


def _reference(h, h_bias, residual, weight, bias, keep, dropout_p, eps=1e-12):
    """float64 LayerNorm(dropout(h + h_bias) + residual) with the given keep mask; the leaf copies too."""
    leaves = [t.detach().cpu().double().requires_grad_() for t in (h, h_bias, residual, weight, bias)]
    h64, h_bias64, residual64, weight64, bias64 = leaves
    h64 = h64 + h_bias64
    dropped = torch.where(keep.cpu(), h64 / (1 - dropout_p), 0.0) if dropout_p else h64
    z = dropped + residual64
    if h.dtype != torch.float32:  # the kernel rounds the sum to the compute dtype, as the unfused code does
        z = z + (z.detach().to(h.dtype).double() - z.detach())
    return F.layer_norm(z, z.shape[-1:], weight64, bias64, eps), leaves


def _relative(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("shape", [(37, 96), (3, 5, 64), (1, 1024), (300, 64)])  # (300, 64): programs loop over tiles
def test_without_dropout_matches_the_reference(device, shape):
    inputs = _inputs(device, shape)
    y = dropout_add_layer_norm(*inputs, 1e-12, 0.0)
    grad = torch.randn_like(y)
    y.backward(grad)
    expected, leaves = _reference(*inputs, None, 0.0)
    expected.backward(grad.double().cpu())
    assert y.shape == inputs[0].shape and y.dtype == inputs[0].dtype
    assert _relative(y.cpu(), expected) < 1e-5
    for tensor, leaf in zip(inputs, leaves):
        assert _relative(tensor.grad.cpu(), leaf.grad) < 1e-5


def test_dropout_forward_and_backward_use_one_mask(device):
    """The backward applies the forward's mask: the forward's output must equal the reference built
    from the backward's mask (d_h = d_residual * keep / (1 - p)), and about p of it is dropped."""
    p = 0.25
    inputs = _inputs(device, (200, 128))
    h, _, residual, _, _ = inputs
    y = dropout_add_layer_norm(*inputs, 1e-12, p)
    grad = torch.randn_like(y)
    y.backward(grad)
    keep = h.grad != 0
    assert abs(keep.double().mean().item() - (1 - p)) < 0.01  # 25,600 draws: 0.0027 is one standard deviation
    torch.testing.assert_close(h.grad, torch.where(keep, residual.grad / (1 - p), 0.0))
    expected, leaves = _reference(*inputs, keep, p)
    expected.backward(grad.double().cpu())
    assert _relative(y.cpu(), expected) < 1e-5
    for tensor, leaf in zip(inputs, leaves):
        assert _relative(tensor.grad.cpu(), leaf.grad) < 1e-5


def test_the_mask_follows_torch_random_state(device):
    inputs = _inputs(device)
    torch.manual_seed(3)
    first = dropout_add_layer_norm(*inputs, 1e-12, 0.1)
    second = dropout_add_layer_norm(*inputs, 1e-12, 0.1)
    torch.manual_seed(3)
    again = dropout_add_layer_norm(*inputs, 1e-12, 0.1)
    assert torch.equal(first, again) and not torch.equal(first, second)


def test_bf16_matches_the_reference_to_bf16_rounding(device):
    inputs = _inputs(device, (40, 256), dtype=torch.bfloat16)
    y = dropout_add_layer_norm(*inputs, 1e-12, 0.0)
    grad = torch.randn_like(y)
    y.backward(grad)
    expected, leaves = _reference(*inputs, None, 0.0)
    expected.backward(grad.double().cpu())
    assert y.dtype == torch.bfloat16 and all(t.grad.dtype == t.dtype for t in inputs)
    assert _relative(y.cpu(), expected) < 1e-2  # bf16 keeps 8 bits: outputs are rounded to about 0.4%
    for tensor, leaf in zip(inputs, leaves):
        assert _relative(tensor.grad.cpu(), leaf.grad) < 1e-2


def test_mismatched_inputs_are_rejected():
    h, h_bias, residual, weight, bias = _inputs(torch.device("cpu"))
    with pytest.raises(ValueError, match="same shape and dtype"):
        dropout_add_layer_norm(h, h_bias, residual.double(), weight, bias, 1e-12, 0.0)


def _tiny_packed(device, dropout):
    import numpy as np
    from conftest import mlperf_arrays, tiny_config

    from bert_pretrain.data.packing import pack_padded_rows
    from bert_pretrain.model import BertForPreTraining

    config = tiny_config(hidden_dropout_prob=dropout, attention_probs_dropout_prob=0.0)
    batch = pack_padded_rows(mlperf_arrays(np.random.default_rng(0), n=4, seq_len=32, max_pred=5, vocab_size=100))
    models = []
    for fused in (False, True):
        torch.manual_seed(0)
        models.append(BertForPreTraining(config, attention_backend="sdpa", fused_norm=fused).to(device))
    return models, batch.to(device)


def test_model_with_fused_norm_computes_what_the_unfused_one_does(device):
    """Dropout off: the same loss and gradients, every parameter, in fp32."""
    models, batch = _tiny_packed(device, dropout=0.0)
    for model in models:
        model(batch).loss.backward()
    unfused, fused = models
    torch.testing.assert_close(fused(batch).loss, unfused(batch).loss, rtol=1e-5, atol=1e-6)
    for (name, expected), actual in zip(unfused.named_parameters(), fused.parameters()):
        torch.testing.assert_close(actual.grad, expected.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compiled_model_with_fused_norm_trains(device):
    """Under torch.compile (the kernels are opaque custom operators), with dropout: finite gradients
    for every parameter, the same result from the same random state, and eval without dropout equal
    to the unfused model's."""
    from bert_pretrain.build import compile_model

    torch._dynamo.reset()
    models, batch = _tiny_packed(device, dropout=0.1)
    unfused, fused = models
    compile_model(fused)
    losses = []
    for _ in range(2):
        torch.manual_seed(5)
        fused.zero_grad(set_to_none=True)
        loss = fused(batch).loss
        loss.backward()
        losses.append(loss.detach())
    assert torch.equal(losses[0], losses[1])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fused.parameters())
    fused.eval(), unfused.eval()
    torch.testing.assert_close(fused(batch).loss, unfused(batch).loss, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_backward_grid_is_what_the_gpu_holds_at_once():
    """The persistent backward's grid comes from the compiled kernel's registers (not the fallback guess)."""
    from bert_pretrain.kernels import fused_norm

    inputs = _inputs(torch.device("cuda"), (4096, 1024), dtype=torch.bfloat16)
    dropout_add_layer_norm(*inputs, 1e-12, 0.1).sum().backward()
    multiprocessors = torch.cuda.get_device_properties(0).multi_processor_count
    programs, source = next(v for k, v in fused_norm._RESIDENT.items() if k[1] == torch.bfloat16)
    assert source == "compiled kernel" and programs % multiprocessors == 0 and programs >= multiprocessors
