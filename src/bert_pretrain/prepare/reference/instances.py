"""Training instances exactly as the reference create_pretraining_data.py makes them from one file.

The reference draws everything from one `random.Random(random_seed)` in this order: the shuffle of
the documents; then, for each of `dupe_factor` passes over them and each document, the target length
(`random() < short_seq_prob`, then `randint(2, max_seq_length - 3)`), per pair the A/B split
(`randint`), the random-next coin (`random() < 0.5`, skipped for a one-sentence chunk), the random
document (`randint`, up to 10 tries to differ) and its first sentence (`randint`), one
`random() < 0.5` per token that truncate_seq_pair removes (front or back), and right after each pair
its masking: a shuffle of the positions other than [CLS]/[SEP], then per masked position
`random() < 0.8` ([MASK]), else `random() < 0.5` (kept), else `randint(0, vocab - 1)` (a random word
of the whole vocab list); last, a shuffle of all instances. Every draw depends only on lengths, so
token ids stand in for strings and the same draws are consumed here: `random.Random` itself (CPython's
Mersenne Twister, the same stream on every Python 3), through the pair structure shared with
prepare/instances.py. What is kept per instance is small (its four token offsets and its masked
positions and replacements); rows are built only when written, block by block, in the final order.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np

from bert_pretrain.options.prepare import InstanceOptions
from bert_pretrain.prepare.instances import Documents, VocabIds, document_pairs, pair_rows
from bert_pretrain.prepare.reference.rng import KEEP_DRAW, MASK_DRAW, ReferenceRandom


@dataclass
class ReferenceInstances:
    """The instances of one file: `pairs[c]` and masks `mask_starts[c]:mask_starts[c+1]` of the c-th
    instance created; `order[k]` is the creation index of the k-th instance written."""

    documents: Documents  # in the reference's shuffled order; the pairs' offsets point into its tokens
    pairs: np.ndarray  # (N, 5) int64: a_start, a_length, b_start, b_length, is_random_next
    mask_starts: np.ndarray  # (N + 1,) int64
    mask_chosen: np.ndarray  # (M,) int32: candidate indexes in the order the reference masks them
    mask_draws: np.ndarray  # (M,) int32: MASK_DRAW, KEEP_DRAW or the random token id
    order: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.order)


def create_reference_instances(docs: Documents, options: InstanceOptions, vocab_size: int,
                               seed: int) -> ReferenceInstances:
    """All instances of `docs` (one input file's documents, in file order), drawn as the reference does."""
    if options.whole_word_mask:
        raise ValueError("the reference script has no whole-word masking")
    rng = ReferenceRandom(seed)
    order = list(range(docs.num_documents))
    rng.shuffle(order)  # draws as rng.shuffle(all_documents): they depend on the length only
    docs = docs.reordered(order)
    masker = _Masker(options, vocab_size, rng)
    sentence_starts, doc_starts = docs.sentence_starts.tolist(), docs.doc_starts.tolist()
    for _ in range(options.dupe_factor):
        for d in range(docs.num_documents):
            document_pairs(d, sentence_starts, doc_starts, options, rng, masker, truncate_seq_pair)
    final = list(range(len(masker.pairs)))
    rng.shuffle(final)
    return ReferenceInstances(docs, np.array(masker.pairs, np.int64).reshape(-1, 5),
                              np.concatenate([[0], np.cumsum(masker.counts, dtype=np.int64)]),
                              np.frombuffer(masker.chosen, np.int32), np.frombuffer(masker.draws, np.int32),
                              np.array(final, np.int64))


def truncate_seq_pair(a_length: int, b_length: int, max_num_tokens: int, rng: ReferenceRandom
                      ) -> tuple[int, int, int, int]:
    """The reference's loop: while too long, the longer segment (B on a tie) loses its first token if
    `random() < 0.5`, else its last. Which segment loses each token follows from the lengths: the
    longer one until they are equal, then B and A in turn, B first. Returns (cut from A's front, A's
    length, cut from B's front, B's length)."""
    excess = a_length + b_length - max_num_tokens
    if excess <= 0:
        return 0, a_length, 0, b_length
    fronts = rng.half_coins(excess)
    gap = min(excess, abs(a_length - b_length))
    longer_fronts, b_fronts, a_fronts = sum(fronts[:gap]), sum(fronts[gap::2]), sum(fronts[gap + 1::2])
    cut_b, cut_a = (excess - gap + 1) // 2, (excess - gap) // 2
    if a_length > b_length:
        return a_fronts + longer_fronts, a_length - cut_a - gap, b_fronts, b_length - cut_b
    return a_fronts, a_length - cut_a, b_fronts + longer_fronts, b_length - cut_b - gap


class _Masker:
    """Called with each pair as it is made: records it and draws its masking (create_masked_lm_predictions).

    The reference shuffles the candidate positions (all but [CLS] and the two [SEP]s, ascending) and
    masks the first ones; the same draws shuffle the candidates' indexes 0 .. n - 1 here, and
    `reference_rows` turns the chosen indexes into positions (index i is position i + 1 in A, i + 2
    in B) and sorts them."""

    def __init__(self, options: InstanceOptions, vocab_size: int, rng: ReferenceRandom):
        self.max_predictions, self.prob = options.max_predictions_per_seq, options.masked_lm_prob
        self.vocab_size, self.rng = vocab_size, rng
        self.indexes = list(range(options.max_seq_length))
        self.pairs: list[tuple] = []
        self.counts: list[int] = []  # masked positions per instance
        self.chosen, self.draws = array("i"), array("i")  # candidate indexes in the order drawn, and their draws

    def __call__(self, pair: tuple) -> None:
        self.pairs.append(pair)
        candidates = pair[1] + pair[3]
        order = self.indexes[:candidates]
        self.rng.shuffle(order)
        chosen = order[:min(self.max_predictions, max(1, int(round((candidates + 3) * self.prob))))]
        self.chosen.extend(chosen)
        self.draws.extend(self.rng.mask_draws(len(chosen), self.vocab_size))
        self.counts.append(len(chosen))


def reference_rows(instances: ReferenceInstances, rows: slice, options: InstanceOptions,
                   vocab: VocabIds) -> dict[str, np.ndarray]:
    """The padded arrays (data/shards.py schema) of the instances written at positions `rows`."""
    created = instances.order[rows]
    pairs = instances.pairs[created]
    n, seq, pred = len(created), options.max_seq_length, options.max_predictions_per_seq
    out = {"input_mask": np.zeros((n, seq), np.int8), "segment_ids": np.zeros((n, seq), np.int8),
           "masked_lm_positions": np.zeros((n, pred), np.int32), "masked_lm_ids": np.zeros((n, pred), np.int32),
           "next_sentence_labels": pairs[:, 4].astype(np.int8)}
    ids, _ = pair_rows(instances.documents.tokens, pairs, seq, vocab, out)
    starts = instances.mask_starts[created]
    counts = instances.mask_starts[created + 1] - starts
    flat = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
    row = np.repeat(np.arange(n), counts)
    chosen, draws = instances.mask_chosen[flat], instances.mask_draws[flat]
    positions = chosen + 1 + (chosen >= pairs[row, 1])  # index i: position i + 1 in A, i + 2 in B
    ascending = np.lexsort((positions, row))
    positions, draws = positions[ascending], draws[ascending]
    slot = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    labels = ids[row, positions]
    ids[row, positions] = np.where(draws == MASK_DRAW, vocab.mask_id, np.where(draws == KEEP_DRAW, labels, draws))
    out["input_ids"] = ids
    out["masked_lm_positions"][row, slot] = positions
    out["masked_lm_ids"][row, slot] = labels
    return out
