"""What a training run holds: its components, built once from the config, and its resumable state.

:func:`build_context` builds the backbone, rewards, optimizer, EMA, schedule and logs of a run and
restores the latest checkpoint when resuming; :func:`save_checkpoint_of` and :func:`save_best` write
what an exact resume and ``best/`` need. The recipe (:mod:`.loop`) and the epoch parts (:mod:`.epoch`)
take a :class:`RunContext` and nothing else.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..backbones import BackboneContext, build_backbone
from ..config import RunConfig
from ..golds import GOLDS_FILE, GoldDeclaration
from ..prompts import PromptSet, load_prompt_set
from ..rewards import RewardContext, build_evaluator, build_reward
from ..sharding import full_optimizer_state, load_optimizer_state, reshard, shard_modules
from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .ema import EMA
from .errors import OutputWriteError
from .evaluate import evaluate_policy, run_golds
from .monitor import OveroptimizationMonitor
from .runlog import MetricsLog, atomic_write_text, to_jsonable
from .schedule import StepSchedule
from .trackers import Trackers
from .update import build_optimizer

__all__ = ["RunState", "RunContext", "build_context", "save_checkpoint_of", "save_best", "intact_note"]


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
    # the on-policy check's max |log ratio| at the run's first finite update (a resumed run checks again
    # but logs it only once, so that its metrics equal the uninterrupted run's)
    preflight_max_abs_log_ratio: float | None = None
    ema_steps: int = 0  # optimizer steps the EMA has counted (train.ema_every)


@dataclass
class RunContext:
    """One run's components and state. ``model`` is the backbone as ``accelerate`` prepared it (DDP-wrapped
    with several processes), ``backbone`` the plain module; ``sharded``: FSDP2 slices the transformer's
    weights over the processes (``train.fsdp``)."""

    cfg: RunConfig
    out: Path
    accelerator: object
    log: Callable[[str], None]
    backbone: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    sharded: bool
    rewards: dict
    evaluator: object | None
    prompts: PromptSet
    golds: GoldDeclaration
    schedule: StepSchedule
    metrics: MetricsLog
    monitor: OveroptimizationMonitor
    state: RunState = field(default_factory=RunState)
    trackers: Trackers = field(default_factory=lambda: Trackers([]))  # TensorBoard / W&B, besides metrics.jsonl
    preflight_pending: bool = True  # the on-policy check runs on the first finite update of the process
    last_grid: int = 0  # epochs done when the last image grid was saved
    checkpointed_epoch: int = -1  # the epoch count of the newest checkpoint this process wrote or resumed from

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def batch_size(self) -> int:
        """Samples per epoch over all processes (prompts_per_epoch x group_size)."""
        return self.cfg.sample.prompts_per_epoch * self.cfg.sample.group_size

    @property
    def proxy_weights(self) -> dict[str, float]:
        return {r.name: r.weight for r in self.cfg.rewards if r.role == "proxy"}

    @property
    def gold_rewards(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.cfg.rewards if r.role == "gold")

    def evaluate(self) -> tuple[dict, Tensor]:
        """The evaluation metrics and images of the current weights (the EMA weights when EMA is on)."""
        try:
            with (self.ema.applied() if self.ema is not None else nullcontext()):
                return evaluate_policy(self.backbone, self.cfg, self.prompts, self.rewards, self.evaluator,
                                       device=self.device, accelerator=self.accelerator)
        finally:
            if self.sharded:  # before the EMA swap back and any read of the weights (see sharding.py)
                reshard(self.backbone)


def build_context(cfg: RunConfig, out: Path, accelerator, log, resume: bool) -> RunContext:
    """Build every component of a run from ``cfg`` (seeded by ``cfg.seed``) and, with ``resume``, restore
    the latest valid checkpoint in ``out``."""
    device, world, is_main = accelerator.device, accelerator.num_processes, accelerator.is_main_process
    s, t = cfg.sample, cfg.train
    prompts = load_prompt_set(cfg.prompts.source, cfg.prompts.path)  # a bad prompt file fails before any model loads
    torch.manual_seed(cfg.seed)
    cache_dir = Path(cfg.cache_dir).expanduser()
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
    rctx = RewardContext(cache_dir, device, cfg.seed, getattr(backbone, "image_size", None),
                         verbose=is_main and cfg.log.progress)
    rewards = {spec.name: build_reward(spec.name, spec.params, rctx) for spec in cfg.rewards}
    evaluator = build_evaluator(cfg.eval.evaluator, cfg.eval.evaluator_params, rctx) if cfg.eval.evaluator else None
    schedule = StepSchedule.for_epoch(cfg, backbone.sigmas(s.num_steps, s.shift), 0)
    params = backbone.trainable_parameters()
    if not params:
        raise ValueError("backbone: has no trainable parameters")
    optimizer = build_optimizer(params, t)
    ema = EMA(params, t.ema_decay, t.ema_every) if t.ema_decay > 0 else None
    if sharded:  # FSDP2 reduce-scatters the gradients itself: no DDP wrapper around the backbone
        model, optimizer = backbone, accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(backbone, optimizer)
    golds = run_golds(cfg, backbone, rewards, evaluator)
    if is_main:  # how the golds are read, for the summary, study.md and the report (grpo_guard/golds.py)
        atomic_write_text(out / GOLDS_FILE, json.dumps(golds.to_dict(), indent=1))
    ctx = RunContext(cfg, out, accelerator, log, backbone, model, optimizer, ema, sharded, rewards,
                     evaluator, prompts, golds, schedule, MetricsLog(out / "metrics.jsonl"),
                     OveroptimizationMonitor(cfg.monitor))
    if resume:
        _restore(ctx)
    ctx.last_grid = ctx.state.epoch  # image grids: at the first evaluation >= image_every epochs after the last
    accelerator.wait_for_everyone()
    return ctx


def _restore(ctx: RunContext) -> None:
    """Load the latest valid checkpoint into ``ctx`` and drop the metrics rows after it (none: start over)."""
    ckpt = latest_checkpoint(ctx.out, log=ctx.log if ctx.is_main else (lambda *_: None))
    if ckpt is None:
        ctx.log(f"no valid checkpoint in {ctx.out}: starting from epoch 0")
        if ctx.is_main and ctx.metrics.path.exists():
            ctx.metrics.truncate_before(0)
        return
    loaded = load_checkpoint(ckpt)
    ctx.backbone.load_trainable_state_dict(loaded["trainable"])
    load_optimizer_state(ctx.optimizer, loaded["optimizer"])
    if ctx.ema is not None and loaded["ema"] is not None:
        ctx.ema.load_state_dict(loaded["ema"])
    ctx.state = RunState(**loaded["state"])
    ctx.checkpointed_epoch = ctx.state.epoch
    if ctx.ema is not None:
        ctx.ema.steps = ctx.state.ema_steps
    ctx.monitor.load_state_dict(ctx.state.monitor)
    if ctx.is_main:
        ctx.metrics.truncate_before(ctx.state.epoch)
        ctx.log(f"resumed from {ckpt} at epoch {ctx.state.epoch}")


def save_checkpoint_of(ctx: RunContext, epoch: int) -> None:
    """Checkpoint ``epoch`` completed epochs: trainable weights, optimizer, EMA and :class:`RunState`
    (every process takes part when the weights are sharded; the main process writes)."""
    ctx.state.monitor = ctx.monitor.state_dict()
    ctx.state.ema_steps = ctx.ema.steps if ctx.ema is not None else 0
    if ctx.is_main or ctx.sharded:  # sharded weights: every process takes part in gathering them
        trainable, opt_state = ctx.backbone.trainable_state_dict(), full_optimizer_state(ctx.optimizer)
        ema_state = ctx.ema.state_dict() if ctx.ema is not None else None
    if ctx.is_main:
        ctx.metrics.sync()  # the rows up to this checkpoint are durable before it is
        state = {k: v for k, v in ctx.state.__dict__.items() if k != "epoch"}
        try:
            save_checkpoint(ctx.out, epoch, trainable=trainable, optimizer=opt_state, ema=ema_state, state=state,
                            keep=ctx.cfg.log.keep_checkpoints)
        except OSError as e:
            raise OutputWriteError(f"could not write the checkpoint of epoch {epoch} in {ctx.out / 'checkpoints'} "
                                   f"({e.strerror or e}); {intact_note(ctx.out)}") from None
    ctx.checkpointed_epoch = epoch
    ctx.accelerator.wait_for_everyone()


def intact_note(out: Path) -> str:
    """What a user can resume from after a failed write in ``out``."""
    ckpts = list_checkpoints(out)
    return (f"the previous checkpoint {ckpts[-1].name} is intact (resume with --resume {out})" if ckpts
            else "no checkpoint had been written yet")


def save_best(ctx: RunContext, row: dict) -> None:
    """Keep the best-gold weights (EMA weights when EMA is on) in ``best/``. Sharded weights are gathered
    first: then every process calls this and only the main one writes."""
    tensors = ctx.backbone.trainable_state_dict()
    if ctx.ema is not None:
        tensors = dict(zip(tensors, ctx.ema.state_dict().values()))
    if not ctx.is_main:
        return
    best = ctx.out / "best"
    best.mkdir(exist_ok=True)
    tmp = best / ".trainable.tmp.safetensors"
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp)
    os.replace(tmp, best / "trainable.safetensors")
    info = {"epoch": row["epoch"], "gold_normalized_avg": row.get("gold_normalized_avg"),
            "proxy_reward_mean": row.get("proxy_reward_mean")}
    atomic_write_text(best / "info.json", json.dumps(to_jsonable(info)))
