"""Record corpora for the tests and the benchmark: the MLPerf WikiExtractor sample's articles as records,
written as C4, The Pile and HF datasets ship theirs (JSON Lines plain or compressed, Parquet, Arrow IPC)."""

from __future__ import annotations

import bz2
import gzip
import json
import re
from pathlib import Path

from bert_pretrain.prepare.text import Tally, clean_wiki_leftovers, wikiextractor_documents

# name -> (file name, writer keywords); every variant holds the same records
VARIANTS = {
    "jsonl": "corpus.jsonl",
    "jsonl.gz (C4)": "c4-train.00000-of-01024.json.gz",
    "jsonl.bz2": "corpus.jsonl.bz2",
    "jsonl.zst (The Pile)": "00.jsonl.zst",
    "parquet (HF hub)": "train-00000-of-00001.parquet",
    "arrow stream (HF datasets cache)": "data-00000-of-00001.arrow",
    "arrow file": "corpus_file.arrow",
}
_DOC = re.compile(r'^<doc [^>]*title="([^"]*)"[^>]*>\n(.*?)^</doc>$', re.MULTILINE | re.DOTALL)


def wiki_files(shared: Path, count: int = 4) -> list[Path]:
    return sorted((shared / "corpus" / "mlperf_wiki_sample").iterdir())[:count]


def cleaned_articles(files: list[Path]) -> list[str]:
    """Each article as the WikiExtractor reader leaves it: without the title line, MLPerf's cleanup applied."""
    return [clean_wiki_leftovers(body) for path in files for body in wikiextractor_documents(path, Tally())]


def doc_blocks(files: list[Path]) -> list[str]:
    """The `<doc ...>` ... `</doc>` blocks of WikiExtractor files, each whole with its line end."""
    return [match.group(0) + "\n" for path in files for match in _DOC.finditer(path.read_text())]


def raw_articles(files: list[Path], title: bool = True) -> list[str]:
    """Each article as a plain converter of WikiExtractor output writes it: the block's text as it stands, the
    title line first (unless `title` is False, as WikiExtractor's --json output has it in a field of its own)
    and the leftover markup kept."""
    blocks = [match.group(2).strip("\n") for path in files for match in _DOC.finditer(path.read_text())]
    return blocks if title else [block.partition("\n")[2].strip("\n") for block in blocks]


def write_records(texts: list[str], path: Path, field: str = "text", rows_per_group: int = 16) -> Path:
    """Write one record per text, in the format `path`'s name says; other fields beside it as real corpora have
    (an id, a url, a number). Parquet in row groups and Arrow in batches of `rows_per_group` records."""
    rows = [{"id": str(i), field: text, "url": f"https://example.org/{i}", "length": len(text)}
            for i, text in enumerate(texts)]
    name = path.name
    if ".json" in name:
        data = "".join(json.dumps(row) + "\n" for row in rows).encode()
        if name.endswith(".gz"):
            data = gzip.compress(data)
        elif name.endswith(".bz2"):
            data = bz2.compress(data)
        elif name.endswith(".zst"):
            import zstandard

            data = zstandard.ZstdCompressor().compress(data)
        path.write_bytes(data)
        return path
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, path, row_group_size=rows_per_group)
    elif "file" in name:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=rows_per_group)
    else:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=rows_per_group)
    return path
