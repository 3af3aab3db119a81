"""The cost of `train`'s setup check of every training shard (data/shard_set.py) on a set of MLPerf's size.

Writes --shards padded shards of 512 tokens and 76 masked-LM slots (MLPerf's widths; few rows each: the check
reads metadata only, so its cost does not grow with the rows), then times `check_training_shards` over them
--rounds times, and, as the peer in the same run, opening and closing every shard with h5py (the floor any
check of each file pays). The page cache holds the files after writing them: the figure is the warm-cache
cost; on a cold network file system each open costs a round trip more.

    .venv/bin/python benchmarks/shard_check_bench.py --shards 2048
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from bert_pretrain.data.shard_set import check_training_shards
from bert_pretrain.data.shards import list_shards, write_padded


def _arrays(rows: int, seq: int, pred: int) -> dict[str, np.ndarray]:
    lengths = np.full(rows, seq // 2)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int8)
    positions = np.zeros((rows, pred), np.int32)
    positions[:, :10] = np.arange(1, 11)
    return {"input_ids": (mask * 7).astype(np.int32), "input_mask": mask, "segment_ids": np.zeros((rows, seq), np.int8),
            "masked_lm_positions": positions, "masked_lm_ids": (positions > 0).astype(np.int32) * 7,
            "next_sentence_labels": np.zeros(rows, np.int8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    arrays = _arrays(args.rows, 512, 76)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"{args.shards}_shards_uncompressed"
        folder.mkdir()
        for i in range(args.shards):
            write_padded(folder / f"part_{i}_of_{args.shards}.hdf5", arrays)
        checks, opens = [], []
        for _ in range(args.rounds):
            began = time.perf_counter()
            assert check_training_shards(folder, 512, 76) == []
            checks.append(time.perf_counter() - began)
            began = time.perf_counter()
            for path in list_shards(folder):
                h5py.File(path, "r").close()
            opens.append(time.perf_counter() - began)
    check, floor = statistics.median(checks), statistics.median(opens)
    print(f"{platform.node()} {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"check_training_shards over {args.shards} shards (512/76, {args.rows} rows each), median of "
          f"{args.rounds}: {check:.3f} s ({check / args.shards * 1e3:.3f} ms per shard; rounds "
          f"{', '.join(f'{c:.3f}' for c in checks)})")
    print(f"peer, opening and closing every shard: {floor:.3f} s (median); the check costs {check / floor:.1f}x that")


if __name__ == "__main__":
    main()
