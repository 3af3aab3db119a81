"""`bert-pretrain train` fed fixed global batches, for the DDP exactness test (a script, run by torchrun).

Global step k uses rows [k*G, (k+1)*G) of the concatenated training shards (G = the global batch).
Those G rows are cut into world_size * accumulation micro-batches and process r takes the
accumulation consecutive ones starting at r * accumulation, so 2 processes x 1 micro-batch and
1 process x 2 micro-batches see the same rows in every step.

    torchrun --nproc_per_node 2 tests/train/fixed_batches_train.py <train flags>

With TEST_COMPILE_BACKEND set (e.g. aot_eager), --compile compiles with that backend: Dynamo, DDP's graph
splitting and AOT autograd run as in training, without Inductor's CPU code generation (slow on a CPU).
"""

import os
import sys

import numpy as np
import torch

from bert_pretrain.cli import build_parser
from bert_pretrain.data.loader import DataPosition
from bert_pretrain.data.packing import padded_batch
from bert_pretrain.data.shards import PADDED_KEYS, list_shards, read_padded
from bert_pretrain.devices import accelerator_type
from bert_pretrain.options.train import load_config
from bert_pretrain.train.loop import train


class FixedGlobalBatches:
    def __init__(self, config, info, vocab_size, start: DataPosition):
        parts = [read_padded(path) for path in list_shards(config.data.input_dir)]
        self.rows = {k: np.concatenate([p[k] for p in parts]) for k in PADDED_KEYS}
        self.micro = config.batch.micro_batch_size
        self.accumulation = config.batch.gradient_accumulation_steps
        self.rank, self.world_size = info.rank, info.world_size
        self.taken = start.row  # micro-batches taken so far
        self.skipped_shards = []

    @property
    def position(self) -> DataPosition:
        return DataPosition(1, 0, self.taken)

    def __next__(self):
        step, j = divmod(self.taken, self.accumulation)
        first = (step * self.world_size * self.accumulation + self.rank * self.accumulation + j) * self.micro
        index = np.arange(first, first + self.micro) % len(self.rows["next_sentence_labels"])
        self.taken += 1
        return padded_batch(**{k: self.rows[k][index] for k in PADDED_KEYS})

    def close(self):
        pass


def _compile_with(backend: str) -> None:
    compile_module = torch.nn.Module.compile
    torch.nn.Module.compile = lambda self, **kwargs: compile_module(self, **{**kwargs, "backend": backend})


if __name__ == "__main__":
    if os.environ.get("TEST_COMPILE_BACKEND"):
        _compile_with(os.environ["TEST_COMPILE_BACKEND"])
    config = load_config(build_parser().parse_args(["train", *sys.argv[1:]]), accelerator=accelerator_type())
    sys.exit(train(config, stream_factory=FixedGlobalBatches))
