"""Record inputs against WikiExtractor input of the same articles: `prepare` instances per CPU second, and the
reading alone.

    .venv/bin/python benchmarks/records_bench.py [--corpus DIR] [--vocab FILE] [--repeats 3] [--report PATH]

The MLPerf WikiExtractor sample (153 articles, 4 MB; `--corpus`, by default the test data beside the
repository) is written as records (`tests/support/corpora.py`): each article as the WikiExtractor reader
leaves it (title line dropped, MLPerf's cleanup applied), so every format gives the same shards as the
WikiExtractor files (checked here by the instance count; the tests check the arrays). Then, interleaved,
`--repeats` times: `bert-pretrain prepare` at the MLPerf shapes 512/76, dupe factor 2, one worker, as a
fresh process, on the WikiExtractor files and on each record format (CPU seconds of all its processes,
imports included). Apart from the reading, the record runs skip the WikiExtractor cleanup (their text is
taken as it is). Also timed in this process: the scan alone (file -> raw documents, what the reading
process does before any worker), megabytes of text per second, for each input.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the record writers shared with the tests (benchmarks -> tests)
sys.path.insert(0, str(REPO / "benchmarks"))

from prepare_bench import SHAPES, corpus_parser, instances_in, measured  # noqa: E402
from support.corpora import VARIANTS, cleaned_articles, write_records  # noqa: E402

from bert_pretrain.prepare import records  # noqa: E402
from bert_pretrain.prepare.text import Tally, wikiextractor_documents  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def scan_seconds(path: Path, fmt: str) -> float:
    """CPU seconds of this process to cut the file into raw documents (the reading process's share)."""
    started = time.process_time()
    if fmt == "wikiextractor":
        for _ in wikiextractor_documents(path, Tally()):
            pass
    else:
        for _ in records.record_documents(path, fmt, "text", Tally()):
            pass
    return time.process_time() - started


def main() -> None:
    args = corpus_parser(__doc__).parse_args()
    work = Path(tempfile.mkdtemp(prefix="records-bench-"))
    corpus = sorted(p for p in Path(args.corpus).iterdir() if p.is_file())
    articles = cleaned_articles(corpus)
    inputs = {"WikiExtractor files": (Path(args.corpus), "wikiextractor")}
    for variant, name in VARIANTS.items():
        folder = work / f"in_{len(inputs)}"
        folder.mkdir()
        path = write_records(articles, folder / name, rows_per_group=64)
        inputs[variant] = (path, records.detect_format(path))
    text_mb = sum(len(a.encode()) for a in articles) / 1e6
    prepare = [sys.executable, "-m", "bert_pretrain", "prepare", "--vocab_file", args.vocab, *SHAPES, "--num_shards",
               "2", "--no_progress", "--workers", "1"]
    results: dict[str, list] = {}
    for repeat in range(args.repeats):
        for name, (path, fmt) in inputs.items():  # interleaved, so load changes hit every variant alike
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            seconds, cpu, peak = measured(prepare + ["--input_file", str(path), "--output_dir", str(out)])
            scans = [scan_seconds(p, fmt) for p in ([path] if path.is_file() else sorted(path.iterdir()))]
            results.setdefault(name, []).append((seconds, cpu, peak, instances_in(out), sum(scans)))
            print(f"{name}: CPU {cpu:.2f} s, {results[name][-1][3]} instances, scan {sum(scans):.3f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    report(args, inputs, results, text_mb, len(articles))


def report(args, inputs: dict, results: dict, text_mb: float, articles: int) -> None:
    import pyarrow
    import zstandard

    date = datetime.date.today().isoformat()
    path = Path(args.report or REPO / "benchmarks" / "results" / f"records_{platform.node()}_{date}.md")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    base = statistics.median(r[3] / r[1] for r in results["WikiExtractor files"])
    lines = [f"# Record inputs against WikiExtractor input, {date}", "",
             f"Machine: {cpu}, {os.cpu_count()} CPUs, shared with other jobs (load average {os.getloadavg()[0]:.1f} "
             f"at the end). Python {platform.python_version()}, pyarrow {pyarrow.__version__}, zstandard "
             f"{zstandard.__version__}.", "",
             f"Corpus: MLPerf's WikiExtractor sample of Wikipedia (`{Path(args.corpus).name}`), {articles} articles ({text_mb:.2f} MB of text after cleanup), written as "
             f"records by `tests/support/corpora.py`. `prepare` flags `{' '.join(SHAPES)} --num_shards 2 --workers 1`. "
             f"Medians of {args.repeats} interleaved runs; CPU: user + system seconds of all the command's "
             "processes, imports included. Scan: CPU seconds of cutting the input into raw documents in one "
             "process (the reading process's serial share).", "",
             "| input | instances | CPU s | instances per CPU s | vs WikiExtractor | scan s | scan MB/s | peak MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in inputs:
        runs = results[name]
        rate = statistics.median(r[3] / r[1] for r in runs)
        scan = statistics.median(r[4] for r in runs)
        lines.append(f"| {name} | {runs[0][3]:,} | {statistics.median(r[1] for r in runs):.2f} | {rate:,.0f} | "
                     f"{rate / base:.2f}x | {scan:.3f} | {text_mb / scan:,.0f} | "
                     f"{statistics.median(r[2] for r in runs):.0f} |")
    lines += ["", "Command:", "", "```", f".venv/bin/python benchmarks/records_bench.py --repeats {args.repeats}", "```",
              ""]
    path.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"report: {path}")


if __name__ == "__main__":
    main()
