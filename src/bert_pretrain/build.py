"""What `train_step` steps, built in one order for `train` and `bench`: the model (initialised from torch's
current seed, then from an init checkpoint), LAMB and the loss scaler, the fp8 conversion, then compilation.

Both commands build through `build`, so the benchmark times exactly what training runs, and each setting is
checked once, here. The order is fixed because each step works on what the one before made: fp8 swaps the
encoder's linear layers for float8 ones from outside the model (keeping the Parameters, so LAMB and
checkpoints are unchanged), and `compile_model` then compiles the converted layers in place. DDP wraps the
result in train/setup.py (bench runs one process).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bert_pretrain import fp8
from bert_pretrain.kernels import fused_norm
from bert_pretrain.model import BertConfig, BertForPreTraining
from bert_pretrain.optim import LAMB_EPSILON, MAX_GRAD_NORM, Lamb, parameter_groups
from bert_pretrain.options.fields import DEFAULT_FP8_LAYERS, fp8_layer_names
from bert_pretrain.step import make_grad_scaler
from bert_pretrain.weights import load_reference_state, read_weights, require_finite


@dataclass(frozen=True)
class StepSettings:
    """How the step runs: train resolves them from its flags (options/train.py), bench from its own."""

    precision: str = "fp32"  # fp32 | fp16 | bf16 | fp8 (bf16 autocast with float8 layers)
    attention: str = "auto"
    fused_norm: bool = False
    fp8_recipe: str = "tensorwise"
    fp8_layers: str = DEFAULT_FP8_LAYERS  # as the flag spells it: names or "all"
    compile: bool = False
    compile_optimizer: bool = False
    compile_mode: str = "default"

    def float8_layers(self) -> tuple[str, ...]:
        return fp8_layer_names(self.fp8_layers, self.fused_norm)


@dataclass(frozen=True)
class Optimization:
    """LAMB's hyperparameters and fp16's initial loss scale (the reference's defaults)."""

    learning_rate: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    init_scale: float = 2.0**20


@dataclass
class Built:
    model: BertForPreTraining
    optimizer: Lamb
    scaler: torch.amp.GradScaler
    fp8: fp8.Conversion | None = None
    notes: list[str] = field(default_factory=list)


def require(settings: StepSettings, device: torch.device, fp8_flag: str = "--fp8") -> None:
    """Refuse settings this device or installation cannot run (one line each, naming `fp8_flag` as the command
    spells it), before anything is built."""
    settings.float8_layers()
    if settings.fused_norm:
        fused_norm.require(device)
    if settings.precision == "fp8":
        fp8.require(device, fp8_flag)


def build(bert_config: BertConfig, settings: StepSettings, device: torch.device,
          optimization: Optimization = Optimization(), init_checkpoint: str | None = None) -> Built:
    """Model, LAMB and loss scaler, converted to fp8 and compiled as `settings` ask, in that order. The model
    takes its initial weights from torch's current seed (the reference initialisation), then from
    `init_checkpoint` if given; LAMB has the reference's fixed epsilon and gradient clip."""
    require(settings, device)
    # the checkpoint is read and compared with the config (on the meta device) before the model is allocated
    state = read_weights(init_checkpoint, bert_config) if init_checkpoint else None
    if state is not None:
        require_finite(state, init_checkpoint)  # NaN weights would pass for a diverged step
    model = BertForPreTraining(bert_config, attention_backend=settings.attention, fused_norm=settings.fused_norm)
    if state is not None:
        load_reference_state(model, state, str(init_checkpoint))
        del state
    model.to(device)
    optimizer = Lamb(parameter_groups(model, optimization.weight_decay), lr=optimization.learning_rate,
                     betas=optimization.betas, eps=LAMB_EPSILON, weight_decay=optimization.weight_decay,
                     max_grad_norm=MAX_GRAD_NORM, compiled=settings.compile_optimizer)
    built = Built(model, optimizer, make_grad_scaler(settings.precision, device, init_scale=optimization.init_scale))
    if settings.precision == "fp8":  # emulated where there are no float8 matrix units (CPU tests)
        built.fp8 = fp8.convert_encoder(model, settings.fp8_recipe, settings.float8_layers(),
                                        emulate=device.type != "cuda")
        built.notes += built.fp8.notes
    if settings.compile:
        compile_model(model, mode=settings.compile_mode)
    return built


def compile_model(model: torch.nn.Module, mode: str | None = None, backend: str = "inductor") -> torch.nn.Module:
    """Compile the model's hot regions in place and return the model.

    Each encoder layer, the embeddings, the masked-LM head's transform and the loss are compiled
    (`Module.compile`, so parameter names and checkpoints are unchanged). All encoder layers run one
    compiled graph (parameters are graph inputs), so compiling BERT-large costs about one layer. The
    attention backend is resolved outside the layers. The packed token count is marked dynamic
    before the first call, so batches of any token count share one compilation (keep
    `Batch.max_seqlen` fixed as well, see data/packing.py, or its first change costs one more).
    `backend` is torch.compile's (tests of what Dynamo traces use "aot_eager", which generates no code).
    """
    from bert_pretrain.model import (
        BertEmbeddings,
        BertEncoder,
        BertLayer,
        BertModel,
        BertPredictionHeadTransform,
        PretrainingLoss,
    )

    for module in model.modules():
        if isinstance(module, (BertEmbeddings, BertLayer, BertPredictionHeadTransform, PretrainingLoss)):
            module.compile(mode=mode, backend=backend)
        elif isinstance(module, BertModel):
            module.register_forward_pre_hook(_mark_packed_tokens_dynamic)
        elif isinstance(module, BertEncoder):
            module.register_forward_pre_hook(_mark_hidden_dynamic)
    return model


def _mark_packed_tokens_dynamic(module, args) -> None:
    """Before BertModel.forward(batch, ...): the packed stream's length N varies from batch to batch."""
    batch = args[0]
    if batch.is_packed:
        for tensor in (batch.input_ids, batch.segment_ids, batch.position_ids):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)


def _mark_hidden_dynamic(module, args) -> None:
    """Before BertEncoder.forward(x, batch, ...): x is (N, H) when packed."""
    if args[1].is_packed:
        torch._dynamo.maybe_mark_dynamic(args[0], 0)


