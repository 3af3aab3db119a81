"""What a training checkpoint must hold before a run resumes from it, checked whole and once, on load.

A damaged or hand-edited file (a field missing, one too many, a negative step, a wrong type) is one line naming
the file and the field, before anything is restored, instead of a KeyError or TypeError deep in the restore.
Every process reads the same file, so every process finds the same fault: the random states of every rank are
checked, not only this process's.
"""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path

import numpy as np
import torch

from bert_pretrain.errors import InputError

_COUNTERS = ("step", "samples", "skipped_steps", "samples_at_last_checkpoint")
_POSITION_LEAST = {"epoch": 1, "slot": 0, "row": 0}


class _Fault(Exception):
    """A field that is not what `save_training_checkpoint` writes: (its name, what is wrong)."""


def check_training_checkpoint(checkpoint: dict, path: str | Path, progress_fields: tuple[str, ...]) -> None:
    """Raise an InputError naming the first field of `checkpoint` that a resume could not use."""
    try:
        _check(checkpoint, progress_fields)
    except _Fault as fault:
        field, problem = fault.args
        raise InputError(f"{path}: {field} {problem}; this is not a training state as train writes it (damaged or "
                         "edited): resume from another checkpoint, or start a new run from its weights with "
                         "--init_checkpoint") from None


def _check(checkpoint: dict, progress_fields: tuple[str, ...]) -> None:
    for key, kind in (("model", dict), ("optimizer", dict), ("scaler", dict), ("progress", dict),
                      ("rank_states", list), ("run", dict)):
        _require(key, key in checkpoint, "is missing")
        found = type(checkpoint[key]).__name__
        _require(key, isinstance(checkpoint[key], kind), f"is a {found}, not a {kind.__name__}")
    model = checkpoint["model"]
    _require("model", model and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()),
             "holds no weights or something other than named tensors")
    _check_optimizer(checkpoint["optimizer"])
    _check_scaler(checkpoint["scaler"])
    _check_progress(checkpoint["progress"], progress_fields)
    step = checkpoint.get("global_step")
    _require("global_step", _count(step), f"is {step!r}, not a count of steps (an integer of at least 0)")
    _require("global_step", step == checkpoint["progress"]["step"],
             f"{step} differs from progress.step {checkpoint['progress']['step']}")
    ranks = checkpoint["rank_states"]
    _require("rank_states", ranks, "is empty (it holds one entry per process of the run that wrote it)")
    for rank, entry in enumerate(ranks):
        _check_rank_state(f"rank_states[{rank}]", entry)


def _check_optimizer(optimizer: dict) -> None:
    _require("optimizer.state", isinstance(optimizer.get("state"), dict), "is missing or not a dict")
    groups = optimizer.get("param_groups")
    _require("optimizer.param_groups", isinstance(groups, list) and groups, "is missing or empty")
    for i, group in enumerate(groups):
        _require(f"optimizer.param_groups[{i}]", isinstance(group, dict) and isinstance(group.get("params"), list),
                 "is not a parameter group (a dict with its 'params')")


def _check_progress(progress: dict, fields: tuple[str, ...]) -> None:
    unknown, missing = sorted(set(progress) - set(fields)), [f for f in fields if f not in progress]
    _require("progress", not unknown, f"has fields this version does not know ({', '.join(map(str, unknown))})")
    _require("progress", not missing, f"lacks the fields {', '.join(missing)}")
    for name in _COUNTERS:
        value = progress[name]
        _require(f"progress.{name}", _count(value), f"is {value!r}, not an integer of at least 0")
    accuracy = progress["best_mlm_accuracy"]
    _require("progress.best_mlm_accuracy", _number(accuracy) and 0 <= accuracy <= 1, f"is {accuracy!r}, not in [0, 1]")
    _require("progress.converged", isinstance(progress["converged"], bool), "is not true or false")
    history = progress["eval_history"]
    _require("progress.eval_history", isinstance(history, list) and all(isinstance(e, dict) for e in history),
             "is not a list of evals")
    for i, entry in enumerate(history):  # what the summary, the plot and inspect read of each eval
        for name, valid, kind in (("step", _count, "an integer of at least 0"), ("samples", _count,
                                  "an integer of at least 0"), ("mlm_accuracy", _number, "a number")):
            value = entry.get(name)
            _require(f"progress.eval_history[{i}].{name}", valid(value), f"is {value!r}, not {kind}")


def _check_scaler(scaler: dict) -> None:
    """Empty for fp32 and bf16 runs; an fp16 run's GradScaler state otherwise, whose numbers it computes with."""
    if not scaler:
        return
    for name in ("scale", "growth_factor", "backoff_factor"):
        value = scaler.get(name)
        _require(f"scaler.{name}", _number(value) and math.isfinite(value) and value > 0,
                 f"is {value!r}, not a positive number")
    for name in ("growth_interval", "_growth_tracker"):
        value = scaler.get(name)
        _require(f"scaler.{name}", _count(value), f"is {value!r}, not an integer of at least 0")


def _check_rank_state(field: str, entry) -> None:
    _require(field, isinstance(entry, dict) and {"data_position", "rng"} <= set(entry),
             "is not a process's state (a dict of its data_position and rng)")
    position = entry["data_position"]
    _require(f"{field}.data_position", isinstance(position, dict) and set(position) == set(_POSITION_LEAST),
             f"is not a data position (epoch, slot, row): {position!r}")
    for name, least in _POSITION_LEAST.items():
        value = position[name]
        _require(f"{field}.data_position.{name}", _count(value) and value >= least,
                 f"is {value!r}, not an integer of at least {least}")
    rng = entry["rng"]
    _require(f"{field}.rng", isinstance(rng, dict) and {"python", "numpy", "torch"} <= set(rng),
             "lacks the python, numpy or torch random state")
    # each state is set into a scratch generator: the process's own stay untouched, and a bad one fails here
    checks = {"python": lambda s: random.Random().setstate((s[0], tuple(s[1]), s[2])),
              "numpy": lambda s: np.random.RandomState().set_state(
                  (s["kind"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"])),
              "torch": lambda s: torch.Generator().set_state(s)}
    for device_type in set(rng) - set(checks):  # the accelerator's generator, under its type: "cuda", "xpu", ...
        checks[device_type] = functools.partial(_require_generator_state, f"{field}.rng.{device_type}")
    for name, restore in checks.items():
        try:
            restore(rng[name])
        except _Fault:
            raise
        except Exception as err:  # each library rejects a bad state with its own type
            raise _Fault(f"{field}.rng.{name}", f"is not a {name} random state ({type(err).__name__})") from None


def _require_generator_state(field: str, state) -> None:
    _require(field, isinstance(state, torch.Tensor) and state.dtype == torch.uint8,
             "is not a generator state (a uint8 tensor)")


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(field: str, condition, problem: str) -> None:
    if not condition:
        raise _Fault(field, problem)
