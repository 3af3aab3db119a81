"""Checkpoints only from sane states (train/divergence.py), evaluate's non-finite refusal, strict JSON output."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_here, tiny_config, train_flags, write_data_folder

from bert_pretrain import strict_json
from bert_pretrain.model import BertForPreTraining
from bert_pretrain.step import StepResult
from bert_pretrain.train.checkpoint import CheckpointSchedule, read_training_checkpoint
from bert_pretrain.train.divergence import FLOOR, DivergenceGuard, LossRecord, largest_magnitudes
from bert_pretrain.train.metrics import MetricsWriter
from bert_pretrain.train.mlperf import MLPerfLogger
from bert_pretrain.weights import save_reference_checkpoint

CPU = torch.device("cpu")


def strict_loads(text: str):
    """json.loads that refuses NaN / Infinity, as every parser outside Python does."""
    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def bert_like_losses(rng: np.random.Generator, points: int = 3000) -> list[float]:
    """A BERT-large pretraining curve as logged: about 11 at initialisation (ln 30522 + ln 2) falling to
    about 1.5, with 5 % noise, spikes of 2-3x one to three points long, and one late spike back to the
    starting level."""
    t = np.arange(points)
    curve = 1.5 + 9.5 * np.exp(-t / 300)
    losses = curve * rng.normal(1.0, 0.05, points)
    for start in rng.choice(points - 3, 40, replace=False):
        losses[start:start + rng.integers(1, 4)] *= rng.uniform(2.0, 3.0)
    losses[points - 100] = 11.0
    return [float(v) for v in losses]


def test_normal_bert_training_never_trips_the_rule_and_a_blow_up_does():
    for seed in range(5):
        record = LossRecord()
        for loss in bert_like_losses(np.random.default_rng(seed)):
            assert not record.trips(loss), (seed, loss, record.limit())
            record.observe(loss)
        for blown in (1e11, 3.6e11, float("inf"), float("nan"), 50.0):
            assert record.trips(blown), blown


def test_a_first_loss_is_judged_by_the_floor_and_a_blow_up_never_raises_its_own_limit():
    record = LossRecord()
    assert not record.trips(11.0) and not record.trips(ln_vocab_plus_nsp(250_000)) and record.trips(1e5)
    record.observe(4.0)
    limit = record.limit()
    for _ in range(100):  # a run stuck at a diverged level keeps being judged against the sane one
        record.observe(1e11)
    assert record.limit() == limit == max(10 * 4.0, FLOOR)


def ln_vocab_plus_nsp(vocab: int) -> float:
    return math.log(vocab) + math.log(2)


def test_largest_magnitudes_find_nan_and_inf_without_overflowing_on_huge_finite_weights():
    tensors = [torch.tensor([1.0, float("nan")]), torch.full((1000,), 3e38), torch.tensor([float("-inf"), 1.0]),
               torch.tensor([-2.5e10, 1.0])]
    magnitudes = largest_magnitudes(tensors)
    assert [math.isfinite(m) for m in magnitudes.tolist()] == [all(torch.isfinite(t)) for t in tensors]
    assert magnitudes[3].item() == pytest.approx(2.5e10)


def step(loss: float, skipped=False, scale=None) -> StepResult:
    return StepResult(sums=torch.tensor([loss, 0, 0, 0, 0, 0], dtype=torch.float64), skipped=skipped,
                      loss_scale=scale)


def test_a_saved_checkpoint_passes_only_by_its_own_loss_and_is_deleted_when_that_trips(tmp_path):
    weights = [torch.ones(3)]
    guard = DivergenceGuard(CPU, is_main=True)
    first, second = tmp_path / "phase1_ckpt_1.pt", tmp_path / "phase1_ckpt_2.pt"
    guard.add(step(5.0), 1)
    guard.check(weights, 1)
    first.write_bytes(b"1")
    guard.saved(first)
    assert guard.passed is None  # the loss of its own weights is not known yet
    guard.add(step(5.1), 2)
    guard.add(step(float("inf"), skipped=True, scale=2.0**10), 3)  # an fp16 overflow: left out
    guard.check(weights, 3)
    second.write_bytes(b"2")
    guard.saved(second)
    assert guard.passed == first
    guard.add(step(4e9), 4)  # the weights written at step 3 give this loss
    with pytest.raises(ValueError) as stop:
        guard.check(weights, 4)
    message = str(stop.value)
    assert "the loss of step 4 is 4e+09" in message and f"that passed the divergence check is {first}" in message
    assert "phase1_ckpt_2.pt, the last one written, was deleted" in message
    assert first.exists() and not second.exists()


def test_a_resumed_from_checkpoint_is_never_deleted_and_non_finite_weights_stop(tmp_path):
    resumed = tmp_path / "phase1_ckpt_7.pt"
    resumed.write_bytes(b"7")
    guard = DivergenceGuard(CPU, is_main=True, resumed_from=resumed)
    guard.add(step(float("nan")), 8)
    error = guard.stopped([torch.ones(2)], "the loss of step 8 is not finite")
    assert resumed.exists() and guard.passed is None and "no checkpoint of this run passed" in str(error)
    guard = DivergenceGuard(CPU, is_main=True, resumed_from=resumed)
    guard.add(step(3.0), 8)
    with pytest.raises(ValueError, match=r"1 weight tensor\(s\) hold NaN or infinite values after step 8"):
        guard.check([torch.ones(2), torch.tensor([float("nan")])], 8)
    assert guard.passed == resumed  # its own loss, 3.0, passed; the weights after step 8 did not


def test_the_newest_checkpoint_that_passed_is_kept_beyond_keep_n(tmp_path):
    schedule = CheckpointSchedule(tmp_path, False, 1, 0, keep_n_most_recent_checkpoints=1)
    for n in (1, 2, 3):
        schedule.path_for(n).write_bytes(b"x")
    assert sorted(p.name for p in schedule.remove_old(keep=schedule.path_for(2))) == ["phase1_ckpt_1.pt"]
    assert [p.name for p in schedule.existing()] == ["phase1_ckpt_2.pt", "phase1_ckpt_3.pt"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data_folder(tmp_path_factory.mktemp("data"))


@pytest.mark.slow  # the run's closing plot of a 1e8 loss takes most of its 4 s
def test_a_learning_rate_of_1e6_stops_naming_a_checkpoint_whose_weights_are_sane(data, tmp_path):
    """With a checkpoint every step, the warmup's first update (rate 0) keeps the initial weights; the second
    (rate 5e4) blows them up while they stay finite; the third step's loss shows it."""
    out = tmp_path / "out"
    result = cli_here("train", *train_flags(data, out, learning_rate=1e6, log_freq=1, num_samples_per_checkpoint=16,
                                            min_samples_to_start_checkpoints=0))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    named = re.search(r"the last checkpoint that passed the divergence check is (\S+?);", message)
    assert named and "training diverged: the loss of step 3 is" in message, message
    assert f"--resume_from_checkpoint {named.group(1)} and a lower --learning_rate" in message
    kept = sorted(p.name for p in out.glob("phase1_ckpt_*.pt"))
    assert kept == [Path(named.group(1)).name]  # the diverged ones are not on disk
    weights = read_training_checkpoint(named.group(1))["model"]
    assert all(torch.isfinite(t).all() for t in weights.values())
    evaluated = cli_here("evaluate", "--init_checkpoint", named.group(1), "--bert_config_path",
                         str(data / "bert_config.json"), "--eval_dir", str(data / "eval_set_uncompressed"),
                         "--max_seq_length", "32", "--max_predictions_per_seq", "5", "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    assert strict_loads(evaluated.stdout)["mlm_loss"] < math.log(64) + 1  # about a uniform guess over the vocab


def test_evaluate_refuses_weights_that_give_a_non_finite_result(data, tmp_path):
    model = BertForPreTraining(tiny_config(64, max_position_embeddings=32))
    with torch.no_grad():
        model.cls.predictions.bias.fill_(float("nan"))
    checkpoint = tmp_path / "diverged.pt"
    save_reference_checkpoint(model, checkpoint)
    result = cli_here("evaluate", "--init_checkpoint", str(checkpoint), "--bert_config_path",
                      str(data / "bert_config.json"), "--eval_dir", str(data / "eval_set_uncompressed"),
                      "--max_seq_length", "32", "--max_predictions_per_seq", "5", "--device", "cpu")
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(checkpoint) in lines[0] and "mlm_loss nan" in lines[0], result.stderr


def test_non_finite_values_are_written_as_strict_json(tmp_path):
    nan, inf = float("nan"), float("inf")
    assert strict_loads(strict_json.dumps({"a": nan, "b": [inf, 1.5], "c": (np.float64(-inf),), "d": 2})) == {
        "a": None, "b": [None, 1.5], "c": [None], "d": 2}
    writer = MetricsWriter(tmp_path)
    writer.train(1, 16, {"loss": nan, "lr": 1e-3})
    writer.eval(1, 16, {"mlm_accuracy": nan, "mlm_loss": inf})
    writer.write_summary({"status": "aborted", "best_mlm_accuracy": nan})
    writer.resume_at(16)  # rewrites the file from its records
    writer.close()
    records = [strict_loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["loss"] is None and records[0]["lr"] == 1e-3 and records[1]["mlm_loss"] is None
    assert strict_loads((tmp_path / "summary.json").read_text())["best_mlm_accuracy"] is None
    log = MLPerfLogger(tmp_path / "mlperf.log")
    log.eval_accuracy(nan, 16)
    log.eval_accuracy(0.5, 32)
    log.close()
    lines = (tmp_path / "mlperf.log").read_text().splitlines()
    payloads = [strict_loads(line.split(":::MLLOG ", 1)[1]) for line in lines]
    assert [p["value"] for p in payloads] == [None, 0.5]
