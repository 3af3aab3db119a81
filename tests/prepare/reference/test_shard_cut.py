"""The cut of per-part HDF5 files into shards: the sizes rule, every row once in part order, streamed."""

import numpy as np
import pytest
from conftest import mlperf_arrays

from bert_pretrain.data import shards
from bert_pretrain.prepare.reference import shard_cut


@pytest.mark.parametrize("total,count", [(0, 1), (5, 5), (17, 4), (16, 4), (100, 7), (2048 * 73_000 + 1234, 2048)])
def test_sizes_differ_by_at_most_one_the_first_ones_larger(total, count):
    sizes = shard_cut.shard_sizes(total, count)
    assert len(sizes) == count and sum(sizes) == total and max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True) and sizes.count(total // count + 1) == total % count


@pytest.fixture
def parts(tmp_path):
    rng = np.random.default_rng(0)
    made = []
    for i, rows in enumerate([7, 0, 12, 1, 9]):  # an empty part too: it adds no row
        arrays = mlperf_arrays(rng, rows, 32, 5, 100)
        arrays["input_ids"][:, 1] = np.arange(rows) + 1000 * i  # each row's origin, to follow it
        path = tmp_path / f"part-{i:05d}-of-00005.hdf5"
        if rows:
            shards.write_padded(path, arrays)
        else:
            with shards.padded_writer(path, 0, 32, 5):
                pass
        made.append((path, arrays))
    return made


def test_every_row_lands_once_in_part_order_read_a_block_at_a_time(parts, tmp_path, monkeypatch):
    reads = []
    real = shards.read_padded_rows
    monkeypatch.setattr(shards, "read_padded_rows", lambda path, start, stop: reads.append(stop - start) or real(
        path, start, stop))
    monkeypatch.setattr(shard_cut, "_BLOCK_ROWS", 3)
    paths = [p for p, _ in parts]
    outputs = [tmp_path / "2048_like" / f"part_{i}_of_4.hdf5" for i in range(4)]
    jobs = shard_cut.cut_jobs(paths, [shards.num_samples(p) for p in paths], outputs, 32, 5)
    for job in jobs:
        shard_cut.write_cut_shard(job)
    written = [shards.read_padded(p) for p in outputs]
    assert [len(w["next_sentence_labels"]) for w in written] == [8, 7, 7, 7]  # 29 rows: the first one larger
    for key in shards.PADDED_DTYPES:
        assert np.array_equal(np.concatenate([w[key] for w in written]), np.concatenate([a[key] for _, a in parts]))
    assert max(reads) <= 3 and sum(reads) == 29  # never a part at once, and each row read once


def test_a_shard_is_whole_or_absent(parts, tmp_path, monkeypatch):
    paths = [p for p, _ in parts]
    job = shard_cut.cut_jobs(paths, [shards.num_samples(p) for p in paths], [tmp_path / "out" / "part_0_of_1.hdf5"], 32, 5)[0]
    monkeypatch.setattr(shard_cut, "_BLOCK_ROWS", 4)
    calls = iter(range(100))
    real = shards.read_padded_rows

    def failing(path, start, stop):
        if next(calls) == 3:
            raise OSError("disk went away")
        return real(path, start, stop)

    monkeypatch.setattr(shards, "read_padded_rows", failing)
    with pytest.raises(OSError):
        shard_cut.write_cut_shard(job)
    assert list((tmp_path / "out").iterdir()) == []  # not even the temporary
