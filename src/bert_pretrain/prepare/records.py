"""Documents from record files: JSON Lines, Parquet and Arrow IPC, one record per document.

The formats corpora ship in: C4 (`c4-train.00000-of-01024.json.gz`, a JSON object per line), The Pile
(`.jsonl.zst`), datasets on the HF hub (Parquet) and the HF `datasets` cache (`.arrow`, Arrow IPC
streams). A record's text is one field or column (`--text_field`, default `text`); its lines are the
document's paragraphs, which the workers cut into sentences as they cut WikiExtractor bodies, without
the wiki markup cleanup unless `--clean_wiki_markup` asks for it (pipeline.py chooses the kind).

Streamed in bounded memory: JSON Lines a line at a time (a line over MAX_RECORD_BYTES is skipped and
counted), Parquet in batches of BATCH_ROWS rows of the text column alone, read through a buffer and
decoded a page at a time (so a file written as one huge row group is streamed too), Arrow IPC a record
batch at a time from a memory map; either made Python strings BATCH_ROWS rows at a time. Each document then keeps the bounds of text input: a paragraph over MAX_LINE_BYTES is
dropped, a document over MAX_DOCUMENT_CHARS is cut into parts, both counted.

A record that gives no text is skipped and counted with the first place it happened: a line that is not
JSON or not an object, a record without the field or with null there, a value that is not a string. A
file where more than half of the records are like that is refused (most likely the wrong
`--text_field`, or not JSON Lines), at its end or, when the first REFUSE_AFTER records all are, at once.
Parquet and Arrow declare their columns, so a missing or non-string column is refused before any row is
read. pyarrow (and zstandard for `.zst`) are imported only where such a file is read: the `corpora` extra.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from bert_pretrain.errors import InputError
from bert_pretrain.prepare.text import (
    LONG_LINES,
    MAX_DOCUMENT_CHARS,
    MAX_LINE_BYTES,
    Tally,
    _DocumentBuffer,
    open_binary,
    read_error,
    refuse_binary,
)
from bert_pretrain.prepare.zstd_stream import EXTRA

FORMATS = ("jsonl", "parquet", "arrow")
FORMAT_NAMES = {"jsonl": "JSON Lines", "parquet": "Parquet", "arrow": "Arrow IPC"}
MAX_RECORD_BYTES = 4 * MAX_DOCUMENT_CHARS  # a JSON line: room for a whole document with its escapes
BATCH_ROWS = 1024  # rows decoded (Parquet) or made Python strings (Parquet, Arrow) at a time
_PARQUET_BUFFER = 1 << 20
REFUSE_AFTER = 1000  # records: when none of the first ones has text, the file is refused without reading on
# No line of a document this short can pass MAX_LINE_BYTES (4 UTF-8 bytes per character at most), nor can
# the document pass MAX_DOCUMENT_CHARS: it needs no look at its lines.
_SHORT_DOCUMENT = MAX_LINE_BYTES // 4
_PARQUET_MAGIC = b"PAR1"
_ARROW_FILE_MAGIC = b"ARROW1"
_ARROW_STREAM_START = b"\xff\xff\xff\xff"  # the continuation marker opening an IPC stream's first message
# JSON may escape half a UTF-16 pair ("\\ud83d"): UTF-8 cannot hold it, and the tokenizer refuses it
_SURROGATES = re.compile("[\ud800-\udfff]")
_COMPRESSED = (".gz", ".bz2", ".zst")


def _name_suffix(path: Path) -> str:
    """The extension that names the format, under a compression suffix: '.jsonl' for c4.jsonl.zst."""
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1].lower() if suffixes else ""


def detect_format(path: Path) -> str | None:
    """'parquet', 'arrow' or 'jsonl' from the file's first bytes, or None for another input (text, a dump).
    Parquet and Arrow are known by their magic bytes, JSON Lines by a first line that is a JSON object or,
    for a .jsonl name, whatever it holds (its malformed lines are counted); a file named .parquet or
    .arrow without its format's magic is refused, and so is a .json file that holds one JSON document."""
    raw = _first_bytes(path, 8)
    if raw.startswith(_PARQUET_MAGIC):
        return "parquet"
    if raw.startswith((_ARROW_FILE_MAGIC, _ARROW_STREAM_START)):
        return "arrow"
    suffix = _name_suffix(path)
    if suffix in (".parquet", ".arrow"):
        check_format(path, suffix[1:])  # raises: the magic is not there
    head = refuse_binary(path)
    if suffix == ".jsonl" or _starts_with_json_object(head):
        return "jsonl"
    if suffix == ".json" and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"{", b"[")):
        # e.g. the dataset_info.json and state.json that HF datasets keeps beside its .arrow files: read as text,
        # their keys would become sentences
        raise InputError(f"{path}: a JSON document, not JSON Lines (one object per line); pass the data files "
                         "alone (a glob such as DIR/*.arrow) or convert it (jq -c '.[]')")
    return None


def check_format(path: Path, fmt: str) -> None:
    """Refuse a file that cannot be of the record format `fmt` (--input_format named it)."""
    raw = _first_bytes(path, 8)
    if fmt == "parquet" and not raw.startswith(_PARQUET_MAGIC):
        raise InputError(f"{path}: not a Parquet file (it does not start with {_PARQUET_MAGIC!r}); the file is "
                         "damaged, or leave --input_format at auto")
    if fmt == "arrow" and not raw.startswith((_ARROW_FILE_MAGIC, _ARROW_STREAM_START)):
        raise InputError(f"{path}: not an Arrow IPC file or stream (it starts with neither {_ARROW_FILE_MAGIC!r} "
                         "nor a stream's first message); the file is damaged, or leave --input_format at auto")
    if fmt == "jsonl":
        refuse_binary(path)


def _first_bytes(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as err:
        raise InputError(f"{path}: cannot open ({err.strerror or err})") from None


def _starts_with_json_object(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"{"):
        return False
    line, ended, _ = text.partition(b"\n")
    if not ended and len(head) >= 1 << 16:  # a first line longer than the head: its start decides
        return line.startswith((b'{"', b"{ "))
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@dataclass
class _FileCount:
    """Records of one file, and those without usable text (for the refusal rule)."""

    path: Path
    field: str
    fmt: str
    records: int = 0
    bad: int = 0
    first_bad: str = ""

    def skip(self, reason: str, where: str, tally: Tally) -> None:
        self.bad += 1
        self.first_bad = self.first_bad or f"{reason}, first at {where}"
        tally.add(reason, where)
        if self.records >= REFUSE_AFTER and self.bad == self.records:
            self.refuse(f"none of the first {self.records:,} records has text")

    def finish(self) -> None:
        if self.bad * 2 > self.records:
            self.refuse(f"{self.bad:,} of {self.records:,} records have no text")

    def refuse(self, what: str) -> None:
        jsonl = self.fmt == "jsonl"
        check = "; or check that the file is JSON Lines, one object per line" if jsonl else ""
        raise InputError(f"{self.path}: {what} ({self.first_bad}); pass --text_field NAME of the "
                         f"{'field' if jsonl else 'column'} that holds the text (now '{self.field}'){check}")


def record_documents(path: Path, fmt: str, field: str, tally: Tally) -> Iterator[str]:
    """The documents of the record file `path` of format `fmt` ('jsonl', 'parquet' or 'arrow'), in file
    order: each record's `field`, its paragraphs one per line (a long document in parts)."""
    count = _FileCount(path, field, fmt)
    values = {"jsonl": _jsonl_values, "parquet": _parquet_values, "arrow": _arrow_values}[fmt](path, field, tally,
                                                                                              count)
    for text, where in values:
        yield from _bounded_document(text, where, tally)
    if count.records == 0:
        tally.add("empty input files", str(path))
    count.finish()


def _bounded_document(text: str, where: str, tally: Tally) -> Iterator[str]:
    """The document as text input would give it: over-long paragraphs dropped, a long document cut."""
    if len(text) <= _SHORT_DOCUMENT:
        if text.strip():
            yield text
        else:
            tally.add("records with empty text skipped", where)
        return
    buffer, kept = _DocumentBuffer(tally), False
    for line in text.split("\n"):
        if len(line) > MAX_LINE_BYTES // 4 and len(line.encode("utf-8")) > MAX_LINE_BYTES:
            tally.add(LONG_LINES, where)
        elif line.strip():
            if (part := buffer.add(line, where)) is not None:
                kept = True
                yield part
    if (part := buffer.flush()) is not None:
        kept = True
        yield part
    if not kept:
        tally.add("records with empty text skipped", where)


def _jsonl_values(path: Path, field: str, tally: Tally, count: _FileCount) -> Iterator[tuple[str, str]]:
    """(text, where) of each JSON line that has a string `field`; the others skipped and counted."""
    number = 0
    try:
        with open_binary(path) as f:
            while line := f.readline(MAX_RECORD_BYTES + 1):
                number += 1
                where = f"{path}:{number}"
                if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
                    while (rest := f.readline(MAX_RECORD_BYTES)) and not rest.endswith(b"\n"):
                        pass
                    count.records += 1
                    tally.add(f"JSON lines over {MAX_RECORD_BYTES:,} bytes skipped", where)
                    continue
                if not line.strip():
                    continue
                count.records += 1
                if (text := _json_text(line, field, where, tally, count)) is not None:
                    yield text, where
    except (EOFError, OSError) as err:
        raise read_error(path, err) from None


def _json_text(line: bytes, field: str, where: str, tally: Tally, count: _FileCount) -> str | None:
    try:
        try:
            record = json.loads(line)
        except UnicodeDecodeError:
            # as for text: the bytes that are not UTF-8 are dropped (U+FFFD, removed by the tokenizer)
            record = json.loads(line.decode("utf-8", errors="replace"))
            tally.add("lines with bytes that are not UTF-8 (those bytes dropped)", where)
    except ValueError:
        count.skip("JSON lines that are not valid JSON skipped", where, tally)
        return None
    if not isinstance(record, dict):
        count.skip("JSON lines that are not an object skipped", where, tally)
        return None
    value = record.get(field)
    if value is None:
        count.skip(f"records without a '{field}' field (or null) skipped", where, tally)
        return None
    if not isinstance(value, str):
        count.skip(f"records whose '{field}' is not a string skipped", where, tally)
        return None
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = _SURROGATES.sub("", value)
            tally.add("records with unpaired \\ud800-\\udfff escapes (those characters dropped)", where)
    return value


def _pyarrow(path: Path, what: str):
    try:
        import pyarrow
    except ImportError:
        raise InputError(f"{path}: reading {what} needs pyarrow: {EXTRA}") from None
    return pyarrow


def _text_column_index(schema, path: Path, field: str, pa) -> int:
    """The index of the string column `field` in an Arrow schema; InputError naming the columns otherwise."""
    index = schema.get_field_index(field)
    if index < 0:
        names = ", ".join(f"'{n}'" for n in schema.names[:12]) + (" ..." if len(schema.names) > 12 else "")
        raise InputError(f"{path}: no column '{field}' (columns: {names}); pass --text_field NAME of the "
                         "column that holds the text")
    kind = schema.field(index).type
    value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    is_string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow 16 and later
    if not (pa.types.is_string(value_kind) or pa.types.is_large_string(value_kind) or is_string_view(value_kind)):
        raise InputError(f"{path}: column '{field}' holds {kind}, not strings; pass --text_field NAME of the "
                         "column that holds the text")
    return index


def _column_values(columns: Iterable, path: Path, field: str, tally: Tally, count: _FileCount
                   ) -> Iterator[tuple[str, str]]:
    """(text, where) of each non-null value of Arrow string arrays, `where` counting rows from 1. Python strings
    are made BATCH_ROWS at a time (slices are views): a file written as one record batch is read in bounded
    memory too."""
    for column in columns:
        for start in range(0, len(column), BATCH_ROWS):
            yield from _slice_values(column.slice(start, BATCH_ROWS), path, field, tally, count)


def _slice_values(column, path: Path, field: str, tally: Tally, count: _FileCount) -> Iterator[tuple[str, str]]:
    for value in column.to_pylist():
            count.records += 1
            if value is None:
                count.skip(f"records without a '{field}' field (or null) skipped", f"{path}: record {count.records:,}",
                           tally)
            else:
                yield value, f"{path}: record {count.records:,}"


def _parquet_values(path: Path, field: str, tally: Tally, count: _FileCount) -> Iterator[tuple[str, str]]:
    pa = _pyarrow(path, "Parquet")
    import pyarrow.parquet as pq

    try:
        # a buffered stream, not pre-buffered: a column chunk is read a buffer at a time (pyarrow's default reads
        # the whole compressed chunk, as large as the row group's text)
        with pq.ParquetFile(path, buffer_size=_PARQUET_BUFFER, pre_buffer=False) as parquet:
            index = _text_column_index(parquet.schema_arrow, path, field, pa)
            name = parquet.schema_arrow.names[index]
            batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=[name], use_threads=False)
            yield from _column_values((batch.column(0) for batch in batches), path, field, tally, count)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: cannot read as Parquet ({err}); the file may be damaged, download or copy it "
                         "again") from None


def _arrow_values(path: Path, field: str, tally: Tally, count: _FileCount) -> Iterator[tuple[str, str]]:
    pa = _pyarrow(path, "Arrow IPC files")
    try:
        with pa.memory_map(str(path)) as source:
            if source.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC:  # the random-access file format
                source.seek(0)
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:  # a stream, as HF datasets writes its cache
                source.seek(0)
                reader = pa.ipc.open_stream(source)
                batches = iter(reader)
            index = _text_column_index(reader.schema, path, field, pa)
            yield from _column_values((batch.column(index) for batch in batches), path, field, tally, count)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: cannot read as Arrow IPC ({err}); the file may be damaged, download or copy "
                         "it again") from None
