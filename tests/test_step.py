"""The shared training step: accumulation is the mean of the micro-batch gradients; precisions run."""

import numpy as np
import pytest
import torch

from bert_pretrain.batch import padded_batch
from bert_pretrain.model import BertForPreTraining
from bert_pretrain.step import SUM_NAMES, make_grad_scaler, train_step
from conftest import mlperf_arrays, tiny_config

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
