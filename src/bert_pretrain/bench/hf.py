"""The benchmark's peer: HF transformers `BertForPreTraining` at its own best settings.

Same shape and dropout as this project's model; SDPA attention; the same autocast precision
(and a GradScaler for fp16); AdamW, fused on CUDA and foreach on the CPU; global-norm clipping at
1.0 as HF's Trainer does; padded batches with full-sequence labels (-100 except at the masked
positions), which is how HF computes the masked-LM loss (logits for every position).
"""

from __future__ import annotations

import numpy as np
import torch

from bert_pretrain.data.shards import counted_slots
from bert_pretrain.errors import InputError
from bert_pretrain.step import autocast

HF_IGNORE = -100


def hf_model(config, device: torch.device, compile_model: bool = False) -> torch.nn.Module:
    """A randomly initialised HF BertForPreTraining with `config`'s shape (a bert_pretrain BertConfig)."""
    try:
        import transformers
    except ImportError:
        raise InputError("--compare hf needs the transformers package: pip install transformers") from None
    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_act="gelu_pytorch_tanh" if config.gelu_approximate == "tanh" else "gelu",
        hidden_dropout_prob=config.hidden_dropout_prob, attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        initializer_range=config.initializer_range, layer_norm_eps=config.layer_norm_eps, attn_implementation="sdpa",
    )
    model = transformers.BertForPreTraining(hf_config).to(device).train()
    if compile_model:
        model.compile()
    return model


def hf_optimizer(model: torch.nn.Module, device: torch.device, lr: float = 1e-4) -> torch.optim.Optimizer:
    fused = device.type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=fused, foreach=None if fused else True)


def hf_inputs(arrays: dict) -> dict[str, torch.Tensor]:
    """HF keyword inputs from padded MLPerf rows: (B, T) ids/types/mask/labels and (B,) NSP labels."""
    input_ids = np.asarray(arrays["input_ids"]).astype(np.int64)
    labels = np.full(input_ids.shape, HF_IGNORE, np.int64)
    positions = np.asarray(arrays["masked_lm_positions"]).astype(np.int64)
    rows, slots = np.nonzero(counted_slots(positions))
    labels[rows, positions[rows, slots]] = np.asarray(arrays["masked_lm_ids"])[rows, slots]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(np.asarray(arrays["segment_ids"]).astype(np.int64)),
        "attention_mask": torch.from_numpy(np.asarray(arrays["input_mask"]).astype(np.int64)),
        "labels": torch.from_numpy(labels),
        "next_sentence_label": torch.from_numpy(np.asarray(arrays["next_sentence_labels"]).astype(np.int64)),
    }


def hf_train_step(model, optimizer, scaler, micro_batches: list[dict], precision: str,
                  device: torch.device) -> torch.Tensor:
    """One HF training step as its Trainer takes it (accumulating over the micro-batches); returns the
    mean loss over the micro-batches, as this project's step does (on the device: no synchronisation)."""
    total = None
    for inputs in micro_batches:
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        with autocast(device, precision):
            loss = model(**inputs).loss
        scaler.scale(loss / len(micro_batches)).backward()
        total = loss.detach() if total is None else total + loss.detach()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total / len(micro_batches)
