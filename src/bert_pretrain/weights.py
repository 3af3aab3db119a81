"""Model weights in and out: the NVIDIA MLPerf `.pt`, HF transformers folders (with the tokenizer), and name maps.

The "reference names" are the NVIDIA/HF `BertForPreTraining` state-dict names (399 keys for
BERT-large: separate query/key/value, the tied `cls.predictions.decoder.weight`). This project's
model fuses query/key/value into one `qkv` projection; the maps live here and nowhere else.
Every file this project writes holds the model under `'model'` in reference names, with the vocab
padded to a multiple of 8, so `{'model': state_dict}` files from NVIDIA load the same way.

Loading is strict (missing, unexpected or mis-shaped tensors are an error listing them) and never
unpickles arbitrary objects (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from bert_pretrain import strict_json
from bert_pretrain.atomic import atomic_path
from bert_pretrain.data.vocab import CLS, MASK, PAD, SEP, UNK, check_pretraining_vocab, is_lower_cased, read_vocab
from bert_pretrain.errors import InputError
from bert_pretrain.model import BertConfig, BertForPreTraining
from bert_pretrain.regular_file import require_regular

MODEL_KEY = "model"
_LAYER_0 = "bert.encoder.layer.0."
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
    if decoder is None or embeddings is None or decoder.shape != embeddings.shape or decoder.is_meta:
        return  # absent (the usual case), mis-shaped (the strict check reports that) or shapes only
    if not torch.equal(decoder[:vocab_size], embeddings[:vocab_size]):
        raise InputError(f"{source}: {_TIED_DECODER} differs from bert.embeddings.word_embeddings.weight; "
                         "BERT ties them (one matrix), so this checkpoint is not one of this model's: "
                         "untied weights cannot be loaded without losing one of them")


def load_reference_state(model: BertForPreTraining, state: dict[str, torch.Tensor], source: str) -> None:
    """Load reference-named weights into `model`, strictly; the vocab may be padded or not."""
    check_tensors(state, source)
    state = _in_model_names(state, model.config, source)
    _require_shapes(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, source)
    model.load_state_dict(state, strict=True)
    model.zero_vocab_padding()


def check_fits(state: dict[str, torch.Tensor], config: BertConfig, source: str,
               config_source: str = "--bert_config_path") -> None:
    """The checks of `load_reference_state`, made before any model is built: the tensors' names, shapes and
    dtypes against `config`'s model as shapes on the meta device. A config that claims more than the file
    holds (a vocab of 1e8, 5000 layers) is refused here instead of allocating that model first."""
    check_tensors(state, source)
    shapes = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}
    _require_shapes(_in_model_names(shapes, config, source), model_shapes(config), source, config_source)


def check_tensors(state: dict[str, torch.Tensor], source: str) -> None:
    """Every tensor a real floating-point one with storage for each of its elements. An integer or complex
    tensor would be cast into a float parameter without a word (no BERT checkpoint has one); a tensor whose
    strides repeat a small storage (stride 0) claims elements its file never held."""
    for name, tensor in state.items():
        if name in _REDUNDANT:  # dropped unread; HF's position_ids buffer is int64
            continue
        if not tensor.dtype.is_floating_point:
            raise InputError(f"{source}: {name} holds {str(tensor.dtype).removeprefix('torch.')} values, not "
                             "floating-point weights; a BERT checkpoint's weights are float16, bfloat16 or float32: "
                             "pass the weights file itself, or convert that tensor to float where it was made")
        if not tensor.is_meta and tensor.numel() and _stored_elements(tensor) < tensor.numel():
            raise InputError(f"{source}: {name} has shape {tuple(tensor.shape)} ({tensor.numel():,} elements) but "
                             f"stores {_stored_elements(tensor):,} (its strides {tensor.stride()} repeat them); "
                             "save each weight with its own storage (tensor.contiguous()) and pass that file")


def _stored_elements(tensor: torch.Tensor) -> int:
    """The elements of the tensor's storage from its first element on: at least numel() for a tensor that
    holds each element once."""
    return tensor.untyped_storage().nbytes() // tensor.element_size() - tensor.storage_offset()


def _in_model_names(state: dict[str, torch.Tensor], config: BertConfig, source: str) -> dict[str, torch.Tensor]:
    """Reference-named weights as this model names and shapes them: the file's copies dropped, the vocab
    padded, the tied decoder checked, query/key/value fused."""
    state = {k: v for k, v in state.items() if k not in _REDUNDANT}
    state = {k: _pad_vocab(v, config.vocab_size, config.padded_vocab_size) if k in _VOCAB_ROWS else v
             for k, v in state.items()}
    _check_tied_decoder(state, config.vocab_size, source)
    state.setdefault(_TIED_DECODER, state.get("bert.embeddings.word_embeddings.weight"))
    return from_reference_names({k: v for k, v in state.items() if v is not None})


def _require_shapes(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str,
                    config_source: str = "--bert_config_path") -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != expected[k]
    ]
    problems = [f"{label}: {listed(names)}"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                if names]
    if problems:
        raise InputError(
            f"{source}: does not match the model of the given bert_config ({'; '.join(problems)}); "
            f"check that {config_source} describes {'these weights' if config_source.endswith('.json') else 'this checkpoint'}"
        )


def listed(names: list[str], shown: int = 8) -> str:
    """The first `shown` names, and how many there are when that is not all of them (an error line stays short)."""
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def reference_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a reference-named file holds for `config`, vocab unpadded (as TensorFlow
    and HF keep it), without the tied decoder (a copy of the word embeddings). Costs no memory (meta device)."""
    shapes = _per_layer(config, lambda model: reference_state(model))
    return {name: (config.vocab_size, *shape[1:]) if name in _VOCAB_ROWS else shape
            for name, shape in shapes.items() if name not in COPY_KEYS}


def model_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of `BertForPreTraining(config).state_dict()`, without building it."""
    return _per_layer(config, lambda model: model.state_dict())


def _per_layer(config: BertConfig, named) -> dict[str, tuple[int, ...]]:
    """The shapes of `named(model)` for `config`'s model, from a one-layer model on the meta device with its
    layer's names repeated for every layer: the layers are alike, and building thousands of them takes
    seconds even on the meta device."""
    with torch.device("meta"):
        state = named(BertForPreTraining(dataclasses.replace(config, num_hidden_layers=1)))
    shapes = {}
    for name, tensor in state.items():
        if name.startswith(_LAYER_0):
            rest = name.removeprefix(_LAYER_0)
            shapes.update({f"bert.encoder.layer.{i}.{rest}": tuple(tensor.shape)
                           for i in range(config.num_hidden_layers)})
        else:
            shapes[name] = tuple(tensor.shape)
    return shapes


def reference_state(model: BertForPreTraining) -> dict[str, torch.Tensor]:
    """The model's weights in reference names (padded vocab), as NVIDIA's `{'model': ...}` holds them."""
    return to_reference_names({k: v.detach() for k, v in model.state_dict().items()})


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` file, a `{'model': state_dict}` file or a bare state dict."""
    path = Path(path)
    require_regular(path, "pass the checkpoint file itself")
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files (pickle, zip, unsafe globals)
        raise refused_as_unsafe(path, err) or InputError(
            f"{path}: not a checkpoint this project reads ({type(err).__name__}); pass a PyTorch {{'model': "
            "state_dict} or state-dict file, a .safetensors file or an HF folder") from None
    if isinstance(loaded, dict) and isinstance(loaded.get(MODEL_KEY), dict):
        loaded = loaded[MODEL_KEY]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InputError(f"{path}: expected a state dict or {{'model': state_dict}}, found {type(loaded).__name__}")
    check_tensors(loaded, str(path))
    return loaded


def read_hf_directory(directory: str | Path) -> tuple[BertConfig, dict[str, torch.Tensor]]:
    """Config and weights of an HF transformers `BertForPreTraining` folder."""
    directory = Path(directory)
    config_file = directory / "config.json"
    require_regular(config_file, "an HF model folder holds config.json and model.safetensors as files")
    if not config_file.is_file():
        raise InputError(f"{directory}: no config.json; an HF model folder holds config.json and model.safetensors")
    try:
        config = BertConfig.from_json_file(config_file, hf_names=True)
    except ValueError as err:
        raise InputError(str(err)) from None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            state = read_weights_file(directory / name)
            # config.json is a claim, checked against the weights before a model of its size is built
            check_fits(state, config, str(directory), "its config.json")
            return config, state
    raise InputError(f"{directory}: no model.safetensors or pytorch_model.bin")


def load_weights(model: BertForPreTraining, path: str | Path, finite: bool = False) -> None:
    """Load a checkpoint file (NVIDIA `.pt`, this project's, safetensors) or an HF folder into `model`; with
    `finite`, refuse weights holding NaN or inf (weights to train from)."""
    state = read_weights(path, model.config)
    if finite:
        require_finite(state, path)
    load_reference_state(model, state, str(path))


def read_weights(path: str | Path, config: BertConfig) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file or HF folder, checked against `config` before any model is built."""
    path = Path(path)
    state = read_hf_directory(path)[1] if path.is_dir() else read_weights_file(path)
    check_fits(state, config, str(path))
    return state


def require_finite(state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Weights with NaN or inf make every loss NaN from the first step on, where the step's own message can only
    guess at the cause (loss scaling, the learning rate): name the first such tensor as the file names it."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(f"{source}: tensor {name} holds {bad} NaN or infinite value(s) of {tensor.numel()}; "
                             "weights to train from must be finite: pass a checkpoint written before the run that "
                             "made them diverged (a diverged run names the last one that passed its check)")


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
    require_regular(path, "pass the bert_config.json file itself as --bert_config_path")
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


HF_TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def hf_tokenizer_files(tokens: list[str], lower_case: bool, max_length: int) -> dict[str, str]:
    """The files that make an HF folder's `AutoTokenizer` the WordPiece tokenizer the model was trained with: its
    vocab (ids = line numbers, as the shards hold them), its lower-casing (with accents stripped, as uncased BERT
    and `prepare` do) and its special tokens."""
    special = {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lower_case, "strip_accents": None,
              "tokenize_chinese_chars": True, "model_max_length": max_length, **special}
    return {"vocab.txt": "".join(f"{token}\n" for token in tokens),
            "tokenizer_config.json": strict_json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": strict_json.dumps(special, indent=2) + "\n"}


def read_export_vocab(vocab_file: str | Path, config: BertConfig) -> list[str]:
    """The vocab an export carries: a pretraining vocab with one token per row of the model's embeddings."""
    tokens = read_vocab(vocab_file)
    check_pretraining_vocab(tokens, vocab_file)
    if len(tokens) != config.vocab_size:
        raise InputError(f"{vocab_file}: holds {len(tokens)} tokens, but the model has vocab_size {config.vocab_size}; "
                         "pass the vocab the model was trained with (--vocab_file)")
    return tokens


def export_hf(model: BertForPreTraining, directory: str | Path, vocab_file: str | Path,
              lower_case: bool | None = None) -> Path:
    """Write an HF folder (config.json + model.safetensors, unpadded vocab, and the tokenizer of `vocab_file`:
    lower-casing as `lower_case` says, or as the vocab shows when None) that
    `transformers.BertForPreTraining.from_pretrained` loads with the same outputs and `AutoTokenizer` reads
    with the ids the model was trained on."""
    config = model.config
    tokens = read_export_vocab(vocab_file, config)
    tokenizer = hf_tokenizer_files(tokens, is_lower_cased(tokens) if lower_case is None else lower_case,
                                   config.max_position_embeddings)
    state = reference_state(model)
    state.pop(_TIED_DECODER)  # HF re-ties it to the word embeddings on load
    state = {k: (v[: config.vocab_size] if k in _VOCAB_ROWS else v).contiguous().clone() for k, v in state.items()}
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text(strict_json.dumps(hf_config_dict(config), indent=2) + "\n")
        save_safetensors(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, text in tokenizer.items():
            (tmp / name).write_text(text, encoding="utf-8")
    return directory
