"""The training stream: the reference's seeds and per-rank shard assignment, exact positions, bad shards."""

import random
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import mlperf_arrays

from bert_pretrain.data.loader import (
    DataPosition,
    ShardStream,
    epoch_files,
    row_order,
    shard_index,
    shuffling_seed,
    worker_seed,
)
from bert_pretrain.data.shards import ShardShape, list_shards, read_padded, write_padded
from bert_pretrain.errors import InputError

SEQ, PRED, VOCAB = 16, 3, 100


def reference_setup_seeds(master_seed, world_size, epochs):
    """The reference's utils.setup_seeds, transcribed: worker seeds first, then shuffling seeds."""
    rng = random.Random(master_seed)
    workers = [rng.randint(0, 2**32 - 1) for _ in range(world_size)]
    shuffling = [rng.randint(0, 2**32 - 1) for _ in range(epochs)]
    return workers, shuffling


@pytest.fixture
def shards(tmp_path):
    """Five shards of different sizes; every row is unique (its input_ids bytes identify it)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, rows in enumerate((7, 5, 9, 4, 6)):
        write_padded(folder / f"part_{i}_of_5.hdf5", mlperf_arrays(rng, rows, SEQ, PRED, VOCAB))
    (folder / "README.txt").write_text("not a shard")
    return folder


def stream(folder, rank=0, world=1, batch=4, **kwargs):
    return ShardStream(folder, rank=rank, world_size=world, seed=1234, micro_batch_size=batch,
                       shape=ShardShape(SEQ, PRED, VOCAB), **kwargs)


def row_keys(batch):
    return [row.numpy().tobytes() for row in batch.input_ids]


def take(s, n):
    return [b for _, b in zip(range(n), s)]


def test_seeds_are_the_reference_setup_seeds():
    workers, shuffling = reference_setup_seeds(17103, 8, 4)
    assert [worker_seed(17103, r, 8) for r in range(8)] == workers
    assert [shuffling_seed(17103, e, 8) for e in range(4)] == shuffling


def test_shard_assignment_is_the_reference_formula():
    # 2 processes, 4 files: rank r reads files r, r+2, r, r+2 of the epoch's order
    assert [shard_index(f, 0, 2, 4) for f in range(4)] == [0, 2, 0, 2]
    assert [shard_index(f, 1, 2, 4) for f in range(4)] == [1, 3, 1, 3]
    # 4 processes, 3 files: remainder 1 shifts each slot by f
    assert [shard_index(0, r, 4, 3) for r in range(4)] == [0, 1, 2, 0]
    assert [shard_index(1, r, 4, 3) for r in range(4)] == [2, 0, 1, 2]


def test_epoch_order_is_sorted_names_shuffled_by_the_epoch_seed(shards):
    files = list_shards(shards)
    expected = sorted(files)
    random.Random(reference_setup_seeds(1234, 2, 3)[1][1]).shuffle(expected)
    assert epoch_files(files, 1234, 1, 2) == expected
    assert epoch_files(files, 1234, 2, 2) != expected


def test_one_process_sees_every_row_once_per_epoch_in_full_batches(shards):
    total = 7 + 5 + 9 + 4 + 6
    s = stream(shards, batch=3)
    batches = take(s, total // 3)
    assert all(b.input_ids.shape == (3, SEQ) for b in batches)
    seen = Counter(k for b in batches for k in row_keys(b))
    assert len(seen) == total - total % 3 and max(seen.values()) == 1
    s.close()


def test_rows_follow_the_recomputable_permutation(shards):
    s = stream(shards, batch=2)
    first_file = epoch_files(list_shards(shards), 1234, 1, 1)[0]
    rows = read_padded(first_file)["input_ids"]
    order = row_order(worker_seed(1234, 0, 1), 1, 0, len(rows))
    got = np.concatenate([b.input_ids.numpy() for b in take(s, 2)])
    np.testing.assert_array_equal(got, rows[order[:4]])


def test_two_ranks_read_their_own_files_and_never_run_dry(shards):
    files = epoch_files(list_shards(shards), 1234, 1, 2)
    first_rows = {}
    for rank in (0, 1):
        s = stream(shards, rank=rank, world=2, batch=4)
        batches = take(s, 30)  # far more rows than one epoch holds: the stream goes on into epoch 2+
        first_file = read_padded(files[shard_index(0, rank, 2, 5)])["input_ids"].astype(np.int64)
        first_rows[rank] = set(row_keys(batches[0]))
        assert first_rows[rank] <= {r.tobytes() for r in first_file}
        assert s.position.epoch >= 2
        s.close()
    assert not first_rows[0] & first_rows[1]


@pytest.mark.parametrize("steps", [1, 2, 5, 9, 17])
def test_a_stream_started_from_a_position_continues_exactly(shards, steps):
    original = stream(shards, rank=1, world=2, batch=4)
    take(original, steps)
    position = DataPosition.from_dict(original.position.to_dict())
    resumed = stream(shards, rank=1, world=2, batch=4, start=position)
    for a, b in zip(take(original, 8), take(resumed, 8)):
        for name in ("input_ids", "segment_ids", "masked_positions", "masked_labels", "next_sentence_labels"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    original.close()
    resumed.close()


def test_row_to_batch_conversion_is_pluggable(shards):
    seen = []

    def make(rows):
        seen.append({k: v.shape for k, v in rows.items()})
        return "custom"

    assert next(stream(shards, batch=5, make_batch=make)) == "custom"
    assert seen[0]["input_ids"] == (5, SEQ) and seen[0]["next_sentence_labels"] == (5,)


def _corrupt_second_file(shards):
    second = epoch_files(list_shards(shards), 1234, 1, 1)[1]
    second.write_bytes(second.read_bytes()[:200])  # a truncated copy, as an interrupted transfer leaves it
    return second


def test_a_corrupt_shard_met_mid_run_names_the_file(shards):
    bad = _corrupt_second_file(shards)
    s = stream(shards, batch=4)
    with pytest.raises(InputError) as err:
        take(s, 10)
    assert str(bad) in str(err.value) and "--skip_bad_shards" in str(err.value)


def test_skip_bad_shards_skips_counts_and_reports(shards):
    bad = _corrupt_second_file(shards)
    messages = []
    s = stream(shards, batch=4, skip_bad_shards=True, on_skip=messages.append)
    batches = take(s, 10)
    assert len(batches) == 10 and s.skipped_shards[0] == str(bad)
    assert str(bad) in messages[0]


def test_a_folder_without_shards_is_an_error(tmp_path):
    with pytest.raises(InputError, match="no HDF5 shard"):
        stream(tmp_path)


@pytest.mark.parametrize("skip", [False, True])
def test_a_shard_of_another_sequence_length_is_named_once_and_never_skipped(shards, skip):
    """Every shard would fail alike: the message gives the setting to change, not --skip_bad_shards."""
    with pytest.raises(InputError) as err:
        ShardStream(shards, rank=0, world_size=1, seed=1, micro_batch_size=2,
                    shape=ShardShape(32, PRED, VOCAB), skip_bad_shards=skip)
    message = str(err.value)
    assert f"but max_seq_length is 32; pass --max_seq_length {SEQ}" in message
    assert "--skip_bad_shards" not in message and "unreadable" not in message and message.count(".hdf5") == 1


@pytest.mark.gpu
def test_batches_are_pinned_for_cuda(shards):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    assert next(stream(shards, pin_memory=True)).input_ids.is_pinned()
