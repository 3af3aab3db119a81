"""BERT for pretraining (masked-LM + next-sentence prediction) with the MLPerf reference numerics.

Post-LayerNorm BERT as in google-research/bert and NVIDIA's MLPerf v1.0 implementation:
tanh-approximated GELU for "gelu", LayerNorm eps 1e-12, vocab padded to a multiple of 8 for the
embedding and decoder GEMMs (padded rows are zero and are cut off before the softmax, so they are
never predicted). Parameter names follow the HF/NVIDIA checkpoints except that query/key/value are
one fused `qkv` projection (one GEMM); `weights.py` maps the names.

Architecture only: no training logic, no file formats beyond `bert_config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bert_pretrain.attention import attention_dtype, packed_attention, padded_attention, resolve_backend
from bert_pretrain.batch import IGNORE_LABEL, Batch
from bert_pretrain.kernels.fused_norm import dropout_add_layer_norm

# Activation names as written in config files -> the GELU variant they mean.
# In Google/NVIDIA `bert_config.json`, "gelu" is the tanh approximation (docs/mlperf.md, "The model");
# in HF `config.json` "gelu" is the exact erf form, so HF files are read with `hf_names=True`.
_TANH_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_tanh", "gelu_fast")
_ERF_NAMES = ("gelu_exact", "gelu_erf", "gelu_python")
# The config's float fields, as checked when it is read.
_DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
_POSITIVE_SCALES = ("initializer_range", "layer_norm_eps")


# The standard shapes (google-research/bert's BERT-base and -large; "tiny" is this project's CPU-sized
# model: the demo's, the CPU benchmark's and configs/bert_config_tiny.json's).
MODEL_SHAPES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


@dataclass(frozen=True)
class BertConfig:
    """The model's shape, as in `bert_config.json`."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12

    @property
    def padded_vocab_size(self) -> int:
        """The vocab rounded up to a multiple of 8 (30522 -> 30528)."""
        return (self.vocab_size + 7) // 8 * 8

    @property
    def gelu_approximate(self) -> str:
        """'tanh' or 'none', the `approximate` argument of `torch.nn.functional.gelu`."""
        return "none" if self.hidden_act in _ERF_NAMES else "tanh"

    def __post_init__(self):
        if self.hidden_act not in ("gelu",) + _TANH_NAMES + _ERF_NAMES:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; use 'gelu' (tanh approximation, as the "
                f"reference), one of {_TANH_NAMES}, or an exact form {_ERF_NAMES}"
            )
        # NSP needs two segment ids; [PAD] [UNK] [CLS] [SEP] [MASK] are five tokens
        least = dict(vocab_size=5, hidden_size=1, num_hidden_layers=1, num_attention_heads=1, intermediate_size=1,
                     max_position_embeddings=1, type_vocab_size=2)
        for name, minimum in least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
        # a dropout of 1 drops everything; an initializer scale or LayerNorm epsilon of 0 or less is no model
        for name in _DROPOUTS + _POSITIVE_SCALES:
            value = getattr(self, name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if name in _DROPOUTS:
                allowed, fits = "in [0, 1)", is_number and 0 <= value < 1
            else:
                allowed, fits = "above 0", is_number and 0 < value < math.inf
            if not fits:  # NaN fits neither
                usual = {f.name: f.default for f in dataclasses.fields(self)}[name]
                raise ValueError(f"{name} must be a number {allowed}, got {value!r} (BERT's is {usual})")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )

    @classmethod
    def from_dict(cls, values: dict, hf_names: bool = False) -> BertConfig:
        """Known keys are taken, others (model_type, architectures, ...) ignored; missing required keys raise."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in fields}
        if hf_names and kwargs.get("hidden_act") == "gelu":
            kwargs["hidden_act"] = "gelu_exact"
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [k for k in required if k not in kwargs]
        if missing:
            raise ValueError(f"missing keys {missing}")
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | Path, hf_names: bool = False) -> BertConfig:
        try:
            values = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a JSON file ({err}); pass a bert_config.json") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object with the BERT config keys")
        # An HF config.json (it always names its model_type) means the exact GELU by "gelu".
        hf_names = hf_names or "model_type" in values
        try:
            return cls.from_dict(values, hf_names=hf_names)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PretrainingOutput:
    """Loss for backward plus on-device sums for metrics (read them only at log/eval time)."""

    loss: torch.Tensor  # scalar: mean masked-LM CE + mean NSP CE
    mlm_loss_sum: torch.Tensor  # sum of CE over the masked tokens
    mlm_correct: torch.Tensor  # masked tokens predicted right
    mlm_count: torch.Tensor  # masked tokens
    nsp_loss_sum: torch.Tensor
    nsp_correct: torch.Tensor
    nsp_count: torch.Tensor

    def sums(self) -> torch.Tensor:
        """(len(SUM_NAMES),) float64 on the device, in SUM_NAMES order: what training's logs and evaluation add
        up over batches and processes (one stack, so one all-reduce and one read at the end)."""
        return torch.stack([getattr(self, name).detach().double() for name in SUM_NAMES])


SUM_NAMES = ("loss", "mlm_loss_sum", "mlm_correct", "mlm_count", "nsp_loss_sum", "nsp_correct", "nsp_count")


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, segment_ids, position_ids):
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        x = x + self.token_type_embeddings(segment_ids)
        # In the compute dtype under autocast (LayerNorm returns fp32), as every layer's input and output:
        # cast here, the encoder's input is this very tensor, the one build.compile_model marks dynamic (tests/test_step.py).
        return self.dropout(self.LayerNorm(x)).to(attention_dtype(x))


class _DenseNorm(nn.Module):
    """dense -> dropout -> residual add -> LayerNorm (the post-LN sublayer output).

    With `fused` (set by BertForPreTraining(fused_norm=True)) the dense layer's bias, the dropout, the
    residual add and the LayerNorm run as fused_norm.py's Triton kernels: the same math, a dropout mask
    from another random stream.
    """

    def __init__(self, in_size: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.fused = False

    def forward(self, x, residual):
        if self.fused:  # the dense layer's bias is added (and its gradient summed) inside the kernels
            p, norm = self.dropout.p if self.training else 0.0, self.LayerNorm
            return dropout_add_layer_norm(F.linear(x, self.dense.weight), self.dense.bias, residual, norm.weight,
                                          norm.bias, norm.eps, p)
        # Under autocast the dense output is fp16/bf16 but LayerNorm returns fp32; casting its output back
        # keeps the residual stream between layers in the compute dtype, as NVIDIA's fp16 model does. That
        # halves the bytes of every residual read and write and saves the casts before the next GEMMs. The
        # normalisation itself still computes in fp32. Without autocast this is the identity.
        h = self.dropout(self.dense(x))
        return self.LayerNorm(h + residual).to(h.dtype)


class _SelfAttentionProjection(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)


class _Attention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = _SelfAttentionProjection(config)
        self.output = _DenseNorm(config.hidden_size, config)


class _Intermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.attention_dropout = config.attention_probs_dropout_prob
        self.gelu_approximate = config.gelu_approximate
        self.attention = _Attention(config)
        self.intermediate = _Intermediate(config)
        self.output = _DenseNorm(config.intermediate_size, config)

    def forward(self, x, batch: Batch, attention_backend: str):
        """x: (B, T, H) padded or (N, H) packed."""
        qkv = self.attention.self.qkv(x)  # (..., 3H)
        q, k, v = qkv.unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)  # each (..., heads, d)
        dropout_p = self.attention_dropout if self.training else 0.0
        if batch.is_packed:
            context = packed_attention(q, k, v, batch.cu_seqlens, batch.max_seqlen, attention_backend, dropout_p)
        else:
            context = padded_attention(q, k, v, batch.attention_mask, attention_backend, dropout_p)
        x = self.attention.output(context.flatten(-2), x)  # (..., H)
        hidden = F.gelu(self.intermediate.dense(x), approximate=self.gelu_approximate)
        return self.output(hidden, x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x, batch: Batch, attention_backend: str):
        # Resolve "auto" once per forward, outside the (possibly compiled) layers.
        first = self.layer[0]
        dropout_p = first.attention_dropout if self.training else 0.0
        dtype = attention_dtype(x)  # the autocast dtype under autocast, else x's
        backend = resolve_backend(attention_backend, x.device, dtype, dropout_p, batch.is_packed, first.head_dim)
        # Every layer then sees its input in the compute dtype (see _DenseNorm), so all share one compilation.
        x = x.to(dtype)
        for layer in self.layer:
            x = layer(x, batch, backend)
        return x


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, cls_hidden):
        return torch.tanh(self.dense(cls_hidden))


class BertModel(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)

    def forward(self, batch: Batch, attention_backend: str = "sdpa"):
        """Returns the flat token states (B*T or N, H) and the pooled [CLS] states (B, H)."""
        if batch.is_packed:
            position_ids = batch.position_ids  # (N,)
        else:
            seq_len = batch.input_ids.shape[1]
            position_ids = torch.arange(seq_len, device=batch.input_ids.device)[None, :]  # (1, T)
        x = self.embeddings(batch.input_ids, batch.segment_ids, position_ids)
        x = self.encoder(x, batch, attention_backend)
        if batch.is_packed:
            # The first B offsets: a packer may append a padding segment after the B sequences.
            cls_hidden = x[batch.cu_seqlens[: batch.num_sequences].long()]  # (B, H)
        else:
            cls_hidden = x[:, 0]
        return x.reshape(-1, x.shape[-1]), self.pooler(cls_hidden)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gelu_approximate = config.gelu_approximate

    def forward(self, x):
        return self.LayerNorm(F.gelu(self.dense(x), approximate=self.gelu_approximate))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied
        self.bias = nn.Parameter(torch.zeros(config.padded_vocab_size))
        self.vocab_size = config.vocab_size
        # 0 on the real vocabulary, -inf on the padding entries: added to the bias, it keeps the padded
        # columns out of every softmax and argmax without slicing (which copies the logits and their grad).
        padding = torch.zeros(config.padded_vocab_size)
        padding[config.vocab_size :] = float("-inf")
        self.register_buffer("vocab_padding", padding, persistent=False)

    def padded_logits(self, x):
        """x: (M, H) states of the masked tokens -> (M, padded_vocab_size) logits, -inf in the padded columns."""
        return F.linear(self.transform(x), self.decoder.weight, self.bias + self.vocab_padding)

    def forward(self, x):
        """x: (M, H) states of the masked tokens -> (M, vocab_size) logits (padded rows cut off)."""
        return self.padded_logits(x)[:, : self.vocab_size]


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM and NSP heads; `forward(batch)` returns the loss and metric sums."""

    def __init__(self, config: BertConfig, attention_backend: str = "sdpa", fused_norm: bool = False):
        """`fused_norm`: each encoder sublayer's dropout + residual + LayerNorm as one Triton kernel
        each way (fused_norm.py; needs Triton and a CUDA device)."""
        super().__init__()
        self.config = config
        self.attention_backend = attention_backend
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings)
        self.criterion = PretrainingLoss()
        self.apply(self._init_weights)
        self.zero_vocab_padding()
        for module in self.modules():
            if isinstance(module, _DenseNorm):
                module.fused = fused_norm

    def _init_weights(self, module):
        """The reference initialisation: N(0, initializer_range) weights, zero biases, LayerNorm (1, 0)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    @torch.no_grad()
    def zero_vocab_padding(self):
        self.bert.embeddings.word_embeddings.weight[self.config.vocab_size :].zero_()
        self.cls.predictions.bias[self.config.vocab_size :].zero_()

    def forward(self, batch: Batch) -> PretrainingOutput:
        tokens, pooled = self.bert(batch, self.attention_backend)  # (B*T or N, H), (B, H)
        masked_states = tokens.index_select(0, batch.masked_positions)  # (M, H)
        mlm_logits = self.cls.predictions.padded_logits(masked_states)  # (M, padded V), -inf past V
        nsp_logits = self.cls.seq_relationship(pooled)  # (B, 2)
        return self.criterion(mlm_logits, batch.masked_labels, nsp_logits, batch.next_sentence_labels)


class PretrainingLoss(nn.Module):
    """`pretraining_loss` as a module without parameters, so that it can be compiled as one region."""

    def forward(self, mlm_logits, mlm_labels, nsp_logits, nsp_labels) -> PretrainingOutput:
        return pretraining_loss(mlm_logits, mlm_labels, nsp_logits, nsp_labels)


def pretraining_loss(mlm_logits, mlm_labels, nsp_logits, nsp_labels) -> PretrainingOutput:
    """Mean CE over the masked tokens (IGNORE_LABEL slots excluded) plus mean NSP CE, in fp32.

    `mlm_logits` may carry extra -inf columns (the vocabulary's padding): they change nothing.
    """
    mlm_logits = mlm_logits.float()
    nsp_logits = nsp_logits.float()
    valid = mlm_labels != IGNORE_LABEL
    mlm_count = valid.sum()
    mlm_loss_sum = F.cross_entropy(mlm_logits, mlm_labels, ignore_index=IGNORE_LABEL, reduction="sum")
    mlm_correct = ((mlm_logits.argmax(-1) == mlm_labels) & valid).sum()
    nsp_loss_sum = F.cross_entropy(nsp_logits, nsp_labels, reduction="sum")
    # torch.full launches a fill; torch.tensor(...) on a GPU would copy from the host and synchronise.
    nsp_count = torch.full((), nsp_labels.shape[0], dtype=torch.long, device=nsp_labels.device)
    loss = mlm_loss_sum / mlm_count.clamp(min=1) + nsp_loss_sum / nsp_labels.shape[0]
    return PretrainingOutput(
        loss=loss,
        mlm_loss_sum=mlm_loss_sum.detach(),
        mlm_correct=mlm_correct,
        mlm_count=mlm_count,
        nsp_loss_sum=nsp_loss_sum.detach(),
        nsp_correct=(nsp_logits.argmax(-1) == nsp_labels).sum(),
        nsp_count=nsp_count,
    )
