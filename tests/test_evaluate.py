"""`bert-pretrain evaluate` against HF transformers on an MLPerf-layout shard, and its error messages."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
import transformers
from conftest import cli_here, mlperf_arrays, run_cli, write_crafted_shard, write_vocab_file

from bert_pretrain.data.shards import write_padded

VOCAB = 30522  # the real BERT vocab size, padded to 30528 in the NVIDIA file
SEQ, PRED = 64, 10


@pytest.fixture(scope="module")
def hf_setup(tmp_path_factory):
    """A random HF BertForPreTraining (tanh GELU) saved as NVIDIA {'model': sd}, plus a shard and a config."""
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=SEQ, hidden_act="gelu_pytorch_tanh", attn_implementation="eager",
    )
    hf = transformers.BertForPreTraining(hf_config).eval()
    padded = {}
    for name, tensor in hf.state_dict().items():
        if tensor.shape[:1] == (VOCAB,):
            tensor = torch.cat([tensor, tensor.new_zeros((6, *tensor.shape[1:]))])
        padded[name] = tensor
    torch.save({"model": padded}, root / "model.ckpt-28252.apex.pt")
    config = {k: getattr(hf_config, k) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "type_vocab_size", "initializer_range", "hidden_dropout_prob",
        "attention_probs_dropout_prob")}
    config["hidden_act"] = "gelu"  # the reference's meaning: tanh approximation
    (root / "bert_config.json").write_text(json.dumps(config))
    write_vocab_file(root / "vocab.txt", VOCAB)  # the export to HF carries it
    arrays = mlperf_arrays(np.random.default_rng(0), n=50, seq_len=SEQ, max_pred=PRED, vocab_size=VOCAB)
    (root / "eval").mkdir()
    write_padded(root / "eval" / "part_eval_10k.hdf5", arrays)
    return root, hf, arrays


def hf_reference(hf, arrays):
    """Masked-LM loss and accuracy as HF transformers computes them for the same rows."""
    labels = np.full(arrays["input_ids"].shape, -100, dtype=np.int64)
    for i, (pos, ids) in enumerate(zip(arrays["masked_lm_positions"], arrays["masked_lm_ids"])):
        n = np.count_nonzero(pos)
        labels[i, pos[:n]] = ids[:n]
    labels = torch.from_numpy(labels)
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(arrays["input_ids"]).long(),
                 token_type_ids=torch.from_numpy(arrays["segment_ids"]).long(),
                 attention_mask=torch.from_numpy(arrays["input_mask"]).long())
    logits = out.prediction_logits.reshape(-1, VOCAB)
    flat = labels.reshape(-1)
    loss = torch.nn.functional.cross_entropy(logits, flat, ignore_index=-100).item()
    valid = flat != -100
    correct = (logits.argmax(-1)[valid] == flat[valid]).sum().item()
    return loss, correct, int(valid.sum())


def _evaluate_args(root, *extra):
    return ("evaluate", "--init_checkpoint", str(root / "model.ckpt-28252.apex.pt"),
            "--bert_config_path", str(root / "bert_config.json"), "--eval_dir", str(root / "eval"),
            "--max_seq_length", str(SEQ), "--max_predictions_per_seq", str(PRED), "--device", "cpu", *extra)


@pytest.mark.slow
def test_evaluate_matches_hf_transformers(hf_setup):
    root, hf, arrays = hf_setup
    proc = run_cli(*_evaluate_args(root, "--eval_batch_size", "16"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    loss, correct, count = hf_reference(hf, arrays)
    assert result["masked_tokens"] == count and result["samples"] == 50
    assert abs(result["mlm_loss"] - loss) <= 1e-4 * loss
    assert abs(result["mlm_accuracy"] * count - correct) <= 1
    assert 0.0 <= result["nsp_accuracy"] <= 1.0


@pytest.mark.slow
def test_evaluate_under_torchrun_reduces_over_ranks(hf_setup):
    root, _, _ = hf_setup
    single = json.loads(run_cli(*_evaluate_args(root, "--num_eval_examples", "45")).stdout.splitlines()[-1])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "bert_pretrain"]
    import subprocess
    proc = subprocess.run([*torchrun, *_evaluate_args(root, "--num_eval_examples", "45", "--eval_batch_size", "8")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 prints
    both = json.loads(lines[0])
    assert both["samples"] == 45 and both["masked_tokens"] == single["masked_tokens"]
    assert both["mlm_loss"] == pytest.approx(single["mlm_loss"], rel=1e-6)
    assert both["mlm_accuracy"] == pytest.approx(single["mlm_accuracy"], abs=1e-9)


def _assert_clean_failure(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize("damage, fragment", [
    ("missing_key", "missing keys ['masked_lm_ids']"),
    ("wrong_shape", "expected (50, max_seq_length)"),
    ("id_outside_vocab", "outside the vocab of 30522"),
])
def test_bad_shard_is_a_short_error(hf_setup, tmp_path, damage, fragment):
    root, _, arrays = hf_setup
    import h5py

    bad = dict(arrays)
    if damage == "missing_key":
        bad.pop("masked_lm_ids")
    elif damage == "wrong_shape":
        bad["segment_ids"] = bad["segment_ids"][:, :10]
    else:
        bad["input_ids"] = bad["input_ids"].copy()
        bad["input_ids"][3, 2] = 40000
    (tmp_path / "eval").mkdir()
    shard = tmp_path / "eval" / "part_eval_10k.hdf5"
    with h5py.File(shard, "w") as f:
        for key, value in bad.items():
            f.create_dataset(key, data=value)
    for name in ("model.ckpt-28252.apex.pt", "bert_config.json"):
        shutil.copy(root / name, tmp_path / name)
    _assert_clean_failure(cli_here(*_evaluate_args(tmp_path)), str(shard), fragment)


def test_a_shard_reading_another_file_is_refused(hf_setup, tmp_path):
    root, _, arrays = hf_setup
    (tmp_path / "eval").mkdir()
    shard = tmp_path / "eval" / "part_eval_10k.hdf5"
    write_crafted_shard(shard, arrays, "external_storage")
    for name in ("model.ckpt-28252.apex.pt", "bert_config.json"):
        shutil.copy(root / name, tmp_path / name)
    _assert_clean_failure(cli_here(*_evaluate_args(tmp_path)), f"{shard}: 'input_ids' keeps its data outside the shard")


@pytest.mark.parametrize("damage, fragment", [
    ("missing", "missing: bert.pooler.dense.weight"),
    ("extra", "unexpected: bert.encoder.layer.7.output.dense.bias"),
    ("misshaped", "mis-shaped: cls.seq_relationship.bias (3,) (expected (2,))"),
])
def test_bad_checkpoint_is_a_short_error(hf_setup, tmp_path, damage, fragment):
    root, _, _ = hf_setup
    state = torch.load(root / "model.ckpt-28252.apex.pt", weights_only=True)["model"]
    if damage == "missing":
        del state["bert.pooler.dense.weight"]
    elif damage == "extra":
        state["bert.encoder.layer.7.output.dense.bias"] = torch.zeros(32)
    else:
        state["cls.seq_relationship.bias"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "model.ckpt-28252.apex.pt")
    shutil.copy(root / "bert_config.json", tmp_path / "bert_config.json")
    shutil.copytree(root / "eval", tmp_path / "eval")
    _assert_clean_failure(cli_here(*_evaluate_args(tmp_path)), str(tmp_path / "model.ckpt-28252.apex.pt"), fragment)


@pytest.mark.slow
def test_config_that_is_not_json_is_a_short_error(hf_setup, tmp_path):
    root, _, _ = hf_setup
    shutil.copy(root / "model.ckpt-28252.apex.pt", tmp_path / "model.ckpt-28252.apex.pt")
    shutil.copytree(root / "eval", tmp_path / "eval")
    (tmp_path / "bert_config.json").write_text("hidden_size = 1024\n")
    proc = cli_here(*_evaluate_args(tmp_path))
    _assert_clean_failure(proc, str(tmp_path / "bert_config.json"), "not a JSON file")
    debug = run_cli("--debug", *_evaluate_args(tmp_path))
    assert "Traceback" in debug.stderr


@pytest.mark.parametrize("precision, dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_training_evaluates_in_its_own_precision(precision, dtype):
    """The fast attention kernels need half precision: an eval in fp32 after bf16/fp16 training would
    fall back to a slow path (auto) or fail (an explicit flash backend)."""
    from conftest import tiny_config

    from bert_pretrain.data.packing import pack_padded_rows
    from bert_pretrain.evaluate import evaluate
    from bert_pretrain.model import BertForPreTraining

    keys = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels")
    arrays = mlperf_arrays(np.random.default_rng(0), n=6, seq_len=32, max_pred=5, vocab_size=100)
    model = BertForPreTraining(tiny_config())
    seen = []
    model.bert.encoder.register_forward_hook(lambda module, args, out: seen.append(
        torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    result = evaluate(model, [pack_padded_rows({k: arrays[k] for k in keys})], torch.device("cpu"),
                      precision=precision)
    assert seen == [dtype] and result.samples == 6


def test_num_eval_examples_below_one_is_a_short_error(hf_setup):
    root, _, _ = hf_setup
    _assert_clean_failure(cli_here(*_evaluate_args(root, "--num_eval_examples", "0")), "--num_eval_examples",
                          "must be at least 1, got 0")


@pytest.mark.slow
def test_convert_to_hf_and_back_keeps_the_model(hf_setup, tmp_path):
    """NVIDIA .pt -> HF folder that transformers loads with the same logits -> .pt with the same weights."""
    root, hf, arrays = hf_setup
    checkpoint, config = str(root / "model.ckpt-28252.apex.pt"), str(root / "bert_config.json")
    to_hf = run_cli("convert", "--input", checkpoint, "--bert_config_path", config, "--output", str(tmp_path / "hf"))
    assert to_hf.returncode == 0, to_hf.stderr
    loaded = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    ids = torch.from_numpy(arrays["input_ids"][:4]).long()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).prediction_logits, hf(input_ids=ids).prediction_logits, atol=1e-5)
    back = run_cli("convert", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "back.pt"))
    assert back.returncode == 0, back.stderr
    original = torch.load(checkpoint, weights_only=True)["model"]
    again = torch.load(tmp_path / "back.pt", weights_only=True)["model"]
    # every tensor of the 2-layer model (5 embedding, 16 per layer, 2 pooler, 8 head); HF's copies of tied
    # weights (cls.predictions.decoder.bias) are not written again
    assert len(again) == 47 and all(torch.equal(original[k], again[k]) for k in again)


@pytest.mark.parametrize("output, fragment", [
    ("a_file", "is a file; an HF export is a folder"),
    ("busy", "a folder with other files in it"),
    ("model.safetensors", "not a bare weights file"),
    ("nowhere/model.pt", "the folder"),
])
def test_convert_refuses_outputs_it_would_misuse(hf_setup, tmp_path, output, fragment):
    root, _, _ = hf_setup
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    proc = cli_here("convert", "--input", str(root / "model.ckpt-28252.apex.pt"), "--bert_config_path",
                    str(root / "bert_config.json"), "--output", str(tmp_path / output))
    _assert_clean_failure(proc, str(tmp_path / output), fragment)
    assert (tmp_path / "a_file").read_text() == "mine" and (tmp_path / "busy" / "notes.txt").read_text() == "mine"
