"""fp8 training (fp8.py, torchao.float8) on the CPU, against a transcription of the float8 arithmetic.

The reference below writes out what the recipes define: each GEMM operand is rounded to a float8
format after scaling by max(format) / amax(|operand|), amax over the whole tensor (tensorwise) or over
the contracted dimension, one scale per row or column (rowwise, scales rounded down to a power of 2);
tensorwise casts activations and weights to e4m3 and gradients to e5m2, rowwise everything to e4m3,
and rowwise_with_gw_hp keeps the weight gradient's GEMM in bf16 and the input gradient's weight
tensorwise. The tests that need torchao skip without it (pip install 'bert-pretrain[fp8]').

Tolerances, from the float8 formats: rounding to m mantissa bits has a relative error uniform within
+-2^-(m+1), RMS 2^-(m+1)/sqrt(3); a product of two rounded operands sums two such errors, so a float8 GEMM's
output deviates from the exact product by an RMS fraction of EPS_FORWARD = sqrt(2/3) 2^-4 = 5.1%
(e4m3 x e4m3) and, for tensorwise's gradients, EPS_BACKWARD = sqrt((2^-6 + 2^-8) / 3) = 8.1% (e5m2 x e4m3).
"""

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import mlperf_arrays, tiny_config, train_flags, write_data_folder
from torch import nn

from bert_pretrain import fp8
from bert_pretrain.data.packing import PackingOptions, pack_padded_rows
from bert_pretrain.errors import InputError
from bert_pretrain.model import BertForPreTraining, BertLayer
from bert_pretrain.options.fields import DEFAULT_FP8_LAYERS, FP8_LAYERS, FP8_RECIPES, fp8_layer_names

CPU = torch.device("cpu")
UNAVAILABLE = fp8.unavailable_reason(CPU)
needs_torchao = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"fp8 cannot run here: {UNAVAILABLE}")
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
EPS_FORWARD = math.sqrt(2 / 3) * 2**-4
EPS_BACKWARD = math.sqrt((2**-6 + 2**-8) / 3)


def quantised(x: torch.Tensor, fmt: torch.dtype, dim: int | None = None, power_of_2: bool = False) -> torch.Tensor:
    """x rounded to float8 `fmt` at the dynamic scale max(fmt) / amax(|x|) (amax over `dim`, or all of x),
    returned dequantised in fp32."""
    amax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    scale = (torch.finfo(fmt).max / amax.double().clamp(min=1e-12)).float()
    if power_of_2:
        scale = torch.exp2(torch.floor(torch.log2(scale)))
    largest = torch.finfo(fmt).max
    return (x.float() * scale).clamp(-largest, largest).to(fmt).float() / scale


def reference_products(x, weight, grad, recipe: str):
    """y = x W^T, dx = g W, dW = g^T x (x: (T, K) bf16, W: (N, K) fp32, g: (T, N) bf16) as `recipe` computes
    them, each rounded to bf16 as the float8 GEMMs return it."""
    if recipe == "tensorwise":
        y = quantised(x, E4M3) @ quantised(weight, E4M3).t()
        dx = quantised(grad, E5M2) @ quantised(weight, E4M3)
        dw = quantised(grad, E5M2).t() @ quantised(x, E4M3)
    else:  # each operand scaled along the dimension its GEMM contracts
        y = quantised(x, E4M3, -1, True) @ quantised(weight, E4M3, -1, True).t()
        tensorwise = recipe == "rowwise_with_gw_hp"
        dx = quantised(grad, E4M3, -1, True) @ quantised(weight, E4M3, None if tensorwise else 0, True)
        dw = (grad.float().t() @ x.float() if tensorwise
              else quantised(grad, E4M3, 0, True).t() @ quantised(x, E4M3, 0, True))
    return y.bfloat16(), dx.bfloat16(), dw.bfloat16().float()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _batch(seed=0, rows=8):
    """Packed as train packs for fp8: max_seqlen fixed, token counts in multiples of 16."""
    arrays = mlperf_arrays(np.random.default_rng(seed), rows, 32, 5, 100)
    return pack_padded_rows(arrays, 5, PackingOptions(pad_to_multiple=fp8.TOKEN_MULTIPLE, max_seqlen=32))


def _model(layers=FP8_LAYERS, recipe="tensorwise", emulate=False, **config):
    """The tiny model without dropout (so fp8 and bf16 see the same masks), converted when `layers`."""
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **config))
    if layers:
        fp8.convert_encoder(model, recipe, tuple(layers), emulate)
    return model


def _loss_and_grads(model, batch):
    with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16):
        out = model(batch)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_layer_names_are_the_encoder_layers_four_linear_layers():
    assert tuple(fp8.LAYER_PATHS) == FP8_LAYERS
    layer = BertLayer(tiny_config())
    linears = {name for name, module in layer.named_modules() if isinstance(module, nn.Linear)}
    assert linears == set(fp8.LAYER_PATHS.values())


def test_the_layer_option_takes_names_or_all_and_refuses_what_fused_norm_bypasses():
    assert fp8_layer_names("all", False) == FP8_LAYERS
    assert fp8_layer_names(" mlp1 , qkv", False) == ("qkv", "mlp1") == fp8_layer_names(DEFAULT_FP8_LAYERS, True)
    for bad in ("qkv,mlp3", "", ","):
        with pytest.raises(InputError, match="--fp8_layers"):
            fp8_layer_names(bad, False)
    with pytest.raises(InputError, match="cannot run with --fused_norm.*--fp8_layers qkv"):
        fp8_layer_names("qkv,attn_out", True)


@pytest.mark.slow
def test_without_torchao_fp8_is_one_line_naming_the_fix_before_any_work(tmp_path, monkeypatch):
    fp8.unavailable_reason.cache_clear()
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if not installed
    try:
        with pytest.raises(InputError, match=r"--fp8 needs the torchao package: pip install 'bert-pretrain\[fp8\]'"):
            fp8.require(CPU)
    finally:
        fp8.unavailable_reason.cache_clear()
    data = write_data_folder(tmp_path / "data", num_shards=1)
    code = "import sys; sys.modules['torchao'] = None; from bert_pretrain.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, "train", *train_flags(data, tmp_path / "out"), "--fp8"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "pip install 'bert-pretrain[fp8]'" in result.stderr and not (tmp_path / "out").exists()


@needs_torchao
def test_a_gpu_without_float8_tensor_cores_is_refused_naming_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    fp8.unavailable_reason.cache_clear()
    try:
        with pytest.raises(InputError, match=r"--precision fp8 needs a GPU with float8 tensor cores .* is 8\.0: "
                                             r"use --bf16"):
            fp8.require(torch.device("cuda", 0), "--precision fp8")
    finally:
        fp8.unavailable_reason.cache_clear()


@pytest.fixture
def cuda_fp8() -> torch.device:
    """The GPU, where it has float8 tensor cores and torchao is installed."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reason = fp8.unavailable_reason(torch.device("cuda", 0))
    if reason:
        pytest.skip(f"fp8 cannot run on this GPU: {reason}")
    return torch.device("cuda", 0)


@needs_torchao
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("recipe", FP8_RECIPES)
@pytest.mark.parametrize("emulate", [False, True], ids=["scaled_mm", "emulated"])
def test_a_float8_layer_computes_the_recipes_arithmetic(recipe, emulate, device, request):
    """torch._scaled_mm and the emulation both give the reference's products to bf16 rounding (on a GPU
    also to the forward GEMM's fast accumulation), where the plain bf16 product is EPS_FORWARD away."""
    device = request.getfixturevalue("cuda_fp8") if device == "cuda" else CPU
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(64, 96, bias=False)).to(device)
    weight = layer[0].weight
    fp8._torchao_float8().convert_to_float8_training(layer, config=dataclasses.replace(
        fp8._torchao_float8().Float8LinearConfig.from_recipe_name(recipe), emulate=emulate))
    x = (torch.randn(80, 64) * torch.rand(80, 1) * 3).bfloat16().to(device).requires_grad_()  # rows of unequal size
    grad = (torch.randn(80, 96) * torch.rand(1, 96)).bfloat16().to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = layer(x)
    y.backward(grad)
    expected = reference_products(x.detach(), weight.detach(), grad, recipe)
    rtol = 2**-7 if device.type == "cpu" else 2**-6
    for got, want in zip((y, x.grad, weight.grad), expected):
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=rtol / 4 * want.abs().max().item())
    plain = (x.detach().float() @ weight.detach().t()).bfloat16()
    assert relative(plain, expected[0]) > EPS_FORWARD / 4  # the check above tells float8 from bf16


@needs_torchao
def test_conversion_keeps_the_parameters_names_and_sixteen_bit_layers():
    plain = _model(layers=())
    model = _model(layers=fp8_layer_names(DEFAULT_FP8_LAYERS, False))
    parameters = dict(model.named_parameters())
    assert list(parameters) == [n for n, _ in plain.named_parameters()]
    assert all(torch.equal(p, parameters[n]) for n, p in plain.named_parameters())
    assert all(type(t) is torch.Tensor for t in model.state_dict().values())  # plain tensors on disk
    float8 = {n for n, m in model.named_modules() if type(m).__name__ == "Float8Linear"}
    assert float8 == {f"bert.encoder.layer.{i}.{fp8.LAYER_PATHS[name]}" for i in range(2) for name in ("qkv", "mlp1")}
    for name in ("bert.pooler.dense", "cls.predictions.transform.dense", "cls.seq_relationship",
                 "bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.1.output.dense"):
        assert type(model.get_submodule(name)) is nn.Linear, name
    # 32 -> 40 and 40 -> 32 cannot run in float8
    conversion = fp8.convert_encoder(_model(layers=(), intermediate_size=40), "tensorwise", FP8_LAYERS, False)
    assert conversion.layers == ("qkv", "attn_out")
    assert [n.split(" (")[0] for n in conversion.notes] == ["note: fp8 keeps mlp1", "note: fp8 keeps mlp2"]


@needs_torchao
@pytest.mark.parametrize("layers", [FP8_LAYERS, ("qkv", "mlp1")], ids=["all", "default"])
def test_only_the_converted_layers_multiply_in_float8(layers, monkeypatch):
    """A step's float8 products are the converted layers' three GEMMs each; every other linear layer (those
    left out, the pooler, the heads) runs F.linear under bf16 autocast."""
    float8_calls, linear_calls = [], []
    scaled_mm, linear = torch._scaled_mm, torch.nn.functional.linear

    def record_scaled_mm(a, b, *args, **kwargs):
        float8_calls.append((a.dtype, b.dtype))
        return scaled_mm(a, b, *args, **kwargs)

    def record_linear(x, weight, bias=None):
        linear_calls.append((tuple(weight.shape), torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                             else None))
        return linear(x, weight, bias)

    monkeypatch.setattr(torch, "_scaled_mm", record_scaled_mm)
    monkeypatch.setattr(torch.nn.functional, "linear", record_linear)
    _loss_and_grads(_model(layers=layers), _batch())
    assert len(float8_calls) == 2 * len(layers) * 3  # 2 layers, forward + 2 backward GEMMs
    # tensorwise: e4m3 activations and weights forward; each backward GEMM takes the e5m2 gradient
    assert set(float8_calls) == {(E4M3, E4M3), (E5M2, E4M3)}
    assert float8_calls.count((E4M3, E4M3)) == len(float8_calls) // 3
    assert len(linear_calls) == 4 + 2 * (4 - len(layers))  # pooler, transform, decoder, NSP + those left out
    assert {dtype for _, dtype in linear_calls} == {torch.bfloat16}


@needs_torchao
@pytest.mark.parametrize("recipe", FP8_RECIPES)
def test_one_fp8_step_is_within_float8_rounding_of_a_bf16_step(recipe):
    """Each parameter's gradient within 2 x the GEMM error (its own backward GEMM plus, in quadrature, what
    the layers above pass down: sqrt(2) eps, with margin), the loss within eps / sqrt(masked tokens) (a
    mean of independent per-token errors); and far enough from bf16 that float8 visibly ran."""
    batch = _batch()
    eps = EPS_BACKWARD if recipe == "tensorwise" else EPS_FORWARD  # rowwise: e4m3 gradients
    loss_bf16, grads_bf16 = _loss_and_grads(_model(layers=()), batch)
    loss_fp8, grads_fp8 = _loss_and_grads(_model(recipe=recipe), batch)
    assert grads_fp8.keys() == grads_bf16.keys()
    errors = {name: relative(grads_fp8[name], grads_bf16[name]) for name in grads_bf16}
    assert max(errors.values()) < 2 * eps, max(errors.items(), key=lambda kv: kv[1])
    assert abs(loss_fp8 - loss_bf16) / loss_bf16 < eps / math.sqrt(int(batch.masked_labels.numel()))
    assert max(errors[n] for n in errors if ".encoder." in n and n.endswith("weight")) > eps / 8


@needs_torchao
def test_emulation_is_torch_scaled_mm_to_fp32_rounding():
    """What `train --fp8` runs on the CPU (emulate) against torch._scaled_mm, over a whole step."""
    batch = _batch()
    loss, grads = _loss_and_grads(_model(emulate=False), batch)
    loss_emulated, grads_emulated = _loss_and_grads(_model(emulate=True), batch)
    assert loss_emulated == pytest.approx(loss, rel=1e-6)
    assert max(relative(grads_emulated[n], grads[n]) for n in grads) < 1e-4


@needs_torchao
def test_evaluation_runs_the_same_weights_in_bf16_and_puts_the_float8_layers_back():
    from bert_pretrain.evaluate import evaluate

    batches = [_batch(seed) for seed in range(2)]
    model, plain = _model(), _model(layers=())
    float8 = {n: type(m) for n, m in model.named_modules()}
    assert evaluate(model, batches, CPU, precision="fp8") == evaluate(plain, batches, CPU, precision="bf16")
    assert {n: type(m) for n, m in model.named_modules()} == float8 and model.training


@pytest.mark.slow
@needs_torchao
def test_regional_compilation_with_float8_layers_matches_eager_and_compiles_once(monkeypatch):
    """build.compile_model as train applies it, with aot_eager (Inductor's CPU code generation is not what
    the GPU runs, and slow here): the same steps, one compilation for three token counts, no graph break."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from torch._dynamo.utils import counters

    from bert_pretrain.build import compile_model
    from bert_pretrain.optim import Lamb, parameter_groups
    from bert_pretrain.step import make_grad_scaler, train_step

    compile_ = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: compile_(self, **{**kw, "backend": "aot_eager"}))
    batches = [_batch(seed) for seed in range(3)]  # 8 rows each, as a training micro-batch
    assert len({b.input_ids.shape[0] for b in batches}) == 3
    losses = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        model = _model()
        if compiled:
            compile_model(model)
        optimizer = Lamb(parameter_groups(model, 0.01), lr=1e-3)
        losses[compiled] = [float(train_step(model, optimizer, make_grad_scaler("fp8", CPU), [b], "fp8", CPU).sums[0])
                            for b in batches]
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)
    assert len(_debug_get_cache_entry_list(BertLayer.forward.__code__)) == 1
    assert not counters["graph_break"]


def test_fp8_packs_token_counts_in_multiples_of_16(tmp_path):
    """The weight gradient's GEMM contracts over the tokens: train's and bench's packers pad to 16."""
    from bert_pretrain.bench.run import _packing
    from bert_pretrain.cli import build_parser
    from bert_pretrain.options.bench import BenchOptions
    from bert_pretrain.options.train import load_config
    from bert_pretrain.train.setup import _row_converter

    data = write_data_folder(tmp_path / "data", num_shards=1)
    flags = train_flags(data, tmp_path / "out")
    arrays = mlperf_arrays(np.random.default_rng(0), 5, 32, 5, 64)
    for extra, multiple in (([], 1), (["--fp8"], 16)):
        config = load_config(build_parser().parse_args(["train", *flags, *extra]), accelerator=None)
        tokens = _row_converter(config)(arrays).input_ids.shape[0]
        assert tokens % multiple == 0 and (multiple == 1 or tokens - int(arrays["input_mask"].sum()) < 16)
    assert _packing(BenchOptions(precision="fp8", pad_to_multiple=24), None).pad_to_multiple == 48


@pytest.mark.gpu
def test_compiled_fp8_steps_on_a_gpu_track_bf16_and_compile_once(cuda_fp8):
    """What train --fp8 runs on a GPU (Inductor, flash attention, LAMB): the first step's gradients within the
    CPU test's bounds of bf16, compiled steps as eager ones, one layer compilation for three token counts."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from bert_pretrain.build import compile_model
    from bert_pretrain.optim import Lamb, parameter_groups
    from bert_pretrain.step import make_grad_scaler, train_step

    shape = dict(hidden_size=64, num_attention_heads=4, intermediate_size=256)
    batches = [_batch(seed).to(cuda_fp8) for seed in range(3)]
    _, grads_bf16 = _loss_and_grads(_model(layers=(), **shape).to(cuda_fp8), batches[0])
    _, grads_fp8 = _loss_and_grads(_model(**shape).to(cuda_fp8), batches[0])
    assert max(relative(grads_fp8[n], grads_bf16[n]) for n in grads_bf16) < 2 * EPS_BACKWARD
    losses = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        model = _model(**shape).to(cuda_fp8)
        model.attention_backend = "auto"
        if compiled:
            compile_model(model)
        optimizer = Lamb(parameter_groups(model, 0.01), lr=1e-3, compiled=compiled)
        scaler = make_grad_scaler("fp8", cuda_fp8)
        losses[compiled] = [float(train_step(model, optimizer, scaler, [b], "fp8", cuda_fp8).sums[0]) for b in batches]
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)
    assert len(_debug_get_cache_entry_list(BertLayer.forward.__code__)) == 1
