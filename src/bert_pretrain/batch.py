"""The model's input: one `Batch` dataclass for both the padded and the packed (unpadded) layout.

Padded layout (the MLPerf HDF5 rows as they are):
    input_ids, segment_ids   (B, T)    token ids / segment ids, 0 after the real tokens
    attention_mask           (B, T)    bool, True on real tokens
Packed layout (padding removed, sequences laid end to end):
    input_ids, segment_ids   (N,)      N = total real tokens of the batch
    position_ids             (N,)      position of each token inside its own sequence
    cu_seqlens               (B+1,)    int32 offsets of each sequence in the flat stream; (B+2,) when a
                                       packer appends one padding segment to round N up to a bucket
                                       (data/packing.py): its tokens are attended among themselves and
                                       never reach the loss
    max_seqlen               int       longest sequence (a Python int: kernels need it on the host)
Both layouts:
    masked_positions         (M,)      flat indices into the token stream (B*T padded, N packed)
    masked_labels            (M,)      original token ids there; IGNORE_LABEL for unused slots
    next_sentence_labels     (B,)      1 = random next segment, 0 = is next

M is fixed at B * max_predictions_per_seq (unused slots point at token 0 with IGNORE_LABEL), so
shapes depend only on B and T and the masked-LM head never needs a host-side count. The packers of
data/packing.py list only the real masked tokens by default (M = their count, known on the host when
packing), so the head does no work for unused slots.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

IGNORE_LABEL = -1


@dataclass
class Batch:
    input_ids: torch.Tensor
    segment_ids: torch.Tensor
    masked_positions: torch.Tensor
    masked_labels: torch.Tensor
    next_sentence_labels: torch.Tensor
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0

    @property
    def is_packed(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def num_sequences(self) -> int:
        return int(self.next_sentence_labels.shape[0])

    def _map(self, fn) -> Batch:
        changes = {
            f.name: fn(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **changes)

    def to(self, device, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by `torch.utils.data.DataLoader(pin_memory=True)`."""
        return self._map(lambda t: t.pin_memory())
