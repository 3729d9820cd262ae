"""The spectral world: a Gaussian data distribution on 2-D DCT modes whose flow velocity is exact.

A cheap laboratory beside the digits world (pilot 2's design, rebuilt here): no pretraining, the
base model is the analytic optimum, D goes from 64 to 65,536 at the same cost per dimension, and the
routes by which a proxy can be raised are known exactly.

Conventions:
- a sample is an (N, N) grid of orthonormal DCT-II mode coefficients (the latent, (1, N, N));
  mode (i, j) has radial frequency ``f = sqrt(i^2 + j^2) / 2`` in cycles per N pixels, so the
  per-axis Nyquist frequency is ``N / 2``;
- data of class c (the prompt ``"a handwritten c"``): ``x0 ~ N(mu_c, diag(lam))`` with
  ``lam = (1 + f^2 / 4) ** -0.75`` (1 at DC, about 1e-2 at Nyquist for N = 64) and class means
  ``mu_c`` on the modes with ``f <= 2``;
- flow matching: ``x_t = (1 - t) x0 + t eps``, sigma = t from 1 (noise) to 0 (data); the exact
  velocity is ``E[eps - x0 | x_t] = (x_t - E[x0 | x_t]) / t`` with, per mode,
  ``E[x0 | x_t] = mu + (1 - t) lam / ((1 - t)^2 lam + t^2) * (x_t - (1 - t) mu)``.
- routes (fixed by ``seed``): the GENUINE attribute ``g`` is a random-sign projection on 16 modes with
  ``1 <= f <= 3``; the EXPLOIT ``e`` one on 16 modes with ``f >= 0.6 N / 2`` (a stand-in for a
  learned reward fooled by high-frequency texture). Both are class-centred and in units of the data's
  standard deviation, so the base distribution has mean 0 and sd 1 in each.

All functions are pure tensor functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SpectralWorld", "make_spectral_world", "dct_matrix", "modes_to_image", "image_to_modes", "modes_at",
           "DECODE_SCALE"]

#: the spectral world's images: decoded image = 0.5 + image / DECODE_SCALE (the backbone decodes its modes so,
#: the rewards read the images back so)
DECODE_SCALE = 8.0

NUM_CLASSES = 10
NUM_ROUTE_MODES = 16


def dct_matrix(n: int, dtype=torch.float64) -> Tensor:
    """The orthonormal DCT-II matrix C (n, n): ``modes = C @ img @ C.T``, ``img = C.T @ modes @ C``."""
    k = torch.arange(n, dtype=dtype)[:, None]
    i = torch.arange(n, dtype=dtype)[None, :]
    c = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


def modes_to_image(modes: Tensor, c: Tensor) -> Tensor:
    """(B, 1, N, N) mode coefficients -> (B, 1, N, N) image (inverse orthonormal DCT)."""
    c = c.to(modes.dtype)
    return c.T @ modes @ c


def image_to_modes(image: Tensor, c: Tensor) -> Tensor:
    """(B, 1, N, N) image -> (B, 1, N, N) mode coefficients (orthonormal DCT)."""
    c = c.to(image.dtype)
    return c @ image @ c.T


def modes_at(image: Tensor, c: Tensor, flat_idx: Tensor) -> Tensor:
    """The orthonormal DCT coefficients of (B, 1, N, N) images at the flat mode indices ``flat_idx`` (K,):
    (B, K), the values of ``image_to_modes(image, c).flatten(1)[:, flat_idx]`` at O(B N^2 K) operations
    instead of O(B N^3) (a route reads 16 of the N^2 modes)."""
    n = c.shape[0]
    c = c.to(image.dtype)
    rows, cols = flat_idx // n, flat_idx % n
    along_cols = image[:, 0] @ c[cols].T  # (B, N, K): each image row against its mode's column basis vector
    return torch.einsum("ki,bik->bk", c[rows], along_cols)


@dataclass(frozen=True)
class SpectralWorld:
    """The fixed tensors of a spectral world of side N (all float32, on CPU).

    Attributes:
        n: grid side N (D = N^2).
        freq: (N, N) radial frequency of each mode.
        lam: (N, N) data variance of each mode.
        means: (10, N, N) class means (zero outside ``f <= 2``).
        genuine_idx, exploit_idx: (16,) flat mode indices of the two routes.
        genuine_sign, exploit_sign: (16,) +-1 projection signs.
    """

    n: int
    freq: Tensor
    lam: Tensor
    means: Tensor
    genuine_idx: Tensor
    genuine_sign: Tensor
    exploit_idx: Tensor
    exploit_sign: Tensor

    @property
    def dim(self) -> int:
        return self.n * self.n

    def route_indices(self, which: str) -> tuple[Tensor, Tensor]:
        """The (16,) flat mode indices and (16,) signs of the route ``which`` ("genuine" or "exploit")."""
        if which not in ("genuine", "exploit"):
            raise ValueError(f"which: 'genuine' or 'exploit', got {which!r}")
        return ((self.genuine_idx, self.genuine_sign) if which == "genuine"
                else (self.exploit_idx, self.exploit_sign))

    def route(self, modes: Tensor, labels: Tensor, which: str) -> Tensor:
        """The class-centred projection ``which`` ("genuine" or "exploit") of ``modes`` (B, 1, N, N)
        with ``labels`` (B,), in units of the data sd: (B,) float32."""
        idx, _ = self.route_indices(which)
        return self.route_of_modes(modes.reshape(modes.shape[0], -1).float()[:, idx], labels, which)

    def route_of_modes(self, route_modes: Tensor, labels: Tensor, which: str) -> Tensor:
        """:meth:`route` from the route's own mode coefficients ``route_modes`` (B, 16) (in
        :meth:`route_indices` order): (B,) float32."""
        idx, sign = self.route_indices(which)
        mu = self.means.reshape(NUM_CLASSES, -1)[labels][:, idx]
        sd = self.lam.reshape(-1)[idx].sum().sqrt()
        return ((route_modes.float() - mu) * sign).sum(-1) / sd

    def posterior_mean(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """``E[x0 | x_t]`` for (B, 1, N, N) ``x_t`` at (B,) times ``t`` in (0, 1], classes ``labels`` (B,)."""
        mu = self.means[labels][:, None]
        lam = self.lam
        tt = t.reshape(-1, 1, 1, 1).to(x_t.dtype)
        gain = (1 - tt) * lam / ((1 - tt) ** 2 * lam + tt ** 2)
        return mu + gain * (x_t - (1 - tt) * mu)

    def velocity(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """The exact flow velocity ``(x_t - E[x0 | x_t]) / t`` (B, 1, N, N); t must be > 0."""
        return (x_t - self.posterior_mean(x_t, t, labels)) / t.reshape(-1, 1, 1, 1).to(x_t.dtype)

    def sample_data(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exact data samples (B, 1, N, N) of classes ``labels``."""
        eps = torch.randn((labels.shape[0], 1, self.n, self.n), generator=generator)
        return self.means[labels][:, None] + self.lam.sqrt() * eps


def make_spectral_world(n: int, seed: int = 0, mean_scale: float = 1.0) -> SpectralWorld:
    """The spectral world of side ``n`` (>= 8): frequencies, variances, class means and the two routes,
    all fixed by ``seed``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 8:
        raise ValueError(f"n: the spectral world needs an int grid side >= 8, got {n!r}")
    g = torch.Generator().manual_seed(seed)
    ij = torch.arange(n, dtype=torch.float64)
    freq = torch.sqrt(ij[:, None] ** 2 + ij[None, :] ** 2) / 2
    lam = (1 + freq ** 2 / 4) ** -0.75
    low = (freq <= 2).to(torch.float64)
    means = torch.randn((NUM_CLASSES, n, n), generator=g, dtype=torch.float64) * lam.sqrt() * low * mean_scale
    flat = freq.reshape(-1)

    def pick(mask: Tensor) -> tuple[Tensor, Tensor]:
        cand = torch.nonzero(mask).reshape(-1)
        if cand.numel() < NUM_ROUTE_MODES:
            raise ValueError(f"n: a {n} x {n} grid has too few modes for a route")
        idx = cand[torch.randperm(cand.numel(), generator=g)[:NUM_ROUTE_MODES]].sort().values
        sign = torch.randint(0, 2, (NUM_ROUTE_MODES,), generator=g).to(torch.float32) * 2 - 1
        return idx, sign

    genuine_idx, genuine_sign = pick((flat >= 1) & (flat <= 3))
    exploit_idx, exploit_sign = pick(flat >= 0.6 * n / 2)
    return SpectralWorld(n=n, freq=freq.float(), lam=lam.float(), means=means.float(), genuine_idx=genuine_idx,
                         genuine_sign=genuine_sign, exploit_idx=exploit_idx, exploit_sign=exploit_sign)
