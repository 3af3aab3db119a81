"""`bert-pretrain inspect CHECKPOINT`: what a checkpoint holds, without building a model.

For any weights file this project reads (NVIDIA's `{'model': state_dict}` .pt, a training checkpoint,
.safetensors, an HF folder, a TensorFlow checkpoint, of which only the index is read): the model's shape
as the tensors give it (layers, hidden and intermediate sizes, vocab rows, positions, segment types), the
parameter count and dtypes. For a training checkpoint also where the run stood: step, samples, skipped
steps, evals, best accuracy, the loss scale, the number of processes, and the options it was started with.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from bert_pretrain import strict_json
from bert_pretrain.tf_checkpoint import TensorBundle, weight_plan
from bert_pretrain.tf_table import tf_index_path
from bert_pretrain.train.checkpoint import WeightsOnly, read_training_checkpoint
from bert_pretrain.weights import COPY_KEYS, check_tensors, read_hf_directory, read_weights_file

_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.")
# The options of a training run worth a line of their own (all of them are in --json).
_RUN_KEYS = ("train_batch_size", "gradient_accumulation_steps", "learning_rate", "max_steps", "precision",
             "max_seq_length", "max_predictions_per_seq", "seed", "input_dir")


def checkpoint_summary(path: str | Path) -> dict:
    """What the file or folder at `path` holds, as plain data."""
    path = Path(path)
    training = None
    index = tf_index_path(path)
    if index is not None:
        kind, state = _tf_weight_shapes(index)
    elif path.is_dir():
        kind, state = "HF transformers folder", read_hf_directory(path)[1]
    elif path.suffix == ".safetensors":
        kind, state = "safetensors weights", read_weights_file(path)
    elif path.is_file():
        try:  # a training state is checked as strictly as a resume checks it: a damaged one is named, not shown
            training = read_training_checkpoint(path)
            kind, state = "training checkpoint (resumable)", training["model"]
        except WeightsOnly:
            kind, state = "weights ({'model': state_dict})", read_weights_file(path)
        if training is not None:
            check_tensors(state, str(path))  # as resume does: a stride-0 tensor counts elements it never stored
    else:
        kind, state = "weights", read_weights_file(path)  # which names what is missing
    summary = {"path": str(path), "kind": kind, **_model_shape(state)}
    if training is not None:
        summary["training"] = _training_state(training)
    return summary


def _tf_weight_shapes(index: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """A TensorFlow checkpoint's kind line and its weights as shape-only tensors (read from the index alone)."""
    bundle = TensorBundle(index)
    plan, _, skipped = weight_plan(bundle)
    state = {name: torch.empty(entry.shape[::-1] if transposed else entry.shape, dtype=entry.dtype, device="meta")
             for name, (entry, transposed) in plan.items() if entry.dtype is not None}
    kind = (f"TensorFlow checkpoint ({len(bundle.entries)} variables in {bundle.num_shards} data file(s): "
            f"{len(plan)} weights, {skipped} optimizer variables)")
    return kind, state


def _model_shape(state: dict[str, torch.Tensor]) -> dict:
    def rows(name: str, dim: int = 0):
        tensor = state.get(name)
        return int(tensor.shape[dim]) if tensor is not None and tensor.dim() > dim else None

    layers = {int(m.group(1)) for m in map(_LAYER.match, state) if m}
    intermediate = next((int(v.shape[0]) for k, v in state.items()
                         if k.endswith("intermediate.dense.weight") and v.dim() == 2), None)
    return {
        "layers": len(layers), "hidden_size": rows("bert.embeddings.word_embeddings.weight", 1),
        "intermediate_size": intermediate, "vocab_rows": rows("bert.embeddings.word_embeddings.weight"),
        "max_position_embeddings": rows("bert.embeddings.position_embeddings.weight"),
        "type_vocab_size": rows("bert.embeddings.token_type_embeddings.weight"),
        "parameters": sum(int(v.numel()) for k, v in state.items() if k not in COPY_KEYS), "tensors": len(state),
        "dtypes": sorted({str(v.dtype).removeprefix("torch.") for v in state.values()}),
    }


def _training_state(checkpoint: dict) -> dict:
    progress = checkpoint.get("progress", {})
    scale = checkpoint.get("scaler", {}).get("scale")
    return {
        "step": checkpoint.get("global_step"), "samples": progress.get("samples"),
        "skipped_steps": progress.get("skipped_steps"), "best_mlm_accuracy": progress.get("best_mlm_accuracy"),
        "converged": progress.get("converged"), "evals": progress.get("eval_history", []),
        "loss_scale": float(scale) if scale is not None else None,
        "processes": len(checkpoint.get("rank_states", [])),
        "optimizer_tensors": len(checkpoint.get("optimizer", {}).get("state", {})),
        "run": checkpoint.get("run", {}),
    }


def inspect_checkpoint(path: str | Path, as_json: bool = False) -> str:
    """The report `bert-pretrain inspect` prints for a checkpoint."""
    s = checkpoint_summary(path)
    if as_json:
        return strict_json.dumps(s, default=str)
    lines = [f"{s['path']}: {s['kind']}",
             f"  model: {s['layers']} layers, hidden {s['hidden_size']}, intermediate {s['intermediate_size']}, "
             f"vocab rows {s['vocab_rows']}, {s['max_position_embeddings']} positions, {s['type_vocab_size']} "
             f"segment types; {s['parameters']:,} parameters in {s['tensors']} tensors ({', '.join(s['dtypes'])})"]
    training = s.get("training")
    if training:
        run = training["run"]
        lines += [
            f"  run: step {training['step']}, {training['samples']:,} samples, {training['skipped_steps']} skipped "
            f"steps, {training['processes']} process(es), best masked-LM accuracy {training['best_mlm_accuracy']:.4f}"
            + (" (target reached)" if training["converged"] else "")
            + (f", loss scale {training['loss_scale']:g}" if training["loss_scale"] is not None else ""),
            "  options: " + ", ".join(f"{key} {run[key]}" for key in _RUN_KEYS if key in run),
        ]
        lines += [f"  eval at step {e.get('step')}: masked-LM accuracy {e.get('mlm_accuracy', float('nan')):.4f}"
                  for e in training["evals"][-5:]]
    return "\n".join(lines)
