"""Rows -> `Batch`es: packed (padding removed, sequences laid end to end with `cu_seqlens`) or padded.

Input rows are padded MLPerf arrays (N, T) with `input_mask` (data/shards.py pads a variable-length
shard when it reads it).

Choices, and why:
- A step keeps the reference's sequences per micro-batch (B rows -> one packed micro-batch), so
  the loss is the reference's: mean masked-LM CE over the micro-batch's masked tokens + mean NSP.
  Packing changes where the compute goes (real tokens only), not what is computed.
- Token balance: `balanced_split` splits rows into equal-count parts with near-equal token
  counts (sorted by length, dealt in snake order); data/exchange.py deals each step's rows of all
  processes with it (the reference's exchange padding sorts and deals round-robin).
- Masked-LM slots (`compact_masked`, default on): only the real masked tokens are listed (M = their
  count, known on the host when packing), so the 30528-wide head does no work for unused slots and
  nothing needs a host-device sync to find them. Off, M = B * max_predictions_per_seq with
  IGNORE_LABEL slots, as `padded_batch` (a static M, for code that needs static shapes).
- Static-ish shapes: `pad_to_multiple` rounds the flat token count N up by appending one padding
  segment (token 0, segment 0, position 0) to `cu_seqlens`, so the stream takes few distinct
  lengths (CUDA graphs, allocator reuse) and `cu_seqlens` always has B+2 entries. It costs at most
  `pad_to_multiple` tokens per batch. The default (1) adds nothing: `build.compile_model` marks the
  token dimension dynamic, so compiled code needs no bucketing. `max_seqlen` may be fixed
  (e.g. at max_seq_length) so that kernels and compiled code see one value; the flash kernels
  only size their grid with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bert_pretrain.batch import IGNORE_LABEL, Batch
from bert_pretrain.data.shards import counted_slots, masked_counts
from bert_pretrain.errors import InputError


@dataclass(frozen=True)
class PackingOptions:
    """How rows become a packed Batch (see the module docstring)."""

    compact_masked: bool = True  # list only the real masked tokens (M varies) instead of B * P slots
    pad_to_multiple: int = 1  # round the token count up with one padding segment (1: no padding)
    max_seqlen: int | None = None  # report this Batch.max_seqlen instead of the longest segment


def _masked_slots(positions: np.ndarray, ids: np.ndarray, width: int):
    """(B, P) zero-padded positions/ids -> (B, width) positions and labels, IGNORE_LABEL where unused.

    Only the slots the reference counts are real (`shards.masked_counts`).
    """
    counts = masked_counts(positions)  # (B,)
    if counts.size and counts.max() > width:
        raise InputError(f"a row has {counts.max()} masked tokens, more than max_predictions_per_seq={width}")
    out_positions = np.zeros((len(positions), width), np.int64)
    out_labels = np.full((len(positions), width), IGNORE_LABEL, np.int64)
    used = min(width, positions.shape[1])
    valid = np.arange(used)[None, :] < counts[:, None]  # (B, used)
    out_positions[:, :used] = np.where(valid, positions[:, :used], 0)
    out_labels[:, :used] = np.where(valid, ids[:, :used], IGNORE_LABEL)
    return out_positions, out_labels


def _packed(input_ids, segment_ids, position_ids, lengths, positions, labels, nsp, options: PackingOptions) -> Batch:
    """Assemble a packed Batch from the flat stream (N,), lengths (B,) and (B, P) masked slots."""
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    longest = int(lengths.max()) if len(lengths) else 0
    if options.pad_to_multiple > 1:
        pad = options.pad_to_multiple - offsets[-1] % options.pad_to_multiple  # 1..multiple: B+2 offsets, always
        offsets = np.append(offsets, offsets[-1] + pad)
        input_ids = np.concatenate([input_ids, np.zeros(pad, input_ids.dtype)])
        segment_ids = np.concatenate([segment_ids, np.zeros(pad, segment_ids.dtype)])
        position_ids = np.concatenate([position_ids, np.zeros(pad, position_ids.dtype)])
        longest = max(longest, int(pad))
    if options.max_seqlen is not None:
        if options.max_seqlen < longest:
            raise InputError(f"max_seqlen={options.max_seqlen} is shorter than a segment of this batch "
                             f"({longest} tokens)")
        longest = options.max_seqlen
    flat_positions = positions + offsets[: len(lengths), None]  # (B, P)
    if options.compact_masked:
        used = labels != IGNORE_LABEL
        flat_positions, labels = flat_positions[used], labels[used]  # (M,), sequence by sequence
    return Batch(
        input_ids=torch.from_numpy(np.ascontiguousarray(input_ids, np.int64)),
        segment_ids=torch.from_numpy(np.ascontiguousarray(segment_ids, np.int64)),
        position_ids=torch.from_numpy(np.ascontiguousarray(position_ids, np.int64)),
        cu_seqlens=torch.from_numpy(offsets.astype(np.int32)),
        max_seqlen=longest,
        masked_positions=torch.from_numpy(flat_positions.reshape(-1)),
        masked_labels=torch.from_numpy(labels.reshape(-1)),
        next_sentence_labels=torch.from_numpy(np.asarray(nsp, np.int64)),
    )


def pack_padded_rows(arrays: dict, max_predictions_per_seq: int | None = None,
                     options: PackingOptions = PackingOptions()) -> Batch:
    """A packed Batch from padded MLPerf rows (dict of (B, T) / (B, P) / (B,) arrays), vectorised.

    `max_predictions_per_seq` sets the masked slots per row (default: the arrays' P).
    """
    mask = np.asarray(arrays["input_mask"]).astype(bool)  # (B, T)
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None]):
        raise InputError("input_mask is not a prefix of ones in every row; padded rows keep their tokens first")
    positions = np.asarray(arrays["masked_lm_positions"])
    width = positions.shape[1] if max_predictions_per_seq is None else max_predictions_per_seq
    slots, labels = _masked_slots(positions, np.asarray(arrays["masked_lm_ids"]), width)
    return _packed(
        np.asarray(arrays["input_ids"])[mask], np.asarray(arrays["segment_ids"])[mask],
        np.nonzero(mask)[1], lengths, slots, labels, arrays["next_sentence_labels"], options,
    )


def select_rows(rows: dict, indices: Sequence[int]) -> dict:
    """The given rows of either layout (padded arrays or variable-length lists), in that order."""
    indices = np.asarray(indices, np.int64)
    return {key: (np.asarray(value)[indices] if isinstance(value, np.ndarray) else [value[i] for i in indices])
            for key, value in rows.items()}


def row_lengths(rows: dict) -> np.ndarray:
    """Real tokens per row, (N,) int64, for either layout."""
    if "input_mask" in rows:
        return np.asarray(rows["input_mask"]).astype(bool).sum(axis=1).astype(np.int64)
    return np.array([len(r) for r in rows["input_ids"]], np.int64)


def balanced_split(lengths: np.ndarray, parts: int) -> list[np.ndarray]:
    """Split row indices into `parts` groups of equal size (+-1) and near-equal token sums.

    Longest first, dealt in snake order (0..p-1, p-1..0, ...); each group keeps ascending indices.
    """
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    rounds = np.arange(len(order)) // parts
    place = np.arange(len(order)) % parts
    group = np.where(rounds % 2 == 0, place, parts - 1 - place)
    return [np.sort(order[group == g]) for g in range(parts)]


def _padded_slots(masked_lm_positions: np.ndarray, masked_lm_ids: np.ndarray):
    """The (B, P) masked-LM positions and labels of the counted slots (IGNORE_LABEL elsewhere)."""
    positions = masked_lm_positions.astype(np.int64)
    valid = counted_slots(positions)  # (B, P)
    labels = np.where(valid, masked_lm_ids.astype(np.int64), IGNORE_LABEL)
    return positions * valid, labels


def padded_batch(
    input_ids: np.ndarray,
    segment_ids: np.ndarray,
    input_mask: np.ndarray,
    masked_lm_positions: np.ndarray,
    masked_lm_ids: np.ndarray,
    next_sentence_labels: np.ndarray,
) -> Batch:
    """A padded `Batch` from rows of the MLPerf padded schema (numpy arrays, any int dtypes)."""
    batch_size, seq_len = input_ids.shape
    positions, labels = _padded_slots(masked_lm_positions, masked_lm_ids)
    flat_positions = positions + (np.arange(batch_size) * seq_len)[:, None]  # (B, P)
    return Batch(
        input_ids=torch.from_numpy(input_ids.astype(np.int64)),
        segment_ids=torch.from_numpy(segment_ids.astype(np.int64)),
        attention_mask=torch.from_numpy(input_mask.astype(bool)),
        masked_positions=torch.from_numpy(flat_positions.reshape(-1)),
        masked_labels=torch.from_numpy(labels.reshape(-1)),
        next_sentence_labels=torch.from_numpy(next_sentence_labels.astype(np.int64)),
    )
