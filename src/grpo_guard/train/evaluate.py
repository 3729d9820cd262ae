"""Evaluation on a fixed prompt set with fixed noise.

Every prompt of the run's prompt source is sampled ``samples_per_prompt`` times with noise that
depends only on (seed, sample index), so successive evaluations of a run, and runs with different
methods but the same seed, see the same initial noise. Proxy rewards, gold rewards and the gold
evaluator's set-level metrics are computed on the decoded images. The sampler is ``eval.sampler``: the
training SDE by default (an exploit learned through the SDE need not transfer to ODE sampling, as the
toy worlds showed), or the deterministic ODE with ``eval.num_steps`` steps and ``eval.guidance_scale``,
the paper's protocol for the GPU recipes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import RunConfig
from ..prompts import PromptSet
from ..core._checks import all_finite
from ..golds import AVERAGE_KEY, GoldDeclaration, declare_golds
from ..image_stats import image_stats
from ..rewards import weighted_sum
from .rollout import per_sample_noise, rollout
from .schedule import StepSchedule

__all__ = ["evaluate_policy", "eval_sampler", "normalise_gold", "run_golds", "EvaluationRewardError"]


class EvaluationRewardError(RuntimeError):
    """A reward or the evaluator failed on the evaluation images (e.g. a reward server that is down)."""


@torch.no_grad()
def evaluate_policy(backbone, cfg: RunConfig, all_prompts: PromptSet | list[str], rewards: dict, evaluator, *,
                    device, accelerator=None) -> tuple[dict, Tensor]:
    """Returns (metrics, images): ``eval/<reward>_mean``, ``eval/proxy_reward_mean``, ``gold/<metric>``;
    images (N, C, H, W) in [0, 1] in prompt order (each prompt ``samples_per_prompt`` times). The rewards
    get each prompt's metadata (``all_prompts`` as a :class:`~grpo_guard.prompts.PromptSet`; a plain list
    of prompts has none)."""
    if not isinstance(all_prompts, PromptSet):
        all_prompts = PromptSet(list(all_prompts), [{} for _ in all_prompts])
    s = cfg.sample
    backbone.eval()  # e.g. dropout off; the training loop switches back to train mode for its update
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    eval_prompts, meta = all_prompts.take([i for i in range(len(all_prompts)) for _ in range(cfg.eval.samples_per_prompt)])
    local = list(range(rank, len(eval_prompts), world))
    if world > 1:  # equal shares, padded with copies: every process makes the same model calls (sharded
        local += [local[0]] * (math.ceil(len(eval_prompts) / world) - len(local))  # weights need it)
    schedule, guidance = eval_sampler(cfg, backbone)
    cond = backbone.encode_unique_prompts([eval_prompts[i] for i in local])
    noise = per_sample_noise(cfg.seed, "eval", 0, local, schedule.num_steps + 1, backbone.latent_shape,
                             initial_only=not any(level > 0 for level in schedule.levels()))
    velocity = lambda x, sig, c: backbone(x, sig, c, guidance)  # noqa: E731
    traj = rollout(velocity, cond, noise, schedule, batch_size=s.batch_size, device=device)
    images = backbone.decode(traj.final).float()
    if world > 1:  # gather, put back in sample order (the first copy of each sample)
        idx = torch.tensor(local, device=images.device)
        idx, images = accelerator.gather(idx), accelerator.gather(images.contiguous())
        order = torch.full((len(eval_prompts),), -1, dtype=torch.long)
        for j, i in enumerate(idx.tolist()):
            if order[i] < 0:
                order[i] = j
        images = images[order.to(images.device)]
    images = images.cpu()
    # drift of plain image statistics (darker, flatter, collapsed samples) next to the proxy and gold
    groups = torch.arange(len(eval_prompts)) // cfg.eval.samples_per_prompt
    res: dict = ({f"imgstat/{k}": v for k, v in image_stats(images, groups).items()}
                 if getattr(backbone, "samples_are_images", True) else {})
    proxy_vals, proxy_w = {}, {}
    for spec in cfg.rewards:
        try:
            v = rewards[spec.name](images, eval_prompts, meta).float()
        except Exception as e:  # noqa: BLE001 - any reward failure is reported the same way
            raise EvaluationRewardError(f"reward {spec.name} failed on the evaluation set: "
                                        f"{type(e).__name__}: {e}") from None
        if v.shape != (len(eval_prompts),) or not all_finite(v):
            raise EvaluationRewardError(f"reward {spec.name} returned {tuple(v.shape)} values with NaN/Inf or the "
                                        f"wrong shape on the evaluation set")
        res[f"eval/{spec.name}_mean"] = float(v.mean())
        if spec.role == "proxy":
            proxy_vals[spec.name], proxy_w[spec.name] = v, spec.weight
    res["eval/proxy_reward_mean"] = float(weighted_sum(proxy_vals, proxy_w).mean())
    if evaluator is not None:
        try:
            gold = evaluator(images, eval_prompts)
        except Exception as e:  # noqa: BLE001
            raise EvaluationRewardError(f"evaluator {getattr(evaluator, 'name', type(evaluator).__name__)} failed: "
                                        f"{type(e).__name__}: {e}") from None
        for k, v in gold.items():
            res[f"gold/{k}"] = float(v)
    return res, images


def eval_sampler(cfg: RunConfig, backbone) -> tuple[StepSchedule, float]:
    """The evaluation's ``(schedule, guidance scale)``: the training SDE grid (``eval.sampler: sde``) or the
    ODE (no stochastic step) over ``eval.num_steps`` steps (0: the training count), at
    ``eval.guidance_scale`` (None: the training one)."""
    s, e = cfg.sample, cfg.eval
    guidance = s.guidance_scale if e.guidance_scale is None else e.guidance_scale
    steps = e.num_steps or s.num_steps
    if e.sampler == "ode":
        return StepSchedule(backbone.sigmas(steps, s.shift), [], [], s.noise_level, s.sde_type), guidance
    return StepSchedule.from_config(s, backbone.sigmas(s.num_steps, s.shift), []), guidance


def run_golds(cfg: RunConfig, backbone, rewards: dict, evaluator) -> GoldDeclaration:
    """How the run's golds are read (:mod:`grpo_guard.golds`): from its evaluator, its gold-role rewards
    and whether its backbone's samples are pictures."""
    gold = {spec.name: rewards[spec.name] for spec in cfg.rewards if spec.role == "gold"}
    return declare_golds(evaluator, gold, samples_are_images=getattr(backbone, "samples_are_images", True))


def normalise_gold(res: dict, base: dict | None, golds: GoldDeclaration) -> dict:
    """Each gold metric that ``golds`` declares normalised, relative to the base model's value (1 = base,
    higher = better): ``gold_norm/<name>`` = value / base, or base / value where lower is better; and
    their average ``gold_normalized_avg`` over the metrics declared ``in_average`` (the paper's Table 1
    convention; with no evaluator, the gold rewards, so that a run with gold rewards only, e.g. SD3 / Flux
    with PickScore as gold, also gets an over-optimization monitor). A metric whose base value is not
    positive and finite is left out (its ratio would mean nothing)."""
    out: dict = {}
    if not base:
        return out
    vals = []
    for m in golds.metrics:
        if m.norm_key is None or m.key == AVERAGE_KEY:
            continue
        b, v = base.get(m.key), res.get(m.key)
        if b is None or v is None or not (b > 0 and math.isfinite(b)):
            continue
        n = v / b if m.higher_is_better else (b / v if v > 0 else float("inf"))
        out[m.norm_key] = n
        if m.in_average:
            vals.append(n)
    if vals and golds.get(AVERAGE_KEY) is not None:
        out[AVERAGE_KEY] = sum(vals) / len(vals)
    return out
