"""The metrics files: JSON lines, the plot, the summary, and silence off rank 0."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from bert_pretrain.train.metrics import MetricsWriter, peak_memory_gb

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fill(writer: MetricsWriter, steps=range(1, 7), gbs=32) -> None:
    for step in steps:
        writer.train(step, step * gbs, {"loss": 10.0 / step, "lr": 1e-3, "samples_per_s": 100.5})
        if step % 3 == 0:
            writer.eval(step, step * gbs, {"mlm_accuracy": 0.1 * step, "mlm_loss": 5.0 / step})


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_jsonl_lines_are_written_and_flushed_at_once(tmp_path):
    writer = MetricsWriter(tmp_path / "run")
    fill(writer)
    # Read before close(): every line is already on disk.
    records = lines(tmp_path / "run" / "metrics.jsonl")
    writer.close()
    assert [(r["kind"], r["step"]) for r in records][:4] == [("train", 1), ("train", 2), ("train", 3), ("eval", 3)]
    assert len(records) == 8
    first = records[0]
    assert first["samples"] == 32 and first["loss"] == 10.0 and first["lr"] == 1e-3 and first["time"] > 1.7e9
    assert records[3]["mlm_accuracy"] == pytest.approx(0.3)


def test_plot_writes_a_png_atomically(tmp_path):
    writer = MetricsWriter(tmp_path)
    fill(writer)
    writer.plot(target_accuracy=0.72)
    width, height = png_size(tmp_path / "metrics.png")
    assert (width, height) == (1100, 400)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "metrics.png"]  # no temporaries left
    writer.close()


def test_plot_shows_the_data(tmp_path):
    # The same figure with and without points differs: the series are really drawn.
    empty = MetricsWriter(tmp_path / "empty")
    empty.plot()
    full = MetricsWriter(tmp_path / "full")
    fill(full)
    full.plot()
    assert (tmp_path / "empty" / "metrics.png").read_bytes() != (tmp_path / "full" / "metrics.png").read_bytes()


def test_a_background_plot_draws_the_data_of_its_call_and_reports_its_failure(tmp_path):
    """Training draws at each eval in a thread: the picture is the one a synchronous call draws, records
    added meanwhile are not in it, and a drawing that fails raises in the training thread."""
    background, synchronous = MetricsWriter(tmp_path / "bg"), MetricsWriter(tmp_path / "sync")
    for writer in (background, synchronous):
        fill(writer)
    background.plot(target_accuracy=0.72, background=True)
    background.train(7, 7 * 32, {"loss": 0.5})  # after the call: not in its picture
    background.wait_for_plot()
    synchronous.plot(target_accuracy=0.72)
    assert (tmp_path / "bg" / "metrics.png").read_bytes() == (tmp_path / "sync" / "metrics.png").read_bytes()

    def fail(series, target_accuracy):
        raise OSError("disk full")

    background._draw = fail
    background.plot(background=True)
    with pytest.raises(OSError, match="disk full"):
        background.plot()
    background.close()
    synchronous.close()


def test_summary_json(tmp_path):
    writer = MetricsWriter(tmp_path)
    summary = {"e2e_time_s": 12.5, "training_samples_per_s": 250.0, "final_mlm_accuracy": 0.7201,
               "status": "success", "peak_memory_gb": 1.5}
    writer.write_summary(summary)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    with pytest.raises(TypeError, match="loss"):
        writer.train(1, 1, {"loss": torch.tensor(1.0)})
    writer.close()


def test_resume_continues_the_file_and_the_plot(tmp_path):
    first = MetricsWriter(tmp_path)
    fill(first, steps=range(1, 4))
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as file:
        file.write('{"kind": "train", "st')  # the last line of a killed run
    resumed = MetricsWriter(tmp_path, resume=True)
    fill(resumed, steps=range(4, 7))
    assert [r["step"] for r in resumed._history if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    resumed.close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 9  # 8 records + the cut line
    again = MetricsWriter(tmp_path, resume=True)
    assert len([r for r in again._history if r["kind"] == "train"]) == 6
    again.close()
    # Resumed from a checkpoint at 3 steps' samples: what the killed run logged after it goes
    cut = MetricsWriter(tmp_path, resume=True)
    checkpoint_samples = next(r["samples"] for r in cut._history if r["kind"] == "train" and r["step"] == 3)
    cut.resume_at(checkpoint_samples)
    fill(cut, steps=range(4, 5))
    cut.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2, 3, 4]
    fresh = MetricsWriter(tmp_path)  # a new run starts the file again
    fresh.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricsWriter(tmp_path / "rank1", enabled=False)
    fill(writer)
    writer.plot()
    writer.write_summary({"x": 1})
    writer.close()
    assert not (tmp_path / "rank1").exists()


def test_tensorboard_scalars_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = MetricsWriter(tmp_path)
    fill(writer)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/mlm_accuracy")] == [
        (96, pytest.approx(0.3)), (192, pytest.approx(0.6))]


def test_peak_memory_on_cpu_is_the_process_rss():
    before = peak_memory_gb("cpu")
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB touched
    after = peak_memory_gb(torch.device("cpu"))
    assert 0.05 < before <= after < 24.0 and block.sum() > 0


@pytest.mark.gpu
def test_peak_memory_on_cuda_counts_tensors():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.cuda.reset_peak_memory_stats()
    block = torch.ones(2**28 // 4, device="cuda")  # 0.268 GB
    assert peak_memory_gb("cuda") >= 0.268 and block.sum() > 0


def test_a_value_named_like_a_record_key_is_refused(tmp_path):
    writer = MetricsWriter(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        writer.eval(3, 96, {"mlm_accuracy": 0.5, "samples": 1000})  # would move the point to 1000 samples
    writer.close()
