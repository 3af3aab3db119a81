"""TensorFlow checkpoints (TF1 `Saver` and TF2 bundles) read without TensorFlow, and their BERT names.

A checkpoint `PREFIX` is `PREFIX.index` (a table, `tf_table.py`, mapping each variable name to a
`BundleEntryProto`: dtype, shape, data shard, byte offset, size, masked CRC-32C; the empty key holds the
`BundleHeaderProto`: shard count, endianness, format version) and `PREFIX.data-NNNNN-of-MMMMM`, where each
tensor's bytes lie raw, little-endian, row-major. The few protobuf fields are decoded here directly.
Tensors are read one at a time, straight into their memory, CRC-checked chunk by chunk as they stream,
so memory stays near the largest tensor whatever the size of the data files (MLCommons' holds the LAMB
slots too: 4 GB).

google-research BERT names map to the reference (NVIDIA / HF) names as NVIDIA's `convert_tf_checkpoint.py`
maps them: `/` -> `.`, `layer_3` -> `layer.3`, `kernel` (transposed), `gamma` and `output_weights` ->
`weight`, `beta` and `output_bias` -> `bias`, `*_embeddings` -> `*_embeddings.weight`; variables with an
optimizer part in their name (`LAMB`, `LAMB_1`, `adam_m`, `adam_v`, `global_step`, `beta1_power`,
`beta2_power`) are skipped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import crc32c
import numpy as np
import torch

from bert_pretrain.errors import InputError
from bert_pretrain.model import BertConfig
from bert_pretrain.regular_file import require_regular
from bert_pretrain.tf_table import mask_crc32c, read_table, read_varint
from bert_pretrain.weights import listed, reference_shapes

# TensorFlow's DataType enum -> torch dtype, for the types whose bytes are stored raw
DTYPES = {1: torch.float32, 2: torch.float64, 3: torch.int32, 4: torch.uint8, 5: torch.int16, 6: torch.int8,
          9: torch.int64, 10: torch.bool, 14: torch.bfloat16, 17: torch.uint16, 19: torch.float16,
          22: torch.uint32, 23: torch.uint64}
OPTIMIZER_PARTS = frozenset({"LAMB", "LAMB_1", "adam_m", "adam_v", "global_step", "beta1_power", "beta2_power"})
_RENAMED = {"kernel": "weight", "gamma": "weight", "output_weights": "weight", "beta": "bias", "output_bias": "bias"}
_INDEXED = re.compile(r"[A-Za-z]+_\d+")
_READ_CHUNK = 16 << 20  # bytes per read, read straight into the tensor and checksummed there
_BUNDLE_VERSION = 1  # the format version this reader knows (TensorFlow's kTensorBundleVersion)


@dataclass(frozen=True)
class TensorEntry:
    """Where one variable's bytes lie: `dtype` is None for types not stored raw (strings, resources)."""

    name: str
    dtype: torch.dtype | None
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int


class TensorBundle:
    """The variables of one TensorFlow checkpoint: `entries` by name, `read(entry)` a verified tensor."""

    def __init__(self, index: Path):
        require_regular(index, "pass the checkpoint's prefix (model.ckpt-28252) or its .index file, as TensorFlow "
                        "wrote it")
        if not index.is_file():
            raise InputError(f"{index}: no such TensorFlow checkpoint index; pass the checkpoint's prefix "
                             "(model.ckpt-28252) or its .index file, with its .data-* files beside it")
        self.index = index
        self.prefix = index.with_name(index.name.removesuffix(".index"))
        table = dict(read_table(index))
        if b"" not in table:
            raise InputError(f"{index}: no bundle header (the empty key); not a TensorFlow checkpoint index")
        self.num_shards = self._read_header(table.pop(b""))
        self.entries = {key.decode("utf-8", "replace"): self._entry(key, value) for key, value in table.items()}
        self._check_data_files()

    def data_path(self, shard: int) -> Path:
        return self.prefix.with_name(f"{self.prefix.name}.data-{shard:05d}-of-{self.num_shards:05d}")

    def read(self, entry: TensorEntry) -> torch.Tensor:
        """The variable's tensor (shape and dtype as saved), after its CRC-32C matched its bytes."""
        if entry.dtype is None:
            raise InputError(f"{self.index}: variable {entry.name} is not a numeric tensor; it cannot be read")
        path = self.data_path(entry.shard)
        out = np.empty(entry.size, np.uint8)  # numpy asks for huge pages: about twice torch.empty's fill rate
        view, crc, done = memoryview(out), 0, 0
        with open(path, "rb", buffering=0) as file:
            file.seek(entry.offset)
            while done < entry.size:
                count = file.readinto(view[done:done + min(_READ_CHUNK, entry.size - done)])
                if not count:
                    raise InputError(_truncated(path, entry, entry.offset + done))
                crc = crc32c.crc32c(view[done:done + count], crc)  # while the chunk is still in the CPU's cache
                done += count
        if mask_crc32c(crc) != entry.crc32c:
            raise InputError(f"{path}: variable {entry.name} (bytes {entry.offset}..{entry.offset + entry.size}) "
                             "fails its CRC-32C check: the data file is damaged; download or copy it again")
        return torch.from_numpy(out).view(entry.dtype).reshape(entry.shape)

    def _read_header(self, value: bytes) -> int:
        fields = _fields(value, self.index, "the bundle header")
        num_shards, big_endian = _one(fields, 1, 1), _one(fields, 2, 0)
        version = _fields(_one(fields, 3, b""), self.index, "the bundle version")
        if big_endian:
            raise InputError(f"{self.index}: a big-endian checkpoint; this reader takes the little-endian ones "
                             "that x86 and ARM machines write")
        if _one(version, 2, 0) > _BUNDLE_VERSION:
            raise InputError(f"{self.index}: checkpoint format version needs a reader of version "
                             f"{_one(version, 2, 0)} or newer; this one reads version {_BUNDLE_VERSION}")
        if num_shards < 1:
            raise InputError(f"{self.index}: the header says {num_shards} data files; the index is damaged")
        return num_shards

    def _entry(self, key: bytes, value: bytes) -> TensorEntry:
        name = key.decode("utf-8", "replace")
        fields = _fields(value, self.index, f"the entry of {name}")
        if 7 in fields:
            raise InputError(f"{self.index}: variable {name} is saved in slices (a partitioned variable), "
                             "which this reader does not read; save the checkpoint unpartitioned")
        shape = _fields(_one(fields, 2, b""), self.index, f"the shape of {name}")
        dims = [_signed(_one(_fields(dim, self.index, f"the shape of {name}"), 1, 0)) for dim in shape.get(2, [])]
        dtype = DTYPES.get(_one(fields, 1, 0))
        entry = TensorEntry(name, dtype, tuple(dims), _one(fields, 3, 0), _one(fields, 4, 0), _one(fields, 5, 0),
                            _one(fields, 6, 0))
        # Python's integers: an int64 product would wrap ((2**32, 2**32) would claim 0 bytes)
        expected = None if dtype is None else math.prod(dims) * dtype.itemsize
        if min(dims, default=0) < 0 or (expected is not None and expected != entry.size):
            raise InputError(f"{self.index}: variable {name} has shape {tuple(dims)} and {entry.size} bytes, which "
                             "disagree; the index is damaged")
        if not 0 <= entry.shard < self.num_shards:
            raise InputError(f"{self.index}: variable {name} lies in data file {entry.shard}, but the header says "
                             f"{self.num_shards}; the index is damaged")
        return entry

    def _check_data_files(self) -> None:
        """Every data file present and long enough for its entries, before any tensor is read."""
        sizes = {}
        for shard in range(self.num_shards):
            path = self.data_path(shard)
            require_regular(path, f"put the data file {path.name} that TensorFlow wrote beside {self.index.name}")
            if not path.is_file():
                raise InputError(f"{path}: missing; the index {self.index.name} names {self.num_shards} data "
                                 f"file(s) ({self.prefix.name}.data-*-of-{self.num_shards:05d}): put all of them "
                                 "beside it")
            sizes[shard] = path.stat().st_size
        for entry in self.entries.values():
            if entry.offset + entry.size > sizes[entry.shard]:
                raise InputError(_truncated(self.data_path(entry.shard), entry, sizes[entry.shard]))


def _truncated(path: Path, entry: TensorEntry, available: int) -> str:
    return (f"{path}: truncated: variable {entry.name} needs bytes {entry.offset}..{entry.offset + entry.size}, "
            f"the file ends at byte {available}; download or copy it again")


def _fields(buffer: bytes, source: Path, what: str) -> dict[int, list]:
    """A protobuf message's fields: number -> values (ints for varint and fixed, bytes for length-delimited)."""
    fields, position = {}, 0
    try:
        while position < len(buffer):
            tag, position = read_varint(buffer, position)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                value, position = read_varint(buffer, position)
            elif wire in (1, 5):
                width = 8 if wire == 1 else 4
                value, position = int.from_bytes(buffer[position:position + width], "little"), position + width
            elif wire == 2:
                length, position = read_varint(buffer, position)
                value, position = buffer[position:position + length], position + length
            else:
                raise ValueError(f"wire type {wire}")
            if position > len(buffer):
                raise ValueError("a field runs past the end")
            fields.setdefault(number, []).append(value)
    except ValueError as err:
        raise InputError(f"{source}: {what} is not a valid protobuf message ({err}); the index is damaged") from None
    return fields


def _one(fields: dict[int, list], number: int, default):
    """A singular field's value (protobuf: the last one written wins)."""
    return fields[number][-1] if number in fields else default


def _signed(value: int) -> int:
    """An int64 from its varint (negative numbers are written as 64-bit two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def reference_name(tf_name: str) -> tuple[str, bool] | None:
    """A google-research BERT variable name -> (reference name, whether the tensor is transposed); None for
    an optimizer variable."""
    parts = tf_name.split("/")
    if OPTIMIZER_PARTS.intersection(parts):
        return None
    names = []
    for part in parts:
        names += part.rsplit("_", 1) if _INDEXED.fullmatch(part) else [_RENAMED.get(part, part)]
    if parts[-1].endswith("_embeddings"):
        names.append("weight")
    return ".".join(names), parts[-1] == "kernel"


def weight_plan(bundle: TensorBundle) -> tuple[dict[str, tuple[TensorEntry, bool]], list[str], int]:
    """(reference name -> (entry, transposed)), the variables whose reference name another one already
    took, and the number of optimizer variables skipped."""
    plan, clashes, skipped = {}, [], 0
    for name, entry in bundle.entries.items():
        mapped = reference_name(name)
        if mapped is None:
            skipped += 1
        elif mapped[0] in plan:
            clashes.append(name)
        else:
            plan[mapped[0]] = (entry, mapped[1])
    return plan, clashes, skipped


def read_tf_weights(index: Path, config: BertConfig) -> tuple[dict[str, torch.Tensor], int]:
    """The model weights of a google-research-named TensorFlow checkpoint in reference names (vocab as
    saved; kernels as transposed views, which the copy into a model transposes in the same pass), checked
    against `config` before any tensor is read; and the number of optimizer variables skipped (never read)."""
    bundle = TensorBundle(index)
    plan, clashes, skipped = weight_plan(bundle)
    _check_plan(bundle, plan, clashes, reference_shapes(config))
    state = {}
    for reference, (entry, transposed) in sorted(plan.items(), key=lambda item: (item[1][0].shard, item[1][0].offset)):
        tensor = bundle.read(entry)  # in file order: the skipped optimizer slots are seeked over, never read
        state[reference] = tensor.t() if transposed else tensor
    return state, skipped


def _check_plan(bundle: TensorBundle, plan: dict, clashes: list[str], expected: dict[str, tuple[int, ...]]) -> None:
    for entry, _ in plan.values():  # an integer variable would be cast into a float parameter without a word
        if entry.dtype is None or not entry.dtype.is_floating_point:
            kind = "not a numeric tensor" if entry.dtype is None else str(entry.dtype).removeprefix("torch.")
            raise InputError(f"{bundle.index}: variable {entry.name} holds {kind} values, not floating-point weights; "
                             "a BERT checkpoint's weights are float: check that this is a google-research BERT "
                             "checkpoint")
    unmatched = sorted(clashes + [entry.name for reference, (entry, _) in plan.items() if reference not in expected])
    missing = sorted(set(expected) - set(plan))
    misshaped = []
    for reference, (entry, transposed) in sorted(plan.items()):
        want = expected.get(reference)
        want = want[::-1] if want is not None and transposed else want  # in TensorFlow's orientation
        if want is not None and want != entry.shape:
            misshaped.append(f"{entry.name} {entry.shape} (expected {want})")
    problems = [f"{label}: {listed(names)}" for label, names in (
        ("variables with no model parameter", unmatched), ("model parameters with no variable", missing),
        ("mis-shaped", misshaped)) if names]
    if problems:
        raise InputError(f"{bundle.index}: does not match the model of the given bert_config ({'; '.join(problems)}); "
                         "check that --bert_config_path describes this checkpoint and that its variables have "
                         "google-research BERT names (bert/encoder/layer_0/...)")
