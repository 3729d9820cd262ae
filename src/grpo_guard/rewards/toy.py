"""Toy-world rewards: adapters from the digits world (``grpo_guard.world``) to the reward interface.

Images arrive in [0, 1] (B, 1, R, R) and are mapped to the world's [-1, 1]; the prompted digit is
parsed from each prompt. Trained reward models are cached under ``ctx.cache_dir / "world"``. Their seeds are fixed (default 0),
not the run's seed: every run of a study is scored by the same proxy and gold models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..world.data import labels_from_prompts
from ..world.gold import DEFAULT_GOLD_AVERAGE, GOLD_HIGHER_IS_BETTER, GoldConfig, train_gold
from ..world.proxies import build_proxy, hidden_aesthetic
from .base import RewardContext

__all__ = ["make_classifier_reward", "make_aesthetic_reward", "make_ink_reward", "make_hidden_aesthetic_reward",
           "make_gold_evaluator"]


def _world_cache(ctx: RewardContext) -> Path:
    return Path(ctx.cache_dir).expanduser() / "world"


#: reward models look at images of at most this side (larger images are area-downsampled first):
#: training them at 64 px costs minutes on a CPU and adds nothing the 32 px models cannot see
MAX_REWARD_RESOLUTION = 32


def _resolution(params: dict, ctx: RewardContext) -> int:
    res = params.pop("resolution", None)
    if res is None:
        if ctx.image_size is None:
            raise ValueError("resolution: unknown image size; pass rewards[].params.resolution")
        res = min(int(ctx.image_size), MAX_REWARD_RESOLUTION)
    return int(res)


def _to_world(images: Tensor, resolution: int) -> Tensor:
    """[0, 1] images (B, 1, R, R) -> the world's [-1, 1] at ``resolution`` (area-downsampled if R is larger)."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images: expected (B, 1, R, R) grey images, got {tuple(images.shape)}")
    side = images.shape[-1]
    if side != resolution:
        if side % resolution:
            raise ValueError(f"images: side {side} is not a multiple of the reward model's resolution {resolution}")
        images = torch.nn.functional.avg_pool2d(images.float(), side // resolution)
    return images.float() * 2 - 1


class _WorldReward:
    def __init__(self, name: str, fn, resolution: int):
        self.name = name
        self._fn = fn
        self.resolution = resolution

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        labels = labels_from_prompts(list(prompts))
        return self._fn(_to_world(images.cpu(), self.resolution), labels).float()


def _make_proxy(kind: str, params: dict, ctx: RewardContext) -> _WorldReward:
    res = _resolution(params, ctx)
    fn = build_proxy(kind, res, seed=params.pop("seed", 0), split_seed=params.pop("split_seed", 0), cache_dir=_world_cache(ctx),
                     verbose=ctx.verbose, **params)
    return _WorldReward(f"toy_{kind}" if kind != "ink" else "ink", fn, res)


def make_classifier_reward(params: dict, ctx: RewardContext) -> _WorldReward:
    """Logit margin of the prompted digit under a small proxy classifier that a high-frequency class
    cue can fool (the GenEval / OCR analogue)."""
    return _make_proxy("classifier", params, ctx)


def make_aesthetic_reward(params: dict, ctx: RewardContext) -> _WorldReward:
    """A learned regressor of stroke contrast with a texture bias (the PickScore analogue)."""
    return _make_proxy("aesthetic", params, ctx)


def make_ink_reward(params: dict, ctx: RewardContext) -> _WorldReward:
    """Mean ink, a single-route hackable reward (baseline)."""
    return _make_proxy("ink", params, ctx)


def make_hidden_aesthetic_reward(params: dict, ctx: RewardContext) -> _WorldReward:
    """The true stroke-contrast score the aesthetic proxy was trained to regress (a gold 'true attribute')."""
    res = _resolution(params, ctx)
    if params:
        raise ValueError(f"params: toy_hidden_aesthetic takes only 'resolution', got {sorted(params)}")
    reward = _WorldReward("toy_hidden_aesthetic", lambda x, y: hidden_aesthetic(x), res)
    # as a gold (grpo_guard/golds.py): the digits world's true attribute, which no proxy sees
    reward.label, reward.true_attribute = "true attribute (hidden aesthetic)", True
    return reward


class ToyGoldEvaluator:
    """Set-level gold metrics from an independent, stronger classifier trained on the gold split:
    accuracy (prompt alignment), Frechet distance to held-out digits (quality), k-NN precision and
    recall, within-prompt diversity."""

    name = "toy_gold"
    # how they are read (grpo_guard/golds.py): the headline is the normalised average of ``average``
    primary = "average"
    labels = {"accuracy": "accuracy", "frechet": "Frechet distance", "precision": "precision", "recall": "recall",
              "diversity": "diversity", "hf_energy": "HF energy"}

    def __init__(self, params: dict, ctx: RewardContext):
        res = _resolution(params, ctx)
        self.average = tuple(params.pop("average", DEFAULT_GOLD_AVERAGE))
        unknown = set(self.average) - set(GOLD_HIGHER_IS_BETTER)
        if unknown:
            raise ValueError(f"average: unknown gold metrics {sorted(unknown)}")
        self.higher_is_better = dict(GOLD_HIGHER_IS_BETTER)
        self.resolution = res
        self.evaluator = train_gold(GoldConfig(resolution=res, **params), cache_dir=_world_cache(ctx),
                                    verbose=ctx.verbose)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str]) -> dict[str, float]:
        s = self.evaluator.evaluate(_to_world(images.cpu(), self.resolution), labels_from_prompts(list(prompts)))
        return {k: getattr(s, k) for k in self.higher_is_better}


def make_gold_evaluator(params: dict, ctx: RewardContext) -> ToyGoldEvaluator:
    return ToyGoldEvaluator(dict(params), ctx)
