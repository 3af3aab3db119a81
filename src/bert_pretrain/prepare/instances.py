"""Training instances with the semantics of google-research/NVIDIA `create_pretraining_data.py`.

For each pass of `dupe_factor` over the (shuffled) documents, a document is cut into chunks of whole
sentences of about `target_seq_length` tokens (`max_seq_length - 3`, or with probability
`short_seq_prob` a random length in [2, max_seq_length - 3], drawn once per document as the reference
does). A chunk splits at a random sentence into A and B; with probability 0.5, or always when the
chunk is one sentence, B is instead a run of sentences from a random other document (NSP label 1)
and the unused sentences go back for the next chunk. `truncate_seq_pair` trims the longer segment,
one token at a time, from the front or the back at random. Masking picks
`min(max_predictions_per_seq, max(1, round(len * masked_lm_prob)))` tokens other than [CLS]/[SEP]
(whole words with `whole_word_mask`), makes each [MASK] 80%, itself 10%, a random vocab id 10%, and
stores the positions sorted.

Speed: the sentence bookkeeping is a Python loop over sentences that records each instance as four
token offsets (segments are contiguous runs of a document's tokens); truncation is done in closed
form (which segment loses each token is determined by the lengths; only the front/back coins are
random); building the rows and masking are vectorized numpy over blocks of instances.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from bert_pretrain.options.prepare import InstanceOptions

PAIR_FIELDS = 5  # a_start, a_length, b_start, b_length, is_random_next
_BLOCK_ROWS = 2048  # rows built at once (bounds the temporaries)


@dataclass(frozen=True)
class VocabIds:
    """What masking needs from the vocab."""

    cls_id: int
    sep_id: int
    mask_id: int
    vocab_size: int
    is_continuation: np.ndarray  # (vocab_size,) bool: the token starts with '##' (whole-word masking)

    @classmethod
    def from_tokens(cls, tokens: list[str]) -> "VocabIds":
        """From a vocab's tokens (id = index), which hold [CLS], [SEP] and [MASK]."""
        index = {t: i for i, t in enumerate(tokens)}
        return cls(index["[CLS]"], index["[SEP]"], index["[MASK]"], len(tokens),
                   np.array([t.startswith("##") for t in tokens], bool))


@dataclass
class Documents:
    """Tokenized documents, back to back: document d holds sentences
    `doc_starts[d]:doc_starts[d+1]`; sentence s holds `tokens[sentence_starts[s]:sentence_starts[s+1]]`."""

    tokens: np.ndarray  # (total tokens,) int32
    sentence_starts: np.ndarray  # (sentences + 1,) int64
    doc_starts: np.ndarray  # (documents + 1,) int64

    @classmethod
    def from_parts(cls, parts: list[tuple[np.ndarray, np.ndarray]]) -> "Documents":
        """From (token ids, sentence lengths) per document; documents with no sentence are left out."""
        parts = [(ids, lengths) for ids, lengths in parts if len(lengths)]
        lengths = np.concatenate([np.asarray(l, np.int64) for _, l in parts]) if parts else np.zeros(0, np.int64)
        tokens = np.concatenate([np.asarray(t, np.int32) for t, _ in parts]) if parts else np.zeros(0, np.int32)
        doc_sizes = np.array([len(l) for _, l in parts], np.int64)
        return cls(tokens, np.concatenate([[0], np.cumsum(lengths)]), np.concatenate([[0], np.cumsum(doc_sizes)]))

    @property
    def num_documents(self) -> int:
        return len(self.doc_starts) - 1

    def reordered(self, order: list[int]) -> "Documents":
        """The same documents, document `order[k]` as the k-th."""
        order = np.asarray(order, np.int64)
        sentences = _ranges(self.doc_starts[order], np.diff(self.doc_starts)[order])
        lengths = np.diff(self.sentence_starts)[sentences]
        tokens = self.tokens[_ranges(self.sentence_starts[sentences], lengths)]
        doc_sizes = np.diff(self.doc_starts)[order]
        return Documents(tokens, np.concatenate([[0], np.cumsum(lengths)]), np.concatenate([[0], np.cumsum(doc_sizes)]))

    def document_tokens(self, d: int) -> np.ndarray:
        s0, s1 = self.doc_starts[d], self.doc_starts[d + 1]
        return self.tokens[self.sentence_starts[s0]:self.sentence_starts[s1]]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The concatenation of arange(start, start + count) for each (start, count)."""
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(int(counts.sum()))


def create_pairs(docs: Documents, options: InstanceOptions, rng: random.Random) -> np.ndarray:
    """(N, 5) int64 rows of (a_start, a_length, b_start, b_length, is_random_next), in creation order."""
    sentence_starts = docs.sentence_starts.tolist()
    doc_starts = docs.doc_starts.tolist()
    order = list(range(docs.num_documents))
    rng.shuffle(order)
    rows: list[tuple[int, int, int, int, int]] = []
    for _ in range(options.dupe_factor):
        for d in order:
            document_pairs(d, sentence_starts, doc_starts, options, rng, rows.append)
    return np.array(rows, np.int64).reshape(-1, PAIR_FIELDS)


def document_pairs(d, sentence_starts, doc_starts, options, rng, emit, truncate=None) -> None:
    """emit() each pair of document `d` (the reference's create_instances_from_document), in order;
    `truncate` (default `_truncate`) trims each pair (prepare/reference/instances.py passes the
    reference's own token-by-token draws)."""
    truncate = truncate or _truncate
    max_num_tokens = options.max_seq_length - 3
    target = max_num_tokens
    # drawn once per document and dupe pass, not per chunk: the reference's create_instances_from_document
    if rng.random() < options.short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    first, end = doc_starts[d], doc_starts[d + 1]
    num_docs = len(doc_starts) - 1
    i, chunk_first, length = first, first, 0
    while i < end:
        length += sentence_starts[i + 1] - sentence_starts[i]
        if i == end - 1 or length >= target:
            chunk = i + 1 - chunk_first  # sentences in the chunk
            a_end = chunk_first + (rng.randint(1, chunk - 1) if chunk >= 2 else 1)
            a_start, a_length = sentence_starts[chunk_first], sentence_starts[a_end] - sentence_starts[chunk_first]
            if chunk == 1 or rng.random() < 0.5:
                is_random_next = 1
                # google-research's loop: ten tries at a random document other than this one; a corpus of
                # one document (or bad luck ten times) pairs the document with itself, as the reference does.
                for _ in range(10):
                    other = rng.randint(0, num_docs - 1)
                    if other != d:
                        break
                o_first, o_end = doc_starts[other], doc_starts[other + 1]
                start = o_first + rng.randint(0, o_end - o_first - 1)
                stop, wanted = start, target - a_length
                while stop < o_end:
                    stop += 1
                    if sentence_starts[stop] - sentence_starts[start] >= wanted:
                        break
                b_start, b_length = sentence_starts[start], sentence_starts[stop] - sentence_starts[start]
                i = a_end - 1  # the chunk's unused sentences start the next chunk
            else:
                is_random_next = 0
                b_start, b_length = sentence_starts[a_end], sentence_starts[i + 1] - sentence_starts[a_end]
            a_front, a_length, b_front, b_length = truncate(a_length, b_length, max_num_tokens, rng)
            emit((a_start + a_front, a_length, b_start + b_front, b_length, is_random_next))
            chunk_first, length = i + 1, 0
        i += 1


def _truncate(a_length: int, b_length: int, max_num_tokens: int, rng: random.Random) -> tuple[int, int, int, int]:
    """The reference's truncate_seq_pair in closed form: (tokens cut from A's front, A's new length,
    tokens cut from B's front, B's new length). The longer segment loses a token (B on a tie), from
    the front or the back with probability 1/2 each; so A loses the excess over B first (or B the
    excess over A), then B and A take turns, B first."""
    excess = a_length + b_length - max_num_tokens
    if excess <= 0:
        return 0, a_length, 0, b_length
    gap = min(excess, abs(a_length - b_length))
    turns = excess - gap
    cut_a = (gap if a_length > b_length else 0) + turns // 2
    cut_b = (gap if b_length > a_length else 0) + (turns + 1) // 2
    front_a = rng.getrandbits(cut_a).bit_count() if cut_a else 0
    front_b = rng.getrandbits(cut_b).bit_count() if cut_b else 0
    return front_a, a_length - cut_a, front_b, b_length - cut_b


def build_arrays(docs: Documents, pairs: np.ndarray, options: InstanceOptions, vocab: VocabIds,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The padded MLPerf arrays (data/shards.py schema) of `pairs`, in order, masked."""
    n, seq, pred = len(pairs), options.max_seq_length, options.max_predictions_per_seq
    out = {
        "input_ids": np.zeros((n, seq), np.int32),
        "input_mask": np.zeros((n, seq), np.int8),
        "segment_ids": np.zeros((n, seq), np.int8),
        "masked_lm_positions": np.zeros((n, pred), np.int32),
        "masked_lm_ids": np.zeros((n, pred), np.int32),
        "next_sentence_labels": pairs[:, 4].astype(np.int8),
    }
    for lo in range(0, n, _BLOCK_ROWS):
        block = slice(lo, min(n, lo + _BLOCK_ROWS))
        _build_block(docs.tokens, pairs[block], options, vocab, rng, {k: v[block] for k, v in out.items()})
    return out


def pair_rows(tokens: np.ndarray, pairs: np.ndarray, seq: int, vocab: VocabIds, out: dict) -> tuple[np.ndarray, np.ndarray]:
    """Fill out['segment_ids'] and out['input_mask'] of `pairs` (n, 5); return the unmasked
    [CLS] A [SEP] B [SEP] ids (n, seq) int32 and the (n, seq) bool mask of A and B (the candidates)."""
    a_start, a_len, b_start, b_len = (pairs[:, k:k + 1] for k in range(4))  # each (n, 1)
    length = a_len + b_len + 3
    j = np.arange(seq)[None, :]  # (1, T)
    in_a = (j >= 1) & (j <= a_len)
    in_b = (j >= a_len + 2) & (j < length - 1)
    source = np.where(in_a, a_start + j - 1, np.where(in_b, b_start + j - a_len - 2, 0))
    ids = np.where(in_a | in_b, tokens[source], 0).astype(np.int32)  # (n, T)
    rows = np.arange(len(pairs))
    ids[:, 0] = vocab.cls_id
    ids[rows, a_len[:, 0] + 1] = vocab.sep_id
    ids[rows, length[:, 0] - 1] = vocab.sep_id
    out["segment_ids"][:] = (j >= a_len + 2) & (j < length)
    out["input_mask"][:] = j < length
    return ids, in_a | in_b


def _build_block(tokens, pairs, options, vocab, rng, out) -> None:
    ids, candidates = pair_rows(tokens, pairs, options.max_seq_length, vocab, out)
    length = pairs[:, 1] + pairs[:, 3] + 3
    wanted = np.minimum(options.max_predictions_per_seq,
                        np.maximum(1, np.round(length * options.masked_lm_prob).astype(np.int64)))
    if options.whole_word_mask:
        chosen = _choose_whole_words(ids, candidates, wanted, vocab, rng)
    else:
        chosen = _choose_tokens(candidates, np.minimum(wanted, candidates.sum(1)), rng)
    row, col = np.nonzero(chosen)  # row-major: positions ascending within each row
    counts = chosen.sum(1)
    slot = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    labels = ids[row, col]
    keep_or_random = rng.random(len(row))
    keep = rng.random(len(row)) < 0.5
    random_ids = rng.integers(0, vocab.vocab_size, len(row))
    ids[row, col] = np.where(keep_or_random < 0.8, vocab.mask_id, np.where(keep, labels, random_ids))
    out["input_ids"][:] = ids
    out["masked_lm_positions"][row, slot] = col
    out["masked_lm_ids"][row, slot] = labels


def _choose_tokens(candidates: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, T) bool: `counts[i]` positions of row i drawn uniformly among its candidates, as the
    reference's shuffle-and-take-the-first does."""
    keys = rng.random(candidates.shape)
    keys[~candidates] = 2.0
    most = int(counts.max(initial=0))
    chosen = np.zeros(candidates.shape, bool)
    if most == 0:
        return chosen
    smallest = np.argpartition(keys, most - 1, axis=1)[:, :most]
    ranked = np.take_along_axis(smallest, np.argsort(np.take_along_axis(keys, smallest, 1), 1), 1)
    take = np.arange(most)[None, :] < counts[:, None]
    chosen[np.nonzero(take)[0], ranked[take]] = True
    return chosen


def _choose_whole_words(ids, candidates, wanted, vocab, rng) -> np.ndarray:
    """(n, T) bool: whole words (a token and its '##' continuations) in random order, each taken
    while it fits in `wanted`, as the reference's whole-word masking does. A '##' token right after
    [CLS]/[SEP] starts a word (the reference would join it to the word before the [SEP])."""
    continues = vocab.is_continuation[ids] & candidates & np.roll(candidates, 1, axis=1)
    starts = candidates & ~continues
    chosen = np.zeros(ids.shape, bool)
    for i in range(len(ids)):
        positions = np.flatnonzero(candidates[i])
        first = np.flatnonzero(starts[i])  # words are runs of candidate positions, each from a start
        sizes = np.bincount(np.cumsum(starts[i, positions]) - 1, minlength=len(first))
        total = 0
        for w in rng.permutation(len(first)):
            if total >= wanted[i]:
                break
            if total + sizes[w] > wanted[i]:
                continue
            chosen[i, first[w]:first[w] + sizes[w]] = True
            total += sizes[w]
    return chosen


def create_instances(docs: Documents, options: InstanceOptions, vocab: VocabIds, rng: np.random.Generator,
                     limit: int | None = None) -> dict[str, np.ndarray]:
    """All instances of `docs` (dupe_factor passes), shuffled, as padded arrays; only the first
    `limit` rows when given (the eval set's 'first K', without building the rest)."""
    if docs.num_documents == 0:
        raise ValueError("no documents to make instances from")
    structure_rng = random.Random(int(rng.integers(2**63)))
    pairs = create_pairs(docs, options, structure_rng)
    pairs = pairs[rng.permutation(len(pairs))][:limit]
    return build_arrays(docs, pairs, options, vocab, rng)
