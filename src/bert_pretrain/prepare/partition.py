"""Which document goes where, decided from (seed, document index) alone, and the on-disk spool.

Every process that reads the input sees the documents in the same order (files sorted, then file
order), so a document's index in that stream names it everywhere. From the index and the seed:
- `ShardAssigner`: the training shard. Each block of `num_shards` consecutive documents is dealt out
  by a seeded permutation, one document per shard: shard sizes differ by at most one document, and
  neighbouring documents land in different shards.
- `EvalSelector`: the held-out documents, the `k` with the smallest seeded hash keys (a uniform random
  sample of k documents, found in one streaming pass without knowing the corpus size). A document
  can enter the selection and be pushed out later by one with a smaller key; it then goes back to
  its training shard.

The spool holds each shard's tokenized documents on disk between reading the input and building
the shard, so a process holds one shard in memory at a time, never the corpus.
"""

from __future__ import annotations

import hashlib
import heapq
from pathlib import Path

import numpy as np

_HEADER = 4  # doc index (low 31 bits, high bits), sentences, tokens; then lengths, then ids: all int32


class ShardAssigner:
    def __init__(self, num_shards: int, seed: int):
        self.num_shards = num_shards
        self.seed = seed
        self._block = -1
        self._permutation = np.zeros(0, np.int64)

    def __call__(self, doc_index: int) -> int:
        block, offset = divmod(doc_index, self.num_shards)
        if block != self._block:
            self._block = block
            self._permutation = np.random.default_rng([self.seed, 1, block]).permutation(self.num_shards)
        return int(self._permutation[offset])


def eval_key(seed: int, doc_index: int) -> int:
    """A pseudo-random 64-bit key of (seed, document index), the same on every machine."""
    digest = hashlib.blake2b(f"{seed}:{doc_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class EvalSelector:
    """Streaming bottom-k sample: offer documents in index order; `members` are the k held out."""

    def __init__(self, k: int, seed: int):
        self.k = k
        self.seed = seed
        self._heap: list[tuple[int, int]] = []  # (-key, doc index): the largest key on top

    def offer(self, doc_index: int) -> tuple[bool, int | None]:
        """(whether the document is held out for now, the document it pushed out, if any)."""
        if self.k <= 0:
            return False, None
        item = (-eval_key(self.seed, doc_index), doc_index)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
            return True, None
        if item > self._heap[0]:  # a smaller key than the largest held
            return True, heapq.heapreplace(self._heap, item)[1]
        return False, None

    def members(self) -> list[int]:
        return sorted(d for _, d in self._heap)


class SpoolWriter:
    """Appends tokenized documents to one file per shard, buffering up to `buffer_bytes` in memory."""

    def __init__(self, directory: Path, buffer_bytes: int = 64 << 20):
        self.directory = directory
        self.buffer_bytes = buffer_bytes
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._buffered = 0
        self.documents: dict[str, int] = {}
        self.tokens: dict[str, int] = {}

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.spool"

    def add(self, name: str, doc_index: int, ids: np.ndarray, lengths: np.ndarray) -> None:
        header = [doc_index & 0x7FFFFFFF, doc_index >> 31, len(lengths), len(ids)]
        record = np.concatenate([header, lengths, ids]).astype(np.int32)
        self._buffers.setdefault(name, []).append(record)
        self._buffered += record.nbytes
        self.documents[name] = self.documents.get(name, 0) + 1
        self.tokens[name] = self.tokens.get(name, 0) + len(ids)
        if self._buffered > self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        for name, records in self._buffers.items():
            with open(self.path(name), "ab") as f:
                np.concatenate(records).tofile(f)
        self._buffers.clear()
        self._buffered = 0


def read_spool(path: Path) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(doc index, token ids int32, sentence lengths int64) of each spooled document, by doc index."""
    data = np.fromfile(path, np.int32) if path.exists() else np.zeros(0, np.int32)
    docs, at = [], 0
    while at < len(data):
        low, high, sentences, tokens = (int(v) for v in data[at:at + _HEADER])
        doc_index = low | (high << 31)
        at += _HEADER
        lengths = data[at:at + sentences].astype(np.int64)
        ids = data[at + sentences:at + sentences + tokens]
        at += sentences + tokens
        docs.append((doc_index, ids, lengths))
    docs.sort(key=lambda doc: doc[0])
    return docs
