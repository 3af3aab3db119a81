"""The step profiler sorts real kernel and operator names into the right kinds of work."""

import gzip
import json

import numpy as np
import pytest
import torch
from conftest import mlperf_arrays, tiny_config

from bert_pretrain.bench.step_profile import OTHER, category, format_profile, profile_steps
from bert_pretrain.data.packing import pack_padded_rows
from bert_pretrain.model import BertForPreTraining
from bert_pretrain.optim import Lamb, parameter_groups
from bert_pretrain.step import make_grad_scaler, train_step


@pytest.mark.parametrize("name, expected", [
    # CUDA kernel names as the profiler reports them (H100/H200, PyTorch 2.11)
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "gemm"),
    ("nvjet_tst_192x192_64x3_2x1_v_bz_coopB_TNT", "gemm"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>", "gemm"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>, true>", "attention"),
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>", "attention"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<TensorListMetadata<3>>", "optimizer"),
    ("triton_per_fused_add_native_dropout_native_layer_norm_0", "compiled (triton)"),
    ("triton_per_fused_native_layer_norm_native_layer_norm_backward_rsqrt_3", "compiled (triton)"),
    ("triton_red_fused_add_div_linalg_vector_norm_mul_sqrt_0", "optimizer"),  # lamb_compiled's units
    ("fused_norm_backward", "fused norm (triton)"), ("bert_pretrain::dropout_add_layer_norm", "fused norm (triton)"),
    ("triton_poi_fused_add_div_mul_sqrt_sub_2", "optimizer"),
    ("Memcpy HtoD (Pinned -> Device)", "copy / fill"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "copy / fill"),
    ("void at::native::indexSelectLargeIndex<float, long, unsigned int, 2, 2, -2, true>", "embedding / index"),
    ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl<AddFunctor>>", OTHER),
    # CPU operators
    ("aten::mm", "gemm"), ("aten::addmm", "gemm"), ("aten::bmm", "gemm"),
    ("aten::_foreach_mul_", "optimizer"), ("Optimizer.step#Lamb.step", "optimizer"),
    ("aten::scaled_dot_product_attention", "attention"), ("aten::_log_softmax", "loss / softmax"),
    ("aten::bernoulli_", OTHER), ("aten::native_layer_norm", OTHER), ("aten::copy_", "copy / fill"),
    ("## Call CompiledFxGraph fc3vxq2kzl7rdnnbbf5q ##", "compiled (triton)"),  # compiled code on the CPU
])
def test_names_fall_into_their_kind_of_work(name, expected):
    assert category(name) == expected


def test_cpu_profile_of_a_training_step_accounts_for_its_time(tmp_path):
    keys = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels")
    arrays = mlperf_arrays(np.random.default_rng(0), n=8, seq_len=32, max_pred=5, vocab_size=100)
    batch = pack_padded_rows({k: arrays[k] for k in keys}, max_predictions_per_seq=5)
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).train()
    optimizer = Lamb(parameter_groups(model, weight_decay=0.01), lr=1e-3)
    scaler = make_grad_scaler("fp32", torch.device("cpu"))

    def step():
        train_step(model, optimizer, scaler, [batch], "fp32", torch.device("cpu"))

    step()  # the first step creates the optimizer state
    summary = profile_steps(step, 2, torch.device("cpu"), trace_path=tmp_path / "trace.json.gz")
    assert summary["device_kind"] == "cpu operators" and summary["busy"] is None
    # Self times partition the measured time; the profiled region holds it (plus the profiler's own work).
    assert sum(summary["categories"].values()) == pytest.approx(summary["measured_s"])
    assert 0 < summary["measured_s"] <= summary["wall_s"] * 1.05
    # The step's known parts are there: GEMMs, the LAMB update (its per-tensor ops count as optimizer time),
    # attention (SDPA on the CPU) and the masked-LM loss.
    for kind in ("gemm", "optimizer", "attention", "loss / softmax"):
        assert summary["categories"].get(kind, 0) > 0, (kind, summary["categories"])
    top_names = [name for name, _, _ in summary["top"]]
    assert any(name in ("aten::mm", "aten::addmm") for name in top_names)
    trace = json.loads(gzip.open(tmp_path / "trace.json.gz").read())
    assert any(event.get("name") == "aten::mm" for event in trace["traceEvents"])
    table = format_profile(summary)
    assert "| gemm |" in table and "ms per step" in table


def test_gpu_time_is_read_from_the_kernel_rows():
    """Kernel rows (device time, no CPU time) make the GPU profile; operators' self device time is the fallback."""
    from types import SimpleNamespace

    from bert_pretrain.bench.step_profile import _device_rows

    def row(key, cpu_us, device_us, count=1):
        return SimpleNamespace(key=key, self_cpu_time_total=cpu_us, self_device_time_total=device_us, count=count)

    operator = row("aten::mm", 50.0, 0.0)
    kernel = row("nvjet_tst_192x192_64x3_2x1_v_bz_coopB_TNT", 0.0, 900.0, 3)
    assert _device_rows([operator, kernel]) == [(kernel.key, 900e-6, 3)]
    assert _device_rows([row("aten::mm", 50.0, 800.0)]) == [("aten::mm", 800e-6, 1)]
