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
        expected_segments = np.r_[np.zeros(seps[0] + 1), np.ones(length - seps[0] - 1), np.zeros(len(arrays["input_ids"][i]) - length)]
        assert (arrays["segment_ids"][i] == expected_segments).all(), i
        count = len(positions)
        assert count == min(max_predictions, max(1, round(length * masked_lm_prob)), length - 3), i
        assert (np.diff(positions) > 0).all() and positions.min() > 0 and not np.isin(positions, seps).any(), i
        assert not arrays["masked_lm_positions"][i, count:].any() and not arrays["masked_lm_ids"][i, count:].any(), i
        segments.append((tokens[1:seps[0]], tokens[seps[0] + 1:length - 1]))
        assert len(segments[-1][0]) >= 1 and len(segments[-1][1]) >= 1, i
    return segments
