"""The training checkpoint: everything a run needs to continue exactly, in one file.

One `torch.save` object, written atomically by rank 0:
    'model'        the weights in reference names (so `evaluate --init_checkpoint` and `convert` read it)
    'optimizer'    the optimizer's state_dict (LAMB moments, step counts)
    'scaler'       the fp16 GradScaler's state_dict (empty for fp32 / bf16)
    'global_step'  optimizer steps taken (the reference's key)
    'progress'     samples, skipped steps, eval history, best accuracy, ...
    'rank_states'  per process: its data position (epoch, slot, row) and its RNG states
                   (python, numpy, torch CPU, CUDA), so each process's stream and dropout continue
    'run'          the options the run was started with
Everything is plain data (tensors, numbers, strings, lists, dicts), so loading uses
`torch.load(weights_only=True)`.

Periodic checkpoints follow the reference: one once `num_samples_per_checkpoint` samples have
passed since the last and at least `min_samples_to_start_checkpoints` were trained; one at the
end; the `keep_n_most_recent_checkpoints` newest are kept. Beside it, `checkpoint_every_minutes`
makes one due once that much wall time has passed since the last (same minimum of samples), so a
lost process costs at most those minutes whatever the step time. Names: phase2_ckpt_<step>.pt with
--phase2, else phase1_ckpt_<step>.pt.

Saving does not stall training: the state is copied to host memory (`host_snapshot`, the only part
the steps wait for) and `CheckpointWriter` writes the copy on a background thread while the next
steps run. One write at a time: the next save, and the end of the run, wait for the one in progress.
The write goes to a temporary name that is renamed into place only when whole (atomic.py), so a
process killed mid-write leaves the previous checkpoints intact.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from bert_pretrain import devices
from bert_pretrain.data.loader import DataPosition
from bert_pretrain.distributed import gather_objects
from bert_pretrain.errors import InputError
from bert_pretrain.model import BertForPreTraining
from bert_pretrain.train.checkpoint_check import check_training_checkpoint
from bert_pretrain.weights import (
    MODEL_KEY,
    load_reference_state,
    reference_state,
    refused_as_unsafe,
    write_checkpoint_file,
)

FORMAT = "bert-pretrain training state v1"
_STEP = re.compile(r"^phase[12]_ckpt_(\d+)\.pt$")


@dataclass
class Progress:
    """Counters of the run, all processes together."""

    step: int = 0  # optimizer updates applied (fp16-overflow steps are not; they count in skipped_steps)
    samples: int = 0  # training samples consumed
    skipped_steps: int = 0  # fp16 steps whose update was skipped for inf/NaN gradients
    eval_history: list[dict] = field(default_factory=list)  # one dict per eval: step, samples, accuracies, losses
    best_mlm_accuracy: float = 0.0
    samples_at_last_checkpoint: int = 0
    converged: bool = False


@dataclass
class TrainingState:
    """All mutable state of a run; `model` is the bare model (not the DDP wrapper)."""

    model: BertForPreTraining
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    progress: Progress
    data_position: DataPosition  # this process's


def capture_rng(device: torch.device) -> dict:
    """This process's random states: python, numpy's global, torch CPU and (on an accelerator) the device's, under
    the device type's name ("cuda", "xpu", ...)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    device_state = devices.rng_state(device)
    if device_state is not None:
        state[device.type] = device_state
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if device.type in state:  # a checkpoint from the same kind of device; dropout masks elsewhere start afresh
        devices.set_rng_state(state[device.type], device)


def gather_rank_states(state: TrainingState, device: torch.device) -> list[dict]:
    """Every process's data position and RNG states, in rank order (a collective under torchrun)."""
    return gather_objects({"data_position": state.data_position.to_dict(), "rng": capture_rng(device)})


def save_training_checkpoint(path: Path, state: TrainingState, rank_states: list[dict], run: dict) -> None:
    """Write the checkpoint atomically (call on rank 0 only), blocking until it is on disk."""
    write_checkpoint_file(_payload(state, rank_states, run), path)


def host_snapshot(state: TrainingState, rank_states: list[dict], run: dict) -> dict:
    """The checkpoint's payload, every tensor copied to host memory: the training steps may change the state as
    soon as this returns, while the copy is written."""
    return _copied(_payload(state, rank_states, run), {})


def _payload(state: TrainingState, rank_states: list[dict], run: dict) -> dict:
    return {
        MODEL_KEY: reference_state(state.model),
        "format": FORMAT,
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "global_step": state.progress.step,
        "progress": asdict(state.progress),
        "rank_states": rank_states,
        "run": run,
    }


def _copied(value, seen: dict):
    """`value` with every tensor copied to the CPU and every container rebuilt. Views of one storage stay one
    copy (the tied word embeddings and decoder: torch.save writes shared storage once)."""
    if isinstance(value, torch.Tensor):
        key = (value.device, value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
        if key not in seen:
            seen[key] = value.detach().to("cpu", copy=True)
        return seen[key]
    if isinstance(value, dict):
        return {k: _copied(v, seen) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copied(v, seen) for v in value)
    return value


class CheckpointWriter:
    """Writes checkpoints on a background thread, one at a time (rank 0's).

    `start` returns once the write has begun; `wait` blocks until it is done and raises what it raised (an
    OSError from a full or failing disk), so the caller reports it where the run can stop cleanly.
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, path: Path, payload: dict, then: Callable[[], None] = lambda: None) -> None:
        """Write `payload` (a `host_snapshot`) to `path`, then call `then` (on the writer's thread); waits for the
        write before it first."""
        self.wait()

        def write() -> None:
            try:
                write_checkpoint_file(payload, path)
                then()
            except BaseException as err:  # handed to the main thread by `wait`
                self._error = err

        self._thread = threading.Thread(target=write, name=f"checkpoint {path.name}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in progress (if any) is done; raise its error."""
        if self._thread is None:
            return
        self._thread.join()
        self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


class WeightsOnly(InputError):
    """The file is readable but holds weights only (no training state): something to start a run from."""


def read_training_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by `save_training_checkpoint`, loaded without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint; pass --resume_from_checkpoint with a file written by train")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise refused_as_unsafe(path, err) or InputError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise WeightsOnly(f"{path}: holds weights only, not a training state to resume; start a run from it with "
                         "--init_checkpoint instead")
    check_training_checkpoint(checkpoint, path, tuple(f.name for f in fields(Progress)))
    return checkpoint


def restore_training_state(
    state: TrainingState, checkpoint: dict, source: str, rank: int, world_size: int, device: torch.device
) -> list[str]:
    """Load `checkpoint` into `state` in place; returns notes on what could not continue exactly."""
    notes = []
    load_reference_state(state.model, checkpoint["model"], source)
    try:  # the structure is checked on reading; whether it fits this model and optimizer is known only here
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        if state.scaler.is_enabled() and checkpoint["scaler"]:
            state.scaler.load_state_dict(checkpoint["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{source}: its optimizer or loss-scaler state does not fit this run's model "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:160]}); resume with the bert_config it "
                         "was written with, or start a new run from its weights with --init_checkpoint") from None
    if state.scaler.is_enabled() and not checkpoint["scaler"]:
        notes.append(f"note: {source} was written without fp16 loss scaling; the scale starts afresh")
    state.progress = Progress(**checkpoint["progress"])
    rank_states = checkpoint["rank_states"]
    if len(rank_states) == world_size:
        state.data_position = DataPosition.from_dict(rank_states[rank]["data_position"])
        restore_rng(rank_states[rank]["rng"], device)
    else:
        first = DataPosition.from_dict(rank_states[0]["data_position"])
        state.data_position = DataPosition(first.epoch, first.slot, 0)
        notes.append(f"note: {source} was written by {len(rank_states)} process(es) and this run has {world_size}; "
                     f"the data restarts at epoch {first.epoch} slot {first.slot} and the run is not an exact "
                     "continuation")
    return notes


def checkpoints_in(output_dir: str | Path, phase2: bool) -> list[Path]:
    """The phase-1 or phase-2 checkpoints a run wrote into `output_dir`, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    prefix = "phase2_ckpt_" if phase2 else "phase1_ckpt_"
    found = [p for p in output_dir.glob(f"{prefix}*.pt") if _STEP.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))


@dataclass(frozen=True)
class CheckpointSchedule:
    """Where checkpoints go and when one is due (the reference's rule)."""

    output_dir: Path
    phase2: bool
    num_samples_per_checkpoint: int
    min_samples_to_start_checkpoints: int
    keep_n_most_recent_checkpoints: int
    every_minutes: float = 0.0  # 0: no time-based checkpoints

    @property
    def prefix(self) -> str:
        return "phase2_ckpt_" if self.phase2 else "phase1_ckpt_"

    def path_for(self, step: int) -> Path:
        return self.output_dir / f"{self.prefix}{step}.pt"

    def due(self, progress: Progress) -> bool:
        """Due by samples: the same verdict on every process."""
        return (progress.samples - progress.samples_at_last_checkpoint >= self.num_samples_per_checkpoint
                and progress.samples >= self.min_samples_to_start_checkpoints)

    def due_by_time(self, progress: Progress, seconds_since_last: float) -> bool:
        """Due by this process's clock: the processes must agree on it before acting (the loop does, at its
        sync points)."""
        return (self.every_minutes > 0 and seconds_since_last >= self.every_minutes * 60
                and progress.samples >= self.min_samples_to_start_checkpoints)

    def existing(self) -> list[Path]:
        """This run's kind of checkpoints in the output folder, oldest step first."""
        return checkpoints_in(self.output_dir, self.phase2)

    def latest(self) -> Path | None:
        existing = self.existing()
        return existing[-1] if existing else None

    def remove_old(self, keep: Path | None = None) -> list[Path]:
        """Delete all but the newest `keep_n_most_recent_checkpoints` and `keep` (the newest checkpoint known
        to be sane, train/divergence.py); returns what was deleted."""
        old = [path for path in self.existing()[: -self.keep_n_most_recent_checkpoints] if path != keep]
        for path in old:
            path.unlink(missing_ok=True)
        return old

    def remove_partial_writes(self) -> None:
        """Temporaries a killed run left behind (`.<name>.tmp-<pid>`; never read as checkpoints)."""
        if self.output_dir.is_dir():
            for path in self.output_dir.glob(f".{self.prefix}*.pt.tmp-*"):
                path.unlink(missing_ok=True)
