"""Model weights in and out: the NVIDIA MLPerf `.pt`, HF transformers folders, and name maps.

The "reference names" are the NVIDIA/HF `BertForPreTraining` state-dict names (399 keys for
BERT-large: separate query/key/value, the tied `cls.predictions.decoder.weight`). This project's
model fuses query/key/value into one `qkv` projection; the maps live here and nowhere else.
Every file this project writes holds the model under `'model'` in reference names, with the vocab
padded to a multiple of 8, so `{'model': state_dict}` files from NVIDIA load the same way.

Loading is strict (missing, unexpected or mis-shaped tensors are an error listing them) and never
unpickles arbitrary objects (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from bert_pretrain import strict_json
from bert_pretrain.atomic import atomic_path
from bert_pretrain.errors import InputError
from bert_pretrain.model import BertConfig, BertForPreTraining

MODEL_KEY = "model"
_QKV = re.compile(r"^(bert\.encoder\.layer\.\d+\.attention\.self)\.qkv\.(weight|bias)$")
_SPLIT = re.compile(r"^(bert\.encoder\.layer\.\d+\.attention\.self)\.(query|key|value)\.(weight|bias)$")
# Keys some reference files carry that hold nothing of their own: HF's position_ids buffer and
# its decoder bias (tied to cls.predictions.bias); the tied decoder weight is checked against the
# word embeddings (`_check_tied_decoder`).
_REDUNDANT = ("bert.embeddings.position_ids", "cls.predictions.decoder.bias")
_VOCAB_ROWS = ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight", "cls.predictions.bias")
_TIED_DECODER = "cls.predictions.decoder.weight"
# Keys that hold no weights of their own (a file's copies of others), left out of a parameter count.
COPY_KEYS = (*_REDUNDANT, _TIED_DECODER)


def to_reference_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This model's state dict -> reference names (qkv split into query/key/value)."""
    out = {}
    for name, tensor in state.items():
        match = _QKV.match(name)
        if match:
            prefix, kind = match.groups()
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                out[f"{prefix}.{part}.{kind}"] = chunk.clone()
        else:
            out[name] = tensor
    return out


def from_reference_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference names -> this model's names (query/key/value concatenated into qkv)."""
    out, parts = {}, {}
    for name, tensor in state.items():
        match = _SPLIT.match(name)
        if match:
            prefix, part, kind = match.groups()
            parts.setdefault((prefix, kind), {})[part] = tensor
        else:
            out[name] = tensor
    for (prefix, kind), found in parts.items():
        if len(found) == 3:
            out[f"{prefix}.qkv.{kind}"] = torch.cat([found["query"], found["key"], found["value"]], dim=0)
        else:  # leave the incomplete set under its own names so the strict check reports it
            out.update({f"{prefix}.{part}.{kind}": t for part, t in found.items()})
    return out


def _pad_vocab(tensor: torch.Tensor, vocab_size: int, rows: int) -> torch.Tensor:
    """A vocab-sized tensor padded to the model's `rows` (30522 -> 30528); any other size is left for
    the shape check to report (padding a smaller vocab would load a model that knows few of its words)."""
    if tensor.shape[0] != vocab_size or vocab_size == rows:
        return tensor
    padding = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, padding], dim=0)


def _check_tied_decoder(state: dict[str, torch.Tensor], vocab_size: int, source: str) -> None:
    """The model ties the masked-LM decoder to the word embeddings: a file whose two matrices differ
    (an untied model) cannot be loaded without silently dropping one of them."""
    decoder, embeddings = state.get(_TIED_DECODER), state.get("bert.embeddings.word_embeddings.weight")
    if decoder is None or embeddings is None or decoder.shape != embeddings.shape:
        return  # absent (the usual case) or mis-shaped: the strict check reports that
    if not torch.equal(decoder[:vocab_size], embeddings[:vocab_size]):
        raise InputError(f"{source}: {_TIED_DECODER} differs from bert.embeddings.word_embeddings.weight; "
                         "BERT ties them (one matrix), so this checkpoint is not one of this model's: "
                         "untied weights cannot be loaded without losing one of them")


def load_reference_state(model: BertForPreTraining, state: dict[str, torch.Tensor], source: str) -> None:
    """Load reference-named weights into `model`, strictly; the vocab may be padded or not."""
    state = {k: v for k, v in state.items() if k not in _REDUNDANT}
    padded_rows = model.config.padded_vocab_size
    state = {k: _pad_vocab(v, model.config.vocab_size, padded_rows) if k in _VOCAB_ROWS else v
             for k, v in state.items()}
    _check_tied_decoder(state, model.config.vocab_size, source)
    state.setdefault(_TIED_DECODER, state.get("bert.embeddings.word_embeddings.weight"))
    state = from_reference_names({k: v for k, v in state.items() if v is not None})
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = [f"{label}: {listed(names)}"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                if names]
    if problems:
        raise InputError(
            f"{source}: does not match the model of the given bert_config ({'; '.join(problems)}); "
            "check that --bert_config_path describes this checkpoint"
        )
    model.load_state_dict(state, strict=True)
    model.zero_vocab_padding()


def listed(names: list[str], shown: int = 8) -> str:
    """The first `shown` names, and how many there are when that is not all of them (an error line stays short)."""
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def reference_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a reference-named file holds for `config`, vocab unpadded (as TensorFlow
    and HF keep it), without the tied decoder (a copy of the word embeddings). Costs no memory (meta device)."""
    with torch.device("meta"):
        state = reference_state(BertForPreTraining(config))
    return {name: (config.vocab_size, *tensor.shape[1:]) if name in _VOCAB_ROWS else tuple(tensor.shape)
            for name, tensor in state.items() if name not in COPY_KEYS}


def reference_state(model: BertForPreTraining) -> dict[str, torch.Tensor]:
    """The model's weights in reference names (padded vocab), as NVIDIA's `{'model': ...}` holds them."""
    return to_reference_names({k: v.detach() for k, v in model.state_dict().items()})


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` file, a `{'model': state_dict}` file or a bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files (pickle, zip, unsafe globals)
        raise refused_as_unsafe(path, err) or InputError(
            f"{path}: not a checkpoint this project reads ({type(err).__name__}); pass a PyTorch {{'model': "
            "state_dict}} or state-dict file, a .safetensors file or an HF folder") from None
    if isinstance(loaded, dict) and isinstance(loaded.get(MODEL_KEY), dict):
        loaded = loaded[MODEL_KEY]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InputError(f"{path}: expected a state dict or {{'model': state_dict}}, found {type(loaded).__name__}")
    return loaded


def read_hf_directory(directory: str | Path) -> tuple[BertConfig, dict[str, torch.Tensor]]:
    """Config and weights of an HF transformers `BertForPreTraining` folder."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise InputError(f"{directory}: no config.json; an HF model folder holds config.json and model.safetensors")
    try:
        config = BertConfig.from_json_file(config_file, hf_names=True)
    except ValueError as err:
        raise InputError(str(err)) from None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return config, read_weights_file(directory / name)
    raise InputError(f"{directory}: no model.safetensors or pytorch_model.bin")


def load_weights(model: BertForPreTraining, path: str | Path) -> None:
    """Load a checkpoint file (NVIDIA `.pt`, this project's, safetensors) or an HF folder into `model`."""
    path = Path(path)
    state = read_hf_directory(path)[1] if path.is_dir() else read_weights_file(path)
    load_reference_state(model, state, str(path))


def save_reference_checkpoint(model: BertForPreTraining, path: str | Path, extra: dict | None = None) -> None:
    """`torch.save({'model': reference_state, **extra})` to `path`, atomically. A write the disk refuses (full,
    failing) raises its OSError and leaves nothing at `path` (nor the temporary)."""
    write_checkpoint_file({MODEL_KEY: reference_state(model), **(extra or {})}, path)


def write_checkpoint_file(payload: dict, path: str | Path) -> None:
    """`torch.save(payload)` to `path`, atomically; a write the disk refuses raises its OSError and leaves nothing
    at `path` (nor the temporary)."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as file:  # a Python file: the disk's error reaches torch with its errno
                torch.save(payload, file)
        except RuntimeError as err:  # torch's zip writer fails again closing the archive, hiding the cause
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise


def require_positions(config: BertConfig, config_path: str | Path, max_seq_length: int) -> None:
    """Shards of `max_seq_length` tokens need that many position embeddings: refused before any step, not as an
    IndexError inside the model."""
    if max_seq_length > config.max_position_embeddings:
        raise InputError(f"--max_seq_length {max_seq_length} (the width of the shards) is more than the "
                         f"max_position_embeddings {config.max_position_embeddings} of {config_path}: the model "
                         f"has no position for tokens past {config.max_position_embeddings}; pass a bert_config "
                         f"with max_position_embeddings of at least {max_seq_length}, or shards made with "
                         f"--max_seq_length {config.max_position_embeddings} or less")


def refused_as_unsafe(path: str | Path, err: Exception) -> InputError | None:
    """The error for a file the safe loader (`weights_only=True`) refused because it holds objects other than
    tensors and plain data; None for any other failure. torch's own text advises `weights_only=False`, which
    would run whatever code the file carries, so it is never quoted."""
    text = str(err)
    if not isinstance(err, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    named = re.search(r"GLOBAL ([\w.]+)", text)
    what = f" (such as {named.group(1)})" if named else ""
    return InputError(f"{path}: holds objects other than tensors and plain data{what}, refused for safety (loading "
                      "them would run code the file carries); pass a file written by this project, or, if the "
                      "file comes from a source you trust, convert its weights to a plain state dict or "
                      ".safetensors file there and pass that")


def read_bert_config(path: str | Path) -> BertConfig:
    """`bert_config.json` as a BertConfig, with file errors as InputError."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; pass its bert_config.json as --bert_config_path")
    if not path.is_file():
        raise InputError(f"{path}: no such bert_config.json; check --bert_config_path")
    try:
        return BertConfig.from_json_file(path)
    except ValueError as err:
        message = str(err)
        raise InputError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def hf_config_dict(config: BertConfig) -> dict:
    """`config.json` for HF transformers; names the GELU variant the way HF reads it."""
    values = config.to_dict()
    values["hidden_act"] = "gelu" if config.gelu_approximate == "none" else "gelu_pytorch_tanh"
    return {"architectures": ["BertForPreTraining"], "model_type": "bert", "pad_token_id": 0, **values}


def export_hf(model: BertForPreTraining, directory: str | Path) -> Path:
    """Write an HF folder (config.json + model.safetensors, unpadded vocab) that
    `transformers.BertForPreTraining.from_pretrained` loads with the same outputs."""
    config = model.config
    state = reference_state(model)
    state.pop(_TIED_DECODER)  # HF re-ties it to the word embeddings on load
    state = {k: (v[: config.vocab_size] if k in _VOCAB_ROWS else v).contiguous().clone() for k, v in state.items()}
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text(strict_json.dumps(hf_config_dict(config), indent=2) + "\n")
        save_safetensors(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return directory
