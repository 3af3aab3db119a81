"""The HDF5 schema: exact keys/dtypes/shapes, atomic writes, validation errors naming the file."""

import h5py
import numpy as np
import pytest

from bert_pretrain.data import shards
from bert_pretrain.errors import InputError
from conftest import mlperf_arrays


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
    back = shards.read_padded(path, 32, 5, 100)
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
    back = shards.read_padded(path, 32, 5, 100)
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
        shards.read_padded(path, 32, 5, 100)
    assert str(path) in str(err.value) and message in str(err.value)


def test_width_mismatch_names_the_flag(tmp_path, arrays):
    path = tmp_path / "part_0.hdf5"
    shards.write_padded(path, arrays)
    with pytest.raises(InputError, match="pass --max_seq_length 32"):
        shards.read_padded(path, 128, 5, 100)


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
