"""Shared fixtures: tiny configs, MLPerf-layout arrays with the reference invariants, ../shared data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bert_pretrain.model import BertConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest -n W: the cores shared out, or the workers' threads
    import torch  # wait on each other (a descheduled OpenMP thread stalls every parallel op)

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the project; tests that need it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def tiny_config(vocab_size: int = 100, **overrides) -> BertConfig:
    values = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
    values.update(overrides)
    return BertConfig(**values)


def write_vocab_file(path: Path, size: int, words: tuple[str, ...] = ()) -> Path:
    """A WordPiece vocab.txt of `size` tokens: the five special ones at ids 0-4 (as `prepare` trains them), then
    `words`, then filler tokens 'wordN'; for models whose export must carry a tokenizer."""
    from bert_pretrain.data.vocab import SPECIAL_TOKENS

    tokens = [*SPECIAL_TOKENS, *words]
    tokens += [f"word{i}" for i in range(size - len(tokens))]
    path.write_text("".join(f"{t}\n" for t in tokens[:size]), encoding="utf-8")
    return path


def mlperf_arrays(rng: np.random.Generator, n: int, seq_len: int, max_pred: int, vocab_size: int) -> dict:
    """Rows in the padded MLPerf schema that keep the reference's invariants: [CLS] A [SEP] B [SEP],
    padding after, masked positions ascending and never on [CLS]/[SEP], count = round(0.15 * len)."""
    cls_id, sep_id, mask_id, first_word = 2, 3, 4, 5
    arrays = {
        "input_ids": np.zeros((n, seq_len), np.int32),
        "input_mask": np.zeros((n, seq_len), np.int8),
        "segment_ids": np.zeros((n, seq_len), np.int8),
        "masked_lm_positions": np.zeros((n, max_pred), np.int32),
        "masked_lm_ids": np.zeros((n, max_pred), np.int32),
        "next_sentence_labels": rng.integers(0, 2, n).astype(np.int8),
    }
    for i in range(n):
        length = int(rng.integers(8, seq_len + 1))
        len_a = int(rng.integers(1, length - 3))
        len_b = length - 3 - len_a
        tokens = np.concatenate([[cls_id], rng.integers(first_word, vocab_size, len_a), [sep_id],
                                 rng.integers(first_word, vocab_size, len_b), [sep_id]])
        candidates = [p for p in range(length) if tokens[p] not in (cls_id, sep_id)]
        count = min(max_pred, max(1, round(length * 0.15)), len(candidates))
        positions = np.sort(rng.choice(candidates, size=count, replace=False))
        arrays["masked_lm_ids"][i, :count] = tokens[positions]
        arrays["masked_lm_positions"][i, :count] = positions
        tokens[positions] = mask_id
        arrays["input_ids"][i, :length] = tokens
        arrays["input_mask"][i, :length] = 1
        arrays["segment_ids"][i, len_a + 2 : length] = 1
    return arrays


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m bert_pretrain ARGS` in a subprocess, as a user would run it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "bert_pretrain", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def cli_here(*args: str) -> subprocess.CompletedProcess:
    """`bert-pretrain ARGS` run in this process, its output captured: for the checks that bad input ends
    with one line and exit code 2, without paying a new interpreter and torch import per case."""
    import contextlib
    import io

    from bert_pretrain import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as stop:  # argparse's own errors
            code = stop.code
    return subprocess.CompletedProcess(["bert-pretrain", *args], code, out.getvalue(), err.getvalue())


def easy_mlperf_arrays(rng: np.random.Generator, n: int, seq_len: int, max_pred: int, vocab_size: int) -> dict:
    """`mlperf_arrays` rows whose words are one word repeated, so a masked word is the row's other
    words: a tiny model learns it in a few dozen steps (masked-LM accuracy well above 0.72)."""
    arrays = mlperf_arrays(rng, n, seq_len, max_pred, vocab_size)
    words = rng.integers(5, vocab_size, n)
    is_word = arrays["input_ids"] >= 5  # not padding, [CLS], [SEP] or [MASK]
    arrays["input_ids"] = np.where(is_word, words[:, None], arrays["input_ids"]).astype(np.int32)
    has_slot = arrays["masked_lm_positions"] > 0
    arrays["masked_lm_ids"] = np.where(has_slot, words[:, None], 0).astype(np.int32)
    return arrays


def write_data_folder(root: Path, seed: int = 0, num_shards: int = 4, rows_per_shard: int = 64,
                      eval_rows: int = 64, seq_len: int = 32, max_pred: int = 5, vocab_size: int = 64,
                      config=None) -> Path:
    """A DATA folder laid out exactly as MLPerf's / DeepSparkHub's: <N>_shards_uncompressed/,
    eval_set_uncompressed/part_eval_10k.hdf5, bert_config.json and model.ckpt-28252.apex.pt (NVIDIA's
    {'model': state_dict} format), all tiny and easy (see `easy_mlperf_arrays`)."""
    import json

    import torch

    from bert_pretrain.data.shards import write_padded
    from bert_pretrain.model import BertForPreTraining
    from bert_pretrain.weights import save_reference_checkpoint

    rng = np.random.default_rng(seed)
    shards = root / f"{num_shards}_shards_uncompressed"
    for i in range(num_shards):
        write_padded(shards / f"part_{i}_of_{num_shards}.hdf5",
                     easy_mlperf_arrays(rng, rows_per_shard, seq_len, max_pred, vocab_size))
    write_padded(root / "eval_set_uncompressed" / "part_eval_10k.hdf5",
                 easy_mlperf_arrays(rng, eval_rows, seq_len, max_pred, vocab_size))
    config = config or tiny_config(vocab_size, max_position_embeddings=seq_len)
    (root / "bert_config.json").write_text(json.dumps(config.to_dict()))
    torch.manual_seed(seed)
    save_reference_checkpoint(BertForPreTraining(config), root / "model.ckpt-28252.apex.pt")
    return root


# A run of the tiny DATA folder that reaches masked-LM accuracy 0.72 in about 200 steps on a CPU.
TINY_RUN = dict(max_seq_length=32, max_predictions_per_seq=5, train_batch_size=16, eval_batch_size=32,
                learning_rate=2e-2, warmup_proportion=0.05, max_steps=400, num_eval_examples=64,
                eval_iter_start_samples=800, eval_iter_samples=800, max_samples_termination=1_000_000,
                target_mlm_accuracy=0.72, log_freq=10, seed=42, device="cpu")


def train_flags(data: Path, output_dir: Path, **overrides) -> list[str]:
    """`bert-pretrain train` flags for a DATA folder from `write_data_folder` (TINY_RUN, then overrides;
    a value of True is a bare switch, False its --no- form)."""
    flags = ["--input_dir", str(next(data.glob("*_shards_uncompressed"))),
             "--eval_dir", str(data / "eval_set_uncompressed"), "--bert_config_path", str(data / "bert_config.json"),
             "--init_checkpoint", str(data / "model.ckpt-28252.apex.pt"), "--output_dir", str(output_dir)]
    for key, value in {**TINY_RUN, **overrides}.items():
        flags += [f"--{key}"] if value is True else [f"--no-{key}"] if value is False else [f"--{key}", str(value)]
    return flags


# Subprocess runs use one thread per process: two cores shared with other processes otherwise slow
# every step down by orders of magnitude (OpenMP threads waiting on each other).
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1"}


def restored_rows(arrays: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per row of padded MLPerf arrays: (tokens with the masked labels put back, masked positions, the
    tokens shown at them), real tokens only."""
    rows = []
    for i in range(len(arrays["next_sentence_labels"])):
        length = int(arrays["input_mask"][i].sum())
        tokens = arrays["input_ids"][i, :length].copy()
        count = int(np.count_nonzero(arrays["masked_lm_positions"][i]))
        positions = arrays["masked_lm_positions"][i, :count]
        shown = tokens[positions].copy()
        tokens[positions] = arrays["masked_lm_ids"][i, :count]
        rows.append((tokens, positions, shown))
    return rows


def check_reference_invariants(arrays: dict, cls_id: int, sep_id: int, masked_lm_prob: float,
                               max_predictions: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Assert what every row of create_pretraining_data.py output holds; return the (A, B) segments
    of each row with the masked tokens restored."""
    segments = []
    for i, (tokens, positions, _) in enumerate(restored_rows(arrays)):
        length = len(tokens)
        seps = np.flatnonzero(tokens == sep_id)
        assert tokens[0] == cls_id and len(seps) == 2 and seps[1] == length - 1 and cls_id not in tokens[1:], i
        assert arrays["input_mask"][i, :length].all() and not arrays["input_mask"][i, length:].any(), i
        assert not arrays["input_ids"][i, length:].any(), i
        padding = len(arrays["input_ids"][i]) - length
        expected_segments = np.r_[np.zeros(seps[0] + 1), np.ones(length - seps[0] - 1), np.zeros(padding)]
        assert (arrays["segment_ids"][i] == expected_segments).all(), i
        count = len(positions)
        assert count == min(max_predictions, max(1, round(length * masked_lm_prob)), length - 3), i
        assert (np.diff(positions) > 0).all() and positions.min() > 0 and not np.isin(positions, seps).any(), i
        assert not arrays["masked_lm_positions"][i, count:].any() and not arrays["masked_lm_ids"][i, count:].any(), i
        segments.append((tokens[1:seps[0]], tokens[seps[0] + 1:length - 1]))
        assert len(segments[-1][0]) >= 1 and len(segments[-1][1]) >= 1, i
    return segments


def write_prepared_data_folder(root: Path, seed: int = 0) -> Path:
    """A DATA folder whose shards and eval set come from `bert-pretrain prepare` (as a user makes them),
    on a generated corpus that a tiny model learns fast: each document repeats one word, so a masked
    word is the word around it. Same layout and extras as `write_data_folder` (seq 32, 5 predictions)."""
    import json

    import torch

    from bert_pretrain.model import BertForPreTraining
    from bert_pretrain.weights import save_reference_checkpoint

    rng = np.random.default_rng(seed)
    words = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(59)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (root / "source").mkdir(parents=True)
    (root / "source" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    documents = []
    for _ in range(300):
        word = words[rng.integers(len(words))]
        documents.append("\n".join(" ".join([word] * int(rng.integers(4, 9))) for _ in range(int(rng.integers(3, 7)))))
    (root / "source" / "corpus.txt").write_text("\n\n".join(documents) + "\n")
    proc = run_cli("prepare", "--input_file", str(root / "source" / "corpus.txt"), "--input_format", "text",
                   "--vocab_file", str(root / "source" / "vocab.txt"), "--output_dir", str(root), "--num_shards", "4",
                   "--max_seq_length", "32", "--max_predictions_per_seq", "5", "--dupe_factor", "2",
                   "--random_seed", str(12345 + seed), "--num_eval_examples", "64", "--num_eval_documents", "40",
                   "--workers", "1", "--no_progress")
    assert proc.returncode == 0, proc.stderr
    config = tiny_config(len(vocab), max_position_embeddings=32)
    (root / "bert_config.json").write_text(json.dumps(config.to_dict()))
    torch.manual_seed(seed)
    save_reference_checkpoint(BertForPreTraining(config), root / "model.ckpt-28252.apex.pt")
    return root


def reference_packed_batch(arrays: dict):
    """The packed `Batch` of padded MLPerf rows, built sequence by sequence: the plain construction the
    vectorised packer (data/packing.py) is tested against (all B * P masked slots, IGNORE_LABEL where unused)."""
    import torch

    from bert_pretrain.batch import IGNORE_LABEL, Batch
    from bert_pretrain.data.shards import counted_slots

    lengths = arrays["input_mask"].astype(bool).sum(axis=1).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    valid = counted_slots(arrays["masked_lm_positions"])
    positions = np.where(valid, arrays["masked_lm_positions"], 0) + offsets[:-1, None]  # (B, P)
    labels = np.where(valid, arrays["masked_lm_ids"], IGNORE_LABEL)
    return Batch(
        input_ids=torch.tensor(np.concatenate([row[:n] for row, n in zip(arrays["input_ids"], lengths)]), dtype=torch.int64),
        segment_ids=torch.tensor(np.concatenate([row[:n] for row, n in zip(arrays["segment_ids"], lengths)]),
                                 dtype=torch.int64),
        position_ids=torch.tensor(np.concatenate([np.arange(n) for n in lengths]), dtype=torch.int64),
        cu_seqlens=torch.tensor(offsets, dtype=torch.int32),
        max_seqlen=int(lengths.max()),
        masked_positions=torch.tensor(positions.reshape(-1), dtype=torch.int64),
        masked_labels=torch.tensor(labels.reshape(-1), dtype=torch.int64),
        next_sentence_labels=torch.tensor(arrays["next_sentence_labels"], dtype=torch.int64),
    )


def load_reference_peer():
    """tests/oracles/reference_peer.py, the transcription of NVIDIA's create_pretraining_data.py and its
    tokenizer (strings, the script's own rng calls)."""
    from oracles import reference_peer

    return reference_peer


def write_wiki_sentences(shared: Path, target: Path, limit_bytes: int | None = None) -> Path:
    """The MLPerf Wikipedia sample (WikiExtractor files) as the reference's input format: one sentence
    per line, a blank line between documents; cut after `limit_bytes` of text when given."""
    from bert_pretrain.prepare.text import Tally, document_sentences, wikiextractor_documents

    written = 0
    with open(target, "w", encoding="utf-8") as out:
        for path in sorted((shared / "corpus" / "mlperf_wiki_sample").iterdir()):
            for body in wikiextractor_documents(path, Tally()):
                text = "\n".join(document_sentences("wikiextractor", body)) + "\n\n"
                out.write(text)
                written += len(text)
                if limit_bytes is not None and written >= limit_bytes:
                    return target
    return target


# Shards that read data from outside themselves, or store another dtype than the schema's: each must be
# refused by every reader (data/shards.py). The external storage and the links point at a file of the
# test's own, never at a system file.
CRAFTED_SHARDS = ("external_storage", "virtual_dataset", "external_link", "soft_link", "float64_ids", "uint8_ids",
                  "group_ids", "varlength_int32_ids", "gzip_ids", "unstored_ids")


def write_crafted_shard(path: Path, arrays: dict, variant: str) -> None:
    """A padded shard of `arrays` (a varlength one for `varlength_*`) with `input_ids` made as `variant` says;
    the other datasets are as the schema has them."""
    import h5py

    from bert_pretrain.data import shards

    ids = np.asarray(arrays["input_ids"], np.int32)
    other = path.with_name("elsewhere.h5")  # no "part" in the name: not listed as a shard
    if variant in ("virtual_dataset", "external_link"):
        with h5py.File(other, "w") as f:
            f.create_dataset("input_ids", data=ids)
    if variant == "varlength_int32_ids":
        rows = shards.padded_to_varlength(arrays)
        shards.write_varlength(path, rows)
        with h5py.File(path, "a") as f:
            del f["input_ids"]
            data = np.empty(len(rows["input_ids"]), dtype=object)
            data[:] = [np.asarray(r, np.int32) for r in rows["input_ids"]]
            f.create_dataset("input_ids", data=data, dtype=h5py.vlen_dtype(np.int32))
        return
    with h5py.File(path, "w") as f:
        for key, dtype in shards.PADDED_DTYPES.items():
            if key != "input_ids":
                f.create_dataset(key, data=np.asarray(arrays[key], dtype))
        if variant == "external_storage":  # the ids' own bytes, kept in a raw file beside the shard
            other.write_bytes(ids.tobytes())
            f.create_dataset("input_ids", shape=ids.shape, dtype="i4", external=[(str(other), 0, ids.nbytes)])
        elif variant == "virtual_dataset":
            layout = h5py.VirtualLayout(shape=ids.shape, dtype="i4")
            layout[:] = h5py.VirtualSource(str(other), "input_ids", shape=ids.shape)
            f.create_virtual_dataset("input_ids", layout)
        elif variant == "external_link":
            f["input_ids"] = h5py.ExternalLink(str(other), "/input_ids")
        elif variant == "soft_link":
            f.create_dataset("ids", data=ids)
            f["input_ids"] = h5py.SoftLink("/ids")
        elif variant == "group_ids":
            f.create_group("input_ids").create_dataset("values", data=ids)
        elif variant == "gzip_ids":
            f.create_dataset("input_ids", data=ids, compression="gzip", shuffle=True)
        elif variant == "unstored_ids":  # declared, never written: a read returns the fill value for every row
            f.create_dataset("input_ids", shape=ids.shape, dtype="i4")
        else:
            f.create_dataset("input_ids", data=ids.astype({"float64_ids": np.float64, "uint8_ids": np.uint8}[variant]))


def flip_byte(path: Path) -> bytes:
    """Change the byte in the middle of a file in place (its size and name stay); returns the bytes before."""
    before = path.read_bytes()
    with open(path, "r+b") as f:
        f.seek(len(before) // 2)
        f.write(bytes([before[len(before) // 2] ^ 0xFF]))
    return before
