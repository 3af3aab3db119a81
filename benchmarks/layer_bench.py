"""One encoder layer, forward + backward, at the token counts of 64, 128 and 256 MLPerf-length sequences.

Why: in the H200 profiles of 2026-11-26 (BERT-large, 512, bf16) the compiled LayerNorm backward
kernel (`triton_per_fused__to_copy_add_native_dropout_backward_native_layer_norm_backward`) took
0.08 ms per call with 64 sequences per micro-batch (about 16k tokens) and 1.33 ms with 256 (65k
tokens): 4x the time per token, where a memory-bound kernel should take the same. The whole step's
compiled-kernel time rose from 82 to 113 ms per update. This section separates the candidate causes
in one call, each variant timed at each token count on the same packed micro-batches:

- `compiled_dynamic`: the layer compiled with its token count marked dynamic (what `train` runs);
- `compiled_static`: compiled once per token count (`dynamic=False`), so Inductor knows the sizes;
- `fused_norm`: as compiled_dynamic, with this project's Triton kernels for dropout + residual +
  LayerNorm (fused_norm.py; `--fused_norm`), which Inductor calls as opaque operators;
- `native_layernorm`: as compiled_dynamic, but both LayerNorms run PyTorch's own CUDA kernels in the
  compute dtype (a region left out of the compilation), the dropout + residual add still compiled;
- `eager`: no compilation at all.

Reported per variant and token count: milliseconds per micro-batch (median of timed repeats), per
1,000 tokens, and the kernel time by category with the top kernels from one profiled repeat. Run it
through gpu_check.py (`--sections layer`) or alone:

    PYTHONPATH=src python benchmarks/layer_bench.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from bert_pretrain.attention import resolve_backend
from bert_pretrain.bench.step_profile import profile_steps
from bert_pretrain.data.packing import PackingOptions, pack_padded_rows
from bert_pretrain.data.synthetic import synthetic_rows
from bert_pretrain.kernels.fused_norm import BYTES_PER_ELEMENT as FUSED_NORM_BYTES
from bert_pretrain.kernels.fused_norm import unavailable_reason
from bert_pretrain.model import MODEL_SHAPES, BertConfig, BertLayer

VARIANTS = ("compiled_dynamic", "fused_norm", "compiled_static", "native_layernorm", "eager")


class NativeLayerNorm(torch.nn.Module):
    """nn.LayerNorm's computation through PyTorch's CUDA kernel on the compute-dtype input (not fp32 as
    autocast would run it), outside torch.compile: what the compiled LayerNorm is measured against."""

    def __init__(self, layer_norm: torch.nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = layer_norm.weight, layer_norm.bias, layer_norm.eps

    def forward(self, x):
        return _native_layer_norm(x, self.weight, self.bias, self.eps)


@torch.compiler.disable
def _native_layer_norm(x, weight, bias, eps):
    with torch.autocast(x.device.type, enabled=False):
        return F.layer_norm(x, x.shape[-1:], weight.to(x.dtype), bias.to(x.dtype), eps)


def _layer(config: BertConfig, variant: str, device: torch.device) -> BertLayer:
    torch.manual_seed(0)
    layer = BertLayer(config).to(device).train()
    for sublayer in (layer.attention.output, layer.output):
        if variant == "native_layernorm":
            sublayer.LayerNorm = NativeLayerNorm(sublayer.LayerNorm)
        sublayer.fused = variant == "fused_norm"
    if variant != "eager":
        layer.compile(dynamic=False if variant == "compiled_static" else None)
    return layer


def _micro_batches(config: BertConfig, sizes, device: torch.device) -> dict:
    rng = np.random.default_rng(0)
    batches = {}
    for size in sizes:
        rows = synthetic_rows(rng, size, 512, 76, config.vocab_size)
        batches[size] = pack_padded_rows(rows, 76, PackingOptions(max_seqlen=512)).to(device)
    return batches


def measure(device: torch.device, model: str = "large", sizes=(64, 128, 256), repeats: int = 5,
            variants=VARIANTS, report=lambda results: None) -> dict:
    """The variants' times at each micro-batch size; a JSON-ready dict (see the module docstring).

    A variant that fails is recorded with its error and the next one runs; `report(results)` is called
    after each variant, so a caller can keep what was measured should the whole run be cut short."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    config = BertConfig(vocab_size=30522, **MODEL_SHAPES[model])
    batches = _micro_batches(config, sizes, device)
    backend = resolve_backend("auto", device, dtype, config.attention_probs_dropout_prob, True,
                              config.hidden_size // config.num_attention_heads)
    results = {"model": model, "dtype": str(dtype), "attention": backend,
               "tokens": {size: int(batch.input_ids.shape[0]) for size, batch in batches.items()}, "variants": {}}
    for variant in variants:
        if variant == "fused_norm" and unavailable_reason(device):
            results["variants"][variant] = {"skipped": unavailable_reason(device)}
            continue
        rows = results["variants"][variant] = {}
        try:
            layer = _layer(config, variant, device)
            for size, batch in batches.items():
                rows[size] = _time_layer(layer, variant, batch, backend, config.hidden_size, dtype, device, repeats)
                print(f"layer_bench: {variant} {size} sequences: {rows[size]['ms']:.2f} ms "
                      f"({rows[size]['ms_per_1k_tokens']:.4f} ms per 1k tokens; first call {rows[size]['first_s']} s)",
                      flush=True)
        except Exception as err:  # noqa: BLE001  (the other variants' numbers are worth keeping)
            results["variants"][variant] = {"skipped": f"failed: {type(err).__name__}: {str(err)[:300]}"}
        torch._dynamo.reset()
        report(results)
    return results


def _time_layer(layer, variant: str, batch, backend: str, hidden: int, dtype, device: torch.device,
                repeats: int) -> dict:
    """One micro-batch size: the first call (compilation), the median of `repeats` timed calls, one profiled."""
    tokens = batch.input_ids.shape[0]
    x = torch.randn(tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)

    def run():
        if variant != "compiled_static" and variant != "eager":
            torch._dynamo.maybe_mark_dynamic(x, 0)  # as build.compile_model marks the packed stream
            torch._dynamo.maybe_mark_dynamic(batch.cu_seqlens, 0)  # B changes here, not in training
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            out = layer(x, batch, backend)
        out.backward(grad)
        layer.zero_grad(set_to_none=True)
        x.grad = None

    seconds = []
    for _ in range(repeats + 1):  # the first: compilation, autotuning
        started = time.perf_counter()
        run()
        _sync(device)
        seconds.append(time.perf_counter() - started)
    ms = statistics.median(seconds[1:]) * 1e3
    profile = profile_steps(run, 1, device, top=4)
    row = {"ms": round(ms, 3), "ms_per_1k_tokens": round(ms / tokens * 1e3, 4), "first_s": round(seconds[0], 1),
           "kernel_ms": {k: round(v * 1e3, 3) for k, v in profile["categories"].items()},
           "top": [[name[:110], round(seconds * 1e3, 3), calls] for name, seconds, calls in profile["top"]]}
    fused_s = profile["categories"].get("fused norm (triton)")
    if fused_s:  # the rate our kernels reach: two sublayers, 9 bytes per element each way in bf16
        row["fused_norm_tb_per_s"] = round(2 * FUSED_NORM_BYTES * tokens * hidden / fused_s / 1e12, 2)
    return row


def format_layer(result: dict) -> list[str]:
    """Markdown lines: one row per variant and micro-batch size, kernel time by category, the top kernel."""
    measured = [rows for rows in result["variants"].values() if "skipped" not in rows]
    categories = sorted({c for rows in measured for row in rows.values() for c in row["kernel_ms"]})
    lines = [f"model {result['model']}, {result['dtype']}, attention {result['attention']}, tokens per micro-batch "
             f"{result['tokens']}", "",
             "| variant | sequences | ms | ms per 1k tokens | " + " | ".join(f"{c} ms" for c in categories)
             + " | top kernel (ms) |", "|---|---:|---:|---:|" + "---:|" * len(categories) + "---|"]
    for variant, rows in result["variants"].items():
        if "skipped" in rows:
            lines.append(f"| {variant} | skipped: {rows['skipped']} |" + " |" * (3 + len(categories)))
            continue
        for size, row in rows.items():
            top = row["top"][0] if row["top"] else ["-", 0.0, 0]
            cells = " | ".join(f"{row['kernel_ms'].get(c, 0.0):.2f}" for c in categories)
            lines.append(f"| {variant} | {size} | {row['ms']:.2f} | {row['ms_per_1k_tokens']:.4f} | {cells} "
                         f"| `{top[0][:70]}` ({top[1]:.2f}) |")
    rates = [f"{size} sequences {row['fused_norm_tb_per_s']} TB/s" for rows in measured for size, row in rows.items()
             if "fused_norm_tb_per_s" in row]
    if rates:
        lines += ["", f"fused_norm kernels, {FUSED_NORM_BYTES} bytes per element forward + backward: " + ", ".join(rates)]
    return lines


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model", default="large", choices=sorted(MODEL_SHAPES))
    parser.add_argument("--sizes", default="64,128,256", help="sequences per micro-batch, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: expected whole numbers separated by commas, e.g. 64,128")
    variants = args.variants.split(",")
    if min(sizes) < 1 or not set(variants) <= set(VARIANTS):
        parser.error(f"--sizes must be at least 1 and --variants some of {', '.join(VARIANTS)}; got "
                     f"{args.sizes!r} and {args.variants!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; pass --device cpu")
    print(json.dumps(measure(torch.device(args.device), args.model, sizes, variants=variants)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
