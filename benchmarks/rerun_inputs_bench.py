"""What knowing the inputs by content costs `prepare` (prepare/input_digests.py), same run.

    .venv/bin/python benchmarks/rerun_inputs_bench.py [--parts 500] [--part_mb 2] [--workers 1 2] [--report PATH]

Writes `--parts` files of `--part_mb` MB each (MLCommons' release has 500 parts, 13 GB; the count is
what a rerun pays for, the bytes what a first run pays for) into a temporary folder, then times, with
the manifest in a folder beside them:
- a first run: every file read and md5'd, over 1 and 2 worker processes (the page cache holds the files,
  as right after a download: the md5 is the cost, not the disk);
- a rerun of the unchanged folder: the manifest read, every file's status compared with its record,
  nothing read;
- a rerun after one file's mtime changed (`touch`): that file alone read again.
Medians of 5 runs go into a markdown report with the machine and the command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from bert_pretrain.prepare import input_digests  # noqa: E402
from bert_pretrain.prepare.input_digests import InputDigests  # noqa: E402
from bert_pretrain.prepare.workers import Workers  # noqa: E402

_REPEATS = 5


def _write_parts(folder: Path, parts: int, part_mb: int) -> list[Path]:
    line = b"the quick brown fox jumps over the lazy dog, said the reference text, line by line.\n"
    body = line * (part_mb * (1 << 20) // len(line))
    paths = []
    for i in range(parts):
        path = folder / f"part-{i:05d}-of-{parts:05d}"
        path.write_bytes(f"{i}\n".encode() + body)  # each part its own bytes
        paths.append(path)
    return paths


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=500)
    parser.add_argument("--part_mb", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    input_digests._RACY_WINDOW_NS = 0  # the files are seconds old here; a real release's are not
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "text").mkdir()
        (root / "DATA").mkdir()
        paths = _write_parts(root / "text", args.parts, args.part_mb)
        manifest = root / "DATA" / "prepare_manifest.json"
        total_mb = args.parts * args.part_mb
        first = {}
        for count in args.workers:
            runs = []
            for _ in range(_REPEATS):
                manifest.unlink(missing_ok=True)
                with Workers(count) as workers:
                    digests = InputDigests(manifest)
                    runs.append(_timed(lambda: digests.md5s(paths, workers)))  # noqa: B023
                    digests.save()
            first[count] = statistics.median(runs)

        def rerun() -> InputDigests:
            with Workers(1) as workers:
                digests = InputDigests(manifest)
                digests.md5s(paths, workers)
                digests.save()
            return digests

        unchanged = statistics.median(_timed(rerun) for _ in range(_REPEATS))
        assert not rerun().read
        touched = []
        for _ in range(_REPEATS):
            os.utime(paths[0])
            touched.append(_timed(rerun))
        one_touched = statistics.median(touched)
    lines = [f"# Inputs known by content: the cost of a first run and of a rerun ({datetime.date.today()})", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
             f"{platform.python_version()}, {platform.system()} {platform.release()}.",
             f"Command: `.venv/bin/python benchmarks/rerun_inputs_bench.py --parts {args.parts} --part_mb "
             f"{args.part_mb}`; medians of {_REPEATS} runs; the files in the page cache.", "",
             f"{args.parts} files, {total_mb:,} MB in all.", "",
             "| what | seconds | rate |", "|---|---:|---:|"]
    for count, seconds in first.items():
        lines.append(f"| first run: every file read and md5'd, {count} worker(s) | {seconds:.2f} | "
                     f"{total_mb / seconds:,.0f} MB/s |")
    lines.append(f"| rerun, nothing changed: {args.parts} statuses against the manifest, nothing read | "
                 f"{unchanged:.3f} | {unchanged / args.parts * 1e6:.0f} us per file |")
    lines.append(f"| rerun after one file's mtime changed: that file read again | {one_touched:.3f} | |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.report:
        args.report.write_text(report)


if __name__ == "__main__":
    main()
