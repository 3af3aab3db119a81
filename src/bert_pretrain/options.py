"""What several commands share about their options: the choices of the attention and compile switches,
and the check that an attention backend can train on the device in use."""

from __future__ import annotations

from bert_pretrain.errors import InputError

# attention.BACKENDS written out, so that building the command line imports no torch (tests/test_config.py
# checks that they agree), and torch.compile's modes.
ATTENTION_BACKENDS = ("auto", "sdpa", "math", "flash", "varlen", "flex", "flash_attn")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def require_trainable_attention(backend: str, on_gpu: bool) -> None:
    """Raise the user-facing error for an attention backend that cannot train here (train and bench)."""
    if backend == "flex" and not on_gpu:
        raise InputError("--attention flex trains only on CUDA (FlexAttention has no backward on the CPU); "
                         "use --attention auto")
