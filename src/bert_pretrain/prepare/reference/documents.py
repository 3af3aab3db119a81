"""A text file read into documents exactly as the reference create_pretraining_data.py reads it.

The reference reads with TensorFlow's text reader: a line ends at '\\n' only, every '\\r' is dropped
(also inside a line), and the bytes are decoded as strict UTF-8 (invalid bytes stop the script).
Each line is `str.strip()`-ed; an empty line starts a new document (so does a line of only
whitespace, which strip() empties); every line is tokenized, and a line with no tokens adds no
sentence. Documents without sentences are dropped. Token ids stand in for the reference's strings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bert_pretrain.errors import InputError
from bert_pretrain.prepare.instances import Documents
from bert_pretrain.prepare.tokenization import WordPieceTokenizer

_BATCH_CHARS = 1 << 20  # text tokenized at once (bounds the temporaries)


def read_reference_documents(path: str | Path, tokenizer: WordPieceTokenizer) -> Documents:
    """The documents of one text file (one sentence per line, a blank line between documents) as
    token ids; `tokenizer` must be exact (`WordPieceTokenizer(..., exact=True)`)."""
    path = Path(path)
    ids, lengths, documents = [], [], []  # per batch: token ids, tokens per line, document number per line
    batch, batch_documents, chars, document = [], [], 0, 0
    try:
        with open(path, "rb") as reader:
            for number, raw in enumerate(reader, 1):
                line = _decoded(raw, path, number).strip()
                if not line:
                    document += 1
                    continue
                batch.append(line)
                batch_documents.append(document)
                chars += len(line)
                if chars >= _BATCH_CHARS:
                    _tokenize(tokenizer, batch, batch_documents, ids, lengths, documents)
                    batch, batch_documents, chars = [], [], 0
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or err})") from None
    _tokenize(tokenizer, batch, batch_documents, ids, lengths, documents)
    return _documents(ids, lengths, documents)


def _decoded(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.replace(b"\r", b"").decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: line {number} is not UTF-8 ({err.reason} at byte {err.start} of the line); the "
                         "reference script stops on it too (TensorFlow reads text as strict UTF-8): repair or "
                         "re-encode the file") from None


def _tokenize(tokenizer, batch, batch_documents, ids, lengths, documents) -> None:
    if batch:
        batch_ids, batch_lengths = tokenizer.encode_sentences(batch)
        ids.append(batch_ids)
        lengths.append(batch_lengths)
        documents.append(np.asarray(batch_documents, np.int64))


def _documents(ids, lengths, documents) -> Documents:
    """Documents from the lines' tokens: lines without tokens and documents without lines left out."""
    if not ids:
        return Documents(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(1, np.int64))
    lengths, documents = np.concatenate(lengths), np.concatenate(documents)
    kept = lengths > 0
    lengths, documents = lengths[kept], documents[kept]
    _, sentences_per_document = np.unique(documents, return_counts=True)  # lines come in document order
    return Documents(np.concatenate(ids), np.concatenate([[0], np.cumsum(lengths)]),
                     np.concatenate([[0], np.cumsum(sentences_per_document)]))
