"""Automatic recovery through the launcher, two processes (gloo): a SIGKILLed worker costs only the steps since
the last checkpoint, and the job ends bitwise where an uninterrupted one does; a failure that repeats stops
after the restart budget, naming its cause."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SUBPROCESS_ENV, write_data_folder
from support.launcher import LAUNCHER, launch, tiny_overrides
from support.processes import worker_pids
from support.states import assert_same_training_state

from bert_pretrain.train.recovery import Restart, this_restart

TWO_PROCESSES = {"NPROC_PER_NODE": "2"}
# 30 steps of 2 x 8 rows, a checkpoint every 10; the recipe's --skip_checkpoint undone
RUN = dict(max_steps=30, train_batch_size=8, gradient_accumulation_steps=1, target_mlm_accuracy=0.999, log_freq=1,
           num_samples_per_checkpoint=160, min_samples_to_start_checkpoints=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data_folder(tmp_path_factory.mktemp("data"))


def flags(data: Path, out: Path) -> list[str]:
    return [*tiny_overrides(data, out, **RUN), "--no-skip_checkpoint"]


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("whole") / "out"
    result = launch(data, *flags(data, out), extra_env=TWO_PROCESSES)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def launch_and_kill(data: Path, out: Path, rank: int, when) -> str:
    """Launch the run, SIGKILL the worker of `rank` once `when()` holds; returns the job's output (it must end
    well)."""
    env = {**os.environ, **SUBPROCESS_ENV, **TWO_PROCESSES, "PYTHON": sys.executable, "DATA": str(data)}
    process = subprocess.Popen(["bash", str(LAUNCHER), *flags(data, out)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)  # bash execs the launcher: same pid
    deadline = time.time() + 240
    while not when():
        assert process.poll() is None and time.time() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.002)
    os.kill(worker_pids(process.pid)[rank], signal.SIGKILL)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
def test_a_worker_killed_after_a_checkpoint_restarts_from_it_and_ends_bitwise_equal(data, whole, tmp_path):
    out = tmp_path / "out"
    output = launch_and_kill(data, out, rank=1, when=lambda: (out / "phase2_ckpt_10.pt").exists())
    said = [line for line in output.splitlines() if line.startswith("restart 1 of at most 3: resuming from")]
    assert len(said) == 1, output[-3000:]
    assert_same_training_state(whole / "phase2_ckpt_30.pt", out / "phase2_ckpt_30.pt")
    (restart,) = json.loads((out / "summary.json").read_text())["restarts"]
    assert restart["restart"] == 1 and restart["step"] in (10, 20)
    assert said[0].startswith(f"restart 1 of at most 3: resuming from {out / 'phase2_ckpt_'}{restart['step']}.pt")
    log = out / f"mlperf_resumed_phase2_ckpt_{restart['step']}.log"
    records = [json.loads(line.split(":::MLLOG ", 1)[1]) for line in log.read_text().splitlines()]
    (logged,) = [r for r in records if r["key"] == "restart"]
    assert logged["value"] == 1 and logged["metadata"]["resumed_from"] == restart["resumed_from"]
    assert records[-1]["key"] == "run_stop"


@pytest.mark.slow
def test_a_worker_killed_before_any_checkpoint_restarts_from_the_start_and_ends_bitwise_equal(data, whole, tmp_path):
    out = tmp_path / "out"
    output = launch_and_kill(data, out, rank=0, when=lambda: (out / "metrics.jsonl").exists())
    assert (f"restart 1 of at most 3: no phase2_ckpt_*.pt in {out} yet; starting the run again from the beginning"
            in output), output[-3000:]
    assert_same_training_state(whole / "phase2_ckpt_30.pt", out / "phase2_ckpt_30.pt")
    assert json.loads((out / "summary.json").read_text())["restarts"] == [
        {"restart": 1, "step": 0, "samples": 0, "resumed_from": ""}]
    train_steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                   if r["kind"] == "train"]
    assert train_steps == list(range(1, 31))  # the killed attempt's records are gone, not doubled
    records = [json.loads(line.split(":::MLLOG ", 1)[1]) for line in (out / "mlperf.log").read_text().splitlines()]
    assert [r["value"] for r in records if r["key"] == "restart"] == [1]


@pytest.mark.slow
def test_a_failure_that_repeats_stops_after_the_budget_naming_the_shard(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (bad,) = copy.glob("*_shards_uncompressed/part_3_of_*.hdf5")
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated
    out = tmp_path / "out"
    result = launch(copy, *flags(copy, out), "--max_steps", "60",
                    extra_env={**TWO_PROCESSES, "MAX_RESTARTS": "2"})
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bert-pretrain launch: stopped after 2 restart(s), the budget (MAX_RESTARTS"), last
    assert "the last failure: rank " in last and f"{bad}: not a readable HDF5 file" in last, last
    # the first run and two restarts, then no more (the failing rank says it once per attempt)
    assert result.stderr.count(f"error: {bad}: not a readable HDF5 file") == 3, result.stderr[-5000:]


def test_a_bad_restart_budget_is_named(data, tmp_path):
    result = launch(data, *flags(data, tmp_path / "out"), extra_env={"MAX_RESTARTS": "three"})
    assert result.returncode == 2 and "MAX_RESTARTS=three is not a whole number" in result.stderr


def test_torchruns_restart_count_and_budget_are_read(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert this_restart() is None
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert this_restart() is None  # the job's first attempt
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "5")
    assert this_restart() == Restart(2, 5) and str(this_restart()) == "restart 2 of at most 5"
    monkeypatch.delenv("TORCHELASTIC_MAX_RESTARTS")
    assert str(this_restart()) == "restart 2"


def test_a_restarted_worker_takes_its_folders_newest_checkpoint_over_the_one_it_was_started_with(tmp_path):
    from types import SimpleNamespace

    from bert_pretrain.distributed import DistInfo
    from bert_pretrain.train.checkpoint import CheckpointSchedule
    from bert_pretrain.train.setup import _resume_path

    schedule = CheckpointSchedule(tmp_path, False, 100, 0, 5)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=None)
    given = str(tmp_path / "elsewhere" / "phase1_ckpt_3.pt")
    restart = Restart(1, 3)

    def resume(wanted, restart):
        return _resume_path(SimpleNamespace(checkpoint=SimpleNamespace(resume_from_checkpoint=wanted)), info,
                            schedule, restart)

    assert resume(None, None) == (None, "")
    assert resume(None, restart) == (None, f"restart 1 of at most 3: no phase1_ckpt_*.pt in {tmp_path} yet; starting "
                                           "the run again from the beginning")
    assert resume(given, restart) == (Path(given), "")  # no checkpoint of this job yet: where the user started it
    schedule.path_for(20).write_bytes(b"x")
    schedule.path_for(30).write_bytes(b"x")
    for wanted in (None, "latest", given):
        assert resume(wanted, restart) == (schedule.path_for(30), "")
    assert resume(given, None) == (Path(given), "")  # the first attempt does what it was told


@pytest.mark.slow
def test_a_job_refused_for_an_earlier_runs_folder_is_refused_on_its_restarts_too(data, tmp_path):
    """The first attempt is refused (the folder holds another run's files, and no --resume_from_checkpoint): its
    restarts must not take that run's checkpoint or logs for their own."""
    out = tmp_path / "out"
    one_process = {"NPROC_PER_NODE": "1"}
    earlier = launch(data, *tiny_overrides(data, out, max_steps=2, train_batch_size=8, gradient_accumulation_steps=1,
                                           target_mlm_accuracy=0.999), "--no-skip_checkpoint",
                     extra_env={**one_process, "MAX_RESTARTS": "0"})
    assert earlier.returncode == 0, earlier.stderr[-3000:]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = launch(data, *flags(data, out), extra_env={**one_process, "MAX_RESTARTS": "1"})
    assert again.returncode == 2, again.stderr[-3000:]
    last = again.stderr.strip().splitlines()[-1]
    assert "stopped after 1 restart(s)" in last and f"{out}: holds the checkpoints and logs of an earlier run" in last
    assert again.stderr.count("holds the checkpoints and logs of an earlier run") == 3  # 2 attempts + the last line
    assert "resuming from" not in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_folder_is_this_jobs_only_when_its_first_attempt_marked_it(tmp_path, monkeypatch):
    from bert_pretrain.train.recovery import began_by_this_job, mark_as_this_jobs

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    assert not began_by_this_job(tmp_path)
    mark_as_this_jobs(tmp_path)
    assert began_by_this_job(tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    assert not began_by_this_job(tmp_path)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert not began_by_this_job(tmp_path)
