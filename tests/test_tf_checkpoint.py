"""TensorFlow checkpoints read without TensorFlow, against a checkpoint TensorFlow itself wrote.

`../shared/data/tf_checkpoint/` holds a `tf.compat.v1.train.Saver` checkpoint of a tiny BERT in
google-research names with the MLPerf LAMB optimizer's variables, and `tf_values.npz`: every variable as
TensorFlow's own reader returns it. The expected weights come from a transcription of NVIDIA's
`convert_tf_checkpoint.py` loop run on HF transformers' `BertForPreTraining` (NVIDIA's attribute names).
Other layouts (Snappy-compressed index blocks, several data files, damaged files) are built here from the
real files with the writer of the table format in tests/oracles/tf_table_writer.py.
"""

import json
import os
import re
import shutil
import struct

import numpy as np
import pytest
import torch
import transformers
from conftest import cli_here, mlperf_arrays
from oracles.tf_table_writer import (
    masked_crc,
    proto_bytes,
    proto_varint,
    snappy_reencoded,
    varint,
    write_checkpoint,
    write_table,
)

from bert_pretrain import cli, tf_checkpoint
from bert_pretrain.data.shards import write_padded
from bert_pretrain.tf_checkpoint import read_tf_weights
from bert_pretrain.tf_table import read_table
from bert_pretrain.weights import read_bert_config, reference_shapes

PREFIX = "model.ckpt-28252"
SKIPPED = ("adam_v", "adam_m", "global_step", "LAMB", "LAMB_1", "beta1_power", "beta2_power")


@pytest.fixture
def fixture_dir(shared_data):
    return shared_data / "tf_checkpoint"


@pytest.fixture
def tf_values(fixture_dir):
    with np.load(fixture_dir / "tf_values.npz") as values:
        return {name: values[name] for name in values.files}


def nvidia_conversion(values: dict, config_path) -> transformers.BertForPreTraining:
    """convert_tf_checkpoint.py's loop, transcribed: walk the model's attributes along each TF name."""
    config = json.loads(config_path.read_text())
    model = transformers.BertForPreTraining(transformers.BertConfig(**config))
    for name, array in values.items():
        parts = name.split("/")
        if any(n in SKIPPED for n in parts):
            continue
        pointer = model
        for m_name in parts:
            pieces = re.split(r"_(\d+)", m_name) if re.fullmatch(r"[A-Za-z]+_\d+", m_name) else [m_name]
            if pieces[0] in ("kernel", "gamma", "output_weights"):
                pointer = pointer.weight
            elif pieces[0] in ("output_bias", "beta"):
                pointer = pointer.bias
            else:
                pointer = getattr(pointer, pieces[0])
            if len(pieces) >= 2:
                pointer = pointer[int(pieces[1])]
        if m_name[-11:] == "_embeddings":
            pointer = pointer.weight
        elif m_name == "kernel":
            array = np.ascontiguousarray(np.transpose(array))
        assert pointer.shape == array.shape, name
        pointer.data = torch.from_numpy(array)
    return model


def copy_checkpoint(fixture_dir, target):
    target.mkdir(exist_ok=True)
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copyfile(fixture_dir / (PREFIX + suffix), target / (PREFIX + suffix))
    return target / PREFIX


def assert_equals_reference(state: dict, reference: transformers.BertForPreTraining):
    """Every weight as the transcribed NVIDIA conversion holds it, bit for bit, and no other."""
    expected = {k: v for k, v in reference.state_dict().items()
                if k not in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
                             "bert.embeddings.position_ids")}
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the tests ------------------------------------------------------------------------------------------

def test_the_weights_equal_tensorflows_values_as_nvidias_converter_maps_them(fixture_dir, tf_values):
    config = read_bert_config(fixture_dir / "bert_config.json")
    state, skipped = read_tf_weights(fixture_dir / f"{PREFIX}.index", config)
    assert_equals_reference(state, nvidia_conversion(tf_values, fixture_dir / "bert_config.json"))
    assert skipped == sum(any(p in SKIPPED for p in name.split("/")) for name in tf_values) == 95


def test_tensors_read_in_many_chunks_are_verified_across_them(fixture_dir, tf_values, monkeypatch):
    monkeypatch.setattr(tf_checkpoint, "_READ_CHUNK", 100)  # every tensor over 100 bytes streams in pieces
    config = read_bert_config(fixture_dir / "bert_config.json")
    state, _ = read_tf_weights(fixture_dir / f"{PREFIX}.index", config)
    assert_equals_reference(state, nvidia_conversion(tf_values, fixture_dir / "bert_config.json"))


def test_convert_writes_nvidias_format_with_the_padded_vocab(fixture_dir, tf_values, tmp_path, capsys):
    output = tmp_path / f"{PREFIX}.apex.pt"
    code, out, err = run(capsys, "convert", "--input", str(fixture_dir / PREFIX), "--bert_config_path",
                         str(fixture_dir / "bert_config.json"), "--output", str(output))
    assert code == 0, err
    assert "skipped 95 optimizer variable(s)" in out
    saved = torch.load(output, weights_only=True)
    assert list(saved) == ["model"] and len(saved["model"]) == 47  # BERT-large: 399 (below)
    reference = nvidia_conversion(tf_values, fixture_dir / "bert_config.json").state_dict()
    for name, tensor in saved["model"].items():
        if tensor.shape[:1] == (1024,):  # vocab 1018 padded with zero rows, as the .pt loader pads it
            assert not tensor[1018:].any(), name
            tensor = tensor[:1018]
        assert torch.equal(tensor, reference[name]), name


def test_bert_large_is_398_variables_and_399_keys(shared_data):
    """398 TensorFlow weight variables, plus the tied decoder in the .pt: NVIDIA's 399 keys."""
    assert len(reference_shapes(read_bert_config(shared_data / "configs" / "bert_config_large_uncased.json"))) == 398


def test_an_index_with_snappy_compressed_blocks(fixture_dir, tf_values, tmp_path):
    prefix = copy_checkpoint(fixture_dir, tmp_path)
    plain = (fixture_dir / f"{PREFIX}.index").read_bytes()
    prefix.with_name(PREFIX + ".index").write_bytes(snappy_reencoded(plain))
    assert read_table(prefix.with_name(PREFIX + ".index")) == read_table(fixture_dir / f"{PREFIX}.index")
    state, _ = read_tf_weights(prefix.with_name(PREFIX + ".index"), read_bert_config(fixture_dir / "bert_config.json"))
    assert_equals_reference(state, nvidia_conversion(tf_values, fixture_dir / "bert_config.json"))


@pytest.mark.parametrize("layout", [dict(shards=3), dict(snappy=True, block_size=300, restart_interval=4)],
                         ids=["three-data-files", "many-small-snappy-blocks"])
def test_checkpoints_written_in_other_layouts(fixture_dir, tf_values, tmp_path, layout):
    write_checkpoint(tmp_path / PREFIX, tf_values, **layout)
    state, skipped = read_tf_weights(tmp_path / f"{PREFIX}.index", read_bert_config(fixture_dir / "bert_config.json"))
    assert_equals_reference(state, nvidia_conversion(tf_values, fixture_dir / "bert_config.json"))
    assert skipped == 95


def test_the_checkpoint_is_named_by_prefix_index_meta_or_data_file(fixture_dir, tmp_path, capsys):
    for i, name in enumerate((PREFIX, f"{PREFIX}.index", f"{PREFIX}.meta", f"{PREFIX}.data-00000-of-00001")):
        code, out, err = run(capsys, "convert", "--input", str(fixture_dir / name), "--bert_config_path",
                             str(fixture_dir / "bert_config.json"), "--output", str(tmp_path / f"{i}.pt"))
        assert code == 0 and f"TensorFlow checkpoint {fixture_dir / PREFIX}.index" in out, err


def _damage_truncated(prefix, values):
    data = prefix.with_name(PREFIX + ".data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-100])
    return data, "truncated"


def _damage_flipped_byte(prefix, values):
    data = prefix.with_name(PREFIX + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[raw.find(values["bert/encoder/layer_1/output/dense/kernel"].tobytes()) + 77] ^= 0x01
    data.write_bytes(bytes(raw))
    return data, "fails its CRC-32C check"


def _damage_missing_shard(prefix, values):
    write_checkpoint(prefix, values, shards=2)
    missing = prefix.with_name(PREFIX + ".data-00001-of-00002")
    missing.unlink()
    return missing, "missing"


def _damage_unknown_variable(prefix, values):
    write_checkpoint(prefix, {**values, "bert/encoder/layer_0/attention/self/extra/kernel": values[
        "bert/encoder/layer_0/attention/self/query/kernel"]})
    return prefix.with_name(PREFIX + ".index"), "no model parameter: bert/encoder/layer_0/attention/self/extra/kernel"


def _damage_index_block(prefix, values):
    index = prefix.with_name(PREFIX + ".index")
    raw = bytearray(index.read_bytes())
    raw[20] ^= 0x01
    index.write_bytes(bytes(raw))
    return index, "checksum"


@pytest.mark.parametrize("damage", [_damage_truncated, _damage_flipped_byte, _damage_missing_shard,
                                    _damage_unknown_variable, _damage_index_block],
                         ids=["truncated", "flipped-byte", "missing-shard", "unknown-variable", "index-checksum"])
def test_damaged_checkpoints_are_one_line_errors_naming_the_file(fixture_dir, tf_values, tmp_path, capsys, damage):
    prefix = copy_checkpoint(fixture_dir, tmp_path / "ckpt")
    named, fragment = damage(prefix, tf_values)
    output = tmp_path / "out.pt"
    code, _, err = run(capsys, "convert", "--input", str(prefix), "--bert_config_path",
                       str(fixture_dir / "bert_config.json"), "--output", str(output))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"bert-pretrain convert: error: {named}: "), err
    assert fragment in err and not output.exists()


def test_a_shape_that_bert_config_does_not_give_is_named(fixture_dir, tmp_path, capsys):
    config = json.loads((fixture_dir / "bert_config.json").read_text())
    (tmp_path / "bert_config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    code, _, err = run(capsys, "convert", "--input", str(fixture_dir / PREFIX), "--bert_config_path",
                       str(tmp_path / "bert_config.json"), "--output", str(tmp_path / "out.pt"))
    assert code == 2 and err.count("\n") == 1 and f"{fixture_dir / PREFIX}.index: " in err
    assert "bert/encoder/layer_0/intermediate/dense/kernel (32, 64) (expected (32, 128))" in err
    assert "bert/encoder/layer_0/output/dense/kernel (64, 32) (expected (128, 32))" in err


def test_the_converted_file_evaluates_and_inspects(fixture_dir, tf_values, tmp_path, capsys):
    output = tmp_path / f"{PREFIX}.apex.pt"
    assert run(capsys, "convert", "--input", str(fixture_dir / PREFIX), "--bert_config_path",
               str(fixture_dir / "bert_config.json"), "--output", str(output))[0] == 0
    arrays = mlperf_arrays(np.random.default_rng(0), n=16, seq_len=32, max_pred=5, vocab_size=1018)
    write_padded(tmp_path / "eval" / "part_eval_10k.hdf5", arrays)
    code, out, err = run(capsys, "evaluate", "--init_checkpoint", str(output), "--bert_config_path",
                         str(fixture_dir / "bert_config.json"), "--eval_dir", str(tmp_path / "eval"),
                         "--max_seq_length", "32", "--max_predictions_per_seq", "5", "--device", "cpu")
    assert code == 0 and json.loads(out)["samples"] == 16, err
    code, out, _ = run(capsys, "inspect", str(output))
    assert code == 0 and "2 layers, hidden 32, intermediate 64, vocab rows 1024" in out
    code, out, _ = run(capsys, "inspect", str(fixture_dir / PREFIX))
    weights = sum(v.size for k, v in tf_values.items() if not any(p in SKIPPED for p in k.split("/")))
    assert code == 0 and "TensorFlow checkpoint (141 variables in 1 data file(s): 46 weights, 95 optimizer" in out
    assert f"vocab rows 1018, 128 positions, 2 segment types; {weights:,} parameters in 46 tensors" in out


def test_a_shape_whose_byte_count_wraps_int64_is_refused(tmp_path):
    """(2**32, 2**32) float32 claims 2**66 bytes; an int64 product wraps it to 0, the size the entry gives."""
    shape = proto_bytes(2, proto_varint(1, 2**32)) + proto_bytes(2, proto_varint(1, 2**32))
    entry = proto_varint(1, 1) + proto_bytes(2, shape) + varint(6 << 3 | 5) + struct.pack("<I", masked_crc(b""))
    header = proto_varint(1, 1) + proto_bytes(3, proto_varint(1, 1))
    prefix = tmp_path / PREFIX
    prefix.with_name(PREFIX + ".index").write_bytes(write_table([(b"", header), (b"bert/pooler/dense/bias", entry)]))
    prefix.with_name(PREFIX + ".data-00000-of-00001").write_bytes(b"")
    for args in (("inspect", str(prefix)), ("convert", "--input", str(prefix), "--bert_config_path",
                                            str(_tiny_bert_config(tmp_path)), "--output", str(tmp_path / "o.pt"))):
        done = cli_here(*args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"{prefix}.index: variable bert/pooler/dense/bias has shape (4294967296, 4294967296) and 0 bytes" in \
            done.stderr


def _tiny_bert_config(folder):
    path = folder / "bert_config.json"
    path.write_text(json.dumps(dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, max_position_embeddings=64)))
    return path


def test_an_integer_variable_is_not_cast_into_a_weight(fixture_dir, tf_values, tmp_path):
    values = {**tf_values, "bert/embeddings/token_type_embeddings":
              tf_values["bert/embeddings/token_type_embeddings"].astype(np.int64)}
    write_checkpoint(tmp_path / PREFIX, values)
    done = cli_here("convert", "--input", str(tmp_path / PREFIX), "--bert_config_path",
                    str(fixture_dir / "bert_config.json"), "--output", str(tmp_path / "out.pt"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert (f"{tmp_path / PREFIX}.index: variable bert/embeddings/token_type_embeddings holds int64 values, not "
            "floating-point weights") in done.stderr
    assert not (tmp_path / "out.pt").exists()


def _fifo(path):
    path.unlink()
    os.mkfifo(path)
    return "a FIFO (named pipe)"


def _dev_zero(path):
    path.unlink()
    path.symlink_to("/dev/zero")
    return "a character device (a symlink to /dev/zero)"


def _folder(path):
    path.unlink()
    path.mkdir()
    return "a folder"


@pytest.mark.parametrize("which", [".index", ".data-00000-of-00001"])
@pytest.mark.parametrize("replace", [_fifo, _dev_zero, _folder], ids=["fifo", "dev-zero", "folder"])
def test_an_index_or_data_file_that_is_no_regular_file_is_named(tmp_path, which, replace):
    write_checkpoint(tmp_path / PREFIX, {"bert/pooler/dense/bias": np.zeros(4, np.float32)})
    odd = tmp_path / (PREFIX + which)
    kind = replace(odd)
    done = cli_here("inspect", str(tmp_path / PREFIX))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"error: {odd}: is {kind}, not a regular file; " in done.stderr
