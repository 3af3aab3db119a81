"""Training FLOPs of BERT pretraining on real tokens only, and model FLOPs utilisation (MFU).

Per sequence of L real tokens with m masked tokens (H hidden, I intermediate, V vocab, n layers;
a multiply-add counts 2):

    forward = n * (L * (8 H^2 + 4 H I) + 4 L^2 H)     encoder: QKV 6H^2, output 2H^2, FFN 4HI per token;
                                                      QK^T and PV 2LH each per token
            + m * (2 H^2 + 2 H V)                     masked-LM transform and decoder, masked tokens only
            + 2 H^2 + 4 H                             pooler and NSP classifier
    training = 3 * forward                            backward = 2 * forward

Padding, unused masked-LM slots and the vocabulary's padding rows do no useful work and are not
counted, so a padded implementation and a packed one get the same FLOPs for the same sequences.
Embedding lookups, LayerNorm, GELU, softmax and the optimizer are not counted (the usual MFU rule).
MFU = achieved FLOP/s / the device's dense peak for the precision.
"""

from __future__ import annotations

import numpy as np

# Dense peak TFLOP/s per (device-name fragment, precision), vendor datasheets (SXM parts unless
# named). fp32 is plain fp32 (no TF32): this project runs fp32 as fp32. Most specific first.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("H20", {"bf16": 148.0, "fp16": 148.0, "fp32": 44.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2}),
)


def sequence_flops(length, masked, hidden: int, intermediate: int, layers: int, vocab: int) -> np.ndarray:
    """Training FLOPs (forward + backward) per sequence; `length`/`masked` are arrays (or ints)."""
    length = np.asarray(length, np.float64)
    masked = np.asarray(masked, np.float64)
    encoder = layers * (length * (8.0 * hidden**2 + 4.0 * hidden * intermediate) + 4.0 * length**2 * hidden)
    heads = masked * (2.0 * hidden**2 + 2.0 * hidden * vocab) + 2.0 * hidden**2 + 4.0 * hidden
    return 3.0 * (encoder + heads)


def batch_flops(config, lengths, masked) -> float:
    """Training FLOPs of one pass over sequences with real `lengths` and `masked` counts (BertConfig shape)."""
    return float(sequence_flops(lengths, masked, config.hidden_size, config.intermediate_size,
                                config.num_hidden_layers, config.vocab_size).sum())


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The dense peak of a known accelerator for `precision`, else None (CPUs, unknown GPUs). fp8 counts
    against the bf16 peak: attention, the heads and any layer left unconverted run in bf16, and so its
    MFU compares with a bf16 run's."""
    precision = "bf16" if precision == "fp8" else precision
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in device_name:
            return peaks.get(precision)
    return None
