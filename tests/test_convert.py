"""`bert-pretrain convert` replaces nothing unless asked: above all not a training checkpoint, which a
weights-only file would make impossible to resume."""

import json

import torch
import transformers
from conftest import cli_here, tiny_config, write_vocab_file

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
    """bert_config.json with a vocab.txt beside it, as in a DATA folder."""
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(tiny_config().to_dict()))
    write_vocab_file(tmp_path / "vocab.txt", tiny_config().vocab_size)
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


WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", ".", "##s", "cafe")


def test_an_hf_export_carries_the_tokenizer_the_model_was_trained_with(tmp_path):
    """AutoTokenizer reads the export with the project's own ids (lower-cased, accents stripped, as uncased BERT
    and `prepare` tokenize), and fill-mask decodes the model's rows as the vocab's tokens: the row the model
    favours comes back as its word, not as the empty string of a tokenizer built from nothing."""
    from bert_pretrain.prepare.tokenization import WordPieceTokenizer

    config = tiny_config(vocab_size=40)
    data = tmp_path / "DATA"
    data.mkdir()
    (data / "bert_config.json").write_text(json.dumps(config.to_dict()))
    tokens = write_vocab_file(data / "vocab.txt", 40, WORDS).read_text().split()
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    with torch.no_grad():
        model.cls.predictions.bias[tokens.index("fox")] = 50.0  # a model sure of one word
    save_reference_checkpoint(model, tmp_path / "model.pt")
    export = tmp_path / "hf"
    converted = cli_here("convert", "--input", str(tmp_path / "model.pt"), "--bert_config_path",
                         str(data / "bert_config.json"), "--output", str(export))
    assert converted.returncode == 0, converted.stderr
    assert f"the tokenizer of {data / 'vocab.txt'}" in converted.stdout

    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    text = "The quick brown Fox jumps over the lazy dogs. Café"
    ours = WordPieceTokenizer(tokens, lower_case=True)
    expected = [tokens.index("[CLS]"), *(tokens.index(t) for t in ours.tokenize(text)), tokens.index("[SEP]")]
    assert tokenizer(text)["input_ids"] == expected and len(expected) == 14
    fill = transformers.pipeline("fill-mask", model=str(export), tokenizer=str(export), device="cpu")
    top = fill("the quick brown [MASK] jumps")[0]
    assert (top["token"], top["token_str"]) == (tokens.index("fox"), "fox")


def test_an_hf_export_without_a_vocab_to_carry_is_refused_in_one_line(tmp_path):
    config = tmp_path / "config" / "bert_config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(tiny_config().to_dict()))
    save_reference_checkpoint(BertForPreTraining(tiny_config()), tmp_path / "model.pt")
    base = ["convert", "--input", str(tmp_path / "model.pt"), "--bert_config_path", str(config)]
    missing = cli_here(*base, "--output", str(tmp_path / "hf"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert f"no vocab was found (no {config.parent / 'vocab.txt'}); pass --vocab_file" in missing.stderr
    assert not (tmp_path / "hf").exists()
    other = write_vocab_file(tmp_path / "other_vocab.txt", 50)
    wrong = cli_here(*base, "--output", str(tmp_path / "hf"), "--vocab_file", str(other))
    assert wrong.returncode == 2 and f"{other}: holds 50 tokens, but the model has vocab_size 100" in wrong.stderr
    assert not (tmp_path / "hf").exists()
    assert cli_here(*base, "--output", str(tmp_path / "model2.pt")).returncode == 0  # NVIDIA's format has no vocab
