"""train_bert_pretraining_amp_dist.sh: the MLPerf DATA layout in, a compliant log out; routing; two nodes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SUBPROCESS_ENV, write_data_folder, write_prepared_data_folder
from support.launcher import LAUNCHER, compliance, launch, tiny_overrides


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data_folder(tmp_path_factory.mktemp("DATA"), num_shards=4)


@pytest.mark.slow
def test_the_launcher_trains_an_mlperf_data_folder_to_the_target_with_a_compliant_log(data, tmp_path):
    out = tmp_path / "results"
    # 700 samples between evals is not a multiple of the global batch (16): evals round up to whole steps
    result = launch(data, *tiny_overrides(data, out, eval_iter_start_samples=700, eval_iter_samples=700,
                                          gradient_accumulation_steps=2), "--cache_cleared")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 node(s) x 1 process(es)" in result.stderr
    assert "--fp16 needs a GPU" in result.stderr and "--distributed_lamb" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "success" and summary["precision"] == "fp32"
    log = out / "mlperf.log"
    records = [json.loads(line.split(":::MLLOG ", 1)[1]) for line in log.read_text().splitlines()]
    evals = [r for r in records if r["key"] == "eval_accuracy"]
    assert [r["metadata"]["epoch_num"] for r in evals] == [16 * s for s in (44, 88, 132, 175, 219)][:len(evals)]
    assert evals[-1]["value"] >= 0.72 > evals[0]["value"]
    value = {r["key"]: r["value"] for r in records}
    assert value["global_batch_size"] == 16 and value["gradient_accumulation_steps"] == 2
    assert value["opt_lamb_weight_decay_rate"] == 0.01 and value["seed"] == 42  # ours won over the recipe's 17103
    assert value["cache_clear"] is True  # --cache_cleared, as CLEAR_CACHES=1 passes it
    assert records[-1]["key"] == "run_stop" and records[-1]["metadata"]["status"] == "success"
    for ruleset in ("1.0.0", "5.0.0"):
        check = compliance(log, ruleset)
        assert check.returncode == 0 and "SUCCESS" in check.stdout + check.stderr, check.stdout + check.stderr


@pytest.mark.slow
def test_the_launcher_on_shards_made_by_prepare(tmp_path):
    """The MLPerf DATA folder as a user builds it: `prepare` writes the shards and the eval set."""
    data = write_prepared_data_folder(tmp_path / "DATA")
    assert sorted(p.name for p in (data / "4_shards_uncompressed").iterdir()) == [
        f"part_{i}_of_4.hdf5" for i in range(4)]
    out = tmp_path / "results"
    result = launch(data, *tiny_overrides(data, out, eval_iter_start_samples=1280, eval_iter_samples=1280,
                                          gradient_accumulation_steps=2, max_steps=1200))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "success" and summary["final_mlm_accuracy"] >= 0.72
    for ruleset in ("1.0.0", "5.0.0"):
        check = compliance(out / "mlperf.log", ruleset)
        assert check.returncode == 0 and "SUCCESS" in check.stdout + check.stderr, check.stdout + check.stderr


def test_missing_data_pieces_are_all_named(tmp_path):
    (tmp_path / "eval_set_uncompressed").mkdir()
    result = launch(tmp_path)
    assert result.returncode == 2
    for piece in ("2048_shards_uncompressed/", "bert_config.json", "model.ckpt-28252.apex.pt"):
        assert piece in result.stderr
    assert "lacks" in result.stderr and "eval_set_uncompressed/ (" not in result.stderr
    not_a_folder = launch(tmp_path / "nowhere")
    assert not_a_folder.returncode == 2 and "is not a folder" in not_a_folder.stderr


@pytest.mark.slow
def test_bad_input_ends_with_the_workers_line_and_exit_code_not_a_torchrun_traceback(data, tmp_path):
    result = launch(data, *tiny_overrides(data, tmp_path / "out", train_batch_size=8, gradient_accumulation_steps=3))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr, result.stderr
    assert "--train_batch_size 8" in result.stderr and "--gradient_accumulation_steps 3" in result.stderr


@pytest.mark.slow
def test_sigterm_to_the_launcher_checkpoints_and_exits_143(data, tmp_path):
    """A scheduler stops the job: torchrun forwards the signal, the worker writes its checkpoint and
    exits 143, and so does the launcher, without torchrun's SignalException traceback."""
    out = tmp_path / "out"
    env = {**os.environ, **SUBPROCESS_ENV, "PYTHON": sys.executable, "DATA": str(data)}
    flags = tiny_overrides(data, out, max_steps=100_000, target_mlm_accuracy=0.999, log_freq=1,
                           gradient_accumulation_steps=1)
    process = subprocess.Popen(["bash", str(LAUNCHER), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 143, output[-3000:]
    assert "Traceback" not in output and "stopped by SIGTERM" in output, output[-3000:]
    assert len(list(out.glob("phase2_ckpt_*.pt"))) == 1


@pytest.fixture
def recording_python(tmp_path) -> tuple[Path, Path]:
    """A stand-in for python that reports 8 GPUs and records how it was called."""
    record = tmp_path / "argv.txt"
    stub = tmp_path / "python"
    stub.write_text(f"""#!/usr/bin/env bash
if [ "$1" = "-c" ]; then echo 8; exit 0; fi
echo "INIT_LOSS_SCALE=$INIT_LOSS_SCALE" > {record}
printf '%s\\n' "$@" >> {record}
""")
    stub.chmod(0o755)
    return stub, record


def test_one_process_per_gpu_reference_defaults_then_user_flags(data, recording_python):
    stub, record = recording_python
    result = launch(data, "--max_steps", "100", "--train_batch_size", "56", extra_env={"PYTHON": str(stub)})
    assert result.returncode == 0, result.stderr
    argv = record.read_text().splitlines()
    assert argv[0] == "INIT_LOSS_SCALE=1024"
    assert argv[1:3] == ["-m", "bert_pretrain.launch"] and "--standalone" in argv
    assert argv[argv.index("--nproc_per_node") + 1] == "8"
    # the recipe file first, then the data paths, then the user's flags (which win over the file)
    assert argv[argv.index("-m", 3):][:5] == ["-m", "bert_pretrain", "train", "--config",
                                              str(REPO / "configs" / "bert_large_deepsparkhub.toml")]
    assert argv[-4:] == ["--max_steps", "100", "--train_batch_size", "56"]
    assert argv[argv.index("--input_dir") + 1] == str(data / "4_shards_uncompressed")


def test_clear_caches_drops_them_and_the_log_says_so(data, recording_python):
    stub, record = recording_python
    result = launch(data, extra_env={"PYTHON": str(stub), "CLEAR_CACHES": "1"})
    if os.access("/proc/sys/vm/drop_caches", os.W_OK):  # root, on a machine that lets it drop the caches
        assert result.returncode == 0, result.stderr
        argv = record.read_text().splitlines()
        assert "--cache_cleared" in argv and argv.index("--cache_cleared") > argv.index("--config")
    else:
        assert result.returncode == 2 and "could not write /proc/sys/vm/drop_caches" in result.stderr
    assert launch(data, extra_env={"PYTHON": str(stub)}).returncode == 0
    assert "--cache_cleared" not in record.read_text().splitlines()


def test_several_nodes_use_the_c10d_rendezvous(data, recording_python):
    stub, record = recording_python
    nodes = {"PYTHON": str(stub), "NNODES": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29555"}
    assert launch(data, extra_env=nodes).returncode == 0
    argv = record.read_text().splitlines()
    assert argv[argv.index("--nnodes") + 1] == "2" and argv[argv.index("--rdzv_backend") + 1] == "c10d"
    assert argv[argv.index("--rdzv_endpoint") + 1] == "10.0.0.1:29555" and "--standalone" not in argv
    no_master = launch(data, extra_env={**nodes, "MASTER_ADDR": ""})
    assert no_master.returncode == 2 and "MASTER_ADDR" in no_master.stderr


def test_the_restart_budget_defaults_to_3_on_one_node_and_10_on_several(data, recording_python):
    stub, record = recording_python
    for extra, budget in (({}, "3"), ({"NNODES": "2", "MASTER_ADDR": "10.0.0.1"}, "10"), ({"MAX_RESTARTS": "0"}, "0")):
        result = launch(data, extra_env={"PYTHON": str(stub), **extra})
        assert result.returncode == 0 and f"up to {budget} restart(s)" in result.stderr, result.stderr
        argv = record.read_text().splitlines()
        assert argv[argv.index("--max_restarts") + 1] == budget and argv.index("--max_restarts") < argv.index("-m", 3)


def test_without_data_it_runs_the_demo(recording_python):
    stub, record = recording_python
    result = launch(None, "--quick", extra_env={"PYTHON": str(stub)})
    assert result.returncode == 0 and "running the built-in demo" in result.stderr
    assert record.read_text().splitlines()[1:] == ["-m", "bert_pretrain", "demo", "--quick"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_together(data, tmp_path):
    out = tmp_path / "results"
    nodes = {"NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
             "RDZV_ID": f"test-{os.getpid()}"}
    env = {**os.environ, **SUBPROCESS_ENV, "PYTHON": sys.executable, "DATA": str(data), **nodes}
    flags = tiny_overrides(data, out, max_steps=30, train_batch_size=8, gradient_accumulation_steps=1,
                           target_mlm_accuracy=0.999, log_freq=5)
    launched = [subprocess.Popen(["bash", str(LAUNCHER), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in launched]
    assert [p.returncode for p in launched] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch_size"] == 16 and summary["steps"] == 30
    assert "2 node(s) x 1 process(es)" in outputs[0]


@pytest.mark.slow
def test_resume_continues_in_the_newest_results_folder(data, tmp_path):
    """Without --output_dir each run gets ./results/train_log_<date>; --resume_from_checkpoint picks the newest."""
    flags = tiny_overrides(data, tmp_path, max_steps=20, target_mlm_accuracy=0.999, num_samples_per_checkpoint=160,
                           min_samples_to_start_checkpoints=0, gradient_accumulation_steps=1,
                           )[2:] + ["--no-skip_checkpoint"]  # no --output_dir: the script's default; the
    # recipe's --skip_checkpoint undone
    first = launch(data, *flags, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (folder,) = (tmp_path / "results").iterdir()
    assert folder.name.startswith("train_log_") and (folder / "phase2_ckpt_20.pt").exists()  # the recipe passes --phase2
    resumed = launch(data, *flags, "--max_steps", "30", "--resume_from_checkpoint", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from results/{folder.name}/phase2_ckpt_20.pt" in resumed.stderr
    assert list((tmp_path / "results").iterdir()) == [folder] and (folder / "phase2_ckpt_30.pt").exists()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_worker_stops_when_the_launcher_is_killed_outright_and_frees_the_folder(data, tmp_path):
    """kill -9 of the launcher: its worker does not train on alone (parent 1) into the folder a resume uses."""
    from support.processes import wait_until_gone

    from bert_pretrain.folder_lock import hold_folder

    out = tmp_path / "out"
    env = {**os.environ, **SUBPROCESS_ENV, "PYTHON": sys.executable, "DATA": str(data)}
    flags = tiny_overrides(data, out, max_steps=100_000, target_mlm_accuracy=0.999, log_freq=1,
                           gradient_accumulation_steps=1)
    launcher = subprocess.Popen(["bash", str(LAUNCHER), *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env)  # bash execs python: the launcher keeps this pid
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists():
        assert launcher.poll() is None and time.time() < deadline
        time.sleep(0.05)
    workers = _children(launcher.pid)
    assert workers
    launcher.kill()
    launcher.wait()
    try:
        assert all(wait_until_gone(pid) for pid in workers)
    finally:  # an orphan left by a failure would train on
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    with hold_folder(out, "--output_dir", "a resumed run"):  # the worker's lock went with it
        pass


def test_the_cause_named_is_the_worker_that_said_why_or_died_not_those_stopped_after_it(tmp_path):
    from types import SimpleNamespace

    from bert_pretrain.launch import _cause, _describe

    said = tmp_path / "error.json"
    said.write_text("{}")

    def failure(exitcode, timestamp, error_file="<N/A>", message=""):
        return SimpleNamespace(exitcode=exitcode, timestamp=timestamp, error_file=str(error_file), message=message)

    def err(**failures):
        ordered = {int(k[1:]): v for k, v in failures.items()}
        return SimpleNamespace(failures=ordered, get_first_failure=lambda: min(ordered.items(),
                                                                               key=lambda i: i[1].timestamp))

    stopped, lost = failure(-signal.SIGTERM, 100), failure(1, 100)  # torchrun's SIGTERM; "lost contact"
    shard = failure(2, 101, said, "DATA/part_3.hdf5: not a readable HDF5 file")
    assert _cause(err(r0=stopped, r1=shard)) == (1, shard)
    assert _describe(1, shard) == "rank 1: DATA/part_3.hdf5: not a readable HDF5 file"
    killed = failure(-signal.SIGKILL, 101)
    assert _cause(err(r0=lost, r1=killed)) == (1, killed)
    assert _describe(1, killed) == "the process of rank 1 was killed by SIGKILL"
    crashed = failure(1, 102)
    assert _cause(err(r0=stopped, r1=crashed)) == (1, crashed)
    assert _describe(1, crashed) == "the process of rank 1 exited with code 1"
