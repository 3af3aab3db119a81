"""CPython's `random.Random(seed)` stream, drawn from its 32-bit words in bulk.

`ReferenceRandom(seed)`'s `random()`, `randint(a, b)` and `shuffle(x)` return what `random.Random(seed)`'s
do, in any sequence of calls, because they consume the generator's 32-bit Mersenne Twister outputs
the way CPython does (its C code and random.py, the same since Python 3.2):
- `random()` takes two words a, b: ((a >> 5) * 2**26 + (b >> 6)) / 2**53;
- below(n), behind `randint(a, b)` = a + below(b - a + 1) and the shuffle, takes words w until
  w >> (32 - k) < n, k being n's bit length (rejection sampling), and returns that value;
- `shuffle(x)` swaps x[i] with x[below(i + 1)] for i from len(x) - 1 down to 1.
The words come from `random.Random(seed).getrandbits(32 * count)`, which holds the next `count`
outputs, the first in the lowest bits. Drawing them in Python loops without a call per draw is
what makes the reference's per-instance shuffle and masking draws about twice as fast here as
`random.Random`'s own methods; `mask_draws` and `half_coins` are the reference's masking and
truncation draws, inlined.
"""

from __future__ import annotations

import random

import numpy as np

_CHUNK = 1 << 16  # words made at once
_TWO_POW_26, _INVERSE_TWO_POW_53 = 67108864.0, 1.0 / 9007199254740992.0
_HALF = 1 << 31  # random() < 0.5 iff the first of its two words is below 2**31
MASK_DRAW, KEEP_DRAW = -1, -2  # what mask_draws() returns for [MASK] and for 'keep the token'


class ReferenceRandom:
    def __init__(self, seed: int):
        self._source = random.Random(seed)
        self._words: list[int] = []  # made and not yet all consumed; the next one is self._words[self._at]
        self._at = 0

    def _have(self, count: int) -> None:
        """At least `count` words from self._at on."""
        if self._at + count > len(self._words):
            made = max(count, _CHUNK)
            fresh = np.frombuffer(self._source.getrandbits(32 * made).to_bytes(4 * made, "little"), "<u4")
            self._words = self._words[self._at:] + fresh.tolist()
            self._at = 0

    def random(self) -> float:
        self._have(2)
        at = self._at
        self._at = at + 2
        return ((self._words[at] >> 5) * _TWO_POW_26 + (self._words[at + 1] >> 6)) * _INVERSE_TWO_POW_53

    def randint(self, a: int, b: int) -> int:
        return a + self._below(b - a + 1)

    def _below(self, n: int) -> int:
        shift = 32 - n.bit_length()
        if shift < 0:
            raise ValueError(f"draws below {n} (more than 32 bits) are not implemented")
        while True:
            self._have(1)
            value = self._words[self._at] >> shift
            self._at += 1
            if value < n:
                return value

    def shuffle(self, x: list) -> None:
        """random.Random.shuffle(x)."""
        self._have(3 * len(x) + 1024)  # rejections are fewer than one per draw but for rare runs
        before, start = list(x), self._at
        try:
            self._at = _shuffle(x, self._words, self._at)
        except IndexError:  # such a run: redo it with more words
            x[:] = before
            self._at = start
            self._have(len(self._words) - start + _CHUNK)
            self.shuffle(x)

    def half_coins(self, count: int) -> list[bool]:
        """`random() < 0.5` for `count` draws in a row."""
        self._have(2 * count)
        words, at = self._words, self._at
        self._at = at + 2 * count
        return [words[i] < _HALF for i in range(at, at + 2 * count, 2)]

    def mask_draws(self, count: int, vocab_size: int) -> list[int]:
        """create_masked_lm_predictions' draws for `count` masked positions, each: `random() < 0.8` ->
        MASK_DRAW, else `random() < 0.5` -> KEEP_DRAW, else `randint(0, vocab_size - 1)` (the id)."""
        self._have(5 * count + 1024)  # at most 4 words and a few rejections per position but for rare runs
        start = self._at
        try:
            draws, self._at = _mask_draws(count, vocab_size, self._words, start)
        except IndexError:  # such a run: redo it with more words
            self._have(len(self._words) - start + _CHUNK)
            return self.mask_draws(count, vocab_size)
        return draws


def _mask_draws(count: int, vocab_size: int, words: list[int], at: int) -> tuple[list[int], int]:
    draws, shift = [], 32 - vocab_size.bit_length()
    for _ in range(count):
        if ((words[at] >> 5) * _TWO_POW_26 + (words[at + 1] >> 6)) * _INVERSE_TWO_POW_53 < 0.8:
            draws.append(MASK_DRAW)
            at += 2
        elif words[at + 2] < _HALF:
            draws.append(KEEP_DRAW)
            at += 4
        else:
            value = words[at + 4] >> shift
            at += 5
            while value >= vocab_size:
                value = words[at] >> shift
                at += 1
            draws.append(value)
    return draws, at


def _shuffle(x: list, words: list[int], at: int) -> int:
    """Shuffle x in place from words[at:] as random.Random.shuffle does; returns the next word's index."""
    i = len(x) - 1
    if i < 1:
        return at
    bits = (i + 1).bit_length()
    shift, low = 32 - bits, 1 << (bits - 1)  # below(i + 1) uses the top `bits` bits while i + 1 >= low
    while i > 0:
        for i in range(i, low - 2, -1):  # one bit length: bounds low .. i + 1
            value = words[at] >> shift
            at += 1
            while value > i:
                value = words[at] >> shift
                at += 1
            x[i], x[value] = x[value], x[i]
        i, shift, low = low - 2, shift + 1, low >> 1
    return at
