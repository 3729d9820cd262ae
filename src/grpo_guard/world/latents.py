"""The toy world's latent layouts: the image itself (``pixels``: (1, H, W)) or its fixed space-to-depth
rearrangement (``latent16``: (16, H/4, W/4), every 4 x 4 pixel block the 16 channels of one position, as
``torch.nn.functional.pixel_unshuffle``). A permutation of coordinates: D = H * W in both, and inner
products are the same in latent and image space."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["LAYOUTS", "S2D_FACTOR", "space_to_depth", "depth_to_space", "latent_shape_for", "images_to_latents",
           "latents_to_images"]

LAYOUTS = ("pixels", "latent16")
S2D_FACTOR = 4


def space_to_depth(images: Tensor, factor: int = S2D_FACTOR) -> Tensor:
    """(B, C, H, W) -> (B, C * factor**2, H / factor, W / factor); channel ``c*f*f + i*f + j`` holds pixel
    ``(factor * y + i, factor * x + j)`` of channel c. A fixed permutation of coordinates."""
    return F.pixel_unshuffle(images, factor)


def depth_to_space(latents: Tensor, factor: int = S2D_FACTOR) -> Tensor:
    """Inverse of :func:`space_to_depth`."""
    return F.pixel_shuffle(latents, factor)


def latent_shape_for(resolution: int, layout: str) -> tuple[int, int, int]:
    """Per-sample latent shape: (1, R, R) for ``pixels``, (16, R/4, R/4) for ``latent16``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown value {layout!r}; expected one of {LAYOUTS}")
    if not isinstance(resolution, int) or resolution < 8 or resolution % 8:
        raise ValueError(f"resolution: expected a multiple of 8, got {resolution!r}")
    if layout == "pixels":
        return (1, resolution, resolution)
    return (S2D_FACTOR**2, resolution // S2D_FACTOR, resolution // S2D_FACTOR)


def images_to_latents(images: Tensor, layout: str) -> Tensor:
    """Images (B, 1, H, W) in [-1, 1] -> latents (B, *latent_shape) (same values, rearranged)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown value {layout!r}; expected one of {LAYOUTS}")
    return images if layout == "pixels" else space_to_depth(images)


def latents_to_images(latents: Tensor, layout: str) -> Tensor:
    """Latents (B, *latent_shape) -> images (B, 1, H, W) in the [-1, 1] convention (not clamped)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown value {layout!r}; expected one of {LAYOUTS}")
    return latents if layout == "pixels" else depth_to_space(latents)
