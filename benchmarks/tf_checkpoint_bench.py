"""Reading a TensorFlow checkpoint of MLCommons' size: rate and memory, against a plain read of the same bytes.

    .venv/bin/python benchmarks/tf_checkpoint_bench.py [--work DIR] [--repeats 3] [--report PATH]

Writes a BERT-large checkpoint in google-research names with the MLPerf LAMB slots (`<var>/LAMB`,
`<var>/LAMB_1`, `global_step`, `beta1_power`, `beta2_power`), random float32 values, one data file: the
layout and size of MLCommons' `tf1_ckpt/model.ckpt-28252` (4,034,713,312 data bytes there). The index is
written by the table writer of tests/oracles/tf_table_writer.py (Snappy blocks, as TensorFlow's C++ writer).
Then, in the same run, alternating, medians of `--repeats`:
- a plain read of the weight tensors' bytes into one reused buffer (the page cache's rate, keeps nothing);
- peer: `np.fromfile` of the same bytes into a new array per tensor, all kept (what any reader that returns
  the tensors must do at least; no check);
- `TensorBundle.read` of the same tensors, all kept (CRC-32C verified as they stream into their memory);
- `read_tf_weights` (the above plus the name map and the shape check), in-process and in a fresh process
  (wall clock with imports, peak memory);
- `bert-pretrain convert --input PREFIX --output X.pt` as a fresh process: wall clock, peak memory.
The data file was just written, so reads come from the page cache (a cold read runs at the disk's rate).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from oracles.tf_table_writer import entry_proto, proto_bytes, proto_varint, write_table  # noqa: E402

CONFIG = {"vocab_size": 30522, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
          "intermediate_size": 4096, "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu",
          "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}
CHUNK = 64 << 20


def bert_variables(c: dict) -> dict[str, tuple[int, ...]]:
    """google-research BERT's weight variables and their TensorFlow shapes."""
    h, i = c["hidden_size"], c["intermediate_size"]
    shapes = {"bert/embeddings/word_embeddings": (c["vocab_size"], h),
              "bert/embeddings/position_embeddings": (c["max_position_embeddings"], h),
              "bert/embeddings/token_type_embeddings": (c["type_vocab_size"], h),
              "bert/pooler/dense/kernel": (h, h), "bert/pooler/dense/bias": (h,),
              "cls/predictions/output_bias": (c["vocab_size"],),
              "cls/predictions/transform/dense/kernel": (h, h), "cls/predictions/transform/dense/bias": (h,),
              "cls/seq_relationship/output_weights": (2, h), "cls/seq_relationship/output_bias": (2,)}
    norms = ["bert/embeddings/LayerNorm", "cls/predictions/transform/LayerNorm"]
    for n in range(c["num_hidden_layers"]):
        layer = f"bert/encoder/layer_{n}"
        for dense, (rows, cols) in {"attention/self/query": (h, h), "attention/self/key": (h, h),
                                    "attention/self/value": (h, h), "attention/output/dense": (h, h),
                                    "intermediate/dense": (h, i), "output/dense": (i, h)}.items():
            shapes[f"{layer}/{dense}/kernel"], shapes[f"{layer}/{dense}/bias"] = (rows, cols), (cols,)
        norms += [f"{layer}/attention/output/LayerNorm", f"{layer}/output/LayerNorm"]
    for norm in norms:
        shapes[f"{norm}/gamma"] = shapes[f"{norm}/beta"] = (h,)
    return shapes


def write_mlperf_sized_checkpoint(prefix: Path) -> int:
    """Weights + both LAMB slots + the scalars, streamed to one data file; returns its size in bytes."""
    weights = bert_variables(CONFIG)
    slots = {f"{name}/{slot}": shape for name, shape in weights.items() for slot in ("LAMB", "LAMB_1")}
    names = {**weights, **slots, "global_step": (), "beta1_power": (), "beta2_power": ()}
    rng = np.random.default_rng(0)
    entries, offset = [(b"", proto_varint(1, 1) + proto_bytes(3, proto_varint(1, 1)))], 0
    with open(prefix.with_name(prefix.name + ".data-00000-of-00001"), "wb") as data:
        for name in sorted(names):
            dtype = np.int64 if name == "global_step" else np.float32
            array = (np.array(28252, dtype) if dtype == np.int64
                     else rng.random(names[name], dtype=np.float32) - np.float32(0.5))
            entries.append((name.encode(), entry_proto(array, 0, offset)))
            data.write(array.tobytes())
            offset += array.nbytes
    prefix.with_name(prefix.name + ".index").write_bytes(write_table(entries, snappy=True))
    return offset


def fresh_arrays(bundle, entries) -> float:
    """Each tensor's bytes into a new array, all kept (what any reader that returns them must do)."""
    start = time.perf_counter()
    with open(bundle.data_path(0), "rb", buffering=0) as file:
        kept = [np.fromfile(file, np.uint8, count=e.size, offset=e.offset - file.tell()) for e in entries]
    seconds = time.perf_counter() - start
    del kept
    return seconds


def plain_read(bundle, entries) -> float:
    """The same bytes through one reused buffer: the page cache's rate, nothing kept."""
    buffer = bytearray(CHUNK)
    start = time.perf_counter()
    with open(bundle.data_path(0), "rb", buffering=0) as file:
        for entry in entries:
            file.seek(entry.offset)
            left = entry.size
            while left:
                left -= file.readinto(memoryview(buffer)[:min(CHUNK, left)])
    return time.perf_counter() - start


def bundle_read(bundle, entries) -> float:
    start = time.perf_counter()
    kept = [bundle.read(entry) for entry in entries]
    seconds = time.perf_counter() - start
    del kept
    return seconds


def weights_read(index, config) -> float:
    from bert_pretrain.tf_checkpoint import read_tf_weights

    start = time.perf_counter()
    kept = read_tf_weights(index, config)
    seconds = time.perf_counter() - start
    del kept
    return seconds


def measured(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `command` in a fresh helper process (its children's rusage alone)."""
    probe = ("import json, resource, subprocess, sys, time\n"
             "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "w = time.perf_counter() - t\n"
             "assert r.returncode == 0, r.stderr\n"
             "print(json.dumps([w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))")
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    return tuple(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=None, help="folder for the 4 GB checkpoint (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", default=None, help="write the markdown report here")
    args = parser.parse_args()
    import crc32c
    import torch

    from bert_pretrain.tf_checkpoint import TensorBundle, weight_plan
    from bert_pretrain.weights import read_bert_config

    work = Path(tempfile.mkdtemp(prefix="tf-ckpt-bench-", dir=args.work))
    try:
        prefix = work / "model.ckpt-28252"
        start = time.perf_counter()
        data_bytes = write_mlperf_sized_checkpoint(prefix)
        written_s = time.perf_counter() - start
        (work / "bert_config.json").write_text(json.dumps(CONFIG))
        bundle = TensorBundle(prefix.with_name(prefix.name + ".index"))
        plan, _, skipped = weight_plan(bundle)
        entries = sorted((entry for entry, _ in plan.values()), key=lambda e: e.offset)
        weight_bytes = sum(e.size for e in entries)
        config = read_bert_config(work / "bert_config.json")
        runs = {"plain": [], "fresh": [], "bundle": [], "weights": []}
        for _ in range(args.repeats):
            runs["plain"].append(plain_read(bundle, entries))
            runs["fresh"].append(fresh_arrays(bundle, entries))
            runs["bundle"].append(bundle_read(bundle, entries))
            runs["weights"].append(weights_read(bundle.index, config))
        probe = (f"from pathlib import Path; from bert_pretrain.checkpoint import read_bert_config; "
                 f"from bert_pretrain.tf_checkpoint import read_tf_weights; "
                 f"read_tf_weights(Path({str(bundle.index)!r}), read_bert_config({str(work / 'bert_config.json')!r}))")
        weights_runs = [measured([sys.executable, "-c", probe]) for _ in range(args.repeats)]
        imports = [sys.executable, "-c", "import bert_pretrain.tf_checkpoint"]
        import_runs = [measured(imports) for _ in range(args.repeats)]
        convert_runs = []
        for i in range(args.repeats):
            output = work / f"out{i}.pt"
            convert_runs.append(measured([sys.executable, "-m", "bert_pretrain", "convert", "--input", str(prefix),
                                          "--bert_config_path", str(work / "bert_config.json"),
                                          "--output", str(output)]))
            keys = len(torch.load(output, weights_only=True, mmap=True)["model"])
            output.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    gb = weight_bytes / 1e9
    plain_s, fresh_s, bundle_s, weights_s = (statistics.median(runs[k])
                                             for k in ("plain", "fresh", "bundle", "weights"))
    weights_wall, weights_mib = (statistics.median(x) for x in zip(*weights_runs))
    import_s, import_mib = (statistics.median(x) for x in zip(*import_runs))
    convert_s, convert_mib = (statistics.median(x) for x in zip(*convert_runs))
    largest = max(e.size for e in entries) / 2**20

    def row(label, seconds, mib=""):
        return f"| {label} | {seconds:.2f} | {gb / seconds:.2f} | {fresh_s / seconds:.2f}x | {mib} |"

    lines = [
        f"# Reading a TensorFlow checkpoint of MLCommons' size, {datetime.date.today()}", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the end); Python {platform.python_version()}, torch {torch.__version__}, "
        f"crc32c {metadata.version('crc32c')} (hardware: {crc32c.hardware_based}).", "",
        f"Checkpoint: BERT-large (vocab {config.vocab_size}, {config.num_hidden_layers} layers), "
        f"{len(bundle.entries)} variables, data file {data_bytes:,} B (MLCommons': 4,034,713,312 B), written in "
        f"{written_s:.0f} s; {len(plan)} weight tensors ({weight_bytes:,} B = {weight_bytes / 2**20:,.0f} MiB, "
        f"largest {largest:.0f} MiB), {skipped} optimizer variables skipped (never read). Reads from the page "
        "cache (the file was just written); a cold read runs at the disk's rate.", "",
        f"Medians of {args.repeats} runs; the first four rows alternate in one process, each keeping every tensor "
        "it reads (except the first); the last three are fresh processes (wall clock with imports).", "",
        "| run | seconds | weight GB/s | vs peer | peak MiB |", "|---|---:|---:|---:|---:|",
        row("the bytes through one reused 64 MiB buffer (the page cache's rate; keeps nothing)", plain_s),
        row("peer: `np.fromfile` of each tensor into a new array, kept (no check)", fresh_s),
        row("`TensorBundle.read` of each tensor, kept (CRC-32C verified)", bundle_s),
        row("`read_tf_weights` (the above + name map, shape check against bert_config)", weights_s),
        row("`read_tf_weights` in a fresh Python process (imports included)", weights_wall, f"{weights_mib:,.0f}"),
        f"| a fresh Python process that only imports `bert_pretrain.tf_checkpoint` (torch) | {import_s:.2f} | | | "
        f"{import_mib:,.0f} |",
        f"| `bert-pretrain convert --input PREFIX --bert_config_path ... --output X.pt` ({keys} keys) | "
        f"{convert_s:.2f} | | | {convert_mib:,.0f} |",
        "", "Commands: `" + " ".join([Path(sys.executable).name, "benchmarks/tf_checkpoint_bench.py",
                                       f"--repeats {args.repeats}"]) + "`.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.report:
        Path(args.report).write_text(report)


if __name__ == "__main__":
    main()
