"""`bert-pretrain inspect SHARD`: what a pretraining shard holds, in numbers and decoded back to text.

Counts, the histogram of sequence lengths, the masked-LM statistics (how many masked tokens per
sequence; how many became [MASK], stayed themselves, or became another token), the share of
random-next NSP pairs, and with `--vocab_file` the first instances decoded, masks visible:
`[MASK>word]` a masked token and its label, `[=word]` a token kept as itself, `[other>word]` a token
replaced by another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bert_pretrain import strict_json
from bert_pretrain.data import shards
from bert_pretrain.data.shards import masked_counts
from bert_pretrain.data.vocab import MASK, read_vocab
from bert_pretrain.errors import InputError

_BINS = 8
_BAR = 40


def read_any(path: str | Path) -> dict[str, np.ndarray]:
    """The padded arrays of a padded or variable-length shard (a varlength one padded to its longest row)."""
    path = Path(path)
    if shards.shard_format(path) == "varlength":
        rows = shards.read_varlength(path)
        width = max((len(r) for r in rows["input_ids"]), default=1)
        predictions = max((len(r) for r in rows["masked_lm_positions"]), default=1)
        return shards.varlength_to_padded(rows, width, predictions)
    return shards.read_padded(path)


def shard_statistics(arrays: dict[str, np.ndarray], mask_id: int | None = None) -> dict:
    """Numbers describing the rows (see the module docstring)."""
    n, width = arrays["input_ids"].shape
    lengths = arrays["input_mask"].astype(bool).sum(1)
    counts = masked_counts(arrays["masked_lm_positions"])
    rows = np.repeat(np.arange(n), counts)
    slots = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    positions = arrays["masked_lm_positions"][rows, slots]
    labels = arrays["masked_lm_ids"][rows, slots]
    shown = arrays["input_ids"][rows, positions]
    values, frequency = np.unique(shown[shown != labels], return_counts=True)
    top = int(values[np.argmax(frequency)]) if len(values) else None
    replacement = mask_id if mask_id is not None else top
    edges = np.linspace(0, width, _BINS + 1).astype(int)
    total = max(len(labels), 1)
    return {
        "instances": int(n),
        "max_seq_length": int(width),
        "max_predictions_per_seq": int(arrays["masked_lm_positions"].shape[1]),
        "tokens": int(lengths.sum()),
        "length_mean": float(lengths.mean()) if n else 0.0,
        "length_histogram": [[int(lo), int(hi), int(((lengths > lo) & (lengths <= hi)).sum())]
                             for lo, hi in zip(edges[:-1], edges[1:])],
        "masked_per_instance_mean": float(counts.mean()) if n else 0.0,
        "masked_share_of_tokens": float(counts.sum() / max(lengths.sum(), 1)),
        "mask_token_id": replacement,
        "masked_as_mask_token": float((shown == replacement).sum() / total) if replacement is not None else 0.0,
        "masked_kept_as_is": float((shown == labels).sum() / total),
        "masked_replaced_by_other": float(((shown != labels) & (shown != replacement)).sum() / total),
        "positions_sorted": _ascending(arrays["masked_lm_positions"], counts),
        "nsp_random_next_share": float(arrays["next_sentence_labels"].mean()) if n else 0.0,
    }


def _ascending(positions: np.ndarray, counts: np.ndarray) -> bool:
    """Whether each row's first `counts[i]` positions strictly increase."""
    steps = np.diff(positions, axis=1)  # (n, P-1)
    used = np.arange(steps.shape[1])[None, :] < counts[:, None] - 1
    return bool(np.all(steps[used] > 0))


def decode_instance(arrays: dict[str, np.ndarray], row: int, vocab: list[str]) -> str:
    """One instance as text, masked positions shown with their labels."""
    length = int(arrays["input_mask"][row].sum())
    words = [vocab[i] if 0 <= i < len(vocab) else f"<{i}>" for i in arrays["input_ids"][row, :length]]
    count = int(masked_counts(arrays["masked_lm_positions"][row : row + 1])[0])
    for position, label in zip(arrays["masked_lm_positions"][row, :count], arrays["masked_lm_ids"][row, :count]):
        shown, original = words[position], vocab[label] if 0 <= label < len(vocab) else f"<{label}>"
        words[position] = f"[={original}]" if shown == original else f"[{shown}>{original}]"
    nsp = "random next" if arrays["next_sentence_labels"][row] else "is next"
    return f"#{row} ({length} tokens, {count} masked, {nsp}): " + " ".join(words)


def inspect_shard(path: str | Path, vocab_file: str | None = None, num_examples: int = 3,
                  as_json: bool = False) -> str:
    """The report `bert-pretrain inspect` prints."""
    arrays = read_any(path)
    vocab = read_vocab(vocab_file) if vocab_file else None
    mask_id = vocab.index(MASK) if vocab and MASK in vocab else None
    stats = shard_statistics(arrays, mask_id)
    if vocab is not None and int(arrays["input_ids"].max(initial=0)) >= len(vocab):
        raise InputError(f"{path}: holds token id {int(arrays['input_ids'].max())}, outside the {len(vocab):,}-token "
                         f"vocab {vocab_file}; pass the vocab the shard was made with")
    if as_json:
        return strict_json.dumps({"path": str(path), "format": shards.shard_format(path), **stats})
    lines = [f"{path}: {shards.shard_format(path)} shard, {stats['instances']:,} instances, max_seq_length "
             f"{stats['max_seq_length']}, max_predictions_per_seq {stats['max_predictions_per_seq']}",
             f"  tokens {stats['tokens']:,} (mean length {stats['length_mean']:.1f}); lengths:"]
    most = max((count for _, _, count in stats["length_histogram"]), default=0) or 1
    for lo, hi, count in stats["length_histogram"]:
        lines.append(f"    {lo + 1:>5}-{hi:<5} {count:>8,} {'#' * round(_BAR * count / most)}")
    name = vocab[stats["mask_token_id"]] if vocab and stats["mask_token_id"] is not None else stats["mask_token_id"]
    lines += [
        f"  masked: {stats['masked_per_instance_mean']:.2f} per instance, {stats['masked_share_of_tokens']:.1%} of "
        f"tokens; {stats['masked_as_mask_token']:.1%} shown as {name}, {stats['masked_kept_as_is']:.1%} kept, "
        f"{stats['masked_replaced_by_other']:.1%} replaced; positions sorted: {stats['positions_sorted']}",
        f"  next sentence: {stats['nsp_random_next_share']:.1%} random next",
    ]
    if vocab is None:
        lines.append("  (pass --vocab_file to see instances decoded)")
    else:
        lines += [decode_instance(arrays, row, vocab) for row in range(min(num_examples, stats["instances"]))]
    return "\n".join(lines)
