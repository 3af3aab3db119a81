"""Float8 training of the encoder's linear layers through torchao.float8, applied from outside the model.

`convert_encoder` swaps the chosen linear layers of every encoder layer (options.FP8_LAYERS: the QKV
projection, the attention output, the two MLP layers) for torchao's `Float8Linear`
(`convert_to_float8_training`): each of their three GEMMs (output, input gradient, weight gradient)
casts its operands to float8 with dynamic scales (tensorwise or rowwise: the recipe) and returns bf16.
The swapped module holds the very same fp32 Parameters, so parameter names, LAMB's fp32 master weights
and checkpoints (plain tensors) do not change. Everything else runs under bf16 autocast, as the MLPerf
FP8 BERT submissions keep it: embeddings, LayerNorms, attention, the pooler, the masked-LM and NSP heads.

Float8 matrix products need their dimensions in multiples of 16: a layer whose sizes are not stays in
bf16 (with a note), and since the weight gradient's inner dimension is the token count, the packers
round each batch up to TOKEN_MULTIPLE tokens (data/packing.py's padding segment). On the CPU, which has
no float8 matrix units (torch's CPU `_scaled_mm` is a scalar loop, about 16 million multiply-adds per
second), the products are emulated: the operands are quantised to float8 exactly as on a GPU, then
multiplied in fp32.

Evaluation runs the same weights in bf16 (`float8_off`). torchao is imported only here, and only when
fp8 is asked for (`pip install 'bert-pretrain[fp8]'`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import sys
from typing import NamedTuple

import torch
from torch import nn

from bert_pretrain.errors import InputError

# options.FP8_LAYERS -> the module path inside each BertLayer
LAYER_PATHS = {"qkv": "attention.self.qkv", "attn_out": "attention.output.dense",
               "mlp1": "intermediate.dense", "mlp2": "output.dense"}
TOKEN_MULTIPLE = 16  # torch._scaled_mm's alignment rule for every dimension but the first operand's rows
MIN_TORCH = (2, 11)  # torchao 0.17+ is built against it
MIN_TORCHAO = (0, 17)
MIN_CAPABILITY = (8, 9)  # float8 tensor cores: Ada, Hopper, Blackwell
INSTALL = "pip install 'bert-pretrain[fp8]' (or pip install 'torchao>=0.17')"


class Conversion(NamedTuple):
    layers: tuple[str, ...]  # the names (options.FP8_LAYERS) that run in float8
    notes: list[str]  # one line each, for the user


def require(device: torch.device, flag: str = "--fp8") -> None:
    """Raise the user-facing error where fp8 training cannot run on `device`."""
    reason = unavailable_reason(device)
    if reason:
        raise InputError(f"{flag} {reason}")


@functools.lru_cache(maxsize=None)
def unavailable_reason(device: torch.device) -> str | None:
    """None when fp8 training can run on `device`, else why not and the fix."""
    if _version(torch.__version__) < MIN_TORCH:
        return f"needs PyTorch 2.11 or newer for torchao's float8 training, and this is {torch.__version__}; use --bf16"
    try:
        _torchao_float8()
    except ImportError:
        return f"needs the torchao package: {INSTALL}; or train with --bf16"
    except Exception as err:  # noqa: BLE001 - a torchao that does not match this torch fails in many ways
        return f"could not import torchao ({type(err).__name__}: {str(err).splitlines()[0][:160]}); {INSTALL}"
    version = sys.modules["torchao"].__version__
    if _version(version) < MIN_TORCHAO:
        return f"needs torchao 0.17 or newer, and this is {version}: pip install -U 'torchao>=0.17'"
    if device.type == "cpu":
        return None  # emulated (see the module's docstring)
    if device.type != "cuda":
        return f"runs on NVIDIA GPUs (and, emulated, on the CPU), not on {device.type}; use --bf16"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"needs a GPU with float8 tensor cores (compute capability 8.9 or newer: L4, L40S, H100, H200, "
                f"B200); {torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}: use --bf16")
    return _probe(device)


def _probe(device: torch.device) -> str | None:
    """One small float8 matrix product on `device`: the kernel the layers need, tried before any work."""
    ones = torch.ones(16, 16, device=device)
    one = torch.ones((), device=device)
    try:
        torch._scaled_mm(ones.to(torch.float8_e4m3fn), ones.to(torch.float8_e4m3fn).t(), scale_a=one, scale_b=one,
                         out_dtype=torch.bfloat16)
    except RuntimeError as err:
        return f"cannot run float8 matrix products here ({str(err).splitlines()[0][:160]}); use --bf16"
    return None


def _version(text: str) -> tuple[int, int]:
    """'2.11.0+cu130' -> (2, 11)."""
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _torchao_float8():
    """torchao.float8, without its optional C++ kernels, which float8 training does not use (they are built
    for one CUDA version and cannot load on a CPU-only torch) and without the warnings about them."""
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        import torchao.float8
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return torchao.float8


def convert_encoder(model: nn.Module, recipe: str, layers: tuple[str, ...], emulate: bool) -> Conversion:
    """Swap `layers` (names from options.FP8_LAYERS) of every encoder layer of `model` (a
    BertForPreTraining) for torchao's Float8Linear with `recipe`, in place. `emulate`: quantise to float8
    but multiply in fp32 (for devices without float8 matrix units)."""
    float8 = _torchao_float8()
    config = float8.Float8LinearConfig.from_recipe_name(recipe)
    if emulate:
        config = dataclasses.replace(config, emulate=True)
    wanted = {LAYER_PATHS[name]: name for name in layers}
    converted, kept = set(), {}

    def chosen(module: nn.Linear, fqn: str) -> bool:  # fqn inside the encoder: layer.<i>.<path>
        name = wanted.get(fqn.split(".", 2)[-1])
        if name is None:
            return False
        if module.in_features % TOKEN_MULTIPLE or module.out_features % TOKEN_MULTIPLE:
            kept[name] = (module.in_features, module.out_features)
            return False
        converted.add(name)
        return True

    float8.convert_to_float8_training(model.bert.encoder, module_filter_fn=chosen, config=config)
    notes = [f"note: fp8 keeps {name} ({size_in} -> {size_out} features) in bf16: float8 matrix products need "
             f"sizes in multiples of {TOKEN_MULTIPLE}" for name, (size_in, size_out) in kept.items()]
    if emulate and converted:
        notes.append("note: fp8 is emulated on this device: operands quantised to float8 as on a GPU, products in fp32")
    return Conversion(tuple(n for n in layers if n in converted), notes)


@contextlib.contextmanager
def float8_off(model: nn.Module):
    """Within: every Float8Linear of `model` is a plain nn.Linear holding the same Parameters (evaluation
    runs in bf16); the float8 modules are put back after. A model never converted is left alone."""
    module = sys.modules.get("torchao.float8.float8_linear")  # absent: torchao never imported, nothing converted
    swaps = [] if module is None else [
        (parent, name, child) for parent in model.modules() for name, child in parent.named_children()
        if isinstance(child, module.Float8Linear)
    ]
    for parent, name, child in swaps:
        setattr(parent, name, _plain_linear(child))
    try:
        yield
    finally:
        for parent, name, child in swaps:
            setattr(parent, name, child)


def _plain_linear(layer: nn.Linear) -> nn.Linear:
    with torch.device("meta"):  # no memory: the Parameters are the float8 layer's own
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    plain.weight, plain.bias = layer.weight, layer.bias
    return plain
