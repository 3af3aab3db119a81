"""`prepare` end to end: the reference demo on sample_text.txt, DATA folders from the MLPerf wiki sample and
the XML dump read by `evaluate`, determinism across workers and machines, reruns, and bad inputs."""

import bz2
import errno
import json
import random
import shutil

import h5py
import numpy as np
import pytest
import torch
from conftest import check_reference_invariants, cli_here, flip_byte, restored_rows, run_cli, tiny_config

from bert_pretrain import cli
from bert_pretrain.data import shards
from bert_pretrain.data.shards import ShardShape
from bert_pretrain.data.vocab import read_vocab
from bert_pretrain.errors import InputError
from bert_pretrain.folder_lock import LOCK_FILE
from bert_pretrain.model import BertForPreTraining
from bert_pretrain.options.fields import from_args
from bert_pretrain.options.prepare import PrepareOptions
from bert_pretrain.prepare.pipeline import run
from bert_pretrain.prepare.tokenization import WordPieceTokenizer
from bert_pretrain.weights import save_reference_checkpoint

SMALL = dict(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=1, progress=False)


@pytest.fixture
def vocab(shared_data):
    return str(shared_data / "vocab" / "bert-uncased-vocab.txt")


def all_arrays(folder):
    return {p.relative_to(folder).as_posix(): shards.read_padded(p) if shards.shard_format(p) == "padded"
            else shards.read_varlength(p) for p in sorted(folder.rglob("*.hdf5"))}


def same_arrays(one: dict, two: dict) -> bool:
    return one.keys() == two.keys() and all(
        np.array_equal(one[f][k], two[f][k]) for f in one for k in one[f])


def contains_run(haystack: np.ndarray, needle: np.ndarray) -> bool:
    if len(needle) > len(haystack):
        return False
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return bool((windows == needle).all(1).any())


def test_reference_demo_on_sample_text(shared_data, vocab, tmp_path):
    """create_pretraining_data.py's README demo flags: 128/20/0.15/seed 12345/dupe 5."""
    sample = shared_data / "google_bert" / "sample_text.txt"
    result = run_cli("prepare", "--input_file", str(sample), "--vocab_file", vocab, "--output_dir", str(tmp_path),
                     "--max_seq_length", "128", "--max_predictions_per_seq", "20", "--masked_lm_prob", "0.15",
                     "--random_seed", "12345", "--dupe_factor", "5", "--workers", "1", "--no_progress")
    assert result.returncode == 0, result.stderr
    assert "becomes a DATA folder" in result.stdout
    arrays = shards.read_padded(tmp_path / "1_shards_uncompressed" / "part_0_of_1.hdf5",
                                ShardShape(128, 20, 30522))
    assert all(arrays[k].dtype == dtype for k, dtype in shards.PADDED_DTYPES.items())
    tokenizer = WordPieceTokenizer.from_vocab_file(vocab)
    segments = check_reference_invariants(arrays, tokenizer.ids["[CLS]"], tokenizer.ids["[SEP]"], 0.15, 20)
    documents = [tokenizer.encode_sentences(doc.split("\n"))[0] for doc in sample.read_text().split("\n\n")]
    for a, b in segments:  # every segment is a run of one document's own WordPiece tokens
        assert any(contains_run(doc, a) for doc in documents) and any(contains_run(doc, b) for doc in documents)
    shown = np.concatenate([s for _, _, s in restored_rows(arrays)])
    labels = np.concatenate([t[p] for t, p, _ in restored_rows(arrays)])
    mask = tokenizer.ids["[MASK]"]
    assert len(shown) > 500
    assert abs(np.mean(shown == mask) - 0.8) < 0.06
    assert abs(np.mean(shown == labels) - 0.1) < 0.05 and abs(np.mean((shown != mask) & (shown != labels)) - 0.1) < 0.05
    assert 0.3 < arrays["next_sentence_labels"].mean() < 0.75


def evaluate_json(data_dir, capsys, vocab_size, seq, pred) -> dict:
    """`bert-pretrain evaluate` of a tiny random model on the eval set of `data_dir` (in this process)."""
    config = tiny_config(vocab_size=vocab_size, max_position_embeddings=seq)
    torch.manual_seed(0)
    save_reference_checkpoint(BertForPreTraining(config), data_dir / "model.pt")
    (data_dir / "bert_config.json").write_text(json.dumps(config.to_dict()))
    capsys.readouterr()
    code = cli.main(["evaluate", "--init_checkpoint", str(data_dir / "model.pt"), "--bert_config_path",
                     str(data_dir / "bert_config.json"), "--eval_dir", str(data_dir / "eval_set_uncompressed"),
                     "--max_seq_length", str(seq), "--max_predictions_per_seq", str(pred), "--eval_batch_size", "16",
                     "--device", "cpu"])
    assert code == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("source", ["corpus/mlperf_wiki_sample", "wikidump"])
def test_data_folder_is_read_by_evaluate(shared_data, vocab, tmp_path, capsys, source):
    summary = run(PrepareOptions(input_files=str(shared_data / source), vocab_file=vocab, output_dir=str(tmp_path),
                                 num_shards=3, num_eval_examples=50, num_eval_documents=5, workers=2, **SMALL))
    assert len(summary.shards_written) == 3 and summary.instances > 1000 and summary.eval_instances == 50
    assert summary.eval_documents == 5 and summary.documents > 100
    names = sorted(p.name for p in (tmp_path / "3_shards_uncompressed").iterdir())
    assert names == [f"part_{i}_of_3.hdf5" for i in range(3)]
    sizes = [shards.num_samples(tmp_path / "3_shards_uncompressed" / n) for n in names]
    assert max(sizes) < 1.5 * min(sizes)
    result = evaluate_json(tmp_path, capsys, 30522, 64, 10)
    assert result["samples"] == 50 and result["masked_tokens"] > 300 and 0 <= result["mlm_accuracy"] < 0.01


def test_same_seed_same_shards_for_any_workers_or_shard_ranges(shared_data, vocab, tmp_path):
    options = dict(input_files=[str(shared_data / "corpus" / "mlperf_wiki_sample" / "wiki_00"),
                                str(shared_data / "google_bert" / "sample_text.txt")],
                   vocab_file=vocab, num_shards=4, num_eval_examples=40, num_eval_documents=4, **SMALL)
    run(PrepareOptions(output_dir=str(tmp_path / "one"), workers=1, **options))
    run(PrepareOptions(output_dir=str(tmp_path / "two"), workers=2, **options))
    run(PrepareOptions(output_dir=str(tmp_path / "split"), workers=1, shard_range="0:1", **options))
    run(PrepareOptions(output_dir=str(tmp_path / "split"), workers=2, shard_range="1:4", **options))
    one = all_arrays(tmp_path / "one")
    assert len(one) == 5 and same_arrays(one, all_arrays(tmp_path / "two"))
    assert same_arrays(one, all_arrays(tmp_path / "split"))
    other = run(PrepareOptions(output_dir=str(tmp_path / "seed"), workers=1, **{**options, "random_seed": 1}))
    assert other.instances > 0 and not same_arrays(one, all_arrays(tmp_path / "seed"))


def test_eval_documents_never_in_training_shards(shared_data, vocab, tmp_path):
    """Every eval segment's WordPiece run occurs in a held-out document, and in no training instance."""
    run(PrepareOptions(input_files=str(shared_data / "corpus" / "mlperf_wiki_sample" / "wiki_03"), vocab_file=vocab,
                       output_dir=str(tmp_path), num_shards=2, num_eval_examples=30, num_eval_documents=3,
                       workers=1, **SMALL))
    tokens = lambda path: [t for t, _, _ in restored_rows(shards.read_padded(path))]  # noqa: E731
    train_rows = [t for p in sorted((tmp_path / "2_shards_uncompressed").iterdir()) for t in tokens(p)]
    train_stream = np.concatenate(train_rows)
    checked = 0
    for row in tokens(tmp_path / "eval_set_uncompressed" / "part_eval_10k.hdf5"):
        first_segment = row[1:np.flatnonzero(row == 102)[0]]
        if len(first_segment) >= 10:
            assert not contains_run(train_stream, first_segment)
            checked += 1
    assert checked >= 10


def test_rerun_skips_complete_shards_and_redoes_partial_ones(shared_data, vocab, tmp_path):
    options = PrepareOptions(input_files=str(shared_data / "corpus" / "mlperf_wiki_sample" / "wiki_01"),
                             vocab_file=vocab, output_dir=str(tmp_path), num_shards=3, workers=1, **SMALL)
    run(options)
    before = all_arrays(tmp_path)
    folder = tmp_path / "3_shards_uncompressed"
    (folder / "part_1_of_3.hdf5").unlink()
    (folder / "part_2_of_3.hdf5").write_bytes(b"half a shard")  # not HDF5: redone
    (folder / ".part_0_of_3.hdf5.tmp-999").write_bytes(b"left by a killed run")
    again = run(options)
    assert [p.name for p in again.shards_skipped] == ["part_0_of_3.hdf5"]
    assert [p.name for p in again.shards_written] == ["part_1_of_3.hdf5", "part_2_of_3.hdf5"]
    assert same_arrays(before, all_arrays(tmp_path)) and not list(folder.glob(".*"))
    assert not (tmp_path / "eval_set_uncompressed").exists()  # no eval set asked for: no empty eval folder
    assert not run(options).shards_written
    with pytest.raises(InputError, match="other settings.*max_seq_length: 64 then, 128 now"):
        run(PrepareOptions(**{**options.__dict__, "max_seq_length": 128}))
    # Other settings that write to other folders share the manifest: refused too, creating nothing.
    for change in ({"num_shards": 2}, {"format": "varlength"}):
        with pytest.raises(InputError, match="other settings"):
            run(PrepareOptions(**{**options.__dict__, **change}))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != LOCK_FILE) == ["3_shards_uncompressed",
                                                                                 "prepare_manifest.json"]
    assert not run(options).shards_written  # the folder's own settings still run


def test_a_shard_changed_in_place_is_made_again(shared_data, vocab, tmp_path):
    """A byte changed in a finished shard (size kept) differs from its CRC-32 in the manifest: a rerun makes
    that shard again, equal to the original, and says so; a shard without a record is opened and recorded."""
    options = PrepareOptions(input_files=str(shared_data / "google_bert" / "sample_text.txt"), vocab_file=vocab,
                             output_dir=str(tmp_path), num_shards=3, workers=1, **SMALL)
    run(options)
    changed = tmp_path / "3_shards_uncompressed" / "part_1_of_3.hdf5"
    original = flip_byte(changed)
    again = run(options)
    assert [p.name for p in again.shards_written] == ["part_1_of_3.hdf5"] and len(again.shards_skipped) == 2
    assert changed.read_bytes() == original
    assert f"1 finished files changed since they were written (size or CRC-32 differs from prepare_manifest.json) " \
           f"and were made again; the first: {changed}" in again.report()
    manifest = tmp_path / "prepare_manifest.json"
    records = json.loads(manifest.read_text()).pop("finished_files")
    assert sorted(records) == [f"3_shards_uncompressed/part_{i}_of_3.hdf5" for i in range(3)]
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "finished_files"}))
    unrecorded = run(options)  # as a folder made before the records were kept
    assert not unrecorded.shards_written and "3 finished files had no record" in unrecorded.report()
    assert json.loads(manifest.read_text())["finished_files"] == records


def test_outputs_inside_the_input_folder_are_not_read_as_input(shared_data, tmp_path):
    """An input folder that also holds the output folder (or is it), and the vocab: reruns skip the shards."""
    for name, output in (("same", ""), ("nested", "out")):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(shared_data / "google_bert" / "sample_text.txt", folder)
        options = PrepareOptions(input_files=str(folder), vocab_size=300, output_dir=str(folder / output), workers=1,
                                 num_eval_examples=5, num_eval_documents=1, **SMALL)
        first = run(options)
        assert len(first.shards_written) == 1 and first.documents == 3  # the text alone
        again = run(options)
        assert not again.shards_written and len(again.shards_skipped) == 1 and again.eval_instances == 0
    (tmp_path / "text").mkdir()
    shutil.copy(shared_data / "google_bert" / "sample_text.txt", tmp_path / "text")
    shutil.copy(tmp_path / "same" / "vocab.txt", tmp_path / "text")
    given_vocab = PrepareOptions(input_files=str(tmp_path / "text"), vocab_file=str(tmp_path / "text" / "vocab.txt"),
                                 output_dir=str(tmp_path / "out"), workers=1, **SMALL)
    assert run(given_vocab).documents == 3  # the vocab beside the text is not read as a document


def test_a_rerun_cleans_up_after_a_killed_or_failed_run(shared_data, vocab, tmp_path):
    """A killed run's spool and vocab corpus are deleted by the next run of its range; a run that failed
    before writing anything does not hold the folder to its settings."""
    text = str(shared_data / "google_bert" / "sample_text.txt")
    options = PrepareOptions(input_files=text, vocab_file=vocab, output_dir=str(tmp_path), num_shards=2, workers=1,
                             **SMALL)
    with pytest.raises(InputError, match="lower --num_shards"):
        run(PrepareOptions(**{**options.__dict__, "num_shards": 500}))
    spool = tmp_path / ".spool-0-2"
    spool.mkdir()
    (spool / "part_1.spool").write_bytes(b"tokens of a killed run")
    (tmp_path / ".vocab-corpus.txt").write_text("text of a killed vocab run")
    assert len(run(options).shards_written) == 2
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]


def test_disk_full_mid_shard_leaves_no_whole_looking_shard(shared_data, vocab, tmp_path, monkeypatch):
    options = PrepareOptions(input_files=str(shared_data / "google_bert" / "sample_text.txt"), vocab_file=vocab,
                             output_dir=str(tmp_path), workers=1, **SMALL)
    real = h5py.Group.create_dataset
    calls = []

    def fill_the_disk(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fill_the_disk)
    with pytest.raises(InputError, match=r"part_0_of_1\.hdf5: could not write the shard.*No space left"):
        run(options)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and p.name != LOCK_FILE) == [
        "prepare_manifest.json"]
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    assert len(run(options).shards_written) == 1


def test_bad_text_inputs_are_counted_and_reported(tmp_path, vocab):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a_good.txt").write_text("A first sentence here.\nA second one follows.\n\nAnother document.\nWith two.\n")
    (corpus / "b_empty.txt").write_bytes(b"")
    (corpus / "c_latin1.txt").write_bytes("Caf\xe9 au lait.\nIt was nice.\n".encode("latin-1"))
    (corpus / "d_long_line.txt").write_bytes(b"Before the long line.\n" + b"word " * 2_000_000 + b"\nAfter it.\n")
    (corpus / "e_one_sentence.txt").write_text("Just one sentence in this document.\n")
    summary = run(PrepareOptions(input_files=str(corpus), vocab_file=vocab, output_dir=str(tmp_path / "out"),
                                 workers=1, **SMALL))
    report = summary.report()
    assert summary.documents == 5 and summary.instances >= 5
    for reason in ("1 x empty input files", "1 x lines with bytes that are not UTF-8", "1 x lines over 1,048,576 bytes",
                   "one-sentence documents"):
        assert reason in report, report
    assert str(corpus / "d_long_line.txt") + ":2" in report


@pytest.mark.parametrize("problem", ["vocab", "not xml", "unwritable", "truncated", "laughs", "shards", "eval",
                                     "nothing", "long line", "binary", "device"])
def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path, vocab, shared_data, problem):
    text = shared_data / "google_bert" / "sample_text.txt"
    args = {"input": str(text), "vocab": vocab, "out": str(tmp_path / "out"), "extra": []}
    if problem == "vocab":
        bad = tmp_path / "my_vocab.txt"
        bad.write_text("[PAD]\n[UNK]\nhello\n")
        args["vocab"] = str(bad)
        expected = r"my_vocab\.txt: the vocab lacks \[CLS\], \[SEP\], \[MASK\].*or pass --vocab_size N instead"
    elif problem == "not xml":
        args["extra"], expected = ["--input_format", "wikidump"], r"sample_text\.txt: not well-formed XML.*--input_format"
    elif problem == "unwritable":
        (tmp_path / "a_file").write_text("x")
        args["out"], expected = str(tmp_path / "a_file" / "out"), r"a_file/out: cannot write the output folder"
    elif problem == "truncated":
        data = bz2.compress(text.read_bytes() * 50)
        (tmp_path / "cut.txt.bz2").write_bytes(data[: len(data) // 2])
        args["input"], expected = str(tmp_path / "cut.txt.bz2"), r"cut\.txt\.bz2: the compressed file ends early"
    elif problem == "laughs":
        (tmp_path / "lol.xml").write_text('<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa">'
                                          '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><mediawiki>&b;</mediawiki>')
        args["input"], expected = str(tmp_path / "lol.xml"), r"lol\.xml: refused"
    elif problem == "shards":
        args["extra"], expected = ["--num_shards", "5"], r"sample_text\.txt: 3 documents.*for 5 shards; lower --num_shards"
    elif problem == "eval":
        args["extra"] = ["--num_eval_examples", "10", "--num_eval_documents", "3"]
        expected = r"3 documents, 3 held out for the eval set, leave 0 for 1 shards"
    elif problem == "long line":
        (tmp_path / "one_line.txt").write_text("word " * 300_000 + "\n")  # 1.5 MB, over the 1 MiB a line may have
        args["input"] = str(tmp_path / "one_line.txt")
        expected = (r"one_line\.txt: no documents found: 1 lines were skipped because they are longer than the "
                    r"1,048,576 bytes allowed \(first: .*one_line\.txt:1\)")
    elif problem == "binary":
        (tmp_path / "noise.txt").write_bytes(bytes(b for b in random.Random(0).randbytes(50_000) if b))
        args["input"], args["extra"] = str(tmp_path / "noise.txt"), ["--input_format", "text"]
        expected = r"noise\.txt: has \d+% bytes that are not UTF-8 .*so it is not text"
    elif problem == "device":
        args["input"], expected = "/dev/zero", r"--input_file /dev/zero: is a character device, not a regular file"
    else:
        (tmp_path / "blank.txt").write_text("\n\n  \n")
        args["input"], expected = str(tmp_path / "blank.txt"), r"blank\.txt: no documents found"
    result = cli_here("prepare", "--input_file", args["input"], "--vocab_file", args["vocab"], "--output_dir",
                      args["out"], "--workers", "1", "--no_progress", *args["extra"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert __import__("re").search(expected, result.stderr), result.stderr
    assert not list((tmp_path / "out").rglob("*.hdf5")) if (tmp_path / "out").exists() else True


def test_vocab_training_and_varlength_output(shared_data, tmp_path):
    wiki = str(shared_data / "corpus" / "mlperf_wiki_sample" / "wiki_02")
    options = PrepareOptions(input_files=wiki, vocab_size=2000, output_dir=str(tmp_path / "padded"), num_shards=2,
                             num_eval_examples=20, num_eval_documents=2, workers=2, **SMALL)
    first = run(options)
    tokens = read_vocab(tmp_path / "padded" / "vocab.txt")
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and 1000 < len(tokens) <= 2000
    assert "trained a" in first.report() and first.instances > 0
    shutil.rmtree(tmp_path / "padded" / "2_shards_uncompressed")
    rerun = run(options).report()
    assert "vocab trained by an earlier run" in rerun and "eval set: already complete" in rerun
    with pytest.raises(InputError, match=r"vocab\.txt: an earlier run trained this .*more than --vocab_size 500"):
        run(PrepareOptions(**{**options.__dict__, "vocab_size": 500}))
    with pytest.raises(InputError, match="the vocab is trained once"):
        run(PrepareOptions(**{**options.__dict__, "output_dir": str(tmp_path / "x"), "shard_range": "1:2"}))
    vocab = str(tmp_path / "padded" / "vocab.txt")
    varlength = run(PrepareOptions(**{**options.__dict__, "vocab_size": None, "vocab_file": vocab,
                                      "output_dir": str(tmp_path / "var"), "format": "varlength"}))
    assert varlength.shard_dir.name == "2_shards_varlength"
    padded = all_arrays(tmp_path / "padded")
    for name, rows in all_arrays(tmp_path / "var").items():
        mirror = (name.replace("2_shards_varlength", "2_shards_uncompressed")
                  .replace("eval_varlength", "eval_set_uncompressed")
                  .replace("part_00000_of_00002", "part_0_of_2").replace("part_00001_of_00002", "part_1_of_2"))
        assert same_arrays({0: shards.varlength_to_padded(rows, 64, 10)}, {0: padded[mirror]})


def test_cli_help_lists_the_prepare_and_inspect_flags():
    prepare_help = run_cli("prepare", "--help").stdout
    for flag in ("--input_file", "--input_format", "--vocab_file", "--vocab_size", "--no_lower_case", "--output_dir",
                 "--num_shards", "--max_seq_length", "--max_predictions_per_seq", "--masked_lm_prob",
                 "--short_seq_prob", "--dupe_factor", "--random_seed", "--whole_word_mask", "--num_eval_examples",
                 "--num_eval_documents", "--format", "--workers", "--shard_range"):
        assert flag in prepare_help, flag


def test_a_vocab_rewritten_at_the_same_path_is_read_again(shared_data, vocab, tmp_path):
    sample = str(shared_data / "google_bert" / "sample_text.txt")
    path = tmp_path / "vocab.txt"
    shutil.copy(vocab, path)
    run(PrepareOptions(input_files=sample, vocab_file=str(path), output_dir=str(tmp_path / "big"), workers=1, **SMALL))
    small = read_vocab(vocab)[:1000]  # [PAD], [unused*], [UNK] [CLS] [SEP] [MASK], ...: most words are [UNK] now
    path.write_text("".join(t + "\n" for t in small))
    run(PrepareOptions(input_files=sample, vocab_file=str(path), output_dir=str(tmp_path / "small"), workers=1, **SMALL))
    ids = shards.read_padded(tmp_path / "small" / "1_shards_uncompressed" / "part_0_of_1.hdf5")["input_ids"]
    assert ids.max() < 1000 and (ids == small.index("[UNK]")).mean() > 0.1


def test_a_shard_too_large_for_one_worker_is_refused_early(shared_data, vocab, tmp_path, monkeypatch):
    from bert_pretrain.prepare import pipeline as prepare

    monkeypatch.setattr(prepare, "_MAX_SHARD_TOKEN_SLOTS", 20_000)
    with pytest.raises(InputError, match="a shard passed 20,000 tokens.*raise --num_shards"):
        run(PrepareOptions(input_files=str(shared_data / "corpus" / "mlperf_wiki_sample" / "wiki_00"),
                           vocab_file=vocab, output_dir=str(tmp_path), workers=1, **SMALL))
    assert not list(tmp_path.rglob("*.hdf5")) and not list(tmp_path.glob(".spool-*"))


@pytest.mark.parametrize("change, message", [
    ({"shard_range": "3:1"}, r"--shard_range 3:1: needs 0 <= FIRST <= END <= --num_shards \(4\)"),
    ({"shard_range": "x"}, r"--shard_range x: expected FIRST:END"),
    ({"vocab_file": None}, r"pass --vocab_file PATH or --vocab_size N"),
    ({"vocab_size": 100}, r"not both"),
    ({"max_seq_length": 4}, r"--max_seq_length must be at least 5"),
    ({"masked_lm_prob": 1.5}, r"--masked_lm_prob must be in \(0, 1\)"),
    ({"input_format": "pdf"}, r"--input_format must be one of auto, wikidump, wikiextractor, text"),
    ({"format": "csv"}, r"--format must be one of padded, varlength"),
    ({"workers": 0}, r"--workers must be at least 1"),
    ({"random_seed": -1}, r"--random_seed must be 0 or more, got -1"),
    ({"input_files": [""]}, r"--input_file is required and may not be empty"),
])
def test_options_are_checked_before_anything_is_read(tmp_path, change, message):
    options = dict(input_files=str(tmp_path / "missing.txt"), vocab_file="vocab.txt", output_dir=str(tmp_path / "out"),
                   num_shards=4, progress=False)
    with pytest.raises(InputError, match=message):
        run(PrepareOptions(**{**options, **change}))
    assert not (tmp_path / "out").exists()


def test_the_printed_command_line_parses_back_to_the_same_options():
    options = PrepareOptions(input_files=["a.txt", "b/"], output_dir="out", vocab_size=500, lower_case=False,
                             whole_word_mask=True, num_shards=8, masked_lm_prob=0.2, num_eval_examples=10,
                             format="varlength", workers=3, shard_range="0:4", progress=False)
    args = cli.build_parser().parse_args(["prepare", *options.command_line()])
    assert from_args(PrepareOptions, args) == options


def snapshot(folder) -> dict:
    """Every path under `folder` with its size and modification time."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("method", ["default", pytest.param("reference", marks=pytest.mark.slow)])
def test_a_second_run_into_a_folder_being_written_is_refused_and_changes_nothing(shared_data, vocab, tmp_path,
                                                                                 monkeypatch, method):
    """Two runs into one folder would spool, and write, each shard twice; the second is refused at once,
    naming the first's pid, and the first's shards equal an uninterrupted run's."""
    import os

    from bert_pretrain.prepare import pipeline as default_prepare
    from bert_pretrain.prepare.reference import pipeline as reference_prepare

    text = shared_data / "google_bert" / "sample_text.txt"
    flags = ["--input_file", str(text), "--vocab_file", vocab, "--max_seq_length", "64", "--max_predictions_per_seq",
             "10", "--dupe_factor", "1", "--num_shards", "2", "--workers", "1", "--method", method]
    module = reference_prepare if method == "reference" else default_prepare
    middle = "_cut" if method == "reference" else "_build"  # called once the first run has written into its folder
    real, seen = getattr(module, middle), []

    def second_run_meanwhile(*args, **kwargs):
        before = snapshot(tmp_path / "busy")
        seen.append(run_cli("prepare", *flags, "--output_dir", str(tmp_path / "busy"), timeout=120))
        seen.append(before == snapshot(tmp_path / "busy"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, middle, second_run_meanwhile)
    assert cli.main(["prepare", *flags, "--output_dir", str(tmp_path / "busy")]) == 0
    monkeypatch.undo()
    second, unchanged = seen
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"another bert-pretrain process (pid {os.getpid()}) is writing into this folder" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and unchanged
    assert cli.main(["prepare", *flags, "--output_dir", str(tmp_path / "alone")]) == 0
    assert same_arrays(all_arrays(tmp_path / "busy"), all_arrays(tmp_path / "alone"))
