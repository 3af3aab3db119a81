"""Training micro-batches for one process, in the reference's data order (docs/training.md, "The data order").

Seeds: `random.Random(seed)` draws one seed per process (`worker_seeds`), then one per epoch
(`shuffling_seeds`), exactly as the reference's `setup_seeds`; every process computes the same list.
Epoch e (counted from 1, as the reference) lists the *part* files of --input_dir sorted by name and
shuffles them with `random.Random(shuffling_seeds[e])`. Process r of `world` then reads, for
slot f = 0 .. num_files-1, the file `(f*world + r) % num_files` (plus `remainder*f` when there are
more processes than files, `remainder = world % num_files`). Within a shard the rows are taken in a
permutation drawn from `numpy.random.default_rng([worker_seed, epoch, slot])`, so the order can be
recomputed from the seed alone.

The stream never ends: after the last slot of an epoch comes the next epoch, so every process can
take as many steps as the run needs and no process runs dry before another. Micro-batches always
hold exactly `micro_batch_size` rows; one may span the end of a shard and the start of the next.
Where the stream stands is the small `DataPosition` (epoch, slot, row), saved in checkpoints; a
stream started from it continues with exactly the rows that would have come next. The next shard
is read by a background thread while the current one is consumed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bert_pretrain.batch import Batch
from bert_pretrain.data.packing import padded_batch
from bert_pretrain.data.shards import PADDED_KEYS, ShardShape, list_shards, read_padded
from bert_pretrain.errors import InputError, SettingsMismatch


def _draw_seeds(rng: random.Random, count: int) -> list[int]:
    return [rng.randint(0, 2**32 - 1) for _ in range(count)]


def worker_seed(master_seed: int, rank: int, world_size: int) -> int:
    """The reference's `worker_seeds[rank]` (seeds python/numpy/torch of process `rank`)."""
    return _draw_seeds(random.Random(master_seed), world_size)[rank]


def shuffling_seed(master_seed: int, epoch: int, world_size: int) -> int:
    """The reference's `shuffling_seeds[epoch]`: drawn after the `world_size` worker seeds."""
    rng = random.Random(master_seed)
    _draw_seeds(rng, world_size)
    return _draw_seeds(rng, epoch + 1)[epoch]


def epoch_files(files: list[Path], master_seed: int, epoch: int, world_size: int) -> list[Path]:
    """The epoch's file order: sorted by name, then shuffled with the epoch's seed."""
    ordered = sorted(files, key=lambda p: p.name)
    random.Random(shuffling_seed(master_seed, epoch, world_size)).shuffle(ordered)
    return ordered


def shard_index(slot: int, rank: int, world_size: int, num_files: int) -> int:
    """Which file of the epoch's order process `rank` reads at `slot` (the reference's formula)."""
    remainder = world_size % num_files if world_size > num_files else 0
    return (slot * world_size + rank + remainder * slot) % num_files


def row_order(seed: int, epoch: int, slot: int, num_rows: int) -> np.ndarray:
    """The order in which a shard's rows are used: a permutation recomputable from the seeds."""
    return np.random.default_rng([seed, epoch, slot]).permutation(num_rows)


@dataclass(frozen=True)
class DataPosition:
    """Where a process's stream stands: `row` rows of slot `slot` of epoch `epoch` are used up."""

    epoch: int = 1
    slot: int = 0
    row: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DataPosition:
        return cls(int(values["epoch"]), int(values["slot"]), int(values["row"]))


def padded_rows_batch(rows: dict[str, np.ndarray]) -> Batch:
    """The default row -> Batch conversion: the padded layout, rows as the shards hold them."""
    return padded_batch(**{k: rows[k] for k in PADDED_KEYS})


class ShardStream:
    """Endless micro-batches (`Batch`) for process `rank` of `world_size`; see the module docstring.

    `make_batch` turns a dict of row arrays (the six MLPerf keys, `micro_batch_size` rows) into a
    Batch; swap it for another layout. With `skip_bad_shards` an unreadable shard is skipped, counted
    in `skipped_shards` and reported through `on_skip`; otherwise it stops the run with an
    InputError naming the file.
    """

    def __init__(
        self,
        input_dir: str | Path,
        *,
        rank: int,
        world_size: int,
        seed: int,
        micro_batch_size: int,
        shape: ShardShape,
        start: DataPosition = DataPosition(),
        make_batch: Callable[[dict[str, np.ndarray]], Batch] = padded_rows_batch,
        pin_memory: bool = False,
        skip_bad_shards: bool = False,
        on_skip: Callable[[str], None] = lambda message: None,
    ):
        self._files = list_shards(input_dir)
        self._rank, self._world_size, self._seed = rank, world_size, seed
        self._worker_seed = worker_seed(seed, rank, world_size)
        self._batch_size = micro_batch_size
        self._shape = shape
        self._make_batch, self._pin_memory = make_batch, pin_memory
        self._skip_bad_shards, self._on_skip = skip_bad_shards, on_skip
        self.skipped_shards: list[str] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch")
        self._pending: tuple[tuple[int, int], Future] | None = None
        self._epoch_order: tuple[int, list[Path]] = (0, [])
        self._open(start.epoch, start.slot)
        if (self._epoch, self._slot) == (start.epoch, start.slot):
            self._row = min(start.row, len(self._order))

    @property
    def position(self) -> DataPosition:
        """Where the next micro-batch starts."""
        return DataPosition(self._epoch, self._slot, self._row)

    def _file_at(self, epoch: int, slot: int) -> Path:
        if self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, epoch_files(self._files, self._seed, epoch, self._world_size))
        return self._epoch_order[1][shard_index(slot, self._rank, self._world_size, len(self._files))]

    def _next_slot(self, epoch: int, slot: int) -> tuple[int, int]:
        return (epoch, slot + 1) if slot + 1 < len(self._files) else (epoch + 1, 0)

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        try:
            return read_padded(path, self._shape)
        except InputError:
            raise  # already names the file and the problem
        except (OSError, KeyError, ValueError) as err:  # h5py's errors for data damaged past the header
            raise InputError(f"{path}: unreadable shard ({type(err).__name__}: {err})") from None

    def _arrays_for(self, epoch: int, slot: int, path: Path) -> dict[str, np.ndarray]:
        """The shard at (epoch, slot): the prefetched one if it is ready, else read now."""
        if self._pending is not None and self._pending[0] == (epoch, slot):
            future = self._pending[1]
        else:
            future = self._pool.submit(self._read, path)
        self._pending = None
        return future.result()

    def _open(self, epoch: int, slot: int) -> None:
        """Make (epoch, slot) the current shard, skipping unreadable or empty ones; prefetch the next."""
        for _ in range(2 * len(self._files) + 1):
            path = self._file_at(epoch, slot)
            try:
                arrays = self._arrays_for(epoch, slot, path)
            except SettingsMismatch:
                raise  # every shard of the set fails alike: a setting to change, not a shard to skip
            except InputError as err:
                if not self._skip_bad_shards:
                    raise InputError(f"{err} (training shard of epoch {epoch}, slot {slot}; pass "
                                     "--skip_bad_shards to skip unreadable shards)") from None
                if str(path) not in self.skipped_shards:  # said once; met again every epoch
                    self._on_skip(f"skipped an unreadable training shard: {err}")
                self.skipped_shards.append(str(path))
                arrays = None
            if arrays is not None and len(arrays["next_sentence_labels"]):
                break
            epoch, slot = self._next_slot(epoch, slot)
        else:
            raise InputError(f"{self._files[0].parent}: no readable training shard with rows for this process")
        self._epoch, self._slot, self._arrays, self._row = epoch, slot, arrays, 0
        self._order = row_order(self._worker_seed, epoch, slot, len(arrays["next_sentence_labels"]))
        following = self._next_slot(epoch, slot)
        self._pending = (following, self._pool.submit(self._read, self._file_at(*following)))

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch = self._make_batch(self.next_rows())
        return batch.pin_memory() if self._pin_memory else batch

    def next_rows(self) -> dict[str, np.ndarray]:
        """The next micro-batch's rows, in the padded schema, before they become a Batch."""
        pieces, need = [], self._batch_size
        while need:
            if self._row >= len(self._order):
                self._open(*self._next_slot(self._epoch, self._slot))
            take = min(need, len(self._order) - self._row)
            pieces.append((self._arrays, self._order[self._row : self._row + take]))
            self._row += take
            need -= take
        return {k: np.concatenate([arrays[k][index] for arrays, index in pieces]) for k in PADDED_KEYS}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
