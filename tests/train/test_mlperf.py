"""The MLPerf log against the real compliance and RCP checkers; the eval cadence against the rules' table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bert_pretrain.train.mlperf import MLPerfLogger, eval_interval_samples, eval_steps

RULESETS = ("1.0.0", "5.0.0")
HYPERPARAMETERS = dict(
    global_batch_size=448, d_batch_size=56, gradient_accumulation_steps=1, max_predictions_per_seq=76,
    opt_base_learning_rate=4e-4, opt_epsilon=1e-6, opt_learning_rate_training_steps=8103,
    opt_learning_rate_warmup_steps=0, num_warmup_steps=0, start_warmup_step=0, opt_lamb_beta_1=0.9,
    opt_lamb_beta_2=0.999, opt_lamb_weight_decay_rate=0.01, opt_lamb_learning_rate_decay_poly_power=1.0, seed=42,
)


def write_run(path: Path, accuracies: list[float], gbs: int = 448, status: str = "success",
              restart: int = 0) -> int:
    """A run as the training loop drives the logger: init, hyperparameters, one block per eval; `restart`: a
    job torchrun restarted from the beginning, as its restarted worker logs it."""
    log = MLPerfLogger(path)
    log.init_start()
    if restart:
        log.restart(restart, "", 0)
    log.submission("bert-pretrain", "1xCPU")
    log.hyperparameters(HYPERPARAMETERS)
    log.init_stop()
    log.run_start()
    interval = eval_interval_samples(gbs)
    trained = 0
    for step, accuracy in zip(eval_steps(interval, interval, 4_500_000, gbs), accuracies):
        log.block_start(trained, step * gbs - trained)
        trained = step * gbs
        log.eval_start(trained)
        log.eval_accuracy(accuracy, trained)
        log.eval_stop(trained)
        log.block_stop(trained)
    log.run_stop(status, trained)
    return trained


def check(log: Path, ruleset: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training", "--ruleset", ruleset,
         "--werror", "--log_output", str(log.with_suffix(f".{ruleset}.check")), str(log)],
        capture_output=True, text=True, timeout=120,
    )


def records(path: Path) -> list[dict]:
    return [json.loads(line.split(":::MLLOG ", 1)[1]) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("ruleset", RULESETS)
def test_a_converged_run_passes_the_compliance_checker(tmp_path, ruleset):
    log = tmp_path / "mlperf.log"
    write_run(log, [0.37, 0.55, 0.68, 0.7203])
    result = check(log, ruleset)
    assert result.returncode == 0 and "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("ruleset", RULESETS)
def test_a_run_restarted_from_the_beginning_still_passes_the_compliance_checker(tmp_path, ruleset):
    """The restart event is not an MLPerf key; the checker allows keys it does not know."""
    log = tmp_path / "mlperf.log"
    write_run(log, [0.37, 0.55, 0.68, 0.7203], restart=2)
    assert [(r["key"], r["value"], r["metadata"]["resumed_from"]) for r in records(log) if r["key"] == "restart"] == [
        ("restart", 2, "")]
    result = check(log, ruleset)
    assert result.returncode == 0 and "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("ruleset", RULESETS)
def test_a_run_that_never_reaches_the_target_fails_the_checker(tmp_path, ruleset):
    log = tmp_path / "mlperf.log"
    write_run(log, [0.37, 0.55, 0.7199], status="aborted")
    result = check(log, ruleset)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


@pytest.mark.parametrize(("log_name", "ruleset", "passes"), [
    ("nvidia_v1.0_dgxa100_ngc21.05_pytorch_bert_result_0.txt", "1.0.0", True),
    ("nvidia_v1.0_dgxa100_ngc21.05_pytorch_bert_result_0.txt", "5.0.0", False),  # no opt_lamb_epsilon
    ("nvidia_v4.0_eos_n8_ngc23.04_pytorch_bert_result_0.txt", "5.0.0", True),
    ("nvidia_v4.0_eos_n8_ngc23.04_pytorch_bert_result_0.txt", "1.0.0", True),  # has both epsilon keys
])
def test_the_checker_is_invoked_as_on_real_submission_logs(shared_data, tmp_path, log_name, ruleset, passes):
    log = tmp_path / log_name
    log.write_bytes((shared_data / "mlperf" / "results" / log_name).read_bytes())
    result = check(log, ruleset)
    assert (result.returncode == 0) == passes, result.stdout + result.stderr


@pytest.mark.slow
def test_rcp_checker_reads_samples_to_converge_from_epoch_num(tmp_path):
    # Ten runs per benchmark folder, as submissions are laid out. Converging at ~2.6M samples is
    # in line with the GBS-448 reference (2.63M); at 1.5M it is implausibly fast and must fail.
    def rcp_check(evals_per_run):
        folder = tmp_path / f"runs{evals_per_run[0]}" / "bert"
        folder.mkdir(parents=True)
        for index, count in enumerate(evals_per_run):
            write_run(folder / f"result_{index}.txt", [0.5] * (count - 1) + [0.7201])
        return subprocess.run(
            [sys.executable, "-m", "mlperf_logging.rcp_checker", "--rcp_usage", "training", "--rcp_version",
             "1.0.0", "--log_output", str(tmp_path / "rcp.log"), str(folder)],
            capture_output=True, text=True, timeout=120,
        )

    assert rcp_check([17, 18] * 5).returncode == 0
    too_fast = rcp_check([10] * 10)
    assert too_fast.returncode != 0 and "RCP test FAILED" in too_fast.stdout + too_fast.stderr


def test_log_contents_and_placement(tmp_path):
    log = tmp_path / "out" / "mlperf.log"
    trained = write_run(log, [0.4, 0.721])
    assert log.exists() and not (tmp_path / "out" / "mlperf.log.partial").exists()
    entries = records(log)
    keys = [e["key"] for e in entries]
    assert keys[:2] == ["cache_clear", "init_start"] and keys[-3:] == ["train_samples", "eval_samples", "run_stop"]
    values = {e["key"]: e["value"] for e in entries}
    assert values["opt_epsilon"] == values["opt_lamb_epsilon"] == 1e-6
    assert values["opt_lamb_weight_decay_rate"] == 0.01
    assert values["cache_clear"] is False  # nothing here dropped the OS caches
    assert values["train_samples"] == trained == 2 * 335 * 448 and values["eval_samples"] == 10_000
    evals = [e for e in entries if e["key"] == "eval_accuracy"]
    assert [e["metadata"]["epoch_num"] for e in evals] == [150_080, 300_160]
    assert entries[-1]["metadata"]["status"] == "success"
    # The call site recorded is the training code's, not this module's.
    assert all(e["metadata"]["file"] == __file__ for e in entries)


def test_the_log_is_partial_until_run_stop(tmp_path):
    log = MLPerfLogger(tmp_path / "mlperf.log")
    log.init_start()
    assert (tmp_path / "mlperf.log.partial").exists() and not (tmp_path / "mlperf.log").exists()
    log.close()
    log.close()
    assert (tmp_path / "mlperf.log").exists()
    with pytest.raises(RuntimeError, match="closed"):
        log.init_stop()


def test_disabled_logger_writes_nothing(tmp_path):
    log = MLPerfLogger(tmp_path / "sub" / "mlperf.log", enabled=False)
    log.init_start()
    log.hyperparameters(HYPERPARAMETERS)
    log.eval_accuracy(0.73, 1000)
    log.run_stop("success", 1000)
    assert not (tmp_path / "sub").exists()


def test_bad_calls_are_rejected(tmp_path):
    log = MLPerfLogger(tmp_path / "mlperf.log")
    missing = {k: v for k, v in HYPERPARAMETERS.items() if k != "opt_lamb_beta_2"}
    with pytest.raises(ValueError, match="opt_lamb_beta_2"):
        log.hyperparameters(missing)
    with pytest.raises(ValueError, match="epsilon"):
        log.hyperparameters({**HYPERPARAMETERS, "opt_lamb_epsilon": 1e-8})  # two different epsilons
    with pytest.raises(TypeError, match="seed"):
        log.hyperparameters({**HYPERPARAMETERS, "seed": [1, 2]})
    with pytest.raises(ValueError):
        log.submission("", "1xCPU")
    with pytest.raises(ValueError):
        log.submission("org", "1xCPU", status="somewhere")
    with pytest.raises(ValueError):
        log.run_stop("done", 10)
    log.close()


# The MLPerf reference README's example table plus worked examples: GBS -> samples between evals.
INTERVALS = {256: 150_000, 448: 150_000, 648: 150_000, 1024: 150_000, 1536: 150_000, 2048: 150_000,
             3072: 175_000, 4096: 175_000, 8192: 225_000, 12288: 275_000}


@pytest.mark.parametrize("gbs", INTERVALS)
def test_eval_interval_matches_the_rules_table(gbs):
    assert eval_interval_samples(gbs) == INTERVALS[gbs]


def test_eval_interval_threshold():
    # 0.05*(230.23*g + 3e6) >= 250,000 first at g = 8687 (2,000,008.01 + 3e6 -> 250,000.40).
    assert eval_interval_samples(8686) == 225_000 and eval_interval_samples(8687) == 250_000
    with pytest.raises(ValueError):
        eval_interval_samples(0)


def test_eval_steps_round_up_to_whole_steps():
    steps = eval_steps(150_000, 150_000, 4_500_000, 448)
    assert steps[:3] == [335, 670, 1005]  # ceil(150000/448) = 335 -> 150,080 samples
    assert steps[0] * 448 == 150_080
    assert len(steps) == 29 and steps[-1] == -(-4_350_000 // 448)  # 4.5M itself is excluded
    assert eval_steps(150_000, -1, 4_500_000, 448) == []  # the reference's -1: no evals
    assert eval_steps(175_000, 175_000, 700_000, 3072) == [57, 114, 171]
