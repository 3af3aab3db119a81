"""BERT WordPiece tokenization with HF `tokenizers`, equal to google-research/bert's FullTokenizer.

The reference tokenizer is BasicTokenizer (clean control characters, whitespace split, lower-case and
strip accents when uncased, split punctuation, space out CJK characters) then greedy longest-match
WordPiece with `##` continuations and `[UNK]` for words over 200 characters. HF's BertNormalizer +
BertPreTokenizer + WordPiece(max_input_chars_per_word=200) do the same; the tests check it on the
reference's own test cases.

Speed: HF spends most of its time per call, not per token. `encode_sentences` therefore memoizes
token ids per word. ASCII text is normalized and cut into BERT words in Python (the ASCII rules are
exact and short: see `_ASCII_CLEAN` and `_ASCII_WORD`), leaving only WordPiece to HF; other text is
cut at spaces (a space is a word boundary in every step above, so a sentence's tokens are the
concatenation of its pieces' tokens) and each new piece goes through HF's whole pipeline. Tests
check the result equals HF's whole pipeline on real Wikipedia text, cased and uncased.

Known differences of HF's normalizer from the reference, on characters English text rarely holds
(checked with tokenizers 0.23): private-use and unassigned code points are dropped (the reference
keeps them). With `exact=True` (prepare's reference method) non-ASCII pieces are cut into words by
`prepare/basic_tokenizer.py` (the reference's rules, with Python's unicodedata), so the ids equal the
reference FullTokenizer's on every line; only WordPiece is left to HF.
"""

from __future__ import annotations

import re
from itertools import chain
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from bert_pretrain.data.vocab import SPECIAL_TOKENS, UNK, check_pretraining_vocab, read_vocab
from bert_pretrain.errors import InputError
from bert_pretrain.prepare.basic_tokenizer import basic_words

MAX_INPUT_CHARS_PER_WORD = 200  # the reference's WordpieceTokenizer default

# ASCII rules of the reference BasicTokenizer: control characters are dropped, \t \n \r are spaces,
# and every printable non-alphanumeric character is punctuation (a word of its own).
_ASCII_CLEAN = {c: None for c in (*range(0, 9), 11, 12, *range(14, 32), 127)} | {9: 32, 10: 32, 13: 32}
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ASCII_WORD = re.compile(r"[0-9A-Za-z]+|[^0-9A-Za-z ]")
_ASCII_CLEAN_BUT_NEWLINE = _ASCII_CLEAN | {10: 10}  # for sentences joined by newlines
_ASCII_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_END, _END_ID = "\n", -1  # the memo key after each sentence of a batch (no other key is a newline) and its id
_CACHE_LIMIT = 500_000  # memoized words before the memo starts over (bounds memory: ~80 MB)
_LONG_PIECE = 100  # words longer than this are not kept in the memo


def _hf_pipeline(model: models.Model, lower_case: bool) -> Tokenizer:
    tokenizer = Tokenizer(model)
    # strip_accents=None follows lowercase, as the reference strips accents only when uncased.
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lower_case)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


class WordPieceTokenizer:
    """Text -> BERT WordPiece ids. `tokens[i]` is the token of id i.

    Holds a memo of pieces it has seen (bounded), so it is stateful; results never depend on it.
    """

    def __init__(self, tokens: list[str], lower_case: bool = True, exact: bool = False):
        if UNK not in tokens:
            raise InputError(f"the vocab has no {UNK} token, which WordPiece needs for unknown words")
        self.tokens = list(tokens)
        self.lower_case = lower_case
        self.exact = exact  # non-ASCII text through the reference's own rules (basic_tokenizer.py), not HF's
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        model = models.WordPiece(self.ids, unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)
        self._hf = _hf_pipeline(model, lower_case)
        # A vocab entry that can be a word of text is its own WordPiece (the longest match is all of it):
        # the memo starts with them, so common words are never looked up one by one.
        self._whole_words = {t: (i,) for t, i in self.ids.items()
                             if len(t) <= MAX_INPUT_CHARS_PER_WORD and _ASCII_WORD.fullmatch(t)}
        self._memo: dict[str, tuple[int, ...]] = dict(self._whole_words)

    @classmethod
    def from_vocab_file(cls, path: str | Path, lower_case: bool = True, pretraining: bool = True,
                        exact: bool = False):
        tokens = read_vocab(path)
        if pretraining:
            check_pretraining_vocab(tokens, path)
        return cls(tokens, lower_case, exact)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def special_id(self, token: str) -> int:
        return self.ids[token]

    def tokenize(self, text: str) -> list[str]:
        """The reference FullTokenizer.tokenize: WordPiece strings, no [CLS]/[SEP]."""
        return self._hf.encode(self._lower(text), add_special_tokens=False).tokens

    def basic_tokens(self, text: str) -> list[str]:
        """The reference BasicTokenizer output: normalized words before WordPiece."""
        normalized = self._hf.normalizer.normalize_str(self._lower(text))
        return [word for word, _ in self._hf.pre_tokenizer.pre_tokenize_str(normalized)]

    def wordpiece(self, word: str) -> list[str]:
        """The reference WordpieceTokenizer on one already-normalized word."""
        return [t.value for t in self._hf.model.tokenize(word)]

    def encode_sentences(self, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of many sentences at once: (ids (sum of lengths,) int32, lengths (S,) int64)."""
        keys = self._batch_keys(sentences)
        if len(self._memo) > _CACHE_LIMIT:
            self._memo = dict(self._whole_words)
        self._memo[_END] = (_END_ID,)
        new = set(keys).difference(self._memo)
        for key in new:
            self._memo[key] = self._encode_key(key)
        key_ids = list(map(self._memo.__getitem__, keys))
        for key in new:
            if len(key) > _LONG_PIECE:
                del self._memo[key]
        ids = np.fromiter(chain.from_iterable(key_ids), np.int32, sum(map(len, key_ids)))
        ends = np.flatnonzero(ids == _END_ID)
        return ids[ids != _END_ID], np.diff(ends, prepend=-1) - 1

    def _batch_keys(self, sentences: list[str]) -> list[str]:
        """The memo keys of every sentence, each sentence's followed by _END. Runs of ASCII sentences
        are normalized and cut in one pass over their text joined by newlines (each newline: an _END)."""
        keys: list[str] = []
        run: list[str] = []
        for sentence in sentences:
            if sentence.isascii():
                run.append(sentence)
                continue
            keys += self._ascii_run_keys(run)
            keys += self._keys(sentence)
            keys.append(_END)
            run = []
        return keys + self._ascii_run_keys(run)

    def _ascii_run_keys(self, run: list[str]) -> list[str]:
        if not run:
            return []
        text = "\n".join(run) + "\n"
        if text.count("\n") != len(run):  # a newline inside a sentence is a space there
            text = "\n".join(s.replace("\n", " ") for s in run) + "\n"
        if _ASCII_CONTROL_BUT_NEWLINE.search(text):  # rare: translate() with a dict is slow
            text = text.translate(_ASCII_CLEAN_BUT_NEWLINE)
        return _ASCII_WORD.findall(text.lower() if self.lower_case else text)

    def _keys(self, sentence: str) -> list[str]:
        """The sentence as memo keys: BERT words for ASCII text (split here, exactly), raw
        space-separated pieces for other text (split by HF)."""
        if sentence.isascii():
            return _ASCII_WORD.findall(self._ascii_normal(sentence))
        keys: list[str] = []
        for piece in sentence.split(" "):
            if piece.isascii():
                keys.extend(_ASCII_WORD.findall(self._ascii_normal(piece)))
            elif piece:
                keys.append(piece)
        return keys

    def _ascii_normal(self, text: str) -> str:
        """What the normalizer makes of ASCII text: control characters dropped, \\t \\n \\r as spaces,
        lower-cased when uncased."""
        if _ASCII_CONTROL.search(text):  # rare: translate() with a dict is slow
            text = text.translate(_ASCII_CLEAN)
        return text.lower() if self.lower_case else text

    def _encode_key(self, key: str) -> tuple[int, ...]:
        if key.isascii():  # a normalized BERT word: only WordPiece is left to do
            return tuple(t.id for t in self._hf.model.tokenize(key))
        if self.exact:
            return tuple(t.id for word in basic_words(key, self.lower_case) for t in self._hf.model.tokenize(word))
        return tuple(self._hf.encode(self._lower(key), add_special_tokens=False).ids)  # HF's whole pipeline

    def _lower(self, text: str) -> str:
        """HF's lower-casing is per character, where the reference's str.lower() writes a word-final
        capital sigma in its final form (ΟΔΟΣ -> οδος, not οδοσ): lower-case non-ASCII text here first,
        and HF's own lower-casing then leaves it as it is."""
        return text.lower() if self.lower_case and not text.isascii() else text


def train_vocab(texts: Iterable[str], vocab_size: int, lower_case: bool = True) -> list[str]:
    """A WordPiece vocab of (at most) `vocab_size` tokens learned from `texts`, [PAD] at id 0.

    HF's trainer breaks ties in hash order, so two trainings of the same text can differ: train once
    and reuse the written vocab.txt (prepare does).
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise InputError(f"--vocab_size must be more than {len(SPECIAL_TOKENS)}, got {vocab_size}")
    tokenizer = _hf_pipeline(models.WordPiece(unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD),
                             lower_case)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    vocab = tokenizer.get_vocab()
    return sorted(vocab, key=vocab.__getitem__)
