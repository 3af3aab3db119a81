"""Small training states, built and trained a few steps, and their comparison bit for bit."""

from pathlib import Path

import numpy as np
import torch
from conftest import mlperf_arrays, tiny_config

from bert_pretrain.data.loader import DataPosition
from bert_pretrain.data.packing import padded_batch
from bert_pretrain.model import BertForPreTraining
from bert_pretrain.step import make_grad_scaler, train_step
from bert_pretrain.train.checkpoint import Progress, TrainingState, read_training_checkpoint

CPU = torch.device("cpu")
KEYS = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels")


def make_state(seed=0, precision="fp16") -> TrainingState:
    torch.manual_seed(seed)
    model = BertForPreTraining(tiny_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = make_grad_scaler(precision, CPU, init_scale=2.0**8)
    return TrainingState(model, optimizer, scaler, Progress(), DataPosition())


def trained_state() -> TrainingState:
    state = make_state()
    arrays = mlperf_arrays(np.random.default_rng(0), 4, 16, 3, 100)
    for _ in range(2):
        train_step(state.model, state.optimizer, state.scaler, [padded_batch(*(arrays[k] for k in KEYS))], "fp16", CPU)
    state.progress = Progress(step=2, samples=8, skipped_steps=1, best_mlm_accuracy=0.25,
                              eval_history=[{"step": 1, "samples": 4, "mlm_accuracy": 0.25}])
    state.data_position = DataPosition(epoch=2, slot=3, row=17)
    return state


def assert_same_training_state(a: Path, b: Path) -> None:
    first, second = read_training_checkpoint(a), read_training_checkpoint(b)
    assert first["model"].keys() == second["model"].keys()
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name
    for key, slots in first["optimizer"]["state"].items():
        for slot, value in slots.items():
            assert torch.equal(value, second["optimizer"]["state"][key][slot]), (key, slot)
    assert first["optimizer"]["param_groups"] == second["optimizer"]["param_groups"]
    assert first["progress"] == second["progress"]
    assert first["global_step"] == second["global_step"]
