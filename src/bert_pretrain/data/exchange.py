"""Token-balanced micro-batches across processes: the reference's `--exchange_padding`.

With padding removed, a micro-batch costs what its real tokens cost, and a step waits for the
process with the most: with MLPerf's lengths and 8 processes of 56 sequences, the slowest holds
about 14% more work than the mean (benchmarks/token_balance.py). So each process still draws its
own rows in the reference's order, but the rows of one optimizer step of every process are pooled
(one all-gather per step), dealt to the processes longest first in snake order (equal row counts,
token sums within one sequence of each other), and each process cuts its share into the step's
micro-batches the same way. The global batch is the same set of rows; only which process trains
which row changes, the same on every process and after a resume.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bert_pretrain.batch import Batch
from bert_pretrain.data.packing import balanced_split, row_lengths, select_rows
from bert_pretrain.distributed import gather_objects


class ExchangedStream:
    """Micro-batches of `inner` (a `ShardStream`), balanced over the processes one optimizer step
    (`accumulation` micro-batches) at a time. `gather(rows)` returns every process's rows in rank
    order (a collective: every process must call `next` the same number of times)."""

    def __init__(self, inner, rank: int, world_size: int, accumulation: int,
                 make_batch: Callable[[dict], Batch], pin_memory: bool = False, gather=gather_objects):
        self._inner, self._rank, self._world_size = inner, rank, world_size
        self._accumulation, self._make_batch, self._pin_memory = accumulation, make_batch, pin_memory
        self._gather = gather
        self._ready: list[Batch] = []

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if not self._ready:
            self._ready = self._balanced_step()
        return self._ready.pop(0)

    def _balanced_step(self) -> list[Batch]:
        mine = _concatenate([self._inner.next_rows() for _ in range(self._accumulation)])
        pooled = _concatenate(self._gather(mine))
        share = select_rows(pooled, balanced_split(row_lengths(pooled), self._world_size)[self._rank])
        batches = [self._make_batch(select_rows(share, part))
                   for part in balanced_split(row_lengths(share), self._accumulation)]
        return [b.pin_memory() for b in batches] if self._pin_memory else batches

    @property
    def position(self):
        """Where the inner stream stands: after whole steps, the next step's rows come from there."""
        return self._inner.position

    @property
    def skipped_shards(self) -> list[str]:
        return self._inner.skipped_shards

    def close(self) -> None:
        self._inner.close()


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
