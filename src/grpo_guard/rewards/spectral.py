"""Spectral-world rewards: the two-route proxy, its exact routes, and set-level drift golds.

Images arrive as the spectral backbone decodes them (linear, ``0.5 + idct(modes) / 8``) and are read
back to modes exactly. Every reward takes ``world_seed`` (default 0) and ``mean_scale`` (1.0), which
must match the backbone's; the grid side N is the run's image size.

- ``spectral_proxy``: ``genuine_weight * g + exploit_weight * e`` (defaults 1 and 1: a two-route
  proxy; ``exploit_weight: 0`` makes it single-route).
- ``spectral_attribute``: ``g``, the genuine attribute (the true-attribute gold).
- ``spectral_exploit``: ``e``, the exploit route alone (a diagnostic).
- evaluator ``spectral_gold``: ``attribute`` and ``exploit`` (set means), and the whitened drift of
  the class means from the data's, ``drift_lf`` (modes with f <= N/8) and ``drift_hf`` (f > N/8):
  ``mean over classes of sum over modes of (m - mu)^2 / lam``, with the finite-sample term removed
  (unbiased; so it can be slightly negative). Lower drift is better; ``attribute`` higher. The two
  golds point different ways by design (pilot 2), so no average is formed unless ``average`` is set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..world.data import labels_from_prompts
from ..world.spectral import DECODE_SCALE, dct_matrix, image_to_modes, make_spectral_world, modes_at
from .base import RewardContext

__all__ = ["make_spectral_proxy", "make_spectral_attribute", "make_spectral_exploit", "make_spectral_gold"]


class _SpectralReader:
    def __init__(self, params: dict, ctx: RewardContext):
        if ctx.image_size is None:
            raise ValueError("rewards: the spectral rewards need the run's image size (the grid side N)")
        self.world = make_spectral_world(int(ctx.image_size), seed=int(params.pop("world_seed", 0)),
                                         mean_scale=float(params.pop("mean_scale", 1.0)))
        self.dct = dct_matrix(self.world.n).float()

    def _check_shape(self, images: Tensor) -> None:
        n = self.world.n
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, n, n):
            raise ValueError(f"images: expected (B, 1, {n}, {n}) spectral-world images, got {tuple(images.shape)}")

    def centred(self, images: Tensor) -> Tensor:
        """The backbone's decoding undone up to the DCT: ``(images - 0.5) * DECODE_SCALE``, float32 on CPU."""
        self._check_shape(images)
        return (images.detach().cpu().float() - 0.5) * DECODE_SCALE

    def modes_labels(self, images: Tensor, prompts: list[str]) -> tuple[Tensor, Tensor]:
        return image_to_modes(self.centred(images), self.dct), labels_from_prompts(list(prompts))


class _RouteReward(_SpectralReader):
    def __init__(self, name: str, params: dict, ctx: RewardContext, genuine_weight: float, exploit_weight: float):
        super().__init__(params, ctx)
        if params:
            raise ValueError(f"rewards.params: {name} got unknown options {sorted(params)}")
        self.name, self.wg, self.we = name, float(genuine_weight), float(exploit_weight)

    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        centred, labels = self.centred(images), labels_from_prompts(list(prompts))
        out = torch.zeros(images.shape[0])
        for weight, which in ((self.wg, "genuine"), (self.we, "exploit")):
            if weight:  # only the route's 16 modes are read back
                route_modes = modes_at(centred, self.dct, self.world.route_indices(which)[0])
                out = out + weight * self.world.route_of_modes(route_modes, labels, which)
        return out


def make_spectral_proxy(params: dict, ctx: RewardContext) -> _RouteReward:
    params = dict(params)
    wg, we = params.pop("genuine_weight", 1.0), params.pop("exploit_weight", 1.0)
    return _RouteReward("spectral_proxy", params, ctx, wg, we)


def make_spectral_attribute(params: dict, ctx: RewardContext) -> _RouteReward:
    reward = _RouteReward("spectral_attribute", dict(params), ctx, 1.0, 0.0)
    # as a gold (grpo_guard/golds.py): the base model's g is near 0, so it is read raw, not base-relative
    reward.label, reward.normalise, reward.same_as = "true attribute g", False, "attribute"
    return reward


def make_spectral_exploit(params: dict, ctx: RewardContext) -> _RouteReward:
    reward = _RouteReward("spectral_exploit", dict(params), ctx, 0.0, 1.0)
    reward.label, reward.normalise, reward.same_as, reward.higher_is_better = "exploit e", False, "exploit", False
    return reward


class SpectralGoldEvaluator(_SpectralReader):
    """Set-level spectral golds (see the module docstring)."""

    name = "spectral_gold"
    higher_is_better = {"attribute": True, "exploit": False, "drift_lf": False, "drift_hf": False}
    # how they are read (grpo_guard/golds.py): the true attribute is the headline; every metric is raw, as
    # the base model's attribute and exploit are near 0 and the unbiased drifts can be negative
    primary = true_attribute = "attribute"
    raw_metrics = ("attribute", "exploit", "drift_lf", "drift_hf")
    labels = {"attribute": "true attribute g", "exploit": "exploit e", "drift_lf": "class-mean drift, LF",
              "drift_hf": "class-mean drift, HF"}

    def __init__(self, params: dict, ctx: RewardContext):
        params = dict(params)
        average = tuple(params.pop("average", ()))
        super().__init__(params, ctx)
        if params:
            raise ValueError(f"eval.evaluator_params: spectral_gold got unknown options {sorted(params)}")
        unknown = set(average) - set(self.higher_is_better)
        if unknown:
            raise ValueError(f"average: unknown spectral gold metrics {sorted(unknown)}")
        self.average = average

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str]) -> dict[str, float]:
        modes, labels = self.modes_labels(images, prompts)
        w = self.world
        res = {"attribute": float(w.route(modes, labels, "genuine").mean()),
               "exploit": float(w.route(modes, labels, "exploit").mean())}
        lf = (w.freq <= w.n / 8).reshape(-1)
        x = modes.reshape(modes.shape[0], -1).double()
        lam = w.lam.reshape(-1).double()
        drift = torch.zeros(w.dim, dtype=torch.float64)
        classes = [int(c) for c in labels.unique() if int((labels == c).sum()) >= 2]
        if not classes:
            raise ValueError("images: the drift golds need at least 2 images of some prompt")
        for c in classes:
            xc = x[labels == c]
            s = xc.shape[0]
            d2 = (xc.mean(0) - w.means[c].reshape(-1).double()) ** 2
            drift += (d2 - xc.var(0, unbiased=True) / s) / lam
        drift /= len(classes)
        res["drift_lf"] = float(drift[lf].sum())
        res["drift_hf"] = float(drift[~lf].sum())
        return res


def make_spectral_gold(params: dict, ctx: RewardContext) -> SpectralGoldEvaluator:
    return SpectralGoldEvaluator(params, ctx)
