"""How much a step waits for its slowest process, with and without exchange padding (CPU, no model).

With padding removed a micro-batch costs what its real tokens cost, and all processes wait at the
gradient all-reduce for the one with the most work. This draws optimizer steps of MLPerf-length rows
(data/synthetic.py's histogram of the real Wikipedia data at 512), costs each process's share with the
BERT-large FLOP formula of bench/flops.py (linear layers per token plus attention per token pair), and
reports the slowest process's work over the mean: each process's own rows (what the reference's data
order gives every process) against the rows dealt by data/exchange.py's rule (`balanced_split`).

    python benchmarks/token_balance.py [--steps 2000] [--out benchmarks/results/token_balance_cpu_<date>.md]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bert_pretrain.data.packing import balanced_split  # noqa: E402  (the package need not be installed)
from bert_pretrain.data.synthetic import sample_lengths  # noqa: E402
from bert_pretrain.model import MODEL_SHAPES  # noqa: E402

LARGE = MODEL_SHAPES["large"]


def sequence_cost(lengths: np.ndarray) -> np.ndarray:
    """Encoder FLOPs per sequence (bench/flops.py's per-layer terms; the heads are per masked token)."""
    hidden, inner = LARGE["hidden_size"], LARGE["intermediate_size"]
    return lengths * (8 * hidden**2 + 4 * hidden * inner) + 4 * lengths.astype(np.float64) ** 2 * hidden


def slowest_over_mean(rng, steps: int, processes: int, rows_per_process: int, exchange: bool) -> float:
    ratios = []
    for _ in range(steps):
        lengths = sample_lengths(rng, processes * rows_per_process)
        if exchange:
            shares = balanced_split(lengths, processes)
        else:
            shares = np.split(np.arange(len(lengths)), processes)
        work = np.array([sequence_cost(lengths[s]).sum() for s in shares])
        ratios.append(work.max() / work.mean())
    return float(np.mean(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lines = [f"# Token balance over processes, BERT-large at 512, MLPerf lengths ({datetime.date.today()})", "",
             f"`python benchmarks/token_balance.py --steps {args.steps}`: mean over {args.steps} steps of the "
             "slowest process's encoder FLOPs over the mean process's (1.0 = no process waits).", "",
             "| processes | sequences per process per step | own rows | exchanged | step time saved |",
             "|---:|---:|---:|---:|---:|"]
    for rows in (27, 56, 81):
        for processes in (2, 8, 64):
            own = slowest_over_mean(rng, args.steps, processes, rows, exchange=False)
            dealt = slowest_over_mean(rng, args.steps, processes, rows, exchange=True)
            lines.append(f"| {processes} | {rows} | {own:.3f} | {dealt:.4f} | {1 - dealt / own:.1%} |")
    lines += ["", "A step lasts as long as its slowest process, so `1 - exchanged / own` is the share of the "
              "encoder's step time that exchange padding saves, before the cost of the exchange itself "
              "(one all-gather of the step's rows, about 3.7 kB per 512-token row)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
