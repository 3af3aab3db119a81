"""Several processes (gloo on CPU): DDP equals accumulation exactly; a killed rank never hangs the rest."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, SUBPROCESS_ENV, tiny_config, train_flags, write_data_folder
from support.processes import worker_pids

from bert_pretrain.train.checkpoint import read_training_checkpoint

pytestmark = pytest.mark.slow  # several processes each, 10-40 s apiece on 2 cores
DRIVER = REPO / "tests" / "train" / "fixed_batches_train.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def env() -> dict:
    return {**os.environ, **SUBPROCESS_ENV}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """No dropout, so one process and two see the same numbers (dropout masks differ per process)."""
    config = tiny_config(64, max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return write_data_folder(tmp_path_factory.mktemp("data"), config=config)


def read_metrics(output_dir: Path, kind: str) -> list[dict]:
    records = map(json.loads, (output_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in records if r["kind"] == kind]


@pytest.mark.parametrize("optimizer", ["multi_tensor", "compiled"])
def test_two_processes_equal_one_process_accumulating_two_micro_batches(data, tmp_path, optimizer):
    common = dict(max_steps=12, log_freq=1, eval_iter_start_samples=96, eval_iter_samples=96,
                  target_mlm_accuracy=0.999, compile_optimizer=optimizer == "compiled")
    two, one = tmp_path / "two", tmp_path / "one"
    ddp = subprocess.run([*TORCHRUN, "--nproc_per_node", "2", str(DRIVER),
                          *train_flags(data, two, train_batch_size=8, gradient_accumulation_steps=1, **common)],
                         capture_output=True, text=True, env=env(), timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, str(DRIVER),
                             *train_flags(data, one, train_batch_size=16, gradient_accumulation_steps=2, **common)],
                            capture_output=True, text=True, env=env(), timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    for summary in (json.loads((d / "summary.json").read_text()) for d in (two, one)):
        assert summary["global_batch_size"] == 16 and summary["steps"] == 12
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    losses_two = [r["loss"] for r in read_metrics(two, "train")]
    losses_one = [r["loss"] for r in read_metrics(one, "train")]
    assert len(losses_two) == 12 and losses_two[-1] < losses_two[0]
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
    evals = [[r["mlm_accuracy"] for r in read_metrics(d, "eval")] for d in (two, one)]
    assert len(evals[0]) == 2 and evals[0] == pytest.approx(evals[1], abs=1e-6)
    weights_two = read_training_checkpoint(two / "phase1_ckpt_12.pt")["model"]
    weights_one = read_training_checkpoint(one / "phase1_ckpt_12.pt")["model"]
    for name, tensor in weights_two.items():
        torch.testing.assert_close(tensor, weights_one[name], rtol=1e-5, atol=1e-5, msg=name)


def test_a_bad_shard_on_one_rank_is_named_before_the_others_lose_contact(data, tmp_path):
    """The failing rank reports its cause before its process group goes, so the first error line is the
    cause, not another rank's "lost contact". The damage is in the token bytes, which only the rank that
    reads the shard finds (a truncated file is named before the first step, by the check of every shard)."""
    import shutil

    import h5py

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (bad,) = [p for p in copy.glob("*_shards_uncompressed/part_3_of_*.hdf5")]
    with h5py.File(bad) as f:
        offset, size = f["input_ids"].id.get_offset(), f["input_ids"].id.get_storage_size()
    raw = bytearray(bad.read_bytes())
    raw[offset:offset + size] = b"\xff" * size  # every token id -1
    bad.write_bytes(bytes(raw))
    result = subprocess.run([*TORCHRUN, "--nproc_per_node", "2", "-m", "bert_pretrain", "train",
                             *train_flags(copy, tmp_path / "out", max_steps=60, target_mlm_accuracy=0.999)],
                            capture_output=True, text=True, env=env(), timeout=240)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("bert-pretrain train")]
    assert errors and f"error: {bad}: key 'input_ids' holds token ids -1..-1" in errors[0], result.stderr[-3000:]


def test_an_error_every_rank_hits_is_printed_once(data, tmp_path):
    """A flag error (found before the process group forms) and a bad bert_config (after) fail alike on both
    processes: one line says it, not one per process (a shard only one process reads is still named by that
    process: the test above)."""
    bad_config = tmp_path / "bert_config.json"
    bad_config.write_text(json.dumps({**json.loads((data / "bert_config.json").read_text()), "hidden_dropout_prob": 2}))
    flags = train_flags(data, tmp_path / "out", max_steps=2)
    flags[flags.index("--bert_config_path") + 1] = str(bad_config)
    for extra, said in ((["--train_batch_size", "0"], "--train_batch_size must be at least 1"),
                        ([], f"{bad_config}: hidden_dropout_prob must be a number in [0, 1)")):
        result = subprocess.run([*TORCHRUN, "--nproc_per_node", "2", "-m", "bert_pretrain", "train", *flags, *extra],
                                capture_output=True, text=True, env=env(), timeout=240)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("bert-pretrain train")]
        assert len(errors) == 1 and said in errors[0], result.stderr[-3000:]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through Linux /proc")
def test_a_killed_rank_makes_the_others_exit_with_a_clear_message(data, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([*TORCHRUN, "--nproc_per_node", "2", "-m", "bert_pretrain", "train",
                                *train_flags(data, out, max_steps=1_000_000, target_mlm_accuracy=0.999, log_freq=1,
                                             num_samples_per_checkpoint=320, min_samples_to_start_checkpoints=0)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    deadline = time.time() + 120
    while not list(out.glob("phase1_ckpt_*.pt")):
        assert process.poll() is None and time.time() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.05)
    os.kill(worker_pids(process.pid)[1], signal.SIGKILL)
    killed_at = time.time()
    output = process.communicate(timeout=120)[0]
    assert time.time() - killed_at < 60
    assert process.returncode != 0
    assert "lost contact with another process of the run" in output, output[-3000:]
    assert "is intact" in output
    for checkpoint in out.glob("phase1_ckpt_*.pt"):
        assert read_training_checkpoint(checkpoint)["global_step"] > 0


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through Linux /proc")
def test_a_signal_to_one_rank_stops_every_rank_with_a_checkpoint(data, tmp_path):
    """One node preempted: the rank that got SIGTERM tells the others at the sync point; all stop cleanly."""
    out = tmp_path / "out"
    process = subprocess.Popen([*TORCHRUN, "--nproc_per_node", "2", "-m", "bert_pretrain", "train",
                                *train_flags(data, out, max_steps=1_000_000, target_mlm_accuracy=0.999, log_freq=1,
                                             skip_checkpoint=True)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    deadline = time.time() + 120
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):  # both ranks are in the loop
        assert process.poll() is None and time.time() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.05)
    os.kill(worker_pids(process.pid)[1], signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    # torchrun reports the exit code 128 + 15 of the interrupted workers as a failure (its own traceback);
    # the rank that got no signal must not fail on it (it did: IndexError) nor lose contact with the other
    assert "IndexError" not in output and "lost contact" not in output, output[-5000:]
    checkpoints = list(out.glob("phase1_ckpt_*.pt"))
    assert len(checkpoints) == 1, output[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["stopped_by"], output[-5000:]


def probe(data: Path, out: Path, exchange: bool, steps: int = 6) -> list[list[dict]]:
    """Per process, per step: what tests/train/exchange_probe.py saw train's stream deliver."""
    out.mkdir()
    flags = train_flags(data, out / "run", train_batch_size=12, gradient_accumulation_steps=3,
                        exchange_padding=exchange)
    result = subprocess.run([*TORCHRUN, "--nproc_per_node", "2", str(REPO / "tests" / "train" / "exchange_probe.py"), str(out),
                             str(steps), *flags], capture_output=True, text=True, env=env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_exchange_padding_balances_tokens_over_processes_and_keeps_the_global_batch(data, tmp_path):
    """With --exchange_padding each step's rows of both processes are pooled and dealt longest first: both
    train about the same number of real tokens (within one sequence), the step's rows are the same set as
    without it, and every micro-batch keeps its row count."""
    balanced = probe(data, tmp_path / "on", exchange=True)
    own = probe(data, tmp_path / "off", exchange=False)
    longest = 32  # the data folder's max_seq_length
    gaps_balanced, gaps_own = [], []
    for step in range(6):
        as_set = [sorted(map(tuple, run[0][step]["sequences"] + run[1][step]["sequences"])) for run in (balanced, own)]
        assert as_set[0] == as_set[1]  # the same global batch
        assert all(rank[step]["micro_batch_rows"] == [4, 4, 4] for run in (balanced, own) for rank in run)
        gaps_balanced.append(abs(balanced[0][step]["tokens"] - balanced[1][step]["tokens"]))
        gaps_own.append(abs(own[0][step]["tokens"] - own[1][step]["tokens"]))
    assert max(gaps_balanced) <= longest
    assert sum(gaps_balanced) < sum(gaps_own)
