"""train_bert_pretraining_amp_dist.sh counts the accelerator's devices through devices.py and, under Slurm, takes
the node count, this node's rank and the first node's address from Slurm's environment.

The mapping is checked everywhere with Slurm's variables set and a stand-in `scontrol` on PATH; a real
single-node Slurm (support/slurm.py, skipped where slurm-wlm is not installed) runs the launcher under `srun`
and `sbatch`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SUBPROCESS_ENV, write_data_folder
from support.launcher import LAUNCHER, launch, tiny_overrides
from support.slurm import local_slurm  # noqa: F401 - a fixture

# What a 2-node x 8-GPU job's second node sees inside `srun --ntasks-per-node=1` (job 4242 on gpu-07, gpu-08).
SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_STEP_ID": "0",
              "SLURM_JOB_NODELIST": "gpu-[07-08]", "SLURM_STEP_NODELIST": "gpu-[07-08]"}
PORT_4242 = str(29500 + 4242 % 1000)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data_folder(tmp_path_factory.mktemp("DATA"), num_shards=4)


@pytest.fixture
def stubs(tmp_path) -> tuple[dict, Path, Path]:
    """(environment, argv record, scontrol record): a python that reports 8 devices and records how it was called,
    and an scontrol that expands 'gpu-[07-08]' as Slurm does, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record, asked = tmp_path / "argv.txt", tmp_path / "scontrol.txt"
    python = bin_dir / "python"
    python.write_text(f"""#!/usr/bin/env bash
if [ "$1" = "-c" ]; then echo 8; exit 0; fi
printf '%s\\n' "$@" > {record}
""")
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"""#!/usr/bin/env bash
echo "$@" >> {asked}
if [ "$1 $2 $3" = "show hostnames gpu-[07-08]" ]; then printf 'gpu-07\\ngpu-08\\n'; exit 0; fi
exit 1
""")
    for stub in (python, scontrol):
        stub.chmod(0o755)
    env = {"PYTHON": str(python), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, record, asked


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_a_slurm_step_gives_the_nodes_the_first_nodes_address_and_which_node_hosts_the_rendezvous(data, stubs):
    env, record, asked = stubs
    second = launch(data, extra_env={**env, **SLURM_STEP})
    assert second.returncode == 0, second.stderr
    argv = record.read_text().splitlines()
    assert _value(argv, "--nnodes") == "2" and _value(argv, "--rdzv_backend") == "c10d"
    assert _value(argv, "--rdzv_endpoint") == f"gpu-07:{PORT_4242}"  # the first node, a port of this job's
    assert _value(argv, "--rdzv_id") == "slurm-4242" and _value(argv, "--nproc_per_node") == "8"
    assert _value(argv, "--rdzv_conf") == "is_host=false" and "--standalone" not in argv
    assert asked.read_text().split() == ["show", "hostnames", "gpu-[07-08]"]
    assert "2 node(s) x 8 process(es) (Slurm node 1)" in second.stderr
    first = launch(data, extra_env={**env, **SLURM_STEP, "SLURM_NODEID": "0"})
    assert first.returncode == 0 and _value(record.read_text().splitlines(), "--rdzv_conf") == "is_host=true"


def test_what_is_set_by_hand_wins_over_slurm(data, stubs):
    env, record, asked = stubs
    by_hand = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29555", "RDZV_ID": "mine"}
    assert launch(data, extra_env={**env, **SLURM_STEP, **by_hand}).returncode == 0
    argv = record.read_text().splitlines()
    assert _value(argv, "--rdzv_endpoint") == "10.0.0.1:29555" and _value(argv, "--rdzv_id") == "mine"
    assert "--rdzv_conf" not in argv and not asked.exists()  # the address is the user's: no host is presumed
    assert launch(data, extra_env={**env, **SLURM_STEP, "NNODES": "1"}).returncode == 0
    assert "--standalone" in record.read_text().splitlines()


def test_a_one_node_slurm_job_runs_standalone(data, stubs):
    env, record, asked = stubs
    one = {**SLURM_STEP, "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "gpu-07",
           "SLURM_STEP_NODELIST": "gpu-07"}
    result = launch(data, extra_env={**env, **one})
    assert result.returncode == 0, result.stderr
    assert "--standalone" in record.read_text().splitlines() and not asked.exists()
    assert "1 node(s) x 8 process(es) (Slurm node 0)" in result.stderr


def test_a_several_node_batch_script_without_srun_is_refused_with_the_fix(data, stubs):
    """sbatch runs its script on the first node only: the rendezvous would wait for nodes that never come."""
    env, record, _ = stubs
    batch = {k: v for k, v in SLURM_STEP.items() if not k.startswith("SLURM_STEP")} | {"SLURM_NODEID": "0"}
    result = launch(data, extra_env={**env, **batch})
    assert result.returncode == 2 and not record.exists()
    assert "runs on the first node only" in result.stderr and "srun --ntasks-per-node=1" in result.stderr


def test_a_node_list_scontrol_cannot_read_is_named(data, stubs):
    env, record, _ = stubs
    result = launch(data, extra_env={**env, **SLURM_STEP, "SLURM_STEP_NODELIST": "bad[", "SLURM_JOB_NODELIST": "bad["})
    assert result.returncode == 2 and not record.exists()
    assert "could not read the first node of Slurm's node list 'bad['" in result.stderr and "MASTER_ADDR" in result.stderr


def test_the_launcher_counts_the_accelerators_devices_through_devices_py(data, tmp_path):
    """The count the launcher runs, in a real interpreter whose torch.accelerator reports 3 XPU devices."""
    record = tmp_path / "argv.txt"
    prelude = ("import types, torch; torch.accelerator = types.SimpleNamespace(is_available=lambda: True, "
               "current_accelerator=lambda: torch.device('xpu'), device_count=lambda: 3)")
    python = tmp_path / "python"
    python.write_text(f"""#!/usr/bin/env bash
if [ "$1" = "-c" ]; then exec {sys.executable} -c "{prelude}
$2"; fi
printf '%s\\n' "$@" > {record}
""")
    python.chmod(0o755)
    result = launch(data, extra_env={"PYTHON": str(python)})
    assert result.returncode == 0, result.stderr
    assert _value(record.read_text().splitlines(), "--nproc_per_node") == "3"


def _in_slurm(slurm, command: list[str], extra_env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**slurm.env, **SUBPROCESS_ENV, "PYTHON": sys.executable, **extra_env}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_the_launcher_trains_under_a_real_srun(local_slurm, data, tmp_path):  # noqa: F811 - the fixture
    out = tmp_path / "results"
    flags = tiny_overrides(data, out, max_steps=6, train_batch_size=8, gradient_accumulation_steps=1,
                           target_mlm_accuracy=0.999, log_freq=2)
    result = _in_slurm(local_slurm, ["srun", "-N1", "--ntasks-per-node=1", "bash", str(LAUNCHER), *flags],
                       {"DATA": str(data)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 node(s) x 1 process(es) (Slurm node 0)" in result.stderr
    assert (out / "summary.json").exists()


@pytest.mark.slow
def test_under_a_real_slurm_the_mapping_reads_its_node_list_and_refuses_a_bare_batch_script(
        local_slurm, data, stubs, tmp_path):  # noqa: F811 - the fixture
    """Slurm's own environment and scontrol: inside srun, node 0 of a (pretended) 2-node step hosts the
    rendezvous at this machine's name; sbatch's script, which has no step id, is refused."""
    env, record, _ = stubs
    env = {**env, "PATH": os.environ["PATH"], "DATA": str(data)}  # the real scontrol
    step = _in_slurm(local_slurm, ["srun", "-N1", "bash", "-c", f"SLURM_NNODES=2 bash {LAUNCHER}"], env)
    assert step.returncode == 0, step.stderr
    argv = record.read_text().splitlines()
    assert _value(argv, "--rdzv_endpoint").split(":")[0] == local_slurm.node
    assert _value(argv, "--rdzv_conf") == "is_host=true" and _value(argv, "--nnodes") == "2"
    log = tmp_path / "batch.out"
    batch = _in_slurm(local_slurm, ["sbatch", "--wait", "-o", str(log), "--wrap",
                                    f"SLURM_NNODES=2 bash {LAUNCHER}"], env)
    assert batch.returncode != 0 and "srun --ntasks-per-node=1" in log.read_text()
