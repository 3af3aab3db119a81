"""`prepare --method reference`: NVIDIA's MLPerf v1.0 data recipe, exactly, without TensorFlow.

    run(PrepareOptions(input_files="results4/part-*", eval_file="results4/eval.txt", vocab_file="vocab.txt",
                       output_dir="DATA", num_shards=2048, num_eval_examples=10000, method="reference"))

Three stages, each made of independent jobs spread over `workers` processes; every output is
written atomically, so a rerun skips what is complete and redoes only the rest:
1. Parts: each input text file gives `reference_parts/<file name>.hdf5`, the arrays NVIDIA's
   create_pretraining_data.py writes for that file with the same flags (prepare/reference/documents.py,
   prepare/reference/instances.py); `--part_range` makes a slice of the sorted files (one per machine).
2. Eval: `--eval_file` through the same path; its first `num_eval_examples` instances are
   `eval_set_uncompressed/part_eval_10k.hdf5`, as pick_eval_samples.py takes the first rows.
3. Cut: once every part is there, all parts' rows in sorted part order are cut into
   `<N>_shards_uncompressed/part_<i>_of_<N>.hdf5` (prepare/reference/shard_cut.py); `--shard_range` cuts a slice.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bert_pretrain.data import shards
from bert_pretrain.data.vocab import check_pretraining_vocab, read_vocab
from bert_pretrain.errors import InputError
from bert_pretrain.folder_lock import FolderBusy
from bert_pretrain.options.prepare import InstanceOptions, PrepareOptions
from bert_pretrain.prepare import records
from bert_pretrain.prepare.instances import VocabIds
from bert_pretrain.prepare.layout import OutputLayout, PrepareSummary
from bert_pretrain.prepare.manifest import FinishedFiles, file_digest
from bert_pretrain.prepare.reference.documents import read_reference_documents
from bert_pretrain.prepare.reference.instances import create_reference_instances, reference_rows
from bert_pretrain.prepare.reference.shard_cut import cut_jobs, write_cut_shard
from bert_pretrain.prepare.text import find_input_files, refuse_binary
from bert_pretrain.prepare.tokenization import WordPieceTokenizer
from bert_pretrain.prepare.workers import Workers

_BLOCK_ROWS = 2048  # rows built and written at once


@dataclass(frozen=True)
class PartJob:
    """Make one text file's instances and write them (only the first `limit` for the eval set)."""

    source: Path
    output: Path
    vocab_file: str
    vocab_sha256: str
    lower_case: bool
    options: InstanceOptions
    seed: int
    limit: int | None = None


@dataclass(frozen=True)
class PartResult:
    output: Path
    instances: int  # written
    documents: int
    tokens: int
    digest: dict  # prepare/manifest.py's record of the file written


def run(options: PrepareOptions) -> PrepareSummary:
    started = time.perf_counter()
    options.check()
    layout = OutputLayout(Path(options.output_dir), options.num_shards, varlength=False)
    parts = _part_files(options, layout)
    first, end = options.part_bounds(len(parts))
    vocab_file = Path(options.vocab_file)
    tokens = read_vocab(vocab_file)
    check_pretraining_vocab(tokens, vocab_file)
    eval_source = Path(options.eval_file) if options.eval_file else None
    if eval_source is not None and not eval_source.is_file():
        raise InputError(f"--eval_file {eval_source}: no such file")
    # the cut's shards are locked when it starts: the runs of the other part ranges may be running still
    with layout.hold(parts=(first, end), shared=eval_source is not None and first == 0):
        vocab_sha256 = hashlib.sha256(vocab_file.read_bytes()).hexdigest()
        layout.prepare_folders(shards=False, with_eval=False)
        layout.check_manifest(options.manifest(parts + ([eval_source] if eval_source else []), vocab_sha256))
        wants_eval = eval_source is not None and first == 0
        layout.prepare_folders(shards=False, with_eval=wants_eval)
        layout.parts_dir.mkdir(exist_ok=True)
        summary = PrepareSummary(layout.output_dir, layout.shard_dir, layout.eval_path if wants_eval else None,
                                 vocab_file, eval_source=eval_source)
        finished = FinishedFiles(layout.manifest_path)
        with Workers(options.workers) as workers:
            shard_paths = [layout.shard_path(i) for i in range(options.num_shards)]
            finished.check(shard_paths, layout.is_complete, workers)
            cut_done = all(finished.is_complete(p) for p in shard_paths)
            jobs = _part_jobs(options, layout, [] if cut_done else parts[first:end],
                              eval_source if wants_eval else None, (str(vocab_file), vocab_sha256), summary,
                              finished, workers)  # a whole cut needs no part (they may be gone)
            try:
                _make_parts(jobs, layout, workers, options, summary, VocabIds.from_tokens(tokens), finished)
                _cut(options, layout, parts, workers, summary, finished)
            finally:
                finished.save()
        summary.notes[:0] = finished.notes()
    summary.seconds = time.perf_counter() - started
    return summary


def _part_files(options: PrepareOptions, layout: OutputLayout) -> list[Path]:
    """The input text files (less prepare's own outputs and the vocab), sorted by name, as the cut
    takes them; names must differ, as each names its part."""
    skip = {Path(p).resolve() for p in (options.vocab_file, options.eval_file) if p}
    files = sorted((p for p in find_input_files(options.input_list())
                    if not layout.is_output(p) and p.resolve() not in skip), key=lambda p: p.name)
    if not files:
        raise InputError(f"--input_file {' '.join(options.input_list())}: holds no text file besides the vocab, "
                         f"the eval file and prepare's own outputs")
    for path in files:
        if (fmt := records.detect_format(path)) is not None:  # NVIDIA's script would take each JSON line as a sentence
            raise InputError(f"{path}: is {records.FORMAT_NAMES[fmt]}, not text; --method reference reads text files "
                             "(one sentence per line) as NVIDIA's script does: drop --method reference to read records")
        refuse_binary(path)  # only what is clearly not text: invalid UTF-8 in text stops the reference too
    for one, two in zip(files, files[1:]):
        if one.name == two.name:
            raise InputError(f"--input_file: {one} and {two} have the same name, and a part is named after its "
                             "file; rename one")
    return files


def _part_jobs(options, layout, parts, eval_source, vocab, summary, finished: FinishedFiles,
               workers: Workers) -> list[PartJob]:
    """The jobs whose output is not complete yet (what a killed run left half-written is deleted)."""
    instance_options = options.instance_options()
    wanted = [(path, layout.part_path(path), None) for path in parts]
    if eval_source is not None:
        wanted.insert(0, (eval_source, layout.eval_path, options.num_eval_examples))
    for _, output, _ in wanted:
        layout.remove_temporaries(output)
    finished.check([output for _, output, _ in wanted], _is_whole, workers)
    jobs = []
    for source, output, limit in wanted:
        if not finished.is_complete(output):
            jobs.append(PartJob(source, output, *vocab, options.lower_case, instance_options, options.random_seed,
                                limit))
        elif limit is None:
            summary.parts_skipped.append(output)
    return jobs


def _is_whole(path: Path) -> bool:
    """A file with its final name was written whole (atomic rename); a part may have no rows."""
    try:
        shards.num_samples(path)
        return True
    except InputError:
        return False


def _make_parts(jobs, layout, workers: Workers, options, summary: PrepareSummary, vocab: VocabIds,
                finished: FinishedFiles) -> None:
    bar = tqdm(total=len(jobs), unit="part", desc="parts", disable=not options.progress)
    for result in workers.unordered(functools.partial(build_part, vocab=vocab), jobs):
        finished.record(result.output, result.digest)
        if result.output == layout.eval_path:
            summary.eval_instances, summary.eval_documents = result.instances, result.documents
            if result.instances < options.num_eval_examples:
                summary.notes.append(f"the eval set has {result.instances:,} instances, fewer than the "
                                     f"{options.num_eval_examples:,} asked for: --eval_file makes no more")
        else:
            summary.parts_written.append(result.output)
            summary.part_instances += result.instances
        summary.tokens += result.tokens
        bar.update()
        bar.set_postfix(instances=f"{summary.part_instances + summary.eval_instances:,}", refresh=False)
    bar.close()
    summary.parts_written.sort()


@functools.lru_cache(maxsize=2)
def _tokenizer(vocab_file: str, vocab_sha256: str, lower_case: bool) -> WordPieceTokenizer:
    """One exact tokenizer per process and vocab: its memo then serves every part the process makes."""
    return WordPieceTokenizer.from_vocab_file(vocab_file, lower_case, exact=True)


def build_part(job: PartJob, vocab: VocabIds) -> PartResult:
    """Read, make the instances, write them in the reference's final order, block by block."""
    docs = read_reference_documents(job.source, _tokenizer(job.vocab_file, job.vocab_sha256, job.lower_case))
    instances = create_reference_instances(docs, job.options, vocab.vocab_size, job.seed)
    rows = len(instances) if job.limit is None else min(job.limit, len(instances))
    with shards.padded_writer(job.output, rows, job.options.max_seq_length,
                              job.options.max_predictions_per_seq) as write:
        for lo in range(0, rows, _BLOCK_ROWS):
            write(reference_rows(instances, slice(lo, min(rows, lo + _BLOCK_ROWS)), job.options, vocab))
    return PartResult(job.output, rows, docs.num_documents, len(docs.tokens), file_digest(job.output))


def _cut(options, layout: OutputLayout, parts: list[Path], workers: Workers, summary: PrepareSummary,
         finished: FinishedFiles) -> None:
    """Stage 3, once every part is there: the shards of --shard_range that are not complete yet (`run`
    checked them all)."""
    first, end = options.shard_bounds()
    try:
        with layout.hold(shards=(first, end)):
            _cut_shards(options, layout, parts, (first, end), workers, summary, finished)
    except FolderBusy as busy:  # the run of another part range has made the last part too, and cuts
        summary.notes.append(f"the cut is left to the run making it now: {busy}")


def _cut_shards(options, layout: OutputLayout, parts: list[Path], shard_range: tuple[int, int], workers: Workers,
                summary: PrepareSummary, finished: FinishedFiles) -> None:
    first, end = shard_range
    outputs = [layout.shard_path(i) for i in range(options.num_shards)]
    for path in outputs[first:end]:
        layout.remove_temporaries(path)
    summary.shards_skipped = [p for p in outputs[first:end] if finished.is_complete(p)]
    if len(summary.shards_skipped) == end - first:
        return
    part_paths = [layout.part_path(p) for p in parts]
    finished.check(part_paths, _is_whole, workers)
    missing = [p for p in part_paths if not finished.is_complete(p)]
    if missing:
        summary.notes.append(f"the cut into {options.num_shards} shards waits for all {len(parts)} parts: "
                             f"{len(missing)} are not made yet (the first: {missing[0]}); rerun when the runs of "
                             "the other --part_range slices are done")
        return
    counts = [shards.num_samples(p) for p in part_paths]
    if sum(counts) < options.num_shards:
        raise InputError(f"{layout.parts_dir}: the parts hold {sum(counts):,} instances, fewer than --num_shards "
                         f"{options.num_shards}; lower --num_shards")
    layout.shard_dir.mkdir(exist_ok=True)
    jobs = [job for job in cut_jobs(part_paths, counts, outputs, options.max_seq_length,
                                    options.max_predictions_per_seq)[first:end]
            if job.output not in summary.shards_skipped]
    bar = tqdm(total=len(jobs), unit="shard", desc="cut", disable=not options.progress)
    for job, digest in workers.unordered(_write_cut_shard, jobs):
        finished.record(job.output, digest)
        summary.shards_written.append(job.output)
        summary.instances += job.rows
        bar.update()
    bar.close()
    summary.shards_written.sort()


def _write_cut_shard(job) -> tuple:
    """In a worker: one cut shard, and the record of its bytes (read while they are in the page cache)."""
    write_cut_shard(job)
    return job, file_digest(job.output)
