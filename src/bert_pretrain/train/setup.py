"""Everything `train` builds before its loop: model, LAMB, loss scaler, data stream, eval batches,
observers, and the state restored from a checkpoint when resuming. Kept apart from the loop so
`loop.py` reads as the loop.

Order matters for exactness: the model is initialised from `--seed` (the same weights on every
process), then each process seeds python / numpy / torch with its reference worker seed (dropout
differs per process, as in the reference), then a resumed run overwrites all of it from the
checkpoint.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bert_pretrain import devices, fp8
from bert_pretrain.batch import Batch
from bert_pretrain.build import Optimization, StepSettings, build
from bert_pretrain.data.exchange import ExchangedStream
from bert_pretrain.data.loader import DataPosition, ShardStream, padded_rows_batch, worker_seed
from bert_pretrain.data.packing import PackingOptions, pack_padded_rows
from bert_pretrain.data.shard_set import check_training_shards, refuse_training_on_the_eval_set
from bert_pretrain.data.shards import ShardShape
from bert_pretrain.distributed import DistInfo, broadcast_object
from bert_pretrain.errors import InputError, SettingsMismatch, own_to_this_process
from bert_pretrain.evaluate import rank_eval_batches
from bert_pretrain.optim import LAMB_EPSILON, LrSchedule
from bert_pretrain.options.train import RunConfig
from bert_pretrain.train.checkpoint import (
    CheckpointSchedule,
    CheckpointWriter,
    Progress,
    TrainingState,
    read_training_checkpoint,
    restore_training_state,
)
from bert_pretrain.train.divergence import DivergenceGuard
from bert_pretrain.train.mlperf import eval_interval_samples, eval_steps
from bert_pretrain.train.observers import RunObservers, StepTracker
from bert_pretrain.train.output_folder import refuse_an_earlier_runs_folder
from bert_pretrain.train.recovery import Restart, began_by_this_job, mark_as_this_jobs, this_restart
from bert_pretrain.weights import read_bert_config, require_positions

# Options that must match between a checkpoint and the run resuming it for the continuation to be exact
# (the fp8 ones when it trains in fp8).
EXACT_RESUME_OPTIONS = ("train_batch_size", "gradient_accumulation_steps", "seed", "precision", "max_steps",
                        "learning_rate", "warmup_steps", "warmup_proportion", "start_warmup_step", "input_dir")
EXACT_RESUME_FP8_OPTIONS = ("fp8_recipe", "fp8_layers")


class PeerLost(RuntimeError):
    """Another process of the run died or stopped answering."""


@dataclass
class Run:
    """Everything the loop touches; built once by `setup`."""

    config: RunConfig
    info: DistInfo
    state: TrainingState
    model: torch.nn.Module  # the DDP wrapper when there are several processes, else state.model
    stream: ShardStream
    eval_batches: list[Batch]
    eval_at: list[int]  # optimizer steps after which to evaluate, ascending
    schedule: CheckpointSchedule
    observers: RunObservers
    tracker: StepTracker
    divergence: DivergenceGuard  # checkpoints only from sane states
    global_batch_size: int
    lr_schedule: LrSchedule
    signals: list[int]  # signals received, appended by the handler
    resumed_from: Path | None = None
    saved_step: int = -1
    paused_seconds: float = 0.0  # evals and checkpoints
    samples_at_start: int = 0
    last_log: tuple[float, int] = (0.0, 0)  # (time, samples) at the last log
    last_checkpoint_time: float = 0.0  # time.monotonic() of the last save (or of the loop's start)
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # rank 0's background checkpoint writes


def peer_safe(world_size: int, collective, last_checkpoint=lambda: None):
    """Run something that talks to the other processes; a dead peer becomes a clear PeerLost
    (naming `last_checkpoint()`, looked up only then)."""
    try:
        return collective()
    except (dist.DistError, RuntimeError) as err:
        text = str(err)
        lost = isinstance(err, dist.DistError) or any(
            word in text for word in ("onnection", "gloo", "NCCL", "Timeout", "timed out", "peer"))
        if world_size > 1 and lost:
            latest = last_checkpoint()
            kept = f" The last checkpoint, {latest}, is intact." if latest else ""
            raise PeerLost(f"lost contact with another process of the run ({text.splitlines()[0][:160]}); "
                           f"stopping.{kept}") from None
        raise


def setup(config: RunConfig, info: DistInfo, signals: list[int], stream_factory=None) -> Run:
    """Build the run. `stream_factory(config, info, vocab_size, start_position)` replaces the shard
    stream (anything with `__next__` -> Batch, `position`, `skipped_shards` and `close()`).

    Everything that can refuse the run (the config, the shards, the eval set, the weights, the checkpoint to
    resume) is read before the first file is written, so a refused run leaves --output_dir as it found it and
    the corrected rerun into it is not taken for a second run. The MLPerf log, created after, records its
    init_start at the time initialisation really started."""
    init_started_ms = int(time.time() * 1000)
    ckpt = config.checkpoint
    schedule = CheckpointSchedule(Path(ckpt.output_dir), ckpt.phase2, ckpt.num_samples_per_checkpoint,
                                  ckpt.min_samples_to_start_checkpoints, ckpt.keep_n_most_recent_checkpoints,
                                  ckpt.checkpoint_every_minutes)
    restart = _restart_in_this_jobs_folder(info, schedule.output_dir)
    resume_path, resume_note = _resume_path(config, info, schedule, restart)
    # asked to resume, a run continues the folder's logs (or, with no checkpoint to resume from, starts them
    # anew, as told); a restarted worker's folder holds its own job's files
    if ckpt.resume_from_checkpoint is None and restart is None:
        refuse_an_earlier_runs_folder(info, schedule)
    notes = [resume_note] if resume_note else []
    bert_config = read_bert_config(ckpt.bert_config_path)
    require_positions(bert_config, ckpt.bert_config_path, config.data.max_seq_length)
    if stream_factory is None:
        notes += _check_data(config, info)
    eval_batches = _eval_batches(config, info, bert_config.vocab_size)
    state, built_notes = _initial_state(config, info, bert_config, load_init=resume_path is None)
    notes += built_notes  # fp8's
    checkpoint = None
    if resume_path is not None:
        checkpoint = read_training_checkpoint(resume_path)
        notes += restore_training_state(state, checkpoint, str(resume_path), info.rank, info.world_size,
                                        info.device) + _changed_options(checkpoint.get("run", {}), config)
        notes.append(f"{f'{restart}: ' if restart else ''}resuming from {resume_path} at step {state.progress.step} "
                     f"({state.progress.samples} samples)")
    model = state.model
    if info.world_size > 1:
        # 100 MB buckets as the reference's native DDP (apex's message_size=1e8): BERT-large's 1.3 GB of fp32
        # gradients go in 14 all-reduces instead of torch's default 25 MB (54), fewer launches to overlap.
        model = DistributedDataParallel(state.model, device_ids=None if info.device.type == "cpu"
                                        else [info.device.index], bucket_cap_mb=100)
    global_batch_size = config.batch.train_batch_size * info.world_size
    opt = config.optimizer
    lr_schedule = LrSchedule.from_flags(opt.learning_rate, opt.max_steps, opt.warmup_proportion, opt.warmup_steps,
                                        opt.start_warmup_step)
    stream = (stream_factory or shard_stream)(config, info, bert_config.vocab_size, state.data_position)
    try:
        if restart is None and info.is_main:  # nothing refused the folder: restarts of this job may continue in it
            mark_as_this_jobs(schedule.output_dir)
        observers = _observers(config, info, schedule, resume_path, restart is not None, init_started_ms)
    except BaseException:
        stream.close()
        raise
    for note in notes:
        observers.say(note)
    if checkpoint is not None:
        observers.metrics.resume_at(state.progress.samples)
    elif restart is not None:  # from the beginning: the restart records stay, the killed attempt's logs go
        observers.metrics.resume_at(0)
    if restart is not None:
        observers.restarted(restart.count, resume_path, state.progress)
    if info.is_main:
        schedule.remove_partial_writes()
    run = Run(config=config, info=info, state=state, model=model, stream=stream, eval_batches=eval_batches,
              eval_at=_eval_steps(config, global_batch_size, state.progress.step), schedule=schedule,
              observers=observers, tracker=StepTracker(info.device),
              divergence=DivergenceGuard(info.device, info.is_main, resume_path), global_batch_size=global_batch_size,
              lr_schedule=lr_schedule, signals=signals, resumed_from=resume_path,
              samples_at_start=state.progress.samples)
    _log_submission(run)
    return run


def _observers(config: RunConfig, info: DistInfo, schedule: CheckpointSchedule, resume_path: Path | None,
               restarted: bool, init_started_ms: int) -> RunObservers:
    """The MLPerf log, metrics and progress bar: the run's first files in --output_dir (a restart continues
    metrics.jsonl, whose restart records it keeps)."""
    log_name = f"mlperf_resumed_{resume_path.stem}.log" if resume_path else "mlperf.log"
    observers = RunObservers(schedule.output_dir, info.is_main, schedule.output_dir / log_name,
                             resumed=resume_path is not None or restarted, progress_bar=config.system.progress,
                             total_steps=config.optimizer.max_steps, target_accuracy=config.run.target_mlm_accuracy)
    observers.mlperf.init_start(cache_cleared=config.mlperf.cache_cleared, time_ms=init_started_ms)
    return observers


def _check_data(config: RunConfig, info: DistInfo) -> list[str]:
    """Every training shard's metadata against the others' and the flags, and the training set against the eval
    set, on rank 0 (the others learn its verdict): notes for the user, or an InputError."""
    data, refusal, notes = config.data, None, []
    if info.is_main:
        try:
            notes = check_training_shards(data.input_dir, data.max_seq_length, data.max_predictions_per_seq,
                                          skip_bad_shards=data.skip_bad_shards)
            if data.eval_dir is not None and not data.allow_eval_overlap:
                refuse_training_on_the_eval_set(data.input_dir, data.eval_dir)
        except InputError as err:
            refusal = str(err)
    refusal, notes = broadcast_object((refusal, notes))
    if refusal is not None:
        raise InputError(refusal)
    return notes


def _restart_in_this_jobs_folder(info: DistInfo, output_dir: Path) -> Restart | None:
    """The restart this worker is, when its job began --output_dir; else None (a first attempt, or a restart
    of one that was refused: it is judged as a first attempt again). Rank 0 decides, so every process agrees."""
    restart = this_restart()
    if restart is None:
        return None
    return restart if broadcast_object(began_by_this_job(output_dir) if info.is_main else None) else None


def _resume_path(config: RunConfig, info: DistInfo, schedule: CheckpointSchedule,
                 restart: Restart | None) -> tuple[Path | None, str]:
    """The checkpoint to resume from (the same on every process) and a note for the user. A worker torchrun
    restarted continues from the newest checkpoint in its folder, whatever it was started with."""
    wanted = config.checkpoint.resume_from_checkpoint
    if wanted is None and restart is None:
        return None, ""
    if wanted not in (None, "latest") and restart is None:
        return Path(wanted), ""
    found = schedule.latest() if info.is_main else None
    latest = broadcast_object(str(found) if found else None)  # rank 0 decides, so every process agrees
    if latest is not None:
        return Path(latest), ""
    if restart is None:
        return None, (f"note: --resume_from_checkpoint found no {schedule.prefix}*.pt in {schedule.output_dir}; "
                      "starting a new run")
    if wanted not in (None, "latest"):  # restarted before this job wrote a checkpoint: where the user started it
        return Path(wanted), ""
    return None, (f"{restart}: no {schedule.prefix}*.pt in {schedule.output_dir} yet; starting the run again from "
                  "the beginning")


def step_settings(config: RunConfig) -> StepSettings:
    system = config.system
    return StepSettings(precision=system.precision, attention=system.attention, fused_norm=system.fused_norm,
                        fp8_recipe=system.fp8_recipe, fp8_layers=system.fp8_layers, compile=system.compile,
                        compile_optimizer=system.compile_optimizer, compile_mode=system.compile_mode)


def _initial_state(config: RunConfig, info: DistInfo, bert_config, load_init: bool) -> tuple[TrainingState, list[str]]:
    """The state before any resume: the reference initialisation (from --seed, identical on every process) or
    --init_checkpoint, built by build.py; then this process's own random streams."""
    torch.manual_seed(config.run.seed)
    opt = config.optimizer
    optimization = Optimization(learning_rate=opt.learning_rate, betas=(opt.opt_lamb_beta_1, opt.opt_lamb_beta_2),
                                weight_decay=opt.weight_decay_rate, init_scale=_init_loss_scale())
    built = build(bert_config, step_settings(config), info.device, optimization,
                  init_checkpoint=config.checkpoint.init_checkpoint if load_init else None)
    seed = worker_seed(config.run.seed, info.rank, info.world_size)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return TrainingState(built.model, built.optimizer, built.scaler, Progress(), DataPosition()), built.notes


def _init_loss_scale() -> float:
    text = os.environ.get("INIT_LOSS_SCALE", str(2.0**20))
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise InputError(f"INIT_LOSS_SCALE={text!r} is not a positive number; unset it for the default 2**20")
    return value


def _changed_options(saved: dict, config: RunConfig) -> list[str]:
    now = config.flat()
    keys = EXACT_RESUME_OPTIONS + (EXACT_RESUME_FP8_OPTIONS if now["precision"] == "fp8" else ())
    changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in keys if k in saved and saved[k] != now[k]]
    if not changed:
        return []
    return [f"note: resuming with changed options ({', '.join(changed)}); the continuation is not the exact one"]


@own_to_this_process()  # each process reads its own share of the shards
def shard_stream(config: RunConfig, info: DistInfo, vocab_size: int, start: DataPosition) -> ShardStream:
    """The default stream: this process's share of --input_dir, from `start` (token-balanced over the
    processes with --exchange_padding)."""
    def report(message: str) -> None:
        print(f"bert-pretrain train (rank {info.rank}): {message}", file=sys.stderr, flush=True)

    exchange = config.data.exchange_padding and config.system.packed and info.world_size > 1
    pin_memory, make_batch = devices.pins_host_memory(info.device), _row_converter(config)
    stream = ShardStream(
        config.data.input_dir, rank=info.rank, world_size=info.world_size, seed=config.run.seed,
        micro_batch_size=config.batch.micro_batch_size, shape=_shard_shape(config, vocab_size), start=start,
        pin_memory=pin_memory, skip_bad_shards=config.data.skip_bad_shards, on_skip=report, make_batch=make_batch,
    )
    if not exchange:
        return stream
    return ExchangedStream(stream, info.rank, info.world_size, config.batch.gradient_accumulation_steps,
                           make_batch, pin_memory=pin_memory)


def _shard_shape(config: RunConfig, vocab_size: int) -> ShardShape:
    return ShardShape(config.data.max_seq_length, config.data.max_predictions_per_seq, vocab_size)


def _row_converter(config: RunConfig):
    """Rows -> Batch: packed (padding removed; max_seqlen fixed so a compiled model sees one value; fp8: token
    counts in multiples of 16) or padded."""
    if not config.system.packed:
        return padded_rows_batch
    multiple = fp8.TOKEN_MULTIPLE if config.system.precision == "fp8" else 1
    options = PackingOptions(max_seqlen=config.data.max_seq_length, pad_to_multiple=multiple)
    return functools.partial(pack_padded_rows, max_predictions_per_seq=config.data.max_predictions_per_seq,
                             options=options)


def _eval_batches(config: RunConfig, info: DistInfo, vocab_size: int) -> list[Batch]:
    """This process's share of the eval set, batched once (on the device with --cache_eval_data)."""
    data = config.data
    if data.eval_dir is None:
        return []
    try:
        batches = rank_eval_batches(data.eval_dir, _shard_shape(config, vocab_size),
                                    batch_size=config.batch.eval_batch_size, rank=info.rank,
                                    world_size=info.world_size, num_examples=data.num_eval_examples,
                                    packed=config.system.packed)
    except SettingsMismatch as err:  # the flags serve the training shards too: the eval set is what differs
        raise InputError(f"{err.path}: the eval set does not match this run's training settings ({err.problem}); "
                         "make it with the same prepare settings as the training shards (prepare writes both "
                         "together)") from None
    if config.data.cache_eval_data:
        return [b.to(info.device) for b in batches]
    return [b.pin_memory() for b in batches] if devices.pins_host_memory(info.device) else batches


def _eval_steps(config: RunConfig, global_batch_size: int, current_step: int) -> list[int]:
    """The MLPerf cadence in optimizer steps, from the start of the run (a resumed run keeps it)."""
    if config.data.eval_dir is None:
        return []
    run = config.run
    interval = run.eval_iter_samples if run.eval_iter_samples is not None else eval_interval_samples(global_batch_size)
    start = run.eval_iter_start_samples if run.eval_iter_start_samples is not None else interval
    steps = eval_steps(start, interval, run.max_samples_termination, global_batch_size)
    return sorted({s for s in steps if s > current_step})


def _platform(info: DistInfo) -> str:
    return f"{info.world_size}x{devices.name(info.device)}"


def _log_submission(run: Run) -> None:
    config, opt = run.config, run.config.optimizer
    mlperf = run.config.mlperf
    run.observers.mlperf.submission(mlperf.submission_org, mlperf.submission_platform or _platform(run.info),
                                    mlperf.submission_division, mlperf.submission_status)
    schedule = run.lr_schedule
    run.observers.mlperf.hyperparameters({
        "seed": config.run.seed, "global_batch_size": run.global_batch_size,
        "d_batch_size": config.batch.micro_batch_size,
        "gradient_accumulation_steps": config.batch.gradient_accumulation_steps,
        "max_predictions_per_seq": config.data.max_predictions_per_seq,
        "opt_learning_rate_training_steps": schedule.total_steps, "num_warmup_steps": schedule.warmup_steps,
        "opt_base_learning_rate": schedule.base_lr, "opt_epsilon": LAMB_EPSILON,
        "opt_lamb_beta_1": opt.opt_lamb_beta_1, "opt_lamb_beta_2": opt.opt_lamb_beta_2,
        "opt_lamb_weight_decay_rate": opt.weight_decay_rate, "opt_learning_rate_warmup_steps": schedule.warmup_steps,
        "opt_lamb_learning_rate_decay_poly_power": schedule.degree, "start_warmup_step": schedule.start_warmup_step,
    })
