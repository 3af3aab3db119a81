"""`bert-pretrain prepare`: text or a Wikipedia dump -> MLPerf HDF5 shards and the eval set.

    summary = run(PrepareOptions(input_files="corpus/", vocab_file="vocab.txt", output_dir="data", num_shards=8))
    print(summary.report())

Two stages, both spread over `workers` processes:
1. Read: this process scans the input in a fixed order and cuts it into raw documents (cheap); each
   document's index in that stream decides its training shard or the eval set (prepare/partition.py);
   workers clean, split and tokenize batches of documents; the tokens are spooled to one file per
   shard. Documents of shards outside `--shard_range` are not tokenized.
2. Build: each worker takes one shard at a time, makes its instances with the shard's own random
   stream (seed, shard) and writes it atomically (prepare/tasks.py).
The output depends only on the input, the options and the seed, not on the number of workers or
machines, and a worker holds one shard, never the corpus (docs/data.md).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from bert_pretrain.data.vocab import check_pretraining_vocab, read_vocab, write_vocab
from bert_pretrain.errors import InputError
from bert_pretrain.options.prepare import PrepareOptions
from bert_pretrain.prepare import records, tasks
from bert_pretrain.prepare.input_digests import InputDigests, fingerprint, refuse_duplicates
from bert_pretrain.prepare.instances import VocabIds
from bert_pretrain.prepare.layout import OutputLayout, PrepareSummary
from bert_pretrain.prepare.manifest import FinishedFiles, file_digest
from bert_pretrain.prepare.partition import EvalSelector, ShardAssigner, SpoolWriter
from bert_pretrain.prepare.reference import pipeline as reference_prepare
from bert_pretrain.prepare.text import (
    LONG_LINES,
    MAX_LINE_BYTES,
    Tally,
    detect_format,
    find_input_files,
    refuse_binary,
    text_documents,
    wikiextractor_documents,
)
from bert_pretrain.prepare.wikidump import iter_articles
from bert_pretrain.prepare.workers import Workers

_BATCH_DOCUMENTS = 64  # documents per worker task
_BATCH_CHARS = 256 << 10  # or this many characters of raw text
_BATCH_DECISIONS = 1 << 16  # documents looked at per task, tokenized or not (bounds memory)
_MAX_SHARD_TOKEN_SLOTS = 1 << 26  # tokens x dupe_factor in one shard: bounds a worker's arrays (~1 GB at 512/76)
_TRAIN_STREAM, _EVAL_STREAM = 2, 3  # rng keys (seed, stream, shard); ShardAssigner uses stream 1


def run(options: PrepareOptions) -> PrepareSummary:
    """Prepare shards (and the eval set) as `options` say; returns what was done."""
    if options.method == "reference":
        return reference_prepare.run(options)
    started = time.perf_counter()
    options.check()
    first, end = options.shard_bounds()
    layout = OutputLayout(Path(options.output_dir), options.num_shards, options.format == "varlength")
    files = _input_files(options, layout)  # refused before the folder is made
    with layout.as_found_if_refused(), layout.hold(shards=(first, end), shared=first == 0):
        return _prepare(options, layout, files, first, end, started)  # the lock before anything in the folder


def _prepare(options: PrepareOptions, layout: OutputLayout, files: list[tuple[Path, str]], first: int, end: int,
             started: float) -> PrepareSummary:
    layout.prepare_folders(shards=False, with_eval=False)  # the vocab and the manifest go here
    if first == 0:  # only the run whose range starts at 0 trains a vocab: its leftover is this run's to delete
        layout.vocab_corpus_path.unlink(missing_ok=True)
    with Workers(options.workers) as workers:
        digests = InputDigests(layout.manifest_path)
        md5s = digests.md5s([path for path, _ in files], workers)
        refuse_duplicates(md5s)
        # every output depends on every input: a document's index in the whole stream places it
        made_from = fingerprint(list(md5s.values()))
        vocab_file, notes, retrained = _vocab_file(options, files, layout, workers, first, made_from)
        vocab_tokens = _read_pretraining_vocab(vocab_file, trained=options.vocab_file is None)
        vocab_sha256 = _sha256(vocab_file)
        layout.check_manifest(options.manifest(vocab_sha256), vocab_retrained=retrained)
        digests.save()
        wants_eval = options.num_eval_examples > 0 and first == 0
        layout.prepare_folders(with_eval=wants_eval)  # after the manifest check: a refused run creates nothing
        summary = PrepareSummary(layout.output_dir, layout.shard_dir, layout.eval_path if wants_eval else None,
                                 vocab_file, notes=notes)
        outputs = [layout.shard_path(i) for i in range(first, end)] + ([layout.eval_path] if wants_eval else [])
        for path in outputs:
            layout.remove_temporaries(path)  # left by a killed run; no other run writes this range
        finished = FinishedFiles(layout.manifest_path, dict.fromkeys(outputs, made_from))
        finished.check(outputs, layout.is_complete, workers)
        summary.notes += digests.notes() + finished.notes() + _other_ranges_made_otherwise(layout, finished, first, end,
                                                                                         made_from)
        todo = [i for i in range(first, end) if not finished.is_complete(layout.shard_path(i))]
        summary.shards_skipped = [layout.shard_path(i) for i in range(first, end) if i not in todo]
        eval_todo = wants_eval and not finished.is_complete(layout.eval_path)
        spool_dir = layout.spool_dir(first, end)
        shutil.rmtree(spool_dir, ignore_errors=True)  # left by a killed run of this range
        if todo or eval_todo:
            spool_dir.mkdir()
            job = _Job(options, layout, files, todo, eval_todo, SpoolWriter(spool_dir), workers, summary, finished)
            try:
                _read_corpus(job, (str(vocab_file), vocab_sha256))
                _build(job, VocabIds.from_tokens(vocab_tokens))
            finally:
                shutil.rmtree(spool_dir, ignore_errors=True)
                finished.save()  # what this run finished, also when it fails later
        finished.save()  # the files `check` found whole without a record
    summary.seconds = time.perf_counter() - started
    return summary


def _other_ranges_made_otherwise(layout: OutputLayout, finished: FinishedFiles, first: int, end: int,
                                 made_from: str) -> list[str]:
    """A note naming the shards outside this run's range made from other input contents: the folder is
    whole only once their ranges are run again on these inputs (on the other machines, say)."""
    others = [i for i in [*range(first), *range(end, layout.num_shards)]
              if (record := finished.recorded(layout.shard_path(i))) is not None and record.get("inputs") != made_from]
    if not others:
        return []
    return [f"{len(others)} shards outside this run's --shard_range {first}:{end} were made from other input "
            f"contents than this run's (the first: {layout.shard_path(others[0])}); run their ranges again on "
            "these inputs"]


def _input_files(options: PrepareOptions, layout: OutputLayout) -> list[tuple[Path, str]]:
    """The input files, less what prepare itself wrote or reads as the vocab: an output folder inside an
    input folder would otherwise be read as text by the next run."""
    vocab = Path(options.vocab_file).resolve() if options.vocab_file else None
    files = [path for path in find_input_files(options.input_list())
             if not layout.is_output(path) and path.resolve() != vocab]
    if not files:
        raise InputError(f"--input_file {' '.join(options.input_list())}: holds no input besides the vocab and "
                         f"prepare's own outputs in {layout.output_dir}")
    return [(path, _input_format(path, options.input_format)) for path in files]


def _input_format(path: Path, asked: str) -> str:
    """The format of one input file; a binary file is refused whatever --input_format says (Parquet and Arrow
    files are binary: their magic bytes are checked instead)."""
    if asked == "auto":
        return records.detect_format(path) or detect_format(path)
    if asked in records.FORMATS:
        records.check_format(path, asked)
    else:
        refuse_binary(path)
    return asked


def _read_pretraining_vocab(path: Path, trained: bool) -> list[str]:
    try:
        tokens = read_vocab(path)
        check_pretraining_vocab(tokens, path)
    except InputError as err:
        if trained:
            raise
        raise InputError(f"{err}; or pass --vocab_size N instead of --vocab_file to train a vocab on the "
                         "input") from None
    return tokens


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _raw_documents(files: list[tuple[Path, str]], options: PrepareOptions, tally: Tally
                   ) -> Iterator[tuple[str, str, Path]]:
    """(kind, payload, file) of every document of every input file, in order."""
    # a record's text is taken as it is, or cleaned as WikiExtractor text is when asked (WikiExtractor's --json)
    record_kind = tasks.WIKIEXTRACTOR if options.clean_wiki_markup else tasks.PARAGRAPHS
    for path, fmt in files:
        if fmt in records.FORMATS:
            documents = records.record_documents(path, fmt, options.text_field, tally)
            yield from ((record_kind, text, path) for text in documents)
        elif fmt == "wikidump":
            yield from ((tasks.WIKITEXT, text, path) for text in iter_articles(path, tally))
        elif fmt == "wikiextractor":
            yield from ((tasks.WIKIEXTRACTOR, body, path) for body in wikiextractor_documents(path, tally))
        else:
            yield from ((tasks.TEXT, doc, path) for doc in text_documents(path, tally))


def _vocab_file(options, files, layout: OutputLayout, workers: Workers, first: int,
                made_from: str) -> tuple[Path, list[str], bool]:
    """The vocab to use: --vocab_file, the one an earlier run trained on these inputs' contents, or a new
    one trained here (and whether it replaces one trained on other contents)."""
    if options.vocab_file is not None:
        return Path(options.vocab_file), [], False
    trained = FinishedFiles(layout.manifest_path, {layout.vocab_path: made_from})
    record = trained.recorded(layout.vocab_path)
    stale = record is not None and record.get("inputs") != made_from  # no record: trained by an earlier version
    if layout.vocab_path.exists() and not stale:
        size = len(read_vocab(layout.vocab_path))
        if size > options.vocab_size:
            raise InputError(f"{layout.vocab_path}: an earlier run trained this {size:,}-token vocab, more than "
                             f"--vocab_size {options.vocab_size:,}; delete the output folder's vocab.txt and shards "
                             "to train a new one, or pass --vocab_file to use this one")
        return layout.vocab_path, [f"reused the {size:,}-token vocab trained by an earlier run (--vocab_size "
                                   f"{options.vocab_size:,}; the trainer may stop short of it on a small corpus); "
                                   f"delete {layout.vocab_path} to train anew: {layout.vocab_path}"], False
    if first != 0:
        raise InputError(f"--vocab_size with --shard_range {first}:...: the vocab is trained once, by the run whose "
                         f"range starts at 0 (e.g. --shard_range 0:0 trains it alone), "
                         + ("again now that the inputs changed; " if stale else "") +
                         f"then pass --vocab_file {layout.vocab_path}")
    corpus = layout.vocab_corpus_path  # a fixed name: a killed run's copy is overwritten, then deleted
    try:
        with open(corpus, "w", encoding="utf-8") as out:
            batches = _plain_batches(_raw_documents(files, options, Tally()))
            for texts in tqdm(workers.ordered(tasks.clean_documents, ((b,) for b in batches)), unit="batch",
                              desc="vocab: read", disable=not options.progress):
                out.writelines(text.replace("\n", " ") + "\n" for text in texts)
        vocab = workers.call(tasks.train_vocab_file, str(corpus), options.vocab_size, options.lower_case)
    finally:
        corpus.unlink(missing_ok=True)
    write_vocab(layout.vocab_path, vocab)
    trained.record(layout.vocab_path, file_digest(layout.vocab_path))
    trained.save()
    why = " (the input files changed since the vocab there was trained)" if stale else ""
    return layout.vocab_path, [f"trained a {len(vocab):,}-token WordPiece vocab on the input{why}: "
                               f"{layout.vocab_path}"], stale


def _plain_batches(documents: Iterable[tuple[str, str, Path]]) -> Iterator[list[tuple[str, str]]]:
    batch, chars = [], 0
    for kind, payload, _ in documents:
        batch.append((kind, payload))
        chars += len(payload)
        if len(batch) >= _BATCH_DOCUMENTS or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


@dataclass
class _Placement:
    """Where one document goes, decided from its index before it is tokenized."""

    index: int
    source: Path
    shard: int
    held_out: bool  # in the eval selection for now
    evicted: int | None  # the document it pushed out of the eval selection
    tokenize: bool  # some output of this run needs its tokens


@dataclass
class _Batches:
    """Cuts the document stream into worker tasks and remembers each task's placements."""

    options: PrepareOptions
    todo: set[int]
    eval_todo: bool
    placements: deque = field(default_factory=deque)
    eval_members: list[int] = field(default_factory=list)  # known once `tasks` has run to the end

    def tasks(self, documents: Iterable[tuple[str, str, Path]]) -> Iterator[list[tuple[str, str]]]:
        assign = ShardAssigner(self.options.num_shards, self.options.random_seed)
        eval_documents = self.options.num_eval_documents if self.options.num_eval_examples else 0
        selector = EvalSelector(eval_documents, self.options.random_seed)
        batch, placed, chars = [], [], 0
        for index, (kind, payload, source) in enumerate(documents):
            shard = assign(index)
            held_out, evicted = selector.offer(index)
            tokenize = shard in self.todo or (held_out and self.eval_todo)
            placed.append(_Placement(index, source, shard, held_out, evicted, tokenize))
            if tokenize:
                batch.append((kind, payload))
                chars += len(payload)
            if len(batch) >= _BATCH_DOCUMENTS or chars >= _BATCH_CHARS or len(placed) >= _BATCH_DECISIONS:
                self.placements.append(placed)
                yield batch
                batch, placed, chars = [], [], 0
        if placed:
            self.placements.append(placed)
            yield batch
        self.eval_members = selector.members()


@dataclass
class _Job:
    """What this run makes and with what: the two stages (read the corpus, build the outputs) share it."""

    options: PrepareOptions
    layout: OutputLayout
    files: list[tuple[Path, str]]
    todo: list[int]  # the shards of this run's range not yet complete
    eval_todo: bool  # the eval set too
    spool: SpoolWriter
    workers: Workers
    summary: PrepareSummary  # filled in as the stages go
    finished: FinishedFiles


def _read_corpus(job: _Job, vocab: tuple[str, str]) -> None:
    """Stage 1: tokenize the documents this run needs and spool them by shard (and 'eval')."""
    options, spool, summary, eval_todo = job.options, job.spool, job.summary, job.eval_todo
    todo = set(job.todo)
    tally = Tally()
    batches = _Batches(options, todo, eval_todo)
    held: dict[int, tuple[int, tuple | None]] = {}  # held-out documents: index -> (shard, tokens)
    slots_limit = _MAX_SHARD_TOKEN_SLOTS // options.dupe_factor

    def to_spool(name: str, index: int, content) -> None:
        spool.add(name, index, *content)
        if name != "eval" and spool.tokens[name] > slots_limit:
            raise InputError(f"a shard passed {slots_limit:,} tokens: more than one worker should hold at "
                             f"--dupe_factor {options.dupe_factor} (see docs/data.md); raise --num_shards")

    documents = _raw_documents(job.files, options, tally)
    arguments = ((batch, *vocab, options.lower_case) for batch in batches.tasks(documents))
    bar = tqdm(unit="doc", desc="read", disable=not options.progress)
    for results in job.workers.ordered(tasks.tokenize_documents, arguments):
        placed, results = batches.placements.popleft(), iter(results)
        for place in placed:
            content = next(results) if place.tokenize else None
            if content is not None:
                summary.tokens += len(content[0])
                where = f"{place.source}, document {place.index}"
                if len(content[1]) == 0:
                    tally.add("documents with no text left after cleanup", where)
                    content = None
                elif len(content[1]) == 1:
                    tally.add("one-sentence documents (kept: random-next pairs only)", where)
            if place.evicted is not None:
                shard, evicted_content = held.pop(place.evicted)
                if shard in todo and evicted_content is not None:
                    to_spool(f"part_{shard}", place.evicted, evicted_content)
            if place.held_out:
                held[place.index] = (place.shard, content)
            elif place.shard in todo and content is not None:
                to_spool(f"part_{place.shard}", place.index, content)
        summary.documents += len(placed)
        bar.update(len(placed))
        bar.set_postfix(tokens=f"{summary.tokens:,}", refresh=False)
    bar.close()
    eval_members = batches.eval_members
    if eval_todo:
        for index in eval_members:
            if held[index][1] is not None:
                to_spool("eval", index, held[index][1])
    spool.flush()
    summary.eval_documents = len(eval_members)
    summary.skipped = tally.lines()
    _check_corpus(job, tally)


def _check_corpus(job: _Job, tally: Tally) -> None:
    options, spool, summary = job.options, job.spool, job.summary
    names = ", ".join(str(p) for p, _ in job.files[:3]) + (" ..." if len(job.files) > 3 else "")
    if summary.documents == 0 and tally.counts[LONG_LINES]:
        raise InputError(f"{names}: no documents found: {tally.counts[LONG_LINES]:,} lines were skipped because "
                         f"they are longer than the {MAX_LINE_BYTES:,} bytes allowed (first: "
                         f"{tally.examples[LONG_LINES]}); put one sentence or paragraph per line")
    if summary.documents == 0:
        raise InputError(f"{names}: no documents found (empty files, or no text in the expected format); "
                         "check --input_file and --input_format (records: --text_field)")
    training = summary.documents - summary.eval_documents
    if training < options.num_shards:
        raise InputError(f"{names}: {summary.documents:,} documents, {summary.eval_documents:,} held out for the eval "
                         f"set, leave {training:,} for {options.num_shards:,} shards; lower --num_shards"
                         + (" or --num_eval_documents" if summary.eval_documents else ""))
    empty = [i for i in sorted(job.todo) if spool.documents.get(f"part_{i}", 0) == 0]
    if empty:
        raise InputError(f"{names}: shard {empty[0]} would get no document with text; lower --num_shards")
    if job.eval_todo and spool.documents.get("eval", 0) == 0:
        raise InputError(f"{names}: none of the {summary.eval_documents} held-out documents has text; "
                         "raise --num_eval_documents")


def _build(job: _Job, vocab: VocabIds) -> None:
    """Stage 2: one task per output file, spread over the workers."""
    options, layout, spool, summary = job.options, job.layout, job.spool, job.summary
    instance_options = options.instance_options()
    varlength = layout.varlength
    jobs = [tasks.ShardJob(spool.path(f"part_{i}"), layout.shard_path(i), (options.random_seed, _TRAIN_STREAM, i),
                           instance_options, vocab, varlength) for i in job.todo]
    if job.eval_todo:
        jobs.insert(0, tasks.ShardJob(spool.path("eval"), layout.eval_path, (options.random_seed, _EVAL_STREAM),
                                      instance_options, vocab, varlength, limit=options.num_eval_examples))
    bar = tqdm(unit="inst", desc="build", disable=not options.progress)
    for result in job.workers.unordered(tasks.build_shard, jobs):
        job.finished.record(result.output, result.digest)
        if result.output == layout.eval_path:
            summary.eval_instances = result.instances
            if result.instances < options.num_eval_examples:
                summary.notes.append(f"the eval set has {result.instances:,} instances, fewer than the "
                                     f"{options.num_eval_examples:,} asked for; raise --num_eval_documents")
        else:
            summary.instances += result.instances
            summary.shards_written.append(result.output)
        bar.update(result.instances)
    bar.close()
    summary.shards_written.sort()
