"""`bert-pretrain train`: the MLPerf BERT run, one process per device (torchrun), DDP across them.

The loop (`_loop`) reads as its steps: next micro-batches, learning rate, `train_step`, counters;
then, when due, log, eval, checkpoint; stop on the target (status success), --max_steps or
--max_samples_termination (aborted), a signal (a checkpoint, then a clean exit) or a divergence:
a non-finite loss, or a state that fails the check before a save (train/divergence.py); the error
names the step and the last checkpoint that passed, and nothing is saved from the diverged state.
A checkpoint is copied to host memory and written on a background thread while the next steps run
(train/checkpoint.py); the next save, a divergence stop and the end of the run wait for it. Losses stay on
the device and are read only at sync points (log, eval, checkpoint, every SYNC_EVERY steps), where
the processes also agree on whether to stop. Counting follows the reference: `step` is updates
applied (an fp16 step skipped for overflow is not one), `samples` is sequences consumed by all
processes.
"""

from __future__ import annotations

import gc
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist

from bert_pretrain.build import require
from bert_pretrain.distributed import gather_objects, init_distributed, is_distributed, shutdown
from bert_pretrain.errors import InputError, said_by_the_first_process
from bert_pretrain.evaluate import evaluate
from bert_pretrain.options.train import RunConfig
from bert_pretrain.step import train_step
from bert_pretrain.train.checkpoint import Progress, gather_rank_states, host_snapshot
from bert_pretrain.train.metrics import peak_memory_gb
from bert_pretrain.train.output_folder import hold_output_folder, remove_unused_folder
from bert_pretrain.train.setup import PeerLost, Run, peer_safe, setup, step_settings

# Steps between sync points when nothing else is due. Each costs one all-reduce of three numbers and a wait for
# the device (the step otherwise never waits); every 50 steps keeps that rare, while a SIGTERM or a non-finite
# loss is still acted on within 50 steps, before a checkpoint could save damaged weights.
SYNC_EVERY = 50


def train(config: RunConfig, stream_factory=None) -> int:
    """Run training; returns the exit code (0 when done, 128 + signal number when interrupted).
    `stream_factory` replaces the shard stream (see `setup.setup`)."""
    started = time.time()
    with said_by_the_first_process():  # the flags and files are the same on every process, so are their errors
        info = init_distributed(config.system.device, config.system.dist_backend, config.system.dist_timeout)
    signals: list[int] = []
    previous_handlers = _catch_signals(signals)
    run, peer_lost, output_folder, made_folder = None, False, ExitStack(), False
    try:
        with said_by_the_first_process():  # but for each process's own shards (setup marks those)
            # before anything in the folder is read or written
            # what would refuse the run anyway (fp8 without torchao, --fused_norm without Triton or a GPU) is
            # checked first, so that a refused run creates no folder
            require(step_settings(config), info.device)
            made_folder = hold_output_folder(Path(config.checkpoint.output_dir), info, output_folder)
            run = setup(config, info, signals, stream_factory)
        _verify_checkpoint(run)
        loop_started = time.time()
        status, reason = _loop(run)
        _finish(run, status, reason, started, loop_started)
        return 128 + signals[0] if status == "interrupted" else 0
    except PeerLost as err:
        peer_lost = True
        print(f"bert-pretrain train (rank {info.rank}): {err}", file=sys.stderr, flush=True)
        return 1
    except InputError as err:
        if info.world_size > 1 and not err.reported:  # said before the group is torn down, so the cause comes
            # before the other processes' "lost contact"; the CLI then prints nothing more for it
            print(f"bert-pretrain train (rank {info.rank}): error: {err}", file=sys.stderr, flush=True)
            err.reported = True
        raise
    finally:
        _restore_signals(previous_handlers)
        if run is not None:
            _finish_write_quietly(run)
            run.observers.close()
            run.stream.close()
            _release_ddp(run)
        if run is None and made_folder:  # refused while setting up: nothing was written but the lock file
            remove_unused_folder(Path(config.checkpoint.output_dir))
        output_folder.close()  # once the last log is written
        if not peer_lost:  # a group with a dead member cannot be torn down collectively
            shutdown()


def _release_ddp(run: Run) -> None:
    """Free the DDP wrapper while the process group is still registered.

    Freed later (when `run` goes), DDP's reducer would drop the group's last reference, and the gloo
    group's destructor joins its worker threads while this thread holds the GIL; a worker still
    freeing a finished all-reduce needs the GIL for its tensors: a deadlock, seen as a process that
    hangs after its run ended. Here the group outlives the reducer, and the short sleep lets the
    workers take the GIL and finish before `shutdown` frees the group.
    """
    if run.model is run.state.model:
        return  # one process: no DDP
    run.model = None
    gc.collect()
    time.sleep(0.05)


def _loop(run: Run) -> tuple[str, str]:
    config, state, progress = run.config, run.state, run.state.progress
    accumulation, precision = config.batch.gradient_accumulation_steps, config.system.precision
    done = _already_done(run)
    if done:
        return done
    run.observers.run_start(progress.step)
    run.last_log = (time.time(), progress.samples)
    run.last_checkpoint_time = time.monotonic()
    while True:
        _open_block(run)
        # a collective with --exchange_padding: the step's rows are pooled over the processes
        micro_batches = _collective(run, lambda: [next(run.stream) for _ in range(accumulation)])
        applied_before = _updates_applied(run)
        _set_learning_rate(run, applied_before)
        result = _collective(run, lambda: train_step(run.model, state.optimizer, state.scaler, micro_batches,
                                                     precision, run.info.device))
        progress.step = _updates_applied(run)
        # as the reference counts (it subtracts skipped steps from global_step): an overflow skip is no update
        progress.skipped_steps += progress.step == applied_before
        progress.samples += run.global_batch_size
        state.data_position = run.stream.position
        attempt = progress.step + progress.skipped_steps  # steps taken, skipped ones included
        run.tracker.add(result, attempt)
        run.divergence.add(result, attempt)
        run.observers.step_done()

        log_due = config.run.log_freq > 0 and attempt % config.run.log_freq == 0
        eval_due = bool(run.eval_at) and progress.step >= run.eval_at[0]
        checkpoint_due = not config.checkpoint.skip_checkpoint and run.schedule.due(progress)
        status, reason = _limit_reached(config, progress)
        if not (log_due or eval_due or checkpoint_due or status or attempt % SYNC_EVERY == 0
                or (run.signals and run.info.world_size == 1)):
            continue
        signalled, clock_due = _sync_point(run)
        if signalled:  # every process now holds the signal some process received
            status, reason = "interrupted", f"signal {signal.Signals(run.signals[0]).name}"
        checkpoint_due = checkpoint_due or (clock_due and not config.checkpoint.skip_checkpoint)
        if log_due:
            _log(run)
        if eval_due:  # also when interrupted: the checkpoint then carries this eval, as an uninterrupted run's
            while run.eval_at and run.eval_at[0] <= progress.step:
                run.eval_at.pop(0)
            if _evaluate(run):
                status, reason = "success", f"masked-LM accuracy {config.run.target_mlm_accuracy} reached"
        if status or checkpoint_due:
            _checkpoint(run, forced=status == "interrupted", final=bool(status))
        if status:
            return status, reason


def _already_done(run: Run) -> tuple[str, str] | None:
    """A resumed run whose checkpoint already ended it."""
    progress = run.state.progress
    if progress.converged:
        return "success", "the resumed checkpoint had reached the target"
    status, reason = _limit_reached(run.config, progress)
    return (status, f"the resumed checkpoint had reached {reason}") if status else None


def _limit_reached(config: RunConfig, progress: Progress) -> tuple[str, str]:
    if progress.step >= config.optimizer.max_steps:
        return "aborted", f"--max_steps {config.optimizer.max_steps}"
    if progress.samples >= config.run.max_samples_termination:
        return "aborted", f"--max_samples_termination {config.run.max_samples_termination}"
    return "", ""


def _updates_applied(run: Run) -> int:
    """LAMB's own count of applied updates (a host integer; an fp16-skipped step does not add one)."""
    return int(run.state.optimizer.param_groups[0]["step"])


def _set_learning_rate(run: Run, updates_applied: int) -> None:
    lr = run.lr_schedule.at(updates_applied)
    for group in run.state.optimizer.param_groups:
        group["lr"] = lr


def _open_block(run: Run) -> None:
    """An MLPerf block runs from one eval to the next (or to the end when there is no eval)."""
    if run.observers.block_open:
        return
    progress = run.state.progress
    until = run.eval_at[0] if run.eval_at else run.config.optimizer.max_steps
    run.observers.block_start(progress.samples, max(until - progress.step, 1) * run.global_batch_size)


def _log(run: Run) -> None:
    values = _collective(run, run.tracker.read)
    progress, scaler = run.state.progress, run.state.scaler
    now = time.time()
    then, samples_then = run.last_log
    run.last_log = (now, progress.samples)
    values.update(
        lr=run.state.optimizer.param_groups[0]["lr"],
        loss_scale=scaler.get_scale() if scaler.is_enabled() else 1.0,
        samples_per_s=(progress.samples - samples_then) / max(now - then, 1e-9),
        skipped_steps=progress.skipped_steps,
    )
    grad_norm = run.state.optimizer.last_grad_norm  # of the last applied update, before clipping
    if grad_norm is not None:  # users watch it for divergence
        values["grad_norm"] = float(grad_norm)
    run.divergence.record.observe(values["loss"])  # already a mean over all processes: every process records alike
    run.observers.train_log(progress.step, progress.samples, values)


def _evaluate(run: Run) -> bool:
    """Evaluate, record, report; True when the target accuracy is reached."""
    progress, target = run.state.progress, run.config.run.target_mlm_accuracy
    began = time.time()
    run.observers.eval_start(progress.samples)
    result = _collective(run, lambda: _run_eval(run)).to_dict()
    progress.eval_history.append({"step": progress.step, "samples": progress.samples, **result})
    progress.best_mlm_accuracy = max(progress.best_mlm_accuracy, result["mlm_accuracy"])
    run.observers.eval_done(progress.step, progress.samples, result)
    _pause(run, began)
    progress.converged = target > 0 and result["mlm_accuracy"] >= target
    return progress.converged


def _checkpoint(run: Run, forced: bool, final: bool) -> None:
    """Save on rank 0 (every process contributes its data position and RNG states), only from a sane state:
    a divergent one stops the run instead, with an error naming the last checkpoint that passed. The write
    runs in the background; the final one is waited for."""
    config, state, progress = run.config, run.state, run.state.progress
    if (config.checkpoint.skip_checkpoint and not forced) or run.saved_step == progress.step:
        return
    began = time.time()
    _wait_for_write(run)  # before the check: it may delete the pending checkpoint, which must be on disk
    _collective(run, lambda: run.divergence.check(state.model.parameters(), progress.step + progress.skipped_steps))
    progress.samples_at_last_checkpoint = progress.samples
    rank_states = _collective(run, lambda: gather_rank_states(state, run.info.device))
    path = run.schedule.path_for(progress.step)
    if run.info.is_main:
        keep, say = run.divergence.passed, run.observers.say

        def written() -> None:
            run.schedule.remove_old(keep=keep)
            say(f"{'final ' if final else ''}checkpoint {path}")

        run.writer.start(path, host_snapshot(state, rank_states, config.flat()), then=written)
        if final:
            _wait_for_write(run)
    run.divergence.saved(path)
    run.saved_step = progress.step
    run.last_checkpoint_time = time.monotonic()
    _pause(run, began)


def _wait_for_write(run: Run) -> None:
    """Wait for the checkpoint being written; a disk that filled or failed mid-write is a one-line error. The
    write went to a temporary that was removed on failure (atomic_path), so the checkpoints before it are whole."""
    try:
        run.writer.wait()
    except OSError as err:
        path = run.schedule.path_for(run.saved_step)
        reason = err.strerror or str(err)
        latest = run.schedule.latest()
        kept = f"the last checkpoint, {latest}, is intact" if latest else "no earlier checkpoint was written"
        raise InputError(f"{path}: the checkpoint could not be written ({reason}); {kept}; free space on the "
                         "disk of --output_dir (or pass another one) and resume with --resume_from_checkpoint"
                         ) from None


def _finish_write_quietly(run: Run) -> None:
    """On the way out of a run that failed: the checkpoint being written is finished (it is whole and sane, and
    a restart continues from it); an error of its own is said, not raised over the one in flight."""
    try:
        _wait_for_write(run)
    except InputError as err:
        print(f"bert-pretrain train: error: {err}", file=sys.stderr, flush=True)


def _pause(run: Run, began: float) -> None:
    """Time spent on evals and checkpoints since `began` is not training time."""
    now = time.time()
    run.paused_seconds += now - began
    run.last_log = (run.last_log[0] + now - began, run.last_log[1])


def _sync_point(run: Run) -> tuple[bool, bool]:
    """Every process learns whether any received a signal (and which: a process that received none records it
    too) and whether any clock says a time-based checkpoint is due; a non-finite loss stops the run here, before
    a checkpoint could save the damaged weights. Returns (signalled, checkpoint due by time)."""
    device = run.info.device
    clock_due = run.schedule.due_by_time(run.state.progress, time.monotonic() - run.last_checkpoint_time)
    # One MAX all-reduce answers all three questions: the largest signal number; through the negation, the
    # smallest (earliest) step whose loss was not finite on any process (a clean process holds +inf, so the
    # result is -inf only when every process is clean); whether any clock says a checkpoint is due.
    flags = torch.stack([torch.tensor(float(run.signals[0] if run.signals else 0), dtype=torch.float64, device=device),
                         -run.tracker.first_bad_step,
                         torch.tensor(float(clock_due), dtype=torch.float64, device=device)])
    if is_distributed():
        _collective(run, lambda: dist.all_reduce(flags, op=dist.ReduceOp.MAX))
    signalled, negative_bad_step, clock_due = flags.tolist()
    if signalled and not run.signals:
        run.signals.append(int(signalled))
    if negative_bad_step != float("-inf"):
        problem = (f"the loss of step {int(-negative_bad_step)} is not finite and fp16 loss scaling does not "
                   "explain it")
        _wait_for_write(run)  # the check may delete the pending checkpoint: it must be on disk first
        raise _collective(run, lambda: run.divergence.stopped(run.state.model.parameters(), problem))
    return signalled > 0, clock_due > 0


def _collective(run: Run, work):
    return peer_safe(run.info.world_size, work, run.schedule.latest)


def _run_eval(run: Run):
    """The eval set through the model, in the run's precision."""
    return evaluate(run.state.model, run.eval_batches, run.info.device, precision=run.config.system.precision)


def _verify_checkpoint(run: Run) -> None:
    """--verify_checkpoint: the initial weights' accuracy, printed (the run's clock has not started)."""
    if run.config.run.verify_checkpoint and run.eval_batches:
        result = _collective(run, lambda: _run_eval(run))
        run.observers.say(f"initial weights: masked-LM accuracy {result.mlm_accuracy:.4f}, loss {result.mlm_loss:.4f}")


def _finish(run: Run, status: str, reason: str, started: float, loop_started: float) -> None:
    """Close the MLPerf log; print and write the end-of-run summary (rank 0)."""
    progress, info = run.state.progress, run.info
    _wait_for_write(run)
    run.observers.run_stop("success" if status == "success" else "aborted", progress.samples,
                           run.config.data.num_eval_examples)
    memory = _collective(run, lambda: gather_objects(peak_memory_gb(info.device)))
    # distinct shards: a bad shard is met again every epoch, maybe by another process
    skipped_shards = len(set().union(*_collective(run, lambda: gather_objects(sorted(set(run.stream.skipped_shards))))))
    loop_seconds = time.time() - loop_started
    trained = progress.samples - run.samples_at_start
    summary = {
        "status": status, "stopped_by": reason, "end_to_end_seconds": round(time.time() - started, 3),
        "training_seconds": round(loop_seconds - run.paused_seconds, 3),
        "eval_and_checkpoint_seconds": round(run.paused_seconds, 3), "samples_trained": trained,
        "train_samples_per_second": trained / max(loop_seconds - run.paused_seconds, 1e-9),
        "samples_per_second_with_evals": trained / max(loop_seconds, 1e-9),
        "total_samples": progress.samples, "steps": progress.step, "skipped_steps": progress.skipped_steps,
        "evals": len(progress.eval_history), "best_mlm_accuracy": progress.best_mlm_accuracy,
        "skipped_shards": skipped_shards, "processes": info.world_size, "global_batch_size": run.global_batch_size,
        "precision": run.config.system.precision, "device": str(info.device.type),
        "peak_memory_gb_max": max(memory),
        **{f"peak_memory_gb_rank{rank}": round(gb, 3) for rank, gb in enumerate(memory)},
    }
    if progress.eval_history:
        summary["final_mlm_accuracy"] = progress.eval_history[-1]["mlm_accuracy"]
    if run.resumed_from is not None:
        summary["resumed_from"] = str(run.resumed_from)
    summary["restarts"] = run.observers.metrics.restarts()  # torchrun's restarts of this job, each where it went on
    run.observers.metrics.write_summary(summary)
    shown = ["status", "stopped_by", "end_to_end_seconds", "train_samples_per_second", "final_mlm_accuracy",
             "steps", "samples_trained", "peak_memory_gb_max"]
    run.observers.say("summary: " + ", ".join(f"{k} {summary[k]:.4g}" if isinstance(summary[k], float)
                                              else f"{k} {summary[k]}" for k in shown if k in summary)
                      + f"  ({run.schedule.output_dir}/summary.json)")


def _catch_signals(signals: list[int]) -> dict:
    """SIGTERM / SIGINT ask the loop to stop at its next sync point (a checkpoint, then a clean exit).

    A second SIGINT (Ctrl-C pressed again) acts at once. A repeated SIGTERM does not: schedulers and
    torchrun's agent both send one, and the first must still get its checkpoint (SIGKILL forces a stop).
    """

    def handler(signum, frame):
        signals.append(signum)
        if signum == signal.SIGINT:
            signal.signal(signum, signal.default_int_handler)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
