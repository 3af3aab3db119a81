"""Packed batches hold exactly the input rows, and the model computes the same losses and gradients on them."""

import numpy as np
import pytest
import torch
from conftest import mlperf_arrays, reference_packed_batch, tiny_config

from bert_pretrain.batch import IGNORE_LABEL
from bert_pretrain.data.packing import PackingOptions, balanced_split, pack_padded_rows, padded_batch
from bert_pretrain.data.shards import padded_to_varlength, read_varlength, varlength_to_padded, write_varlength
from bert_pretrain.errors import InputError
from bert_pretrain.model import BertForPreTraining

KEYS = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
STATIC = PackingOptions(compact_masked=False)  # B * P masked slots, as the reference construction makes them


def rows(n=6, seq_len=24, max_pred=4, seed=0):
    return mlperf_arrays(np.random.default_rng(seed), n=n, seq_len=seq_len, max_pred=max_pred, vocab_size=100)


def unpack(batch, num_sequences):
    """Per-sequence (tokens, segments, {position: label}) read back out of a packed batch."""
    cu = batch.cu_seqlens.tolist()
    out = []
    owner = torch.searchsorted(batch.cu_seqlens[1:].long(), batch.masked_positions, right=True).tolist()
    for i in range(num_sequences):
        start, end = cu[i], cu[i + 1]
        masked = {int(p) - start: int(l) for p, l, o in zip(batch.masked_positions, batch.masked_labels, owner)
                  if l != IGNORE_LABEL and o == i}
        assert all(0 < p < end - start for p in masked)
        assert batch.position_ids[start:end].tolist() == list(range(end - start))
        out.append((batch.input_ids[start:end].tolist(), batch.segment_ids[start:end].tolist(), masked))
    return out


def expected_rows(arrays):
    out = []
    for i in range(len(arrays["input_ids"])):
        length = int(arrays["input_mask"][i].sum())
        count = np.count_nonzero(arrays["masked_lm_positions"][i])
        masked = dict(zip(arrays["masked_lm_positions"][i][:count].tolist(), arrays["masked_lm_ids"][i][:count].tolist()))
        out.append((arrays["input_ids"][i][:length].tolist(), arrays["segment_ids"][i][:length].tolist(), masked))
    return out


@pytest.mark.parametrize("layout", ["padded", "varlength"])
@pytest.mark.parametrize("compact", [True, False])
def test_packed_batch_holds_exactly_the_rows(layout, compact, tmp_path):
    arrays = rows()
    if layout == "varlength":  # a variable-length shard is padded as it is read, then packed the same way
        write_varlength(tmp_path / "part_0.hdf5", padded_to_varlength(arrays))
        arrays = varlength_to_padded(read_varlength(tmp_path / "part_0.hdf5"), 24, 4)
    batch = pack_padded_rows(arrays, options=PackingOptions(compact_masked=compact))
    assert unpack(batch, 6) == expected_rows(rows())
    assert batch.input_ids.shape[0] == arrays["input_mask"].sum()
    assert batch.max_seqlen == arrays["input_mask"].sum(axis=1).max()
    assert batch.next_sentence_labels.tolist() == arrays["next_sentence_labels"].tolist()
    real_masked = np.count_nonzero(arrays["masked_lm_positions"])
    assert batch.masked_positions.shape == ((real_masked,) if compact else (6 * 4,))
    assert (batch.masked_labels != IGNORE_LABEL).sum() == real_masked


def test_the_vectorised_packer_equals_the_plain_construction():
    arrays = rows()
    reference, batch = reference_packed_batch(arrays), pack_padded_rows(arrays, options=STATIC)
    for name in ("input_ids", "segment_ids", "position_ids", "cu_seqlens", "masked_positions", "masked_labels",
                 "next_sentence_labels"):
        assert torch.equal(getattr(batch, name), getattr(reference, name)), name


def test_padding_segment_rounds_the_token_count_and_keeps_the_rows():
    arrays = rows()
    real = int(arrays["input_mask"].sum())
    batch = pack_padded_rows(arrays, options=PackingOptions(pad_to_multiple=32))
    assert batch.input_ids.shape[0] % 32 == 0 and batch.input_ids.shape[0] > real
    assert batch.cu_seqlens.shape == (8,) and batch.cu_seqlens[6] == real
    assert unpack(batch, 6) == expected_rows(arrays)


def model_outputs(batch, backend="sdpa", seed=0):
    torch.manual_seed(seed)
    model = BertForPreTraining(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                               attention_backend=backend)
    out = model(batch)
    out.loss.backward()
    return out, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_packed_equals_padded_losses_and_gradients(backend):
    arrays = rows(n=5, seq_len=32)
    expected, expected_grads = model_outputs(padded_batch(*(arrays[k] for k in KEYS)), backend)
    for batch in (pack_padded_rows(arrays), pack_padded_rows(arrays, options=STATIC),
                  pack_padded_rows(arrays, options=PackingOptions(pad_to_multiple=16, max_seqlen=32)),
                  reference_packed_batch(arrays)):
        out, grads = model_outputs(batch, backend)
        torch.testing.assert_close(out.loss, expected.loss, rtol=1e-5, atol=1e-6)
        for field in ("mlm_loss_sum", "mlm_correct", "mlm_count", "nsp_loss_sum", "nsp_correct", "nsp_count"):
            torch.testing.assert_close(getattr(out, field), getattr(expected, field), rtol=1e-5, atol=1e-5)
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_balanced_split_gives_equal_counts_and_near_equal_tokens():
    lengths = np.random.default_rng(0).integers(5, 513, 64)
    groups = balanced_split(lengths, 4)
    assert sorted(np.concatenate(groups).tolist()) == list(range(64))
    assert [len(g) for g in groups] == [16] * 4
    totals = [lengths[g].sum() for g in groups]
    assert max(totals) - min(totals) <= lengths.max()
    assert all((np.diff(g) > 0).all() for g in groups)


def test_bad_rows_are_refused_with_the_reason():
    arrays = rows()
    broken = dict(arrays, input_mask=arrays["input_mask"].copy())
    broken["input_mask"][0, 1] = 0
    with pytest.raises(InputError, match="prefix"):
        pack_padded_rows(broken)
    with pytest.raises(InputError, match="max_predictions_per_seq"):
        pack_padded_rows(arrays, max_predictions_per_seq=1)
    with pytest.raises(InputError, match="max_seqlen"):
        pack_padded_rows(arrays, options=PackingOptions(max_seqlen=3))


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_packed_fast_path_matches_padded_fp32(precision):
    """The fast path (packed, 'auto' attention under autocast) against the padded fp32 model on the GPU."""
    from bert_pretrain.step import autocast

    device = torch.device("cuda")
    arrays = mlperf_arrays(np.random.default_rng(3), n=16, seq_len=128, max_pred=20, vocab_size=100)
    config = tiny_config(hidden_size=128, num_attention_heads=2, intermediate_size=256, max_position_embeddings=128,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertForPreTraining(config, attention_backend="auto").to(device)
    reference = model(padded_batch(*(arrays[k] for k in KEYS)).to(device))
    reference.loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with autocast(device, precision):
        out = model(pack_padded_rows(arrays).to(device))
    out.loss.backward()
    assert abs(out.loss.item() - reference.loss.item()) < 2e-2 * reference.loss.item()
    for name, grad in ref_grads.items():
        error = (model.get_parameter(name).grad.float() - grad).norm() / grad.norm().clamp(min=1e-12)
        assert error < 5e-2, f"{name}: relative gradient error {error:.2e}"
