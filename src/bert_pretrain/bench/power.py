"""Energy used by one NVIDIA GPU over a timed region, through NVML (the `nvidia-ml-py` package).

Optional: without the package, a driver, or an NVIDIA GPU, `EnergyMeter.available` is False and
the benchmark reports no power. The GPU's total-energy counter (Volta and newer, millijoules) is
read at the start and end of the region; where it is unsupported, power is sampled every 50 ms
and integrated.
"""

from __future__ import annotations

import threading
import time

import torch


def _nvml_handle(pynvml, device: torch.device):
    """The NVML handle of the CUDA device (by UUID, so CUDA_VISIBLE_DEVICES remapping is honoured)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class EnergyMeter:
    """`start()`, run the region (synchronised at both ends by the caller), `stop()` -> joules."""

    def __init__(self, device: torch.device):
        self.available = False
        self.reason = "not a CUDA device"
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = _nvml_handle(pynvml, device)
            self._use_counter = self._counter_works()
            self.available, self.reason = True, ""
        except Exception as err:  # noqa: BLE001 - any NVML failure only means "no power figures"
            self.reason = f"NVML unavailable: {err}"

    def _counter_works(self) -> bool:
        try:
            self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            return True
        except self._nvml.NVMLError:
            return False

    def _sample(self):
        while not self._stop.is_set():
            watts = self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
            now = time.perf_counter()
            self._joules += watts * (now - self._last)
            self._last = now
            self._stop.wait(0.05)

    def start(self) -> None:
        if not self.available:
            return
        if self._use_counter:
            self._start_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            return
        self._joules, self._last = 0.0, time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        """Joules since `start()`, or None when no meter is available."""
        if not self.available:
            return None
        if self._use_counter:
            return (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._start_mj) / 1000.0
        self._stop.set()
        self._thread.join()
        return self._joules
