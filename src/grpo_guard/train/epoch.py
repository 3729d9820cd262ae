"""The parts of one training epoch, in the order the recipe (:mod:`.loop`) calls them.

Each takes the run's :class:`~.context.RunContext` and explicit inputs, and returns what the next part
needs: :func:`draw_batch` -> :func:`rollout_batch` -> :func:`score_batch` -> :func:`batch_advantages`
-> :func:`update_batch` -> :func:`update_row`, then :func:`evaluate_epoch` and :func:`finish_epoch`.
Samples are owned per process: global sample ``i`` has prompt ``i // group_size``; rank ``r`` owns
positions ``r, r + world, ...`` of a seeded permutation, so every global minibatch holds equal shares of
every rank, and every random draw depends on the global index only (the run does not depend on how it
is split over processes).
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import stopping
from ..backbones.base import Conditioning
from ..core import GroupAdvantages, group_advantages, per_step_ratio_stats, spread
from ..core._checks import all_finite
from ..prompts import draw_epoch_indices
from ..rewards import weighted_sum
from ..seeding import derive_generator
from ..sharding import reshard
from .context import RunContext, intact_note, save_best, save_checkpoint_of
from .errors import OutputWriteError, TrainingInterrupted, TrainingStopped
from .evaluate import EvaluationRewardError, normalise_gold
from .faults import fault_point
from .rollout import Trajectory, per_sample_noise, rollout, step_subsets
from .runlog import atomic_write_text, save_image_grid, to_jsonable
from .schedule import StepSchedule
from .update import UpdateResult, UpdateSettings, measure_step_grad_norms, row_bound, update_policy

__all__ = ["EpochBatch", "evaluate_base", "draw_batch", "rollout_batch", "score_batch", "skip_bad_batch",
           "batch_advantages", "update_settings", "update_batch", "update_row", "evaluate_epoch", "finish_epoch"]


@dataclass
class EpochBatch:
    """This process's samples of one epoch.

    Attributes:
        epoch: the epoch (0-based).
        global_index: (B_local,) long, each local sample's index in the global batch of B samples.
        prompts: the local samples' prompts (every sample of a group has its group's prompt).
        metadata: each local sample's prompt metadata (a copy per sample; empty dicts for plain prompts).
        cond: the backbone's conditioning of ``prompts``.
    """

    epoch: int
    global_index: Tensor
    prompts: list[str]
    metadata: list[dict]
    cond: Conditioning | None = None

    def __len__(self) -> int:
        return len(self.prompts)


def evaluate_base(ctx: RunContext) -> None:
    """Evaluate the base model once (the normalisation of every gold metric) and write ``base_eval.json``."""
    t0 = time.perf_counter()
    if ctx.is_main:  # it can take a while on a large model: say what is running
        ctx.log(f"evaluating the base model ({len(ctx.prompts)} prompts x {ctx.cfg.eval.samples_per_prompt} samples)")
    try:
        base, images = ctx.evaluate()
    except EvaluationRewardError as e:
        raise TrainingStopped(f"the base model's evaluation failed before training ({e})") from None
    if ctx.is_main and ctx.cfg.log.image_every:  # the base model's grid: the same prompts and noise as every later one
        save_eval_grid(ctx, images, 0)
    st = ctx.state
    st.base_gold = {k: v for k, v in base.items()
                    if k.startswith("gold/") or k in {f"eval/{n}_mean" for n in ctx.gold_rewards}}
    st.base_proxy = base["eval/proxy_reward_mean"]
    if ctx.is_main:  # the base model's evaluation: the common start of every run with this seed
        base_row = {**base, **normalise_gold(base, st.base_gold, ctx.golds)}
        atomic_write_text(ctx.out / "base_eval.json", json.dumps(to_jsonable(base_row), indent=1))
        gold = ", ".join(f"{k[5:]} {v:.4g}" for k, v in st.base_gold.items())
        ctx.log(f"base model: eval proxy {st.base_proxy:.4f}" + (f", gold {gold}" if gold else "")
                + f" ({time.perf_counter() - t0:.1f} s)")


def draw_batch(ctx: RunContext, epoch: int) -> EpochBatch:
    """The epoch's prompts (``prompts_per_epoch``, seeded by (seed, epoch)) and this process's samples."""
    s, seed = ctx.cfg.sample, ctx.cfg.seed
    epoch_prompts = draw_epoch_indices(len(ctx.prompts), s.prompts_per_epoch, seed, epoch)
    perm = torch.randperm(ctx.batch_size, generator=derive_generator(seed, "minibatch", epoch))
    local = perm[ctx.rank::ctx.world]
    texts, metadata = ctx.prompts.take([epoch_prompts[i // s.group_size] for i in local.tolist()])
    return EpochBatch(epoch, local, texts, metadata)


def rollout_batch(ctx: RunContext, batch: EpochBatch) -> Trajectory:
    """Encode the batch's prompts (into ``batch.cond``) and sample its trajectories with the SDE policy (on this
    epoch's SDE window when it is drawn anew each epoch, Flow-GRPO-Fast: ``ctx.schedule`` is then replaced)."""
    s = ctx.cfg.sample
    if s.sde_window_size:
        ctx.schedule = StepSchedule.for_epoch(ctx.cfg, ctx.schedule.sigmas, batch.epoch)
    ctx.backbone.eval()
    batch.cond = ctx.backbone.encode_unique_prompts(batch.prompts)
    noise = per_sample_noise(ctx.cfg.seed, "rollout", batch.epoch, batch.global_index.tolist(), s.num_steps + 1,
                             ctx.backbone.latent_shape)
    if s.same_initial_noise:
        noise[:, 0] = group_initial_noise(ctx.cfg.seed, batch.epoch, batch.global_index, s.group_size,
                                          ctx.backbone.latent_shape)
    with ctx.accelerator.autocast():
        traj = rollout(lambda x, sig, c: ctx.backbone(x, sig, c, s.guidance_scale), batch.cond, noise,
                       ctx.schedule, reduction=ctx.cfg.loss.reduction, batch_size=s.batch_size, device=ctx.device)
    if ctx.sharded:
        reshard(ctx.backbone)
    fault_point("rollout")
    return traj


def group_initial_noise(seed: int, epoch: int, global_index: Tensor, group_size: int,
                        latent_shape: tuple[int, ...]) -> Tensor:
    """(B, *L) initial latents shared within each group (``sample.same_initial_noise``, DanceGRPO's
    ``init_same_noise``): sample i starts from its group's noise, the group being ``global_index // group_size``."""
    groups = (global_index // group_size).tolist()
    return per_sample_noise(seed, "group-initial", epoch, groups, 1, latent_shape)[:, 0]


def _check_reward(name: str, value, n: int) -> str | None:
    if not torch.is_tensor(value) or value.shape != (n,):
        shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        return f"reward {name} returned {shape}, expected ({n},)"
    if not all_finite(value):
        return f"reward {name} returned NaN or Inf"
    return None


def score_batch(ctx: RunContext, batch: EpochBatch, traj: Trajectory) -> tuple[dict[str, Tensor], str | None]:
    """Decode the final latents and score them with every reward: ``({name: (B_local,) values}, problem)``,
    ``problem`` a message when any process's reward raised or returned a bad value (the batch is then
    skipped everywhere), else None."""
    images = ctx.backbone.decode(traj.final).float().cpu()
    values, problem = {}, None
    for spec in ctx.cfg.rewards:
        try:
            v = ctx.rewards[spec.name](images, batch.prompts, batch.metadata)
        except Exception as e:  # a failing reward model skips the batch, like a bad value
            v, problem = None, f"reward {spec.name} raised {type(e).__name__}: {e}"
        problem = problem or _check_reward(spec.name, v, len(batch))
        if problem:
            break
        values[spec.name] = v.float().to(ctx.device)
    bad = torch.tensor([1.0 if problem else 0.0], device=ctx.device)
    if ctx.world > 1:
        bad = ctx.accelerator.reduce(bad, reduction="sum")
    if float(bad) > 0:
        problem = problem or "a bad reward on another process"
    return values, problem


def skip_bad_batch(ctx: RunContext, epoch: int, problem: str) -> dict:
    """Count a skipped batch; stop the run (after a checkpoint of the last good state) after
    ``train.max_bad_batches`` in a row. Returns the row's fields."""
    st = ctx.state
    st.consecutive_bad += 1
    st.skipped_batches += 1
    if ctx.is_main:
        ctx.log(f"epoch {epoch}: batch skipped ({problem})")
    if st.consecutive_bad >= ctx.cfg.train.max_bad_batches:
        save_checkpoint_of(ctx, epoch)
        raise TrainingStopped(f"stopped after {st.consecutive_bad} consecutive bad reward batches "
                              f"(last: {problem}); checkpoint of the last good state written")
    return {"skipped": True, "skipped_batches": st.skipped_batches}


def _gather(ctx: RunContext, t: Tensor) -> Tensor:
    return ctx.accelerator.gather(t.contiguous()) if ctx.world > 1 else t


def batch_advantages(ctx: RunContext, batch: EpochBatch, values: dict[str, Tensor]
                     ) -> tuple[Tensor, GroupAdvantages, Tensor]:
    """The proxy (weighted sum of the proxy rewards) over the gathered batch and its group-relative
    advantages: ``(proxy (B,), advantages over the batch, this process's (B_local,) advantages)``."""
    s, t, device = ctx.cfg.sample, ctx.cfg.train, ctx.device
    weights = ctx.proxy_weights
    local_index = batch.global_index.to(device)
    full = torch.empty(ctx.batch_size, device=device)
    full[_gather(ctx, local_index)] = _gather(ctx, weighted_sum({k: values[k] for k in weights}, weights))
    adv = group_advantages(full, torch.arange(ctx.batch_size, device=device) // s.group_size, std_mode=t.adv_std,
                           eps=t.adv_eps, clip_max=t.adv_clip_max)
    return full, adv, adv.advantages[local_index]


def update_settings(ctx: RunContext) -> UpdateSettings:
    """The update's settings of this epoch, from the config and the run's state."""
    s, t = ctx.cfg.sample, ctx.cfg.train
    return UpdateSettings(schedule=ctx.schedule, guidance_scale=s.guidance_scale, loss=ctx.cfg.loss,
                          updates_per_epoch=t.updates_per_epoch, inner_epochs=t.inner_epochs,
                          max_grad_norm=t.max_grad_norm, max_forward_rows=t.max_forward_rows,
                          max_forward_mb=t.max_forward_mb, forward_bytes_per_row=ctx.state.forward_bytes_per_row,
                          preflight_tol=t.preflight_tol if ctx.preflight_pending else None)


def update_batch(ctx: RunContext, batch: EpochBatch, traj: Trajectory, advantages: Tensor
                 ) -> tuple[UpdateResult, list[float] | None]:
    """The epoch's optimizer updates (after the per-step gradient norms, when due this epoch): returns
    ``(result, step_norms)``. Stops the run after ``train.max_bad_batches`` epochs in a row in which no
    update was finite."""
    t, st = ctx.cfg.train, ctx.state
    ctx.backbone.train()
    settings = update_settings(ctx)
    step_norms = None
    if t.grad_norm_every and batch.epoch % t.grad_norm_every == 0:
        n_meas = torch.arange(min(t.grad_norm_samples, len(batch)))
        step_norms = measure_step_grad_norms(ctx.backbone, traj, batch.cond, advantages, settings, n_meas)
    order = update_order(ctx, advantages) if t.drop_zero_advantage else torch.arange(len(batch))
    positions = None
    if t.timestep_sampling == "random":  # each sample trains its own random subset of the stored steps
        positions = step_subsets(ctx.cfg.seed, batch.epoch, batch.global_index.tolist(),
                                 traj.step_indices.numel(), ctx.cfg.steps_per_sample())
    if order.numel():
        result = update_policy(model=ctx.model, backbone=ctx.backbone, optimizer=ctx.optimizer,
                               accelerator=ctx.accelerator, traj=traj, cond=batch.cond, advantages=advantages,
                               local_orders=[order] * t.inner_epochs, settings=settings,
                               after_step=ctx.ema.update if ctx.ema is not None else None, step_positions=positions)
    else:  # every group without reward spread: nothing to learn from this batch
        result = UpdateResult()
    if t.drop_zero_advantage:
        result.scalars["trained_samples"] = float(order.numel() * ctx.world)
    ctx.preflight_pending = result.preflight_max_abs_log_ratio is None and ctx.preflight_pending
    if result.forward_bytes_per_row is not None:
        st.forward_bytes_per_row = result.forward_bytes_per_row
        _log_forward_bound(ctx, result.forward_bytes_per_row)
    st.skipped_updates += result.skipped_updates
    if result.skipped_updates and ctx.is_main:
        ctx.log(f"epoch {batch.epoch}: {result.skipped_updates} of {result.num_updates} updates skipped "
                f"(NaN or Inf in the loss or the gradients)")
    if result.num_updates and result.skipped_updates == result.num_updates:
        st.consecutive_bad += 1
        if st.consecutive_bad >= t.max_bad_batches:
            save_checkpoint_of(ctx, batch.epoch)
            raise TrainingStopped(f"stopped after {st.consecutive_bad} consecutive epochs without a finite update "
                                  f"(NaN or Inf in the loss or the gradients); checkpoint of the last good state "
                                  f"written")
    else:
        st.consecutive_bad = 0
    if ctx.world > 1 and result.scalars:  # equal shares per process: the mean of means is the global mean
        keys = sorted(result.scalars)
        vals = ctx.accelerator.reduce(torch.tensor([result.scalars[k] for k in keys], device=ctx.device),
                                      reduction="mean")
        result.scalars = dict(zip(keys, vals.tolist()))
    return result, step_norms


def kept_positions(advantages: Tensor, count: int) -> Tensor:
    """The local positions an update trains when zero-advantage samples are dropped: every sample with a
    nonzero advantage, then zero-advantage ones in order until ``count`` (when there are fewer nonzero ones
    than ``count``), in batch order: (min(count, B) or more,) long. ``count`` is chosen by the caller so that
    every process trains as many samples (:func:`update_order`)."""
    nonzero = advantages != 0
    extra = max(0, count - int(nonzero.sum()))
    zeros = torch.nonzero(~nonzero).flatten()[:extra]
    return torch.sort(torch.cat([torch.nonzero(nonzero).flatten(), zeros])).values.cpu()


def update_order(ctx: RunContext, advantages: Tensor) -> Tensor:
    """``train.drop_zero_advantage``: the positions this process trains. The count is the largest number of
    nonzero-advantage samples on any process, rounded up to a multiple of ``updates_per_epoch`` (within the
    local batch), so that every process makes the same optimizer updates with equal minibatches; 0 when no
    sample has an advantage."""
    n = torch.tensor([int((advantages != 0).sum())], device=ctx.device)
    if ctx.world > 1:
        n = ctx.accelerator.reduce(n, reduction="max")
    k, per = int(n), ctx.cfg.train.updates_per_epoch
    count = min(-(-k // per) * per, len(advantages))
    return kept_positions(advantages, count) if k else torch.zeros(0, dtype=torch.long)


def _log_forward_bound(ctx: RunContext, bytes_per_row: float) -> None:
    t = ctx.cfg.train
    if not ctx.is_main:
        return
    rows = row_bound(t.max_forward_rows, t.max_forward_mb, bytes_per_row)
    ckpt = any(getattr(m, "gradient_checkpointing", False) is True for m in ctx.backbone.modules())
    ctx.log(f"training forward: {bytes_per_row / 2**20:.3g} MiB of saved activations per row; "
            f"train.max_forward_mb {t.max_forward_mb:g} -> at most {rows} rows per call"
            + (" (gradient checkpointing is on: the activations recomputed in the backward are not "
               "counted; leave headroom)" if ckpt else ""))


def update_row(ctx: RunContext, proxy: Tensor, adv: GroupAdvantages, values: dict[str, Tensor],
               result: UpdateResult, step_norms: list[float] | None) -> dict:
    """The epoch's training metrics: proxy, rewards, loss statistics, gradient norms and the per-step ratio
    and clip statistics of the off-policy entries (gathered over the processes)."""
    row = {"proxy_reward_mean": float(proxy.mean()), "proxy_reward_std": float(proxy.std(unbiased=False)),
           "zero_spread_groups": int(adv.zero_spread_groups), "lr": ctx.optimizer.param_groups[0]["lr"],
           "grad_norm": sum(result.grad_norm_total) / len(result.grad_norm_total) if result.grad_norm_total else None,
           **result.scalars}
    if result.forward_bytes_per_row is not None:
        row["forward_mb_per_row"] = result.forward_bytes_per_row / 2**20
    if result.skipped_updates:
        row["skipped_updates"] = ctx.state.skipped_updates
    for name, v in values.items():
        row[f"reward/{name}_mean"] = float(_gather(ctx, v).mean())
    if result.preflight_max_abs_log_ratio is not None and ctx.state.preflight_max_abs_log_ratio is None:
        row["preflight_max_abs_log_ratio"] = ctx.state.preflight_max_abs_log_ratio = result.preflight_max_abs_log_ratio
    if step_norms is not None:
        row["grad_norm_step"] = step_norms
        row["grad_norm_spread"] = float(spread(torch.tensor(step_norms))) if min(step_norms) > 0 else None
    if result.entries:
        ent = {k: _gather(ctx, v.to(ctx.device)).cpu() for k, v in result.entries.items()}
        trained = list(ctx.schedule.trained_steps)
        st = per_step_ratio_stats(ent["step_pos"], ent["log_ratio"], ent["advantage"], len(trained),
                                  ctx.cfg.loss.clip_range, log_ratio_used=ent["log_ratio_used"],
                                  bias=ent["bias"] if all_finite(ent["bias"]) else None,
                                  reduction=ctx.cfg.loss.reduction, num_dims=math.prod(ctx.backbone.latent_shape))
        row["trained_steps"] = trained
        row["step_stats"] = {k: v.tolist() for k, v in st.items()}
    return row


def evaluate_epoch(ctx: RunContext, epoch: int) -> dict:
    """Evaluate when due after ``epoch`` (every ``eval.every`` epochs and after the last) and save an image
    grid when one is due; returns the row's fields (``eval_seconds`` always)."""
    cfg, row = ctx.cfg, {}
    last = epoch + 1 == cfg.train.epochs
    if not (cfg.eval.every and ((epoch + 1) % cfg.eval.every == 0 or last)):
        return {"eval_seconds": 0.0}
    t0 = time.perf_counter()
    try:
        res, images = ctx.evaluate()
    except EvaluationRewardError as e:  # skip this evaluation, keep training (training rewards that fail
        res, images = None, None        # stop the run through the bad-batch count)
        row["eval_error"] = str(e)
        if ctx.is_main:
            ctx.log(f"epoch {epoch}: evaluation skipped ({e})")
    fault_point("eval")
    if res is not None:
        row.update(res)
        row.update(normalise_gold(res, ctx.state.base_gold, ctx.golds))
    row["eval_seconds"] = time.perf_counter() - t0
    every = cfg.log.image_every
    if res is not None and ctx.is_main and every and (epoch + 1 - ctx.last_grid >= every or last):
        ctx.last_grid = epoch + 1
        save_eval_grid(ctx, images, epoch + 1)
    return row


def save_eval_grid(ctx: RunContext, images, epochs_done: int) -> None:
    """The evaluation images (up to 8 per prompt; rows = prompts) as ``images/epoch_NNNN.png`` after
    ``epochs_done`` epochs (0: the base model, which the trackers do not get: their step 0 is epoch 0's)
    and, after an epoch, to the trackers at that epoch's step."""
    per = ctx.cfg.eval.samples_per_prompt
    pick = torch.cat([torch.arange(i * per, i * per + min(per, 8)) for i in range(len(ctx.prompts))])
    save_image_grid(images[pick], ctx.out / "images" / f"epoch_{epochs_done:04d}.png", nrow=min(per, 8))
    if epochs_done:
        ctx.trackers.image("images/eval", images[pick], min(per, 8), epochs_done - 1)


def finish_epoch(ctx: RunContext, epoch: int, row: dict, epoch_seconds: float) -> bool:
    """Monitor, metrics row, ``best/``, checkpoint when due; raise :class:`TrainingInterrupted` after a
    signal (once the epoch's checkpoint is written). Returns True when the monitor stops the run."""
    cfg, st = ctx.cfg, ctx.state
    event = ctx.monitor.update(epoch, row.get("proxy_reward_mean"), row.get("gold_normalized_avg"))
    row.update(ctx.monitor.row_fields())
    st.wall_seconds += epoch_seconds
    row["epoch_seconds"], row["wall_seconds"] = epoch_seconds, st.wall_seconds
    st.epoch = epoch + 1
    if ctx.is_main:
        try:
            ctx.metrics.append(row)
        except OSError as e:
            raise OutputWriteError(f"could not write {ctx.metrics.path} ({e.strerror or e}); "
                                   f"{intact_note(ctx.out)}") from None
        ctx.trackers.log(row)
    if event.new_best and cfg.monitor.enabled and (ctx.is_main or ctx.sharded):  # sharded: all processes gather
        save_best(ctx, row)
    due = cfg.log.checkpoint_every and (epoch + 1) % cfg.log.checkpoint_every == 0
    hacking_stop = event.hacking and cfg.monitor.stop_on_hacking
    interrupted = _stop_agreed(ctx)
    if due or epoch + 1 == cfg.train.epochs or hacking_stop or interrupted:
        save_checkpoint_of(ctx, epoch + 1)
    if interrupted:
        raise _interrupted(ctx, f"during epoch {epoch}: checkpoint of epoch {epoch + 1} written")
    if hacking_stop and ctx.is_main:
        ctx.log(f"over-optimization detected at epoch {event.hacking_epoch}: stopping (monitor.stop_on_hacking)")
    return bool(hacking_stop)


def _stop_agreed(ctx: RunContext) -> bool:
    """True on every process when any process received SIGINT/SIGTERM (so all checkpoint together)."""
    flag = torch.tensor([1.0 if stopping.requested() else 0.0], device=ctx.device)
    if ctx.world > 1:
        flag = ctx.accelerator.reduce(flag, reduction="sum")
        if float(flag) > 0:
            stopping.request(signal.SIGTERM)
    return float(flag) > 0


def _interrupted(ctx: RunContext, what: str) -> TrainingInterrupted:
    signum = stopping.stop_signal() or signal.SIGINT
    return TrainingInterrupted(f"interrupted by {signal.Signals(signum).name} {what}; resume with --resume {ctx.out}",
                               signum)


def stop_before_updates(ctx: RunContext, epoch: int, phase: str) -> None:
    """After the rollout or the rewards of ``epoch`` (before any update): on a stop signal, drop the epoch,
    checkpoint the state at its start (nothing of it was applied) and raise :class:`TrainingInterrupted`; in
    a run's first epoch there is nothing to keep, so :class:`~grpo_guard.stopping.StopRequested` is raised
    (a run that had not started is removed, and the same command starts it again)."""
    if not _stop_agreed(ctx):
        return
    if epoch == 0 and ctx.checkpointed_epoch < 0:  # nothing trained yet: as a stop before training
        raise stopping.StopRequested(stopping.stop_signal() or signal.SIGINT, f"in the {phase} of the first epoch")
    if ctx.checkpointed_epoch != epoch:
        save_checkpoint_of(ctx, epoch)
    raise _interrupted(ctx, f"during the {phase} of epoch {epoch} (dropped): checkpoint of epoch {epoch} written")
