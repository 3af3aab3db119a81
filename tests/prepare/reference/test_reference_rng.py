"""ReferenceRandom against CPython's random.Random itself: the same values for any sequence of calls,
and the reference's masking and truncation draws as the reference script makes them."""

import random

import numpy as np
import pytest

from bert_pretrain.prepare.reference.instances import truncate_seq_pair
from bert_pretrain.prepare.reference.rng import KEEP_DRAW, MASK_DRAW, ReferenceRandom


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**40 + 7])
def test_any_sequence_of_calls_gives_random_random_s_values(seed):
    theirs, ours = random.Random(seed), ReferenceRandom(seed)
    plan = np.random.default_rng(seed)
    for step in range(4000):
        kind = plan.integers(4)
        if kind == 0:
            assert ours.random() == theirs.random(), step
        elif kind == 1:  # bounds of every bit length up to 32, including 1 (which still draws)
            low = int(plan.integers(-5, 5))
            high = low + int(plan.integers(0, 1 << int(plan.integers(0, 32))))
            assert ours.randint(low, high) == theirs.randint(low, high), step
        else:  # shuffles up to the reference's candidate lists, and past a word chunk
            size = int(plan.integers(0, 600)) if kind == 2 else int(plan.integers(0, 4))
            mine, reference = list(range(size)), list(range(size))
            ours.shuffle(mine)
            theirs.shuffle(reference)
            assert mine == reference, step
    assert ours.random() == theirs.random()


def test_large_shuffles_and_the_extreme_bound():
    theirs, ours = random.Random(7), ReferenceRandom(7)
    for size in (70_000, 200_001):  # more words than one chunk
        mine, reference = list(range(size)), list(range(size))
        ours.shuffle(mine)
        theirs.shuffle(reference)
        assert mine == reference
    assert [ours.randint(0, 2**32 - 2) for _ in range(50)] == [theirs.randint(0, 2**32 - 2) for _ in range(50)]
    with pytest.raises(ValueError, match="32 bits"):  # a bound of 2**32 takes 33 bits: never drawn by the reference
        ours.randint(0, 2**32 - 1)


def reference_mask_draws(rng: random.Random, count: int, vocab_size: int) -> list[int]:
    """create_masked_lm_predictions' draws per masked position, as the script makes them."""
    draws = []
    for _ in range(count):
        if rng.random() < 0.8:
            draws.append(MASK_DRAW)
        elif rng.random() < 0.5:
            draws.append(KEEP_DRAW)
        else:
            draws.append(rng.randint(0, vocab_size - 1))
    return draws


@pytest.mark.parametrize("vocab_size", [30522, 1018, 2, 1])
def test_mask_draws_are_the_reference_s(vocab_size):
    theirs, ours = random.Random(3), ReferenceRandom(3)
    for count in list(range(80)) * 30:
        assert ours.mask_draws(count, vocab_size) == reference_mask_draws(theirs, count, vocab_size)
    assert ours.random() == theirs.random()
    made = ours.mask_draws(20_000, vocab_size)
    assert {MASK_DRAW, KEEP_DRAW} <= set(made) and max(made) < vocab_size


def reference_truncation(a_length, b_length, max_num_tokens, rng):
    """truncate_seq_pair on lists, as the script runs it; returns (A's cut front, A, B's cut front, B)."""
    a, b = list(range(a_length)), list(range(b_length))
    while len(a) + len(b) > max_num_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()
    return (a[0] if a else 0), len(a), (b[0] if b else 0), len(b)


@pytest.mark.parametrize("a_length,b_length", [(1, 1), (300, 5), (5, 300), (260, 260), (400, 401), (1, 1000), (509, 1)])
@pytest.mark.parametrize("max_num_tokens", [2, 125, 509])
def test_truncation_draws_and_cuts_as_the_reference_loop(a_length, b_length, max_num_tokens):
    if a_length + b_length < 2:
        return
    theirs, ours = random.Random(a_length * 1000 + b_length), ReferenceRandom(a_length * 1000 + b_length)
    for _ in range(20):
        assert truncate_seq_pair(a_length, b_length, max_num_tokens, ours) == reference_truncation(
            a_length, b_length, max_num_tokens, theirs)
        assert ours.random() == theirs.random()  # the same number of draws


def test_a_run_past_the_words_at_hand_is_redone_with_more(monkeypatch):
    """Rejections could in principle outrun the words made ahead: the draw is then redone, the same."""
    from bert_pretrain.prepare.reference import rng as reference_random

    real = reference_random.ReferenceRandom._have
    monkeypatch.setattr(reference_random, "_CHUNK", 1)  # words are made only as asked
    for draw in ("shuffle", "mask_draws"):
        stingy = iter([True, True])  # the first two asks get 40 words only
        monkeypatch.setattr(reference_random.ReferenceRandom, "_have",
                            lambda self, count: real(self, min(count, 40) if next(stingy, False) else count))
        theirs, ours = random.Random(11), ReferenceRandom(11)
        if draw == "shuffle":
            mine, reference = list(range(300)), list(range(300))
            ours.shuffle(mine)
            theirs.shuffle(reference)
            assert mine == reference
        else:
            assert ours.mask_draws(76, 30522) == reference_mask_draws(theirs, 76, 30522)
        assert next(stingy, None) is None  # both short runs were redone
        assert ours.random() == theirs.random()
