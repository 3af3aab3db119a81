"""devices.py: the CPU path as it is, an accelerator through torch.accelerator, CUDA through torch.cuda on a torch
without torch.accelerator, and the errors for a device PyTorch does not know or cannot see.

No accelerator is needed: `fake_xpu` stands in for what torch.accelerator reports on a machine with three Intel
GPUs (an accelerator whose type is not CUDA), recording the calls the module makes.
"""

import types

import pytest
import torch
import torch.distributed as dist

from bert_pretrain import devices
from bert_pretrain.errors import InputError

CPU = torch.device("cpu")


@pytest.fixture
def no_accelerator(monkeypatch):
    """This machine as a CPU-only one whatever it has (so the CPU expectations hold on a GPU box too)."""
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_xpu(monkeypatch):
    """torch.accelerator driving three XPU devices; returns the list of calls made to it."""
    calls = []

    def record(name, result=None):
        def call(*args):
            calls.append((name, *args))
            return result
        return call

    accelerator = types.SimpleNamespace(
        is_available=lambda: True, current_accelerator=lambda: torch.device("xpu"), device_count=lambda: 3,
        set_device_index=record("set_device_index"), synchronize=record("synchronize"),
        max_memory_allocated=record("max_memory_allocated", 123_000_000),
        reset_peak_memory_stats=record("reset_peak_memory_stats"), empty_cache=record("empty_cache"))
    monkeypatch.setattr(torch, "accelerator", accelerator, raising=False)
    monkeypatch.setattr(torch.xpu, "get_device_name", lambda device=None: "Intel(R) Data Center GPU Max 1550")
    monkeypatch.setattr(torch.xpu, "get_rng_state", lambda device=None: torch.arange(16, dtype=torch.uint8))
    monkeypatch.setattr(torch.xpu, "set_rng_state", record("set_rng_state"))
    return calls


def test_the_cpu_path(no_accelerator):
    assert devices.accelerator_type() is None and devices.count() == 0
    assert devices.resolve("auto", local_rank=3) == CPU and devices.resolve("cpu") == CPU
    devices.set_current(CPU)
    devices.synchronize(CPU)
    devices.reset_peak_memory(CPU)
    assert devices.peak_memory_bytes(CPU) is None and devices.rng_state(CPU) is None
    assert not devices.pins_host_memory(CPU) and devices.name(CPU) == "CPU"
    assert devices.process_group_backend(CPU) == "gloo"
    assert devices.autocast_type(CPU) == "cpu"


def test_a_device_pytorch_does_not_know_or_cannot_see_is_one_line(no_accelerator):
    with pytest.raises(InputError, match=r"^--device gpu0: not a device this PyTorch knows \(.*\); use auto, cpu"):
        devices.resolve("gpu0")
    for name in ("cuda", "xpu", "cuda:1"):
        with pytest.raises(InputError, match=rf"^--device {name} was asked for, but PyTorch sees no "
                                             rf"{name.split(':')[0]} device; use --device auto or --device cpu"):
            devices.resolve(name)


def test_an_accelerator_through_torch_accelerator(fake_xpu):
    xpu2 = torch.device("xpu", 2)
    assert devices.accelerator_type() == "xpu" and devices.count() == 3
    assert devices.resolve("auto", local_rank=2) == xpu2 == devices.resolve("xpu", local_rank=2)
    assert devices.resolve("xpu:1", local_rank=2) == torch.device("xpu", 1)  # an explicit index is kept
    devices.set_current(xpu2)
    devices.synchronize(xpu2)
    devices.reset_peak_memory(xpu2)
    assert devices.peak_memory_bytes(xpu2) == 123_000_000
    devices.empty_cache(xpu2)
    assert fake_xpu == [("set_device_index", 2), ("synchronize", xpu2), ("reset_peak_memory_stats", 2),
                        ("max_memory_allocated", 2), ("empty_cache",)]
    assert devices.pins_host_memory(xpu2) and not devices.pins_host_memory(CPU)
    assert devices.name(xpu2) == "Intel(R) Data Center GPU Max 1550"
    assert devices.rng_state(xpu2).tolist() == list(range(16))


def test_the_process_group_backend_is_torch_distributeds_default_for_the_device():
    known = dist.Backend.default_device_backend_map  # what this torch (and any plug-in) registered
    for kind in known:
        assert devices.process_group_backend(torch.device(kind)) == known[kind]
    assert devices.process_group_backend(torch.device("cuda")) == "nccl"
    assert devices.process_group_backend(CPU) == "gloo"


def test_without_a_backend_map_cuda_gets_nccl_and_the_rest_gloo(monkeypatch):
    monkeypatch.delattr(dist.Backend, "default_device_backend_map", raising=False)
    assert devices.process_group_backend(torch.device("cuda", 0)) == "nccl"
    assert devices.process_group_backend(CPU) == "gloo"


def test_a_torch_without_torch_accelerator_uses_torch_cuda(monkeypatch):
    """torch 2.4 and 2.5 have no torch.accelerator: CUDA devices are counted and driven through torch.cuda."""
    calls = []
    monkeypatch.delattr(torch, "accelerator", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: calls.append(("synchronize", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 7)
    cuda1 = torch.device("cuda", 1)
    assert devices.accelerator_type() == "cuda" and devices.count() == 2
    assert devices.resolve("auto", local_rank=1) == cuda1
    devices.set_current(cuda1)
    devices.synchronize(cuda1)
    assert calls == [("set_device", cuda1), ("synchronize", cuda1)]
    assert devices.peak_memory_bytes(cuda1) == 7 and devices.pins_host_memory(cuda1)


def test_unified_memory_is_not_pinned(monkeypatch):
    monkeypatch.setattr(devices, "accelerator_type", lambda: "mps")
    assert not devices.pins_host_memory(torch.device("mps", 0))


def test_a_device_without_autocast_is_named(monkeypatch):
    if not hasattr(torch.amp, "is_autocast_available"):
        pytest.skip("this torch cannot say which devices have autocast")
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: device_type != "xpu")
    with pytest.raises(InputError, match=r"^--device xpu: this PyTorch has no autocast for xpu.*fp32"):
        devices.autocast_type(torch.device("xpu", 0))
    assert devices.autocast_dtype("xpu") is None


def test_the_autocast_dtype_is_autocasts_on_the_cpu():
    assert devices.autocast_dtype("cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert devices.autocast_dtype("cpu") == torch.bfloat16


def test_train_on_a_device_pytorch_does_not_know_is_one_line_and_exit_2_with_nothing_written(tmp_path):
    from conftest import cli_here, train_flags, write_data_folder

    data = write_data_folder(tmp_path / "data", num_shards=1)
    out = tmp_path / "out"
    result = cli_here("train", *train_flags(data, out), "--device", "tpu")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "--device tpu: not a device this PyTorch knows" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_a_collective_backend_torch_does_not_know_is_named_before_the_group_is_joined(monkeypatch):
    from bert_pretrain.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(InputError, match=r"^--dist_backend ncl: not a collective backend this PyTorch knows; use one "
                                         r"of .*gloo.*, or leave it out for cpu's default"):
        init_distributed("cpu", "ncl")
    assert not dist.is_initialized()
