"""Exponential moving average of the trainable weights."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..sharding import full_tensor, shard_like

__all__ = ["EMA"]


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after every ``every``-th optimizer step (Flow-GRPO's
    EMA: decay 0.9 every 8 steps). ``steps`` counts the optimizer steps seen (kept in the run's state, so that
    a resumed run updates on the same steps)."""

    def __init__(self, params: Sequence[nn.Parameter], decay: float, every: int = 1):
        if not 0 < decay < 1:
            raise ValueError(f"decay: must be in (0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"every: must be >= 1, got {every}")
        self.params = list(params)
        self.decay, self.every = decay, every
        self.steps = 0
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Count one optimizer step; move the shadow weights when the count is a multiple of ``every``."""
        self.steps += 1
        if self.steps % self.every:
            return
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        """The shadow weights, whole (gathered when sharded: every process must call it)."""
        return {str(i): full_tensor(s) for i, s in enumerate(self.shadow)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if len(state) != len(self.shadow):
            raise ValueError(f"state: expected {len(self.shadow)} EMA tensors, got {len(state)}")
        with torch.no_grad():
            for i, s in enumerate(self.shadow):
                s.copy_(shard_like(state[str(i)], s))

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the EMA weights into the parameters."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)
