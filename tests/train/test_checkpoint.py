"""The training checkpoint: one file that restores everything exactly, and the reference's schedule."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from support.states import CPU, assert_same_training_state, make_state, trained_state

from bert_pretrain.data.loader import DataPosition
from bert_pretrain.errors import InputError
from bert_pretrain.model import BertForPreTraining
from bert_pretrain.train.checkpoint import (
    CheckpointSchedule,
    CheckpointWriter,
    Progress,
    gather_rank_states,
    host_snapshot,
    read_training_checkpoint,
    restore_training_state,
    save_training_checkpoint,
)
from bert_pretrain.weights import load_weights, save_reference_checkpoint


def test_a_checkpoint_restores_every_piece_exactly(tmp_path):
    state = trained_state()
    random.seed(5), np.random.seed(6), torch.manual_seed(7)
    path = tmp_path / "phase2_ckpt_2.pt"
    save_training_checkpoint(path, state, gather_rank_states(state, CPU), run={"seed": 42})
    expected_draws = (random.random(), np.random.rand(), torch.rand(3))

    fresh = make_state(seed=1)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    notes = restore_training_state(fresh, read_training_checkpoint(path), str(path), rank=0, world_size=1, device=CPU)
    assert notes == []
    for (name, a), b in zip(state.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), name
    saved, loaded = state.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for key, slots in saved["state"].items():
        for slot, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(loaded["state"][key][slot])), (key, slot)
    assert fresh.scaler.state_dict() == state.scaler.state_dict()
    assert fresh.progress == state.progress and fresh.data_position == state.data_position
    assert (random.random(), np.random.rand()) == expected_draws[:2]
    assert torch.equal(torch.rand(3), expected_draws[2])


def test_the_checkpoint_is_plain_data_loadable_by_evaluate_and_convert(tmp_path):
    state = trained_state()
    path = tmp_path / "phase1_ckpt_2.pt"
    save_training_checkpoint(path, state, gather_rank_states(state, CPU), run={})
    loaded = torch.load(path, weights_only=True)  # no pickled code anywhere
    assert loaded["global_step"] == 2 and "model" in loaded
    model = BertForPreTraining(tiny_config())
    load_weights(model, path)  # what `evaluate --init_checkpoint` and `convert` call
    for (name, a), b in zip(state.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_weights_only_file_is_not_a_training_state(tmp_path):
    path = tmp_path / "model.ckpt-28252.apex.pt"
    save_reference_checkpoint(BertForPreTraining(tiny_config()), path)
    with pytest.raises(InputError, match="--init_checkpoint"):
        read_training_checkpoint(path)
    with pytest.raises(InputError, match="no such checkpoint"):
        read_training_checkpoint(tmp_path / "missing.pt")


def test_a_different_process_count_restarts_the_slot_with_a_note(tmp_path):
    state = trained_state()
    path = tmp_path / "phase2_ckpt_2.pt"
    save_training_checkpoint(path, state, gather_rank_states(state, CPU), run={})
    fresh = make_state()
    notes = restore_training_state(fresh, read_training_checkpoint(path), str(path), rank=1, world_size=2, device=CPU)
    assert fresh.data_position == DataPosition(epoch=2, slot=3, row=0)
    assert "1 process(es)" in notes[0] and "not an exact continuation" in notes[0]


def test_fp32_checkpoint_resumed_under_fp16_notes_the_fresh_scale(tmp_path):
    state = make_state(precision="fp32")
    path = tmp_path / "phase2_ckpt_0.pt"
    save_training_checkpoint(path, state, gather_rank_states(state, CPU), run={})
    notes = restore_training_state(make_state(), read_training_checkpoint(path), str(path), 0, 1, CPU)
    assert "loss scaling" in notes[0]


def schedule(tmp_path, **overrides):
    values = dict(output_dir=tmp_path, phase2=True, num_samples_per_checkpoint=100,
                  min_samples_to_start_checkpoints=300, keep_n_most_recent_checkpoints=2)
    values.update(overrides)
    return CheckpointSchedule(**values)


def test_checkpoints_are_due_on_the_reference_sample_rule(tmp_path):
    s = schedule(tmp_path)
    assert not s.due(Progress(samples=250, samples_at_last_checkpoint=0))  # before min_samples_to_start
    assert s.due(Progress(samples=300, samples_at_last_checkpoint=0))
    assert not s.due(Progress(samples=390, samples_at_last_checkpoint=300))
    assert s.due(Progress(samples=400, samples_at_last_checkpoint=300))
    assert s.path_for(12).name == "phase2_ckpt_12.pt"
    assert schedule(tmp_path, phase2=False).path_for(12).name == "phase1_ckpt_12.pt"


def test_checkpoints_are_also_due_by_the_clock_when_asked(tmp_path):
    s = schedule(tmp_path, every_minutes=2.0)
    assert not s.due_by_time(Progress(samples=400), seconds_since_last=119.9)
    assert s.due_by_time(Progress(samples=400), seconds_since_last=120.0)
    assert not s.due_by_time(Progress(samples=250), seconds_since_last=1e6)  # before min_samples_to_start
    assert not schedule(tmp_path).due_by_time(Progress(samples=400), seconds_since_last=1e6)  # 0: samples only


def test_a_background_write_saves_the_state_as_it_was_when_started(tmp_path):
    """The steps after a save change the state in place while it is written: the file holds the copy."""
    state = trained_state()
    blocking, background = tmp_path / "phase1_ckpt_2.pt", tmp_path / "later" / "phase1_ckpt_2.pt"
    save_training_checkpoint(blocking, state, gather_rank_states(state, CPU), run={"seed": 42})
    writer, written = CheckpointWriter(), []
    writer.start(background, host_snapshot(state, gather_rank_states(state, CPU), {"seed": 42}),
                 then=lambda: written.append(background.exists()))
    with torch.no_grad():  # what the next steps do, possibly before the writer has read a byte
        for tensor in [*state.model.parameters(), *state.optimizer.state_dict()["state"][0].values()]:
            tensor.add_(1.0)
    writer.wait()
    assert written == [True]
    assert_same_training_state(blocking, background)
    loaded = torch.load(background, weights_only=True)["model"]  # the tied decoder is still one storage
    assert loaded["cls.predictions.decoder.weight"].data_ptr() == loaded[
        "bert.embeddings.word_embeddings.weight"].data_ptr()


def test_a_failed_background_write_is_raised_by_wait_and_leaves_nothing(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    path = tmp_path / "a_file" / "phase1_ckpt_2.pt"
    state = trained_state()
    writer = CheckpointWriter()
    writer.start(path, host_snapshot(state, gather_rank_states(state, CPU), {}))
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # said once
    assert not path.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_only_the_newest_checkpoints_are_kept_and_partial_writes_ignored(tmp_path):
    s = schedule(tmp_path)
    for step in (9, 10, 100, 11):
        s.path_for(step).write_bytes(b"x")
    (tmp_path / ".phase2_ckpt_200.pt.tmp-123").write_bytes(b"half")  # a write SIGKILL interrupted
    (tmp_path / "phase1_ckpt_500.pt").write_bytes(b"x")  # another phase's: not ours
    assert s.latest() == s.path_for(100)
    removed = s.remove_old()
    assert sorted(p.name for p in removed) == ["phase2_ckpt_10.pt", "phase2_ckpt_9.pt"]
    assert [p.name for p in s.existing()] == ["phase2_ckpt_11.pt", "phase2_ckpt_100.pt"]
    s.remove_partial_writes()
    assert not list(tmp_path.glob(".*tmp*")) and Path(tmp_path / "phase1_ckpt_500.pt").exists()


def _drop(key):
    return lambda c: c.pop(key)


def _set(value, *keys):
    def edit(checkpoint):
        inner = checkpoint
        for key in keys[:-1]:
            inner = inner[key]
        inner[keys[-1]] = value
    return edit


# A hand edit -> the field the error names.
HAND_EDITS = {
    "no optimizer": (_drop("optimizer"), "optimizer is missing"),
    "an extra progress field": (_set(1, "progress", "epochs"),
                                r"progress has fields this version does not know \(epochs\)"),
    "a progress field removed": (lambda c: c["progress"].pop("converged"), "progress lacks the fields converged"),
    "empty rank states": (_set([], "rank_states"), "rank_states is empty"),
    "a negative step": (_set(-3, "global_step"), "global_step is -3"),
    "a step that disagrees": (_set(7, "global_step"), "global_step 7 differs from progress.step 2"),
    "a step as text": (_set("2", "progress", "step"), "progress.step is '2'"),
    "a model as a list": (_set([], "model"), "model is a list, not a dict"),
    "optimizer groups gone": (_set([], "optimizer", "param_groups"), "optimizer.param_groups is missing or empty"),
    "a data position cut": (lambda c: c["rank_states"][0]["data_position"].pop("row"),
                            r"rank_states\[0\].data_position"),
    "a negative row": (_set(-1, "rank_states", 0, "data_position", "row"), r"rank_states\[0\].data_position.row is -1"),
    "a torch state of the wrong size": (_set(torch.zeros(3, dtype=torch.uint8), "rank_states", 0, "rng", "torch"),
                                        r"rank_states\[0\].rng.torch is not a torch random state"),
    "a python state as a number": (_set(5, "rank_states", 0, "rng", "python"),
                                   r"rank_states\[0\].rng.python is not a python random state"),
    "an eval accuracy as text": (_set("0.25", "progress", "eval_history", 0, "mlm_accuracy"),
                                 r"progress.eval_history\[0\].mlm_accuracy is '0.25', not a number"),
    "a loss scale as text": (_set("big", "scaler", "scale"), "scaler.scale is 'big', not a positive number"),
    "a loss scale of zero": (_set(0.0, "scaler", "scale"), "scaler.scale is 0.0, not a positive number"),
    # an accelerator's generator is saved under its device type (devices.rng_state)
    "an XPU state as a list": (_set([1, 2], "rank_states", 0, "rng", "xpu"),
                               r"rank_states\[0\].rng.xpu is not a generator state"),
}


def test_an_accelerators_generator_state_under_its_device_type_passes_the_check(written, tmp_path):
    checkpoint = torch.load(written, weights_only=True)
    checkpoint["rank_states"][0]["rng"]["xpu"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(checkpoint, tmp_path / written.name)
    read_training_checkpoint(tmp_path / written.name)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A checkpoint as train writes it (read again by each test, so each edits its own copy)."""
    state = trained_state()
    path = tmp_path_factory.mktemp("written") / "phase1_ckpt_2.pt"
    save_training_checkpoint(path, state, gather_rank_states(state, CPU), run={})
    return path


@pytest.mark.parametrize("edit", HAND_EDITS, ids=list(HAND_EDITS))
def test_a_hand_edited_checkpoint_is_refused_on_reading_naming_the_field(written, tmp_path, edit):
    read_training_checkpoint(written)  # intact, it passes
    checkpoint = torch.load(written, weights_only=True)
    path = tmp_path / written.name
    change, named = HAND_EDITS[edit]
    change(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises(InputError, match=f"^{path}: {named}.*resume from another checkpoint"):
        read_training_checkpoint(path)


def test_an_optimizer_state_of_another_model_is_refused_on_restoring(written):
    path = written
    checkpoint = read_training_checkpoint(path)
    checkpoint["optimizer"]["param_groups"][0]["params"].pop()  # one parameter fewer than the model has
    with pytest.raises(InputError, match=f"^{path}: its optimizer or loss-scaler state does not fit"):
        restore_training_state(make_state(), checkpoint, str(path), rank=0, world_size=1, device=CPU)
