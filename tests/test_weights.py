"""Checkpoint formats: NVIDIA {'model': state_dict}, HF folders, strict loading, safe unpickling."""

import pickle

import numpy as np
import pytest
import torch
import transformers
from conftest import mlperf_arrays, tiny_config, write_vocab_file

from bert_pretrain.data.packing import padded_batch
from bert_pretrain.errors import InputError
from bert_pretrain.model import BertConfig, BertForPreTraining
from bert_pretrain.weights import (
    export_hf,
    load_reference_state,
    load_weights,
    read_weights_file,
    reference_state,
    save_reference_checkpoint,
)

KEYS = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels")


def test_bert_large_reference_state_has_the_nvidia_399_keys(shared_data):
    config = BertConfig.from_json_file(shared_data / "configs" / "bert_config_large_uncased.json")
    with torch.device("meta"):
        state = reference_state(BertForPreTraining(config))
    assert len(state) == 399
    assert state["bert.embeddings.word_embeddings.weight"].shape == (30528, 1024)
    assert state["cls.predictions.decoder.weight"].shape == (30528, 1024)
    assert state["bert.encoder.layer.23.attention.self.query.weight"].shape == (1024, 1024)
    assert state["bert.encoder.layer.0.intermediate.dense.weight"].shape == (4096, 1024)
    assert not any("qkv" in k for k in state)


def test_nvidia_file_round_trip_with_padded_or_unpadded_vocab(tmp_path):
    config = tiny_config(vocab_size=99)
    torch.manual_seed(0)
    source = BertForPreTraining(config)
    save_reference_checkpoint(source, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert list(loaded) == ["model"]
    unpadded = {k: (v[:99] if v.shape[0] == 104 else v) for k, v in loaded["model"].items()}
    for state in (loaded["model"], unpadded):
        target = BertForPreTraining(config)
        load_reference_state(target, state, "test")
        for name, tensor in source.state_dict().items():
            assert torch.equal(target.state_dict()[name], tensor), name
    # a smaller vocab is not padded up to the config's: that would load a model that knows few of its words
    with pytest.raises(InputError, match=r"mis-shaped: .*word_embeddings.weight \(104, 32\) \(expected \(200, 32\)\)"):
        load_reference_state(BertForPreTraining(tiny_config(vocab_size=200)), loaded["model"], "small_vocab.pt")


def test_hf_export_gives_the_same_logits(tmp_path):
    config = tiny_config(vocab_size=99, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(1)
    model = BertForPreTraining(config).eval()
    export_hf(model, tmp_path / "hf", write_vocab_file(tmp_path / "vocab.txt", 99))
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    arrays = mlperf_arrays(np.random.default_rng(0), n=4, seq_len=32, max_pred=5, vocab_size=99)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(arrays["input_ids"]).long(),
                 token_type_ids=torch.from_numpy(arrays["segment_ids"]).long(),
                 attention_mask=torch.from_numpy(arrays["input_mask"]).long())
        batch = padded_batch(*(arrays[k] for k in KEYS))
        tokens, pooled = model.bert(batch)
        ours = model.cls.predictions(tokens).reshape(ref.prediction_logits.shape)
        nsp = model.cls.seq_relationship(pooled)
    torch.testing.assert_close(ours, ref.prediction_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nsp, ref.seq_relationship_logits, rtol=1e-5, atol=1e-5)
    # and the HF folder loads back into this project's model
    again = BertForPreTraining(config)
    load_weights(again, tmp_path / "hf")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, msg=name)


def _state(config):
    return reference_state(BertForPreTraining(config))


def test_strict_loading_lists_missing_extra_and_misshaped():
    config = tiny_config()
    state = _state(config)
    del state["bert.pooler.dense.bias"]
    state["bert.encoder.layer.9.output.dense.weight"] = torch.zeros(3)
    state["cls.seq_relationship.weight"] = torch.zeros(3, 32)
    with pytest.raises(InputError) as err:
        load_reference_state(BertForPreTraining(config), state, "bad.pt")
    message = str(err.value)
    assert "bad.pt" in message
    assert "missing: bert.pooler.dense.bias" in message
    assert "unexpected: bert.encoder.layer.9.output.dense.weight" in message
    assert "mis-shaped: cls.seq_relationship.weight (3, 32) (expected (2, 32))" in message


def test_an_untied_decoder_is_refused_and_a_tied_one_loads():
    config = tiny_config()
    state = _state(config)
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    load_reference_state(BertForPreTraining(config), state, "tied.pt")  # HF's files carry the tied copy
    state["cls.predictions.decoder.weight"] = torch.randn_like(state["cls.predictions.decoder.weight"])
    with pytest.raises(InputError, match=r"untied\.pt: cls\.predictions\.decoder\.weight differs from "
                                         r"bert\.embeddings\.word_embeddings\.weight"):
        load_reference_state(BertForPreTraining(config), state, "untied.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_refuses_to_unpickle_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload()}, f, protocol=2)
    with pytest.raises(InputError, match="evil.pt"):
        read_weights_file(path)
