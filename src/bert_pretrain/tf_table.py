"""A TensorFlow checkpoint's `.index` file: which path it is, and the sorted key-value table it holds
(LevelDB's table format).

Layout, from the end of the file: a 48-byte footer (the metaindex and index block handles as varints,
zero padding to 40 bytes, the 8-byte magic 0xdb4775248b80fb57); the index block maps a separator key to
the handle (offset, size) of each data block; every block is followed by a 5-byte trailer (compression
type: 0 none, 1 raw Snappy; then the masked CRC-32C of the stored bytes and the type byte). A block holds
entries (shared key prefix length, unshared length, value length as varints, the unshared key bytes,
the value), then its restart offsets (uint32 each) and their count (uint32).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import cramjam
import crc32c

from bert_pretrain.errors import InputError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5
NO_COMPRESSION, SNAPPY_COMPRESSION = 0, 1
_CRC_MASK_DELTA = 0xA282EAD8
# Snappy's densest element is a 3-byte copy of 64 bytes: no Snappy block expands more than 64/3 times
_SNAPPY_MOST_PER_BYTE = 22
# A writer restarts key sharing every 16 entries (LevelDB's and TensorFlow's block_restart_interval): each
# key of a run is rebuilt from the run's own bytes, so the keys of a block total at most 16 times its size.
_KEY_BYTES_PER_BLOCK_BYTE = 16
_DATA_FILE = re.compile(r"\.data-\d{5}-of-\d{5}$")


def tf_index_path(path: str | Path) -> Path | None:
    """The `.index` of the TensorFlow checkpoint that `path` names (its prefix, its `.index`, its `.meta` or
    one of its data files), or None when `path` is not one."""
    path = Path(path)
    if path.suffix in (".index", ".meta"):
        return path.with_suffix(".index")
    if _DATA_FILE.search(path.name):
        return path.with_name(_DATA_FILE.sub("", path.name) + ".index")
    candidate = path.with_name(path.name + ".index")
    # any kind of file: the bundle reader refuses one that is not a regular file, by name
    return candidate if not path.is_dir() and candidate.exists() else None


def mask_crc32c(crc: int) -> int:
    """A CRC-32C rotated right by 15 bits plus a constant, as LevelDB and TensorFlow store checksums (the
    CRC of bytes that hold CRCs would otherwise be weak)."""
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data) -> int:
    """The stored (masked) form of the CRC-32C of `data` (any buffer)."""
    return mask_crc32c(crc32c.crc32c(data))


def read_varint(buffer: bytes, position: int) -> tuple[int, int]:
    """A little-endian base-128 varint at `position`: (value, position after it); ValueError if cut off."""
    value = shift = 0
    while True:
        if position >= len(buffer) or shift > 63:
            raise ValueError("a varint runs past the end of its bytes")
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def read_table(path: str | Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the table at `path`, in key order; InputError naming the file if damaged.

    Memory follows the bytes the table's blocks really hold, whatever the file claims: only the footer and
    the blocks it leads to are read (never the whole file), each data block once (their handles must lie
    in file order without overlap, as LevelDB writes them), a Snappy block no larger than Snappy can expand
    its bytes to, keys strictly ascending as they are decoded (a run of equal keys stops at the second), and
    the rebuilt keys no longer in total than `_KEY_BYTES_PER_BLOCK_BYTE` times their block."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            entries = _read_entries(file, size)
    except ValueError as err:
        raise InputError(f"{path}: not a readable TensorFlow checkpoint index ({err}); the file is damaged or "
                         "not an .index file: download or copy it again") from None
    except _OutOfOrder:
        raise InputError(f"{path}: the index's keys are out of order (the file is damaged); download or copy "
                         "it again") from None
    return entries


class _OutOfOrder(Exception):
    """A key not greater than the one before it."""


def _read_entries(file, size: int) -> list[tuple[bytes, bytes]]:
    if size < FOOTER_BYTES:
        raise ValueError(f"{size} bytes, shorter than the {FOOTER_BYTES}-byte footer")
    index_offset, index_size = _footer_index_handle(_read_at(file, size - FOOTER_BYTES, FOOTER_BYTES, size))
    if index_offset + index_size + BLOCK_TRAILER_BYTES > size - FOOTER_BYTES:
        raise ValueError(f"the index block at bytes {index_offset}..{index_offset + index_size} lies past the end "
                         "of the file")
    entries, data_end = [], 0
    for _, handle in _block_entries(_block(file, (index_offset, index_size), size)):
        offset, block_size = _decode_handle(handle)
        if offset < data_end or offset + block_size + BLOCK_TRAILER_BYTES > index_offset:
            raise ValueError(f"the data block at bytes {offset}..{offset + block_size} overlaps another block or "
                             "lies outside the data blocks")
        data_end = offset + block_size + BLOCK_TRAILER_BYTES
        for key, value in _block_entries(_block(file, (offset, block_size), size)):
            if entries and key <= entries[-1][0]:
                raise _OutOfOrder
            entries.append((key, value))
    return entries


def _read_at(file, offset: int, count: int, size: int) -> bytes:
    if offset + count > size:
        raise ValueError(f"bytes {offset}..{offset + count} lie past the end of the file")
    file.seek(offset)
    data = file.read(count)
    if len(data) != count:
        raise ValueError(f"the file ends before byte {offset + count}")
    return data


def _footer_index_handle(footer: bytes) -> tuple[int, int]:
    if struct.unpack("<Q", footer[-8:])[0] != TABLE_MAGIC:
        raise ValueError("no table magic number at its end")
    _, position = read_varint(footer, 0)  # the metaindex offset: TensorFlow keeps nothing there
    _, position = read_varint(footer, position)
    offset, position = read_varint(footer, position)
    size, _ = read_varint(footer, position)
    return offset, size


def _decode_handle(value: bytes) -> tuple[int, int]:
    offset, position = read_varint(value, 0)
    size, _ = read_varint(value, position)
    return offset, size


def _block(file, handle: tuple[int, int], file_size: int) -> bytes:
    """A block's contents, checksum verified and decompressed."""
    offset, size = handle
    end = offset + size
    if end + BLOCK_TRAILER_BYTES > file_size - FOOTER_BYTES:
        raise ValueError(f"a block at bytes {offset}..{end} lies past the end of the file")
    data = _read_at(file, offset, size + BLOCK_TRAILER_BYTES, file_size)
    stored, kind = data[:size], data[size]
    (checksum,) = struct.unpack("<I", data[size + 1:])
    if masked_crc32c(data[:size + 1]) != checksum:
        raise ValueError(f"the checksum of the block at byte {offset} does not match its bytes")
    if kind == NO_COMPRESSION:
        return stored
    if kind == SNAPPY_COMPRESSION:
        return _snappy_block(stored, offset)
    raise ValueError(f"the block at byte {offset} has compression type {kind}; TensorFlow writes 0 (none) or "
                     "1 (Snappy)")


def _snappy_block(stored: bytes, offset: int) -> bytes:
    """A raw Snappy block decompressed, once its declared length (the varint that starts it, which the
    decompressor allocates) is one its bytes can hold."""
    declared, _ = read_varint(stored, 0)
    if declared > _SNAPPY_MOST_PER_BYTE * len(stored):
        raise ValueError(f"the Snappy block at byte {offset} declares {declared} bytes, more than its "
                         f"{len(stored)} bytes can expand to")
    try:
        return bytes(cramjam.snappy.decompress_raw(stored))
    except cramjam.DecompressionError as err:
        raise ValueError(f"the Snappy block at byte {offset} does not decompress ({err})") from None


def _block_entries(block: bytes):
    """The (key, value) entries of one block, keys rebuilt from their shared prefixes, one at a time."""
    if len(block) < 4:
        raise ValueError("a block shorter than its restart count")
    (restarts,) = struct.unpack("<I", block[-4:])
    end = len(block) - 4 * (restarts + 1)
    if restarts < 1 or end < 0:
        raise ValueError(f"a block with {restarts} restart points in {len(block)} bytes")
    key, position, key_bytes, first = b"", 0, 0, True
    while position < end:
        shared, position = read_varint(block, position)
        unshared, position = read_varint(block, position)
        value_length, position = read_varint(block, position)
        if shared > len(key) or position + unshared + value_length > end:
            raise ValueError(f"an entry at byte {position} of a block runs past its end")
        previous, key = key, key[:shared] + block[position:position + unshared]
        if key <= previous and not first:  # the first key may be empty (the bundle header's)
            raise _OutOfOrder
        first = False
        key_bytes += len(key)
        if key_bytes > _KEY_BYTES_PER_BLOCK_BYTE * len(block):
            raise ValueError(f"the keys of a block of {len(block)} bytes rebuild to more than "
                             f"{_KEY_BYTES_PER_BLOCK_BYTE} times its size")
        position += unshared
        yield key, block[position:position + value_length]
        position += value_length
