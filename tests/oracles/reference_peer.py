"""NVIDIA's MLPerf v1.0 `create_pretraining_data.py` (google-research/bert's algorithm, HDF5 out), transcribed.

A literal transcription in plain Python, written from the reference script and its `tokenization.py`:
lists of token strings, one `random.Random(random_seed)` drawn in the script's order, its
FullTokenizer (BasicTokenizer + WordPiece, character by character), its line reading (TensorFlow's
reader: lines end at '\\n', every '\\r' is dropped, strict UTF-8), its HDF5 arrays and dtypes. Not
used by the package. It is
- the oracle of tests/prepare/reference/test_reference_pipeline.py (prepare's reference method must equal it) and of the
  statistics test in tests/prepare/test_instances.py (`reference_instances`);
- the peer of benchmarks/reference_prepare_bench.py (what the real script costs without TensorFlow)
  and of benchmarks/prepare_bench.py.
"""

from __future__ import annotations

import random
import unicodedata

import numpy as np

CLS, SEP, MASK, UNK = "[CLS]", "[SEP]", "[MASK]", "[UNK]"
DTYPES = {"input_ids": "i4", "input_mask": "i1", "segment_ids": "i1", "masked_lm_positions": "i4",
          "masked_lm_ids": "i4", "next_sentence_labels": "i1"}


# ---- tokenization.py: FullTokenizer ----

def load_vocab(path) -> dict[str, int]:
    vocab: dict[str, int] = {}
    with open(path, "rb") as f:
        for raw in f:
            token = raw.replace(b"\r", b"").decode("utf-8").strip()
            if token not in vocab:
                vocab[token] = len(vocab)
    return vocab


def _whitespace(char):
    return char in (" ", "\t", "\n", "\r") or unicodedata.category(char) == "Zs"


def _control(char):
    if char in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def _punctuation(char):
    cp = ord(char)
    if (33 <= cp <= 47) or (58 <= cp <= 64) or (91 <= cp <= 96) or (123 <= cp <= 126):
        return True
    return unicodedata.category(char).startswith("P")


def _chinese(cp):
    return ((0x4E00 <= cp <= 0x9FFF) or (0x3400 <= cp <= 0x4DBF) or (0x20000 <= cp <= 0x2A6DF)
            or (0x2A700 <= cp <= 0x2B73F) or (0x2B740 <= cp <= 0x2B81F) or (0x2B820 <= cp <= 0x2CEAF)
            or (0xF900 <= cp <= 0xFAFF) or (0x2F800 <= cp <= 0x2FA1F))


class FullTokenizer:
    def __init__(self, vocab_file, do_lower_case=True):
        self.vocab = load_vocab(vocab_file)
        self.do_lower_case = do_lower_case

    def tokenize(self, text):
        return [piece for token in self.basic(text) for piece in self.wordpiece(token)]

    def basic(self, text):
        cleaned = []
        for char in text:
            if ord(char) == 0 or ord(char) == 0xFFFD or _control(char):
                continue
            cleaned.append(" " if _whitespace(char) else char)
        spaced = []
        for char in "".join(cleaned):
            spaced.extend([" ", char, " "] if _chinese(ord(char)) else [char])
        split_tokens = []
        for token in "".join(spaced).strip().split():
            if self.do_lower_case:
                token = token.lower()
                token = "".join(c for c in unicodedata.normalize("NFD", token) if unicodedata.category(c) != "Mn")
            split_tokens.extend(self._split_on_punctuation(token))
        return " ".join(split_tokens).strip().split()

    @staticmethod
    def _split_on_punctuation(text):
        output, start_new_word = [], True
        for char in text:
            if _punctuation(char):
                output.append([char])
                start_new_word = True
            else:
                if start_new_word:
                    output.append([])
                start_new_word = False
                output[-1].append(char)
        return ["".join(x) for x in output]

    def wordpiece(self, text):
        output = []
        for token in text.strip().split():
            chars = list(token)
            if len(chars) > 200:
                output.append(UNK)
                continue
            start, pieces = 0, []
            while start < len(chars):
                end, found = len(chars), None
                while start < end:
                    piece = ("##" if start > 0 else "") + "".join(chars[start:end])
                    if piece in self.vocab:
                        found = piece
                        break
                    end -= 1
                if found is None:
                    pieces = None
                    break
                pieces.append(found)
                start = end
            output.extend([UNK] if pieces is None else pieces)
        return output


# ---- create_pretraining_data.py ----

def read_documents(path, tokenizer) -> list[list[list[str]]]:
    """create_training_instances' reading: one sentence per line, a blank line ends a document."""
    documents = [[]]
    with open(path, "rb") as reader:
        for raw in reader:
            line = raw.replace(b"\r", b"").decode("utf-8").strip()
            if not line:
                documents.append([])
            tokens = tokenizer.tokenize(line)
            if tokens:
                documents[-1].append(tokens)
    return [d for d in documents if d]


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
    """create_instances_from_document, truncate_seq_pair and create_masked_lm_predictions, for document `d`."""
    document, max_tokens, out = documents[d], seq - 3, []
    target = max_tokens
    if rng.random() < short:
        target = rng.randint(2, max_tokens)
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
                random_document = documents[other]
                for sentence in random_document[rng.randint(0, len(random_document) - 1):]:
                    b.extend(sentence)
                    if len(b) >= target - len(a):
                        break
                i -= len(chunk) - a_end
            else:
                b = [t for s in chunk[a_end:] for t in s]
            while len(a) + len(b) > max_tokens:
                longer = a if len(a) > len(b) else b
                if rng.random() < 0.5:
                    del longer[0]
                else:
                    longer.pop()
            tokens = [CLS, *a, SEP, *b, SEP]
            segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
            output, positions, labels = _masked(tokens, prob, pred, vocab, rng)
            out.append((output, segments, positions, labels, int(is_random)))
            chunk, length = [], 0
        i += 1
    return out


def _masked(tokens, prob, pred, vocab, rng):
    """create_masked_lm_predictions: (output tokens, sorted positions, their original tokens)."""
    candidates = [i for i, t in enumerate(tokens) if t != CLS and t != SEP]
    rng.shuffle(candidates)
    output = list(tokens)
    count = min(pred, max(1, int(round(len(tokens) * prob))))
    masked, covered = [], set()
    for index in candidates:
        if len(masked) >= count:
            break
        if index in covered:
            continue
        covered.add(index)
        if rng.random() < 0.8:
            replacement = MASK
        elif rng.random() < 0.5:
            replacement = tokens[index]
        else:
            replacement = vocab[rng.randint(0, len(vocab) - 1)]
        output[index] = replacement
        masked.append((index, tokens[index]))
    masked.sort(key=lambda m: m[0])
    return output, [m[0] for m in masked], [m[1] for m in masked]


def instance_arrays(instances, vocab: dict[str, int], max_seq_length: int, max_predictions: int) -> dict:
    """write_instance_to_example_files' arrays (one output file), with the dtypes it stores."""
    n = len(instances)
    arrays = {key: np.zeros((n, max_predictions if key.startswith("masked") else max_seq_length), np.int32)
              for key in DTYPES if key != "next_sentence_labels"}
    arrays["next_sentence_labels"] = np.zeros(n, np.int32)
    for i, (tokens, segments, positions, labels, is_random) in enumerate(instances):
        arrays["input_ids"][i, :len(tokens)] = [vocab[t] for t in tokens]
        arrays["input_mask"][i, :len(tokens)] = 1
        arrays["segment_ids"][i, :len(segments)] = segments
        arrays["masked_lm_positions"][i, :len(positions)] = positions
        arrays["masked_lm_ids"][i, :len(labels)] = [vocab[t] for t in labels]
        arrays["next_sentence_labels"][i] = is_random
    return {key: value.astype(DTYPES[key]) for key, value in arrays.items()}


def create_pretraining_data(input_file, vocab_file, do_lower_case=True, max_seq_length=128, max_predictions=20,
                            masked_lm_prob=0.15, short_seq_prob=0.1, dupe_factor=10, random_seed=12345) -> dict:
    """The script's main() on one input file: the arrays of its one HDF5 output file."""
    tokenizer = FullTokenizer(vocab_file, do_lower_case)
    documents = read_documents(input_file, tokenizer)
    rng = random.Random(random_seed)
    instances = reference_instances(documents, max_seq_length, max_predictions, masked_lm_prob, short_seq_prob,
                                    dupe_factor, list(tokenizer.vocab), rng)
    return instance_arrays(instances, tokenizer.vocab, max_seq_length, max_predictions)
