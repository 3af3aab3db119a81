"""Instances: the reference invariants on every row, provenance of every segment, masking rates, the
closed-form truncation against the reference's loop, and statistics against a literal transcription
of the reference algorithm (tests/oracles/reference_peer.py)."""

import random

import numpy as np
import pytest
from conftest import check_reference_invariants, load_reference_peer, restored_rows

from bert_pretrain.options.prepare import InstanceOptions
from bert_pretrain.prepare.instances import Documents, VocabIds, _truncate, create_instances, create_pairs

PAD, CLS, SEP, MASK = 0, 1, 2, 3
FIRST_WORD = 1000  # token ids are FIRST_WORD + position in the corpus: a run of a document is consecutive ids
OPTIONS = InstanceOptions(max_seq_length=64, max_predictions_per_seq=10, masked_lm_prob=0.15, short_seq_prob=0.1,
                          dupe_factor=3)


def corpus(rng: np.random.Generator, documents: int, max_sentences: int = 30, max_words: int = 25) -> Documents:
    parts, at = [], FIRST_WORD
    for _ in range(documents):
        lengths = rng.integers(1, max_words + 1, rng.integers(1, max_sentences + 1))
        parts.append((np.arange(at, at + lengths.sum(), dtype=np.int32), lengths))
        at += int(lengths.sum())
    return Documents.from_parts(parts)


def vocab_ids(size: int, continuation: np.ndarray | None = None) -> VocabIds:
    return VocabIds(CLS, SEP, MASK, size, np.zeros(size, bool) if continuation is None else continuation)


def document_of(docs: Documents, token: int) -> int:
    starts = docs.sentence_starts[docs.doc_starts[:-1]] + FIRST_WORD
    return int(np.searchsorted(starts, token, side="right") - 1)


def test_rows_hold_the_reference_invariants_and_segments_come_from_the_corpus():
    docs = corpus(np.random.default_rng(0), 40)
    vocab_size = FIRST_WORD + len(docs.tokens)
    arrays = create_instances(docs, OPTIONS, vocab_ids(vocab_size), np.random.default_rng(1))
    segments = check_reference_invariants(arrays, CLS, SEP, OPTIONS.masked_lm_prob, OPTIONS.max_predictions_per_seq)
    assert len(segments) > 300
    for (a, b), is_random in zip(segments, arrays["next_sentence_labels"]):
        for segment in (a, b):  # a contiguous run of one document's tokens
            assert (np.diff(segment) == 1).all() and document_of(docs, segment[0]) == document_of(docs, segment[-1])
        if is_random:
            assert document_of(docs, a[0]) != document_of(docs, b[0])
        else:
            assert document_of(docs, a[0]) == document_of(docs, b[0]) and b[0] > a[-1]
        assert len(a) + len(b) <= OPTIONS.max_seq_length - 3


def test_masking_is_80_10_10_and_nsp_near_half():
    docs = corpus(np.random.default_rng(2), 200, max_sentences=40)
    arrays = create_instances(docs, OPTIONS, vocab_ids(FIRST_WORD + len(docs.tokens)), np.random.default_rng(3))
    shown_as = {"mask": 0, "same": 0, "other": 0}
    for tokens, positions, shown in restored_rows(arrays):
        labels = tokens[positions]
        shown_as["mask"] += int((shown == MASK).sum())
        shown_as["same"] += int((shown == labels).sum())
        shown_as["other"] += int(((shown != MASK) & (shown != labels)).sum())
    total = sum(shown_as.values())
    assert total > 20000
    assert abs(shown_as["mask"] / total - 0.8) < 0.015
    assert abs(shown_as["same"] / total - 0.1) < 0.01 and abs(shown_as["other"] / total - 0.1) < 0.01
    assert 0.45 < arrays["next_sentence_labels"].mean() < 0.65  # 0.5, plus one-sentence chunks (always random)


@pytest.mark.parametrize("a_length, b_length", [(5, 3), (3, 5), (4, 4), (60, 1), (1, 60), (30, 31), (2, 2)])
def test_closed_form_truncation_matches_the_reference_loop(a_length, b_length):
    max_num_tokens = 4
    a, b = list(range(a_length)), list(range(100, 100 + b_length))
    while len(a) + len(b) > max_num_tokens:  # the reference's truncate_seq_pair, step by step
        longer = a if len(a) > len(b) else b
        longer.pop(0 if random.random() < 0.5 else -1)
    fronts = np.array([_truncate(a_length, b_length, max_num_tokens, random.Random(s)) for s in range(2000)])
    assert (fronts[:, 1] == len(a)).all() and (fronts[:, 3] == len(b)).all()
    for front, kept, total in ((fronts[:, 0], len(a), a_length), (fronts[:, 2], len(b), b_length)):
        cut = total - kept  # the front cut is Binomial(cut, 1/2), as `cut` independent coin flips give
        assert abs(front.mean() - cut / 2) < 0.1 + 0.1 * cut and front.max() <= cut


def reference_peer():
    """tests/oracles/reference_peer.py: the reference algorithm transcribed in plain Python (also the
    benchmark's peer)."""
    return load_reference_peer()


def test_statistics_match_the_reference_algorithm():
    docs = corpus(np.random.default_rng(4), 150, max_sentences=25)
    as_lists = [[docs.tokens[docs.sentence_starts[s]:docs.sentence_starts[s + 1]].tolist()
                 for s in range(docs.doc_starts[d], docs.doc_starts[d + 1])] for d in range(docs.num_documents)]
    ours, theirs, peer = [], [], reference_peer()
    for seed in range(6):
        pairs = create_pairs(docs, OPTIONS, random.Random(seed))
        ours.append(np.stack([pairs[:, 1] + pairs[:, 3] + 3, pairs[:, 4]], 1))
        instances = peer.reference_instances(as_lists, OPTIONS.max_seq_length, OPTIONS.max_predictions_per_seq,
                                             OPTIONS.masked_lm_prob, OPTIONS.short_seq_prob, OPTIONS.dupe_factor,
                                             list(range(100)), random.Random(seed))
        theirs.append(np.array([(len(tokens), is_random) for tokens, _, _, _, is_random in instances]))
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    assert abs(len(ours) / len(theirs) - 1) < 0.02
    assert abs(ours[:, 0].mean() - theirs[:, 0].mean()) < 0.5
    assert abs(ours[:, 1].mean() - theirs[:, 1].mean()) < 0.015
    assert abs(np.mean(ours[:, 0] < 20) - np.mean(theirs[:, 0] < 20)) < 0.01


def test_whole_word_masking_masks_whole_words():
    docs = corpus(np.random.default_rng(5), 60)
    vocab_size = FIRST_WORD + len(docs.tokens)
    continuation = np.zeros(vocab_size, bool)
    continuation[FIRST_WORD:] = np.random.default_rng(6).random(len(docs.tokens)) < 0.4  # 40% are '##' pieces
    options = InstanceOptions(**{**OPTIONS.__dict__, "whole_word_mask": True})
    arrays = create_instances(docs, options, vocab_ids(vocab_size, continuation), np.random.default_rng(7))
    for tokens, positions, _ in restored_rows(arrays):
        masked = np.zeros(len(tokens), bool)
        masked[positions] = True
        special = (tokens == CLS) | (tokens == SEP)
        for p in range(1, len(tokens)):  # a '##' piece is masked exactly when the token before it is
            if continuation[tokens[p]] and not special[p - 1] and not special[p]:
                assert masked[p] == masked[p - 1]
        assert 1 <= len(positions) <= min(options.max_predictions_per_seq, max(1, round(len(tokens) * 0.15)))


def test_same_rng_same_arrays():
    docs = corpus(np.random.default_rng(8), 20)
    vocab = vocab_ids(FIRST_WORD + len(docs.tokens))
    one, two = (create_instances(docs, OPTIONS, vocab, np.random.default_rng(9)) for _ in range(2))
    other = create_instances(docs, OPTIONS, vocab, np.random.default_rng(10))
    assert all(np.array_equal(one[k], two[k]) for k in one)
    assert not np.array_equal(one["input_ids"], other["input_ids"])
    first = create_instances(docs, OPTIONS, vocab, np.random.default_rng(9), limit=7)
    assert len(first["input_ids"]) == 7


def test_a_single_one_sentence_document_still_makes_pairs():
    docs = Documents.from_parts([(np.arange(FIRST_WORD, FIRST_WORD + 9, dtype=np.int32), np.array([9]))])
    arrays = create_instances(docs, OPTIONS, vocab_ids(FIRST_WORD + 9), np.random.default_rng(0))
    assert len(arrays["input_ids"]) == OPTIONS.dupe_factor and arrays["next_sentence_labels"].all()
    check_reference_invariants(arrays, CLS, SEP, 0.15, OPTIONS.max_predictions_per_seq)
