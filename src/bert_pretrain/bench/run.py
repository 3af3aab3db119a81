"""`bert-pretrain bench`: training-step throughput of this project, and of HF transformers, same run.

Both run the same sequences (MLPerf length distribution: a shard's rows, or synthetic rows with
the real length histogram, data/synthetic.py), in alternating timed blocks after a warm-up. This
project's step is `step.train_step` (packed batches, compiled model and LAMB on CUDA); the
peer is hf.py. Reported: sequences/s, real tokens/s, TFLOP/s and MFU on real tokens only
(flops.py), peak memory, GPU energy per sequence (NVML), and the rate of the training loader
(data/loader.py reading a shard and packing its rows) against what the step consumes.
"""

from __future__ import annotations

import ctypes
import functools
import math
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bert_pretrain import devices, fp8
from bert_pretrain.atomic import atomic_path
from bert_pretrain.attention import PACKED_ONLY, resolve_backend
from bert_pretrain.bench import hf as bench_hf
from bert_pretrain.bench.flops import batch_flops, peak_tflops
from bert_pretrain.bench.power import EnergyMeter
from bert_pretrain.bench.step_profile import format_profile, profile_steps
from bert_pretrain.bench.timing import Runner, time_contestants
from bert_pretrain.build import StepSettings, build, require
from bert_pretrain.data import shards
from bert_pretrain.data.loader import ShardStream
from bert_pretrain.data.packing import PackingOptions, pack_padded_rows, row_lengths
from bert_pretrain.data.shards import masked_counts
from bert_pretrain.data.synthetic import synthetic_rows
from bert_pretrain.distributed import resolve_device
from bert_pretrain.errors import InputError, SettingsMismatch
from bert_pretrain.model import MODEL_SHAPES, BertConfig
from bert_pretrain.options.bench import BenchOptions
from bert_pretrain.options.fields import PRECISIONS, compile_choices, require_trainable_attention
from bert_pretrain.step import make_grad_scaler, train_step
from bert_pretrain.weights import read_bert_config

POOL_STEPS = 16  # distinct steps cycled through, so lengths vary as in training


def bench_config(options: BenchOptions) -> BertConfig:
    if options.bert_config_path:
        return read_bert_config(options.bert_config_path)
    if options.model not in MODEL_SHAPES:
        raise InputError(f"--model {options.model!r} is not one of {sorted(MODEL_SHAPES)}")
    return BertConfig(vocab_size=30522, **MODEL_SHAPES[options.model])


def _validate(options: BenchOptions, config: BertConfig) -> None:
    if options.precision not in PRECISIONS:
        raise InputError(f"--precision {options.precision!r} is not one of {PRECISIONS}")
    if options.compare not in (None, "hf", "bf16"):
        raise InputError(f"--compare {options.compare!r}: the peers are 'hf' and 'bf16'")
    for name in ("batch", "accumulation", "steps", "rounds", "seq", "pad_to_multiple", "max_predictions_per_seq"):
        if getattr(options, name) is not None and getattr(options, name) < 1:
            raise InputError(f"--{name} must be at least 1, got {getattr(options, name)}")
    if options.warmup < 0:
        raise InputError(f"--warmup must be 0 or more, got {options.warmup}")
    if options.peak_tflops is not None and not options.peak_tflops > 0:
        raise InputError(f"--peak_tflops must be above 0, got {options.peak_tflops}")
    if options.profile:  # checked now: failing after the timed blocks would lose the run's result
        try:
            Path(options.profile).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"--profile {options.profile}: cannot make this folder ({err.strerror or err}); pass "
                             "a writable folder for profile.md and trace.json.gz") from None
    if options.steps < options.rounds:
        raise InputError(f"--steps {options.steps} is less than --rounds {options.rounds}")
    if options.seq > config.max_position_embeddings:
        raise InputError(f"--seq {options.seq} exceeds the model's max_position_embeddings "
                         f"{config.max_position_embeddings}")


def load_rows(options: BenchOptions, config: BertConfig, count: int) -> dict[str, np.ndarray]:
    """`count` padded rows: the shard's first rows (cycled when it has fewer), else synthetic ones."""
    if options.shard is None:
        rng = np.random.default_rng(options.seed)
        return synthetic_rows(rng, count, options.seq, options.predictions(), config.vocab_size)
    try:
        arrays = shards.read_padded(options.shard, _shape(options, config))
    except SettingsMismatch as err:  # its fix names train's flag; bench's is --seq
        raise SettingsMismatch(err.path, err.problem, err.fix.replace("--max_seq_length", "--seq")) from None
    index = np.arange(count) % len(arrays["next_sentence_labels"])
    return {key: value[index] for key, value in arrays.items()}


def _shape(options: BenchOptions, config: BertConfig) -> shards.ShardShape:
    return shards.ShardShape(options.seq, options.predictions(), config.vocab_size)


def measure_input_pipeline(options: BenchOptions, config: BertConfig, rows: dict, device: torch.device,
                           max_seqlen: int | None, batches: int = 64) -> float:
    """Sequences/s the training loader (data/loader.py: shard reads, row order, packing, pinning) delivers.

    It reads the --shard (through a link in a temporary folder), else the benchmark's rows written
    to a temporary shard, with the same packing as the timed steps, on this process alone.
    """
    with tempfile.TemporaryDirectory() as folder:
        shard = Path(folder) / "part_bench.hdf5"
        if options.shard is not None:
            shard.symlink_to(Path(options.shard).resolve())
        else:
            shards.write_padded(shard, rows)
        start = time.perf_counter()
        stream = ShardStream(folder, rank=0, world_size=1, seed=options.seed, micro_batch_size=options.batch,
                             shape=_shape(options, config), pin_memory=devices.pins_host_memory(device),
                             make_batch=functools.partial(pack_padded_rows, max_predictions_per_seq=options.predictions(),
                                                          options=_packing(options, max_seqlen)))
        try:
            for _ in range(batches):
                next(stream)
        finally:
            stream.close()
        return batches * options.batch / (time.perf_counter() - start)


def _packing(options: BenchOptions, max_seqlen: int | None) -> PackingOptions:
    """fp8: token counts in multiples of 16 as well, as train packs them (both contestants run these batches)."""
    multiple = options.pad_to_multiple
    if options.precision == "fp8":
        multiple = math.lcm(multiple, fp8.TOKEN_MULTIPLE)
    return PackingOptions(pad_to_multiple=multiple, max_seqlen=max_seqlen)


def _fixed_max_seqlen(options: BenchOptions, backend: str) -> int | None:
    """Variable-length kernels only size their grid with max_seqlen: fix it so compiled code sees one value."""
    return options.seq if backend in PACKED_ONLY else None


def compile_enabled(options: BenchOptions, device: torch.device) -> tuple[bool, bool]:
    """(compile the model, compile LAMB) as asked, else the shared defaults (on CUDA only; LAMB as the model)."""
    return compile_choices(options.compile, options.compile_optimizer, device.type == "cuda")


def _project_runner(name: str, options: BenchOptions, config, device, steps, precision: str, fused: bool):
    """This project's model, LAMB and `step.train_step` at `precision`, built by build.py as train builds
    them, from the same initial weights for every `name`. Returns the runner and the fp8 conversion (or None)."""
    torch.manual_seed(options.seed)
    built = build(config, step_settings(options, device, precision, fused), device)

    def step(micro_batches):
        return train_step(built.model, built.optimizer, built.scaler, micro_batches, precision, device).sums[0]

    return Runner(name, step, steps, built.model, built.optimizer), built.fp8


def step_settings(options: BenchOptions, device: torch.device, precision: str | None = None,
                  fused: bool | None = None) -> StepSettings:
    """The step bench times: its flags, with the compile defaults train has (on CUDA only)."""
    compile_model_too, compile_optimizer = compile_enabled(options, device)
    return StepSettings(precision=options.precision if precision is None else precision, attention=options.attention,
                        fused_norm=options.fused_norm if fused is None else fused, fp8_recipe=options.fp8_recipe,
                        fp8_layers=options.fp8_layers, compile=compile_model_too, compile_optimizer=compile_optimizer,
                        compile_mode=options.compile_mode)


def _contestants(options, config, rows, device, backend: str):
    """This project's runner and the --compare peer's, over the same POOL_STEPS steps of micro-batches."""
    size, per_step = options.batch, options.accumulation
    groups = [[{k: v[(i * per_step + j) * size:(i * per_step + j + 1) * size] for k, v in rows.items()}
               for j in range(per_step)] for i in range(POOL_STEPS)]
    pin = devices.pins_host_memory(device)
    max_seqlen = _fixed_max_seqlen(options, backend)
    steps = [[pack_padded_rows(g, options.predictions(), _packing(options, max_seqlen)) for g in step]
             for step in groups]
    steps = [[b.pin_memory() if pin else b for b in step] for step in steps]
    ours, conversion = _project_runner("bert_pretrain", options, config, device, steps, options.precision,
                                       options.fused_norm)
    runners = [ours]
    if options.compare == "bf16":  # the same batches (fp8's padding to 16 tokens included), plain bf16 path
        runners.append(_project_runner("bert_pretrain_bf16", options, config, device, steps, "bf16", False)[0])
    elif options.compare == "hf":
        hf = bench_hf.hf_model(config, device, options.hf_compile)
        hf_opt = bench_hf.hf_optimizer(hf, device)
        precision = "bf16" if options.precision == "fp8" else options.precision  # HF has no float8 path here
        hf_scaler = make_grad_scaler(precision, device)
        inputs = [[bench_hf.hf_inputs(g) for g in step] for step in groups]
        inputs = [[{k: v.pin_memory() for k, v in x.items()} if pin else x for x in step] for step in inputs]

        def peer(x):
            return bench_hf.hf_train_step(hf, hf_opt, hf_scaler, x, precision, device)

        runners.append(Runner("hf_transformers", peer, inputs, hf, hf_opt))
    return runners, groups, conversion


def _keep_freed_memory() -> str:
    """Ask glibc to keep freed memory in the process instead of returning it to the OS (no mmap, no trim).

    For CPU runs: on some virtual machines faulting memory back in dominates small steps, for both
    contestants alike (docs/performance.md). Returns what the allocator does now, for the report.
    """
    m_trim_threshold, m_mmap_max = -1, -4
    try:
        libc = ctypes.CDLL("libc.so.6")
        if libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1):
            return "glibc, freed memory kept"
    except (OSError, AttributeError):
        pass
    return "default"


def _device_name(device: torch.device) -> str:
    if device.type != "cpu":
        return devices.name(device)
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} ({len(names)} logical CPUs)" if names else platform.processor()
    except OSError:
        return platform.processor() or platform.machine()


def _summary(runner: Runner, groups, config, options, device, peak) -> dict:
    """Rates of one runner over its timed steps (FLOPs of real tokens only)."""
    timed = [group for i in runner.timed_indices for group in groups[i]]  # the micro-batches run
    lengths = [row_lengths(group) for group in timed]
    masked = [masked_counts(group["masked_lm_positions"]) for group in timed]
    sequences = options.batch * len(timed)
    flops = sum(batch_flops(config, n, m) for n, m in zip(lengths, masked))
    tflops = flops / runner.seconds / 1e12
    if devices.peak_memory_bytes(device) is not None:
        peak_gb = runner.peak_bytes / 2**30
    else:  # the process's resident peak, both contestants together: the CPU has no per-allocation counter
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "seq_per_s": sequences / runner.seconds,
        "tokens_per_s": float(sum(n.sum() for n in lengths)) / runner.seconds,
        "tflops": tflops,
        "mfu": tflops / peak if peak else None,
        "peak_mem_gb": peak_gb,
        "power_w": runner.joules / runner.seconds if runner.joules is not None else None,
        "joules_per_seq": runner.joules / sequences if runner.joules is not None else None,
        "loss": float(runner.last),
    }


def run_bench(options: BenchOptions, progress=print) -> dict:
    """Run the benchmark; returns the result dict (the JSON line's content)."""
    config = bench_config(options)
    _validate(options, config)
    device = resolve_device(options.device)
    allocator = _keep_freed_memory() if device.type == "cpu" else f"torch {device.type} caching allocator"
    rows = load_rows(options, config, options.batch * options.accumulation * POOL_STEPS)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(options.precision, torch.bfloat16)  # fp8: bf16 too
    try:
        backend = resolve_backend(options.attention, device, dtype, config.attention_probs_dropout_prob, True,
                                  config.hidden_size // config.num_attention_heads)
    except ValueError as err:
        raise InputError(f"--attention: {err}") from None
    require_trainable_attention(backend, device.type != "cpu")
    if options.compile_mode != "default" and not compile_enabled(options, device)[0]:
        raise InputError(f"--compile_mode {options.compile_mode} needs the model compiled (the default on CUDA; "
                         "pass --compile on the CPU)")
    require(step_settings(options, device), device, fp8_flag="--precision fp8")
    progress(f"bench: {options.model if not options.bert_config_path else options.bert_config_path} "
             f"seq {options.seq} batch {options.batch}x{options.accumulation} {options.precision} on "
             f"{_device_name(device)}; "
             f"attention {backend}; building")
    runners, groups, conversion = _contestants(options, config, rows, device, backend)
    for note in conversion.notes if conversion else []:
        progress(f"bench: {note}")
    meter = EnergyMeter(device)
    runners, peer_error = time_contestants(runners, options, device, meter, progress)
    peak = options.peak_tflops or peak_tflops(_device_name(device), options.precision)
    settings = step_settings(options, device)
    result = {
        "model": options.bert_config_path or options.model, "seq": options.seq, "batch": options.batch,
        "accumulation": options.accumulation,
        "precision": options.precision, "device": str(device), "device_name": _device_name(device),
        "fp8_recipe": options.fp8_recipe if conversion else None,
        "fp8_layers": list(conversion.layers) if conversion else None, "compare": options.compare,
        "attention": backend, "compile": settings.compile,
        "compile_mode": settings.compile_mode if settings.compile else None,
        "compile_optimizer": settings.compile_optimizer, "fused_norm": options.fused_norm,
        "hf_compile": options.hf_compile if options.compare else None, "shard": options.shard,
        "max_predictions_per_seq": options.predictions(), "warmup": options.warmup, "rounds": options.rounds,
        "pad_to_multiple": _packing(options, None).pad_to_multiple, "seed": options.seed,
        "steps": len(runners[0].timed_indices), "optimizer": type(runners[0].optimizer).__name__,
        "mean_length": float(row_lengths(rows).mean()), "peak_tflops": peak,
        "power": "nvml" if meter.available else meter.reason,
        "torch": torch.__version__, "cpu_allocator": allocator, "threads": torch.get_num_threads(),
    }
    result.update(_summary(runners[0], groups, config, options, device, peak))
    if peer_error:
        result[f"{options.compare}_error"] = peer_error
    if len(runners) > 1:
        if options.compare == "hf":
            import transformers

            result["transformers"] = transformers.__version__
        peer = _summary(runners[1], groups, config, options, device, peak)
        result.update({f"{options.compare}_{key}": value for key, value in peer.items()})
        result["ratio"] = result["seq_per_s"] / peer["seq_per_s"]
        # Per alternating pair of blocks (same step count each): shows how steady the ratio was.
        result["ratio_rounds"] = [hf_s / ours_s for ours_s, hf_s in zip(runners[0].block_seconds,
                                                                          runners[1].block_seconds)]
        result["ratio_median"] = float(np.median(result["ratio_rounds"]))  # robust on a shared, noisy host
    if options.profile:
        result["profile"] = profile_runner(runners[0], options, device, progress)
    result["input_seq_per_s"] = measure_input_pipeline(options, config, rows, device, _fixed_max_seqlen(options, backend))
    result["input_ratio"] = result["input_seq_per_s"] / result["seq_per_s"]
    return result


def profile_runner(runner: Runner, options: BenchOptions, device: torch.device, progress) -> dict:
    """Profile a few more steps of `runner` (already warm); write profile.md and trace.json.gz to --profile."""
    folder = Path(options.profile)
    steps = min(options.steps, 3)
    progress(f"bench: profiling {steps} steps of {runner.name} -> {folder}")
    summary = profile_steps(runner.step, steps, device, trace_path=folder / "trace.json.gz")
    with atomic_path(folder / "profile.md") as tmp:
        tmp.write_text(format_profile(summary) + "\n")
    progress(format_profile(summary))
    return summary
