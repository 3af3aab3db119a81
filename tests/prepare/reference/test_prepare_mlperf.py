"""`prepare-mlperf` on a miniature MLCommons release (part files and an eval.txt cut from real text, the
real-TensorFlow checkpoint fixture, a vocab): the DATA folder the launcher trains on, the checksum
verdict, a killed run finished by a rerun, bad inputs."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    SHARED_DATA,
    SUBPROCESS_ENV,
    change_a_word,
    load_reference_peer,
    restore,
    run_cli,
    write_wiki_sentences,
)
from support.launcher import launch, tiny_overrides

from bert_pretrain.data import shards
from bert_pretrain.data.vocab import write_vocab
from bert_pretrain.errors import InputError
from bert_pretrain.folder_lock import LOCK_FILE
from bert_pretrain.prepare import input_digests
from bert_pretrain.prepare.input_digests import md5_of
from bert_pretrain.prepare.reference import mlperf as prepare_mlperf
from bert_pretrain.prepare.tokenization import train_vocab

SHAPES = ["--max_seq_length", "128", "--max_predictions_per_seq", "20", "--num_shards", "4",
          "--num_eval_examples", "50", "--dupe_factor", "2"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """results4/ with three parts and eval.txt of real sentences (documents of 1 to 15), a text md5
    list (right for two parts, wrong for the third), a 1,018-token vocab (the fixture model's size)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    root = tmp_path_factory.mktemp("release")
    text_dir = root / "results4"
    text_dir.mkdir()
    text = write_wiki_sentences(SHARED_DATA, root / "all.txt", limit_bytes=200_000).read_text(encoding="utf-8")
    sentences = [line for line in text.split("\n") if line.strip()]
    sizes = np.cumsum(np.random.default_rng(0).integers(1, 16, len(sentences)))
    documents = ["\n".join(d) for d in np.split(np.array(sentences, dtype=object), sizes[sizes < len(sentences)])]
    for i in range(3):
        (text_dir / f"part-0000{i}-of-00003").write_text("\n\n".join(documents[i * 30:(i + 1) * 30]) + "\n")
    (text_dir / "eval.txt").write_text("\n\n".join(documents[90:120]) + "\n")
    md5s = [md5_of(text_dir / f"part-0000{i}-of-00003") for i in range(3)]
    md5s[2] = "0" * 32
    (text_dir / prepare_mlperf.TEXT_MD5_LIST).write_text(
        "".join(f"{m}  part-0000{i}-of-00003\n" for i, m in enumerate(md5s)))
    vocab = train_vocab(sentences, 1018)
    write_vocab(root / "vocab.txt", vocab + [f"[unused{i}]" for i in range(1018 - len(vocab))])
    return root


def command(release, data, *extra):
    return ["prepare-mlperf", "--text_dir", str(release / "results4"),
            "--tf_checkpoint", str(SHARED_DATA / "tf_checkpoint" / "model.ckpt-28252"),
            "--vocab_file", str(release / "vocab.txt"), "--bert_config", str(SHARED_DATA / "tf_checkpoint" /
                                                                                "bert_config.json"),
            "--output_dir", str(data), *SHAPES, "--workers", "2", "--no_progress", *extra]


@pytest.mark.slow
def test_the_data_folder_it_makes_is_the_reference_s_and_the_launcher_trains_on_it(release, tmp_path):
    data = tmp_path / "DATA"
    proc = run_cli(*command(release, data))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in data.iterdir() if p.name != LOCK_FILE) == [
        "4_shards_uncompressed", "bert_config.json", "eval_set_uncompressed", "model.ckpt-28252.apex.pt",
        "prepare_manifest.json"]  # the parts deleted after the cut
    peer = load_reference_peer()
    parts = [peer.create_pretraining_data(release / "results4" / f"part-0000{i}-of-00003", release / "vocab.txt",
                                          True, 128, 20, 0.15, 0.1, 2, 12345) for i in range(3)]
    cut = [shards.read_padded(data / "4_shards_uncompressed" / f"part_{i}_of_4.hdf5") for i in range(4)]
    total = sum(len(p["next_sentence_labels"]) for p in parts)
    assert [len(c["next_sentence_labels"]) for c in cut] == [total // 4 + (i < total % 4) for i in range(4)]
    for key in shards.PADDED_DTYPES:
        assert np.array_equal(np.concatenate([c[key] for c in cut]), np.concatenate([p[key] for p in parts]))
    eval_all = peer.create_pretraining_data(release / "results4" / "eval.txt", release / "vocab.txt", True, 128, 20,
                                            0.15, 0.1, 2, 12345)
    with h5py.File(data / "eval_set_uncompressed" / "part_eval_10k.hdf5") as f:
        assert all(np.array_equal(f[k][:], eval_all[k][:50]) and f[k].dtype == eval_all[k].dtype for k in eval_all)
    assert (data / "bert_config.json").read_bytes() == (SHARED_DATA / "tf_checkpoint" / "bert_config.json").read_bytes()
    weights = torch.load(data / "model.ckpt-28252.apex.pt", weights_only=True)["model"]
    tf_values = np.load(SHARED_DATA / "tf_checkpoint" / "tf_values.npz")
    assert np.array_equal(weights["bert.embeddings.word_embeddings.weight"][:1018].numpy(),
                          tf_values["bert/embeddings/word_embeddings"])
    verdict = proc.stdout[proc.stdout.index("is NOT the MLPerf reference data"):]
    assert f"part-00002-of-00003: md5 {md5_of(release / 'results4' / 'part-00002-of-00003')}, " \
           f"{prepare_mlperf.TEXT_MD5_LIST} gives {'0' * 32}" in verdict
    assert "part-00000" not in verdict and "--max_seq_length 128, the reference's 512" in verdict
    assert "vocab.txt: md5" in verdict and "3 part files, MLCommons' release has 500" in verdict

    out = tmp_path / "results"
    trained = launch(data, *tiny_overrides(data, out, max_seq_length=128, max_predictions_per_seq=20, max_steps=4,
                                           train_batch_size=8, gradient_accumulation_steps=1, num_eval_examples=50,
                                           eval_iter_start_samples=16, eval_iter_samples=16,
                                           target_mlm_accuracy=0.99))
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["samples_trained"] == 32 and summary["evals"] == 2
    assert summary["stopped_by"] == "--max_steps 4" and summary["skipped_shards"] == 0


@pytest.mark.slow
def test_a_killed_run_is_finished_by_a_rerun_without_redoing_finished_parts(release, tmp_path):
    data = tmp_path / "DATA"
    args = [sys.executable, "-m", "bert_pretrain", *command(release, data, "--keep_parts")]
    args[args.index("--workers") + 1] = "1"  # parts one after the other: the kill lands between them
    env = {**os.environ, **SUBPROCESS_ENV}
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not list((data / "reference_parts").glob("part-*.hdf5")):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (data / "reference_parts").glob("part-*.hdf5")}
    assert 1 <= len(finished) < 3
    again = run_cli(*command(release, data, "--keep_parts"), env=SUBPROCESS_ENV)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (data / "reference_parts").glob("part-*.hdf5")
            if p.name in finished} == finished  # not made again
    assert "already converted" in again.stdout and f"{len(finished)} already complete" in again.stdout
    assert not list(data.rglob(".*.tmp-*"))
    whole = tmp_path / "whole"
    assert run_cli(*command(release, whole, "--keep_parts")).returncode == 0
    for path in sorted(whole.rglob("*.hdf5")):
        one, two = shards.read_padded(path), shards.read_padded(data / path.relative_to(whole))
        assert all(np.array_equal(one[k], two[k]) for k in one)


def test_the_verdict_says_reference_data_when_everything_matches(release, tmp_path, monkeypatch):
    """With the miniature's own md5s and flags taken as the published ones."""
    files = {"vocab.txt": release / "vocab.txt", "bert_config.json": SHARED_DATA / "tf_checkpoint" / "bert_config.json",
             "eval.txt": release / "results4" / "eval.txt"}
    checkpoint = SHARED_DATA / "tf_checkpoint" / "model.ckpt-28252"
    for suffix in (".index", ".data-00000-of-00001"):
        files[checkpoint.name + suffix] = checkpoint.with_name(checkpoint.name + suffix)
    monkeypatch.setattr(prepare_mlperf, "PUBLISHED_MD5", {k: md5_of(p) for k, p in files.items()})
    monkeypatch.setattr(prepare_mlperf, "RELEASE_PARTS", 3)
    monkeypatch.setattr(prepare_mlperf, "REFERENCE_FLAGS", {"max_seq_length": 128, "num_shards": 4})
    text_dir = tmp_path / "results4"
    text_dir.mkdir()
    for part in (release / "results4").glob("part-*"):
        (text_dir / part.name).write_bytes(part.read_bytes())
    (text_dir / "eval.txt").write_bytes(files["eval.txt"].read_bytes())
    (text_dir / prepare_mlperf.TEXT_MD5_LIST).write_text(
        "".join(f"{md5_of(p)} *{p.name}\n" for p in sorted(text_dir.glob("part-*"))))
    options = prepare_mlperf.PrepareMlperfOptions(
        text_dir=str(text_dir), tf_checkpoint=str(checkpoint.with_name(checkpoint.name + ".index")),
        vocab_file=str(files["vocab.txt"]), bert_config=str(files["bert_config.json"]), output_dir=str(tmp_path / "D"),
        max_seq_length=128, max_predictions_per_seq=20, num_shards=4, num_eval_examples=50, dupe_factor=2, workers=1,
        progress=False)
    md5_list = text_dir / prepare_mlperf.TEXT_MD5_LIST
    report = prepare_mlperf.run(options)
    # the parts' md5s come from the user's list alone: the verdict says so and names the list by its md5
    assert report.endswith(f"holds the MLPerf reference data: the vocab, config, eval.txt and checkpoint have the md5s "
                           f"MLCommons published (held by this project), the 3 text parts those of "
                           f"{prepare_mlperf.TEXT_MD5_LIST} (md5 {md5_of(md5_list)}), and the flags are the reference's")
    assert ("md5s compared with MLCommons' published values, which this project holds: vocab.txt, bert_config.json, "
            "eval.txt, model.ckpt-28252.index, model.ckpt-28252.data-00000-of-00001") in report
    assert (f"md5s compared only with the list supplied, {md5_list} (its own md5: {md5_of(md5_list)}; compare it with "
            f"MLCommons' copy, which this project does not hold): 3 text parts") in report
    with open(md5_list, "a") as f:  # a list made with md5sum over the files at hand, eval.txt among them
        f.write(f"{'1' * 32}  eval.txt\n")
    assert f"gives eval.txt the md5 {'1' * 32}, MLCommons' published one is" in prepare_mlperf.run(options)
    md5_list.unlink()
    assert "the text parts are unchecked" in prepare_mlperf.run(options)


@pytest.mark.parametrize("change,message", [
    ("no_eval", "holds no part-* files or no eval.txt"),
    ("no_checkpoint", "no model.ckpt-1.index with .data-* files beside it"),
    ("big_vocab", "more than the vocab_size 1,018 of --bert_config"),
    ("dangling_part", "part-00003-of-00003 is a symlink to"),
    ("device_part", "part-00003-of-00003 is a character device, not a regular file"),
])
def test_bad_inputs_are_one_line_errors(release, tmp_path, change, message):
    text_dir = tmp_path / "results4"
    text_dir.mkdir()
    for path in (release / "results4").iterdir():
        if not (change == "no_eval" and path.name == "eval.txt"):
            (text_dir / path.name).write_bytes(path.read_bytes())
    if change.endswith("_part"):  # left out unseen before
        (text_dir / "part-00003-of-00003").symlink_to(tmp_path / "gone" if change == "dangling_part" else "/dev/null")
    vocab = release / "vocab.txt"
    if change == "big_vocab":
        vocab = tmp_path / "vocab.txt"
        vocab.write_text(release.joinpath("vocab.txt").read_text() + "extra\n")
    checkpoint = tmp_path / "model.ckpt-1" if change == "no_checkpoint" else SHARED_DATA / "tf_checkpoint" / \
        "model.ckpt-28252"
    with pytest.raises(InputError, match=re.escape(message)):
        prepare_mlperf.run(prepare_mlperf.PrepareMlperfOptions(
            text_dir=str(text_dir), tf_checkpoint=str(checkpoint), vocab_file=str(vocab),
            bert_config=str(SHARED_DATA / "tf_checkpoint" / "bert_config.json"), output_dir=str(tmp_path / "D"),
            workers=1, progress=False))


def test_the_command_is_in_the_help():
    proc = subprocess.run([sys.executable, "-m", "bert_pretrain", "--help"], capture_output=True, text=True,
                          cwd=REPO)
    assert "prepare-mlperf" in proc.stdout


def mlperf_options(text_dir, checkpoint, vocab, data) -> prepare_mlperf.PrepareMlperfOptions:
    return prepare_mlperf.PrepareMlperfOptions(
        text_dir=str(text_dir), tf_checkpoint=str(checkpoint), vocab_file=str(vocab),
        bert_config=str(SHARED_DATA / "tf_checkpoint" / "bert_config.json"), output_dir=str(data), max_seq_length=128,
        max_predictions_per_seq=20, num_shards=4, num_eval_examples=50, dupe_factor=2, workers=1, progress=False)


def test_a_part_fetched_again_after_a_damaged_download_gives_the_clean_build(release, tmp_path, monkeypatch):
    """Issue 21's recovery: a part damaged in the download (a word changed, size and mtime those of the
    good copy), the md5 check flags it, the part is fetched again and the command rerun: DATA equals a
    clean build, array for array, and the report names the part. A TensorFlow checkpoint changed in
    place is converted again (and here found damaged)."""
    monkeypatch.setattr(input_digests, "_RACY_WINDOW_NS", 0)  # the files are seconds old: trust their status
    text_dir, checkpoint = tmp_path / "results4", tmp_path / "tf1_ckpt" / "model.ckpt-28252"
    shutil.copytree(release / "results4", text_dir)
    checkpoint.parent.mkdir()
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(SHARED_DATA / "tf_checkpoint" / f"model.ckpt-28252{suffix}", checkpoint.parent)
    part = text_dir / "part-00000-of-00003"
    good = change_a_word(part)
    damaged = prepare_mlperf.run(mlperf_options(text_dir, checkpoint, release / "vocab.txt", tmp_path / "DATA"))
    assert f"{part}: md5 {md5_of(part)}, {prepare_mlperf.TEXT_MD5_LIST} gives {hashlib.md5(good).hexdigest()}" \
           in damaged
    restore(part, good)
    mended = prepare_mlperf.run(mlperf_options(text_dir, checkpoint, release / "vocab.txt", tmp_path / "DATA"))
    prepare_mlperf.run(mlperf_options(text_dir, checkpoint, release / "vocab.txt", tmp_path / "clean"))
    for path in sorted((tmp_path / "clean").rglob("*.hdf5")):
        one, two = shards.read_padded(path), shards.read_padded(tmp_path / "DATA" / path.relative_to(tmp_path / "clean"))
        assert all(np.array_equal(one[k], two[k]) for k in one)
    assert f"1 input files changed since an earlier run read them (md5 differs): {part}" in mended
    assert f"{part}: md5" not in mended and "already converted" in mended
    data_file = checkpoint.with_name(checkpoint.name + ".data-00000-of-00001")
    weights = data_file.read_bytes()
    data_file.write_bytes(bytes([weights[0] ^ 1]) + weights[1:])  # the lowest bit of the first weight
    with pytest.raises(InputError, match="fails its CRC-32C check"):  # converted again, not "already converted"
        prepare_mlperf.run(mlperf_options(text_dir, checkpoint, release / "vocab.txt", tmp_path / "DATA"))


def test_a_part_given_twice_is_refused_before_anything_is_written(release, tmp_path):
    """A part copied under another part's name: refused at the md5 check, before the config is copied or
    the checkpoint converted; the DATA folder this run made is gone."""
    text_dir = tmp_path / "results4"
    shutil.copytree(release / "results4", text_dir)
    (text_dir / prepare_mlperf.TEXT_MD5_LIST).unlink()  # the parts are compared with each other even without it
    shutil.copy(text_dir / "part-00001-of-00003", text_dir / "part-00003-of-00003")
    checkpoint = SHARED_DATA / "tf_checkpoint" / "model.ckpt-28252"
    with pytest.raises(InputError, match="part-00001-of-00003 and .*part-00003-of-00003: the same bytes"):
        prepare_mlperf.run(mlperf_options(text_dir, checkpoint, release / "vocab.txt", tmp_path / "DATA"))
    assert not (tmp_path / "DATA").exists()
