"""What `bert-pretrain bench` measures; every field is one of its flags (kept apart from `run.py` so the
command line is built without importing torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bert_pretrain.options.fields import (
    ATTENTION_BACKENDS,
    COMPILE_MODES,
    DEFAULT_FP8_LAYERS,
    FP8_RECIPES,
    PRECISIONS,
    device_option,
    option,
)


@dataclass(frozen=True)
class BenchOptions:
    model: str = option("tiny", "model shape (tiny: 2 layers, hidden 128); ignored with --bert_config_path",
                        choices=("tiny", "base", "large"))
    bert_config_path: str | None = option(None, "a bert_config.json giving the model's shape")
    seq: int = option(128, "max_seq_length of the rows")
    batch: int = option(32, "sequences per micro-batch")
    accumulation: int = option(1, "micro-batches per optimizer step (gradient accumulation), for both contestants")
    device: str = device_option()
    precision: str = option("fp32", "autocast precision; fp8: float8 products in --fp8_layers (torchao), bf16 for "
                                    "the rest (HF then runs bf16)", choices=PRECISIONS)
    fp8_recipe: str = option("tensorwise", "torchao's float8 scaling recipe, with --precision fp8", choices=FP8_RECIPES)
    fp8_layers: str = option(DEFAULT_FP8_LAYERS, "with --precision fp8: the encoder layer's linear layers in float8, "
                                                 "comma-separated from qkv, attn_out, mlp1, mlp2, or all")
    steps: int = option(20, "timed steps per contestant (rounded down to a multiple of --rounds)")
    warmup: int = option(5, "untimed steps per contestant first (compilation happens here)")
    rounds: int = option(2, "timed blocks per contestant, alternating between them")
    shard: str | None = option(None, "an HDF5 shard (padded or variable-length) to take rows from; default: "
                                     "synthetic rows with the MLPerf Wikipedia length histogram")
    compare: str | None = option(None, "also run a peer on the same batches: hf, HF transformers; bf16, this "
                                       "project's own step in bf16 without --precision fp8 or --fused_norm (what "
                                       "those buy)", choices=("hf", "bf16"))
    max_predictions_per_seq: int | None = option(None, "masked slots per row; default 76 at --seq 512, else "
                                                       "ceil(0.15 * seq)")
    attention: str = option("auto", "attention backend for packed batches", choices=ATTENTION_BACKENDS)
    compile: bool | None = option(None, "torch.compile the model (default: on CUDA only; --no_compile: eagerly)",
                                  aliases=(("--no_compile", {"action": "store_false"}),))
    compile_optimizer: bool | None = option(
        None, "torch.compile LAMB's update, one unit per encoder layer (default: as the model; "
              "--no_compile_optimizer: LAMB's multi-tensor eager update)",
        aliases=(("--no_compile_optimizer", {"action": "store_false"}),))
    fused_norm: bool = option(False, "this project's model with kernels/fused_norm.py's Triton kernels for each "
                                     "sublayer's dense bias + dropout + residual + LayerNorm (needs Triton and a GPU)")
    hf_compile: bool = option(False, "torch.compile the HF model too")
    pad_to_multiple: int = option(1, "round each packed batch's token count up to a multiple of this (fewer "
                                     "distinct shapes)")
    peak_tflops: float | None = option(None, "the device's dense peak for MFU; default: looked up for known GPUs "
                                             "(none for CPUs)")
    seed: int = option(0, "seed of the synthetic rows and the weights")
    compile_mode: str = option("default", "torch.compile mode for this project's model (reduce-overhead adds CUDA "
                                          "graphs; max-autotune also tunes the GEMM kernels, slow to compile)",
                               choices=COMPILE_MODES)
    profile: str | None = option(None, "after timing, profile 3 of this project's steps: time by kind of work "
                                       "(GEMM, attention, compiled kernels, optimizer, ...) and the top kernels, "
                                       "printed and written to DIR/profile.md, with a Perfetto/Chrome trace in "
                                       "DIR/trace.json.gz", metavar="DIR")

    def predictions(self) -> int:
        """MLPerf's 76 at 512; ceil(0.15 * seq) otherwise (20 at 128, as BERT's phase 1)."""
        if self.max_predictions_per_seq is not None:
            return self.max_predictions_per_seq
        return 76 if self.seq == 512 else math.ceil(0.15 * self.seq)
