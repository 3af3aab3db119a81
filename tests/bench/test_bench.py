"""The benchmark runs end to end and its FLOPs formula counts what the model multiplies (no speed asserted)."""

import json

import numpy as np
import pytest
import torch
from conftest import cli_here, run_cli, tiny_config
from torch.utils.flop_counter import FlopCounterMode

from bert_pretrain.bench.flops import batch_flops, peak_tflops
from bert_pretrain.bench.power import EnergyMeter
from bert_pretrain.bench.report import json_line
from bert_pretrain.data.packing import pack_padded_rows
from bert_pretrain.data.shards import padded_to_varlength, write_padded, write_varlength
from bert_pretrain.data.synthetic import sample_lengths, synthetic_rows
from bert_pretrain.model import BertForPreTraining

JSON_KEYS = ("seq_per_s", "tokens_per_s", "tflops", "mfu", "peak_mem_gb", "input_seq_per_s", "input_ratio")


@pytest.mark.slow
def test_tiny_cpu_bench_against_hf_prints_the_json_line_last(tmp_path):
    result = run_cli("bench", "--model", "tiny", "--seq", "64", "--batch", "4", "--steps", "2", "--warmup", "1",
                     "--rounds", "1", "--device", "cpu", "--compare", "hf", "--profile", str(tmp_path / "profile"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| measure |")
    report = json.loads(lines[-1])
    for key in JSON_KEYS + ("hf_seq_per_s", "ratio"):
        assert key in report, key
    assert report["seq_per_s"] > 0 and report["hf_seq_per_s"] > 0
    assert report["ratio"] == pytest.approx(report["seq_per_s"] / report["hf_seq_per_s"])
    assert np.isfinite(report["loss"]) and np.isfinite(report["hf_loss"])
    assert report["mfu"] is None and report["power_w"] is None  # no known peak or NVML on a CPU
    # --profile: this project's steps, by kind of work, in the JSON and in DIR/profile.md (+ a trace)
    assert report["profile"]["categories"]["gemm"] > 0
    assert "| gemm |" in (tmp_path / "profile" / "profile.md").read_text()
    assert (tmp_path / "profile" / "trace.json.gz").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["padded", "varlength"])
def test_bench_reads_rows_from_a_shard(tmp_path, layout):
    config = tiny_config(vocab_size=30522)
    config_path = tmp_path / "bert_config.json"
    config_path.write_text(json.dumps(config.to_dict()))
    arrays = synthetic_rows(np.random.default_rng(0), 12, 64, 10, 30522)
    shard = tmp_path / "part_0.hdf5"
    if layout == "padded":
        write_padded(shard, arrays)
    else:
        write_varlength(shard, padded_to_varlength(arrays))
    result = run_cli("bench", "--bert_config_path", str(config_path), "--seq", "64", "--batch", "4", "--steps", "2",
                     "--warmup", "1", "--rounds", "1", "--device", "cpu", "--shard", str(shard),
                     "--max_predictions_per_seq", "10")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    cycled = arrays["input_mask"].sum(axis=1)[np.arange(64) % 12]  # 16 batches of 4 from 12 rows
    assert report["mean_length"] == pytest.approx(cycled.mean())
    assert report["input_seq_per_s"] > 0 and "hf_seq_per_s" not in report


@pytest.mark.slow
def test_bad_options_are_one_line_errors(tmp_path):
    result = cli_here("bench", "--seq", "1024", "--device", "cpu")
    assert result.returncode == 2 and "max_position_embeddings" in result.stderr
    result = cli_here("bench", "--shard", str(tmp_path / "missing.hdf5"), "--device", "cpu")
    assert result.returncode == 2 and "missing.hdf5" in result.stderr
    result = run_cli("bench", "--fused_norm", "--device", "cpu", env={"TRITON_INTERPRET": ""})
    assert result.returncode == 2 and "--fused_norm needs" in result.stderr and "run without" in result.stderr


def _config_file(path, **changes):
    values = dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    values.update(changes)
    path.write_text(json.dumps(values))
    return str(path)


@pytest.mark.parametrize("case", ["warmup", "predictions", "peak", "profile under a file", "compile_mode", "flex",
                                  "no config", "config folder", "config not utf-8", "no layers", "one segment"])
def test_more_bad_options_are_one_line_errors_before_any_timing(tmp_path, case):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "latin1.json").write_bytes('{"hidden_act": "g\xe9lu"}'.encode("latin-1"))
    args, fragments = {
        "warmup": (["--warmup", "-1"], ["--warmup must be 0 or more"]),
        "predictions": (["--max_predictions_per_seq", "0"], ["--max_predictions_per_seq must be at least 1"]),
        "peak": (["--peak_tflops", "0"], ["--peak_tflops must be above 0"]),
        "profile under a file": (["--profile", str(tmp_path / "a_file" / "sub")], ["--profile", "cannot make"]),
        "compile_mode": (["--compile_mode", "reduce-overhead"], ["needs the model compiled", "--compile"]),
        "flex": (["--attention", "flex", "--bert_config_path", _config_file(tmp_path / "c_flex.json")],
                 ["--attention flex trains only on CUDA"]),
        "no config": (["--bert_config_path", str(tmp_path / "none.json")], ["none.json: no such bert_config.json"]),
        "config folder": (["--bert_config_path", str(tmp_path)], ["is a folder; pass its bert_config.json"]),
        "config not utf-8": (["--bert_config_path", str(tmp_path / "latin1.json")], ["latin1.json: not a JSON file"]),
        "no layers": (["--bert_config_path", _config_file(tmp_path / "c_layers.json", num_hidden_layers=0)],
                      ["c_layers.json: num_hidden_layers must be an integer of at least 1, got 0"]),
        "one segment": (["--bert_config_path", _config_file(tmp_path / "c_segment.json", type_vocab_size=1)],
                        ["type_vocab_size must be an integer of at least 2"]),
    }[case]
    result = cli_here("bench", "--device", "cpu", "--steps", "2", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert all(f in result.stderr for f in fragments) and "bench: warm-up" not in result.stderr, result.stderr


def test_flops_formula_counts_every_multiply_of_a_training_step():
    """PyTorch's FLOP counter over forward + backward equals the formula when nothing is padded."""
    config = tiny_config(vocab_size=96, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    rng = np.random.default_rng(0)
    length, masked = 20, 3  # equal lengths and every masked slot used: no padding anywhere
    arrays = synthetic_rows(rng, 4, 32, masked, 96, lengths=np.full(4, length))
    model = BertForPreTraining(config, attention_backend="math")
    with FlopCounterMode(display=False) as counter:
        model(pack_padded_rows(arrays)).loss.backward()
    assert counter.get_total_flops() == pytest.approx(batch_flops(config, np.full(4, length), np.full(4, masked)))


def test_synthetic_rows_follow_the_mlperf_histogram_and_invariants():
    rng = np.random.default_rng(0)
    assert sample_lengths(rng, 100_000, 512).mean() == pytest.approx(255.8, abs=2)
    assert sample_lengths(rng, 1000, 128).max() == 128
    arrays = synthetic_rows(rng, 50, 128, 20, 30522)
    lengths = arrays["input_mask"].sum(axis=1)
    for i, length in enumerate(lengths):
        positions = arrays["masked_lm_positions"][i]
        count = np.count_nonzero(positions)
        assert count == min(20, max(1, round(length * 0.15)))
        assert (np.diff(positions[:count]) > 0).all()
        assert arrays["input_ids"][i, 0] == 101 and arrays["input_ids"][i, length - 1] == 102
        assert not np.isin(arrays["input_ids"][i, positions[:count]], (101, 102)).any()


def test_peaks_and_power_are_absent_where_unknown():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "fp16") == 756.0
    assert peak_tflops("AMD EPYC", "fp32") is None
    meter = EnergyMeter(torch.device("cpu"))
    assert not meter.available
    meter.start()
    assert meter.stop() is None


@pytest.mark.parametrize("skipped, warmup, expected_extra", [(0, 2, 0), (1, 2, 0), (5, 2, 4), (1, 0, 0), (99, 2, 32)])
def test_warm_up_lasts_until_the_first_applied_update(skipped, warmup, expected_extra):
    """fp16's first updates are skipped while GradScaler finds its scale; the first applied one allocates the
    optimizer's state (and compiles a compiled LAMB), which must not land in a timed block."""
    from types import SimpleNamespace

    from bert_pretrain.bench.timing import MAX_STEPS_TO_FIRST_UPDATE, Runner

    optimizer = SimpleNamespace(state={})
    calls = []

    def step(_):  # the first `skipped` steps skip the update, as GradScaler does on inf gradients
        calls.append(1)
        if len(calls) > skipped:
            optimizer.state["moments"] = True

    runner = Runner("ours", step, [None], model=None, optimizer=optimizer)
    extra = runner.warm_up(warmup, torch.device("cpu"))
    assert extra == expected_extra and len(calls) == warmup + extra
    assert bool(optimizer.state) == (warmup > 0 and skipped < warmup + MAX_STEPS_TO_FIRST_UPDATE)
    assert runner.timed_indices == [] and runner.seconds == 0.0


def test_the_json_line_is_strict_json():
    """A diverged loss (NaN) must not make the last line unparsable for strict readers."""
    line = json_line({"loss": float("nan"), "ratio_rounds": [1.5, float("inf")], "nested": {"x": -float("inf")}})
    assert line == '{"loss": null, "ratio_rounds": [1.5, null], "nested": {"x": null}}'
