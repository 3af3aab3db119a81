"""Masked-LM / NSP evaluation over the MLPerf eval set, token-level as MLPerf counts it.

The eval set is the first `num_eval_examples` rows of the HDF5 files of the eval folder (sorted by
name). Under several processes the rows are split contiguously, the first `N % world` ranks taking
one extra (the reference's split), and the sums are all-reduced before the ratios are taken.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bert_pretrain import fp8
from bert_pretrain.batch import Batch
from bert_pretrain.data.packing import PackingOptions, pack_padded_rows, padded_batch
from bert_pretrain.data.shards import PADDED_DTYPES, ShardShape, list_shards, read_padded
from bert_pretrain.distributed import all_reduce_sum, init_distributed, shutdown
from bert_pretrain.errors import InputError
from bert_pretrain.model import SUM_NAMES, BertForPreTraining
from bert_pretrain.options.commands import EvaluateOptions
from bert_pretrain.step import autocast
from bert_pretrain.weights import load_reference_state, read_bert_config, read_weights


@dataclass(frozen=True)
class EvalResult:
    mlm_accuracy: float  # correct masked tokens / all masked tokens
    mlm_loss: float  # mean cross-entropy over all masked tokens
    nsp_accuracy: float
    nsp_loss: float
    masked_tokens: int
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)

    def not_finite(self) -> dict[str, float]:
        """The ratios that are NaN or infinite (diverged weights give them), by name."""
        return {key: value for key, value in self.to_dict().items() if not math.isfinite(value)}


def load_eval_set(eval_dir: str | Path, num_examples: int | None, shape: ShardShape) -> dict[str, np.ndarray]:
    """The first `num_examples` rows (all when None) of the eval folder's shards, validated."""
    if num_examples is not None and num_examples < 1:
        raise InputError(f"--num_eval_examples must be at least 1, got {num_examples} (leave it out to use "
                         f"every row of {eval_dir})")
    parts, have = [], 0
    for path in list_shards(eval_dir):
        if num_examples is not None and have >= num_examples:
            break
        arrays = read_padded(path, shape)
        parts.append(arrays)
        have += len(arrays["next_sentence_labels"])
    if num_examples is not None and have < num_examples:
        raise InputError(
            f"{eval_dir}: holds {have} eval samples, fewer than the {num_examples} asked for; "
            f"pass --num_eval_examples {have} or build a larger eval set"
        )
    rows = {k: np.concatenate([p[k] for p in parts]) for k in PADDED_DTYPES}
    return {k: v[:num_examples] for k, v in rows.items()}


def rank_rows(num_rows: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous share of `num_rows`; the first `num_rows % world_size` get one extra."""
    base, extra = divmod(num_rows, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int, packed: bool = False) -> list[Batch]:
    """Fixed-order batches of the given rows (the last one may be smaller); packed ones are made by the
    training path's packer, so eval runs the same fast path."""
    n = len(arrays["next_sentence_labels"])
    rows = [{k: v[i : i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]
    if packed:
        options = PackingOptions(max_seqlen=arrays["input_ids"].shape[1])
        return [pack_padded_rows(r, options=options) for r in rows]
    return [padded_batch(r["input_ids"], r["segment_ids"], r["input_mask"], r["masked_lm_positions"],
                         r["masked_lm_ids"], r["next_sentence_labels"]) for r in rows]


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, device: torch.device, progress: bool = False,
             precision: str = "fp32") -> EvalResult:
    """Sums of the model's metric counts over `batches` on every rank, reduced, as ratios.

    `precision` is the autocast precision (training evaluates in its own, as the reference does in
    fp16: the fast attention kernels need half precision). 'fp8' evaluates in bf16: float8 layers
    (fp8.py) are a training speed-up, and the accuracy a run stops on is then what its weights give
    anyone who loads them. Everything stays on the device until the one read at the end.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(SUM_NAMES), dtype=torch.float64, device=device)
    with fp8.float8_off(model):
        # disable=None: a bar on a terminal only, so a log file gets no carriage-return updates
        for batch in tqdm(batches, desc="eval", unit="batch", disable=None if progress else True, leave=False):
            with autocast(device, precision):
                out = model(batch.to(device, non_blocking=True))
            sums += out.sums()
    model.train(was_training)
    total = dict(zip(SUM_NAMES, all_reduce_sum(sums).tolist()))
    mlm_count, nsp_count = total["mlm_count"], total["nsp_count"]
    mlm_loss, mlm_correct, nsp_loss, nsp_correct = (total[k] for k in ("mlm_loss_sum", "mlm_correct", "nsp_loss_sum",
                                                                        "nsp_correct"))
    return EvalResult(
        mlm_accuracy=mlm_correct / max(mlm_count, 1.0),
        mlm_loss=mlm_loss / max(mlm_count, 1.0),
        nsp_accuracy=nsp_correct / max(nsp_count, 1.0),
        nsp_loss=nsp_loss / max(nsp_count, 1.0),
        masked_tokens=int(mlm_count),
        samples=int(nsp_count),
    )


def rank_eval_batches(eval_dir: str | Path, shape: ShardShape, *, batch_size: int, rank: int, world_size: int,
                      num_examples: int | None = None, packed: bool = False) -> list[Batch]:
    """This process's contiguous share of the eval set (its first `num_examples` rows; all when None), in
    batches: what `train` and `evaluate` run."""
    arrays = load_eval_set(eval_dir, num_examples, shape)
    mine = rank_rows(len(arrays["next_sentence_labels"]), rank, world_size)
    return eval_batches({k: v[mine] for k, v in arrays.items()}, batch_size, packed=packed)


def evaluate_checkpoint(options: EvaluateOptions) -> EvalResult | None:
    """`bert-pretrain evaluate`: load a checkpoint, evaluate it; the result on rank 0, None elsewhere."""
    if options.eval_batch_size < 1:
        raise InputError(f"--eval_batch_size must be at least 1, got {options.eval_batch_size}")
    config = read_bert_config(options.bert_config_path)
    info = init_distributed(options.device)
    state = read_weights(options.init_checkpoint, config)  # compared with the config before the model is allocated
    model = BertForPreTraining(config)
    load_reference_state(model, state, str(options.init_checkpoint))
    del state
    model.to(info.device)
    shape = ShardShape(options.max_seq_length, options.max_predictions_per_seq, config.vocab_size)
    batches = rank_eval_batches(options.eval_dir, shape, batch_size=options.eval_batch_size, rank=info.rank,
                                world_size=info.world_size, num_examples=options.num_eval_examples)
    result = evaluate(model, batches, info.device, progress=info.is_main, precision=options.precision)
    shutdown()
    not_finite = result.not_finite()  # the sums were reduced: every process sees the same, and exits alike
    if not_finite:
        values = ", ".join(f"{key} {value}" for key, value in not_finite.items())
        raise InputError(f"{options.init_checkpoint}: its weights give a non-finite result on {options.eval_dir} "
                         f"({values}): they have diverged; evaluate an earlier checkpoint of the run (a training run "
                         "that diverges names the last one that passed its check)")
    return result if info.is_main else None
