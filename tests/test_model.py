"""The model against HF transformers (the reference implementation) and against itself across layouts."""

import json

import numpy as np
import pytest
import torch
import transformers
from conftest import mlperf_arrays, reference_packed_batch, tiny_config

from bert_pretrain.batch import IGNORE_LABEL
from bert_pretrain.data.packing import padded_batch
from bert_pretrain.model import BertConfig, BertForPreTraining
from bert_pretrain.weights import load_reference_state

KEYS = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels")


def hf_twin(config: BertConfig, seed: int = 0):
    """A random HF BertForPreTraining with tanh GELU and our model holding the same weights."""
    torch.manual_seed(seed)
    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings, hidden_act="gelu_pytorch_tanh",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )
    hf = transformers.BertForPreTraining(hf_config).eval()
    ours = BertForPreTraining(config).eval()
    load_reference_state(ours, hf.state_dict(), "hf")
    return hf, ours


def dense_labels(arrays):
    """HF's label layout: (B, T) with -100 except at the masked positions."""
    labels = np.full(arrays["input_ids"].shape, -100, dtype=np.int64)
    for i, (pos, ids) in enumerate(zip(arrays["masked_lm_positions"], arrays["masked_lm_ids"])):
        n = np.count_nonzero(pos)
        labels[i, pos[:n]] = ids[:n]
    return torch.from_numpy(labels)


def test_matches_hf_transformers_logits_and_loss():
    config = tiny_config(vocab_size=99, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf, ours = hf_twin(config)
    arrays = mlperf_arrays(np.random.default_rng(1), n=6, seq_len=32, max_pred=5, vocab_size=99)
    labels = dense_labels(arrays)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(arrays["input_ids"]).long(),
                 token_type_ids=torch.from_numpy(arrays["segment_ids"]).long(),
                 attention_mask=torch.from_numpy(arrays["input_mask"]).long(),
                 labels=labels, next_sentence_label=torch.from_numpy(arrays["next_sentence_labels"]).long())
        out = ours(padded_batch(*(arrays[k] for k in KEYS)))
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    ref_mlm = torch.nn.functional.cross_entropy(ref.prediction_logits.reshape(-1, 99), labels.reshape(-1),
                                                ignore_index=-100, reduction="sum")
    torch.testing.assert_close(out.mlm_loss_sum, ref_mlm, rtol=1e-5, atol=1e-5)
    assert out.mlm_count == (labels != -100).sum()


def test_vocab_padding_rows_are_zero_and_never_predicted():
    config = tiny_config(vocab_size=99)
    assert config.padded_vocab_size == 104
    model = BertForPreTraining(config)
    assert model.bert.embeddings.word_embeddings.weight.shape[0] == 104
    assert torch.all(model.bert.embeddings.word_embeddings.weight[99:] == 0)
    with torch.no_grad():
        model.cls.predictions.bias[99:] = 100.0  # would win every argmax and the softmax if it counted
    assert model.cls.predictions(torch.randn(7, config.hidden_size)).shape == (7, 99)
    seen = []  # the training path's (M, 104) logits, as the loss receives them
    padded_logits = model.cls.predictions.padded_logits
    model.cls.predictions.padded_logits = lambda x: seen.append(padded_logits(x)) or seen[-1]
    arrays = mlperf_arrays(np.random.default_rng(3), n=4, seq_len=24, max_pred=4, vocab_size=99)
    out = model(padded_batch(*(arrays[k] for k in KEYS)))
    logits, labels = seen[0].detach(), padded_batch(*(arrays[k] for k in KEYS)).masked_labels
    assert torch.isneginf(logits[:, 99:]).all()
    real, used = logits[:, :99], labels != IGNORE_LABEL  # the loss and accuracy of the unpadded vocabulary
    torch.testing.assert_close(out.mlm_loss_sum, torch.nn.functional.cross_entropy(real[used], labels[used],
                                                                                   reduction="sum"))
    assert out.mlm_correct == (real[used].argmax(-1) == labels[used]).sum() and out.mlm_count == used.sum()


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_packed_equals_padded_losses_and_gradients(backend):
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    arrays = mlperf_arrays(np.random.default_rng(2), n=5, seq_len=24, max_pred=4, vocab_size=100)
    torch.manual_seed(0)
    model = BertForPreTraining(config, attention_backend=backend)
    results = []
    for batch in (padded_batch(*(arrays[k] for k in KEYS)), reference_packed_batch(arrays)):
        model.zero_grad(set_to_none=True)
        out = model(batch)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (padded, padded_grads), (packed, packed_grads) = results
    torch.testing.assert_close(packed.loss, padded.loss, rtol=1e-6, atol=1e-6)
    assert packed.mlm_correct == padded.mlm_correct and packed.nsp_correct == padded.nsp_correct
    assert padded_grads.keys() == packed_grads.keys()
    for name in padded_grads:
        torch.testing.assert_close(packed_grads[name], padded_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_under_autocast_the_residual_stream_stays_in_bf16_and_the_loss_near_fp32():
    """Layer outputs in the compute dtype (half the bytes between layers); loss and gradients close to fp32."""
    config = tiny_config(hidden_size=64, num_attention_heads=2, intermediate_size=128,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    arrays = mlperf_arrays(np.random.default_rng(4), n=6, seq_len=32, max_pred=5, vocab_size=100)
    batch = reference_packed_batch(arrays)
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    reference = model(batch)
    reference.loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    layer_dtypes = []
    hook = model.bert.encoder.layer[-1].register_forward_hook(lambda m, args, out: layer_dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    hook.remove()
    out.loss.backward()
    assert layer_dtypes == [torch.bfloat16]
    assert abs(out.loss.item() - reference.loss.item()) < 2e-2 * reference.loss.item()
    for name, grad in ref_grads.items():
        error = (model.get_parameter(name).grad - grad).norm() / grad.norm().clamp(min=1e-12)
        assert error < 5e-2, f"{name}: relative gradient error {error:.2e}"


def test_math_backend_matches_sdpa():
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    arrays = mlperf_arrays(np.random.default_rng(3), n=4, seq_len=16, max_pred=3, vocab_size=100)
    batch = padded_batch(*(arrays[k] for k in KEYS))
    torch.manual_seed(0)
    model = BertForPreTraining(config).eval()
    with torch.no_grad():
        sdpa = model(batch).loss
        model.attention_backend = "math"
        math = model(batch).loss
    torch.testing.assert_close(math, sdpa, rtol=1e-6, atol=1e-6)


def test_loss_is_mean_over_masked_tokens_plus_nsp():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    labels = torch.tensor([0, 2, IGNORE_LABEL])
    from bert_pretrain.model import pretraining_loss

    out = pretraining_loss(logits, labels, torch.zeros(2, 2), torch.tensor([0, 1]))
    expected_mlm = (torch.logsumexp(logits[0], 0) - 2.0 + torch.logsumexp(logits[1], 0) - 0.0) / 2
    torch.testing.assert_close(out.loss, expected_mlm + torch.log(torch.tensor(2.0)))
    assert out.mlm_count == 2 and out.mlm_correct == 1


def test_reads_the_google_bert_configs(shared_data):
    large = BertConfig.from_json_file(shared_data / "configs" / "bert_config_large_uncased.json")
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads) == (1024, 24, 16)
    assert large.padded_vocab_size == 30528
    assert large.gelu_approximate == "tanh"  # "gelu" means the tanh form in the reference
    with torch.device("meta"):
        model = BertForPreTraining(large)
    params = sum(p.numel() for p in model.parameters())
    assert 335_000_000 < params < 337_000_000


def test_gelu_names(tmp_path):
    assert tiny_config(hidden_act="gelu_new").gelu_approximate == "tanh"
    assert tiny_config(hidden_act="gelu_pytorch_tanh").gelu_approximate == "tanh"
    assert tiny_config(hidden_act="gelu_exact").gelu_approximate == "none"
    hf_file = tmp_path / "config.json"
    hf_file.write_text(json.dumps(tiny_config().to_dict()))
    assert BertConfig.from_json_file(hf_file, hf_names=True).gelu_approximate == "none"  # HF "gelu" is erf
    # An HF config.json passed as --bert_config_path is recognised by its model_type, whoever reads it
    transformers_file = tmp_path / "hf" / "config.json"
    transformers.BertConfig(hidden_act="gelu").save_pretrained(transformers_file.parent)
    assert BertConfig.from_json_file(transformers_file).gelu_approximate == "none"
    assert BertConfig.from_json_file(hf_file).gelu_approximate == "tanh"  # a bert_config.json: the reference's
    with pytest.raises(ValueError, match="relu"):
        tiny_config(hidden_act="relu")
