"""Rewards and evaluators. Add one: write its file, add one line to the registry below."""

from .base import Evaluator, Reward, RewardContext, resolve, weighted_sum

#: reward name -> "module:constructor"; constructor(params: dict, ctx: RewardContext) -> Reward
REWARDS: dict[str, str] = {
    "toy_classifier": "grpo_guard.rewards.toy:make_classifier_reward",
    "toy_aesthetic": "grpo_guard.rewards.toy:make_aesthetic_reward",
    "ink": "grpo_guard.rewards.toy:make_ink_reward",
    "toy_hidden_aesthetic": "grpo_guard.rewards.toy:make_hidden_aesthetic_reward",
}

#: evaluator name -> "module:constructor"; constructor(params: dict, ctx: RewardContext) -> Evaluator
EVALUATORS: dict[str, str] = {
    "toy_gold": "grpo_guard.rewards.toy:make_gold_evaluator",
}


def build_reward(name: str, params: dict, ctx: RewardContext) -> Reward:
    return resolve(REWARDS, name, "reward")(dict(params), ctx)


def build_evaluator(name: str, params: dict, ctx: RewardContext) -> Evaluator:
    return resolve(EVALUATORS, name, "evaluator")(dict(params), ctx)


__all__ = ["REWARDS", "EVALUATORS", "Reward", "Evaluator", "RewardContext", "build_reward", "build_evaluator",
           "weighted_sum"]
