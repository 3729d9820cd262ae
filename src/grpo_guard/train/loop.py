"""The training recipe: one online-RL loop (Flow-GRPO / GRPO-Guard) for every backbone.

Per epoch, top to bottom:

1. draw ``prompts_per_epoch`` prompts, each repeated ``group_size`` times (one group per prompt);
2. roll out every sample with the SDE sampler, keeping each trained step's state, next state,
   log-prob and mean (:func:`rollout`);
3. decode and score: proxy rewards (weighted sum, optimised) and gold rewards (logged);
4. group-relative advantages over the whole (gathered) batch;
5. ``inner_epochs x updates_per_epoch`` optimizer updates with :func:`grpo_guard.policy_loss`
   (the first is on-policy and checked to have ratio 1 before any update: the preflight);
6. per-step diagnostics, evaluation on a fixed prompt set with fixed noise (gold metrics
   normalised to the base model), the over-optimization monitor, metrics.jsonl, image grids,
   checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..backbones import BackboneContext, build_backbone
from ..config import RunConfig, dump_config
from ..core import group_advantages, per_step_ratio_stats, spread
from ..core._checks import all_finite
from ..prompts import draw_epoch_prompts, load_prompts
from ..rewards import RewardContext, build_evaluator, build_reward, weighted_sum
from ..seeding import derive_generator
from ..sharding import full_optimizer_state, load_optimizer_state, reshard, shard_modules
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .ema import EMA
from .evaluate import EvaluationRewardError, evaluate_policy, normalise_gold
from .monitor import OveroptimizationMonitor
from .rollout import per_sample_noise, rollout
from .faults import StopRequest, fault_point
from .runlog import MetricsLog, RunDirError, RunLock, atomic_write_text, save_image_grid, to_jsonable
from .update import PreflightError, UpdateSettings, build_optimizer, measure_step_grad_norms, row_bound, update_policy

__all__ = ["train", "TrainingStopped", "TrainingInterrupted", "OutputWriteError", "RunDirError", "PreflightError", "prepare_run_dir"]


class OutputWriteError(RuntimeError):
    """A checkpoint or a metrics line could not be written (disk full, directory gone or read-only)."""


class TrainingStopped(RuntimeError):
    """The run stopped cleanly before its last epoch (too many bad batches); a checkpoint was written."""


class TrainingInterrupted(TrainingStopped):
    """SIGINT or SIGTERM: the run wrote a checkpoint at the end of the current epoch and stopped."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):  # picklable with its signal number (it crosses from worker processes)
        return type(self), (str(self), self.signum)


@dataclass
class RunState:
    """Everything besides weights and optimizer that an exact resume needs (JSON-able)."""

    epoch: int = 0  # completed epochs
    base_gold: dict | None = None  # evaluation metrics of the base model (normalisation = 1)
    base_proxy: float | None = None
    consecutive_bad: int = 0
    skipped_updates: int = 0
    skipped_batches: int = 0
    wall_seconds: float = 0.0
    monitor: dict = field(default_factory=dict)
    # train.max_forward_mb: saved-activation bytes per row of the training forward, measured on the run's
    # first training call (kept so that a resumed run groups its calls exactly as the uninterrupted one)
    forward_bytes_per_row: float | None = None


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


def _gather_cat(accelerator, t: Tensor) -> Tensor:
    return accelerator.gather(t.contiguous()) if accelerator.num_processes > 1 else t


def _check_reward(name: str, value, n: int) -> str | None:
    if not torch.is_tensor(value) or value.shape != (n,):
        shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        return f"reward {name} returned {shape}, expected ({n},)"
    if not all_finite(value):
        return f"reward {name} returned NaN or Inf"
    return None


def train(cfg: RunConfig, output_dir: str | Path, *, resume: bool = False, log=print, accelerator=None) -> Path:
    """Train per ``cfg`` into ``output_dir`` (or resume the run there). Returns the run directory."""
    from accelerate import Accelerator

    out = Path(output_dir)
    if accelerator is None:
        from accelerate.state import AcceleratorState

        # several runs in one process (the demo, tests) may differ in mixed precision: accelerate keeps
        # it in a process-wide singleton, so clear that (the distributed PartialState is kept)
        AcceleratorState._reset_state()
        accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.train.mixed_precision)
    is_main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    created = not out.exists()
    if is_main:
        prepare_run_dir(out, resume)
    accelerator.wait_for_everyone()
    lock = RunLock(out)
    if is_main:
        lock.acquire()
    try:
        with StopRequest() as stop:
            return _train(cfg, out, resume, accelerator, rank, world, is_main, log, stop)
    except BaseException:
        if is_main and not resume and not (out / "metrics.jsonl").exists():
            _remove_unstarted_run(out, created)  # a run that failed before its first epoch leaves nothing
        raise
    finally:
        lock.release()


def _remove_unstarted_run(out: Path, created: bool) -> None:
    import shutil

    for name in ("config.yaml", "base_eval.json", "images", "checkpoints", "best"):
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


def _train(cfg: RunConfig, out: Path, resume: bool, accelerator, rank: int, world: int, is_main: bool, log,
           stop: StopRequest) -> Path:
    device = accelerator.device
    s, t = cfg.sample, cfg.train
    batch = s.prompts_per_epoch * s.group_size
    if batch % (world * t.updates_per_epoch) != 0:
        raise ValueError(f"sample: prompts_per_epoch x group_size = {batch} must be divisible by "
                         f"processes x train.updates_per_epoch = {world} x {t.updates_per_epoch}")
    if is_main:
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        (out / "images").mkdir(exist_ok=True)
    torch.manual_seed(cfg.seed)
    cache_dir = Path(cfg.cache_dir).expanduser()

    # -- components --------------------------------------------------------------------------------
    backbone = build_backbone(cfg.backbone.name, cfg.backbone.params,
                              BackboneContext(cache_dir, device, cfg.seed, verbose=is_main)).to(device)
    sharded = t.fsdp and world > 1
    if sharded:  # FSDP2: each process keeps a slice of the transformer's weights (grpo_guard/sharding.py)
        try:
            units = backbone.fsdp_units()
        except NotImplementedError as e:
            raise ValueError(f"train.fsdp: {e}") from None
        shard_modules(units, world, device)
    elif t.fsdp and is_main:
        log("train.fsdp: one process, nothing to shard (launch several with accelerate launch or torchrun)")
    image_size = getattr(backbone, "image_size", None)
    rctx = RewardContext(cache_dir, device, cfg.seed, image_size, verbose=is_main and cfg.log.progress)
    rewards = {spec.name: build_reward(spec.name, spec.params, rctx) for spec in cfg.rewards}
    proxy_weights = {r.name: r.weight for r in cfg.rewards if r.role == "proxy"}
    gold_rewards = tuple(r.name for r in cfg.rewards if r.role == "gold")
    evaluator = build_evaluator(cfg.eval.evaluator, cfg.eval.evaluator_params, rctx) if cfg.eval.evaluator else None
    all_prompts = load_prompts(cfg.prompts.source, cfg.prompts.path, cfg.prompts.attributes)
    sigmas = backbone.sigmas(s.num_steps, s.shift)
    trained_steps = cfg.trained_step_indices()
    sde_steps = list(range(*s.sde_window)) if s.sde_window else list(range(s.num_steps))
    params = backbone.trainable_parameters()
    if not params:
        raise ValueError("backbone: has no trainable parameters")
    optimizer = build_optimizer(params, t)
    ema = EMA(params, t.ema_decay) if t.ema_decay > 0 else None
    if sharded:  # FSDP2 reduce-scatters the gradients itself: no DDP wrapper around the backbone
        model, optimizer = backbone, accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(backbone, optimizer)
    metrics = MetricsLog(out / "metrics.jsonl")
    monitor = OveroptimizationMonitor(cfg.monitor)

    # -- resume ----------------------------------------------------------------------------------------
    state = RunState()
    if resume:
        ckpt = latest_checkpoint(out, log=log if is_main else (lambda *_: None))
        if ckpt is None:
            log(f"no valid checkpoint in {out}: starting from epoch 0")
            if is_main and metrics.path.exists():
                metrics.truncate_before(0)
        else:
            loaded = load_checkpoint(ckpt)
            backbone.load_trainable_state_dict(loaded["trainable"])
            load_optimizer_state(optimizer, loaded["optimizer"])
            if ema is not None and loaded["ema"] is not None:
                ema.load_state_dict(loaded["ema"])
            state = RunState(**loaded["state"])
            monitor.load_state_dict(state.monitor)
            if is_main:
                metrics.truncate_before(state.epoch)
                log(f"resumed from {ckpt} at epoch {state.epoch}")
    accelerator.wait_for_everyone()

    settings_base = dict(sigmas=sigmas, noise_level=s.noise_level, sde_type=s.sde_type, guidance_scale=s.guidance_scale,
                         loss=cfg.loss, updates_per_epoch=t.updates_per_epoch, inner_epochs=t.inner_epochs,
                         max_grad_norm=t.max_grad_norm, max_forward_rows=t.max_forward_rows,
                         max_forward_mb=t.max_forward_mb)
    velocity = lambda x, sig, c: backbone(x, sig, c, s.guidance_scale)  # noqa: E731

    def evaluate() -> tuple[dict, Tensor]:
        try:
            with (ema.applied() if ema is not None else nullcontext()):
                return evaluate_policy(backbone, cfg, all_prompts, rewards, evaluator, device=device,
                                       accelerator=accelerator)
        finally:
            if sharded:  # before the EMA swap back and any read of the weights (see sharding.py)
                reshard(backbone)

    if cfg.eval.every and state.base_gold is None:
        t_eval = time.perf_counter()
        try:
            base, _ = evaluate()
        except EvaluationRewardError as e:
            raise TrainingStopped(f"the base model's evaluation failed before training ({e})") from None
        state.base_gold = {k: v for k, v in base.items()
                           if k.startswith("gold/") or k in {f"eval/{n}_mean" for n in gold_rewards}}
        state.base_proxy = base["eval/proxy_reward_mean"]
        if is_main:  # the base model's evaluation: the common start of every run with this seed
            base_row = {**base, **normalise_gold(base, state.base_gold, evaluator, gold_rewards)}
            atomic_write_text(out / "base_eval.json", json.dumps(to_jsonable(base_row), indent=1))
            gold = ", ".join(f"{k[5:]} {v:.4g}" for k, v in state.base_gold.items())
            log(f"base model: eval proxy {state.base_proxy:.4f}" + (f", gold {gold}" if gold else "")
                + f" ({time.perf_counter() - t_eval:.1f} s)")

    # -- the epochs ----------------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    bar = tqdm(range(state.epoch, t.epochs), initial=state.epoch, total=t.epochs, desc="epochs",
               disable=not (is_main and cfg.log.progress), dynamic_ncols=True)
    preflight_pending = True
    last_grid = state.epoch  # image grids are saved at the first evaluation >= image_every epochs after the last
    for epoch in bar:
        t_epoch = time.perf_counter()
        # 1. prompts and ownership: global sample i has prompt i // G; rank r owns positions r, r + world, ...
        #    of a seeded permutation, so every global minibatch holds equal shares of every rank
        epoch_prompts = draw_epoch_prompts(all_prompts, s.prompts_per_epoch, cfg.seed, epoch)
        perm = torch.randperm(batch, generator=derive_generator(cfg.seed, "minibatch", epoch))
        local_global = perm[rank::world]
        local_prompts = [epoch_prompts[i // s.group_size] for i in local_global.tolist()]

        # 2. rollout
        t0 = time.perf_counter()
        backbone.eval()
        cond = backbone.encode_unique_prompts(local_prompts)
        noise = per_sample_noise(cfg.seed, "rollout", epoch, local_global.tolist(), s.num_steps + 1,
                                 backbone.latent_shape)
        with accelerator.autocast():
            traj = rollout(velocity, cond, noise, sigmas, trained_steps, sde_steps=sde_steps,
                           noise_level=s.noise_level, sde_type=s.sde_type, reduction=cfg.loss.reduction,
                           batch_size=s.batch_size, device=device)
        if sharded:
            reshard(backbone)
        rollout_s = time.perf_counter() - t0
        fault_point("rollout")

        # 3. rewards
        t0 = time.perf_counter()
        images = backbone.decode(traj.final).float().cpu()
        values, problem = {}, None
        for spec in cfg.rewards:
            try:
                v = rewards[spec.name](images, local_prompts, [{} for _ in local_prompts])
            except Exception as e:  # a failing reward model skips the batch, like a bad value
                v, problem = None, f"reward {spec.name} raised {type(e).__name__}: {e}"
            problem = problem or _check_reward(spec.name, v, len(local_prompts))
            if problem:
                break
            values[spec.name] = v.float().to(device)
        bad = torch.tensor([1.0 if problem else 0.0], device=device)
        if world > 1:
            bad = accelerator.reduce(bad, reduction="sum")
        reward_s = time.perf_counter() - t0
        row: dict = {"epoch": epoch}
        if float(bad) > 0:
            state.consecutive_bad += 1
            state.skipped_batches += 1
            if is_main:
                log(f"epoch {epoch}: batch skipped ({problem or 'a bad reward on another process'})")
            if state.consecutive_bad >= t.max_bad_batches:
                _checkpoint(out, epoch, backbone, optimizer, ema, state, monitor, cfg, is_main, accelerator, sharded)
                raise TrainingStopped(f"stopped after {state.consecutive_bad} consecutive bad reward batches "
                                      f"(last: {problem}); checkpoint of the last good state written")
            row.update({"skipped": True, "skipped_batches": state.skipped_batches})
        else:
            proxy_local = weighted_sum({k: values[k] for k in proxy_weights}, proxy_weights)

            # 4. advantages over the gathered batch
            g_idx = _gather_cat(accelerator, local_global.to(device))
            g_proxy = _gather_cat(accelerator, proxy_local)
            full = torch.empty(batch, device=device)
            full[g_idx] = g_proxy
            adv = group_advantages(full, torch.arange(batch, device=device) // s.group_size, std_mode=t.adv_std,
                                   eps=t.adv_eps, clip_max=t.adv_clip_max)
            adv_local = adv.advantages[local_global.to(device)]

            # 5. update
            t0 = time.perf_counter()
            backbone.train()
            settings = UpdateSettings(**settings_base, forward_bytes_per_row=state.forward_bytes_per_row,
                                      preflight_tol=t.preflight_tol if preflight_pending else None)
            step_norms = None
            if t.grad_norm_every and epoch % t.grad_norm_every == 0:
                n_meas = torch.arange(min(t.grad_norm_samples, len(local_prompts)))
                step_norms = measure_step_grad_norms(backbone, traj, cond, adv_local, settings, n_meas)
            result = update_policy(model=model, backbone=backbone, optimizer=optimizer, accelerator=accelerator,
                                   traj=traj, cond=cond, advantages=adv_local,
                                   local_orders=[torch.arange(len(local_prompts))] * t.inner_epochs,
                                   settings=settings, after_step=ema.update if ema is not None else None)
            preflight_pending = result.preflight_max_abs_log_ratio is None and preflight_pending
            if result.forward_bytes_per_row is not None:
                forward_bytes_per_row = state.forward_bytes_per_row = result.forward_bytes_per_row
                rows = row_bound(t.max_forward_rows, t.max_forward_mb, forward_bytes_per_row)
                row["forward_mb_per_row"] = forward_bytes_per_row / 2**20
                if is_main:
                    ckpt = any(getattr(m, "gradient_checkpointing", False) is True for m in backbone.modules())
                    log(f"training forward: {forward_bytes_per_row / 2**20:.3g} MiB of saved activations per row; "
                        f"train.max_forward_mb {t.max_forward_mb:g} -> at most {rows} rows per call"
                        + (" (gradient checkpointing is on: the activations recomputed in the backward are not "
                           "counted; leave headroom)" if ckpt else ""))
            update_s = time.perf_counter() - t0
            state.skipped_updates += result.skipped_updates
            if result.skipped_updates:
                row["skipped_updates"] = state.skipped_updates
                if is_main:
                    log(f"epoch {epoch}: {result.skipped_updates} of {result.num_updates} updates skipped "
                        f"(NaN or Inf in the loss or the gradients)")
            if result.num_updates and result.skipped_updates == result.num_updates:
                state.consecutive_bad += 1
                if state.consecutive_bad >= t.max_bad_batches:
                    _checkpoint(out, epoch, backbone, optimizer, ema, state, monitor, cfg, is_main, accelerator,
                                sharded)
                    raise TrainingStopped(f"stopped after {state.consecutive_bad} consecutive epochs without a finite "
                                          f"update (NaN or Inf in the loss or the gradients); checkpoint of the last "
                                          f"good state written")
            else:
                state.consecutive_bad = 0
            if world > 1 and result.scalars:  # equal shares per process: the mean of means is the global mean
                keys = sorted(result.scalars)
                vals = accelerator.reduce(torch.tensor([result.scalars[k] for k in keys], device=device),
                                          reduction="mean")
                result.scalars = dict(zip(keys, vals.tolist()))

            # 6. diagnostics
            row.update({
                "proxy_reward_mean": float(full.mean()),
                "proxy_reward_std": float(full.std(unbiased=False)),
                "zero_spread_groups": int(adv.zero_spread_groups),
                "lr": optimizer.param_groups[0]["lr"],
                "grad_norm": sum(result.grad_norm_total) / len(result.grad_norm_total),
                **{k: v for k, v in result.scalars.items()},
            })
            for name, v in values.items():
                gv = _gather_cat(accelerator, v)
                row[f"reward/{name}_mean"] = float(gv.mean())
            if result.preflight_max_abs_log_ratio is not None:
                row["preflight_max_abs_log_ratio"] = result.preflight_max_abs_log_ratio
            if step_norms is not None:
                row["grad_norm_step"] = step_norms
                row["grad_norm_spread"] = float(spread(torch.tensor(step_norms))) if min(step_norms) > 0 else None
            if result.entries:
                ent = {k: _gather_cat(accelerator, v.to(device)).cpu() for k, v in result.entries.items()}
                st = per_step_ratio_stats(ent["step_pos"], ent["log_ratio"], ent["advantage"], len(trained_steps),
                                          cfg.loss.clip_range, log_ratio_used=ent["log_ratio_used"],
                                          bias=ent["bias"] if all_finite(ent["bias"]) else None,
                                          reduction=cfg.loss.reduction,
                                          num_dims=math.prod(backbone.latent_shape))
                row["trained_steps"] = trained_steps
                row["step_stats"] = {k: v.tolist() for k, v in st.items()}
            row["rollout_seconds"], row["reward_seconds"], row["update_seconds"] = rollout_s, reward_s, update_s

        # evaluation, monitor, images
        eval_s = 0.0
        if cfg.eval.every and ((epoch + 1) % cfg.eval.every == 0 or epoch + 1 == t.epochs):
            t0 = time.perf_counter()
            try:
                res, eval_images = evaluate()
            except EvaluationRewardError as e:  # skip this evaluation, keep training (training rewards
                res, eval_images = None, None   # that fail stop the run through the bad-batch count)
                row["eval_error"] = str(e)
                if is_main:
                    log(f"epoch {epoch}: evaluation skipped ({e})")
            fault_point("eval")
            if res is not None:
                row.update(res)
                row.update(normalise_gold(res, state.base_gold, evaluator, gold_rewards))
            eval_s = time.perf_counter() - t0
            if res is not None and is_main and cfg.log.image_every and (epoch + 1 - last_grid >= cfg.log.image_every or epoch + 1 == t.epochs):
                last_grid = epoch + 1
                per = cfg.eval.samples_per_prompt
                pick = torch.cat([torch.arange(i * per, i * per + min(per, 8)) for i in range(len(all_prompts))])
                save_image_grid(eval_images[pick], out / "images" / f"epoch_{epoch + 1:04d}.png", nrow=min(per, 8))
        row["eval_seconds"] = eval_s
        event = monitor.update(epoch, row.get("proxy_reward_mean"), row.get("gold_normalized_avg"))
        row.update(monitor.row_fields())
        epoch_s = time.perf_counter() - t_epoch
        state.wall_seconds += epoch_s
        row["epoch_seconds"] = epoch_s
        row["wall_seconds"] = state.wall_seconds
        state.epoch = epoch + 1
        if is_main:
            try:
                metrics.append(row)
            except OSError as e:
                raise OutputWriteError(f"could not write {metrics.path} ({e.strerror or e}); "
                                       f"{_intact_note(out)}") from None
        if event.new_best and cfg.monitor.enabled and (is_main or sharded):  # sharded: all processes gather
            _save_best(out, backbone, ema, row, write=is_main)
        bar.set_postfix_str(_postfix(row))
        due = cfg.log.checkpoint_every and (epoch + 1) % cfg.log.checkpoint_every == 0
        hacking_stop = event.hacking and cfg.monitor.stop_on_hacking
        interrupted = _stop_agreed(stop, accelerator)
        if due or epoch + 1 == t.epochs or hacking_stop or interrupted:
            _checkpoint(out, epoch + 1, backbone, optimizer, ema, state, monitor, cfg, is_main, accelerator, sharded)
        if interrupted:
            name = signal.Signals(stop.signum).name if stop.signum else "a signal"
            raise TrainingInterrupted(f"interrupted by {name}: checkpoint of epoch {epoch + 1} written; "
                                      f"resume with --resume {out}", stop.signum or signal.SIGINT)
        if hacking_stop:
            if is_main:
                log(f"over-optimization detected at epoch {event.hacking_epoch}: stopping (monitor.stop_on_hacking)")
            break
    bar.close()
    accelerator.wait_for_everyone()
    return out


def _stop_agreed(stop: StopRequest, accelerator) -> bool:
    """True on every process when any process received SIGINT/SIGTERM (so all checkpoint together)."""
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
        if float(flag) > 0 and not stop.requested:
            stop.requested, stop.signum = True, signal.SIGTERM
    return float(flag) > 0


def _postfix(row: dict) -> str:
    parts = []
    for key, label in (("proxy_reward_mean", "proxy"), ("gold_normalized_avg", "gold"), ("clip_frac", "clip"),
                       ("approx_kl", "kl")):
        v = row.get(key)
        if isinstance(v, (int, float)) and v is not None:
            parts.append(f"{label} {v:.3g}")
    return " ".join(parts)


def _checkpoint(out, epoch, backbone, optimizer, ema, state, monitor, cfg, is_main, accelerator,
                sharded: bool = False) -> None:
    state.monitor = monitor.state_dict()
    if is_main or sharded:  # sharded weights: every process takes part in gathering them
        trainable, opt_state = backbone.trainable_state_dict(), full_optimizer_state(optimizer)
        ema_state = ema.state_dict() if ema is not None else None
    if is_main:
        MetricsLog(out / "metrics.jsonl").sync()  # the rows up to this checkpoint are durable before it is
        st = {k: v for k, v in state.__dict__.items()}
        st["epoch"] = epoch
        try:
            save_checkpoint(out, epoch, trainable=trainable, optimizer=opt_state, ema=ema_state,
                            state={k: v for k, v in st.items() if k != "epoch"}, keep=cfg.log.keep_checkpoints)
        except OSError as e:
            raise OutputWriteError(f"could not write the checkpoint of epoch {epoch} in {out / 'checkpoints'} "
                                   f"({e.strerror or e}); {_intact_note(out)}") from None
    accelerator.wait_for_everyone()


def _intact_note(out: Path) -> str:
    from .checkpoint import list_checkpoints

    ckpts = list_checkpoints(out)
    return (f"the previous checkpoint {ckpts[-1].name} is intact (resume with --resume {out})" if ckpts
            else "no checkpoint had been written yet")


def _save_best(out: Path, backbone, ema, row: dict, write: bool = True) -> None:
    """Keep the best-gold weights (EMA weights when EMA is on) in ``best/``. Sharded weights are gathered
    first: then every process calls this and only the one with ``write`` saves."""
    from safetensors.torch import save_file

    tensors = backbone.trainable_state_dict()
    if ema is not None:
        tensors = dict(zip(tensors, ema.state_dict().values()))
    if not write:
        return
    best = out / "best"
    best.mkdir(exist_ok=True)
    tmp = best / ".trainable.tmp.safetensors"
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp)
    os.replace(tmp, best / "trainable.safetensors")
    atomic_write_text(best / "info.json", json.dumps(to_jsonable({"epoch": row["epoch"],
                                                                   "gold_normalized_avg": row.get("gold_normalized_avg"),
                                                                   "proxy_reward_mean": row.get("proxy_reward_mean")})))
