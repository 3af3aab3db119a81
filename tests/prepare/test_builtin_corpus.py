"""The embedded corpus: real prose from the Python installation, in WikiExtractor layout, reproducible."""

import re

import pytest

from bert_pretrain.prepare.builtin_corpus import write_builtin_corpus


@pytest.mark.slow
def test_corpus_is_prose_documents_and_reproducible(tmp_path):
    stats = write_builtin_corpus(tmp_path / "a.txt")
    assert stats.documents > 300 and stats.words > 100_000
    text = (tmp_path / "a.txt").read_text()
    docs = re.findall(r'<doc id="\d+" url="[^"]*" title="([^"]*)">\n(.*?)\n</doc>\n', text, re.S)
    assert len(docs) == stats.documents
    assert any(title == "json.decoder" for title, _ in docs)
    for title, body in docs[:50]:
        lines = body.split("\n")
        assert lines[0] == title and lines[1] == ""  # title line then paragraphs, as WikiExtractor writes
        assert all(len(p.split()) >= 8 and ">>>" not in p[:4] for p in lines[2:])
    write_builtin_corpus(tmp_path / "b.txt")
    assert (tmp_path / "b.txt").read_bytes() == (tmp_path / "a.txt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
