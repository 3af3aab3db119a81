"""`prepare --method reference` vs the transcription of NVIDIA's create_pretraining_data.py, same run, same output.

    .venv/bin/python benchmarks/reference_prepare_bench.py [--repeats 5] [--memory] [--report PATH]

On MLPerf's Wikipedia sample (4 MB, the test data beside the repository, split into one sentence
per line) at MLPerf's shapes 512/76, dupe factor 2, seed 12345, it runs, in this process and
interleaved `--repeats` times:
- ours: one part as a `prepare --method reference` worker makes it (reading and tokenizing the file,
  the instances, the rows, the HDF5 file), `reference_prepare.build_part`;
- the peer: tests/oracles/reference_peer.py, the literal transcription of the NVIDIA script (its
  FullTokenizer, strings, its own rng calls, its arrays), plus the same HDF5 write; without
  TensorFlow, so a little faster than the script itself.
Both outputs are compared array for array every time. CPU seconds are this process's user + system
time for each call (what the work costs whatever else the machine runs). NVIDIA's script itself
needs TensorFlow and is not run here; its figure (5,684 instances in a median 18.8 s of one core on
this sample with NLTK's sentence split, as MLPerf made it) is quoted beside.
`--memory` also makes one part of MLPerf's size (the sample repeated to about 27 MB) at dupe factor
10 in a fresh process and reports its time and peak resident memory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "tests"))

from oracles.reference_peer import create_pretraining_data  # noqa: E402

from bert_pretrain.data.vocab import read_vocab  # noqa: E402
from bert_pretrain.options.prepare import InstanceOptions  # noqa: E402
from bert_pretrain.prepare.instances import VocabIds  # noqa: E402
from bert_pretrain.prepare.reference import pipeline as reference_prepare  # noqa: E402

SEQ, PRED, DUPE, SEED = 512, 76, 2, 12345
NVIDIA = {"instances": 5684, "seconds": 18.8}
MLPERF_PART_BYTES = 26_920_000  # do_gather.py's --block_size=26.92 (MB)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ours(text: Path, vocab: Path, output: Path, dupe: int = DUPE) -> int:
    """One part, as a worker makes it (a fresh tokenizer each time: a worker's first part); its rows."""
    reference_prepare._tokenizer.cache_clear()
    job = reference_prepare.PartJob(text, output, str(vocab), "bench", True, InstanceOptions(SEQ, PRED, 0.15, 0.1, dupe),
                                    SEED)
    return reference_prepare.build_part(job, VocabIds.from_tokens(read_vocab(vocab))).instances


def peer(text: Path, vocab: Path, output: Path) -> int:
    arrays = create_pretraining_data(text, vocab, True, SEQ, PRED, 0.15, 0.1, DUPE, SEED)
    with h5py.File(output, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return len(arrays["next_sentence_labels"])


def arrays_of(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {key: f[key][:] for key in f}


def timed(function, *args) -> tuple[float, dict]:
    before = cpu_seconds()
    result = function(*args)
    return cpu_seconds() - before, result


def memory_run(text: Path, vocab: Path, work: Path) -> dict:
    """One MLPerf-size part at dupe factor 10 in a fresh process: (CPU s, instances, peak RSS MiB)."""
    part = work / "part-00000-of-00500"
    source = text.read_text(encoding="utf-8")
    with open(part, "w", encoding="utf-8") as out:
        while out.tell() < MLPERF_PART_BYTES:
            out.write(source)
    # the worker's imports only (this module's would add torch, through the tests' helpers)
    probe = ("import json, resource, sys\n"
             "from pathlib import Path\n"
             "from bert_pretrain.options.prepare import InstanceOptions\n"
             "from bert_pretrain.prepare.instances import VocabIds\n"
             "from bert_pretrain.prepare.reference import pipeline as reference_prepare\n"
             "from bert_pretrain.data.vocab import read_vocab\n"
             "cpu = lambda: (lambda u: u.ru_utime + u.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))\n"
             "t = cpu()\n"
             f"job = reference_prepare.PartJob(Path(sys.argv[1]), Path(sys.argv[3]), sys.argv[2], 'bench', True, "
             f"InstanceOptions({SEQ}, {PRED}, 0.15, 0.1, 10), {SEED})\n"
             "n = reference_prepare.build_part(job, VocabIds.from_tokens(read_vocab(sys.argv[2]))).instances\n"
             "print(json.dumps([cpu() - t, n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))")
    out = subprocess.run([sys.executable, "-c", probe, str(part), str(vocab), str(work / "part.hdf5")],
                         capture_output=True, text=True, check=True)
    seconds, instances, peak = json.loads(out.stdout)
    return {"bytes": part.stat().st_size, "seconds": seconds, "instances": instances, "peak_mib": peak,
            "hdf5_bytes": (work / "part.hdf5").stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", default=str(SHARED / "vocab" / "bert-uncased-vocab.txt"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="also measure one MLPerf-size part at dupe factor 10")
    parser.add_argument("--report", default=None, help="markdown report path (default benchmarks/results/...)")
    args = parser.parse_args()
    from conftest import write_wiki_sentences

    work = Path(tempfile.mkdtemp(prefix="reference-bench-"))
    text = write_wiki_sentences(SHARED, work / "wiki_sentences.txt")
    vocab = Path(args.vocab)
    runs = {"ours": [], "peer": []}
    for repeat in range(args.repeats):
        ours_s, instances = timed(ours, text, vocab, work / "ours.hdf5")
        peer_s, _ = timed(peer, text, vocab, work / "peer.hdf5")
        mine, theirs = arrays_of(work / "ours.hdf5"), arrays_of(work / "peer.hdf5")
        same = sorted(mine) == sorted(theirs) and all(
            mine[k].dtype == theirs[k].dtype and np.array_equal(mine[k], theirs[k]) for k in theirs)
        if not same:
            raise SystemExit("the outputs differ: the benchmark compares only identical outputs")
        runs["ours"].append(ours_s)
        runs["peer"].append(peer_s)
        print(f"repeat {repeat}: {instances} instances, identical; ours {ours_s:.2f} CPU s, peer {peer_s:.2f} CPU s",
              flush=True)
    memory = memory_run(text, vocab, work) if args.memory else None
    shutil.rmtree(work, ignore_errors=True)
    report(args, text_bytes_of(args), instances, runs, memory)


def text_bytes_of(args) -> int:
    return sum(p.stat().st_size for p in (SHARED / "corpus" / "mlperf_wiki_sample").iterdir())


def report(args, corpus_bytes: int, instances: int, runs: dict, memory: dict | None) -> None:
    date = datetime.date.today().isoformat()
    path = Path(args.report or HERE / "results" / f"reference_prepare_{platform.node()}_{date}.md")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    ours_s, peer_s = statistics.median(runs["ours"]), statistics.median(runs["peer"])
    ratios = [p / o for o, p in zip(runs["ours"], runs["peer"])]
    nvidia_rate = NVIDIA["instances"] / NVIDIA["seconds"]
    lines = [f"# prepare --method reference vs NVIDIA's create_pretraining_data.py, {date}", "",
             f"Machine: {cpu}, {os.cpu_count()} CPUs, shared with other jobs (load average {os.getloadavg()[0]:.1f} at "
             f"the end). Python {platform.python_version()}, numpy {np.__version__}, h5py {h5py.__version__}.", "",
             f"Input: the MLPerf Wikipedia sample ({corpus_bytes / 1e6:.1f} MB of WikiExtractor text), one sentence per "
             f"line; vocab `{Path(args.vocab).name}`; {SEQ}/{PRED}, masked_lm_prob 0.15, dupe factor {DUPE}, seed "
             f"{SEED}. Both sides give the same {instances:,} instances, array for array (checked each repeat).", "",
             f"Medians of {args.repeats} interleaved repeats, CPU seconds of this process per call (reading, "
             "tokenizing, instances, HDF5 file).", "",
             "| run | CPU s | instances per CPU s | vs the transcription | vs NVIDIA's script (302/s) |",
             "|---|---:|---:|---:|---:|",
             f"| ours: `prepare --method reference`, one part | {ours_s:.2f} | {instances / ours_s:,.0f} | "
             f"{statistics.median(ratios):.1f}x | {instances / ours_s / nvidia_rate:.1f}x |",
             f"| the transcription of the script (tests/oracles/reference_peer.py), no TensorFlow | {peer_s:.2f} | "
             f"{instances / peer_s:,.0f} | 1.0x | {instances / peer_s / nvidia_rate:.1f}x |",
             f"| NVIDIA's script, measured elsewhere (issue 13; NLTK-split text) | {NVIDIA['seconds']} | "
             f"{nvidia_rate:,.0f} | | 1.0x |", "",
             f"Per repeat, ours: {', '.join(f'{s:.2f}' for s in runs['ours'])} s; peer: "
             f"{', '.join(f'{s:.2f}' for s in runs['peer'])} s; ratios {', '.join(f'{r:.1f}' for r in ratios)}."]
    if memory:
        rate = memory["instances"] / memory["seconds"]
        lines += ["", "## One part of MLPerf's size", "",
                  f"The sample repeated to {memory['bytes'] / 1e6:.1f} MB (MLPerf's parts are 26.92 MB), {SEQ}/{PRED}, "
                  f"dupe factor 10, in a fresh process: {memory['instances']:,} instances in {memory['seconds']:.1f} "
                  f"CPU s ({rate:,.0f}/s), peak resident memory {memory['peak_mib']:.0f} MiB, HDF5 file "
                  f"{memory['hdf5_bytes'] / 1e9:.2f} GB. (Repeated text repeats words, so the tokenizer's memo hits "
                  "more often than on 27 MB of distinct text: tokenizing is a little cheaper here than in the real "
                  "run.)"]
    lines += ["", "Command: `" + " ".join([Path(sys.executable).name, *sys.argv]) + "`"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report: {path}")


if __name__ == "__main__":
    main()
