"""The checks `gpu_check.py` runs inside a fresh process of its own (`gpu_check.py --section NAME`):
the environment, a probe of each attention backend, short training runs whose loss must fall, the LAMB
update alone, one encoder layer. Each returns a JSON-able dict; gpu_check.py times and reports them."""

from __future__ import annotations

import functools
import json
import time

import layer_bench  # beside this script


def _section_environment(args) -> dict:
    import platform

    import torch

    from bert_pretrain.attention import BACKENDS, unsupported_reason

    device = torch.device(args.device)
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine()}
    for package in ("transformers", "triton", "numpy", "h5py", "pynvml", "flash_attn", "torchao"):
        try:
            info[package] = getattr(__import__(package), "__version__", "present")
        except ImportError:
            info[package] = None
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(capability=list(torch.cuda.get_device_capability(device)),
                    memory_gb=round(properties.total_memory / 2**30, 1), multiprocessors=properties.multi_processor_count)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    info["packed_attention"] = {b: unsupported_reason(b, device, dtype, 0.1, 64) or "ok" for b in BACKENDS}
    from bert_pretrain import fp8

    info["fp8"] = fp8.unavailable_reason(device) or "ok"
    return info


def _section_probe(args) -> dict:
    """Each packed attention backend, forward and backward, against the math backend on this device."""
    import torch

    from bert_pretrain.attention import BACKENDS, packed_attention, unsupported_reason

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lengths = [200, 512, 17, 300] if device.type == "cuda" else [20, 51, 7]
    cu = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
    torch.manual_seed(0)
    qkv = torch.randn(sum(lengths), 3, 16, 64, device=device, dtype=dtype)
    results = {}
    reference = None
    for backend in ["math"] + [b for b in BACKENDS if b not in ("auto", "math")]:
        reason = unsupported_reason(backend, device, dtype, 0.0, 64)
        if reason:
            results[backend] = f"unsupported: {reason}"
            continue
        try:
            inputs = qkv.clone().requires_grad_(device.type == "cuda" or backend != "flex")
            out = packed_attention(*inputs.unbind(1), cu, max(lengths), backend=backend)
            if inputs.requires_grad:
                out.float().square().sum().backward()
            value = (out.float(), inputs.grad.float() if inputs.grad is not None else None)
            if reference is None:
                reference = value
            errors = [(a - b).norm().item() / b.norm().item() for a, b in zip(value, reference) if a is not None]
            results[backend] = "ok, relative error vs math " + ", ".join(f"{e:.1e}" for e in errors)
        except Exception as err:  # noqa: BLE001 - the probe records any failure and moves on
            results[backend] = f"FAILED: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return results


def _copy_task_rows(rng, n: int, seq: int, max_pred: int, vocab: int) -> dict:
    """Learnable rows: Zipf-distributed tokens (a model first learns the frequencies), and segment B repeats
    segment A when the NSP label is 0 (then attention can copy masked tokens and tell the pairs apart)."""
    import numpy as np

    from bert_pretrain.data.synthetic import empty_rows, sample_lengths

    frequency = np.arange(1, vocab - 4, dtype=np.float64) ** -1.5
    frequency /= frequency.sum()

    arrays = empty_rows(n, seq, max_pred)
    arrays["next_sentence_labels"][:] = rng.integers(0, 2, n)
    for i, length in enumerate(sample_lengths(rng, n, seq).clip(min=9).tolist()):
        half = (length - 3) // 2
        seg_a = 5 + rng.choice(vocab - 5, half, p=frequency)
        seg_b = seg_a if arrays["next_sentence_labels"][i] == 0 else 5 + rng.choice(vocab - 5, half, p=frequency)
        tokens = np.concatenate([[2], seg_a, [3], seg_b, [3]])
        length = len(tokens)
        candidates = np.setdiff1d(np.arange(1, length - 1), [half + 1])
        count = min(max_pred, max(1, round(0.15 * length)))
        positions = np.sort(rng.choice(candidates, count, replace=False))
        arrays["masked_lm_ids"][i, :count] = tokens[positions]
        arrays["masked_lm_positions"][i, :count] = positions
        tokens[positions] = 4
        arrays["input_ids"][i, :length] = tokens
        arrays["input_mask"][i, :length] = 1
        arrays["segment_ids"][i, half + 2:length] = 1
    return arrays


def _section_train(args, fp8_layers: bool = False) -> dict:
    """A few hundred optimizer steps of the fast path (packed, auto attention) on a small model: loss must fall.
    `fp8_layers`: every encoder linear layer in float8 (emulated on the CPU)."""
    import numpy as np
    import torch

    from bert_pretrain import fp8
    from bert_pretrain.data.packing import PackingOptions, pack_padded_rows
    from bert_pretrain.model import BertConfig, BertForPreTraining
    from bert_pretrain.optim import Lamb, parameter_groups
    from bert_pretrain.options.fields import FP8_LAYERS
    from bert_pretrain.step import make_grad_scaler, train_step

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps, batch, seq = (300, 64, 128) if cuda else (100, 8, 64)
    precision = "fp8" if fp8_layers else "bf16" if cuda else "fp32"
    packing = PackingOptions(pad_to_multiple=fp8.TOKEN_MULTIPLE if fp8_layers else 1)
    config = BertConfig(vocab_size=200, hidden_size=256 if cuda else 64, num_hidden_layers=4 if cuda else 2,
                        num_attention_heads=4, intermediate_size=1024 if cuda else 128, max_position_embeddings=seq)
    rng = np.random.default_rng(0)
    arrays = _copy_task_rows(rng, batch * 32, seq, 20, config.vocab_size)
    batches = [pack_padded_rows({k: v[i * batch:(i + 1) * batch] for k, v in arrays.items()}, options=packing)
               .to(device) for i in range(32)]
    torch.manual_seed(0)
    model = BertForPreTraining(config, attention_backend="auto").to(device).train()
    if fp8_layers:
        fp8.require(device)
        fp8.convert_encoder(model, "tensorwise", FP8_LAYERS, emulate=not cuda)
    optimizer = Lamb(parameter_groups(model, weight_decay=0.01), lr=3e-3)
    scaler = make_grad_scaler(precision, device)
    losses = []
    for step in range(steps):
        losses.append(train_step(model, optimizer, scaler, [batches[step % 32]], precision, device).sums[0])
    losses = torch.stack(losses).tolist()
    window = max(steps // 10, 1)
    first, last = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
    return {"steps": steps, "precision": precision, "config": config.to_dict(), "first_loss": first,
            "last_loss": last, "loss_fell": last < 0.8 * first, "finite": bool(np.isfinite(losses).all())}


def _section_lamb(args, rounds: int = 3, updates: int = 5) -> dict:
    """One LAMB update of the model's parameters: the multi-tensor path against the compiled one
    (lamb_compiled.py), alternating blocks in one process; milliseconds per update (median block)."""
    import statistics

    import torch

    from bert_pretrain.model import MODEL_SHAPES, BertConfig, BertForPreTraining
    from bert_pretrain.optim import Lamb, parameter_groups

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=30522, **MODEL_SHAPES[args.model])).to(device)
    for param in model.parameters():
        param.grad = torch.randn_like(param) * 1e-3  # a global norm above 1: the clip is exercised
    paths = {"multi_tensor": Lamb(parameter_groups(model, 0.01), lr=1e-4),
             "compiled": Lamb(parameter_groups(model, 0.01), lr=1e-4, compiled=True)}

    def block(optimizer, steps) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = {name: block(optimizer, 1) for name, optimizer in paths.items()}  # state allocation, compilation
    blocks = {name: [] for name in paths}
    for _ in range(rounds):
        for name, optimizer in paths.items():
            blocks[name].append(block(optimizer, updates) / updates * 1e3)
    ms = {name: statistics.median(times) for name, times in blocks.items()}
    weights_gb = sum(p.numel() for p in model.parameters()) * 4 / 1e9
    return {"model": args.model, "fp32_weights_gb": round(weights_gb, 3), "ms_per_update": ms,
            "blocks_ms": blocks, "first_update_s": first, "speedup": ms["multi_tensor"] / ms["compiled"]}


def _section_layer(args) -> dict:
    """One encoder layer's forward + backward at 64, 128, 256 sequences, compiled several ways (layer_bench.py)."""
    import torch

    sizes = (64, 128, 256) if args.device == "cuda" else (4, 8)
    # A JSON line after every variant: should the section run out of time, the report keeps the last one.
    return layer_bench.measure(torch.device(args.device), args.model, sizes,
                               report=lambda results: print(json.dumps(results), flush=True))


SECTIONS = {"environment": _section_environment, "probe": _section_probe, "train": _section_train,
            "train_fp8": functools.partial(_section_train, fp8_layers=True), "lamb": _section_lamb,
            "layer": _section_layer}
