"""`bert-pretrain inspect` on checkpoints: the model's shape from the tensors, a training run's state."""

import json

import pytest
from conftest import cli_here, run_cli, tiny_config, write_vocab_file
from support.states import CPU, trained_state

from bert_pretrain.inspect_checkpoint import checkpoint_summary
from bert_pretrain.model import BertForPreTraining
from bert_pretrain.train.checkpoint import gather_rank_states, save_training_checkpoint
from bert_pretrain.weights import export_hf, save_reference_checkpoint


def test_weights_and_an_hf_folder_give_the_models_shape_and_parameter_count(tmp_path):
    model = BertForPreTraining(tiny_config(vocab_size=100))  # vocab padded to 104 rows in the model
    save_reference_checkpoint(model, tmp_path / "model.pt")
    export_hf(model, tmp_path / "hf", write_vocab_file(tmp_path / "vocab.txt", 100))
    own = sum(p.numel() for p in model.parameters())  # tied weights counted once
    weights = checkpoint_summary(tmp_path / "model.pt")
    assert weights["kind"] == "weights ({'model': state_dict})" and "training" not in weights
    assert (weights["layers"], weights["hidden_size"], weights["intermediate_size"], weights["vocab_rows"],
            weights["max_position_embeddings"], weights["type_vocab_size"]) == (2, 32, 64, 104, 64, 2)
    assert weights["parameters"] == own
    hf = checkpoint_summary(tmp_path / "hf")
    assert hf["kind"] == "HF transformers folder" and hf["vocab_rows"] == 100
    assert hf["parameters"] == own - 4 * 32 - 4  # HF keeps the 100 real rows of the embeddings and the bias
    printed = run_cli("inspect", str(tmp_path / "model.pt"))
    assert printed.returncode == 0, printed.stderr
    assert f"2 layers, hidden 32, intermediate 64, vocab rows 104, 64 positions, 2 segment types; {own:,} " \
           "parameters" in printed.stdout


@pytest.mark.slow
def test_a_training_checkpoint_shows_where_the_run_stood(tmp_path):
    state = trained_state()
    path = tmp_path / "phase1_ckpt_2.pt"
    save_training_checkpoint(path, state, gather_rank_states(state, CPU),
                             run={"train_batch_size": 8, "learning_rate": 0.001, "seed": 7, "unlisted": 1})
    printed = run_cli("inspect", str(path))
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0] == f"{path}: training checkpoint (resumable)"
    assert "run: step 2, 8 samples, 1 skipped steps, 1 process(es), best masked-LM accuracy 0.2500" in lines[2]
    assert "loss scale" in lines[2] and lines[3] == "  options: train_batch_size 8, learning_rate 0.001, seed 7"
    assert lines[4] == "  eval at step 1: masked-LM accuracy 0.2500"
    as_json = json.loads(run_cli("inspect", str(path), "--json").stdout)
    assert as_json["training"]["run"]["unlisted"] == 1 and as_json["training"]["optimizer_tensors"] > 0


@pytest.mark.parametrize("edit, named", [
    (lambda c: c["progress"]["eval_history"][0].update(mlm_accuracy="0.25"),
     "progress.eval_history[0].mlm_accuracy is '0.25', not a number"),
    (lambda c: c["scaler"].update(scale="big"), "scaler.scale is 'big', not a positive number"),
])
def test_a_hand_edited_training_checkpoint_is_one_line_as_on_resume(tmp_path, edit, named):
    """inspect reads a training state as strictly as a resume: the field named, not a traceback or a weights file."""
    import torch

    state = trained_state()
    path = tmp_path / "phase1_ckpt_2.pt"
    save_training_checkpoint(path, state, gather_rank_states(state, CPU), run={})
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    printed = cli_here("inspect", str(path))
    assert printed.returncode == 2 and "Traceback" not in printed.stderr, printed.stderr
    assert printed.stderr.strip().splitlines() == [f"bert-pretrain inspect: error: {path}: {named}; this is not a "
                                                   "training state as train writes it (damaged or edited): resume "
                                                   "from another checkpoint, or start a new run from its weights "
                                                   "with --init_checkpoint"]
