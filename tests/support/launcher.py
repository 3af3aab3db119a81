"""Running train_bert_pretraining_amp_dist.sh as a user does, and the MLPerf compliance checker on its log."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, SUBPROCESS_ENV, train_flags

LAUNCHER = REPO / "train_bert_pretraining_amp_dist.sh"


def launch(data: Path | None, *flags, extra_env=None, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **SUBPROCESS_ENV, "PYTHON": sys.executable, **(extra_env or {})}
    env.pop("DATA", None)
    if data is not None:
        env["DATA"] = str(data)
    return subprocess.run(["bash", str(LAUNCHER), *flags], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=cwd)


def tiny_overrides(data: Path, output_dir: Path, **overrides) -> list[str]:
    """The TINY_RUN values as flags after the launcher's defaults (the data paths come from DATA)."""
    flags = train_flags(data, output_dir, **overrides)
    return flags[flags.index("--output_dir"):]


def compliance(log: Path, ruleset: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
                           "--ruleset", ruleset, "--werror", "--log_output", str(log.with_suffix(f".{ruleset}.txt")),
                           str(log)], capture_output=True, text=True, timeout=120)
