"""The HDF5 schema: exact keys/dtypes/shapes, atomic writes, validation errors naming the file."""

import os

import h5py
import numpy as np
import pytest
from conftest import CRAFTED_SHARDS, mlperf_arrays, write_crafted_shard
from support.peak_memory import cli_peak, one_line_refusal

from bert_pretrain.data import shards
from bert_pretrain.data.inspect_shard import read_any
from bert_pretrain.data.loader import ShardStream
from bert_pretrain.data.shards import ShardShape
from bert_pretrain.errors import InputError, SettingsMismatch


@pytest.fixture
def arrays():
    return mlperf_arrays(np.random.default_rng(0), n=10, seq_len=32, max_pred=5, vocab_size=100)


def test_padded_round_trip_has_the_reference_dtypes(tmp_path, arrays):
    path = tmp_path / "part_0_of_1.hdf5"
    shards.write_padded(path, arrays)
    with h5py.File(path) as f:
        assert set(f.keys()) == set(shards.PADDED_DTYPES)
        for key, dtype in shards.PADDED_DTYPES.items():
            assert f[key].dtype == dtype and f[key].compression is None
        assert f["input_ids"].shape == (10, 32) and f["masked_lm_positions"].shape == (10, 5)
    back = shards.read_padded(path, ShardShape(32, 5, 100))
    for key in arrays:
        np.testing.assert_array_equal(back[key], arrays[key])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_varlength_round_trip(tmp_path, arrays):
    path = tmp_path / "part_0_of_1.hdf5"
    shards.write_varlength(path, shards.padded_to_varlength(arrays))
    assert shards.shard_format(path) == "varlength"
    with h5py.File(path) as f:
        assert "input_mask" not in f
        assert h5py.check_vlen_dtype(f["input_ids"].dtype) == np.dtype("i2")
        assert h5py.check_vlen_dtype(f["segment_ids"].dtype) == np.dtype("i1")
        assert len(f["input_ids"][0]) == arrays["input_mask"][0].sum()
    back = shards.read_padded(path, ShardShape(32, 5, 100))
    for key in arrays:
        np.testing.assert_array_equal(back[key], arrays[key])


def test_failed_write_leaves_no_file(tmp_path, arrays):
    path = tmp_path / "part_0_of_1.hdf5"
    bad = dict(arrays, masked_lm_ids=None)
    with pytest.raises(Exception):
        shards.write_padded(path, bad)
    assert list(tmp_path.iterdir()) == []


def _write_raw(path, arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


@pytest.mark.parametrize("break_it, message", [
    (lambda a: a.pop("masked_lm_ids"), "missing keys ['masked_lm_ids']"),
    (lambda a: a.update(input_mask=a["input_mask"][:, :16]), "expected (10, max_seq_length)"),
    (lambda a: a.update(masked_lm_positions=a["masked_lm_positions"] + 40), "masked_lm_positions outside the sequence"),
    (lambda a: a.update(input_ids=a["input_ids"] + 200), "outside the vocab of 100"),
    (lambda a: a["input_mask"].__setitem__((0, slice(4, None)), 0), "row 0 masks position"),
    (lambda a: a["input_mask"].__setitem__((3, slice(None)), 0), "row 3 has no tokens"),
    (lambda a: a.update(segment_ids=a["segment_ids"].astype(np.float32)), "dtype float32"),
])
def test_validation_names_the_file_and_problem(tmp_path, arrays, break_it, message):
    break_it(arrays)
    path = tmp_path / "part_bad.hdf5"
    _write_raw(path, arrays)
    with pytest.raises(InputError) as err:
        shards.read_padded(path, ShardShape(32, 5, 100))
    assert str(path) in str(err.value) and message in str(err.value)


def test_width_mismatch_names_the_flag(tmp_path, arrays):
    path = tmp_path / "part_0.hdf5"
    shards.write_padded(path, arrays)
    with pytest.raises(InputError, match="pass --max_seq_length 32"):
        shards.read_padded(path, ShardShape(128, 5, 100))


def test_not_hdf5_and_listing(tmp_path):
    (tmp_path / "part_0.hdf5").write_text("not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        shards.read_padded(tmp_path / "part_0.hdf5")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in shards.list_shards(tmp_path)] == ["part_0.hdf5"]
    with pytest.raises(InputError, match="no such folder"):
        shards.list_shards(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no HDF5 shard"):
        shards.list_shards(tmp_path / "empty")


_CRAFTED_CASES = [
    ("external_storage", "'input_ids' keeps its data outside the shard (HDF5 external storage in"),
    ("virtual_dataset", "'input_ids' is a virtual dataset"),
    ("external_link", "'input_ids' is an HDF5 ExternalLink"),
    ("soft_link", "'input_ids' is an HDF5 SoftLink"),
    ("float64_ids", "'input_ids' has dtype float64, but the schema stores int32"),
    ("uint8_ids", "'input_ids' has dtype uint8, but the schema stores int32"),
    ("group_ids", "missing key 'input_ids'"),
    ("varlength_int32_ids", "'input_ids' has dtype variable-length rows of int32, but the schema stores "
                            "variable-length rows of int16"),
    ("gzip_ids", "'input_ids' is stored through the HDF5 filter(s) shuffle, deflate, which this project never writes"),
    ("unstored_ids", "'input_ids' declares shape (10, 32) (1,280 bytes) but stores 0 bytes"),
]


@pytest.mark.parametrize("variant, message", _CRAFTED_CASES)
def test_only_plain_data_of_the_schema_dtypes_is_read(tmp_path, arrays, variant, message):
    """Every reader (the training loader, evaluate and bench through read_padded; inspect; prepare's
    rerun check through num_samples) refuses a shard that reads another file or stores another dtype."""
    path = tmp_path / "part_0_of_1.hdf5"
    write_crafted_shard(path, arrays, variant)
    readers = [lambda: shards.read_padded(path, ShardShape(32, 5, 100)), lambda: read_any(path),
               lambda: shards.shard_layout(path),
               lambda: ShardStream(tmp_path, rank=0, world_size=1, seed=1, micro_batch_size=2,
                                   shape=ShardShape(32, 5, 100))]
    if variant in ("external_link", "soft_link"):
        readers.append(lambda: shards.num_samples(path))  # every link of the root is refused, not only the keys
    for read in readers:
        with pytest.raises(InputError) as err:
            read()
        assert str(path) in str(err.value) and message in str(err.value)


def test_every_crafted_shard_is_tried():
    assert [v for v, _ in _CRAFTED_CASES] == list(CRAFTED_SHARDS)


def test_nvidia_output_keeps_being_read(shared_data):
    """NVIDIA's create_pretraining_data.py output has exactly the schema's dtypes."""
    arrays = shards.read_padded(shared_data / "mlperf" / "reference_outputs" / "nvidia_sample_text_128.hdf5",
                                ShardShape(128, 20))
    assert len(arrays["next_sentence_labels"]) == 60


def test_a_shard_that_is_no_regular_file_is_named(tmp_path):
    """A FIFO would block the open; /dev/zero would never end."""
    fifo = tmp_path / "part_0_of_2.hdf5"
    os.mkfifo(fifo)
    (tmp_path / "part_1_of_2.hdf5").symlink_to("/dev/zero")
    for read in (shards.read_padded, shards.shard_layout):  # the readers, and the check of every shard at setup
        with pytest.raises(InputError, match=f"^{fifo}: is a FIFO \\(named pipe\\), not a regular file; "):
            read(fifo)
    with pytest.raises(InputError, match=r"part_1_of_2.hdf5: is a character device \(a symlink to /dev/zero\)"):
        read_any(tmp_path / "part_1_of_2.hdf5")


def _declaring_three_million_rows(path):
    """Every dataset of the schema at MLPerf's widths, gzip-compressed, 3 million rows declared and none
    written: a few kilobytes that a whole read turns into 7 GB of fill values."""
    with h5py.File(path, "w") as f:
        for key, dtype in shards.PADDED_DTYPES.items():
            width = (512,) if key in shards.SEQUENCE_KEYS else (76,) if key in shards.PREDICTION_KEYS else ()
            f.create_dataset(key, shape=(3_000_000, *width), dtype=dtype, compression="gzip", chunks=True)


@pytest.mark.slow
def test_inspect_of_a_gzip_shard_declaring_millions_of_rows_takes_an_ordinary_shards_memory(tmp_path):
    crafted, ordinary = tmp_path / "part_0_of_1.hdf5", tmp_path / "ordinary" / "part_0_of_1.hdf5"
    _declaring_three_million_rows(crafted)
    shards.write_padded(ordinary, mlperf_arrays(np.random.default_rng(0), n=256, seq_len=512, max_pred=76,
                                                vocab_size=30522))
    baseline = cli_peak("inspect", str(ordinary))
    assert baseline.returncode == 0 and baseline.peak_kb > 0, baseline.stderr
    run = cli_peak("inspect", str(crafted))
    assert one_line_refusal(run, f"{crafted}: 'input_ids' is stored through the HDF5 filter(s) deflate"), run.stderr
    assert run.peak_kb < 1.5 * baseline.peak_kb, (run.peak_kb, baseline.peak_kb)


def test_damaged_token_bytes_are_called_damage_not_another_vocab(tmp_path, arrays):
    """Random bytes over a shard's token ids give ids no vocab has (negative, or in the billions); a shard of
    another vocab gives ids just past this one's. Only the second is a setting to change; the first is a
    damaged file, which --skip_bad_shards may skip."""
    path = tmp_path / "part_0_of_1.hdf5"
    shards.write_padded(path, arrays)
    with h5py.File(path) as f:
        offset, size = f["input_ids"].id.get_offset(), f["input_ids"].id.get_storage_size()
    raw = bytearray(path.read_bytes())
    raw[offset + size // 2: offset + size // 2 + 64] = np.random.default_rng(1).bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError) as err:
        shards.read_padded(path, ShardShape(32, 5, 100))
    assert not isinstance(err.value, SettingsMismatch)
    message = str(err.value)
    assert message.startswith(f"{path}: key 'input_ids' holds token ids ") and "the shard is damaged" in message
    assert "another vocab" not in message

    other_vocab = dict(arrays, input_ids=np.where(arrays["input_mask"] == 1, arrays["input_ids"] + 100, 0))
    shards.write_padded(path, other_vocab)
    with pytest.raises(SettingsMismatch, match="was the shard made with another vocab"):
        shards.read_padded(path, ShardShape(32, 5, 100))
