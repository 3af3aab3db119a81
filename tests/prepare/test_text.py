"""Finding and reading input files, cutting them into documents and sentences (real MLPerf wiki text)."""

import bz2
import gzip
import re

import pytest

from bert_pretrain.errors import InputError
from bert_pretrain.prepare import text
from bert_pretrain.prepare.text import (
    MAX_LINE_BYTES,
    Tally,
    clean_wiki_leftovers,
    detect_format,
    document_sentences,
    find_input_files,
    read_lines,
    split_sentences,
    text_documents,
    wikiextractor_documents,
)


def test_find_input_files_takes_files_folders_and_globs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "deep").mkdir()
    for name in ("a/one.txt", "a/deep/two.txt", "a/.hidden", "b.txt", "c.txt"):
        (tmp_path / name).write_text("x\n")
    found = find_input_files([str(tmp_path / "a"), str(tmp_path / "*.txt"), str(tmp_path / "b.txt")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/deep/two.txt", "a/one.txt", "b.txt", "c.txt"]
    with pytest.raises(InputError, match="no such file or folder"):
        find_input_files([str(tmp_path / "missing.txt")])
    with pytest.raises(InputError, match="matches no file"):
        find_input_files([str(tmp_path / "*.xml")])


def test_detect_format(tmp_path, shared_data):
    assert detect_format(next((shared_data / "wikidump").glob("*.bz2"))) == "wikidump"
    assert detect_format(shared_data / "corpus" / "mlperf_wiki_sample" / "wiki_00") == "wikiextractor"
    assert detect_format(shared_data / "google_bert" / "sample_text.txt") == "text"
    gz = tmp_path / "t.txt.gz"
    gz.write_bytes(gzip.compress(b'\n<doc id="1" title="T">\nT\nBody.\n</doc>\n'))
    assert detect_format(gz) == "wikiextractor"
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    with pytest.raises(InputError, match=r"image\.png: holds NUL bytes"):
        detect_format(binary)


def test_bad_bytes_long_lines_and_empty_files_are_counted(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"good line\nbad \xff\xfe bytes\n" + b"x" * (10 * 1024 * 1024) + b"\nafter\n")
    tally = Tally()
    assert list(read_lines(path, tally)) == ["good line", "bad \ufffd\ufffd bytes", "after"]
    assert tally.counts == {"lines with bytes that are not UTF-8 (those bytes dropped)": 1,
                            f"lines over {MAX_LINE_BYTES:,} bytes skipped": 1}
    assert tally.examples[f"lines over {MAX_LINE_BYTES:,} bytes skipped"] == f"{path}:3"
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert list(text_documents(empty, tally)) == []
    assert tally.counts["empty input files"] == 1


def test_truncated_bz2_is_an_error_naming_the_file(tmp_path):
    data = bz2.compress(b"one sentence.\n" * 20000)
    path = tmp_path / "cut.txt.bz2"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.txt\.bz2: the compressed file ends early"):
        list(read_lines(path, Tally()))


def test_text_documents_follow_the_google_format(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("First doc, one.\nFirst doc, two.\n\n\n  \nSecond doc.\n\nThird doc.")
    docs = list(text_documents(path, Tally()))
    assert docs == ["First doc, one.\nFirst doc, two.", "Second doc.", "Third doc."]
    assert document_sentences("text", docs[0]) == ["First doc, one.", "First doc, two."]


def test_long_documents_are_cut(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "MAX_DOCUMENT_CHARS", 100)
    path = tmp_path / "t.txt"
    path.write_text("".join(f"sentence number {i}.\n" for i in range(20)))
    tally = Tally()
    docs = list(text_documents(path, tally))
    assert len(docs) > 3 and all(len(d) <= 120 for d in docs)
    assert "\n".join(docs).split("\n") == [f"sentence number {i}." for i in range(20)]
    assert sum(tally.counts.values()) == len(docs) - 1


def test_wikiextractor_sample_documents(shared_data):
    tally = Tally()
    folder = shared_data / "corpus" / "mlperf_wiki_sample"
    docs = [d for path in sorted(folder.iterdir()) for d in wikiextractor_documents(path, tally)]
    # 153 <doc> blocks; one ("List of anthropologists") holds only its title
    assert len(docs) == 152
    assert tally.counts == {"<doc> blocks with no text but the title dropped": 1}
    assert docs[0].startswith("Anarchism is an anti-authoritarian political and social philosophy")
    assert not any(line.startswith("<doc") or line == "Anarchism" for line in docs[0].split("\n"))


def test_sentence_splitting_on_the_real_wiki_sample(shared_data):
    body = next(wikiextractor_documents(shared_data / "corpus" / "mlperf_wiki_sample" / "wiki_00", Tally()))
    sentences = document_sentences("wikiextractor", body)
    assert sentences[:3] == [
        "Anarchism is an anti-authoritarian political and social philosophy that rejects hierarchy as unjust and "
        "advocates its replacement with self-managed, self-governed societies based on voluntary, cooperative "
        "institutions.",
        "These institutions are often described as stateless societies, although several authors have defined them "
        "more specifically as distinct institutions based on non-hierarchical or free associations.",
        "Anarchism's central disagreement with other ideologies is that it holds the state to be undesirable, "
        "unnecessary, and harmful.",
    ]
    # no text is lost or reordered, only cut at sentence ends
    assert re.sub(r"\s", "", "".join(sentences)) == re.sub(r"\s", "", body)
    assert all("\n" not in s and s == s.strip() for s in sentences)
    words = [len(s.split()) for s in sentences]
    assert len(sentences) > 150 and 15 < sum(words) / len(words) < 35
    assert split_sentences("Dr. Smith went to Washington. He arrived at 5 p.m. on Monday.\nNew paragraph") == [
        "Dr. Smith went to Washington.", "He arrived at 5 p.m. on Monday.", "New paragraph"]


def test_wiki_leftovers_are_cleaned_as_mlperf_does():
    raw = ('See [[Category:Things]][[File:x.jpg|thumb|a cap]] the [[Albedo|reflectivity]] of [[Earth]]'
           '<ref name="a">Cited.</ref><ref name="b"/> today<br/>.')
    assert clean_wiki_leftovers(raw) == "See  the reflectivity of Earth today."


def test_special_files_are_named_for_what_they_are(tmp_path):
    import os
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"--input_file .*pipe: is a named pipe \(FIFO\), not a regular file"):
        find_input_files([str(fifo)])
    with pytest.raises(InputError, match=r"--input_file /dev/zero: is a character device, not a regular file"):
        find_input_files(["/dev/zero"])


def test_binary_without_nul_is_refused_and_latin1_text_is_not(tmp_path):
    import random
    noise = tmp_path / "noise.txt"
    noise.write_bytes(bytes(b for b in random.Random(0).randbytes(100_000) if b))  # no NUL byte at all
    with pytest.raises(InputError, match=r"noise\.txt: has \d+% bytes that are not UTF-8 or are control characters"):
        detect_format(noise)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9 of the d\u00e9j\u00e0 vu.\n".encode("latin-1") * 2000)
    assert detect_format(latin1) == "text"  # a few bad bytes per line: read, the bytes dropped and counted
