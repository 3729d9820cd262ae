"""The training recipe: one online-RL loop (Flow-GRPO / GRPO-Guard) for every backbone.

Setup builds the run's components (:func:`~.context.build_context`) and evaluates the base model;
then, per epoch, top to bottom (the parts are in :mod:`.epoch`):

1. draw ``prompts_per_epoch`` prompts, each repeated ``group_size`` times (one group per prompt);
2. roll out every sample with the SDE sampler, keeping each trained step's state, next state,
   log-prob and mean;
3. decode and score: proxy rewards (weighted sum, optimised) and gold rewards (logged);
4. group-relative advantages over the whole (gathered) batch;
5. ``inner_epochs x updates_per_epoch`` optimizer updates with :func:`grpo_guard.policy_loss`
   (the first is on-policy and checked to have ratio 1 before any update: the preflight);
6. per-step diagnostics, evaluation on a fixed prompt set with fixed noise (gold metrics
   normalised to the base model), the over-optimization monitor, metrics.jsonl, image grids,
   checkpoints.

A stop signal is handled by :mod:`grpo_guard.stopping` (see :func:`run_epochs`). :mod:`.minimal` is the
same algorithm in one short function, without the run's bookkeeping.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from .. import stopping
from ..config import RunConfig, dump_config
from ..seeding import deterministic_algorithms, reproducibility_record
from .context import RunContext, build_context
from .epoch import (batch_advantages, draw_batch, evaluate_base, evaluate_epoch, finish_epoch, rollout_batch,
                    score_batch, skip_bad_batch, stop_before_updates, update_batch, update_row)
from .errors import OutputWriteError, PreflightError, RunDirError, TrainingInterrupted, TrainingStopped
from .runlog import RunLock, atomic_write_text
from .summary import format_summary, write_summary
from .trackers import require_trackers, start_trackers

__all__ = ["train", "TrainingStopped", "TrainingInterrupted", "OutputWriteError", "RunDirError", "PreflightError",
           "prepare_run_dir"]


def train(cfg: RunConfig, output_dir: str | Path, *, resume: bool = False, log=print, accelerator=None) -> Path:
    """Train per ``cfg`` into ``output_dir`` (or resume the run there). Returns the run directory."""
    out = Path(output_dir)
    if accelerator is None:
        # several runs in one process (the demo, tests) may differ in mixed precision: accelerate keeps
        # it in a process-wide singleton, so clear that (the distributed PartialState is kept)
        AcceleratorState._reset_state()
        accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.train.mixed_precision)
    is_main = accelerator.is_main_process
    created = not out.exists()
    if is_main:
        prepare_run_dir(out, resume)
    accelerator.wait_for_everyone()
    lock = RunLock(out)
    if is_main:
        lock.acquire()
    try:
        with stopping.installed(), deterministic_algorithms(cfg.train.deterministic):
            _check_batch_split(cfg, accelerator.num_processes)
            if is_main:
                atomic_write_text(out / "config.yaml", dump_config(cfg))
                (out / "images").mkdir(exist_ok=True)
                _record_environment(out, resume, log)
            require_trackers(cfg)  # a tracker that is not installed stops the run before any model is built
            with stopping.phase("loading or building the run's models"):
                ctx = build_context(cfg, out, accelerator, log, resume)
            ctx.trackers = start_trackers(cfg, out, ctx.state.epoch, is_main)
            try:
                run_epochs(ctx)
            except TrainingStopped as e:  # a checkpoint was written: the summary says how far the run got
                if is_main and (out / "metrics.jsonl").exists():
                    log(format_summary(write_summary(out, interrupted=isinstance(e, TrainingInterrupted))))
                raise
            finally:
                ctx.trackers.close()
            if is_main:
                log(format_summary(write_summary(out)))
            return out
    except BaseException:
        if is_main and not resume and not (out / "metrics.jsonl").exists():
            _remove_unstarted_run(out, created)  # a run that failed before its first epoch leaves nothing
        raise
    finally:
        lock.release()


def run_epochs(ctx: RunContext) -> None:
    """The recipe: evaluate the base model once, then train epoch after epoch until ``train.epochs`` (or
    the monitor stops the run).

    A stop signal (:mod:`grpo_guard.stopping`) during the base model's evaluation stops at once (the next
    run redoes it). During an epoch it is acted on at the epoch's phase boundaries: after the rollout or
    the rewards, before any update, the epoch is dropped and the state at its start is checkpointed; once
    the updates have begun, the epoch is finished (updates, evaluation) and checkpointed. Either way
    ``--resume`` continues exactly."""
    cfg, st = ctx.cfg, ctx.state
    if cfg.eval.every and st.base_gold is None:
        with stopping.phase("evaluating the base model"):
            evaluate_base(ctx)
    show = ctx.is_main and cfg.log.progress
    # a bar on a terminal; in a log file (a scheduler's, a pipe) a plain line at most every 10 s instead
    lines = show and not sys.stderr.isatty()
    bar = tqdm(range(st.epoch, cfg.train.epochs), initial=st.epoch, total=cfg.train.epochs, desc="epochs",
               disable=not show or lines, dynamic_ncols=True)
    last_line = time.monotonic()
    with stopping.deferred():
        for epoch in bar:
            t_epoch = time.perf_counter()
            batch = draw_batch(ctx, epoch)                                  # 1. prompts and ownership
            t0 = time.perf_counter()
            traj = rollout_batch(ctx, batch)                                # 2. rollout
            stop_before_updates(ctx, epoch, "rollout")
            row: dict = {"epoch": epoch}
            t1 = time.perf_counter()
            values, problem = score_batch(ctx, batch, traj)                 # 3. rewards
            stop_before_updates(ctx, epoch, "rewards")
            t2 = time.perf_counter()
            if problem:
                row.update(skip_bad_batch(ctx, epoch, problem))
            else:
                proxy, adv, adv_local = batch_advantages(ctx, batch, values)  # 4. advantages
                t3 = time.perf_counter()
                result, step_norms = update_batch(ctx, batch, traj, adv_local)  # 5. updates
                t4 = time.perf_counter()
                row.update(update_row(ctx, proxy, adv, values, result, step_norms))  # 6. diagnostics
                row.update(rollout_seconds=t1 - t0, reward_seconds=t2 - t1, update_seconds=t4 - t3)
            row.update(evaluate_epoch(ctx, epoch))                          # evaluation, image grids
            stop = finish_epoch(ctx, epoch, row, time.perf_counter() - t_epoch)  # monitor, metrics, checkpoints
            bar.set_postfix_str(_postfix(row))
            if lines and (time.monotonic() - last_line >= PROGRESS_LINE_SECONDS or stop
                          or epoch + 1 == cfg.train.epochs):
                last_line = time.monotonic()
                ctx.log(f"epoch {epoch + 1}/{cfg.train.epochs}: {_postfix(row)}")
            if stop:
                break
    bar.close()
    ctx.accelerator.wait_for_everyone()


def _record_environment(out: Path, resume: bool, log) -> None:
    """Write what a bit-for-bit repetition depends on (``reproducibility.json``); on resume, say what differs
    from the run's start (a resumed run equals the uninterrupted one only where nothing does)."""
    now = reproducibility_record()
    path = out / "reproducibility.json"
    if resume and path.is_file():
        try:
            then = json.loads(path.read_text())
        except ValueError:
            then = {}
        diff = [f"{k} {then.get(k)!r} -> {v!r}" for k, v in now.items() if k in then and then[k] != v]
        if diff:
            log(f"resuming with a different setup ({'; '.join(diff)}): the run continues, but need not equal an "
                f"uninterrupted one bit for bit")
        return
    atomic_write_text(path, json.dumps(now, indent=1))


def _check_batch_split(cfg: RunConfig, world: int) -> None:
    batch, t = cfg.sample.prompts_per_epoch * cfg.sample.group_size, cfg.train
    if batch % (world * t.updates_per_epoch) != 0:
        raise ValueError(f"sample: prompts_per_epoch x group_size = {batch} must be divisible by "
                         f"processes x train.updates_per_epoch = {world} x {t.updates_per_epoch}")


def prepare_run_dir(output_dir: Path, resume: bool) -> None:
    """Refuse an output directory that holds another run (unless resuming it)."""
    out = Path(output_dir)
    if resume:
        if not (out / "config.yaml").is_file():
            raise RunDirError(f"--resume: {out} holds no run (no config.yaml)")
        return
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--output-dir: {out} exists and is not a directory")
    if out.is_dir() and any((out / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints")):
        raise RunDirError(f"--output-dir: {out} already holds a run; use --resume {out} or another directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"--output-dir: {out} is not writable ({e.strerror})") from None


def _remove_unstarted_run(out: Path, created: bool) -> None:
    for name in ("config.yaml", "reproducibility.json", "golds.json", "base_eval.json", "images", "checkpoints", "best",
                 "tensorboard", "wandb", "wandb_id"):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    (out / ".lock").unlink(missing_ok=True)
    if created:
        try:
            out.rmdir()
        except OSError:
            pass


#: seconds between the plain progress lines of a run whose stderr is not a terminal
PROGRESS_LINE_SECONDS = 10.0


def _postfix(row: dict) -> str:
    parts = []
    for key, label in (("proxy_reward_mean", "proxy"), ("gold_normalized_avg", "gold"), ("clip_frac", "clip"),
                       ("approx_kl", "kl")):
        v = row.get(key)
        if isinstance(v, (int, float)) and v is not None:
            parts.append(f"{label} {v:.3g}")
    return " ".join(parts)
