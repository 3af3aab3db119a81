"""Record files (JSON Lines plain and compressed, Parquet, Arrow IPC) as `prepare` input: the real Wikipedia sample
written in every format gives the shards the same articles give as WikiExtractor input; malformed records are
counted or the file refused; compressed streams end or break loudly; memory stays bounded."""

import bz2
import gzip
import json
import sys
import tracemalloc

import numpy as np
import pytest
from conftest import cli_here
from support.corpora import VARIANTS, cleaned_articles, doc_blocks, raw_articles, wiki_files, write_records

from bert_pretrain.data import shards
from bert_pretrain.errors import InputError
from bert_pretrain.options.prepare import PrepareOptions
from bert_pretrain.prepare import records, zstd_stream
from bert_pretrain.prepare.pipeline import run
from bert_pretrain.prepare.text import MAX_LINE_BYTES, Tally, read_lines

pa = pytest.importorskip("pyarrow")  # the corpora extra; init.sh installs it
zstandard = pytest.importorskip("zstandard")

SMALL = dict(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=1, num_shards=2, progress=False, workers=1)


@pytest.fixture
def vocab(shared_data):
    return str(shared_data / "vocab" / "bert-uncased-vocab.txt")


def all_arrays(folder):
    return {p.relative_to(folder).as_posix(): shards.read_padded(p) for p in sorted(folder.rglob("*.hdf5"))}


def same_arrays(one: dict, two: dict) -> bool:
    return len(one) > 0 and one.keys() == two.keys() and all(
        np.array_equal(one[f][k], two[f][k]) for f in one for k in one[f])


def prepare(inputs, out, vocab, **options):
    return run(PrepareOptions(input_files=[str(p) for p in inputs], vocab_file=vocab, output_dir=str(out),
                              **{**SMALL, **options}))


def first_blocks(source, target, count):
    """A WikiExtractor file holding the first `count` <doc> blocks of `source`, unchanged."""
    text = source.read_text()
    end = 0
    for _ in range(count):
        end = text.index("</doc>\n", end) + len("</doc>\n")
    target.write_text(text[:end])
    return target


def test_every_format_gives_the_shards_of_the_same_articles_as_wikiextractor_input(shared_data, vocab, tmp_path):
    """The articles, as the WikiExtractor reader leaves them (title line dropped, cleaned), written as records in
    each format: identical arrays, and identical to the WikiExtractor file's, the existing path's."""
    wiki = first_blocks(wiki_files(shared_data, 1)[0], tmp_path / "wiki_00", 8)
    articles = cleaned_articles([wiki])
    assert len(articles) == 8
    expected = prepare([wiki], tmp_path / "out_wikiextractor", vocab)
    reference = all_arrays(tmp_path / "out_wikiextractor")
    assert expected.instances > 300
    for variant, name in VARIANTS.items():
        source = tmp_path / variant.split()[0]
        source.mkdir(exist_ok=True)
        write_records(articles, source / name, rows_per_group=5)
        summary = prepare([source / name], tmp_path / f"out_{name}", vocab)
        assert summary.documents == 8 and summary.skipped == [], (variant, summary.skipped)
        assert same_arrays(all_arrays(tmp_path / f"out_{name}"), reference), variant


def test_clean_wiki_markup_makes_raw_bodies_what_wikiextractor_input_gives(shared_data, vocab, tmp_path):
    """WikiExtractor's --json output holds the title in a field of its own and the body with its leftover markup:
    with --clean_wiki_markup those records give the WikiExtractor files' shards; without, the markup stays."""
    blocks = doc_blocks(wiki_files(shared_data))
    with_markup = [b for b in blocks if "<" in b.split("\n", 1)[1].removesuffix("</doc>\n")]  # refs, <br>, <nowiki>
    assert len(with_markup) >= 5
    wiki = tmp_path / "wiki_markup"
    wiki.write_text("".join(blocks[:3] + with_markup))
    prepare([wiki], tmp_path / "out_wikiextractor", vocab)
    bodies = write_records(raw_articles([wiki], title=False), tmp_path / "wiki_markup.jsonl")
    prepare([bodies], tmp_path / "out_cleaned", vocab, clean_wiki_markup=True)
    prepare([bodies], tmp_path / "out_raw", vocab)
    reference = all_arrays(tmp_path / "out_wikiextractor")
    assert same_arrays(all_arrays(tmp_path / "out_cleaned"), reference)
    assert not same_arrays(all_arrays(tmp_path / "out_raw"), reference)


@pytest.mark.slow
def test_the_whole_sample_mixed_formats_any_workers_and_the_raw_articles(shared_data, vocab, tmp_path):
    """The four files of the sample (153 articles), each in another format in one folder, at 128/20: the
    WikiExtractor input's shards, with 2 workers and split over two runs by --shard_range as with one.
    The raw articles (the title line kept, no cleanup), as a plain converter of WikiExtractor output would
    write them, hold 0.06% more tokens and 0.5% more sentences (the titles, one short line each, and the
    leftover tags of 7 articles that the cleanup removes); their instance count differs by a few percent, mostly through
    the random draws: a changed document gets other target lengths and pairings (-3.5% at this seed, +0.4%
    at seed 1; the same articles with their titles alone: -6.0% and +2.1%)."""
    files = wiki_files(shared_data)
    options = dict(max_seq_length=128, max_predictions_per_seq=20, num_shards=4)
    expected = prepare(files, tmp_path / "out_wikiextractor", vocab, **options)
    reference = all_arrays(tmp_path / "out_wikiextractor")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path, name in zip(files, ["a.jsonl.zst", "b.parquet", "c.arrow", "d.json.gz"]):
        write_records(cleaned_articles([path]), mixed / name)
    prepare([mixed], tmp_path / "out_two_workers", vocab, workers=2, **options)
    assert same_arrays(all_arrays(tmp_path / "out_two_workers"), reference)
    prepare([mixed], tmp_path / "out_ranges", vocab, shard_range="0:1", **options)
    prepare([mixed], tmp_path / "out_ranges", vocab, shard_range="1:4", **options)
    assert same_arrays(all_arrays(tmp_path / "out_ranges"), reference)

    write_records(raw_articles(files), tmp_path / "raw.jsonl")
    raw = prepare([tmp_path / "raw.jsonl"], tmp_path / "out_raw", vocab, **options)
    # one of the 153 <doc> blocks holds only its title: dropped (and counted) as WikiExtractor input, a
    # one-line document as a record
    assert any("<doc> blocks with no text but the title dropped" in line for line in expected.skipped)
    assert (expected.documents, raw.documents) == (152, 153)
    assert 0 < raw.tokens / expected.tokens - 1 < 0.002, (raw.tokens, expected.tokens)
    assert abs(raw.instances / expected.instances - 1) < 0.05, (raw.instances, expected.instances)
    print(f"instances: WikiExtractor input {expected.instances:,}, raw articles as records {raw.instances:,}; "
          f"tokens {expected.tokens:,} and {raw.tokens:,}")


def test_malformed_records_are_counted_with_their_first_place(tmp_path):
    lines = [json.dumps({"text": "Good one.\nSecond paragraph."}), "", "{not json", "[1, 2]",
             json.dumps({"body": "no text field"}), json.dumps({"text": None}), json.dumps({"text": 7}),
             json.dumps({"text": "  \n "}), json.dumps({"text": "Half an emoji \ud83d here."}),
             json.dumps({"text": "Another good one."})]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n" + b'{"text": "caf\xe9 au lait"}\n')
    tally = Tally()
    documents = list(records.record_documents(path, "jsonl", "text", tally))
    assert documents == ["Good one.\nSecond paragraph.", "Half an emoji  here.", "Another good one.", "caf\ufffd au lait"]
    assert dict(tally.examples) == {
        "JSON lines that are not valid JSON skipped": f"{path}:3",
        "JSON lines that are not an object skipped": f"{path}:4",
        "records without a 'text' field (or null) skipped": f"{path}:5",
        "records whose 'text' is not a string skipped": f"{path}:7",
        "records with empty text skipped": f"{path}:8",
        "records with unpaired \\ud800-\\udfff escapes (those characters dropped)": f"{path}:9",
        "lines with bytes that are not UTF-8 (those bytes dropped)": f"{path}:11",
    }
    assert tally.counts["records without a 'text' field (or null) skipped"] == 2


def test_a_parquet_null_is_counted_and_paragraph_and_document_bounds_apply(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_DOCUMENT_CHARS", 40)
    monkeypatch.setattr(records, "_SHORT_DOCUMENT", 10)
    import bert_pretrain.prepare.text as text

    monkeypatch.setattr(text, "MAX_DOCUMENT_CHARS", 40)
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 16)
    path = tmp_path / "t.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["short", None, "a paragraph far too long\nkept one\n" + "\n".join(
        f"line {i:02d} here" for i in range(6))]}), path)
    tally = Tally()
    documents = list(records.record_documents(path, "parquet", "text", tally))
    assert documents[0] == "short"
    assert documents[1:] == ["kept one\nline 00 here\nline 01 here\nline 02 here",
                             "line 03 here\nline 04 here\nline 05 here"]
    assert tally.examples == {"records without a 'text' field (or null) skipped": f"{path}: record 2",
                              "lines over 1,048,576 bytes skipped": f"{path}: record 3",
                              "documents over 40 characters cut into parts": f"{path}: record 3"}


def test_skipped_records_are_in_the_run_report(tmp_path, vocab):
    lines = [json.dumps({"text": f"Document {i} begins here.\nIt ends with paragraph {i}."}) for i in range(8)]
    lines[3:3] = ["{broken", json.dumps({"text": None})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    summary = prepare([tmp_path / "a.jsonl"], tmp_path / "out", vocab)
    report = summary.report()
    assert summary.documents == 8
    assert f"1 x JSON lines that are not valid JSON skipped (first: {tmp_path / 'a.jsonl'}:4)" in report, report
    assert f"1 x records without a 'text' field (or null) skipped (first: {tmp_path / 'a.jsonl'}:5)" in report


@pytest.mark.parametrize("case", ["mostly bad jsonl", "json array", "wrong field parquet", "wrong field arrow",
                                  "number column", "mostly null arrow"])
def test_a_file_whose_records_mostly_have_no_text_is_refused_in_one_line(tmp_path, vocab, case):
    args = []
    if case == "mostly bad jsonl":
        path = tmp_path / "c4.json"
        path.write_text("".join(json.dumps({"content": f"doc {i}."}) + "\n" for i in range(6))
                        + json.dumps({"text": "One with text."}) + "\n")
        expected = "6 of 7 records have no text (records without a 'text' field (or null) skipped, first at"
    elif case == "json array":
        path = tmp_path / "dump.jsonl"
        path.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=1))
        expected = "records have no text (JSON lines that are not valid JSON skipped, first at"
    elif case == "wrong field parquet":
        import pyarrow.parquet as pq

        path = tmp_path / "train.parquet"
        pq.write_table(pa.table({"id": [1], "content": ["x"]}), path)
        expected = "no column 'text' (columns: 'id', 'content'); pass --text_field NAME"
    elif case == "wrong field arrow":
        path = write_records(["x"], tmp_path / "data.arrow", field="content")
        expected = "no column 'text' (columns: 'id', 'content', 'url', 'length')"
    elif case == "number column":
        path = write_records(["x"], tmp_path / "data.arrow")
        args = ["--text_field", "length"]
        expected = "column 'length' holds int64, not strings"
    else:
        path = tmp_path / "nulls.arrow"
        table = pa.table({"text": ["a.", None, None]})
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        expected = "2 of 3 records have no text"
    result = cli_here("prepare", "--input_file", str(path), "--vocab_file", vocab, "--output_dir",
                      str(tmp_path / "out"), "--no_progress", "--workers", "1", *args)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert "\n" not in message and str(path) in message and expected in message, message
    assert "pass --text_field NAME" in message  # the likely fix
    assert not list((tmp_path / "out").rglob("*.hdf5"))


def test_a_file_with_no_text_in_its_first_records_is_refused_without_reading_on(tmp_path):
    """Its broken tail (a gzip cut short) is never reached: the wrong --text_field is named first."""
    rng = np.random.default_rng(0)
    data = gzip.compress("".join(json.dumps({"content": rng.bytes(30).hex()}) + "\n"
                                 for _ in range(4 * records.REFUSE_AFTER)).encode())
    path = tmp_path / "c4.json.gz"
    path.write_bytes(data[:-100])
    with pytest.raises(InputError, match=f"none of the first {records.REFUSE_AFTER:,} records has text"):
        list(records.record_documents(path, "jsonl", "text", Tally()))


def test_formats_are_detected_by_content_where_the_name_does_not_say(tmp_path, shared_data):
    rows = "".join(json.dumps({"text": f"doc {i}."}) + "\n" for i in range(3))
    cases = {"c4-train.00000-of-01024.json.gz": gzip.compress(rows.encode()), "noext": rows.encode(),
             "x.jsonl.bz2": bz2.compress(rows.encode()), "x.jsonl.zst": zstandard.ZstdCompressor().compress(rows.encode()),
             "braces.txt": b"{curly} text, not JSON.\nAnother sentence.\n", "odd.jsonl": b"plain text\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    write_records(["a"], tmp_path / "hf.data")  # an Arrow stream under any name
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "part-0")
    found = {p.name: records.detect_format(p) for p in sorted(tmp_path.iterdir())}
    assert found == {"braces.txt": None, "c4-train.00000-of-01024.json.gz": "jsonl", "hf.data": "arrow",
                     "noext": "jsonl", "odd.jsonl": "jsonl", "part-0": "parquet", "x.jsonl.bz2": "jsonl",
                     "x.jsonl.zst": "jsonl"}
    for text_input in sorted((shared_data / "corpus" / "mlperf_wiki_sample").iterdir())[:1]:
        assert records.detect_format(text_input) is None  # WikiExtractor output stays WikiExtractor output
    (tmp_path / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string"}}}, indent=2))
    with pytest.raises(InputError, match="dataset_info.json: a JSON document, not JSON Lines"):
        records.detect_format(tmp_path / "dataset_info.json")
    (tmp_path / "fake.parquet").write_text("not parquet at all\n")
    with pytest.raises(InputError, match="fake.parquet: not a Parquet file"):
        records.detect_format(tmp_path / "fake.parquet")
    (tmp_path / "fake.arrow").write_bytes(b"\0\1\2\3" * 10)
    with pytest.raises(InputError, match="fake.arrow: not an Arrow IPC file or stream"):
        records.detect_format(tmp_path / "fake.arrow")


def zst_frames(*chunks: bytes) -> bytes:
    return b"".join(zstandard.ZstdCompressor(level=3).compress(chunk) for chunk in chunks)


def test_zstd_streams_read_every_frame_and_fail_loudly_when_cut_or_damaged(tmp_path, monkeypatch):
    monkeypatch.setattr(zstd_stream, "_FEED", 7)  # frame ends fall inside the pieces fed
    rng = np.random.default_rng(0)
    chunks = [b"".join(b"line %d %s\n" % (i, rng.bytes(20).hex().encode()) for i in range(n)) for n in (3000, 1, 700)]
    path = tmp_path / "x.zst"
    path.write_bytes(zst_frames(*chunks))
    with zstd_stream.open_zstd(path) as f:
        assert f.read() == b"".join(chunks)  # zstandard's one-shot decompression of each frame agrees
    path.write_bytes(zst_frames(*chunks)[:-50])
    with pytest.raises(InputError, match="x.zst: the compressed file ends early"):
        list(read_lines(path, Tally()))
    damaged = bytearray(zst_frames(*chunks))
    damaged[len(damaged) // 2: len(damaged) // 2 + 8] = b"\xff" * 8
    path.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match="x.zst: cannot read .*Zstandard data is damaged"):
        list(read_lines(path, Tally()))


def test_a_missing_library_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    parquet = write_records(["a"], tmp_path / "a.parquet")
    zst = tmp_path / "a.jsonl.zst"
    zst.write_bytes(zst_frames(b'{"text": "a"}\n'))
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    monkeypatch.setitem(sys.modules, "compression", None)
    for path, what in ((parquet, "reading Parquet needs pyarrow"), (zst, "reading .zst files needs the zstandard")):
        fmt = "parquet" if path == parquet else "jsonl"
        with pytest.raises(InputError) as error:
            list(records.record_documents(path, fmt, "text", Tally()))
        assert what in str(error.value) and "pip install 'bert-pretrain[corpora]'" in str(error.value)


def peak_while_reading(path, fmt, measure) -> int:
    """The peak of `measure()` (bytes) seen while the file's documents are read one after another."""
    peak = 0
    for _ in records.record_documents(path, fmt, "text", Tally()):
        peak = max(peak, measure())
    return peak


def test_memory_is_bounded_by_a_batch_not_the_file(tmp_path, monkeypatch):
    """Ten times the documents, the same peak: Parquet (one huge row group, read a page at a time),
    compressed Arrow IPC (a batch at a time), an uncompressed Arrow stream of one batch (memory-mapped, made
    Python strings a slice at a time) and gzipped JSON Lines (a line at a time) are streamed."""
    monkeypatch.setattr(records, "BATCH_ROWS", 100)
    monkeypatch.setattr(records, "_PARQUET_BUFFER", 1 << 16)
    rng = np.random.default_rng(0)
    import pyarrow.parquet as pq

    peaks, sizes = {}, {}
    for scale in (4, 40):
        words = rng.bytes(400 * 200 * scale).hex()  # 7 hex digits and a space: incompressible words
        texts = [" ".join(words[j:j + 7] for j in range(i, i + 800, 8)) for i in range(0, len(words), 800)]
        sizes[scale] = sum(map(len, texts))  # 0.8 MB and 8 MB of text
        table = pa.table({"text": texts})
        pq.write_table(table, tmp_path / f"{scale}.parquet", row_group_size=len(table), data_page_size=1 << 16,
                       use_dictionary=False)  # one row group, small pages: both files hold many pages
        with pa.OSFile(str(tmp_path / f"{scale}.arrow"), "wb") as sink, pa.ipc.new_stream(
                sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
            writer.write_table(table, max_chunksize=100)
        with pa.OSFile(str(tmp_path / f"{scale}.one_batch.arrow"), "wb") as sink, pa.ipc.new_stream(
                sink, table.schema) as writer:
            writer.write_batch(table.combine_chunks().to_batches()[0])  # uncompressed, one batch: memory-mapped
        del table  # out of pyarrow's pool before its peak is measured
        (tmp_path / f"{scale}.jsonl.gz").write_bytes(gzip.compress(
            "".join(json.dumps({"text": t}) + "\n" for t in texts).encode(), compresslevel=1))
        peaks["parquet", scale] = peak_while_reading(tmp_path / f"{scale}.parquet", "parquet", pa.total_allocated_bytes)
        peaks["arrow", scale] = peak_while_reading(tmp_path / f"{scale}.arrow", "arrow", pa.total_allocated_bytes)
        for fmt, name in (("jsonl", f"{scale}.jsonl.gz"), ("arrow one batch", f"{scale}.one_batch.arrow")):
            tracemalloc.start()  # Python's memory: the strings made from the records
            peak_while_reading(tmp_path / name, fmt.split()[0], lambda: 0)
            peaks[fmt, scale] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    for fmt in ("parquet", "arrow", "jsonl", "arrow one batch"):
        assert 0 < peaks[fmt, 40] < 1.5 * peaks[fmt, 4] and peaks[fmt, 40] < sizes[40] / 4, (fmt, peaks)


def test_a_long_record_is_kept_up_to_the_record_bound(tmp_path, monkeypatch):
    """A JSON line is a whole document, so it may pass the 1 MiB line bound of text; past MAX_RECORD_BYTES it
    is skipped and counted, and reading goes on at the next line."""
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 3 * MAX_LINE_BYTES)
    paragraph = "word " * (MAX_LINE_BYTES // 10)
    long_doc = "\n".join([paragraph] * 5)  # 2.5 MiB, paragraphs of 0.5 MiB
    path = tmp_path / "pile.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in [long_doc, long_doc + long_doc, "after."]) + "\n")
    tally = Tally()
    assert list(records.record_documents(path, "jsonl", "text", tally)) == [long_doc, "after."]
    assert tally.examples == {f"JSON lines over {3 * MAX_LINE_BYTES:,} bytes skipped": f"{path}:2"}


def test_text_field_option_is_recorded_in_the_manifest(tmp_path, vocab):
    source = tmp_path / "in"
    source.mkdir()
    texts = [f"Document {i} starts here.\nIt has a second paragraph, number {i}." for i in range(6)]
    rows = "".join(json.dumps({"text": t, "content": t.upper()}) + "\n" for t in texts)
    (source / "a.jsonl").write_text(rows)
    assert cli_here("prepare", "--input_file", str(source), "--vocab_file", vocab, "--output_dir", str(tmp_path / "o"),
                    "--no_progress", "--workers", "1", "--text_field", "content").returncode == 0
    manifest = json.loads((tmp_path / "o" / "prepare_manifest.json").read_text())
    assert manifest["text_field"] == "content"
    again = cli_here("prepare", "--input_file", str(source), "--vocab_file", vocab, "--output_dir", str(tmp_path / "o"),
                     "--no_progress", "--workers", "1")
    assert again.returncode == 2 and "text_field: 'content' then, None now" in again.stderr, again.stderr
    assert cli_here("prepare", "--input_file", str(source), "--vocab_file", vocab, "--output_dir", str(tmp_path / "p"),
                    "--text_field", "").returncode == 2


def test_the_reference_method_refuses_records_rather_than_read_json_as_sentences(tmp_path, vocab):
    path = write_records(["A sentence.\nAnother one."] * 3, tmp_path / "c4-train.00000-of-01024.json.gz")
    result = cli_here("prepare", "--method", "reference", "--input_file", str(path), "--vocab_file", vocab,
                      "--output_dir", str(tmp_path / "out"), "--no_progress", "--workers", "1")
    assert result.returncode == 2
    assert f"{path}: is JSON Lines, not text; --method reference reads text files" in result.stderr, result.stderr


def test_a_vocab_is_trained_on_the_records_text(tmp_path):
    """--vocab_size reads records as the shards do: the text field only, not the other fields' values."""
    texts = [f"Zebras graze on the savanna {i}.\nThe herd moves north at dawn." for i in range(40)]
    rows = "".join(json.dumps({"text": t, "url": "https://quokka.example"}) + "\n" for t in texts)
    (tmp_path / "a.jsonl").write_text(rows)
    summary = run(PrepareOptions(input_files=str(tmp_path / "a.jsonl"), vocab_size=200, output_dir=str(tmp_path / "o"),
                                 **{**SMALL, "num_shards": 1}))
    tokens = set((tmp_path / "o" / "vocab.txt").read_text().split())
    assert summary.instances > 0 and {"zebras", "herd"} <= tokens and "quokka" not in tokens


def test_a_forced_format_is_checked_against_the_file(tmp_path, vocab):
    (tmp_path / "notes.txt").write_text("Plain text.\nNot Parquet.\n")
    result = cli_here("prepare", "--input_file", str(tmp_path / "notes.txt"), "--input_format", "parquet",
                      "--vocab_file", vocab, "--output_dir", str(tmp_path / "out"), "--no_progress")
    assert result.returncode == 2 and "notes.txt: not a Parquet file" in result.stderr, result.stderr


@pytest.mark.parametrize("kind", ["large_string", "dictionary", "string_view"])
def test_every_arrow_string_type_is_text(tmp_path, kind):
    """Writers store text as string, large_string (HF datasets for big columns), dictionary-encoded or as
    string_view (pyarrow 16+): all are read as the same documents."""
    if kind == "string_view" and not hasattr(pa, "string_view"):
        pytest.skip("this pyarrow has no string_view")
    texts = ["First document.", "Second one.\nWith two paragraphs.", "First document."]
    column = {"large_string": lambda: pa.array(texts, pa.large_string()),
              "dictionary": lambda: pa.array(texts).dictionary_encode(),
              "string_view": lambda: pa.array(texts, pa.string_view())}[kind]()
    table = pa.table({"text": column})
    with pa.OSFile(str(tmp_path / "t.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    assert list(records.record_documents(tmp_path / "t.arrow", "arrow", "text", Tally())) == texts
