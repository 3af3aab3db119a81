"""`bert-pretrain inspect`: statistics computed from known rows, decoding with masks visible, CLI errors."""

import json
import subprocess
import sys

import h5py
import numpy as np
from conftest import cli_here, mlperf_arrays, run_cli, write_crafted_shard

from bert_pretrain.data import shards
from bert_pretrain.data.inspect_shard import decode_instance, shard_statistics
from bert_pretrain.data.vocab import write_vocab

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s"]


def one_row() -> dict:
    """[CLS] the cat [SEP] sat on mats [SEP]: 'cat' shown as [MASK], 'on' kept, '##s' replaced by 'the'."""
    ids = [2, 5, 4, 3, 7, 8, 9, 5, 3]
    arrays = {
        "input_ids": np.array([ids + [0] * 3], np.int32),
        "input_mask": np.array([[1] * 9 + [0] * 3], np.int8),
        "segment_ids": np.array([[0] * 4 + [1] * 5 + [0] * 3], np.int8),
        "masked_lm_positions": np.array([[2, 5, 7, 0]], np.int32),
        "masked_lm_ids": np.array([[6, 8, 10, 0]], np.int32),
        "next_sentence_labels": np.array([1], np.int8),
    }
    return arrays


def test_decode_shows_masks_and_labels():
    assert decode_instance(one_row(), 0, VOCAB) == (
        "#0 (9 tokens, 3 masked, random next): [CLS] the [[MASK]>cat] [SEP] sat [=on] mat [the>##s] [SEP]")


def test_statistics_of_known_rows():
    stats = shard_statistics(one_row(), mask_id=4)
    assert stats["instances"] == 1 and stats["tokens"] == 9 and stats["max_seq_length"] == 12
    assert stats["masked_as_mask_token"] == stats["masked_kept_as_is"] == stats["masked_replaced_by_other"] == 1 / 3
    assert stats["positions_sorted"] and stats["nsp_random_next_share"] == 1.0
    assert sum(count for _, _, count in stats["length_histogram"]) == 1

    arrays = mlperf_arrays(np.random.default_rng(0), n=200, seq_len=32, max_pred=5, vocab_size=50)
    stats = shard_statistics(arrays)
    lengths = arrays["input_mask"].sum(1)
    assert stats["length_mean"] == lengths.mean() and stats["positions_sorted"]
    assert stats["masked_per_instance_mean"] == np.count_nonzero(arrays["masked_lm_positions"], 1).mean()
    assert stats["mask_token_id"] == 4 and stats["masked_as_mask_token"] == 1.0  # the fixture always shows id 4
    arrays["masked_lm_positions"][0, :2] = arrays["masked_lm_positions"][0, [1, 0]]
    assert not shard_statistics(arrays)["positions_sorted"]


def test_cli_on_padded_and_varlength_shards(tmp_path):
    arrays = one_row()
    shards.write_padded(tmp_path / "part_0.hdf5", arrays)
    shards.write_varlength(tmp_path / "part_v.hdf5", shards.padded_to_varlength(arrays))
    write_vocab(tmp_path / "vocab.txt", VOCAB)
    for name in ("part_0.hdf5", "part_v.hdf5"):
        out = run_cli("inspect", str(tmp_path / name), "--vocab_file", str(tmp_path / "vocab.txt"))
        assert out.returncode == 0, out.stderr
        assert "1 instances" in out.stdout and "33.3% shown as [MASK]" in out.stdout
        assert "[CLS] the [[MASK]>cat] [SEP]" in out.stdout
    as_json = json.loads(run_cli("inspect", str(tmp_path / "part_0.hdf5"), "--json").stdout)
    assert as_json["format"] == "padded" and as_json["instances"] == 1
    missing = run_cli("inspect", str(tmp_path / "nope.hdf5"))
    assert missing.returncode == 2 and "nope.hdf5: no such file" in missing.stderr
    write_vocab(tmp_path / "small.txt", VOCAB[:5])
    wrong = run_cli("inspect", str(tmp_path / "part_0.hdf5"), "--vocab_file", str(tmp_path / "small.txt"))
    assert wrong.returncode == 2 and "outside the 5-token vocab" in wrong.stderr


def test_a_folder_or_a_file_with_groups_for_datasets_is_a_one_line_error(tmp_path):
    with h5py.File(tmp_path / "groups.hdf5", "w") as f:
        f.create_group("input_ids")
    for path, expected in ((tmp_path / "groups.hdf5", "groups.hdf5: missing key 'input_ids'; not a pretraining shard"),
                           (tmp_path, "is a folder; pass one HDF5 shard file in it")):
        out = run_cli("inspect", str(path))
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.splitlines()) == 1 and expected in out.stderr, out.stderr
    shards.write_padded(tmp_path / "part_0.hdf5", one_row())
    missing_vocab = run_cli("inspect", str(tmp_path / "part_0.hdf5"), "--vocab_file", str(tmp_path / "none.txt"))
    assert "no such vocab file" in missing_vocab.stderr and "--vocab_size" not in missing_vocab.stderr  # not inspect's


def test_output_cut_short_by_the_reader_is_not_an_error(tmp_path):
    """`bert-pretrain inspect SHARD | head -1`: the closed pipe ends the command quietly."""
    shards.write_padded(tmp_path / "part_0.hdf5", mlperf_arrays(np.random.default_rng(0), 500, 128, 20, len(VOCAB)))
    write_vocab(tmp_path / "vocab.txt", VOCAB)
    # 500 decoded rows: far more than a pipe holds, so the writer meets the closed pipe
    command = (f"{sys.executable} -m bert_pretrain inspect {tmp_path / 'part_0.hdf5'} --vocab_file "
               f"{tmp_path / 'vocab.txt'} --num_examples 500 | head -c 1")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert out.stderr == "" and out.returncode in (0, 141), out.stderr


def test_a_shard_reading_another_file_is_refused_not_printed(tmp_path):
    path = tmp_path / "part_0.hdf5"
    write_crafted_shard(path, one_row(), "external_storage")
    out = cli_here("inspect", str(path))
    assert out.returncode == 2 and out.stdout == "", out.stdout
    assert len(out.stderr.splitlines()) == 1 and f"{path}: 'input_ids' keeps its data outside the shard" in out.stderr
