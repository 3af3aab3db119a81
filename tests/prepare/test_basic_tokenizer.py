"""The exact tokenizer path (WordPieceTokenizer(exact=True), prepare/basic_tokenizer.py for non-ASCII text)
against the transcription of the reference FullTokenizer: on the characters where HF's normalizer
differs, on every code point where anything is assigned, and on every line of real text."""

import pytest
from conftest import load_reference_peer, write_wiki_sentences

from bert_pretrain.prepare.basic_tokenizer import basic_words
from bert_pretrain.prepare.tokenization import WordPieceTokenizer

# Characters where HF's BertNormalizer and the reference could part: private-use and unassigned code
# points (HF drops them), line and paragraph separators, controls, format characters, a word-final
# sigma, accents, compatibility ligatures, dotted capital I, CJK, wide spaces, a BOM, U+FFFD, NUL.
TRICKY = ["\ue000", "\uf8ff", "\U000f0000", "\U0010fffd", "\u0378", "\U000e0001", "\u2028", "\u2029", "\x0b", "\x0c",
          "\x1c", "\x85", "\xad", "\u200b", "\u200d", "\u180e", "\ufeff", "\ufffd", "\x00", "\u0301", "\u3000", "\xa0",
          "\u1680", "\u202f", "\t", "\r", "ΟΔΟΣ", "ς", "ﬁ", "İ", "ǅ", "ß", "力", "𠀀", "ᴵᴺᵀ", "¿", "№", "€", "¨"]


@pytest.fixture(scope="module")
def peer():
    return load_reference_peer()


@pytest.fixture(scope="module")
def vocab_file(shared_data_module):
    return shared_data_module / "vocab" / "bert-uncased-vocab.txt"


@pytest.fixture(scope="module")
def shared_data_module():
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def ids_of(tokenizer, lines):
    ids, lengths = tokenizer.encode_sentences(lines)
    out, at = [], 0
    for n in lengths.tolist():
        out.append(ids[at:at + n].tolist())
        at += n
    return out


def reference_ids(reference, lines):
    return [[reference.vocab[t] for t in reference.tokenize(line)] for line in lines]


def contexts(char):
    return [char, f"a{char}b", f"A{char}B", f"x {char} y", f"{char}word{char}", f"ΚΑΛΟΣ{char}", f"Hello, {char}!"]


@pytest.mark.parametrize("lower_case", [True, False])
def test_the_characters_hf_tokenizes_otherwise_give_the_reference_s_ids(peer, vocab_file, lower_case):
    reference = peer.FullTokenizer(vocab_file, lower_case)
    exact = WordPieceTokenizer.from_vocab_file(vocab_file, lower_case, exact=True)
    hf = WordPieceTokenizer.from_vocab_file(vocab_file, lower_case)
    lines = [line for char in TRICKY for line in contexts(char)]
    expected = reference_ids(reference, lines)
    assert ids_of(exact, lines) == expected
    differs = [line for line, got, want in zip(lines, ids_of(hf, lines), expected) if got != want]
    assert any("\ue000" in line for line in differs) and any("\U0010fffd" in line for line in differs), differs


def test_basic_words_are_the_reference_basic_tokenizer_s(peer, vocab_file):
    for lower_case in (True, False):
        reference = peer.FullTokenizer(vocab_file, lower_case)
        for char in TRICKY:
            for text in contexts(char):
                assert basic_words(text, lower_case) == reference.basic(text), (text, lower_case)


def code_point_lines(first: int, end: int, stride=lambda c: 1) -> list[str]:
    """The code points of [first, end) but surrogates (every one, or every `stride(c)`-th where that is more
    than 1), 64 to a line, each inside a word with capitals."""
    chars, c = [], first
    while c < end:
        if not 0xD800 <= c <= 0xDFFF:
            chars.append(chr(c))
        c += stride(c)
    return [" ".join(f"A{c}b" for c in chars[i:i + 64]) for i in range(0, len(chars), 64)]


@pytest.mark.parametrize("lower_case", [True, False])
def test_every_basic_multilingual_plane_code_point(peer, vocab_file, lower_case):
    lines = code_point_lines(0, 0x10000)
    exact = WordPieceTokenizer.from_vocab_file(vocab_file, lower_case, exact=True)
    assert ids_of(exact, lines) == reference_ids(peer.FullTokenizer(vocab_file, lower_case), lines)


@pytest.mark.slow
@pytest.mark.parametrize("lower_case", [True, False])
def test_the_other_planes_whole_where_anything_is_assigned(peer, vocab_file, lower_case):
    """Planes 1-3 and 14 whole; planes 4-13 (nothing assigned) and 15-16 (private use only), 786,432 code
    points of two categories, every 61st."""
    lines = code_point_lines(0x10000, 0x110000, stride=lambda c: 61 if 0x40000 <= c < 0xE0000 or c >= 0xF0000 else 1)
    exact = WordPieceTokenizer.from_vocab_file(vocab_file, lower_case, exact=True)
    assert ids_of(exact, lines) == reference_ids(peer.FullTokenizer(vocab_file, lower_case), lines)


@pytest.mark.slow
@pytest.mark.parametrize("lower_case", [True, False])
def test_every_line_of_the_mlperf_wikipedia_sample(peer, vocab_file, shared_data_module, tmp_path, lower_case):
    text = write_wiki_sentences(shared_data_module, tmp_path / "wiki.txt")
    lines = [line.strip() for line in text.read_text(encoding="utf-8").split("\n") if line.strip()]
    if not lower_case:  # MLPerf's text is uncased: every line there; every 4th for the cased path
        lines = lines[::4]
    exact = WordPieceTokenizer.from_vocab_file(vocab_file, lower_case, exact=True)
    assert ids_of(exact, lines) == reference_ids(peer.FullTokenizer(vocab_file, lower_case), lines)
