"""What a person watching a run sees on disk: metrics.jsonl, TensorBoard scalars, metrics.png, summary.json.

All of it is written by rank 0 only; on the other ranks a `MetricsWriter(enabled=False)` does nothing.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import torch

from bert_pretrain import devices, strict_json
from bert_pretrain.atomic import atomic_path

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"
# The values `plot()` draws: the training loss and the eval masked-LM accuracy (a fraction).
TRAIN_LOSS_KEY = "loss"
EVAL_ACCURACY_KEY = "mlm_accuracy"


def _tensorboard_writer(log_dir: Path):
    """A SummaryWriter when the tensorboard package is installed, else None (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _read_history(path: Path) -> list[dict]:
    """The records already in `path`; a line cut short by a killed process is left out."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _ends_mid_line(path: Path) -> bool:
    return path.read_bytes()[-1:] not in (b"", b"\n")


def _checked(values: dict) -> dict:
    for key, value in values.items():
        if not isinstance(value, bool | int | float | str):
            raise TypeError(f"metric {key!r} must be a number or a string (read tensors with .item() "
                            f"at log time), got {type(value).__name__}")
    return values


class MetricsWriter:
    """Appends one JSON object per `train`/`eval` call to `<output_dir>/metrics.jsonl` (flushed at once).

    Each line is {"kind": "train"|"eval"|"restart", "step": optimizer steps, "samples": training samples
    seen, "time": unix seconds, **values}. With `resume=True` the file is continued and its earlier
    lines are kept in the plot; otherwise it starts empty. When the tensorboard package is
    installed, every numeric value is also a scalar "<kind>/<key>" against samples, under
    `<output_dir>/tensorboard`.
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True, resume: bool = False):
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self._history: list[dict] = []
        self._file = None
        self._tensorboard = None
        self._plotter: threading.Thread | None = None  # the background drawing in progress, if any
        self._plot_error: BaseException | None = None
        if enabled:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path = self.output_dir / METRICS_FILE
            self._history = _read_history(path) if resume else []
            self._file = open(path, "a" if resume else "w", encoding="utf-8")
            if resume and _ends_mid_line(path):
                self._file.write("\n")  # close a line cut short by a killed process
            self._tensorboard = _tensorboard_writer(self.output_dir / TENSORBOARD_DIR)

    def resume_at(self, samples: int) -> None:
        """Keep only the records up to `samples` (the checkpoint resumed from): what a killed run logged
        after its last checkpoint is trained again, and would otherwise appear twice in the file and plot."""
        if not self.enabled:
            return
        path = self.output_dir / METRICS_FILE
        self._history = [r for r in self._history if r.get("samples", 0) <= samples]
        self._file.close()
        with atomic_path(path) as tmp:
            tmp.write_text("".join(strict_json.dumps(r) + "\n" for r in self._history), encoding="utf-8")
        self._file = open(path, "a", encoding="utf-8")

    def train(self, step: int, samples: int, values: dict) -> None:
        """Training values at `step`, e.g. {"loss": ..., "lr": ..., "samples_per_s": ...}."""
        self._record("train", step, samples, values)

    def eval(self, step: int, samples: int, values: dict) -> None:
        """Eval results at `step`, e.g. EvalResult.to_dict() ({"mlm_accuracy": ..., ...})."""
        self._record("eval", step, samples, values)

    def restart(self, step: int, samples: int, restart: int, resumed_from: str) -> None:
        """torchrun's restart `restart` of the job continues at `step` from `resumed_from` ("": the beginning)."""
        self._record("restart", step, samples, {"restart": restart, "resumed_from": resumed_from})

    def restarts(self) -> list[dict]:
        """The job's restarts recorded in this folder, oldest first (empty when disabled)."""
        return [{k: r[k] for k in ("restart", "step", "samples", "resumed_from")}
                for r in self._history if r.get("kind") == "restart"]

    def _record(self, kind: str, step: int, samples: int, values: dict) -> None:
        if not self.enabled:
            return
        clash = sorted({"kind", "step", "samples", "time"} & set(values))
        if clash:  # a value named like a record key would silently replace it (and move its plot point)
            raise ValueError(f"metric names {clash} are reserved for the record itself; rename them")
        record = {"kind": kind, "step": int(step), "samples": int(samples), "time": round(time.time(), 3),
                  **_checked(values)}
        self._file.write(strict_json.dumps(record) + "\n")
        self._file.flush()
        self._history.append(record)
        if self._tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(f"{kind}/{key}", value, global_step=int(samples))

    def _series(self, kind: str, key: str) -> tuple[list[int], list[float]]:
        points = [(r["samples"], r[key]) for r in self._history if r["kind"] == kind and key in r]
        return [s for s, _ in points], [v for _, v in points]

    def plot(self, target_accuracy: float | None = None, background: bool = False) -> None:
        """Write metrics.png: training loss and eval masked-LM accuracy against samples (atomically).

        `background=True` draws in a thread and returns at once: training calls it at every eval, inside
        MLPerf's timed region, where drawing costs 0.2-0.5 s of CPU. One drawing at a time (a new one
        first waits for the last); `close()` waits for it. A failed drawing raises at the next call.
        """
        if not self.enabled:
            return
        self.wait_for_plot()
        series = (self._series("train", TRAIN_LOSS_KEY), self._series("eval", EVAL_ACCURACY_KEY))
        if background:
            self._plotter = threading.Thread(target=self._draw_in_background, args=(series, target_accuracy),
                                             name="metrics-plot", daemon=True)
            self._plotter.start()
        else:
            self._draw(series, target_accuracy)
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def wait_for_plot(self) -> None:
        """Wait for a background drawing; raise what it raised."""
        if self._plotter is not None:
            self._plotter.join()
            self._plotter = None
        error, self._plot_error = self._plot_error, None
        if error is not None:
            raise error

    def _draw_in_background(self, series, target_accuracy) -> None:
        try:
            self._draw(series, target_accuracy)
        except BaseException as err:  # noqa: BLE001 - handed to the training thread by wait_for_plot
            self._plot_error = err

    def _draw(self, series, target_accuracy: float | None) -> None:
        from matplotlib.figure import Figure  # no pyplot: no global state, so a thread may draw

        (train_samples, losses), (eval_samples, accuracies) = series
        figure = Figure(figsize=(11, 4), dpi=100, layout="constrained")
        loss_axes, accuracy_axes = figure.subplots(1, 2)
        loss_axes.plot(train_samples, losses, color="tab:blue", linewidth=1)
        loss_axes.set(title="training loss", xlabel="training samples", ylabel="loss (MLM + NSP)")
        accuracy_axes.plot(eval_samples, accuracies, color="tab:green", marker="o", markersize=3)
        if target_accuracy is not None:
            accuracy_axes.axhline(target_accuracy, color="tab:red", linestyle="--", label=f"target {target_accuracy}")
            accuracy_axes.legend(loc="lower right")
        accuracy_axes.set(title="eval masked-LM accuracy", xlabel="training samples", ylabel="accuracy")
        for axes in (loss_axes, accuracy_axes):
            axes.grid(alpha=0.3)
        with atomic_path(self.output_dir / PLOT_FILE) as tmp:
            figure.savefig(tmp, format="png")

    def write_summary(self, values: dict) -> None:
        """Write summary.json (atomically): the end-of-run figures, e.g. e2e seconds, samples/s."""
        if not self.enabled:
            return
        with atomic_path(self.output_dir / SUMMARY_FILE) as tmp:
            _checked({k: v for k, v in values.items() if not isinstance(v, list)})
            for record in (r for v in values.values() if isinstance(v, list) for r in v):  # the restarts
                _checked(record)
            tmp.write_text(strict_json.dumps(values, indent=2) + "\n", encoding="utf-8")

    def close(self) -> None:
        if self._plotter is not None:
            self._plotter.join()
            self._plotter = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def _max_rss_bytes() -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def peak_memory_gb(device: torch.device | str) -> float:
    """Peak memory in GB (10^9 bytes) of this process on `device`.

    An accelerator that counts its allocations (CUDA, XPU, ...): the most bytes of tensors allocated (not the
    allocator's cache; since the process start or the last reset, `devices.peak_memory_bytes`). The CPU and any
    device that does not count them: the process's maximum resident set size (`getrusage` ru_maxrss; 0.0 where
    the platform does not report it).
    """
    device = torch.device(device)
    allocated = devices.peak_memory_bytes(device)
    return (allocated if allocated is not None else _max_rss_bytes()) / 1e9

