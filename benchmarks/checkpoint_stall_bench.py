"""How long a checkpoint save stalls training: the blocking write against the background one, in one run.

Training is BERT-base (fp32, LAMB, 30,522-token vocab; 110 M weights, so 1.3 GB of weights and LAMB
moments to write) on small micro-batches, so that a step costs about what the save's copy does and
the stall stands out. Each round trains BEFORE ordinary steps, saves, trains AFTER more steps, waits
for the write, and trains BEFORE ordinary steps again; the median of the ordinary steps is the round's
step time. Two measures: the save call (how long the training thread cannot step: the whole write when
blocking, the copy to host memory in the background way), and the stall (what the save call, the
AFTER steps and the wait took beyond AFTER ordinary steps: it adds what the writer thread's competition
for cores and memory bandwidth costs the steps). The two ways alternate round by round, on the same model
and disk, through the code `train` runs:

- blocking: `save_training_checkpoint` (the write finishes before the next step);
- background: `host_snapshot` (a copy in host memory), then `CheckpointWriter.start`, the next steps,
  and `CheckpointWriter.wait` (the loop waits at the next save or the end of the run).

Reported: each round's figures, the median of each way, and the ratios background / blocking.

    PYTHONPATH=src python benchmarks/checkpoint_stall_bench.py [--rounds 3] [--after 6] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bert_pretrain.build import StepSettings, build
from bert_pretrain.data.loader import DataPosition
from bert_pretrain.data.packing import padded_batch
from bert_pretrain.data.synthetic import synthetic_rows
from bert_pretrain.model import MODEL_SHAPES, BertConfig
from bert_pretrain.step import train_step
from bert_pretrain.train.checkpoint import (
    CheckpointWriter,
    Progress,
    TrainingState,
    gather_rank_states,
    host_snapshot,
    save_training_checkpoint,
)

CPU = torch.device("cpu")
KEYS = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed_steps(state: TrainingState, batch, count: int) -> list[float]:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        train_step(state.model, state.optimizer, state.scaler, [batch], "fp32", CPU)
        times.append(time.perf_counter() - began)
    return times


def save_and_train(state: TrainingState, batch, path: Path, background: bool, after: int) -> tuple[float, float]:
    """(seconds the save call held the training thread, seconds from the save call until the save is done and
    `after` steps are trained)."""
    began = time.perf_counter()
    rank_states = gather_rank_states(state, CPU)
    if background:
        writer = CheckpointWriter()
        writer.start(path, host_snapshot(state, rank_states, run={}))
        held = time.perf_counter() - began
        timed_steps(state, batch, after)
        writer.wait()
    else:
        save_training_checkpoint(path, state, rank_states, run={})
        held = time.perf_counter() - began
        timed_steps(state, batch, after)
    return held, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each way (alternating)")
    parser.add_argument("--before", type=int, default=3, help="ordinary steps before each save (the step time)")
    parser.add_argument("--after", type=int, default=6, help="steps after each save, inside the measured window")
    parser.add_argument("--batch", type=int, default=2, help="sequences of 128 tokens per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on cores other "
                        "processes share)")
    parser.add_argument("--folder", help="where to write the checkpoints (a disk like --output_dir's; default: the "
                        "system's temporary folder)")
    parser.add_argument("--out", type=Path, help="also write the report to this Markdown file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, **MODEL_SHAPES["base"])
    built = build(config, StepSettings(precision="fp32"), CPU)
    state = TrainingState(built.model, built.optimizer, built.scaler, Progress(), DataPosition())
    arrays = synthetic_rows(np.random.default_rng(0), args.batch, 128, 20, config.vocab_size)
    batch = padded_batch(*(arrays[k] for k in KEYS))
    timed_steps(state, batch, 2)  # LAMB's moments exist from the first step: the state has its full size

    rows, stalls, helds = [], {"blocking": [], "background": []}, {"blocking": [], "background": []}
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for round_ in range(args.rounds):
            for way in ("blocking", "background"):
                ordinary = timed_steps(state, batch, args.before)
                path = Path(folder) / f"phase1_ckpt_{round_}_{way}.pt"
                held, window = save_and_train(state, batch, path, way == "background", args.after)
                # ordinary steps on both sides of the window: the load of other processes drifts
                step = statistics.median(ordinary + timed_steps(state, batch, args.before))
                stall = window - args.after * step
                stalls[way].append(stall)
                helds[way].append(held)
                rows.append(f"| {round_ + 1} | {way} | {step * 1000:,.0f} | {held:.2f} | {window:.2f} | {stall:.2f} |")
                size = path.stat().st_size
                path.unlink()
    blocking, background = statistics.median(stalls["blocking"]), statistics.median(stalls["background"])
    held_blocking, held_background = statistics.median(helds["blocking"]), statistics.median(helds["background"])
    lines = [
        f"# Checkpoint stall: blocking against background save ({datetime.date.today()})",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; Python "
        f"{platform.python_version()}, torch {torch.__version__}.",
        f"State: BERT-base fp32 + LAMB, checkpoint file {size / 1e9:.2f} GB; step: {args.batch} x 128 tokens.",
        "",
        "```",
        "PYTHONPATH=src python benchmarks/checkpoint_stall_bench.py " + " ".join(
            f"--{k} {v}" for k, v in (("rounds", args.rounds), ("before", args.before), ("after", args.after),
                                      ("batch", args.batch), ("threads", args.threads))),
        "```",
        "",
        "| round | save | step ms (median around) | save call s | save + steps + wait, s | stall s |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"Median stall: blocking {blocking:.2f} s, background {background:.2f} s; "
        f"background / blocking = **{background / blocking:.3f}**.",
        f"Median save call (the time the training thread cannot step): blocking {held_blocking:.2f} s, background "
        f"{held_background:.2f} s; background / blocking = {held_background / held_blocking:.3f}.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
