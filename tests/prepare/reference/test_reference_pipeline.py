"""`prepare --method reference`: NVIDIA's own output on sample_text.txt, the transcription of its script on
real Wikipedia text and on corpora that take its rare branches, the eval pick, reruns, ranges, errors."""

import random
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import (
    SHARED_DATA,
    change_a_word,
    cli_here,
    flip_byte,
    load_reference_peer,
    restore,
    run_cli,
    write_wiki_sentences,
)

from bert_pretrain.data import shards
from bert_pretrain.data.vocab import read_vocab
from bert_pretrain.errors import InputError
from bert_pretrain.options.prepare import InstanceOptions, PrepareOptions
from bert_pretrain.prepare import input_digests
from bert_pretrain.prepare.instances import VocabIds
from bert_pretrain.prepare.pipeline import run
from bert_pretrain.prepare.reference import pipeline as reference_prepare
from bert_pretrain.prepare.reference.documents import read_reference_documents
from bert_pretrain.prepare.reference.instances import create_reference_instances, reference_rows
from bert_pretrain.prepare.tokenization import WordPieceTokenizer

KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels")


@pytest.fixture(scope="module")
def shared():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def vocab(shared):
    return shared / "vocab" / "bert-uncased-vocab.txt"


@pytest.fixture(scope="module")
def peer():
    return load_reference_peer()


def read_all(path) -> dict:
    with h5py.File(path, "r") as f:
        return {key: f[key][:] for key in f}


def assert_same(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype, key
        assert ours[key].shape == theirs[key].shape, key
        assert np.array_equal(ours[key], theirs[key]), key


def exact_arrays(text, vocab, seq, pred, dupe, seed, prob=0.15, short=0.1, lower_case=True) -> dict:
    """The reference method on one file, in process: what build_part writes for it."""
    tokenizer = WordPieceTokenizer.from_vocab_file(vocab, lower_case, exact=True)
    options = InstanceOptions(seq, pred, prob, short, dupe)
    instances = create_reference_instances(read_reference_documents(text, tokenizer), options,
                                           tokenizer.vocab_size, seed)
    ids = VocabIds.from_tokens(tokenizer.tokens)
    arrays = reference_rows(instances, slice(None), options, ids)
    return {key: arrays[key].astype(shards.PADDED_DTYPES[key]) for key in KEYS}


def test_equals_nvidia_s_own_output_on_sample_text(shared, vocab, tmp_path):
    """create_pretraining_data.py's demo flags (128/20/0.15/seed 12345/dupe 5), through the CLI."""
    nvidia = read_all(shared / "mlperf" / "reference_outputs" / "nvidia_sample_text_128.hdf5")
    proc = run_cli("prepare", "--method", "reference", "--input_file", str(shared / "google_bert" / "sample_text.txt"),
                   "--vocab_file", str(vocab), "--output_dir", str(tmp_path), "--do_lower_case=True",
                   "--max_seq_length", "128", "--max_predictions_per_seq", "20", "--masked_lm_prob", "0.15",
                   "--random_seed", "12345", "--dupe_factor", "5", "--num_shards", "1", "--workers", "1",
                   "--no_progress")
    assert proc.returncode == 0, proc.stderr
    assert_same(read_all(tmp_path / "reference_parts" / "sample_text.txt.hdf5"), nvidia)
    assert_same(read_all(tmp_path / "1_shards_uncompressed" / "part_0_of_1.hdf5"), nvidia)  # one shard: all rows


@pytest.fixture(scope="module")
def wiki_small(shared, tmp_path_factory):
    return write_wiki_sentences(shared, tmp_path_factory.mktemp("wiki") / "wiki_small.txt", limit_bytes=150_000)


@pytest.mark.parametrize("seed", [12345, 0, 7])
def test_equals_the_transcription_on_wikipedia_text_128(peer, vocab, wiki_small, seed):
    theirs = peer.create_pretraining_data(wiki_small, vocab, True, 128, 20, 0.15, 0.1, 2, seed)
    assert_same(exact_arrays(wiki_small, vocab, 128, 20, 2, seed), theirs)


@pytest.mark.slow
@pytest.mark.parametrize("seq,pred,dupe,seeds", [(512, 76, 2, [12345]), (128, 20, 3, [12345, 2])])
def test_equals_the_transcription_on_the_whole_mlperf_wikipedia_sample(peer, vocab, shared, tmp_path, seq, pred,
                                                                        dupe, seeds):
    text = write_wiki_sentences(shared, tmp_path / "wiki.txt")
    reference = peer.FullTokenizer(vocab, True)
    documents = peer.read_documents(text, reference)  # tokenized once, drawn per seed
    for seed in seeds:
        instances = peer.reference_instances(documents, seq, pred, 0.15, 0.1, dupe, list(reference.vocab),
                                             random.Random(seed))
        assert_same(exact_arrays(text, vocab, seq, pred, dupe, seed), peer.instance_arrays(
            instances, reference.vocab, seq, pred))


def rare_branch_corpus(rng: np.random.Generator, words: list[str], documents: int, max_sentences: int,
                       max_words: int) -> str:
    """Documents of random real words: one-sentence documents, long sentences (truncation), short
    ones, and lines the reader must handle as the reference's does."""
    out = []
    for _ in range(documents):
        lines = [" ".join(rng.choice(words, int(rng.integers(1, max_words + 1))))
                 for _ in range(int(rng.integers(1, max_sentences + 1)))]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


@pytest.fixture(scope="module")
def words(shared):
    text = (shared / "google_bert" / "sample_text.txt").read_text(encoding="utf-8")
    return sorted(set(text.split()))


@pytest.mark.parametrize("case", range(40))
def test_equals_the_transcription_where_the_rare_branches_are_taken(peer, vocab, words, tmp_path, case):
    """Tiny corpora (one document: the random document is the same one after 10 tries), one-sentence
    documents (always random next), sentences longer than the sequence (truncation of both sides),
    short sequences, extreme probabilities."""
    rng = np.random.default_rng(case)
    documents = [1, 2, 3, 8][case % 4]
    text = tmp_path / "tiny.txt"
    text.write_text(rare_branch_corpus(rng, words, documents, max_sentences=[1, 3, 12][case % 3],
                                       max_words=[3, 40, 200][case % 5 % 3]), encoding="utf-8")
    seq = [8, 16, 64, 128][case % 4]
    pred = [1, 5, 20][case % 3]
    prob, short = [(0.15, 0.1), (0.5, 1.0), (0.01, 0.0), (0.9, 0.5)][case % 4]
    seed = 1000 + case
    theirs = peer.create_pretraining_data(text, vocab, True, seq, pred, prob, short, 3, seed)
    assert_same(exact_arrays(text, vocab, seq, pred, 3, seed, prob, short), theirs)


def test_the_reader_splits_lines_and_documents_as_the_reference(peer, vocab, tmp_path):
    """Lines end at '\\n' only (not at \\r, \\x0b, \\x0c, \\x1c, \\x85, U+2028, which str.splitlines() splits
    at), every '\\r' is dropped, a whitespace-only line ends a document, a line without tokens does not,
    a BOM is a character; cased too."""
    text = tmp_path / "odd.txt"
    text.write_bytes("\ufeffFirst line\r\nsecond\rhalf and\x0bmore\x0cand\x1cmore\n\u00a0\n"
                     "third document\x85here\u2028and there\n\x00\x01\n\u200b\nstill the third\n \t \n"
                     "fourth, last line without a newline".encode())
    for lower_case in (True, False):
        reference = peer.FullTokenizer(vocab, lower_case)
        expected = [[[reference.vocab[t] for t in sentence] for sentence in document]
                    for document in peer.read_documents(text, reference)]
        docs = read_reference_documents(text, WordPieceTokenizer.from_vocab_file(vocab, lower_case, exact=True))
        got = [[docs.tokens[docs.sentence_starts[s]:docs.sentence_starts[s + 1]].tolist()
                for s in range(docs.doc_starts[d], docs.doc_starts[d + 1])] for d in range(docs.num_documents)]
        assert got == expected and len(got) == 3


def test_text_that_is_not_utf8_is_a_one_line_error_naming_the_file_and_line(vocab, tmp_path):
    text = tmp_path / "latin1.txt"
    text.write_bytes("fine\n\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.txt: line 3 is not UTF-8.*re-encode"):
        read_reference_documents(text, WordPieceTokenizer.from_vocab_file(vocab, True, exact=True))


def reference_options(parts, out, vocab, **overrides) -> PrepareOptions:
    values = dict(input_files=[str(p) for p in parts], vocab_file=str(vocab), output_dir=str(out), method="reference",
                  max_seq_length=64, max_predictions_per_seq=10, dupe_factor=2, num_shards=5, workers=1,
                  progress=False)
    return PrepareOptions(**{**values, **overrides})


@pytest.fixture(scope="module")
def release(shared, tmp_path_factory):
    """Three part files and an eval file cut from the real text, as MLCommons' results4/ lays them out."""
    folder = tmp_path_factory.mktemp("results4")
    text = write_wiki_sentences(shared, folder / "all.txt", limit_bytes=120_000).read_text(encoding="utf-8")
    (folder / "all.txt").unlink()
    sentences = [line for line in text.split("\n") if line.strip()]
    sizes = np.random.default_rng(0).integers(1, 16, len(sentences))  # documents of 1 to 15 real sentences
    starts = np.cumsum(sizes)[np.cumsum(sizes) < len(sentences)]
    documents = ["\n".join(d) for d in np.split(np.array(sentences, dtype=object), starts)]
    for i in range(3):
        (folder / f"part-0000{i}-of-00003").write_text("\n\n".join(documents[i * 20:(i + 1) * 20]) + "\n")
    (folder / "eval.txt").write_text("\n\n".join(documents[60:80]) + "\n")
    return folder


def part_files(release):
    return sorted(release.glob("part-*"))


def test_parts_eval_pick_and_cut_are_the_transcription_s_rows(peer, vocab, release, tmp_path):
    summary = run(reference_options(part_files(release), tmp_path, vocab, eval_file=str(release / "eval.txt"),
                                    num_eval_examples=25, workers=2))
    expected = [peer.create_pretraining_data(p, vocab, True, 64, 10, 0.15, 0.1, 2, 12345) for p in part_files(release)]
    for path, arrays in zip(part_files(release), expected):
        assert_same(read_all(tmp_path / "reference_parts" / f"{path.name}.hdf5"), arrays)
    eval_all = peer.create_pretraining_data(release / "eval.txt", vocab, True, 64, 10, 0.15, 0.1, 2, 12345)
    assert_same(read_all(tmp_path / "eval_set_uncompressed" / "part_eval_10k.hdf5"),
                {k: v[:25] for k, v in eval_all.items()})  # pick_eval_samples.py: the first rows
    shard_files = [tmp_path / "5_shards_uncompressed" / f"part_{i}_of_5.hdf5" for i in range(5)]
    cut = [read_all(p) for p in shard_files]
    total = sum(len(a["next_sentence_labels"]) for a in expected)
    sizes = [len(c["next_sentence_labels"]) for c in cut]
    assert sizes == [total // 5 + (i < total % 5) for i in range(5)] and max(sizes) - min(sizes) <= 1
    joined = {k: np.concatenate([c[k] for c in cut]) for k in KEYS}
    assert_same(joined, {k: np.concatenate([a[k] for a in expected]) for k in KEYS})  # in part order, none lost
    assert summary.part_instances == total == summary.instances and summary.eval_instances == 25
    assert sorted(p.name for p in (tmp_path / "5_shards_uncompressed").iterdir()) == sorted(p.name for p in shard_files)


def test_a_rerun_redoes_nothing_finished_and_part_ranges_give_the_same_bytes(vocab, release, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    run(reference_options(part_files(release), whole, vocab, eval_file=str(release / "eval.txt"), num_eval_examples=25))
    sliced = tmp_path / "sliced"
    first = run(reference_options(part_files(release), sliced, vocab, eval_file=str(release / "eval.txt"),
                                  num_eval_examples=25, part_range="0:1"))
    assert len(first.parts_written) == 1 and not first.shards_written and "waits for all 3 parts" in first.report()
    (sliced / "reference_parts" / ".part-00002-of-00003.hdf5.tmp-999").write_bytes(b"half")  # a killed run's
    built = []
    monkeypatch.setattr(reference_prepare, "build_part",
                        lambda job, vocab, real=reference_prepare.build_part: built.append(job.source.name) or
                        real(job, vocab))
    second = run(reference_options(part_files(release), sliced, vocab, eval_file=str(release / "eval.txt"),
                                   num_eval_examples=25, part_range="1:3"))
    assert built == ["part-00001-of-00003", "part-00002-of-00003"] and len(second.shards_written) == 5
    assert not list((sliced / "reference_parts").glob(".*tmp*"))
    for path in sorted(whole.rglob("*.hdf5")):
        assert_same(read_all(sliced / path.relative_to(whole)), read_all(path))
    built.clear()
    again = run(reference_options(part_files(release), sliced, vocab, eval_file=str(release / "eval.txt"), num_eval_examples=25))
    assert built == [] and not again.shards_written and len(again.shards_skipped) == 5
    assert len(again.parts_skipped) == 0 and "5 already complete" in again.report()  # a whole cut needs no part
    shard = sliced / "5_shards_uncompressed" / "part_2_of_5.hdf5"
    original = flip_byte(shard)  # changed in place after it was written: made again from the parts
    mended = run(reference_options(part_files(release), sliced, vocab, eval_file=str(release / "eval.txt"),
                                   num_eval_examples=25))
    assert built == [] and mended.shards_written == [shard] and shard.read_bytes() == original
    assert "1 finished files changed since they were written" in mended.report()
    shutil.rmtree(sliced / "reference_parts")  # as prepare-mlperf does once the cut is whole
    gone = run(reference_options(part_files(release), sliced, vocab, eval_file=str(release / "eval.txt"),
                                 num_eval_examples=25))
    assert built == [] and len(gone.shards_skipped) == 5 and not gone.notes


@pytest.mark.parametrize("change,message", [
    (dict(vocab_file=None, vocab_size=100), "pass --vocab_file, not --vocab_size"),
    (dict(whole_word_mask=True), "no whole-word masking"),
    (dict(format="varlength"), "drop --format varlength"),
    (dict(input_format="wikiextractor"), "from text files"),
    (dict(num_eval_examples=10), "takes the eval set from --eval_file"),
    (dict(eval_file="eval.txt"), "--eval_file needs --num_eval_examples"),
    (dict(part_range="2:9"), "--part_range 2:9: needs 0 <= FIRST <= END <= the number of input files (3)"),
    (dict(num_shards=10_000), "fewer than --num_shards 10000; lower --num_shards"),
])
def test_bad_options_are_one_line_errors(vocab, release, tmp_path, change, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(reference_options(part_files(release), tmp_path, vocab, **change))


def test_the_default_method_refuses_the_reference_s_options(vocab, release, tmp_path):
    for change, flag in ((dict(eval_file="e.txt"), "--eval_file is for --method reference"),
                         (dict(part_range="0:1"), "--part_range is for --method reference")):
        with pytest.raises(InputError, match=flag):
            run(reference_options(part_files(release), tmp_path, vocab, method="default", **change))


def test_another_setting_into_the_same_folder_is_refused(vocab, release, tmp_path):
    run(reference_options(part_files(release)[:1], tmp_path, vocab, num_shards=1))
    with pytest.raises(InputError, match="other settings.*dupe_factor"):
        run(reference_options(part_files(release)[:1], tmp_path, vocab, num_shards=1, dupe_factor=3))


def test_parts_with_the_same_name_are_refused(vocab, release, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(part_files(release)[0], other)
    with pytest.raises(InputError, match="have the same name"):
        run(reference_options([*part_files(release), other / part_files(release)[0].name], tmp_path / "out", vocab))


def test_the_vocab_is_read_as_the_reference_reads_it(vocab, peer):
    assert read_vocab(vocab) == list(peer.load_vocab(vocab))


def test_binary_input_is_refused_naming_the_file(vocab, tmp_path):
    """Random bytes without a NUL are refused before any part is made; text the reference reads is not."""
    noise = tmp_path / "in" / "noise.txt"
    noise.parent.mkdir()
    noise.write_bytes(bytes(b for b in random.Random(1).randbytes(20_000) if b))
    proc = cli_here("prepare", "--method", "reference", "--input_file", str(noise.parent), "--vocab_file", str(vocab),
                    "--output_dir", str(tmp_path / "out"), "--num_shards", "1", "--workers", "1", "--no_progress")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "noise.txt: has" in proc.stderr and "so it is not text" in proc.stderr


def test_a_part_changed_in_content_alone_is_made_again_and_so_is_the_cut(vocab, release, tmp_path, monkeypatch):
    """Issue 21's repro for the reference method: one word of a part changed (size and mtime kept), rerun,
    restored, rerun: that part alone is made again each time, the cut follows, and every array equals
    the clean build's; the report names the part. The eval set follows its --eval_file the same way."""
    monkeypatch.setattr(input_digests, "_RACY_WINDOW_NS", 0)  # the files are seconds old: trust their status
    text = tmp_path / "results4"
    shutil.copytree(release, text)
    options = reference_options(part_files(text), tmp_path / "out", vocab, eval_file=str(text / "eval.txt"),
                                num_eval_examples=25)
    run(options)
    clean = {p.relative_to(tmp_path / "out"): read_all(p) for p in sorted((tmp_path / "out").rglob("*.hdf5"))}
    built = []
    monkeypatch.setattr(reference_prepare, "build_part",
                        lambda job, vocab, real=reference_prepare.build_part: built.append(job.source.name) or
                        real(job, vocab))
    part = text / "part-00000-of-00003"
    original = change_a_word(part)
    changed = run(options)
    assert built == [part.name] and len(changed.shards_written) == 5
    assert f"1 input files changed since an earlier run read them (md5 differs): {part}" in changed.report()
    assert not np.array_equal(read_all(tmp_path / "out" / "reference_parts" / f"{part.name}.hdf5")["input_ids"],
                              clean[Path("reference_parts") / f"{part.name}.hdf5"]["input_ids"])
    restore(part, original)
    eval_text = change_a_word(text / "eval.txt", "the", "she")
    built.clear()
    restored = run(options)
    assert built == ["eval.txt", part.name] and len(restored.shards_written) == 5
    restore(text / "eval.txt", eval_text)
    built.clear()
    again = run(options)
    assert built == ["eval.txt"] and not again.shards_written
    for name, arrays in clean.items():
        assert_same(read_all(tmp_path / "out" / name), arrays)


def test_a_run_refused_after_its_parts_keeps_them_and_leaves_no_lock_or_empty_folder(vocab, release, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="fewer than --num_shards 10000"):
        run(reference_options(part_files(release), out, vocab, num_shards=10_000))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "prepare_manifest.json", "reference_parts", *(f"reference_parts/{p.name}.hdf5" for p in part_files(release))]
    assert len(run(reference_options(part_files(release), out, vocab)).parts_skipped) == 3  # the parts serve


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_an_eval_file_without_text_is_refused_not_reported_complete(vocab, release, tmp_path, content):
    (tmp_path / "eval.txt").write_bytes(content)
    proc = cli_here("prepare", "--method", "reference", "--input_file", str(part_files(release)[0]), "--vocab_file",
                    str(vocab), "--output_dir", str(tmp_path / "out"), "--eval_file", str(tmp_path / "eval.txt"),
                    "--num_eval_examples", "10", "--num_shards", "1", "--workers", "1", "--no_progress")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stdout + proc.stderr
    assert f"--eval_file {tmp_path / 'eval.txt'}: makes no instance (0 documents with text)" in proc.stderr
    assert not (tmp_path / "out" / "eval_set_uncompressed").exists()


def test_a_part_given_twice_is_refused(vocab, release, tmp_path):
    """The same bytes under two names (a part copied, or the eval file among the parts): refused, not read twice."""
    copy = tmp_path / "part-00003-of-00003"
    shutil.copy(part_files(release)[0], copy)
    with pytest.raises(InputError, match="part-00000-of-00003 and .*part-00003-of-00003: the same bytes"):
        run(reference_options([*part_files(release), copy], tmp_path / "out", vocab))
    shutil.copy(part_files(release)[1], tmp_path / "eval.txt")
    with pytest.raises(InputError, match="part-00001-of-00003 and .*eval.txt: the same bytes"):
        run(reference_options(part_files(release), tmp_path / "out", vocab, eval_file=str(tmp_path / "eval.txt"),
                              num_eval_examples=5))
    assert not (tmp_path / "out").exists()
