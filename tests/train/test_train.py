"""`bert-pretrain train` in one process: the target, exact resume after SIGKILL, signals, bad input."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SUBPROCESS_ENV, cli_here, run_cli, tiny_config, train_flags, write_data_folder
from support.states import assert_same_training_state

from bert_pretrain.data.loader import epoch_files, shard_index
from bert_pretrain.data.shards import list_shards
from bert_pretrain.train.checkpoint import read_training_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data_folder(tmp_path_factory.mktemp("data"))


def start_train(*flags) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bert_pretrain", "train", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **SUBPROCESS_ENV})


def train(*flags, timeout=240) -> subprocess.CompletedProcess:
    return run_cli("train", *flags, env=SUBPROCESS_ENV, timeout=timeout)


def metrics(output_dir: Path, kind: str) -> list[dict]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def wait_for(path: Path, process: subprocess.Popen, timeout=120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.002)


@pytest.mark.slow
def test_a_run_stops_at_the_target_and_its_checkpoint_evaluates_the_same(data, tmp_path):
    out = tmp_path / "out"
    result = train(*train_flags(data, out, phase2=True))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "success" and summary["final_mlm_accuracy"] >= 0.72
    evals = metrics(out, "eval")
    assert [r["step"] for r in evals] == [50 * (i + 1) for i in range(len(evals))]  # 800 samples / 16
    assert summary["steps"] == evals[-1]["step"] and (out / f"phase2_ckpt_{summary['steps']}.pt").exists()
    evaluated = run_cli("evaluate", "--init_checkpoint", str(out / f"phase2_ckpt_{summary['steps']}.pt"),
                        "--bert_config_path", str(data / "bert_config.json"), "--eval_dir",
                        str(data / "eval_set_uncompressed"), "--max_seq_length", "32", "--max_predictions_per_seq",
                        "5", "--num_eval_examples", "64", "--device", "cpu", env=SUBPROCESS_ENV)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["mlm_accuracy"] == pytest.approx(summary["final_mlm_accuracy"], abs=1e-9)
    assert (out / "metrics.png").stat().st_size > 0 and metrics(out, "train")[0]["loss"] > 0
    assert "summary: status success" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["multi_tensor", "compiled"])
def test_a_run_killed_at_any_step_resumes_to_bitwise_the_same_end(data, tmp_path, optimizer):
    flags = dict(max_steps=80, num_samples_per_checkpoint=16 * 10, min_samples_to_start_checkpoints=0,
                 keep_n_most_recent_checkpoints=3, target_mlm_accuracy=0.999, log_freq=7,
                 compile_optimizer=optimizer == "compiled")
    whole = tmp_path / "whole"
    assert train(*train_flags(data, whole, **flags)).returncode == 0

    cut = tmp_path / "cut"
    process = start_train(*train_flags(data, cut, **flags))
    wait_for(cut / "phase1_ckpt_20.pt", process)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (cut / "phase1_ckpt_80.pt").exists()  # it really was cut short
    resumed = train(*train_flags(data, cut, **flags), "--resume_from_checkpoint")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert_same_training_state(whole / "phase1_ckpt_80.pt", cut / "phase1_ckpt_80.pt")
    # metrics.jsonl reads as one run: what the killed segment logged after its checkpoint is gone
    assert [r["step"] for r in metrics(cut, "train")] == [r["step"] for r in metrics(whole, "train")]
    # the killed segment's MLPerf log stays unfinished; the resumed segment writes its own
    assert (cut / "mlperf.log.partial").exists() and (cut / "mlperf_resumed_phase1_ckpt_20.log").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_writes_a_final_checkpoint_and_exits_cleanly(data, tmp_path, signum):
    out = tmp_path / "out"
    process = start_train(*train_flags(data, out, max_steps=100_000, target_mlm_accuracy=0.999,
                                       log_freq=1, skip_checkpoint=True))
    wait_for(out / "metrics.jsonl", process)
    time.sleep(0.5)
    process.send_signal(signum)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + signum, output
    checkpoints = list(out.glob("phase1_ckpt_*.pt"))
    assert len(checkpoints) == 1 and "Traceback" not in output
    state = read_training_checkpoint(checkpoints[0])
    assert state["global_step"] > 0 and str(checkpoints[0]) in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == state["global_step"]


def test_a_repeated_sigterm_waits_for_the_checkpoint_but_a_second_sigint_acts_at_once():
    """A scheduler and torchrun's agent may both send SIGTERM: the second must not kill the process
    before its final checkpoint. Ctrl-C pressed twice still stops at once."""
    script = (
        "import os, signal, time\n"
        "from bert_pretrain.train.loop import _catch_signals\n"
        "signals = []\n"
        "_catch_signals(signals)\n"
        "for _ in range(2):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.05)\n"
        "print('alive', signals)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.05)\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.05)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted at once', signals)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, **SUBPROCESS_ENV},
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["alive [15, 15]", "interrupted at once [15, 15, 2]"]


def test_a_new_run_into_an_earlier_runs_folder_or_a_file_is_refused_and_changes_nothing(data, tmp_path):
    """Its logs would mix with the earlier run's, and keeping --keep_n_most_recent_checkpoints would delete
    its own newer checkpoints as the older ones."""
    out = tmp_path / "out"
    flags = train_flags(data, out, max_steps=3, log_freq=1, num_samples_per_checkpoint=16,
                        min_samples_to_start_checkpoints=0, keep_n_most_recent_checkpoints=1)
    assert train(*flags).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = cli_here("train", *flags)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"{out}: holds the checkpoints and logs of an earlier run (" in again.stderr
    assert "phase1_ckpt_3.pt" in again.stderr and "metrics.jsonl" in again.stderr
    assert again.stderr.strip().endswith("pass --resume_from_checkpoint to continue it, or another --output_dir for "
                                         "a new run (or delete them)"), again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    on_a_file = cli_here("train", *train_flags(data, a_file, max_steps=3))
    assert on_a_file.returncode == 2 and "Traceback" not in on_a_file.stderr
    assert f"--output_dir {a_file}: is a file" in on_a_file.stderr and a_file.read_text() == "mine"


@pytest.mark.slow
def test_a_new_run_into_a_folder_with_an_earlier_runs_logs_is_refused_unless_it_resumes(data, tmp_path):
    """--skip_checkpoint leaves no checkpoint to refuse on; the logs alone are the earlier run's record."""
    out = tmp_path / "out"
    flags = train_flags(data, out, max_steps=2, log_freq=1, skip_checkpoint=True)
    assert cli_here("train", *flags).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = cli_here("train", *flags)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    message = again.stderr.strip().splitlines()[-1]
    assert f"{out}: holds the logs of an earlier run (" in message and "--resume_from_checkpoint" in message
    assert all(name in message for name in ("metrics.jsonl", "mlperf.log")), message
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    told = cli_here("train", *flags, "--resume_from_checkpoint", "latest")  # nothing to resume: anew, as asked
    assert told.returncode == 0, told.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_a_second_run_into_a_folder_being_trained_into_is_refused_with_the_pid(data, tmp_path, monkeypatch):
    """The first run holds --output_dir; a second launch meanwhile is one line, exit 2, and touches nothing."""
    from bert_pretrain.train import loop

    out, alone = tmp_path / "out", tmp_path / "alone"
    flags = train_flags(data, out, max_steps=3, log_freq=1, num_samples_per_checkpoint=16,
                        min_samples_to_start_checkpoints=0)
    real, seen = loop._loop, []

    def second_run_meanwhile(run):
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        seen.append(train(*flags, timeout=120))
        seen.append(before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()})
        return real(run)

    monkeypatch.setattr(loop, "_loop", second_run_meanwhile)
    assert cli_here("train", *flags).returncode == 0
    monkeypatch.undo()
    second, unchanged = seen
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"--output_dir {out.resolve()}: another bert-pretrain process (pid {os.getpid()})" in second.stderr
    assert unchanged
    assert cli_here("train", *train_flags(data, alone, max_steps=3, log_freq=1, num_samples_per_checkpoint=16,
                                          min_samples_to_start_checkpoints=0)).returncode == 0
    weights = [read_training_checkpoint(folder / "phase1_ckpt_3.pt")["model"] for folder in (out, alone)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_non_finite_loss_stops_naming_the_step_and_deletes_the_checkpoint_whose_weights_gave_it(data, tmp_path):
    out = tmp_path / "out"
    # A learning rate of 1e30 makes the first update blow the weights up (still finite, so phase1_ckpt_1.pt is
    # written); the second loss, the one those weights give, is not finite.
    result = train(*train_flags(data, out, learning_rate=1e30, warmup_proportion=0, log_freq=1,
                                num_samples_per_checkpoint=16, min_samples_to_start_checkpoints=0))
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "loss of step 2 is not finite" in message and "no checkpoint of this run passed" in message
    assert "phase1_ckpt_1.pt, the last one written, was deleted" in message
    assert not list(out.glob("phase1_ckpt_*.pt"))


def _corrupt_the_second_shard_of_rank0(data: Path, copy: Path, truncate: bool = False) -> Path:
    """Its token bytes overwritten (damage only reading the data finds), or the file cut short (its metadata lost)."""
    import h5py

    shards = copy / "4_shards_uncompressed"
    shards.mkdir(parents=True)
    for f in list_shards(next(data.glob("*_shards_uncompressed"))):
        (shards / f.name).write_bytes(f.read_bytes())
    second = epoch_files(list_shards(shards), 42, 1, 1)[shard_index(1, 0, 1, 4)]
    raw = bytearray(second.read_bytes())
    if truncate:
        second.write_bytes(bytes(raw[:300]))
        return second
    with h5py.File(second) as f:
        offset, size = f["input_ids"].id.get_offset(), f["input_ids"].id.get_storage_size()
    raw[offset:offset + size] = b"\xff" * size
    second.write_bytes(bytes(raw))
    return second


def test_a_shard_whose_metadata_is_damaged_is_named_before_the_first_step(data, tmp_path):
    bad = _corrupt_the_second_shard_of_rank0(data, tmp_path / "copy", truncate=True)
    out = tmp_path / "out"
    flags = train_flags(data, out, max_steps=1)
    flags[1] = str(bad.parent)
    result = cli_here("train", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{bad}: not a readable HDF5 file" in result.stderr and "pass --skip_bad_shards" in result.stderr
    assert not out.exists() or not list(out.glob("*ckpt*"))
    skipped = cli_here("train", *flags, "--skip_bad_shards")
    assert skipped.returncode == 0, skipped.stderr
    assert f"note: the training shard {bad} will be skipped" in skipped.stderr


@pytest.mark.slow
def test_a_corrupt_shard_met_mid_run_stops_naming_it_with_checkpoints_intact(data, tmp_path):
    bad = _corrupt_the_second_shard_of_rank0(data, tmp_path / "copy")
    out = tmp_path / "out"
    flags = train_flags(data, out, num_samples_per_checkpoint=32, min_samples_to_start_checkpoints=0)
    flags[1] = str(bad.parent)
    result = train(*flags)
    assert result.returncode == 2 and str(bad) in result.stderr and "--skip_bad_shards" in result.stderr
    assert read_training_checkpoint(out / "phase1_ckpt_4.pt")["global_step"] == 4  # 64 rows = 4 steps
    assert not list(out.glob(".*tmp*"))

    # 40 steps: about three epochs over the three good shards, so the bad one is met three times and counted once
    skipped = train(*flags, "--skip_bad_shards", "--max_steps", "40", "--output_dir", str(tmp_path / "skip"))
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stderr.count(f"skipped an unreadable training shard: {bad}: ") == 1  # said once, not per epoch
    assert json.loads((tmp_path / "skip" / "summary.json").read_text())["skipped_shards"] == 1


def test_a_bert_config_that_does_not_match_the_checkpoint_is_named(data, tmp_path):
    other = tmp_path / "bert_config.json"
    other.write_text(json.dumps(tiny_config(64, hidden_size=48, max_position_embeddings=32).to_dict()))
    flags = train_flags(data, tmp_path / "out")
    flags[flags.index("--bert_config_path") + 1] = str(other)
    result = cli_here("train", *flags)
    assert result.returncode == 2
    assert "model.ckpt-28252.apex.pt" in result.stderr and "--bert_config_path" in result.stderr
    assert "mis-shaped" in result.stderr and "Traceback" not in result.stderr


def test_fused_norm_without_triton_or_a_gpu_is_named(data, tmp_path):
    result = run_cli("train", *train_flags(data, tmp_path / "out", fused_norm=True),
                     env={**SUBPROCESS_ENV, "TRITON_INTERPRET": ""})  # the CPU, without Triton's interpreter
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--fused_norm needs" in result.stderr and "run without --fused_norm" in result.stderr


def test_an_eval_set_smaller_than_num_eval_examples_is_named(data, tmp_path):
    result = cli_here("train", *train_flags(data, tmp_path / "out", num_eval_examples=10000))
    assert result.returncode == 2
    assert "eval_set_uncompressed" in result.stderr and "--num_eval_examples 64" in result.stderr


def test_an_eval_set_made_with_other_settings_is_named_as_the_eval_set(data, tmp_path):
    """The length flags serve the training shards too: the fix is to remake the eval set, not the flag."""
    from bert_pretrain.data.shards import read_padded, write_padded

    copy = tmp_path / "DATA"
    shutil.copytree(data, copy)
    eval_file = next((copy / "eval_set_uncompressed").glob("*.hdf5"))
    arrays = read_padded(eval_file)
    arrays = {k: (np.pad(v, ((0, 0), (0, 8))) if v.ndim == 2 and v.shape[1] == arrays["input_ids"].shape[1] else v)
              for k, v in arrays.items()}  # 8 more columns of padding: another max_seq_length
    write_padded(eval_file, arrays)
    result = cli_here("train", *train_flags(copy, tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the eval set does not match this run's training settings" in result.stderr
    assert "pass --max_seq_length" not in result.stderr


def test_resume_without_a_checkpoint_starts_a_new_run_and_bf16_trains_on_cpu(data, tmp_path):
    out = tmp_path / "out"
    result = train(*train_flags(data, out, max_steps=6, bf16=True, log_freq=2), "--resume_from_checkpoint")
    assert result.returncode == 0, result.stderr
    assert "found no phase1_ckpt_*.pt" in result.stderr
    losses = [r["loss"] for r in metrics(out, "train")]
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)
    assert json.loads((out / "summary.json").read_text())["precision"] == "bf16"


def test_the_shipped_tiny_config_runs(data, tmp_path):
    flags = train_flags(data, tmp_path / "out")
    flags = flags[:10] + ["--config", str(REPO / "configs" / "tiny.toml"), "--max_seq_length", "32",
                          "--max_predictions_per_seq", "5", "--num_eval_examples", "64", "--max_steps", "4",
                          "--log_freq", "2"]
    result = train(*flags)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 4


def _without(flags: list[str], name: str) -> list[str]:
    """`flags` without `--name VALUE`."""
    at = flags.index(name)
    return flags[:at] + flags[at + 2:]


def test_a_disk_that_fills_during_a_checkpoint_save_is_one_line_and_keeps_the_earlier_ones(data, tmp_path,
                                                                                            monkeypatch):
    real_save, saves = torch.save, []

    def disk_fills_on_the_third(payload, file, *args, **kwargs):
        saves.append(file)
        if len(saves) < 3:
            return real_save(payload, file, *args, **kwargs)
        target = file if isinstance(file, (str, Path)) else file.name  # a path or an open file
        Path(target).write_bytes(b"PK partial")  # some bytes reached the temporary
        # as torch fails on a full disk: the write's ENOSPC, then closing the archive fails again over it
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(torch, "save", disk_fills_on_the_third)
    out = tmp_path / "out"
    result = cli_here("train", *train_flags(data, out, max_steps=4, num_samples_per_checkpoint=16,
                                            min_samples_to_start_checkpoints=0))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "phase1_ckpt_3.pt: the checkpoint could not be written (No space left on device)" in message
    assert f"the last checkpoint, {out / 'phase1_ckpt_2.pt'}, is intact" in message and "--output_dir" in message
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir() if "ckpt" in p.name) == ["phase1_ckpt_1.pt", "phase1_ckpt_2.pt"]
    assert read_training_checkpoint(out / "phase1_ckpt_2.pt")["global_step"] == 2  # whole, and no temporary left


@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
def test_an_output_dir_that_cannot_be_written_is_named_before_training(data, tmp_path, where):
    if where == "under_a_file":
        (tmp_path / "a_file").write_text("mine")
        out = tmp_path / "a_file" / "out"
    else:
        out = tmp_path / "read_only"
        out.mkdir()
        out.chmod(0o555)
        if os.access(out, os.W_OK):  # root: permission bits do not stop its writes
            pytest.skip("permission bits do not stop this user's writes")
    result = cli_here("train", *train_flags(data, out, max_steps=1))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"--output_dir {out}: cannot be written" in result.stderr and "pass a folder" in result.stderr


def test_shards_wider_than_the_position_embeddings_are_refused_before_a_step(data, tmp_path):
    """The shards are 32 tokens wide; a model with 16 positions cannot read them (an IndexError mid-step)."""
    narrow = tmp_path / "bert_config.json"
    narrow.write_text(json.dumps(tiny_config(64, max_position_embeddings=16).to_dict()))
    flags = _without(train_flags(data, tmp_path / "out", max_steps=2), "--init_checkpoint")  # random weights
    flags[flags.index("--bert_config_path") + 1] = str(narrow)
    result = cli_here("train", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (f"--max_seq_length 32 (the width of the shards) is more than the max_position_embeddings 16 of {narrow}"
            in result.stderr)
    assert not list((tmp_path / "out").glob("phase1_ckpt_*.pt"))


@pytest.mark.parametrize("field, value", [("hidden_dropout_prob", 2.0), ("attention_probs_dropout_prob", -0.1),
                                          ("layer_norm_eps", 0), ("initializer_range", "0.02")])
def test_a_bert_config_value_out_of_range_is_named_with_its_file(data, tmp_path, field, value):
    values = json.loads((data / "bert_config.json").read_text())
    bad = tmp_path / "bert_config.json"
    bad.write_text(json.dumps({**values, field: value}))
    flags = train_flags(data, tmp_path / "out", max_steps=1)
    flags[flags.index("--bert_config_path") + 1] = str(bad)
    result = cli_here("train", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{bad}: {field} must be a number" in result.stderr and f"got {value!r}" in result.stderr


class _RunsCodeWhenLoaded:
    """A pickled object that would create a file if unpickled (the safe loader must refuse it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resuming_from_a_checkpoint_the_safe_loader_refuses_says_why_without_torchs_unsafe_advice(data, tmp_path):
    from bert_pretrain.train.checkpoint import FORMAT

    marker, crafted = tmp_path / "code_ran", tmp_path / "phase1_ckpt_1.pt"
    torch.save({"format": FORMAT, "model": {}, "run": _RunsCodeWhenLoaded(marker)}, crafted)
    result = cli_here("train", *train_flags(data, tmp_path / "out", max_steps=2),
                      "--resume_from_checkpoint", str(crafted))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{crafted}: holds objects other than tensors and plain data" in result.stderr
    assert "refused for safety" in result.stderr and "weights_only" not in result.stderr
    assert not marker.exists()


def test_the_steps_after_a_checkpoint_run_while_it_is_written_and_writes_never_overlap(data, tmp_path, monkeypatch):
    """The first save's write holds until two more steps are trained (up to a minute): a blocking save never
    lets them run. Each later save waits for the write before it."""
    import threading

    from bert_pretrain.train import loop

    real_save, real_step = torch.save, loop.train_step
    steps, writing, seen = [], [], {"overlap": False, "steps_during_first_write": 0}
    lock = threading.Lock()

    def counted_step(*args, **kwargs):
        steps.append(1)
        return real_step(*args, **kwargs)

    def held_save(payload, file, *args, **kwargs):
        with lock:
            seen["overlap"] |= bool(writing)
            writing.append(1)
        try:
            if payload["global_step"] == 2:  # saved after the 2nd step; counted from there, not from when this
                deadline = time.monotonic() + 60  # thread got to run (step 3 may have started already)
                while len(steps) < 4 and time.monotonic() < deadline:
                    time.sleep(0.01)
                seen["steps_during_first_write"] = len(steps) - 2
            return real_save(payload, file, *args, **kwargs)
        finally:
            writing.pop()

    monkeypatch.setattr(loop, "train_step", counted_step)
    monkeypatch.setattr(torch, "save", held_save)
    out = tmp_path / "out"
    result = cli_here("train", *train_flags(data, out, max_steps=8, log_freq=1, num_samples_per_checkpoint=32,
                                            min_samples_to_start_checkpoints=0, keep_n_most_recent_checkpoints=10))
    assert result.returncode == 0, result.stderr
    assert seen == {"overlap": False, "steps_during_first_write": 2}
    assert sorted(p.name for p in out.glob("phase1_ckpt_*.pt")) == [f"phase1_ckpt_{s}.pt" for s in (2, 4, 6, 8)]
    assert read_training_checkpoint(out / "phase1_ckpt_2.pt")["progress"]["samples"] == 32  # the state at step 2


def test_checkpoint_every_minutes_adds_checkpoints_at_the_sync_points(data, tmp_path):
    """A cadence of 6 microseconds is due at every sync point (here every log, 2 steps); the sample cadence
    (the default 500,000) never is."""
    out = tmp_path / "out"
    result = cli_here("train", *train_flags(data, out, max_steps=6, log_freq=2, min_samples_to_start_checkpoints=0,
                                            checkpoint_every_minutes=1e-7))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("phase1_ckpt_*.pt")) == [f"phase1_ckpt_{s}.pt" for s in (2, 4, 6)]
    negative = cli_here("train", *train_flags(data, tmp_path / "other", checkpoint_every_minutes=-1))
    assert negative.returncode == 2 and "--checkpoint_every_minutes must be >= 0" in negative.stderr


@pytest.mark.slow
def test_a_process_killed_while_writing_a_checkpoint_leaves_the_one_before_intact(data, tmp_path):
    """The second checkpoint's write stops half way (its bytes in the temporary) and the process is killed: the
    first stays whole, the resumed run removes the temporary and continues from the first."""
    script = ("import sys, time, torch\n"
              "real, calls = torch.save, []\n"
              "def half_then_hang(payload, file, *args, **kwargs):\n"
              "    calls.append(1)\n"
              "    if len(calls) == 2:\n"
              "        file.write(b'PK half a checkpoint'); file.flush(); time.sleep(3600)\n"
              "    return real(payload, file, *args, **kwargs)\n"
              "torch.save = half_then_hang\n"
              "from bert_pretrain import cli\n"
              "sys.exit(cli.main(sys.argv[1:]))\n")
    out = tmp_path / "out"
    flags = train_flags(data, out, max_steps=40, log_freq=1, num_samples_per_checkpoint=16 * 5,
                        min_samples_to_start_checkpoints=0, target_mlm_accuracy=0.999)
    process = subprocess.Popen([sys.executable, "-c", script, "train", *flags], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, **SUBPROCESS_ENV})
    deadline = time.time() + 120
    while not list(out.glob(".phase1_ckpt_10.pt.tmp-*")):
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert not (out / "phase1_ckpt_10.pt").exists()
    assert read_training_checkpoint(out / "phase1_ckpt_5.pt")["global_step"] == 5
    resumed = train(*flags, "--resume_from_checkpoint")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out / 'phase1_ckpt_5.pt'} at step 5" in resumed.stderr
    assert not list(out.glob(".*tmp*")) and read_training_checkpoint(out / "phase1_ckpt_40.pt")["global_step"] == 40


def _refused_runs(data: Path, tmp_path: Path) -> list[tuple[list[str], str]]:
    """(train flags, what the refusal says) for runs refused by something found while setting up."""
    from conftest import easy_mlperf_arrays, write_crafted_shard

    from bert_pretrain.data.shards import write_padded

    good = train_flags(data, tmp_path / "unused", max_steps=1)
    input_dir = good[1]

    def changed(**values) -> list[str]:
        flags = list(good)
        for flag, value in values.items():
            flags[flags.index(f"--{flag}") + 1] = str(value)
        return flags

    narrow = tmp_path / "narrow_config.json"
    narrow.write_text(json.dumps(tiny_config(64, max_position_embeddings=16).to_dict()))
    small_vocab = tmp_path / "small_vocab_config.json"
    small_vocab.write_text(json.dumps(tiny_config(32, max_position_embeddings=32).to_dict()))
    rng = np.random.default_rng(5)
    mixed = tmp_path / "mixed"
    shutil.copytree(input_dir, mixed)
    write_padded(mixed / "part_9_of_9.hdf5", easy_mlperf_arrays(rng, 8, 32, 6, 64))
    empty_eval = tmp_path / "empty_eval"
    empty_eval.mkdir()
    write_padded(empty_eval / "part_eval.hdf5", {k: v[:0] for k, v in easy_mlperf_arrays(rng, 1, 32, 5, 64).items()})
    no_shards = tmp_path / "no_shards"
    no_shards.mkdir()
    virtual = tmp_path / "virtual"
    virtual.mkdir()
    write_crafted_shard(virtual / "part_0_of_1.hdf5", easy_mlperf_arrays(rng, 8, 32, 5, 64), "virtual_dataset")
    return [
        (_without(changed(bert_config_path=narrow), "--init_checkpoint"), "more than the max_position_embeddings 16"),
        (changed(input_dir=mixed), f"{mixed / 'part_9_of_9.hdf5'}: width 32 and 6 masked-LM slots, but 4 of the 5"),
        (changed(max_predictions_per_seq=6), "pass --max_seq_length 32 --max_predictions_per_seq 5"),
        (_without(changed(bert_config_path=small_vocab), "--init_checkpoint"), "outside the vocab of 32"),
        (changed(eval_dir=empty_eval), "holds 0 eval samples"),
        (changed(input_dir=no_shards), "holds no HDF5 shard"),
        (changed(input_dir=virtual), "is a virtual dataset"),
        (changed(eval_dir=input_dir), "the run would be scored on data it trains on"),
    ]


def test_a_run_refused_while_setting_up_leaves_its_folder_as_it_found_it_so_the_corrected_rerun_starts(
        data, tmp_path):
    """Nothing is written before everything that can refuse the run is read: no MLPerf log or metrics.jsonl
    that the corrected rerun would take for an earlier run's."""
    refused = _refused_runs(data, tmp_path)
    fresh = tmp_path / "fresh" / "out"
    flags, said = refused[0]
    flags[flags.index("--output_dir") + 1] = str(fresh)
    assert cli_here("train", *flags).returncode == 2 and not fresh.exists()  # a folder it made is gone again
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for flags, said in refused:
        flags[flags.index("--output_dir") + 1] = str(out)
        result = cli_here("train", *flags)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert said in result.stderr, result.stderr
        assert sorted(p.name for p in out.iterdir()) == [".bert-pretrain.lock", "notes.txt"], (said, result.stderr)
    rerun = cli_here("train", *train_flags(data, out, max_steps=1, log_freq=1))
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 1


def test_a_training_set_that_shares_shards_with_the_eval_set_is_refused_unless_allowed(data, tmp_path):
    """The same folder, or a copy of an eval shard among the training shards: named, with the flag that allows it."""
    copy = tmp_path / "shards"
    shutil.copytree(next(data.glob("*_shards_uncompressed")), copy)
    eval_shard = data / "eval_set_uncompressed" / "part_eval_10k.hdf5"
    shutil.copy(eval_shard, copy / "part_eval_copy.hdf5")
    flags = train_flags(data, tmp_path / "out", max_steps=1)
    flags[1] = str(copy)
    refused = cli_here("train", *flags)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    message = refused.stderr.strip()
    assert f"share 1 shard(s) ({copy / 'part_eval_copy.hdf5'} = {eval_shard})" in message
    assert "--allow_eval_overlap" in message
    allowed = cli_here("train", *flags, "--allow_eval_overlap")
    assert allowed.returncode == 0, allowed.stderr


def test_init_weights_with_nan_are_named_by_tensor_before_the_first_step(data, tmp_path):
    """Not step 1's non-finite loss with advice about fp16 loss scaling and the learning rate, in an fp32 run."""
    from bert_pretrain.weights import MODEL_KEY

    state = torch.load(data / "model.ckpt-28252.apex.pt", weights_only=True)
    state[MODEL_KEY]["bert.encoder.layer.1.attention.output.dense.weight"][3, 5] = float("nan")
    broken = tmp_path / "nan.pt"
    torch.save(state, broken)
    flags = train_flags(data, tmp_path / "out", max_steps=2)
    flags[flags.index("--init_checkpoint") + 1] = str(broken)
    result = cli_here("train", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert f"{broken}: tensor bert.encoder.layer.1.attention.output.dense.weight holds 1 NaN or infinite " \
           "value(s) of 1024" in message
    assert "loss scaling" not in message and not (tmp_path / "out" / "metrics.jsonl").exists()


def test_the_logs_of_a_run_stopped_before_its_first_record_do_not_refuse_the_next_run(data, tmp_path, monkeypatch):
    """Ctrl-C during the first step's compilation leaves an MLPerf log with no result, an empty metrics.jsonl and
    an empty plot: nothing a new run would lose, so it starts; a run that logged is still refused."""
    from bert_pretrain.train import loop

    def interrupted(run):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    monkeypatch.setattr(loop, "_loop", interrupted)
    assert cli_here("train", *train_flags(data, out, max_steps=2, log_freq=1)).returncode == 130
    monkeypatch.undo()
    assert {"mlperf.log", "metrics.jsonl", "metrics.png"} <= {p.name for p in out.iterdir()}
    rerun = cli_here("train", *train_flags(data, out, max_steps=2, log_freq=1))
    assert rerun.returncode == 0, rerun.stderr
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    again = cli_here("train", *train_flags(data, out, max_steps=2, log_freq=1))
    assert again.returncode == 2 and "logs of an earlier run" in again.stderr
