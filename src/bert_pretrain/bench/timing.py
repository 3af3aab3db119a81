"""Timing for `bench`: contestants run in alternating blocks, each bracketed by a device synchronisation.

A `Runner` is one contestant: a step function over a pool of prepared inputs. Inside a block nothing
waits for the device, so a contestant that never synchronises inside its step keeps the GPU fed.
"""

from __future__ import annotations

import gc
import time

import torch

from bert_pretrain import devices
from bert_pretrain.bench.power import EnergyMeter


def _static_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of parameters and optimizer state (what stays resident between steps)."""
    tensors = list(model.parameters()) + [
        v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    ]
    return sum(t.numel() * t.element_size() for t in tensors)


# fp16: GradScaler skips the first updates while it lowers its scale from 2**20, and the first update it lets
# through allocates the optimizer's state (and compiles a compiled LAMB): the warm-up runs until then, at most
# this many steps more, so none of that lands in a timed block.
MAX_STEPS_TO_FIRST_UPDATE = 32


class Runner:
    """One contestant: a step function over a pool of prepared inputs, and its timing totals."""

    def __init__(self, name, step_fn, inputs, model, optimizer):
        self.name, self.step_fn, self.inputs = name, step_fn, inputs
        self.model, self.optimizer = model, optimizer
        self.calls = 0
        self.seconds = 0.0
        self.joules = 0.0
        self.timed_indices: list[int] = []
        self.block_seconds: list[float] = []
        self.peak_bytes = 0
        self.last = None

    def step(self) -> int:
        """One step on the next input of the pool; returns that input's index."""
        index = self.calls % len(self.inputs)
        self.last = self.step_fn(self.inputs[index])
        self.calls += 1
        return index

    def warm_up(self, steps: int, device) -> int:
        """`steps` untimed steps, then more (up to MAX_STEPS_TO_FIRST_UPDATE) until the optimizer has
        applied an update. Returns how many more it took (0 unless fp16 skipped the first updates)."""
        self.run(steps, device, None, None, timed=False)
        extra = 0
        while steps and not self.optimizer.state and extra < MAX_STEPS_TO_FIRST_UPDATE:
            self.run(1, device, None, None, timed=False)
            extra += 1
        return extra

    def run(self, steps: int, device, meter: EnergyMeter | None, other: Runner | None, timed: bool) -> None:
        devices.reset_peak_memory(device)
        devices.synchronize(device)
        if meter:
            meter.start()
        start = time.perf_counter()
        for _ in range(steps):
            index = self.step()
            if timed:
                self.timed_indices.append(index)
        devices.synchronize(device)
        if not timed:
            return
        self.block_seconds.append(time.perf_counter() - start)
        self.seconds += self.block_seconds[-1]
        joules = meter.stop() if meter else None
        self.joules = None if joules is None or self.joules is None else self.joules + joules
        allocated = devices.peak_memory_bytes(device)
        if allocated is not None:
            resident_other = _static_bytes(other.model, other.optimizer) if other else 0
            self.peak_bytes = max(self.peak_bytes, allocated - resident_other)


def time_contestants(runners, options, device, meter, progress):
    """Warm-up, then `rounds` alternating timed blocks. Returns the runners that finished and the peer's error."""
    per_round = options.steps // options.rounds
    active_meter = meter if meter.available else None
    try:
        for runner in runners:
            progress(f"bench: warm-up {runner.name} ({options.warmup} steps)")
            extra = runner.warm_up(options.warmup, device)
            if extra:
                applied = "until its first applied update" if runner.optimizer.state else "but no update was applied"
                progress(f"bench: {runner.name} warmed up {extra} steps more, {applied} (fp16 loss scaling)")
        for round_index in range(options.rounds):
            for runner in runners if round_index % 2 == 0 else runners[::-1]:
                other = next((r for r in runners if r is not runner), None)
                runner.run(per_round, device, active_meter, other, timed=True)
            progress(f"bench: round {round_index + 1}/{options.rounds} done")
        return runners, None
    except devices.OUT_OF_MEMORY as err:
        if len(runners) == 1:
            raise
        # The peer (HF: logits for every position) ran out of memory: time this project alone.
        peer_error = f"out of memory: {str(err).splitlines()[0]}"
    progress(f"bench: {runners[1].name} failed ({peer_error}); timing bert_pretrain alone")
    ours = Runner(runners[0].name, runners[0].step_fn, runners[0].inputs, runners[0].model, runners[0].optimizer)
    runners.clear()  # drop the peer's model, optimizer and gradients
    gc.collect()
    devices.empty_cache(device)
    for _ in range(options.rounds):
        ours.run(per_round, device, active_meter, None, timed=True)
    return [ours], peer_error
