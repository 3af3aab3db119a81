"""A real single-node Slurm cluster for a test: munged, slurmctld and slurmd started as root with a configuration in
a temporary folder (its own ports, state and logs; /etc/slurm untouched), stopped by their process ids after.

`local_slurm` skips where it cannot run: not root, or Debian's slurm-wlm and munge not installed (a fresh CI
machine: `apt-get install -y slurm-wlm munge` makes it run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CLIENTS = ("srun", "sbatch", "sinfo", "scontrol", "munge")
MUNGE_KEY = Path("/etc/munge/munge.key")


@dataclass
class LocalSlurm:
    conf: Path
    env: dict[str, str]  # SLURM_CONF set: srun, sbatch and scontrol talk to this cluster
    node: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_works() -> bool:
    return subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0


def _start_munged(started: list[subprocess.Popen]) -> None:
    if _munge_works():  # the machine's own munged: used as it is
        return
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
    for folder in (MUNGE_KEY.parent, Path("/run/munge"), Path("/var/lib/munge"), Path("/var/log/munge")):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)
    started.append(subprocess.Popen(["/usr/sbin/munged", "--foreground", "--force"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL))
    _wait_for(_munge_works, "munged to answer")


def _wait_for(ready, what: str, patience_s: float = 60.0) -> None:
    deadline = time.monotonic() + patience_s
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def _node_idle(env: dict) -> bool:
    result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env)
    return result.returncode == 0 and result.stdout.strip() == "idle"


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    missing = [p for p in DAEMONS if not Path(p).exists()] + [c for c in CLIENTS if shutil.which(c) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld, slurmd and munged needs root")
    root = tmp_path_factory.mktemp("slurm")
    node = socket.gethostname().split(".")[0]
    for folder in ("state", "spool", "log"):
        (root / folder).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=test
SlurmctldHost={node}
SlurmUser=root
AuthType=auth/munge
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
NodeName={node} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []
    try:
        _start_munged(started)
        for daemon in DAEMONS[1:]:
            started.append(subprocess.Popen([daemon, "-D", "-f", str(conf)], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, env=env))
        _wait_for(lambda: _node_idle(env), f"the Slurm node to be idle (logs: {root}/log)")
        yield LocalSlurm(conf=conf, env=env, node=node)
    finally:
        for process in reversed(started):  # ours only, by the handle we started them with
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
