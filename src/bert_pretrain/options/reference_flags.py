"""Flags of the NVIDIA MLPerf / DeepSparkHub `run_pretraining.py` that mean nothing on stock PyTorch.

They are accepted (with their values) so the reference launch lines run unchanged, and each group
of them prints one note saying why it changes nothing here. A few that keep their meaning
implicitly (`--do_train`, `--use_env`, `--bert_model`) are accepted silently.
"""

from __future__ import annotations

import argparse

from bert_pretrain.errors import InputError

# Why a group of reference flags has no effect here.
REASONS = {
    "attention": "apex fused attention; attention here is --attention "
                 "(auto: variable-length flash on CUDA, SDPA elsewhere)",
    "fusion": "apex / TorchScript / mhalib kernel fusions; not used on stock PyTorch",
    "dense": "the masked-LM head here always runs on the masked tokens only",
    "unpad": "padding is removed by default here (--packed), with PyTorch's variable-length attention",
    "lamb": "apex DistributedFusedLAMB; LAMB here is bert_pretrain.optim.Lamb with the same update, under DDP",
    "graph": "CUDA graphs of the reference; not used here",
    "allreduce": "gradients here are all-reduced once per step, after the accumulation micro-batches",
    "amp": "apex AMP settings; precision here is --fp16 / --bf16 / fp32 through torch.autocast",
    "ddp": "several processes always train under PyTorch DDP here",
    "activations": "activation checkpointing is not offered (the reference asserts it off)",
    "window": "stopping on a window of training accuracy is not offered; the run stops on eval accuracy",
    "seeds": "per-epoch shuffling seeds are derived here for as many epochs as the run needs",
    "loss_scale": "a static loss scale is not offered; --fp16 scales dynamically from env INIT_LOSS_SCALE",
    "local_rank": "the process's GPU comes from the LOCAL_RANK environment that torchrun sets",
    None: "",  # accepted silently: keeps its meaning here
}

# dest -> (flag as the reference spells it, takes a value, reason key, value that needs no note)
REFERENCE_ONLY = {
    "fused_mha": ("--fused_mha", False, "attention", False),
    "fused_gelu_bias": ("--fused_gelu_bias", False, "fusion", False),
    "fused_dropout_add": ("--fused_dropout_add", False, "fusion", False),
    "enable_fuse_dropout": ("--enable_fuse_dropout", False, "fusion", False),
    "disable_fuse_mask": ("--disable_fuse_mask", False, "fusion", False),
    "disable_fuse_scale": ("--disable_fuse_scale", False, "fusion", False),
    "disable_fuse_qkv": ("--disable_fuse_qkv", False, "fusion", False),
    "disable_apex_softmax": ("--disable_apex_softmax", False, "fusion", False),
    "enable_stream": ("--enable_stream", False, "fusion", False),
    "dense_seq_output": ("--dense_seq_output", False, "dense", False),
    "unpad": ("--unpad", False, "unpad", False),
    "unpad_fmha": ("--unpad_fmha", False, "unpad", False),
    "pad": ("--pad", False, "unpad", False),
    "distributed_lamb": ("--distributed_lamb", False, "lamb", False),
    "dwu_group_size": ("--dwu-group-size", True, "lamb", None),
    "dwu_num_blocks": ("--dwu-num-blocks", True, "lamb", None),
    "dwu_num_chunks": ("--dwu-num-chunks", True, "lamb", None),
    "dwu_num_rs_pg": ("--dwu-num-rs-pg", True, "lamb", None),
    "dwu_num_ar_pg": ("--dwu-num-ar-pg", True, "lamb", None),
    "dwu_num_ag_pg": ("--dwu-num-ag-pg", True, "lamb", None),
    "dwu_overlap_reductions": ("--dwu-overlap-reductions", False, "lamb", False),
    "dwu_e5m2_allgather": ("--dwu-e5m2-allgather", False, "lamb", False),
    "use_cuda_graph": ("--use_cuda_graph", False, "graph", False),
    "cuda_graph_mode": ("--cuda_graph_mode", True, "graph", None),
    "max_iterations_per_graph": ("--max_iterations_per_graph", True, "graph", None),
    "allreduce_post_accumulation": ("--allreduce_post_accumulation", False, "allreduce", False),
    "allreduce_post_accumulation_fp16": ("--allreduce_post_accumulation_fp16", False, "allreduce", False),
    "bypass_amp": ("--bypass_amp", False, "amp", False),
    "opt_level": ("--opt_level", True, "amp", None),
    "use_ddp": ("--use_ddp", False, "ddp", False),
    "ddp_type": ("--ddp_type", True, "ddp", None),
    "use_gradient_as_bucket_view": ("--use_gradient_as_bucket_view", False, "ddp", False),
    "checkpoint_activations": ("--checkpoint_activations", False, "activations", False),
    "train_mlm_accuracy_window_size": ("--train_mlm_accuracy_window_size", True, "window", "0"),
    "num_epochs_to_generate_seeds_for": ("--num_epochs_to_generate_seeds_for", True, "seeds", None),
    "loss_scale": ("--loss_scale", True, "loss_scale", "0"),
    "local_rank": ("--local_rank", True, "local_rank", "-1"),
    "do_train": ("--do_train", False, None, False),
    "use_env": ("--use_env", False, None, False),
    "bert_model": ("--bert_model", True, None, None),
    "init_tf_checkpoint": ("--init_tf_checkpoint", True, None, None),
}


def add_reference_flags(group) -> None:
    for dest, (flag, takes_value, reason, _) in REFERENCE_ONLY.items():
        text = REASONS[reason] or "accepted for the reference scripts"
        if dest == "init_tf_checkpoint":
            text = "not read by train: convert the TF checkpoint with `bert-pretrain convert` first"
        if takes_value:
            group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, metavar="X", help=text)
        elif dest == "fused_mha":  # the reference also has --no-fused_mha
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=text)
        else:
            group.add_argument(flag, dest=dest, action="store_true", default=argparse.SUPPRESS, help=text)


def _as_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def reference_notes(given: dict) -> list[str]:
    """One note per reason for the reference-only flags in `given` (dest -> value)."""
    if "init_tf_checkpoint" in given:
        raise InputError(f"--init_tf_checkpoint {given['init_tf_checkpoint']}: train reads no TF checkpoint; convert "
                         "it first (bert-pretrain convert --input PREFIX --bert_config_path bert_config.json "
                         "--output model.ckpt-28252.apex.pt) and pass the .pt as --init_checkpoint")
    by_reason: dict[str, list[str]] = {}
    for dest, value in given.items():
        flag, takes_value, reason, quiet_value = REFERENCE_ONLY[dest]
        if reason is None or value is False or (quiet_value is not None and _as_text(value) == quiet_value):
            continue
        by_reason.setdefault(reason, []).append(f"{flag}={_as_text(value)}" if takes_value else flag)
    return [f"note: {' '.join(flags)}: {REASONS[reason]}; ignored" for reason, flags in by_reason.items()]
