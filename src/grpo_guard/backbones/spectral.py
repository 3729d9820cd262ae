"""The spectral world's backbone: the exact Gaussian base velocity plus a small trainable correction.

``v_theta(x_t, t, c) = v_base(x_t, t, c) + scale * (W h(t, c))`` where ``v_base`` is the analytic
optimum of :mod:`grpo_guard.world.spectral`, ``h`` is an MLP of the time and the class (width 64),
``W`` a zero-initialised linear map to the D modes (so the policy starts exactly at the base), and
``scale = sqrt(lam) * (hf_authority if f > N / 8 else 1)``. The whitening by ``sqrt(lam)`` gives
every mode the same cost per unit of data sd; ``hf_authority`` is the knob for how cheaply the
high-frequency (exploit) modes can be moved.

Conventions: latents (B, 1, N, N) are DCT mode coefficients; sigma = t from 1 (noise) to 0 (data);
prompts are the digits prompts ("a handwritten c"). There is no unconditional model, so only
``guidance_scale == 1`` is accepted. ``decode`` is LINEAR and not clamped (``0.5 + image / 8``, in
[0, 1] for all but extreme samples) so that the spectral rewards read the modes back exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..world.data import labels_from_prompts
from ..world.spectral import (DECODE_SCALE, NUM_CLASSES, SpectralWorld, dct_matrix, image_to_modes, make_spectral_world,
                              modes_to_image)
from .base import Backbone, Conditioning

__all__ = ["SpectralBackbone", "make_spectral_backbone", "DECODE_SCALE"]


class SpectralBackbone(Backbone):
    """Analytic base velocity + trainable mean correction (see the module docstring). Its "images" are
    mode coefficients laid out on the grid, not pictures (``samples_are_images`` False).

    Args:
        world: the :class:`SpectralWorld`.
        width: hidden width of the correction MLP.
        hf_authority: multiplier of the correction's scale on modes with ``f > N / 8``.
        seed: initialisation seed of the MLP.
    """

    def __init__(self, world: SpectralWorld, width: int = 64, hf_authority: float = 3.0, seed: int = 0):
        super().__init__()
        if not hf_authority > 0:
            raise ValueError(f"hf_authority: must be > 0, got {hf_authority}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width: must be an int >= 1, got {width!r}")
        self.world = world
        n = world.n
        self.latent_shape = (1, n, n)
        self.image_size = n
        self.samples_are_images = False

        self.register_buffer("lam", world.lam.clone(), persistent=False)
        self.register_buffer("means", world.means.clone(), persistent=False)
        scale = world.lam.sqrt() * torch.where(world.freq > n / 8, torch.tensor(float(hf_authority)), torch.tensor(1.0))
        self.register_buffer("scale", scale.reshape(-1), persistent=False)
        self.register_buffer("dct", dct_matrix(n).float(), persistent=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mlp = nn.Sequential(nn.Linear(NUM_CLASSES + 9, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU())
            self.out = nn.Linear(width, n * n)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    # -- prompts ---------------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Conditioning whose ``embeds`` (B, 1, 10) is the one-hot class of each digits prompt."""
        labels = labels_from_prompts(prompts)
        return Conditioning(nn.functional.one_hot(labels, NUM_CLASSES).float()[:, None])

    # -- the velocity ----------------------------------------------------------------------------
    @staticmethod
    def _time_features(t: Tensor) -> Tensor:
        k = torch.arange(1, 5, device=t.device, dtype=t.dtype)
        ang = math.pi * t[:, None] * k
        return torch.cat([t[:, None], torch.sin(ang), torch.cos(ang)], dim=1)

    def forward(self, latents: Tensor, sigma: Tensor, cond: Conditioning, guidance_scale: float) -> Tensor:
        """Velocity (B, 1, N, N) at ``latents`` (B, 1, N, N), ``sigma`` (B,) in (0, 1].

        Per mode, ``v = a(t) x - b(t) mu_c + corr(t, c)`` with ``a = (1 - gain) / t`` and
        ``b = (1 - gain (1 - t)) / t`` (the module docstring's exact velocity rearranged). Everything but
        ``a x`` depends only on the (class, time) pair, so it is made once per distinct pair of the batch
        (a rollout batch has at most 10 pairs, an update minibatch one per class and trained step) and
        gathered: the per-row work is three passes over D, and the correction's D-wide output layer runs
        once per pair, not per row.
        """
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents: expected shape (B, {self.latent_shape}), got {tuple(latents.shape)}")
        b = latents.shape[0]
        if sigma.shape != (b,) or len(cond) != b:
            raise ValueError(f"sigma, cond: expected {b} rows, got {tuple(sigma.shape)} and {len(cond)}")
        if guidance_scale != 1:
            raise ValueError(f"guidance_scale: the spectral backbone has no unconditional model; set "
                             f"sample.guidance_scale=1 (got {guidance_scale})")
        dtype = latents.dtype
        labels = cond.embeds[:, 0].argmax(-1)
        t = sigma.to(dtype)
        # the distinct (class, time) pairs of the batch and each row's pair
        pairs, row_pair = torch.unique(torch.stack([labels.to(torch.float64), t.to(torch.float64)], dim=1), dim=0,
                                       return_inverse=True)
        pair_label, pair_t = pairs[:, 0].long(), pairs[:, 1].to(dtype)  # (exact: dtype -> float64 -> dtype)
        tt = pair_t.reshape(-1, 1, 1, 1)
        lam = self.lam.to(dtype)
        gain = (1 - tt) * lam / ((1 - tt) ** 2 * lam + tt ** 2)
        coef_x = (1 - gain) / tt  # (P, 1, N, N)
        offset = (1 - gain * (1 - tt)) / tt * self.means[pair_label][:, None].to(dtype)  # b(t) mu_c, (P, 1, N, N)
        if not self._use_reference:
            onehot = nn.functional.one_hot(pair_label, NUM_CLASSES).to(dtype)
            h = self.mlp(torch.cat([onehot, self._time_features(pair_t)], dim=1))
            corr = (self.out(h) * self.scale.to(h.dtype)).reshape(-1, *self.latent_shape).to(dtype)
            offset = offset - corr
        if pairs.shape[0] == 1:
            return coef_x * latents - offset
        # index_select, whose backward adds each row's gradient into its pair in a fixed order (the same
        # result in every process, unlike an indexing assignment's accumulation)
        return coef_x.index_select(0, row_pair) * latents - offset.index_select(0, row_pair)

    # -- images ----------------------------------------------------------------------------------
    def decode(self, latents: Tensor) -> Tensor:
        """Modes (B, 1, N, N) -> images (B, 1, N, N) float32: ``0.5 + idct(modes) / DECODE_SCALE`` (linear,
        not clamped)."""
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents: expected shape (B, {self.latent_shape}), got {tuple(latents.shape)}")
        with torch.no_grad():
            return 0.5 + modes_to_image(latents.float(), self.dct) / DECODE_SCALE

    def modes_from_images(self, images: Tensor) -> Tensor:
        """Inverse of :meth:`decode`."""
        return image_to_modes((images.float() - 0.5) * DECODE_SCALE, self.dct)

    # -- training --------------------------------------------------------------------------------
    @contextmanager
    def reference(self) -> Iterator[None]:
        """``forward`` is the exact base velocity inside (the correction switched off)."""
        with self._reference_flag():
            yield


def make_spectral_backbone(params: dict, ctx) -> SpectralBackbone:
    """Registry constructor. ``backbone.params``: ``n`` (grid side, D = n^2; default 64), ``width`` (64),
    ``hf_authority`` (3.0), ``world_seed`` (the world's fixed tensors, default 0), ``mean_scale`` (1.0).
    The correction's initialisation uses the run's seed."""
    params = dict(params)
    known = {"n", "width", "hf_authority", "world_seed", "mean_scale"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"backbone.params.{unknown[0]}: unknown option (known: {', '.join(sorted(known))})")
    world = make_spectral_world(params.get("n", 64), seed=params.get("world_seed", 0),
                                mean_scale=float(params.get("mean_scale", 1.0)))
    return SpectralBackbone(world, width=params.get("width", 64), hf_authority=float(params.get("hf_authority", 3.0)),
                            seed=getattr(ctx, "seed", 0))
