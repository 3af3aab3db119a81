"""The work `prepare` hands to worker processes, as plain functions of picklable arguments.

Reading the corpus: `clean_documents` (markup removal, for vocab training) and `tokenize_documents`
(cleanup, sentence splitting, WordPiece) run on batches of raw documents. Building output:
`build_shard` turns one spooled shard into instances and writes it. Each returns plain values and a
`Tally` of what it skipped, so the parent can report it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bert_pretrain.data import shards
from bert_pretrain.options.prepare import InstanceOptions
from bert_pretrain.prepare.instances import Documents, VocabIds, create_instances
from bert_pretrain.prepare.manifest import file_digest
from bert_pretrain.prepare.partition import read_spool
from bert_pretrain.prepare.text import clean_wiki_leftovers, document_sentences
from bert_pretrain.prepare.tokenization import WordPieceTokenizer, train_vocab
from bert_pretrain.prepare.wikidump import wikitext_to_paragraphs

# Raw document kinds: what the cheap scan yields and the worker turns into sentences. PARAGRAPHS: a record's
# text (records.py), one paragraph per line, split into sentences without markup cleanup.
WIKITEXT, WIKIEXTRACTOR, TEXT, PARAGRAPHS = "wikitext", "wikiextractor", "text", "paragraphs"


@functools.lru_cache(maxsize=2)
def _tokenizer(vocab_file: str, vocab_sha256: str, lower_case: bool) -> WordPieceTokenizer:
    """One tokenizer per process and vocab (its memo then serves every batch the process gets); the
    vocab's hash is in the key so a vocab rewritten at the same path is read again."""
    return WordPieceTokenizer.from_vocab_file(vocab_file, lower_case)


def _sentences(kind: str, payload: str) -> list[str]:
    if kind == WIKITEXT:
        return document_sentences("paragraphs", wikitext_to_paragraphs(payload))
    return document_sentences(kind, payload)


def clean_documents(batch: list[tuple[str, str]]) -> list[str]:
    """Plain text of each raw document (kind, payload), for vocab training."""
    return [wikitext_to_paragraphs(p) if k == WIKITEXT else clean_wiki_leftovers(p) if k == WIKIEXTRACTOR else p
            for k, p in batch]


def tokenize_documents(batch: list[tuple[str, str]], vocab_file: str, vocab_sha256: str, lower_case: bool
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids (n,) int32, sentence lengths (s,) int64) of each raw document; a document with no
    text left gives empty arrays."""
    tokenizer = _tokenizer(vocab_file, vocab_sha256, lower_case)
    per_document = [_sentences(kind, payload) for kind, payload in batch]
    ids, lengths = tokenizer.encode_sentences([s for sentences in per_document for s in sentences])
    out, sentence_at, token_at = [], 0, 0
    for sentences in per_document:
        doc_lengths = lengths[sentence_at:sentence_at + len(sentences)]
        doc_ids = ids[token_at:token_at + int(doc_lengths.sum())]
        sentence_at += len(sentences)
        token_at += len(doc_ids)
        out.append((doc_ids, doc_lengths[doc_lengths > 0]))  # sentences with no token are dropped
    return out


def train_vocab_file(corpus_file: str, vocab_size: int, lower_case: bool) -> list[str]:
    """A WordPiece vocab trained on a text file (one document per line)."""
    with open(corpus_file, encoding="utf-8") as f:
        return train_vocab(f, vocab_size, lower_case)


@dataclass(frozen=True)
class ShardJob:
    """Build one output file from one spool file."""

    spool: Path
    output: Path
    rng_key: tuple[int, ...]  # np.random.default_rng(rng_key): the shard's own random stream
    options: InstanceOptions
    vocab: VocabIds
    varlength: bool
    limit: int | None = None  # keep only the first `limit` instances (the eval set)


@dataclass(frozen=True)
class ShardResult:
    output: Path
    instances: int
    documents: int
    tokens: int
    digest: dict  # prepare/manifest.py's record of the file written


def build_shard(job: ShardJob) -> ShardResult:
    """Read the spool, make the instances with the shard's own rng, write the file atomically
    (through data/shards.py), then delete the spool."""
    spooled = read_spool(job.spool)
    docs = Documents.from_parts([(ids, lengths) for _, ids, lengths in spooled])
    # one stream per shard (the reference has one per input file), so shards are built in any order or place
    arrays = create_instances(docs, job.options, job.vocab, np.random.default_rng(list(job.rng_key)), job.limit)
    if job.varlength:
        shards.write_varlength(job.output, shards.padded_to_varlength(arrays))
    else:
        shards.write_padded(job.output, arrays)
    os.remove(job.spool)
    return ShardResult(job.output, len(arrays["next_sentence_labels"]), docs.num_documents, len(docs.tokens),
                       file_digest(job.output))  # here, where the bytes are still in the page cache
