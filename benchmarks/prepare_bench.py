"""Data-preparation throughput: `bert-pretrain prepare` vs a reference-style single-process peer, same run.

    .venv/bin/python benchmarks/prepare_bench.py [--corpus DIR] [--vocab FILE] [--repeats 3] [--report PATH]

On MLPerf's WikiExtractor sample of Wikipedia (4 MB; `--corpus`, by default the test data beside the
repository) at the MLPerf shapes 512/76, dupe factor 2, seed 12345, it times, each as a fresh process
with the wall clock of the whole command (imports included) and the peak resident memory of its largest
process:
- `prepare` on the WikiExtractor files (cleanup and sentence splitting included), 1 worker and 2 workers;
- `prepare` on the same text already split into sentences (google format), 1 worker;
- the peer: google-research/NVIDIA create_pretraining_data.py's algorithm as that script runs it (one
  process; read every document into lists of token lists, tokenize line by line, then per instance
  Python lists, rng.shuffle of the candidates, per-token masking draws, a global instance shuffle,
  HDF5 out), transcribed here from its semantics with HF tokenizers instead of the Python tokenizer
  and without TensorFlow, so it is faster than the real script; on the sentence-split text.
Medians of `--repeats` runs go into a markdown report with the machine, versions and the commands.
The NVIDIA script itself (TensorFlow) is not run here; its figure measured separately (5,684 instances in a
median 18.8 s on this kind of machine, ~300 instances/s) is quoted for comparison.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the oracles shared with the tests (one direction: benchmarks -> tests)

from oracles.reference_peer import reference_instances  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SHAPES = ["--max_seq_length", "512", "--max_predictions_per_seq", "76", "--masked_lm_prob", "0.15",
          "--dupe_factor", "2", "--random_seed", "12345"]
NVIDIA_REFERENCE = {"instances": 5684, "seconds": 18.8, "peak_mib": 744}


def measured(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of all its processes, peak RSS MiB of its largest process) of `command`,
    run by a fresh helper process so that the rusage of the helper's children is this command's alone."""
    probe = ("import json, resource, subprocess, sys, time\n"
             "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "s = time.perf_counter() - t\n"
             "if r.returncode: sys.exit(r.stderr)\n"
             "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
             "print(json.dumps([s, u.ru_utime + u.ru_stime, u.ru_maxrss / 1024]))")
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{out.stderr}")
    return tuple(json.loads(out.stdout))


def cpu_split(corpus: str, vocab: str, workers: int, output: Path) -> tuple[float, float, float]:
    """(wall s, CPU s of the parent process, CPU s of its worker processes) of `prepare` through the
    Python API in a fresh process: the parent's share is the part that does not run in parallel."""
    probe = ("import json, resource, sys, time\n"
             "from bert_pretrain.options.prepare import PrepareOptions\n"
             "from bert_pretrain.prepare.pipeline import run\n"
             "cpu = lambda who: (lambda u: u.ru_utime + u.ru_stime)(resource.getrusage(who))\n"
             "t, before = time.perf_counter(), cpu(resource.RUSAGE_SELF)\n"
             "run(PrepareOptions(input_files=sys.argv[1], vocab_file=sys.argv[2], output_dir=sys.argv[4], num_shards=4,"
             " dupe_factor=2, workers=int(sys.argv[3]), progress=False))\n"
             "s = time.perf_counter() - t\n"
             "print(json.dumps([s, cpu(resource.RUSAGE_SELF) - before, cpu(resource.RUSAGE_CHILDREN)]))")
    shutil.rmtree(output, ignore_errors=True)
    out = subprocess.run([sys.executable, "-c", probe, corpus, vocab, str(workers), str(output)], capture_output=True,
                         text=True, check=True)
    return tuple(json.loads(out.stdout))


def instances_in(folder: Path) -> int:
    import h5py

    total = 0
    for path in folder.rglob("part_*.hdf5"):
        with h5py.File(path, "r") as f:
            total += f["next_sentence_labels"].shape[0]
    return total


def google_format(corpus: Path, target: Path) -> None:
    """The corpus as one sentence per line, a blank line between documents (the reference's input)."""
    from bert_pretrain.prepare.text import Tally, document_sentences, wikiextractor_documents

    with open(target, "w", encoding="utf-8") as out:
        for path in sorted(p for p in corpus.iterdir() if p.is_file()):
            for body in wikiextractor_documents(path, Tally()):
                out.write("\n".join(document_sentences("wikiextractor", body)) + "\n\n")


def peer(text_file: str, vocab_file: str, output: str) -> None:
    """Reference-style single process (see the module docstring). Run as `prepare_bench.py --peer ...`."""
    import h5py
    import numpy as np
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    seq, pred, prob, dupe, short = 512, 76, 0.15, 2, 0.1
    vocab = [line.strip() for line in open(vocab_file, encoding="utf-8")]
    index = {t: i for i, t in enumerate(vocab)}
    tokenizer = Tokenizer(models.WordPiece(index, unk_token="[UNK]", max_input_chars_per_word=200))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    rng = random.Random(12345)
    documents = [[]]
    for line in open(text_file, encoding="utf-8"):
        line = line.strip()
        if not line:
            documents.append([])
        elif tokens := tokenizer.encode(line, add_special_tokens=False).tokens:
            documents[-1].append(tokens)
    instances = reference_instances([d for d in documents if d], seq, pred, prob, short, dupe, vocab, rng)
    arrays = {"input_ids": np.zeros((len(instances), seq), "i4"), "input_mask": np.zeros((len(instances), seq), "i1"),
              "segment_ids": np.zeros((len(instances), seq), "i1"),
              "masked_lm_positions": np.zeros((len(instances), pred), "i4"),
              "masked_lm_ids": np.zeros((len(instances), pred), "i4"),
              "next_sentence_labels": np.zeros(len(instances), "i1")}
    for i, (tokens, segments, positions, labels, is_random) in enumerate(instances):
        arrays["input_ids"][i, :len(tokens)] = [index[t] for t in tokens]
        arrays["input_mask"][i, :len(tokens)] = 1
        arrays["segment_ids"][i, :len(tokens)] = segments
        arrays["masked_lm_positions"][i, :len(positions)] = positions
        arrays["masked_lm_ids"][i, :len(labels)] = [index[t] for t in labels]
        arrays["next_sentence_labels"][i] = is_random
    Path(output).mkdir(parents=True, exist_ok=True)
    with h5py.File(Path(output) / "part_peer.hdf5", "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


def versions() -> str:
    import h5py
    import numpy
    import tokenizers

    return (f"Python {platform.python_version()}, numpy {numpy.__version__}, h5py {h5py.__version__}, "
            f"tokenizers {tokenizers.__version__}")


def corpus_parser(doc: str) -> argparse.ArgumentParser:
    """The flags the data-preparation benchmarks share: the corpus, the vocab, repeats and the report."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(SHARED / "corpus" / "mlperf_wiki_sample"))
    parser.add_argument("--vocab", default=str(SHARED / "vocab" / "bert-uncased-vocab.txt"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", default=None, help="markdown report path (default benchmarks/results/...)")
    return parser


def main() -> None:
    parser = corpus_parser(__doc__)
    parser.add_argument("--peer", nargs=3, metavar=("TEXT", "VOCAB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return peer(*args.peer)
    work = Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    text = work / "sentences.txt"
    google_format(Path(args.corpus), text)
    # two shards, so two workers have two shards to build; one or two workers write the same files
    prepare = [sys.executable, "-m", "bert_pretrain", "prepare", "--vocab_file", args.vocab, *SHAPES, "--num_shards",
               "2", "--no_progress"]
    runs = {
        "prepare, WikiExtractor input, 1 worker": prepare + ["--input_file", args.corpus, "--workers", "1"],
        "prepare, WikiExtractor input, 2 workers": prepare + ["--input_file", args.corpus, "--workers", "2"],
        "prepare, sentence-split text, 1 worker": prepare + ["--input_file", str(text), "--workers", "1"],
        "peer (reference algorithm, one process), sentence-split text": [
            sys.executable, str(Path(__file__).resolve()), "--peer", str(text), args.vocab],
    }
    results = {}
    for repeat in range(args.repeats):
        for name, command in runs.items():  # interleaved, so load changes hit every variant alike
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            full = command + ([str(out)] if "--peer" in command else ["--output_dir", str(out)])
            seconds, cpu, peak = measured(full)
            results.setdefault(name, []).append((seconds, cpu, peak, instances_in(out)))
            print(f"{name}: {seconds:.2f} s, CPU {cpu:.2f} s, {results[name][-1][3]} instances, peak {peak:.0f} MiB",
                  flush=True)
    splits = {w: [cpu_split(args.corpus, args.vocab, w, work / "split") for _ in range(args.repeats)] for w in (1, 2, 4)}
    shutil.rmtree(work, ignore_errors=True)
    report(args, runs, results, splits)


def report(args, runs: dict, results: dict, splits: dict) -> None:
    date = datetime.date.today().isoformat()
    path = Path(args.report or REPO / "benchmarks" / "results" / f"prepare_{platform.node()}_{date}.md")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    peer_name = next(n for n in runs if n.startswith("peer"))
    peer_rate = statistics.median(i / s for s, _, _, i in results[peer_name])
    reference_rate = NVIDIA_REFERENCE["instances"] / NVIDIA_REFERENCE["seconds"]
    lines = [f"# Data preparation benchmark, {date}", "",
             f"Machine: {cpu}, {os.cpu_count()} CPUs, shared with other jobs (load average "
             f"{os.getloadavg()[0]:.1f} at the end). {versions()}.", "",
             f"Corpus `{args.corpus}`, vocab `{args.vocab}`, flags `{' '.join(SHAPES)}`.", "",
             f"Medians of {args.repeats} interleaved runs. Wall: the whole command, imports included. CPU: user + system "
             "seconds of all its processes (the work, whatever else the machine runs). Peak: the largest process's "
             "resident memory.", "",
             "| run | instances | wall s | instances/s | vs peer | vs NVIDIA | CPU s | instances per CPU s | peak MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in runs:
        seconds = statistics.median(s for s, _, _, _ in results[name])
        rate = statistics.median(i / s for s, _, _, i in results[name])
        cpu_s = statistics.median(c for _, c, _, _ in results[name])
        per_cpu = statistics.median(i / c for _, c, _, i in results[name])
        lines.append(f"| {name} | {results[name][0][3]:,} | {seconds:.2f} | {rate:,.0f} | {rate / peer_rate:.1f}x | "
                     f"{rate / reference_rate:.1f}x | {cpu_s:.2f} | {per_cpu:,.0f} | "
                     f"{max(p for _, _, p, _ in results[name]):.0f} |")
    lines += ["", "Where the CPU goes (WikiExtractor input, 4 shards; `run()` in a fresh process, imports not counted). "
              "The parent reads the input and spools tokens, the workers do the rest; with W idle cores the wall time "
              "would be about parent + workers / W (Amdahl), the last column:", "",
              "| workers | wall s | parent CPU s | workers CPU s | total CPU s | parent + workers / W |",
              "|---:|---:|---:|---:|---:|---:|"]
    for w, runs_w in splits.items():
        wall, parent, kids = (statistics.median(r[k] for r in runs_w) for k in range(3))
        lines.append(f"| {w} | {wall:.2f} | {parent:.2f} | {kids:.2f} | {parent + kids:.2f} | "
                     f"{parent + kids / w if w > 1 else parent:.2f} |")
    lines += ["", f"NVIDIA's create_pretraining_data.py, measured separately (not re-run here: it needs TensorFlow): "
              f"{NVIDIA_REFERENCE['instances']:,} instances in a median {NVIDIA_REFERENCE['seconds']} s = "
              f"{reference_rate:,.0f} instances/s on one core, peak {NVIDIA_REFERENCE['peak_mib']} MiB.", "",
              "Commands (`OUT` a fresh folder each run):", ""]
    lines += [f"- {name}: `{' '.join(cmd)} {'OUT' if '--peer' in cmd else '--output_dir OUT'}`" for name, cmd in runs.items()]
    lines += ["", "Raw runs (wall s, CPU s, peak MiB, instances):", "", "```", json.dumps(results, indent=1), "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
