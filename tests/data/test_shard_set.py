"""The training shards checked as a set from their metadata: one odd shard named with the majority, the flags
checked against the shards' own widths, damage in any shard found before the first step, the eval set kept
out of the training set."""

import os

import h5py
import numpy as np
import pytest
from conftest import mlperf_arrays

from bert_pretrain.data import shards
from bert_pretrain.data.shard_set import check_training_shards, refuse_training_on_the_eval_set, shared_shards
from bert_pretrain.errors import InputError


def _shards(folder, count=5, seq=32, pred=5, rows=6, seed=0):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        shards.write_padded(folder / f"part_{i}_of_{count}.hdf5", mlperf_arrays(rng, rows, seq, pred, 100))
    return folder


def test_a_consistent_set_whose_widths_are_the_flags_passes(tmp_path):
    folder = _shards(tmp_path / "shards")
    shards.write_varlength(folder / "part_9.hdf5",  # no width of its own: padded to the flags when read
                           shards.padded_to_varlength(mlperf_arrays(np.random.default_rng(1), 4, 32, 5, 100)))
    assert check_training_shards(folder, 32, 5) == []


@pytest.mark.parametrize("seq, pred, odd", [(64, 5, "width 64 and 5 masked-LM slots"),
                                            (32, 6, "width 32 and 6 masked-LM slots")])
def test_one_odd_shard_is_named_with_the_majority_whatever_its_place(tmp_path, seq, pred, odd):
    folder = _shards(tmp_path / "shards")
    rng = np.random.default_rng(2)
    shards.write_padded(folder / "part_2_of_5.hdf5", mlperf_arrays(rng, 6, seq, pred, 100))
    with pytest.raises(InputError) as err:
        check_training_shards(folder, 32, 5)
    assert str(err.value).startswith(f"{folder / 'part_2_of_5.hdf5'}: {odd}, but 4 of the 5 shards of {folder} have "
                                     "width 32 and 5 masked-LM slots; a run reads shards of one width")
    assert "pass --max_seq_length" not in str(err.value)  # the advice the stream gave, which the other shards contradict


def test_flags_that_match_no_shard_are_named_with_the_shards_widths(tmp_path):
    folder = _shards(tmp_path / "shards", seq=64, pred=10)
    with pytest.raises(InputError) as err:
        check_training_shards(folder, 128, 20)
    assert str(err.value) == (f"{folder}: its 5 shards have width 64 and 10 masked-LM slots, but this run has "
                              "--max_seq_length 128 --max_predictions_per_seq 20; pass --max_seq_length 64 "
                              "--max_predictions_per_seq 10")


def _rewrite(path, key, value):
    with h5py.File(path, "a") as f:
        del f[key]
        f.create_dataset(key, data=value)


@pytest.mark.parametrize("damage, said", [
    (lambda p: p.write_bytes(p.read_bytes()[:300]), "not a readable HDF5 file"),
    (lambda p: _rewrite(p, "masked_lm_ids", np.zeros((6, 5), np.int64)), "'masked_lm_ids' has dtype int64"),
    (lambda p: _rewrite(p, "segment_ids", np.zeros((5, 32), np.int8)), "do not share one row count"),
    (lambda p: _rewrite(p, "input_mask", np.zeros((6, 31), np.int8)), "must each share one width"),
])
def test_a_damaged_shard_anywhere_in_the_set_is_named_unless_skipped(tmp_path, damage, said):
    folder = _shards(tmp_path / "shards")
    bad = folder / "part_4_of_5.hdf5"
    damage(bad)
    with pytest.raises(InputError) as err:
        check_training_shards(folder, 32, 5)
    assert str(err.value).startswith(f"{bad}: ") and said in str(err.value)
    assert str(err.value).endswith("(training shard; pass --skip_bad_shards to skip unreadable shards)")
    notes = check_training_shards(folder, 32, 5, skip_bad_shards=True)
    assert len(notes) == 1 and notes[0].startswith(f"note: the training shard {bad} will be skipped")


def test_a_set_with_no_rows_is_refused(tmp_path):
    folder = _shards(tmp_path / "shards", count=2, rows=0)
    with pytest.raises(InputError, match="its 2 shards hold no rows"):
        check_training_shards(folder, 32, 5)


def test_the_eval_set_is_found_in_the_training_set_as_the_same_folder_a_link_or_a_copy(tmp_path):
    training = _shards(tmp_path / "shards")
    held_out = _shards(tmp_path / "eval", count=1, seed=7)
    eval_shard = held_out / "part_0_of_1.hdf5"
    assert shared_shards(training, held_out) == []
    assert shared_shards(training, training) == [(p, p) for p in shards.list_shards(training)]
    os.link(eval_shard, training / "part_linked.hdf5")
    (training / "part_copied.hdf5").write_bytes(eval_shard.read_bytes())
    assert shared_shards(training, held_out) == [(training / "part_copied.hdf5", eval_shard),
                                                 (training / "part_linked.hdf5", eval_shard)]
    with pytest.raises(InputError) as err:
        refuse_training_on_the_eval_set(training, held_out)
    assert str(err.value).startswith(f"--input_dir {training} and --eval_dir {held_out} share 2 shard(s) "
                                     f"({training / 'part_copied.hdf5'} = {eval_shard}, ")
    assert str(err.value).endswith("or --allow_eval_overlap if this is meant")
