"""A writer of TensorFlow's checkpoint bundles, transcribed from the format's specification: LevelDB's table
format for the `.index` (prefix-compressed blocks, optional Snappy, masked CRC-32C trailers, a footer with
the index block's handle) and the BundleEntryProto of each tensor. Tests build damaged and re-laid-out
checkpoints with it; the TF checkpoint benchmark builds a BERT-large-sized one."""

from __future__ import annotations

import os
import struct

import cramjam
import google_crc32c
import numpy as np

TF_DTYPES = {np.dtype(np.float32): 1, np.dtype(np.int64): 9}


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while data[position] & 0x80:
        value |= (data[position] & 0x7F) << shift
        position, shift = position + 1, shift + 7
    return value | (data[position] << shift), position + 1


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def block_contents(entries: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0 if i % restart_interval == 0 else len(os.path.commonprefix([previous, key]))
        if shared == 0:
            restarts.append(len(out))
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts) + 1}I", *restarts, len(restarts))


class TableWriter:
    """Blocks appended with their 5-byte trailer; `finish` adds the index block, the metaindex and the footer.
    With `base`, the table is meant to be written at byte `base` of its file (handles count from the file's
    start)."""

    def __init__(self, snappy: bool, base: int = 0):
        self.out, self.snappy, self.base = bytearray(), snappy, base

    def block(self, contents: bytes) -> bytes:
        if self.snappy:
            return self.stored_block(bytes(cramjam.snappy.compress_raw(contents)), 1)
        return self.stored_block(contents, 0)

    def stored_block(self, stored: bytes, kind: int) -> bytes:
        """`stored` appended as the bytes of a block of compression type `kind`, as given; its handle."""
        handle = varint(self.base + len(self.out)) + varint(len(stored))
        self.out += stored + bytes([kind]) + struct.pack("<I", masked_crc(stored + bytes([kind])))
        return handle

    def finish(self, index: list[tuple[bytes, bytes]]) -> bytes:
        metaindex = self.block(block_contents([], 1))
        index_handle = self.block(block_contents(index, 1))
        return bytes(self.out) + (metaindex + index_handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)


def write_table(entries: list[tuple[bytes, bytes]], snappy=False, block_size=4096, restart_interval=16) -> bytes:
    writer, index, block = TableWriter(snappy), [], []
    for key, value in entries:
        block.append((key, value))
        if sum(len(k) + len(v) for k, v in block) >= block_size or key == entries[-1][0]:
            index.append((key, writer.block(block_contents(block, restart_interval))))
            block = []
    return writer.finish(index)


def proto_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value) if value else b""


def proto_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def entry_proto(array: np.ndarray, shard: int, offset: int) -> bytes:
    shape = b"".join(proto_bytes(2, proto_varint(1, d)) for d in array.shape)
    return (proto_varint(1, TF_DTYPES[array.dtype]) + proto_bytes(2, shape) + proto_varint(3, shard)
            + proto_varint(4, offset) + proto_varint(5, array.nbytes)
            + varint(6 << 3 | 5) + struct.pack("<I", masked_crc(array.tobytes())))


def write_checkpoint(prefix, values: dict, shards=1, snappy=False, block_size=4096, restart_interval=16) -> None:
    """A bundle of `values`, variable i in data file i % shards; the index as the table writer makes it."""
    data = [bytearray() for _ in range(shards)]
    entries = [(b"", proto_varint(1, shards) + proto_bytes(3, proto_varint(1, 1)))]
    for i, name in enumerate(sorted(values)):
        array = np.ascontiguousarray(values[name])
        entries.append((name.encode(), entry_proto(array, i % shards, len(data[i % shards]))))
        data[i % shards] += array.tobytes()
    for shard, contents in enumerate(data):
        prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{shards:05d}").write_bytes(contents)
    prefix.with_name(prefix.name + ".index").write_bytes(write_table(entries, snappy, block_size, restart_interval))


def snappy_reencoded(plain: bytes) -> bytes:
    """The same table with each of its blocks (TensorFlow's own bytes) Snappy-compressed, as TensorFlow's
    C++ table builder writes them."""
    footer, writer, index = plain[-48:], TableWriter(snappy=True), []
    position = read_varint(footer, read_varint(footer, 0)[1])[1]  # past the metaindex handle (empty in TF's)
    index_offset, position = read_varint(footer, position)
    index_size, _ = read_varint(footer, position)
    assert plain[index_offset + index_size] == 0  # the fixture's blocks are stored plain
    for key, handle in parse_block(plain[index_offset:index_offset + index_size]):
        offset, after = read_varint(handle, 0)
        size, _ = read_varint(handle, after)
        index.append((key, writer.block(plain[offset:offset + size])))
    return writer.finish(index)


def parse_block(block: bytes) -> list[tuple[bytes, bytes]]:
    (count,) = struct.unpack("<I", block[-4:])
    end, position, key, out = len(block) - 4 * (count + 1), 0, b"", []
    while position < end:
        shared, position = read_varint(block, position)
        unshared, position = read_varint(block, position)
        length, position = read_varint(block, position)
        key = key[:shared] + block[position:position + unshared]
        out.append((key, block[position + unshared:position + unshared + length]))
        position += unshared + length
    return out
