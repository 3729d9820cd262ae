"""Toy-world rewards: adapters from the digits world (``grpo_guard.world``) to the reward interface.

Images arrive in [0, 1] (B, 1, R, R) and are mapped to the world's [-1, 1]; the prompted digit is
parsed from each prompt. Trained reward models are cached under ``ctx.cache_dir / "world"``. Their seeds are fixed (default 0),
not the run's seed: every run of a study is scored by the same proxy and gold models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .base import RewardContext

__all__ = ["make_classifier_reward", "make_aesthetic_reward", "make_ink_reward", "make_hidden_aesthetic_reward",
           "make_gold_evaluator"]


def _world_cache(ctx: RewardContext) -> Path:
    return Path(ctx.cache_dir).expanduser() / "world"


def _resolution(params: dict, ctx: RewardContext) -> int:
    res = params.pop("resolution", ctx.image_size)
    if res is None:
        raise ValueError("resolution: unknown image size; pass rewards[].params.resolution")
    return int(res)


def _to_world(images: Tensor) -> Tensor:
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images: expected (B, 1, R, R) grey images, got {tuple(images.shape)}")
    return images.float() * 2 - 1


class _WorldReward:
    def __init__(self, name: str, fn):
        self.name = name
        self._fn = fn

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        from ..world.data import labels_from_prompts

        labels = labels_from_prompts(list(prompts))
        return self._fn(_to_world(images).cpu(), labels).float()


def _make_proxy(kind: str, params: dict, ctx: RewardContext) -> _WorldReward:
    from ..world.proxies import build_proxy

    res = _resolution(params, ctx)
    fn = build_proxy(kind, res, seed=params.pop("seed", 0), split_seed=params.pop("split_seed", 0), cache_dir=_world_cache(ctx),
                     verbose=False, **params)
    return _WorldReward(f"toy_{kind}" if kind != "ink" else "ink", fn)


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
    from ..world.proxies import hidden_aesthetic

    if params:
        raise ValueError(f"params: toy_hidden_aesthetic takes no options, got {sorted(params)}")
    return _WorldReward("toy_hidden_aesthetic", lambda x, y: hidden_aesthetic(x))


class ToyGoldEvaluator:
    """Set-level gold metrics from an independent, stronger classifier trained on the gold split:
    accuracy (prompt alignment), Frechet distance to held-out digits (quality), k-NN precision and
    recall, within-prompt diversity."""

    name = "toy_gold"

    def __init__(self, params: dict, ctx: RewardContext):
        from ..world.gold import DEFAULT_GOLD_AVERAGE, GOLD_HIGHER_IS_BETTER, GoldConfig, train_gold

        res = _resolution(params, ctx)
        self.average = tuple(params.pop("average", DEFAULT_GOLD_AVERAGE))
        unknown = set(self.average) - set(GOLD_HIGHER_IS_BETTER)
        if unknown:
            raise ValueError(f"average: unknown gold metrics {sorted(unknown)}")
        self.higher_is_better = dict(GOLD_HIGHER_IS_BETTER)
        self.evaluator = train_gold(GoldConfig(resolution=res, **params), cache_dir=_world_cache(ctx),
                                    verbose=False)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str]) -> dict[str, float]:
        from ..world.data import labels_from_prompts

        s = self.evaluator.evaluate(_to_world(images).cpu(), labels_from_prompts(list(prompts)))
        return {k: getattr(s, k) for k in self.higher_is_better}


def make_gold_evaluator(params: dict, ctx: RewardContext) -> ToyGoldEvaluator:
    return ToyGoldEvaluator(dict(params), ctx)
