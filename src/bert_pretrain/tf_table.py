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
    return candidate if not path.is_dir() and candidate.is_file() else None


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
    """Every (key, value) of the table at `path`, in key order; InputError naming the file if damaged."""
    path = Path(path)
    data = path.read_bytes()
    try:
        index_handle = _footer_index_handle(data)
        entries = []
        for _, handle in _block_entries(_block(data, index_handle)):
            entries += _block_entries(_block(data, _decode_handle(handle)))
    except ValueError as err:
        raise InputError(f"{path}: not a readable TensorFlow checkpoint index ({err}); the file is damaged or "
                         "not an .index file: download or copy it again") from None
    keys = [key for key, _ in entries]
    if any(a >= b for a, b in zip(keys, keys[1:])):
        raise InputError(f"{path}: the index's keys are out of order (the file is damaged); download or copy "
                         "it again")
    return entries


def _footer_index_handle(data: bytes) -> tuple[int, int]:
    if len(data) < FOOTER_BYTES:
        raise ValueError(f"{len(data)} bytes, shorter than the {FOOTER_BYTES}-byte footer")
    footer = data[-FOOTER_BYTES:]
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


def _block(data: bytes, handle: tuple[int, int]) -> bytes:
    """A block's contents, checksum verified and decompressed."""
    offset, size = handle
    end = offset + size
    if end + BLOCK_TRAILER_BYTES > len(data) - FOOTER_BYTES:
        raise ValueError(f"a block at bytes {offset}..{end} lies past the end of the file")
    stored, kind = data[offset:end], data[end]
    (checksum,) = struct.unpack("<I", data[end + 1:end + BLOCK_TRAILER_BYTES])
    if masked_crc32c(data[offset:end + 1]) != checksum:
        raise ValueError(f"the checksum of the block at byte {offset} does not match its bytes")
    if kind == NO_COMPRESSION:
        return stored
    if kind == SNAPPY_COMPRESSION:
        try:
            return bytes(cramjam.snappy.decompress_raw(stored))
        except cramjam.DecompressionError as err:
            raise ValueError(f"the Snappy block at byte {offset} does not decompress ({err})") from None
    raise ValueError(f"the block at byte {offset} has compression type {kind}; TensorFlow writes 0 (none) or "
                     "1 (Snappy)")


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of one block, keys rebuilt from their shared prefixes."""
    if len(block) < 4:
        raise ValueError("a block shorter than its restart count")
    (restarts,) = struct.unpack("<I", block[-4:])
    end = len(block) - 4 * (restarts + 1)
    if restarts < 1 or end < 0:
        raise ValueError(f"a block with {restarts} restart points in {len(block)} bytes")
    entries, key, position = [], b"", 0
    while position < end:
        shared, position = read_varint(block, position)
        unshared, position = read_varint(block, position)
        value_length, position = read_varint(block, position)
        if shared > len(key) or position + unshared + value_length > end:
            raise ValueError(f"an entry at byte {position} of a block runs past its end")
        key = key[:shared] + block[position:position + unshared]
        position += unshared
        entries.append((key, block[position:position + value_length]))
        position += value_length
    return entries
