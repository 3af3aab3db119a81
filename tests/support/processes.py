"""Finding torchrun's workers and waiting for a process to end, by polling /proc (a poll, not a timing)."""

import time
from pathlib import Path


def worker_pids(parent: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (Linux /proc)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for item in environ:
            if item.startswith(b"RANK="):
                ranks[int(item[5:])] = pid
    return ranks



def wait_until_gone(pid: int, patience_s: float = 60.0) -> bool:
    """Whether `pid` ends (or is a zombie nobody reaped) within `patience_s`: a poll, not a timing."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False
