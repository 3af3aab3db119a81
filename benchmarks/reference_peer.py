"""The reference's create_pretraining_data.py algorithm, transcribed from its semantics, in plain Python.

Written from the semantics of google-research/bert's `create_pretraining_data.py` (docs/mlperf.md,
"The data"): one process, lists of token strings, one `random.Random` for everything, as the original
script runs. It is the peer of
`prepare_bench.py` and the oracle the statistics test in `tests/test_instances.py` compares
`data/instances.py` with. Not used by the package.
"""

from __future__ import annotations

import random


def reference_instances(documents: list[list[list]], max_seq_length: int, max_predictions: int,
                        masked_lm_prob: float, short_seq_prob: float, dupe_factor: int, vocab: list,
                        rng: random.Random) -> list[tuple[list, list, list, list, int]]:
    """(tokens, segment ids, masked positions, masked labels, is_random_next) of every instance, in the
    final shuffled order. `documents` are lists of sentences, each a list of tokens."""
    documents = list(documents)
    rng.shuffle(documents)
    instances = []
    for _ in range(dupe_factor):
        for d in range(len(documents)):
            instances.extend(_document_instances(documents, d, max_seq_length, max_predictions, masked_lm_prob,
                                                 short_seq_prob, vocab, rng))
    rng.shuffle(instances)
    return instances


def _document_instances(documents, d, seq, pred, prob, short, vocab, rng):
    """create_instances_from_document with create_masked_lm_predictions, for document `d`."""
    document, max_tokens, out = documents[d], seq - 3, []
    target = rng.randint(2, max_tokens) if rng.random() < short else max_tokens
    chunk, length, i = [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [t for s in chunk[:a_end] for t in s]
            b, is_random = [], len(chunk) == 1 or rng.random() < 0.5
            if is_random:
                for _ in range(10):
                    other = rng.randint(0, len(documents) - 1)
                    if other != d:
                        break
                for sentence in documents[other][rng.randint(0, len(documents[other]) - 1):]:
                    b.extend(sentence)
                    if len(b) >= target - len(a):
                        break
                i -= len(chunk) - a_end
            else:
                b = [t for s in chunk[a_end:] for t in s]
            while len(a) + len(b) > max_tokens:
                longer = a if len(a) > len(b) else b
                longer.pop(0 if rng.random() < 0.5 else -1)
            tokens = ["[CLS]", *a, "[SEP]", *b, "[SEP]"]
            segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
            candidates = [j for j, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
            rng.shuffle(candidates)
            count = min(pred, max(1, int(round(len(tokens) * prob))))
            masked = sorted(candidates[:count])
            labels = [tokens[j] for j in masked]
            for j in masked:
                tokens[j] = ("[MASK]" if rng.random() < 0.8 else
                             tokens[j] if rng.random() < 0.5 else vocab[rng.randint(0, len(vocab) - 1)])
            out.append((tokens, segments, masked, labels, int(is_random)))
            chunk, length = [], 0
        i += 1
    return out
