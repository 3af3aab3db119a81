"""`bert-pretrain convert` replaces nothing unless asked: above all not a training checkpoint, which a
weights-only file would make impossible to resume."""

import json

import torch
from conftest import tiny_config

from bert_pretrain import cli
from bert_pretrain.data.loader import DataPosition
from bert_pretrain.model import BertForPreTraining
from bert_pretrain.step import make_grad_scaler
from bert_pretrain.train.checkpoint import (
    Progress,
    TrainingState,
    gather_rank_states,
    read_training_checkpoint,
    save_training_checkpoint,
)
from bert_pretrain.weights import save_reference_checkpoint

CPU = torch.device("cpu")


def training_checkpoint(path):
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config())
    state = TrainingState(model, torch.optim.AdamW(model.parameters()), make_grad_scaler("fp32", CPU), Progress(step=3),
                          DataPosition())
    save_training_checkpoint(path, state, gather_rank_states(state, CPU), run={})
    return path


def write_config(tmp_path):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(tiny_config().to_dict()))
    return str(path)


def test_a_training_checkpoint_as_output_is_refused_and_kept(tmp_path, capsys):
    checkpoint = training_checkpoint(tmp_path / "phase2_ckpt_3.pt")
    before = checkpoint.read_bytes()
    code = cli.main(["convert", "--input", str(checkpoint), "--bert_config_path", write_config(tmp_path),
                     "--output", str(checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"--output {checkpoint}: already exists" in err
    assert "--overwrite" in err
    assert checkpoint.read_bytes() == before and read_training_checkpoint(checkpoint)["global_step"] == 3


def test_overwrite_replaces_an_existing_file(tmp_path, capsys):
    config = write_config(tmp_path)
    source, target = tmp_path / "new.pt", training_checkpoint(tmp_path / "old.pt")
    save_reference_checkpoint(BertForPreTraining(tiny_config()), source)
    code = cli.main(["convert", "--input", str(source), "--bert_config_path", config, "--output", str(target),
                     "--overwrite"])
    assert code == 0, capsys.readouterr().err
    assert list(torch.load(target, weights_only=True)) == ["model"]


def test_an_earlier_export_is_replaced_only_when_asked(tmp_path, capsys):
    config = write_config(tmp_path)
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    for seed, path in ((0, first), (1, second)):
        torch.manual_seed(seed)
        save_reference_checkpoint(BertForPreTraining(tiny_config()), path)
    export = tmp_path / "hf"
    assert cli.main(["convert", "--input", str(first), "--bert_config_path", config, "--output", str(export)]) == 0
    exported = (export / "model.safetensors").read_bytes()
    code = cli.main(["convert", "--input", str(second), "--bert_config_path", config, "--output", str(export)])
    err = capsys.readouterr().err
    assert code == 2 and f"--output {export}: an earlier export is already there" in err and "--overwrite" in err
    assert (export / "model.safetensors").read_bytes() == exported
    assert cli.main(["convert", "--input", str(second), "--bert_config_path", config, "--output", str(export),
                     "--overwrite"]) == 0
    assert (export / "model.safetensors").read_bytes() != exported
