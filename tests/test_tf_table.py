"""The `.index` reader's memory follows the bytes its blocks really hold, not what a crafted file claims.

Each crafted index is small (or sparse) and built with the table writer transcribed from the format's
specification (tests/oracles/tf_table_writer.py). Each is refused in one line; the slow test also runs
`bert-pretrain inspect` on each in a fresh interpreter and compares its peak RSS with the same command on an
ordinary checkpoint, as a ratio (an unbounded reader takes gigabytes there, or hits the child's cap).
"""

import struct

import numpy as np
import pytest
from oracles.tf_table_writer import TableWriter, block_contents, proto_bytes, proto_varint, varint, write_checkpoint
from support.peak_memory import cli_peak, one_line_refusal, python_peak

from bert_pretrain.errors import InputError
from bert_pretrain.tf_table import read_table

PREFIX = "model.ckpt-1"
HEADER = (b"", proto_varint(1, 1) + proto_bytes(3, proto_varint(1, 1)))  # one data file, format version 1
ENTRY = proto_varint(1, 1) + proto_bytes(2, b"")  # a float32 scalar's entry, enough for the table


def _index(tmp_path, name: str, table: bytes):
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{PREFIX}.index").write_bytes(table)
    (folder / f"{PREFIX}.data-00000-of-00001").write_bytes(b"")
    return folder / PREFIX


def entries_all_pointing_at_one_block(tmp_path):
    """A 3 MB index whose index block sends each of its 170,000 separators to the same data block of 200
    entries: read naively, 34 million entries from 3 MB."""
    writer = TableWriter(snappy=False)
    data = [HEADER] + [(b"bert/v%05d" % i, ENTRY) for i in range(200)]
    handle = writer.block(block_contents(data, 16))
    index = [(b"s%07d" % i, handle) for i in range(170_000)]
    return _index(tmp_path, "one_block", writer.finish(index)), "overlaps another block"


def snappy_block_of_zeros(tmp_path):
    """A data block of 33 MB of zero bytes and one restart point, Snappy-compressed to 1.6 MB: eleven million
    entries of three bytes, each with the empty key."""
    writer = TableWriter(snappy=True)
    handle = writer.block(bytes(3 * (11 << 20)) + struct.pack("<2I", 0, 1))
    return _index(tmp_path, "zeros", writer.finish([(b"", handle)])), "out of order"


def snappy_block_declaring_4_gb(tmp_path):
    """A 3-byte-long Snappy block whose length prefix says 4 GB (the decompressor allocates what it says)."""
    writer = TableWriter(snappy=False)
    handle = writer.stored_block(varint(2**32 - 1) + b"\x00a", kind=1)
    return _index(tmp_path, "declared", writer.finish([(b"", handle)])), "declares 4294967295 bytes"


def keys_growing_by_one_byte(tmp_path):
    """60,000 entries of 4 bytes, each key its predecessor plus one byte (ascending, shared prefixes as the
    format allows): 1.8 GB of keys rebuilt from 340 KB."""
    block = bytearray(varint(0) + varint(1) + varint(0) + b"a")
    for length in range(1, 60_000):
        block += varint(length) + varint(1) + varint(0) + b"a"
    writer = TableWriter(snappy=False)
    handle = writer.stored_block(bytes(block) + struct.pack("<2I", 0, 1), kind=0)
    return _index(tmp_path, "growing", writer.finish([(b"b", handle)])), "rebuild to more than 16 times"


CRAFTED = [entries_all_pointing_at_one_block, snappy_block_of_zeros, snappy_block_declaring_4_gb,
           keys_growing_by_one_byte]


@pytest.mark.parametrize("craft", CRAFTED, ids=lambda craft: craft.__name__)
def test_a_crafted_index_is_refused_in_one_line(tmp_path, craft):
    prefix, fragment = craft(tmp_path)
    with pytest.raises(InputError, match=fragment) as caught:
        read_table(prefix.with_name(PREFIX + ".index"))
    assert str(caught.value).startswith(f"{prefix}.index: ") and "\n" not in str(caught.value)


def test_the_footer_is_sought_not_the_whole_file_read(tmp_path):
    """A table at the end of a 1 GB sparse file: only its footer and blocks are read."""
    base = 1 << 30
    writer = TableWriter(snappy=False, base=base)
    entries = [HEADER] + [(b"bert/v%05d" % i, ENTRY) for i in range(50)]
    table = writer.finish([(entries[-1][0], writer.block(block_contents(entries, 16)))])
    path = tmp_path / f"{PREFIX}.index"
    with open(path, "wb") as file:
        file.seek(base)
        file.write(table)
    assert read_table(path) == entries
    ordinary = tmp_path / "ordinary.index"
    plain = TableWriter(snappy=False)
    ordinary.write_bytes(plain.finish([(entries[-1][0], plain.block(block_contents(entries, 16)))]))
    assert read_table(ordinary) == entries
    assert _peak_of_reading(path) < 1.5 * _peak_of_reading(ordinary)


def _peak_of_reading(index) -> int:
    """Peak RSS (kB) of a fresh interpreter that imports the reader and reads `index` with it."""
    run = python_peak("from bert_pretrain.tf_table import read_table\nread_table(sys.argv[1])\n", str(index))
    assert run.returncode == 0 and run.peak_kb > 0, run.stderr
    return run.peak_kb


@pytest.fixture(scope="module")
def ordinary_inspect_peak(tmp_path_factory) -> int:
    """Peak RSS (kB) of `bert-pretrain inspect` on an ordinary TensorFlow checkpoint."""
    ordinary = tmp_path_factory.mktemp("ordinary") / PREFIX
    rng = np.random.default_rng(0)
    write_checkpoint(ordinary, {f"bert/encoder/layer_{i}/output/dense/kernel": rng.random((64, 64), np.float32)
                                for i in range(4)})
    run = cli_peak("inspect", str(ordinary))
    assert run.returncode == 0 and run.peak_kb > 0, run.stderr
    return run.peak_kb


@pytest.mark.slow
@pytest.mark.parametrize("craft", CRAFTED, ids=lambda craft: craft.__name__)
def test_inspect_of_a_crafted_index_takes_no_more_memory_than_of_an_ordinary_one(tmp_path, craft,
                                                                                ordinary_inspect_peak):
    prefix, fragment = craft(tmp_path)
    run = cli_peak("inspect", str(prefix))
    assert one_line_refusal(run, f"{prefix}.index: ") and fragment in run.stderr, run.stderr[-2000:]
    assert run.peak_kb < 1.5 * ordinary_inspect_peak, (run.peak_kb, ordinary_inspect_peak)
