"""`bert-pretrain convert`: weights between TensorFlow checkpoints, NVIDIA's .pt, this project's
checkpoints and HF folders.

The input is a TensorFlow checkpoint (its prefix, e.g. `tf1_ckpt/model.ckpt-28252`, or its `.index`), a
.pt / .safetensors file, or an HF folder. The output's kind follows its path: ending in .pt, NVIDIA's
`{'model': state_dict}` (vocab padded to a multiple of 8), what NVIDIA's `convert_tf_checkpoint.py` writes;
anything else, an HF transformers `BertForPreTraining` folder (config.json + model.safetensors, and the
tokenizer: vocab.txt, tokenizer_config.json, special_tokens_map.json, from --vocab_file or the vocab.txt beside
bert_config.json). An existing output is replaced only with `overwrite` (it may be a training checkpoint that a
weights-only file would replace), and paths that would be read another way are refused, both before the input
is read.
"""

from __future__ import annotations

from pathlib import Path

from bert_pretrain.errors import InputError
from bert_pretrain.model import BertForPreTraining
from bert_pretrain.options.commands import ConvertOptions
from bert_pretrain.tf_checkpoint import read_tf_weights
from bert_pretrain.tf_table import tf_index_path
from bert_pretrain.weights import (
    HF_TOKENIZER_FILES,
    check_fits,
    export_hf,
    load_reference_state,
    read_bert_config,
    read_export_vocab,
    read_hf_directory,
    read_weights_file,
    save_reference_checkpoint,
)

_HF_FILES = {"config.json", "model.safetensors", *HF_TOKENIZER_FILES}


def convert(options: ConvertOptions) -> str:
    """Convert `options.input` to `options.output`; returns what was read and written."""
    source, output = Path(options.input), Path(options.output)
    check_output(output, options.overwrite)  # before the (possibly long) read of the input
    vocab_file = None if output.suffix == ".pt" else export_vocab(options.vocab_file, options.bert_config_path, source)
    config, state, notes = _read_input(source, options.bert_config_path)
    if vocab_file is not None:
        read_export_vocab(vocab_file, config)  # refused now, before the weights are loaded
    check_fits(state, config, str(source))  # before the model is built: a config may claim far more than the file
    model = BertForPreTraining(config)
    load_reference_state(model, state, str(source))
    del state  # the model holds the weights now: one copy in memory while writing
    try:
        if output.suffix == ".pt":
            save_reference_checkpoint(model, output)
            return notes + f"wrote {output} (NVIDIA format, vocab {config.padded_vocab_size})"
        export_hf(model, output, vocab_file)
        return notes + (f"wrote {output}/ (HF transformers BertForPreTraining: config.json + model.safetensors; the "
                        f"tokenizer of {vocab_file}: {', '.join(HF_TOKENIZER_FILES)})")
    except OSError as err:
        raise InputError(f"--output {output}: cannot write it ({err.strerror or err}); pick a writable path") from None


def export_vocab(vocab_file: str | None, bert_config_path: str | None, source: Path) -> Path:
    """The vocab an HF export carries: --vocab_file, else the vocab.txt beside bert_config.json (as in a DATA
    folder), else the one in an HF input folder; a one-line error when there is none."""
    if vocab_file is not None:
        if not Path(vocab_file).is_file():
            raise InputError(f"--vocab_file {vocab_file}: no such file; pass the vocab.txt the model was trained with")
        return Path(vocab_file)
    beside = [Path(bert_config_path).parent / "vocab.txt"] if bert_config_path else []
    if tf_index_path(source) is None and source.is_dir():
        beside.append(source / "vocab.txt")
    found = next((path for path in beside if path.is_file()), None)
    if found is None:
        looked = f" (no {' or '.join(map(str, beside))})" if beside else ""
        raise InputError(f"an HF export carries the model's tokenizer, and no vocab was found{looked}; pass "
                         "--vocab_file with the vocab.txt the model was trained with")
    return found


def _read_input(source: Path, bert_config_path: str | None):
    """(config, reference-named weights, lines to print first) of the input."""
    index = tf_index_path(source)
    if index is None and source.is_dir():
        config, state = read_hf_directory(source)
        return config, state, ""
    if bert_config_path is None:
        raise InputError(f"{source}: a checkpoint file needs --bert_config_path to say the model's shape")
    config = read_bert_config(bert_config_path)
    if index is None:
        return config, read_weights_file(source), ""
    state, skipped = read_tf_weights(index, config)
    return config, state, (f"read {len(state)} weight tensors from the TensorFlow checkpoint {index}; skipped "
                           f"{skipped} optimizer variable(s) (LAMB / Adam slots, global_step, beta powers)\n")


def check_output(output: Path, overwrite: bool = False) -> None:
    """A .pt path is a file, anything else an HF folder: refuse what would be read another way, a folder
    of other files (the export replaces its folder whole), and, unless `overwrite`, anything there."""
    if output.suffix == ".pt":
        if output.is_dir():
            raise InputError(f"--output {output}: is a folder; a .pt output is a file, so name a file")
        if not output.parent.is_dir():
            raise InputError(f"--output {output}: the folder {output.parent} does not exist; create it first")
    elif output.suffix in (".safetensors", ".bin", ".pth", ".ckpt", ".json", ".index"):
        raise InputError(f"--output {output}: writes a .pt file (NVIDIA format) or an HF folder (config.json + "
                         "model.safetensors), not a bare weights file; end the path in .pt or give a folder name")
    elif output.exists() and not output.is_dir():
        raise InputError(f"--output {output}: is a file; an HF export is a folder (or end the path in .pt for "
                         "the NVIDIA format)")
    elif output.is_dir() and not {p.name for p in output.iterdir()} <= _HF_FILES:
        raise InputError(f"--output {output}: a folder with other files in it; the export replaces the folder "
                         "whole, so name a new folder (or an earlier export's)")
    if output.is_dir() and not overwrite:
        raise InputError(f"--output {output}: an earlier export is already there; pass --overwrite to replace it, "
                         "or name a new folder")
    if output.exists() and not overwrite:
        raise InputError(f"--output {output}: already exists; convert replaces no file unless asked (a training "
                         "checkpoint would lose its optimizer state and progress): pass --overwrite to replace it, "
                         "or name a new output")
