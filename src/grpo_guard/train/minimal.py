"""GRPO-Guard in one function, to read top to bottom.

The same algorithm as the full recipe (:mod:`.loop`) on one process, built on the same parts, with none
of the run's bookkeeping: no evaluation, checkpoints, logging, monitor, EMA, fault handling or memory
bounds, and one network call per trained step. On the same config and seed it computes the same losses
as ``train()`` run with ``eval.every=0``, ``train.grad_norm_every=0``, ``train.max_forward_rows=0`` and
``train.max_forward_mb=0`` (a test checks it).

Per epoch:

1. draw ``prompts_per_epoch`` prompts, each repeated ``group_size`` times (one group per prompt);
2. sample every trajectory with the SDE policy, keeping each trained step's state, next state, log-prob
   and mean;
3. score the final images with the proxy reward(s);
4. normalise the rewards within each group: the advantages;
5. make ``updates_per_epoch`` optimizer updates, each on one minibatch: for every trained step, recompute
   the velocity at the stored state, re-score the stored next state under it and take the policy loss
   (RatioNorm's ratio, clipped, weighted by 1/|dt| with GRPO-Guard's ``loss`` settings).

Example::

    from grpo_guard.config import load_config
    from grpo_guard.train.minimal import train_minimal

    cfg = load_config("grpo_guard", ["backbone.params={net: mlp, resolution: 8, layout: pixels}"])
    history = train_minimal(cfg)  # [{"epoch": 0, "loss": ..., "proxy_reward_mean": ...}, ...]
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..backbones import BackboneContext, build_backbone
from ..config import RunConfig
from ..core import group_advantages
from ..prompts import draw_epoch_indices, load_prompt_set
from ..rewards import RewardContext, build_reward, weighted_sum
from ..seeding import derive_generator
from .rollout import per_sample_noise, rollout
from .schedule import StepSchedule
from .update import build_optimizer, clip_grad_norm_, gather_step_batch, step_batch_loss

__all__ = ["train_minimal"]


def train_minimal(cfg: RunConfig, device: str = "cpu") -> list[dict]:
    """Train ``cfg.backbone`` on ``cfg``'s proxy rewards for ``cfg.train.epochs`` epochs; returns one dict per
    epoch with the mean ``loss`` over its (sample, step) entries and the ``proxy_reward_mean`` of its batch."""
    s, t = cfg.sample, cfg.train
    torch.manual_seed(cfg.seed)
    cache = Path(cfg.cache_dir).expanduser()
    backbone = build_backbone(cfg.backbone.name, cfg.backbone.params, BackboneContext(cache, device, cfg.seed))
    backbone = backbone.to(device)
    rctx = RewardContext(cache, device, cfg.seed, getattr(backbone, "image_size", None))
    proxies = {r.name: build_reward(r.name, r.params, rctx) for r in cfg.rewards if r.role == "proxy"}
    weights = {r.name: r.weight for r in cfg.rewards if r.role == "proxy"}
    all_prompts = load_prompt_set(cfg.prompts.source, cfg.prompts.path)  # texts and each one's metadata
    schedule = StepSchedule.from_config(s, backbone.sigmas(s.num_steps, s.shift), cfg.trained_step_indices())
    optimizer = build_optimizer(backbone.trainable_parameters(), t)

    def velocity(x, sigma, cond):
        return backbone(x, sigma, cond, s.guidance_scale)  # classifier-free guidance included

    def reference(x, sigma, cond):  # the frozen base model, for the KL term (kl_coef > 0)
        with backbone.reference():
            return backbone(x, sigma, cond, s.guidance_scale)

    batch = s.prompts_per_epoch * s.group_size
    history = []
    for epoch in range(t.epochs):
        # 1. prompts: global sample i belongs to group i // group_size; a seeded order of the samples
        epoch_prompts = draw_epoch_indices(len(all_prompts), s.prompts_per_epoch, cfg.seed, epoch)
        order = torch.randperm(batch, generator=derive_generator(cfg.seed, "minibatch", epoch))
        prompts, metadata = all_prompts.take([epoch_prompts[i // s.group_size] for i in order.tolist()])

        # 2. rollout with the SDE sampler (no gradients)
        backbone.eval()
        cond = backbone.encode_unique_prompts(prompts)
        noise = per_sample_noise(cfg.seed, "rollout", epoch, order.tolist(), s.num_steps + 1,
                                 backbone.latent_shape)
        traj = rollout(velocity, cond, noise, schedule, reduction=cfg.loss.reduction, batch_size=s.batch_size,
                       device=device)

        # 3. rewards of the decoded images, 4. group-relative advantages
        images = backbone.decode(traj.final).float().cpu()
        rewards = {name: fn(images, prompts, metadata).float().to(device)
                   for name, fn in proxies.items()}
        proxy = torch.empty(batch, device=device)
        proxy[order.to(device)] = weighted_sum(rewards, weights)  # back in global sample order
        adv = group_advantages(proxy, torch.arange(batch, device=device) // s.group_size, std_mode=t.adv_std,
                               eps=t.adv_eps, clip_max=t.adv_clip_max).advantages[order.to(device)]

        # 5. updates: one per minibatch, gradients accumulated over the trained steps
        backbone.train()
        n_steps = len(schedule.trained_steps)
        losses = []
        for _ in range(t.inner_epochs):
            for idx in torch.arange(batch).chunk(t.updates_per_epoch):
                for j in range(n_steps):
                    step = gather_step_batch(traj, idx, [j], cond, adv, schedule)
                    loss, stats = step_batch_loss(velocity, step, schedule, cfg.loss, reference)
                    (loss / n_steps).backward()  # the minibatch's loss: the mean over its steps
                    losses.append(float(stats["loss"]))
                params = backbone.trainable_parameters()
                clip_grad_norm_(params, t.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        history.append({"epoch": epoch, "loss": sum(losses) / len(losses), "proxy_reward_mean": float(proxy.mean())})
    return history
