"""Per-part HDF5 files cut into `num_shards` training shards, streamed.

The parts' rows, in sorted part order, are taken as one sequence of N rows and cut into `num_shards`
consecutive runs whose sizes differ by at most one, the first N mod num_shards one row larger:
shard i holds rows [i * (N // S) + min(i, N % S), ...). Every row lands in exactly one shard. A shard
is written from row ranges of the one or few parts it spans, a block of rows at a time, so a
process never holds a part, let alone all of them; shards are independent jobs.

NVIDIA's `chop_hdf5_files.py` walks the rows in the same order but sizes the shards otherwise: it
decides whether a new shard gets one row less by comparing the row index within that shard (always
0 at that point) with the excess S * ceil(N/S) - N, so when S does not divide N every shard gets
ceil(N/S) - 1 rows (when it does, the first N/S - 1 and the others N/S), and the rows left after
the last shard (S - excess of them, or 1) are dropped without a word; when they are more than a
shard, it stops with an IndexError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bert_pretrain.data import shards

_BLOCK_ROWS = 4096  # rows read and written at once (about 15 MB at 512/76)


def shard_sizes(total: int, num_shards: int) -> list[int]:
    """Rows per shard: sizes differ by at most one, the first `total % num_shards` shards one larger."""
    base, extra = divmod(total, num_shards)
    return [base + (1 if i < extra else 0) for i in range(num_shards)]


@dataclass(frozen=True)
class CutJob:
    """Write one shard from row ranges (path, start, stop) of the parts, in order."""

    output: Path
    pieces: tuple[tuple[Path, int, int], ...]
    max_seq_length: int
    max_predictions_per_seq: int

    @property
    def rows(self) -> int:
        return sum(stop - start for _, start, stop in self.pieces)


def cut_jobs(parts: list[Path], counts: list[int], outputs: list[Path], max_seq_length: int,
             max_predictions_per_seq: int) -> list[CutJob]:
    """One job per output shard: the parts' rows (counts[k] in parts[k], in this order) cut into
    len(outputs) runs by `shard_sizes`."""
    jobs, part, offset = [], 0, 0  # the next row to place: row `offset` of parts[part]
    for output, size in zip(outputs, shard_sizes(sum(counts), len(outputs))):
        pieces = []
        while size:
            while counts[part] == offset:
                part, offset = part + 1, 0
            take = min(size, counts[part] - offset)
            pieces.append((parts[part], offset, offset + take))
            offset += take
            size -= take
        jobs.append(CutJob(output, tuple(pieces), max_seq_length, max_predictions_per_seq))
    return jobs


def write_cut_shard(job: CutJob) -> CutJob:
    """Copy the job's row ranges into its shard (written atomically, through data/shards.py)."""
    with shards.padded_writer(job.output, job.rows, job.max_seq_length, job.max_predictions_per_seq) as write:
        for path, start, stop in job.pieces:
            for lo in range(start, stop, _BLOCK_ROWS):
                write(shards.read_padded_rows(path, lo, min(stop, lo + _BLOCK_ROWS)))
    return job
