"""Rewards and evaluators. Add one: write its file, add one line to the registry below."""

from ..registry import resolve
from .base import Evaluator, Reward, RewardContext, weighted_sum

#: reward name -> "module:constructor"; constructor(params: dict, ctx: RewardContext) -> Reward
REWARDS: dict[str, str] = {
    "toy_classifier": "grpo_guard.rewards.toy:make_classifier_reward",
    "toy_aesthetic": "grpo_guard.rewards.toy:make_aesthetic_reward",
    "ink": "grpo_guard.rewards.toy:make_ink_reward",
    "toy_hidden_aesthetic": "grpo_guard.rewards.toy:make_hidden_aesthetic_reward",
    "spectral_proxy": "grpo_guard.rewards.spectral:make_spectral_proxy",
    "spectral_attribute": "grpo_guard.rewards.spectral:make_spectral_attribute",
    "spectral_exploit": "grpo_guard.rewards.spectral:make_spectral_exploit",
    "remote": "grpo_guard.rewards.remote:make_remote_reward",
    "pickscore": "grpo_guard.rewards.clip_rewards:make_pickscore",
    "clip_score": "grpo_guard.rewards.clip_rewards:make_clip_score",
    "aesthetic": "grpo_guard.rewards.clip_rewards:make_aesthetic",
    "jpeg_compressibility": "grpo_guard.rewards.jpeg:make_jpeg_compressibility",
    "jpeg_incompressibility": "grpo_guard.rewards.jpeg:make_jpeg_incompressibility",
    "imagereward": "grpo_guard.rewards.imagereward:make_imagereward",
    "hpsv2": "grpo_guard.rewards.hpsv2:make_hpsv2",
    "ocr": "grpo_guard.rewards.ocr:make_ocr",
    "geneval": "grpo_guard.rewards.geneval:make_geneval",
    "geneval_strict": "grpo_guard.rewards.geneval:make_geneval_strict",
}

#: evaluator name -> "module:constructor"; constructor(params: dict, ctx: RewardContext) -> Evaluator
EVALUATORS: dict[str, str] = {
    "toy_gold": "grpo_guard.rewards.toy:make_gold_evaluator",
    "spectral_gold": "grpo_guard.rewards.spectral:make_spectral_gold",
    "text_gold": "grpo_guard.rewards.text:make_text_gold",
}


def _build(registry: dict[str, str], kind: str, key: str, name: str, params: dict, ctx: RewardContext):
    make = resolve(registry, name, kind)
    try:
        return make(dict(params), ctx)
    except TypeError as e:  # e.g. an option the constructor does not take
        raise ValueError(f"{key}: {name} rejected its params ({e})") from None


def build_reward(name: str, params: dict, ctx: RewardContext) -> Reward:
    return _build(REWARDS, "reward", "rewards", name, params, ctx)


def build_evaluator(name: str, params: dict, ctx: RewardContext) -> Evaluator:
    return _build(EVALUATORS, "evaluator", "eval.evaluator_params", name, params, ctx)


__all__ = ["REWARDS", "EVALUATORS", "Reward", "Evaluator", "RewardContext", "build_reward", "build_evaluator",
           "weighted_sum"]
