"""`bert-pretrain convert`: weights between NVIDIA's .pt, this project's checkpoints and HF folders.

The output's kind follows its path: ending in .pt, NVIDIA's `{'model': state_dict}` (vocab padded to a
multiple of 8); anything else, an HF transformers `BertForPreTraining` folder (config.json +
model.safetensors). Paths that would be read another way are refused before the input is read.
"""

from __future__ import annotations

from pathlib import Path

from bert_pretrain.checkpoint import (export_hf, load_reference_state, read_bert_config, read_hf_directory,
                                      read_weights_file, save_reference_checkpoint)
from bert_pretrain.errors import InputError
from bert_pretrain.model import BertForPreTraining

_HF_FILES = {"config.json", "model.safetensors"}


def convert(source: Path, output: Path, bert_config_path: str | None) -> str:
    """Convert `source` (a .pt/.safetensors file, or an HF folder) to `output`; returns what was written."""
    check_output(output)  # before the (possibly long) read of the input
    if source.is_dir():
        config, state = read_hf_directory(source)
    elif bert_config_path is None:
        raise InputError(f"{source}: a checkpoint file needs --bert_config_path to say the model's shape")
    else:
        config, state = read_bert_config(bert_config_path), read_weights_file(source)
    model = BertForPreTraining(config)
    load_reference_state(model, state, str(source))
    try:
        if output.suffix == ".pt":
            save_reference_checkpoint(model, output)
            return f"wrote {output} (NVIDIA format, vocab {config.padded_vocab_size})"
        export_hf(model, output)
        return f"wrote {output}/ (HF transformers BertForPreTraining: config.json + model.safetensors)"
    except OSError as err:
        raise InputError(f"--output {output}: cannot write it ({err.strerror or err}); pick a writable path") from None


def check_output(output: Path) -> None:
    """A .pt path is a file, anything else an HF folder: refuse what would be read another way, and a
    folder of other files (the export replaces its folder whole)."""
    if output.suffix == ".pt":
        if not output.parent.is_dir():
            raise InputError(f"--output {output}: the folder {output.parent} does not exist; create it first")
    elif output.suffix in (".safetensors", ".bin", ".pth", ".ckpt", ".json"):
        raise InputError(f"--output {output}: writes a .pt file (NVIDIA format) or an HF folder (config.json + "
                         "model.safetensors), not a bare weights file; end the path in .pt or give a folder name")
    elif output.exists() and not output.is_dir():
        raise InputError(f"--output {output}: is a file; an HF export is a folder (or end the path in .pt for "
                         "the NVIDIA format)")
    elif output.is_dir() and not {p.name for p in output.iterdir()} <= _HF_FILES:
        raise InputError(f"--output {output}: a folder with other files in it; the export replaces the folder "
                         "whole, so name a new folder (or an earlier export's)")
