"""The shared training step: accumulation is the mean of the micro-batch gradients; precisions run."""

import numpy as np
import pytest
import torch
from conftest import mlperf_arrays, tiny_config

from bert_pretrain.data.packing import padded_batch
from bert_pretrain.model import BertForPreTraining
from bert_pretrain.step import SUM_NAMES, make_grad_scaler, train_step

KEYS = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels")
CPU = torch.device("cpu")


def _batches(n_micro, rows=3, seed=0):
    arrays = mlperf_arrays(np.random.default_rng(seed), n=n_micro * rows, seq_len=16, max_pred=3, vocab_size=100)
    return [padded_batch(*(arrays[k][i * rows:(i + 1) * rows] for k in KEYS)) for i in range(n_micro)]


def _model():
    torch.manual_seed(0)
    return BertForPreTraining(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def test_accumulation_takes_the_mean_of_micro_batch_gradients():
    batches = _batches(2)
    expected = {}
    reference = _model()
    for batch in batches:
        reference(batch).loss.backward()
    for name, p in reference.named_parameters():
        expected[name] = p.detach() - 0.5 * p.grad / 2  # SGD lr 0.5 on the mean gradient
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    result = train_step(model, optimizer, make_grad_scaler("fp32", CPU), batches, "fp32", CPU)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], msg=name)
        assert p.grad is None
    sums = dict(zip(SUM_NAMES, result.sums.tolist()))
    assert sums["nsp_count"] == 6 and sums["mlm_count"] > 0
    assert not result.skipped


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_run_on_cpu(precision):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = make_grad_scaler(precision, CPU, init_scale=2.0**10)
    result = train_step(model, optimizer, scaler, _batches(1), precision, CPU)
    assert torch.isfinite(result.sums).all()


def test_fp16_overflow_skips_the_update():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = make_grad_scaler("fp16", CPU, init_scale=2.0**10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hook = model.bert.pooler.dense.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    result = train_step(model, optimizer, scaler, _batches(1), "fp16", CPU)
    hook.remove()
    assert bool(result.skipped)
    assert scaler.get_scale() == 2.0**9
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def test_compile_model_marks_the_hot_regions_and_keeps_parameter_names():
    from bert_pretrain.build import compile_model

    model = _model()
    names = list(model.state_dict())
    assert compile_model(model) is model
    assert list(model.state_dict()) == names
    assert all(layer._compiled_call_impl is not None for layer in model.bert.encoder.layer)
    assert model.cls.predictions.transform._compiled_call_impl is not None
    assert model.criterion._compiled_call_impl is not None


@pytest.mark.slow
def test_the_encoder_layers_compile_once_for_every_token_count_under_autocast():
    """The layers' input is marked dynamic before the first call; under autocast it must be that very
    tensor (the embeddings cast it), or the layer compiles again when the token count first changes
    (a second BERT-large layer compilation)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from bert_pretrain.build import compile_model
    from bert_pretrain.data.packing import PackingOptions, pack_padded_rows
    from bert_pretrain.model import BertLayer

    torch._dynamo.reset()
    model = compile_model(_model(), backend="aot_eager")  # what Dynamo traces and caches; no code generated
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(3):
        batch = pack_padded_rows(mlperf_arrays(rng, 4, 32, 5, 100), 5, PackingOptions(max_seqlen=32))
        counts.add(batch.input_ids.shape[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(batch).loss.backward()
    assert len(counts) == 3  # three token counts
    assert len(_debug_get_cache_entry_list(BertLayer.forward.__code__)) == 1


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_step_never_waits_for_the_gpu(precision):
    """Steps with an optimizer that takes GradScaler's on-device flags queue work without a host sync."""
    from bert_pretrain.data.packing import pack_padded_rows

    device = torch.device("cuda")
    arrays = mlperf_arrays(np.random.default_rng(0), n=8, seq_len=64, max_pred=10, vocab_size=100)
    batch = pack_padded_rows(arrays).pin_memory()
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(hidden_size=64, num_attention_heads=1), attention_backend="auto").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    scaler = make_grad_scaler(precision, device)
    train_step(model, optimizer, scaler, [batch], precision, device)  # first step: lazy state creation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            result = train_step(model, optimizer, scaler, [batch], precision, device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(result.sums).all()


@pytest.mark.gpu
@CUDA
def test_compiled_model_computes_what_the_eager_model_does():
    from bert_pretrain.build import compile_model
    from bert_pretrain.data.packing import pack_padded_rows
    from bert_pretrain.step import autocast

    device = torch.device("cuda")
    model = _model().to(device)
    model.attention_backend = "auto"
    batches = [pack_padded_rows(mlperf_arrays(np.random.default_rng(s), n=6, seq_len=32, max_pred=5, vocab_size=100))
               .to(device) for s in range(3)]
    with autocast(device, "bf16"):
        eager = [model(b).loss.float() for b in batches]
        compile_model(model)
        compiled = [model(b).loss.float() for b in batches]
    torch.testing.assert_close(torch.stack(compiled), torch.stack(eager), rtol=2e-2, atol=1e-3)
