"""The typed run configuration of `bert-pretrain train`: defaults < `--config run.toml` < flags.

Every option is a field of one of the small frozen dataclasses below; its name is the reference's
flag name (NVIDIA MLPerf v1.0 `run_pretraining.py`, DeepSparkHub), with the same meaning. The
argparse flags and the TOML keys are generated from the fields, so the three sources cannot drift.
`load_config` merges the sources, validates once (errors name the option and the fix) and returns
a `RunConfig` that nothing changes afterwards. The reference's apex/NGC switches, which mean
nothing on stock PyTorch, are accepted with a one-line note (`bert_pretrain.train.reference_flags`) so
the reference launch scripts run unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from bert_pretrain.errors import InputError
from bert_pretrain.options.fields import (
    ATTENTION_BACKENDS,
    COMPILE_MODES,
    DEFAULT_FP8_LAYERS,
    FP8_RECIPES,
    add_options,
    compile_choices,
    device_option,
    fp8_layer_names,
    option,
    read_toml,
    require_trainable_attention,
)
from bert_pretrain.options.reference_flags import REFERENCE_ONLY, add_reference_flags, reference_notes


@dataclass(frozen=True)
class DataOptions:
    """Training shards and the eval set."""

    input_dir: str | None = option(None, "folder of training shards: every file named *part*.hdf5 "
                                         "(e.g. $DATA/2048_shards_uncompressed)")
    eval_dir: str | None = option(None, "folder of eval shards (e.g. $DATA/eval_set_uncompressed); without it "
                                        "there is no eval and no stop on accuracy")
    max_seq_length: int = option(512, "tokens per sequence in the shards")
    max_predictions_per_seq: int = option(76, "masked-LM slots per sequence in the shards")
    num_eval_examples: int = option(10000, "evaluate on the first N eval samples (MLPerf: 10000)")
    cache_eval_data: bool = option(False, "keep the eval batches on the device between evals (else in host memory)")
    skip_bad_shards: bool = option(False, "skip (and count) a training shard that cannot be read instead of "
                                          "stopping with an error naming it")
    allow_eval_overlap: bool = option(False, "accept training shards that are also in --eval_dir (the same files, "
                                             "or copies of them); the eval then scores data the model trains on, so "
                                             "its accuracy measures nothing and MLPerf does not allow it (without "
                                             "it such a run is refused, naming the shared shards)")
    exchange_padding: bool = option(True, "with several processes and --packed: pool each optimizer step's rows "
                                          "of every process and deal them longest first, so every process trains "
                                          "about the same number of real tokens (the reference's "
                                          "--exchange_padding); --no-exchange_padding keeps each process's own "
                                          "rows")


@dataclass(frozen=True)
class BatchOptions:
    """Batch sizes. The global batch is train_batch_size x number of processes."""

    train_batch_size: int = option(18, "sequences per process per optimizer step; split into "
                                       "--gradient_accumulation_steps micro-batches, so it must divide by it")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step (gradients are "
                                                 "all-reduced once, after the last)")
    eval_batch_size: int = option(128, "eval sequences per batch, per process")

    @property
    def micro_batch_size(self) -> int:
        return self.train_batch_size // self.gradient_accumulation_steps


@dataclass(frozen=True)
class OptimizerOptions:
    """LAMB and its learning-rate schedule (linear warmup, then polynomial decay (power 1) to 0)."""

    learning_rate: float = option(4e-5, "peak learning rate")
    opt_lamb_beta_1: float = option(0.9, "LAMB beta1")
    opt_lamb_beta_2: float = option(0.999, "LAMB beta2")
    weight_decay_rate: float = option(0.01, "LAMB weight decay, applied to every weight except biases and "
                                            "LayerNorm")
    warmup_proportion: float = option(0.01, "warmup length as a fraction of --max_steps; used when "
                                            "--warmup_steps is 0")
    warmup_steps: int = option(0, "warmup length in steps (0: use --warmup_proportion)")
    start_warmup_step: int = option(0, "the step where warmup starts; may be negative (the MLPerf "
                                       "large-batch recipes)")
    max_steps: int = option(1536, "optimizer steps of the schedule; the run stops there at the latest")


@dataclass(frozen=True)
class RunOptions:
    """When to evaluate and when to stop."""

    max_samples_termination: int = option(14_000_000, "stop after this many training samples (status aborted)")
    target_mlm_accuracy: float = option(0.0, "stop with status success once eval masked-LM accuracy reaches "
                                             "this (MLPerf: 0.720); 0 never stops on accuracy")
    eval_iter_start_samples: int | None = option(None, "samples before the first eval (default: the MLPerf "
                                                       "interval for this global batch)")
    eval_iter_samples: int | None = option(None, "samples between evals (default: the MLPerf rule "
                                                 "floor(0.05*(230.23*GBS+3e6)/25000)*25000); 0 or less: no eval")
    seed: int = option(42, "master seed; per-process and per-epoch seeds derive from it as in the reference")
    log_freq: int = option(1, "read and log the training loss every N steps (0: no training log)")
    verify_checkpoint: bool = option(False, "evaluate the initial weights before training (printed, not MLPerf-logged)")


@dataclass(frozen=True)
class CheckpointOptions:
    """Model config, initial weights and training checkpoints."""

    bert_config_path: str | None = option(None, "the model's bert_config.json (e.g. $DATA/bert_config.json)")
    init_checkpoint: str | None = option(None, "initial weights: an NVIDIA {'model': state_dict} .pt "
                                               "(e.g. $DATA/model.ckpt-28252.apex.pt), a checkpoint of this "
                                               "project, .safetensors or an HF folder; without it the model "
                                               "starts from the reference initialisation")
    output_dir: str | None = option(None, "where checkpoints, mlperf.log, metrics and summary.json go")
    resume_from_checkpoint: str | None = option(None, "continue a run exactly: alone, from the newest checkpoint in "
                                                      "--output_dir; or from the given checkpoint file",
                                                nargs="?", const="latest")
    phase2: bool = option(False, "name checkpoints phase2_ckpt_<step>.pt (else phase1_ckpt_<step>.pt)")
    skip_checkpoint: bool = option(False, "write no periodic or final checkpoint (an interrupted run still "
                                          "writes one, so it can be resumed)")
    num_samples_per_checkpoint: int = option(500_000, "samples between checkpoints")
    checkpoint_every_minutes: float = option(0.0, "also a checkpoint once this many minutes have passed since the "
                                                   "last (checked at least every 50 steps); 0: by samples only")
    min_samples_to_start_checkpoints: int = option(3_000_000, "no periodic checkpoint before this many samples")
    keep_n_most_recent_checkpoints: int = option(20, "older checkpoints in --output_dir are deleted")


@dataclass(frozen=True)
class SystemOptions:
    """Device, precision and process group."""

    device: str = device_option()
    fp16: bool = option(False, "float16 autocast with dynamic loss scaling (initial scale: env INIT_LOSS_SCALE, "
                               "default 2**20); falls back to fp32 without a GPU")
    bf16: bool = option(False, "bfloat16 autocast (no loss scaling)")
    fp8: bool = option(False, "float8 matrix products in the encoder's linear layers (torchao.float8), bf16 for the "
                              "rest and for evals; needs torchao (pip install 'bert-pretrain[fp8]') and a GPU of "
                              "compute capability 8.9+ (H100, H200), or the CPU (emulated)")
    fp8_recipe: str = option("tensorwise", "torchao's float8 scaling recipe, with --fp8", choices=FP8_RECIPES)
    fp8_layers: str = option(DEFAULT_FP8_LAYERS, "with --fp8: the encoder layer's linear layers in float8, "
                                                 "comma-separated from qkv, attn_out, mlp1, mlp2, or all")
    dist_backend: str | None = option(None, "collective backend (default: torch.distributed's for the device: nccl "
                                            "on CUDA, gloo on CPUs, xccl on XPU, a vendor plug-in's such as hccl)")
    dist_timeout: int = option(600, "seconds a collective waits for a lost process before every process "
                                    "stops with an error")
    progress: bool | None = option(None, "show a progress bar (default: when stderr is a terminal; else a log "
                                         "line every --log_freq steps)")
    packed: bool = option(True, "train and evaluate on packed sequences: padding removed, variable-length "
                                "attention, masked-LM head on the real masked tokens only (--no-packed: the "
                                "padded MLPerf layout, as the reference without --unpad)")
    attention: str = option("auto", "attention kernel: auto picks the fastest that keeps attention dropout "
                                    "(flash variable-length on CUDA, SDPA elsewhere); math is the written-out "
                                    "reference", choices=ATTENTION_BACKENDS)
    fused_norm: bool = option(False, "run each encoder sublayer's dense bias + dropout + residual add + LayerNorm "
                                     "as one Triton kernel each way (needs Triton and a GPU; the same math, a "
                                     "dropout mask from another random stream; experimental: not yet timed on a GPU)")
    compile: bool | None = option(None, "torch.compile the model's hot regions (default: on CUDA, off on CPU); "
                                        "--no_compile or --no-compile turns it off", aliases=(("--no_compile", {"action": "store_false"}),))
    compile_optimizer: bool | None = option(None, "torch.compile LAMB's update as well, one unit per encoder "
                                                  "layer: the same update in fewer passes over memory "
                                                  "(default: with --compile); --no_compile_optimizer turns it off",
                                            aliases=(("--no_compile_optimizer", {"action": "store_false"}),))
    compile_mode: str = option("default", "torch.compile mode when compiling: reduce-overhead adds CUDA graphs, "
                                          "max-autotune(-no-cudagraphs) also tunes the GEMM kernels (minutes "
                                          "of compilation)",
                               choices=COMPILE_MODES)
    precision: str = field(default="fp32", metadata={"derived": True})  # from fp16/bf16/fp8 and the device


@dataclass(frozen=True)
class MLPerfOptions:
    """What `mlperf.log` says about the submission."""

    submission_org: str = option("bert-pretrain", "submission_org in mlperf.log")
    submission_platform: str | None = option(None, "submission_platform (default: <processes>x<device name>)")
    submission_division: str = option("closed", "submission_division", choices=("closed", "open"))
    submission_status: str = option("onprem", "submission_status",
                                    choices=("onprem", "cloud", "preview", "research"))
    cache_cleared: bool = option(False, "the OS page cache was dropped just before this run (the launcher's "
                                        "CLEAR_CACHES=1 does it and passes this): logged as cache_clear true")


@dataclass(frozen=True)
class RunConfig:
    data: DataOptions = field(default_factory=DataOptions)
    batch: BatchOptions = field(default_factory=BatchOptions)
    optimizer: OptimizerOptions = field(default_factory=OptimizerOptions)
    run: RunOptions = field(default_factory=RunOptions)
    checkpoint: CheckpointOptions = field(default_factory=CheckpointOptions)
    system: SystemOptions = field(default_factory=SystemOptions)
    mlperf: MLPerfOptions = field(default_factory=MLPerfOptions)
    notes: tuple[str, ...] = ()  # one line each, for the user (fallbacks, ignored reference flags)

    def flat(self) -> dict:
        """Every option by its flag name (for logs and checkpoints)."""
        return {f.name: getattr(getattr(self, g), f.name) for g, _ in GROUPS for f in dataclasses.fields(_CLASSES[g])}


GROUPS = [(f.name, f.default_factory) for f in dataclasses.fields(RunConfig) if f.name != "notes"]
_CLASSES = dict(GROUPS)
_FIELDS = {f.name: (cls, f) for _, cls in GROUPS for f in dataclasses.fields(cls) if not f.metadata.get("derived")}


TRAIN_DESCRIPTION = """\
Pretrain BERT (masked-LM + NSP) as MLPerf Training v1.0 does: LAMB, the poly-decay schedule, eval on
the MLPerf cadence, stop at --target_mlm_accuracy; one process per GPU under torchrun (DDP).

  bert-pretrain train --input_dir $DATA/2048_shards_uncompressed --eval_dir $DATA/eval_set_uncompressed \\
      --bert_config_path $DATA/bert_config.json --init_checkpoint $DATA/model.ckpt-28252.apex.pt \\
      --output_dir results --config configs/bert_large_mlperf.toml --fp16
  torchrun --nproc_per_node 8 -m bert_pretrain train ...     (8 GPUs; train_bert_pretraining_amp_dist.sh does this)

Options come from the defaults below, then a --config TOML file (keys = flag names), then the flags
given here (the last word wins). --train_batch_size is per process per optimizer step, split into
--gradient_accumulation_steps micro-batches; the global batch is train_batch_size x processes.
Writes to --output_dir: checkpoints (<phase>_ckpt_<step>.pt, loadable by `evaluate` and `convert`),
mlperf.log, metrics.jsonl, metrics.png, summary.json. Ctrl-C / SIGTERM writes a checkpoint and
stops cleanly; --resume_from_checkpoint continues exactly. See docs/training.md.
"""
TRAIN_USAGE = "%(prog)s [--config RUN.toml] [options]   (every option below; reference names and meanings)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `bert-pretrain train`, grouped as the dataclasses are. Defaults are SUPPRESSed so the
    parsed namespace holds only the flags actually given (they override the TOML file)."""
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="RUN.toml",
                        help="a TOML file of option = value lines (keys are the flag names, e.g. "
                             "train_batch_size = 56); flags given on the command line override it. "
                             "Shipped recipes: configs/*.toml")
    for group, cls in GROUPS:
        add_options(parser, cls, suppress_defaults=True, container=parser.add_argument_group(group, cls.__doc__))
    add_reference_flags(parser.add_argument_group(
        "reference-only flags", "accepted so the NVIDIA / DeepSparkHub scripts run unchanged; each prints a "
                                "one-line note saying why it changes nothing here"))


def load_config(args: argparse.Namespace, *, accelerator: str | None) -> RunConfig:
    """Merge defaults < the --config TOML < flags, validate, and return the frozen run config. `accelerator`: the
    device type --device auto takes here ('cuda', 'xpu', ...; None without one: devices.accelerator_type())."""
    given = vars(args)
    values, reference_given = {}, {}
    if "config" in given:
        for key, value in read_toml(given["config"], _FIELDS, also_known=REFERENCE_ONLY).items():
            if key in REFERENCE_ONLY:
                reference_given[key] = value
            else:
                values[key] = value
    for key, value in given.items():
        if key in _FIELDS:
            values[key] = value
        elif key in REFERENCE_ONLY:
            reference_given[key] = value
    notes = reference_notes(reference_given)
    values, more_notes = _resolve_system(values, accelerator)
    groups = {g: cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})
              for g, cls in GROUPS}
    config = RunConfig(**groups, notes=tuple(notes + more_notes))
    validate(config)
    return config


def device_type(device: str, accelerator: str | None) -> str:
    """The device type `--device` names ('cuda' for 'cuda:1'; 'auto': the accelerator's, else 'cpu')."""
    if device == "auto":
        return accelerator or "cpu"
    return device.split(":", 1)[0].strip()


def _resolve_system(values: dict, accelerator: str | None) -> tuple[dict, list[str]]:
    """The precision and backend that will actually run, with a note for each fallback."""
    values, notes = dict(values), []
    if values.get("fp16") and values.get("bf16"):
        raise InputError("--fp16 and --bf16 are both on (from the flags or the --config file); choose one, "
                         "turning the other off with --no-fp16 or --no-bf16")
    if values.get("fp16") and values.get("fp8"):  # fp8 runs the rest in bf16, so --bf16 may stay on with it
        raise InputError("--fp8 and --fp16 are both on (the flags, the --config file or the launcher); --fp8 runs "
                         "all but its float8 layers in bf16: add --no-fp16")
    kind = device_type(values.get("device", "auto"), accelerator)
    on_accelerator = kind != "cpu"
    precision = ("fp8" if values.get("fp8") else "fp16" if values.get("fp16") else "bf16" if values.get("bf16")
                 else "fp32")
    if precision == "fp16" and not on_accelerator:
        notes.append("note: --fp16 needs a GPU and none is in use; training in fp32 "
                     "(--bf16 runs on CPUs)")
        precision = "fp32"
    if values.get("dist_backend") == "nccl" and kind == "cpu":
        notes.append("note: --dist_backend nccl needs GPUs; using gloo on the CPU")
        values["dist_backend"] = "gloo"
    elif values.get("dist_backend") == "nccl" and kind != "cuda":  # the recipe's flag, on another accelerator
        notes.append(f"note: --dist_backend nccl is CUDA's; using {kind}'s default collective backend")
        values["dist_backend"] = None
    values["precision"] = precision
    require_trainable_attention(values.get("attention", "auto"), on_accelerator)
    # compilation by default where it was measured to pay (CUDA; docs/performance.md), elsewhere on request
    values["compile"], values["compile_optimizer"] = compile_choices(values.get("compile"),
                                                                     values.get("compile_optimizer"), kind == "cuda")
    return values, notes


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def validate(config: RunConfig) -> None:
    """Every check that needs no file to be opened beyond existence; messages name the option and the fix."""
    data, batch, opt, run, ckpt = config.data, config.batch, config.optimizer, config.run, config.checkpoint
    for name, value in (("input_dir", data.input_dir), ("output_dir", ckpt.output_dir),
                        ("bert_config_path", ckpt.bert_config_path)):
        _require(value is not None, f"--{name} is required (see `bert-pretrain train --help`)")
    _require(Path(data.input_dir).is_dir(), f"--input_dir {data.input_dir}: no such folder of training shards")
    _require(Path(ckpt.bert_config_path).is_file(),
             f"--bert_config_path {ckpt.bert_config_path}: no such file; pass the model's bert_config.json")
    if ckpt.init_checkpoint is not None:
        _require(Path(ckpt.init_checkpoint).exists(),
                 f"--init_checkpoint {ckpt.init_checkpoint}: no such file or folder")
    if data.eval_dir is not None:
        _require(Path(data.eval_dir).is_dir(), f"--eval_dir {data.eval_dir}: no such folder of eval shards")
    _require(run.target_mlm_accuracy == 0 or data.eval_dir is not None,
             "--target_mlm_accuracy needs --eval_dir (the accuracy is measured on the eval set)")
    _require(run.target_mlm_accuracy == 0 or run.eval_iter_samples is None or run.eval_iter_samples > 0,
             f"--target_mlm_accuracy needs evals, and --eval_iter_samples {run.eval_iter_samples} turns them off; "
             "leave it out for the MLPerf cadence, or pass --target_mlm_accuracy 0")
    fp8_layer_names(config.system.fp8_layers, config.system.fused_norm)  # checked with --fp8 off too: typos show
    _require(config.system.precision != "fp8" or config.system.packed or data.max_seq_length % 16 == 0,
             f"--fp8 with --no-packed needs --max_seq_length in a multiple of 16 (float8 matrix products take token "
             f"counts in multiples of 16), got {data.max_seq_length}; use the packed default")
    positive = {
        "train_batch_size": batch.train_batch_size, "gradient_accumulation_steps": batch.gradient_accumulation_steps,
        "eval_batch_size": batch.eval_batch_size, "max_seq_length": data.max_seq_length,
        "max_predictions_per_seq": data.max_predictions_per_seq, "num_eval_examples": data.num_eval_examples,
        "max_steps": opt.max_steps, "max_samples_termination": run.max_samples_termination,
        "num_samples_per_checkpoint": ckpt.num_samples_per_checkpoint,
        "keep_n_most_recent_checkpoints": ckpt.keep_n_most_recent_checkpoints, "dist_timeout": config.system.dist_timeout,
    }
    for name, value in positive.items():
        _require(value >= 1, f"--{name} must be at least 1, got {value}")
    _require(batch.train_batch_size % batch.gradient_accumulation_steps == 0,
             f"--train_batch_size {batch.train_batch_size} is not divisible by --gradient_accumulation_steps "
             f"{batch.gradient_accumulation_steps} (the micro-batch is their quotient); pass a multiple, e.g. "
             f"--train_batch_size {batch.train_batch_size // batch.gradient_accumulation_steps * batch.gradient_accumulation_steps or batch.gradient_accumulation_steps}")
    _require(opt.learning_rate > 0, f"--learning_rate must be positive, got {opt.learning_rate}")
    for name in ("opt_lamb_beta_1", "opt_lamb_beta_2"):
        value = getattr(opt, name)
        _require(0 <= value < 1, f"--{name} must be in [0, 1), got {value}")
    _require(opt.weight_decay_rate >= 0, f"--weight_decay_rate must be >= 0, got {opt.weight_decay_rate}")
    _require(0 <= opt.warmup_proportion <= 1, f"--warmup_proportion must be in [0, 1], got {opt.warmup_proportion}")
    _require(opt.warmup_steps >= 0, f"--warmup_steps must be >= 0, got {opt.warmup_steps}")
    _require(0 <= run.target_mlm_accuracy <= 1,
             f"--target_mlm_accuracy is a fraction in [0, 1] (MLPerf: 0.720), got {run.target_mlm_accuracy}")
    _require(run.log_freq >= 0, f"--log_freq must be >= 0 (0 turns the training log off), got {run.log_freq}")
    _require(ckpt.checkpoint_every_minutes >= 0,
             f"--checkpoint_every_minutes must be >= 0 (0: by samples only), got {ckpt.checkpoint_every_minutes}")
    _require(ckpt.min_samples_to_start_checkpoints >= 0,
             f"--min_samples_to_start_checkpoints must be >= 0, got {ckpt.min_samples_to_start_checkpoints}")
    if run.eval_iter_start_samples is not None:
        _require(run.eval_iter_start_samples >= 0,
                 f"--eval_iter_start_samples must be >= 0, got {run.eval_iter_start_samples}")


def is_main_process() -> bool:
    """Rank 0 under torchrun (or a single process): the one that prints notes."""
    return os.environ.get("RANK", "0") == "0"
