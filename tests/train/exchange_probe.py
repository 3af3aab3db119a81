"""What each process trains with and without --exchange_padding (a script, run by torchrun).

Takes `steps` optimizer steps of micro-batches from train's own data stream and writes, per step, this
process's real tokens and the sequences themselves (token lists) to <out>/rank<r>.json.

    torchrun --nproc_per_node 2 tests/train/exchange_probe.py OUT STEPS <train flags>
"""

import json
import sys
from pathlib import Path

from bert_pretrain.cli import build_parser
from bert_pretrain.data.loader import DataPosition
from bert_pretrain.devices import accelerator_type
from bert_pretrain.distributed import init_distributed, shutdown
from bert_pretrain.options.train import load_config
from bert_pretrain.train.setup import shard_stream
from bert_pretrain.weights import read_bert_config

if __name__ == "__main__":
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    config = load_config(build_parser().parse_args(["train", *sys.argv[3:]]), accelerator=accelerator_type())
    info = init_distributed(config.system.device)
    vocab_size = read_bert_config(config.checkpoint.bert_config_path).vocab_size
    stream = shard_stream(config, info, vocab_size, start=DataPosition())
    record = []
    for _ in range(steps):
        batches = [next(stream) for _ in range(config.batch.gradient_accumulation_steps)]
        sequences = []
        for batch in batches:
            cu = batch.cu_seqlens.tolist()
            sequences += [batch.input_ids[a:b].tolist() for a, b in zip(cu, cu[1:])]
        record.append({"tokens": sum(len(s) for s in sequences), "sequences": sequences,
                       "micro_batch_rows": [len(b.cu_seqlens) - 1 for b in batches]})
    (out / f"rank{info.rank}.json").write_text(json.dumps(record))
    stream.close()
    shutdown()
