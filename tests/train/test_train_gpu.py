"""On a GPU: the launcher's tiny MLPerf run with --fp16 and with --bf16 (one process) trains, reaches the
target and writes a compliant log. Skipped without CUDA; run with `pytest -m gpu tests/train/test_train_gpu.py`."""

import json

import pytest
import torch
from conftest import write_data_folder
from support.launcher import compliance, launch, tiny_overrides

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_tiny_mlperf_run_on_cuda(tmp_path, precision):
    data = write_data_folder(tmp_path / "DATA")
    out = tmp_path / "results"
    flags = tiny_overrides(data, out, device="cuda", gradient_accumulation_steps=2, log_freq=5)
    flags += ["--bf16", "--no-fp16"] if precision == "bf16" else []  # the launcher passes --fp16 itself
    result = launch(data, *flags, extra_env={"NPROC_PER_NODE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "success" and summary["precision"] == precision and summary["device"] == "cuda"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < losses[0]
    print(f"{precision}: steps {summary['steps']}, skipped {summary['skipped_steps']}, loss {losses[0]:.3f} -> "
          f"{losses[-1]:.3f}, final accuracy {summary['final_mlm_accuracy']:.4f}, "
          f"{summary['train_samples_per_second']:.0f} samples/s, peak {summary['peak_memory_gb_max']:.3f} GB")
    for ruleset in ("1.0.0", "5.0.0"):
        check = compliance(out / "mlperf.log", ruleset)
        assert check.returncode == 0, check.stdout + check.stderr
