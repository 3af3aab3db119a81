"""The reference BasicTokenizer's words for any text, with Python's own Unicode database.

google-research/NVIDIA `tokenization.py` cuts text into words before WordPiece: characters that are
NUL, U+FFFD or of category Cc/Cf (other than tab, newline, carriage return) are dropped; those and
U+0020 and category Zs become spaces; CJK ideographs get a space on each side; the text is split at
Python whitespace (`str.split()`, which also splits at U+2028, U+2029, ...); when uncased each word is
`str.lower()`-ed (so a word-final capital sigma becomes ς), put in NFD and loses its Mn marks; then
every punctuation character (ASCII non-alphanumeric, or a category starting with P) is a word of its
own.

HF's BertNormalizer does almost the same in Rust with its own Unicode tables, and differs on rare
characters (private-use and unassigned code points, which it drops). `WordPieceTokenizer(exact=True)`
therefore sends every non-ASCII piece of text here, so its words are the reference's by construction
on whatever this Python's `unicodedata` says; ASCII text has exact rules of its own there.
"""

from __future__ import annotations

import unicodedata

_KEPT_CONTROLS = frozenset("\t\n\r")  # category Cc, yet the reference reads them as spaces


def _is_space(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_dropped(char: str) -> bool:
    if char in ("\x00", "\ufffd"):
        return True
    return char not in _KEPT_CONTROLS and unicodedata.category(char) in ("Cc", "Cf")


def _is_cjk(code: int) -> bool:
    """The CJK Unified Ideographs blocks (and compatibility ideographs) the reference spaces out."""
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF
            or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F)


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True  # every ASCII symbol, including ^ $ ` which Unicode does not call punctuation
    return unicodedata.category(char).startswith("P")


def _cleaned(text: str) -> str:
    out = []
    for char in text:
        if _is_dropped(char):
            continue
        if _is_space(char):
            out.append(" ")
        elif _is_cjk(ord(char)):
            out.append(f" {char} ")
        else:
            out.append(char)
    return "".join(out)


def _without_marks(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


def _split_punctuation(word: str) -> list[str]:
    pieces, current = [], []
    for char in word:
        if _is_punctuation(char):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(char)
        else:
            current.append(char)
    if current:
        pieces.append("".join(current))
    return pieces


def basic_words(text: str, lower_case: bool) -> list[str]:
    """The words the reference BasicTokenizer makes of `text` (before WordPiece)."""
    words = []
    for word in _cleaned(text).split():
        if lower_case:
            word = _without_marks(word.lower())
        words.extend(_split_punctuation(word))
    return " ".join(words).split()  # as the reference: a word emptied by the marks' removal is gone
