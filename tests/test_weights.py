"""Checkpoint formats: NVIDIA {'model': state_dict}, HF folders, strict loading, safe unpickling."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
import transformers
from conftest import cli_here, mlperf_arrays, tiny_config, write_vocab_file
from support.peak_memory import cli_peak, one_line_refusal

from bert_pretrain.data.packing import padded_batch
from bert_pretrain.errors import InputError
from bert_pretrain.model import BertConfig, BertForPreTraining
from bert_pretrain.weights import (
    COPY_KEYS,
    export_hf,
    load_reference_state,
    load_weights,
    model_shapes,
    read_weights_file,
    reference_shapes,
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


def test_the_shapes_from_one_layer_are_those_of_the_whole_model():
    """`model_shapes` and `reference_shapes` repeat a one-layer model's layer; the full model agrees."""
    config = tiny_config(vocab_size=99, num_hidden_layers=3)
    with torch.device("meta"):
        model = BertForPreTraining(config)
    assert model_shapes(config) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    reference = {k: tuple(v.shape) for k, v in reference_state(model).items() if k not in COPY_KEYS}
    assert reference_shapes(config) == {k: (99, *s[1:]) if s[0] == 104 else s for k, s in reference.items()}


def _lying_hf_folder(folder):
    """An HF export of a tiny model whose config.json then claims a vocab of 1e8 and 5000 layers."""
    export_hf(BertForPreTraining(tiny_config(vocab_size=99)), folder,
              write_vocab_file(folder.parent / "vocab.txt", 99))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 10**8, "num_hidden_layers": 5000}))
    return folder


def test_an_hf_folder_whose_config_lies_is_refused_before_a_model_is_built(tmp_path):
    folder = _lying_hf_folder(tmp_path / "hf")
    for args in (("inspect", str(folder)), ("convert", "--input", str(folder), "--output", str(tmp_path / "o.pt"))):
        done = cli_here(*args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"error: {folder}: does not match the model of the given bert_config (missing: " \
               "bert.encoder.layer." in done.stderr and "(59976 in all)" in done.stderr  # 4998 layers of 12
        assert "bert.embeddings.word_embeddings.weight (99, 32) (expected (100000000, 32))" in done.stderr
        assert "check that its config.json describes these weights" in done.stderr


@pytest.mark.slow
def test_converting_a_lying_hf_folder_takes_an_honest_ones_memory(tmp_path):
    honest = tmp_path / "honest"
    export_hf(BertForPreTraining(tiny_config(vocab_size=99)), honest, write_vocab_file(tmp_path / "vocab.txt", 99))
    baseline = cli_peak("convert", "--input", str(honest), "--output", str(tmp_path / "honest.pt"))
    assert baseline.returncode == 0 and baseline.peak_kb > 0, baseline.stderr
    folder = _lying_hf_folder(tmp_path / "lying")
    run = cli_peak("convert", "--input", str(folder), "--output", str(tmp_path / "lying.pt"))
    assert one_line_refusal(run, f"error: {folder}: does not match the model"), run.stderr[-2000:]
    assert run.peak_kb < 1.5 * baseline.peak_kb, (run.peak_kb, baseline.peak_kb)


@pytest.mark.slow
def test_converting_a_pt_file_with_a_lying_bert_config_takes_an_honest_ones_memory(tmp_path):
    """The .pt input of `convert` is compared with --bert_config_path's model before that model is built."""
    config = tiny_config(vocab_size=99)
    save_reference_checkpoint(BertForPreTraining(config), tmp_path / "model.pt")
    honest = _config_file(tmp_path, config)
    baseline = cli_peak("convert", "--input", str(tmp_path / "model.pt"), "--bert_config_path", str(honest),
                        "--output", str(tmp_path / "honest.pt"))
    assert baseline.returncode == 0 and baseline.peak_kb > 0, baseline.stderr
    lying = tmp_path / "lying" / "bert_config.json"
    lying.parent.mkdir()
    lying.write_text(json.dumps({**config.to_dict(), "vocab_size": 10**8}))
    run = cli_peak("convert", "--input", str(tmp_path / "model.pt"), "--bert_config_path", str(lying),
                   "--output", str(tmp_path / "lying.pt"))
    assert one_line_refusal(run, "bert.embeddings.word_embeddings.weight (104, 32) (expected (100000000, 32))"), \
        run.stderr[-2000:]
    assert run.peak_kb < 1.5 * baseline.peak_kb, (run.peak_kb, baseline.peak_kb)


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_integer_or_complex_tensors_are_not_cast_into_float_weights(tmp_path, dtype):
    state = _state(tiny_config())
    state["bert.pooler.dense.bias"] = state["bert.pooler.dense.bias"].to(dtype)
    torch.save({"model": state}, tmp_path / "odd.pt")
    kind = str(dtype).removeprefix("torch.")
    for args in (("inspect", str(tmp_path / "odd.pt")),
                 ("convert", "--input", str(tmp_path / "odd.pt"), "--bert_config_path",
                  str(_config_file(tmp_path, tiny_config())), "--output", str(tmp_path / "out.pt"))):
        done = cli_here(*args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"{tmp_path / 'odd.pt'}: bert.pooler.dense.bias holds {kind} values, not floating-point weights" \
            in done.stderr
    assert not (tmp_path / "out.pt").exists()


def test_hfs_integer_position_ids_buffer_is_still_accepted(tmp_path):
    """Older HF files carry bert.embeddings.position_ids (int64), a buffer the loader drops unread."""
    config = tiny_config()
    state = {**_state(config), "bert.embeddings.position_ids": torch.arange(config.max_position_embeddings)[None]}
    torch.save(state, tmp_path / "hf_style.pt")
    load_weights(BertForPreTraining(config), tmp_path / "hf_style.pt")


def _config_file(folder, config):
    path = folder / "bert_config.json"
    path.write_text(json.dumps(config.to_dict()))
    return path


def test_a_stride_0_tensor_is_refused_not_counted(tmp_path):
    """One stored float viewed as (10**6, 10**6): a file of a few kB that claims 10**12 parameters."""
    state = _state(tiny_config())
    state["bert.pooler.dense.weight"] = torch.zeros(1).expand(10**6, 10**6)
    torch.save({"model": state}, tmp_path / "strided.pt")
    done = cli_here("inspect", str(tmp_path / "strided.pt"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert (f"{tmp_path / 'strided.pt'}: bert.pooler.dense.weight has shape (1000000, 1000000) (1,000,000,000,000 "
            "elements) but stores 1 (its strides (0, 0) repeat them)") in done.stderr


def test_a_file_that_is_no_checkpoint_is_named_with_the_format_it_needs(tmp_path):
    (tmp_path / "notes.pt").write_bytes(b"PK\x03\x04 not a zip archive")
    done = cli_here("convert", "--input", str(tmp_path / "notes.pt"), "--bert_config_path",
                    str(_config_file(tmp_path, tiny_config())), "--output", str(tmp_path / "out.pt"))
    assert done.returncode == 2 and "pass a PyTorch {'model': state_dict} or state-dict file" in done.stderr
    assert "}}" not in done.stderr


def test_a_weights_file_that_is_a_fifo_is_named(tmp_path):
    os.mkfifo(tmp_path / "model.pt")
    done = cli_here("convert", "--input", str(tmp_path / "model.pt"), "--bert_config_path",
                    str(_config_file(tmp_path, tiny_config())), "--output", str(tmp_path / "out.pt"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{tmp_path / 'model.pt'}: is a FIFO (named pipe), not a regular file" in done.stderr


def test_a_bert_config_that_is_a_device_is_named(tmp_path):
    torch.save({"model": _state(tiny_config())}, tmp_path / "model.pt")
    (tmp_path / "bert_config.json").symlink_to("/dev/zero")
    done = cli_here("convert", "--input", str(tmp_path / "model.pt"), "--bert_config_path",
                    str(tmp_path / "bert_config.json"), "--output", str(tmp_path / "out.pt"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{tmp_path / 'bert_config.json'}: is a character device (a symlink to /dev/zero), not a regular file; " \
           "pass the bert_config.json file itself as --bert_config_path" in done.stderr
