"""A command's peak resident memory, measured in a fresh interpreter, to compare a crafted input with an
ordinary one as a ratio (never against a number of bytes or seconds).

The child's address space is capped (`LIMIT_BYTES`), so a reader that believes what a crafted file claims
fails there with a MemoryError (or an abort) instead of taking the machine's memory: a test that sees such
a failure sees the reader unbounded."""

import os
import subprocess
import sys
from dataclasses import dataclass

LIMIT_BYTES = 3 << 30  # torch's import reserves about 0.7 GB of address space; an ordinary read needs far less
# The peak is the process's own high-water mark (VmHWM), not getrusage's ru_maxrss: Linux carries ru_maxrss
# over from the parent through fork and exec, so a child of a large pytest process would report its parent's.
_PROLOGUE = f"""
import atexit, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_BYTES}, {LIMIT_BYTES}))
def _peak():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    print("peak-rss-kb", line.split()[1], file=sys.stderr)
atexit.register(_peak)
"""
_CLI = "from bert_pretrain import cli\nsys.exit(cli.main(sys.argv[1:]))\n"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str  # without the peak line
    peak_kb: int  # 0 when the child died before reporting (an abort)


def python_peak(code: str, *args: str) -> Run:
    """`python -c CODE ARGS` in a new interpreter, address space capped, with its peak RSS."""
    done = subprocess.run([sys.executable, "-c", _PROLOGUE + code, *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    lines = done.stderr.splitlines()
    peak = [int(line.split()[1]) for line in lines if line.startswith("peak-rss-kb ")]
    stderr = "".join(line + "\n" for line in lines if not line.startswith("peak-rss-kb "))
    return Run(done.returncode, done.stdout, stderr, peak[-1] if peak else 0)


def cli_peak(*args: str) -> Run:
    """`bert-pretrain ARGS` in a new interpreter, with its peak RSS."""
    return python_peak(_CLI, *args)


def one_line_refusal(run: Run, fragment: str) -> bool:
    """Exit 2 with one line of error that holds `fragment`."""
    return run.returncode == 2 and run.stderr.count("\n") == 1 and fragment in run.stderr
