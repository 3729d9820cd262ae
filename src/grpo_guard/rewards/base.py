"""The reward interface: per-image rewards (proxy or gold) and set-level gold evaluators.

A reward is a callable ``(images, prompts, metadata) -> (B,) float tensor``: images are float32 in
[0, 1], shape (B, C, H, W); ``prompts`` are the B prompt strings; ``metadata`` one dict per image.
Whether it is optimised (``proxy``) or only logged (``gold``) is decided by the run config, not by
the reward. An evaluator computes set-level metrics (e.g. a Frechet distance) on a whole
evaluation set and says which direction is better, so that they can be normalised to the base
model (= 1, higher is better) and averaged.

How a gold is read (the headline gold, its direction, whether a value relative to the base model means
something, a reward that duplicates an evaluator metric) is declared with optional attributes on the
reward or evaluator object; :mod:`grpo_guard.golds` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["RewardContext", "Reward", "Evaluator", "weighted_sum"]


@dataclass
class RewardContext:
    """What a reward or evaluator may need to build itself."""

    cache_dir: Path
    device: torch.device
    seed: int = 0
    image_size: int | None = None
    verbose: bool = False  # print progress while training or loading reward models
    # where a reward model in training says how far it is, even when not verbose (None: print, when verbose)
    log: Callable[[str], None] | None = None


class Reward(Protocol):
    name: str

    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> Tensor: ...


class Evaluator(Protocol):
    name: str
    #: metric name -> True if higher is better
    higher_is_better: dict[str, bool]

    def __call__(self, images: Tensor, prompts: list[str]) -> dict[str, float]: ...


def weighted_sum(values: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """Sum of ``weights[name] * values[name]`` over the names in ``weights`` (each (B,))."""
    total = None
    for name, w in weights.items():
        term = w * values[name].float()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("weights: no reward to sum")
    return total
