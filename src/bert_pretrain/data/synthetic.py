"""Synthetic pretraining rows with the sequence lengths of the real MLPerf Wikipedia data.

For benchmarks without a shard at hand: the token ids are random, but the shapes that set the
cost of a training step (real tokens per sequence, masked tokens per sequence) follow the real
distribution.

Length histogram source: Krell et al., "Efficient Sequence Packing without Cross-contamination"
(arXiv:2107.02027), whose code publishes the sequence-length histogram of the BERT Wikipedia
pretraining data at max_seq_length 512 (16,279,552 sequences; graphcore/examples,
tutorials/blogs_code/packedBERT/histograms.py). `LENGTH_BINS` sums it into 16-token bins; the
512 bin alone holds full-length sequences (23.4%). Mean real length: 255.8 tokens, i.e. about
half of every padded 512-token row is padding. For max_seq_length S < 512, lengths are
min(L, S): a sequence cut short by its document at 512 is cut short the same way at S, and
others fill S (how create_pretraining_data.py fills a target length).
"""

from __future__ import annotations

import numpy as np

from bert_pretrain.data.shards import PADDED_DTYPES, PREDICTION_KEYS

# (first length, last length, sequences) from the published per-length counts.
LENGTH_BINS = (
    (1, 16, 51863), (17, 32, 532972), (33, 48, 1099608), (49, 64, 1178636), (65, 80, 1020223),
    (81, 96, 833097), (97, 112, 695686), (113, 128, 601798), (129, 144, 534993), (145, 160, 479437),
    (161, 176, 437648), (177, 192, 403464), (193, 208, 374027), (209, 224, 346346), (225, 240, 324538),
    (241, 256, 304654), (257, 272, 285802), (273, 288, 268403), (289, 304, 254107), (305, 320, 241894),
    (321, 336, 230238), (337, 352, 219537), (353, 368, 209925), (369, 384, 199809), (385, 400, 191290),
    (401, 416, 183982), (417, 432, 176838), (433, 448, 170408), (449, 464, 163292), (465, 480, 158102),
    (481, 496, 153215), (497, 511, 138676), (512, 512, 3815044),
)
MASKED_LM_PROB = 0.15
CLS_ID, SEP_ID, MASK_ID, FIRST_WORD_ID = 101, 102, 103, 999  # BERT uncased vocab ids


def sample_lengths(rng: np.random.Generator, n: int, max_seq_length: int = 512) -> np.ndarray:
    """(n,) int64 real lengths drawn from the MLPerf histogram, at least 5, clipped to max_seq_length."""
    first, last, counts = (np.array(column, np.int64) for column in zip(*LENGTH_BINS))
    bins = rng.choice(len(counts), size=n, p=counts / counts.sum())
    lengths = rng.integers(first[bins], last[bins] + 1)
    return np.clip(lengths, 5, max_seq_length).astype(np.int64)


def empty_rows(n: int, max_seq_length: int, max_predictions_per_seq: int) -> dict[str, np.ndarray]:
    """`n` all-zero rows in the padded schema (data/shards.py dtypes), to be filled in."""
    def shape(key: str) -> tuple[int, ...]:
        if key == "next_sentence_labels":
            return (n,)
        return (n, max_predictions_per_seq if key in PREDICTION_KEYS else max_seq_length)

    return {key: np.zeros(shape(key), dtype) for key, dtype in PADDED_DTYPES.items()}


def synthetic_rows(rng: np.random.Generator, n: int, max_seq_length: int, max_predictions_per_seq: int,
                   vocab_size: int, lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """`n` rows in the padded MLPerf schema ([CLS] A [SEP] B [SEP], masked positions ascending,
    count min(max_pred, max(1, round(0.15 * length))) as create_pretraining_data.py)."""
    if lengths is None:
        lengths = sample_lengths(rng, n, max_seq_length)
    first_word = min(FIRST_WORD_ID, vocab_size - 1)
    arrays = empty_rows(n, max_seq_length, max_predictions_per_seq)
    arrays["next_sentence_labels"][:] = rng.integers(0, 2, n)
    for i, length in enumerate(lengths.tolist()):
        len_a = int(rng.integers(1, length - 3))
        tokens = rng.integers(first_word, vocab_size, length).astype(np.int32)
        tokens[[0, len_a + 1, length - 1]] = [min(CLS_ID, vocab_size - 1), min(SEP_ID, vocab_size - 1),
                                              min(SEP_ID, vocab_size - 1)]
        candidates = np.setdiff1d(np.arange(1, length - 1), [len_a + 1])
        count = min(max_predictions_per_seq, max(1, round(length * MASKED_LM_PROB)), len(candidates))
        positions = np.sort(rng.choice(candidates, size=count, replace=False))
        arrays["masked_lm_ids"][i, :count] = tokens[positions]
        arrays["masked_lm_positions"][i, :count] = positions
        tokens[positions] = min(MASK_ID, vocab_size - 1)
        arrays["input_ids"][i, :length] = tokens
        arrays["input_mask"][i, :length] = 1
        arrays["segment_ids"][i, len_a + 2 : length] = 1
    return arrays
