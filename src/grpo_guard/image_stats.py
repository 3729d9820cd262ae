"""Image statistics that drift when a policy games its reward: what to watch besides the gold metric.

Reward hacking in text-to-image RL often shows first in plain image statistics: images get darker
or brighter, saturated, flat (low colour entropy, few edges) or oversharpened (many edges), and the
samples of one prompt collapse onto each other (an OCR reward that blackens the background took the
dark-pixel fraction from 0.45 to 0.93 and the colour entropy down by half in one public report). The
loop logs these for the fixed evaluation set at every evaluation (``imgstat/<name>`` in
``metrics.jsonl``), so a run's drift can be read next to its proxy and gold curves.

All functions take images ``(B, C, H, W)`` float in [0, 1] with C = 1 (grey) or 3 (RGB) and return a
``(B,)`` float32 tensor (one value per image), except :func:`group_diversity`. Luma is Rec. 601
(``0.299 R + 0.587 G + 0.114 B``; a grey image is its own luma). Pure tensor functions, no I/O.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["luma", "brightness", "saturation", "colour_entropy", "edge_density", "dark_fraction", "group_diversity",
           "image_stats", "IMAGE_STATS"]

_LUMA = (0.299, 0.587, 0.114)


def _check(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images: expected (B, 1 or 3, H, W) in [0, 1], got {shape}")
    return images.float().clamp(0, 1)


def luma(images: Tensor) -> Tensor:
    """(B, H, W) Rec. 601 luma."""
    x = _check(images)
    if x.shape[1] == 1:
        return x[:, 0]
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1)


def brightness(images: Tensor) -> Tensor:
    """Mean luma per image, in [0, 1]."""
    return luma(images).flatten(1).mean(1)


def saturation(images: Tensor) -> Tensor:
    """Mean HSV saturation ``(max - min) / max`` over the pixels (0 where max = 0; 0 for grey images)."""
    x = _check(images)
    if x.shape[1] == 1:
        return torch.zeros(x.shape[0], device=x.device)
    hi, lo = x.amax(1), x.amin(1)
    s = torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi))
    return s.flatten(1).mean(1)


def colour_entropy(images: Tensor, bins: int = 8) -> Tensor:
    """Shannon entropy in bits of each image's colour histogram: every channel quantised to ``bins``
    levels, a joint histogram of ``bins ** C`` colours (512 for RGB at 8 levels); 0 for a single colour,
    at most ``C * log2(bins)``."""
    x = _check(images)
    if bins < 2:
        raise ValueError(f"bins: must be >= 2, got {bins}")
    q = (x * bins).long().clamp_(0, bins - 1)  # (B, C, H, W) levels
    code = torch.zeros_like(q[:, 0])
    for c in range(q.shape[1]):
        code = code * bins + q[:, c]
    n_colours = bins ** q.shape[1]
    b = x.shape[0]
    counts = torch.zeros(b, n_colours, device=x.device).scatter_add_(
        1, code.flatten(1), torch.ones_like(code.flatten(1), dtype=torch.float32))
    p = counts / counts.sum(1, keepdim=True)
    return -(p * torch.log2(p.clamp_min(1e-30))).sum(1)


def edge_density(images: Tensor, threshold: float = 0.1) -> Tensor:
    """Fraction of pixels whose luma gradient magnitude (Sobel, divided by 4 so that a step of 1 between
    neighbours gives 1; replicate padding) exceeds ``threshold``."""
    y = luma(images)[:, None]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=y.device) / 4
    k = torch.stack([kx, kx.t()])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    g = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), k)
    mag = g.square().sum(1).sqrt()
    return (mag > threshold).float().flatten(1).mean(1)


def dark_fraction(images: Tensor, threshold: float = 0.1) -> Tensor:
    """Fraction of pixels with luma below ``threshold``."""
    return (luma(images) < threshold).float().flatten(1).mean(1)


def group_diversity(images: Tensor, group_ids: Tensor) -> float:
    """Mean pairwise RMS pixel distance between images of the same group (e.g. the samples of one
    prompt), averaged over the groups with at least two images; images are first reduced to 32 px
    (area) so that the value measures layout and colour rather than noise. NaN without such a group.
    It falls towards 0 when the policy collapses onto one image per prompt."""
    x = _check(images)
    if group_ids.shape != (x.shape[0],):
        raise ValueError(f"group_ids: expected shape ({x.shape[0]},), got {tuple(group_ids.shape)}")
    if max(x.shape[-2:]) > 32:
        x = F.adaptive_avg_pool2d(x, 32)
    flat = x.flatten(1)
    per_group = []
    for g in torch.unique(group_ids):
        members = flat[group_ids == g]
        n = members.shape[0]
        if n < 2:
            continue
        d = torch.cdist(members, members) / math.sqrt(flat.shape[1])  # RMS distance per pair
        per_group.append(float(d.sum() / (n * (n - 1))))
    return sum(per_group) / len(per_group) if per_group else float("nan")


#: name -> per-image function, as logged (``imgstat/<name>``: the mean over the evaluation images)
IMAGE_STATS = {"brightness": brightness, "saturation": saturation, "colour_entropy": colour_entropy,
               "edge_density": edge_density, "dark_fraction": dark_fraction}


def image_stats(images: Tensor, group_ids: Tensor | None = None) -> dict[str, float]:
    """The means over ``images`` of every :data:`IMAGE_STATS` entry, plus ``group_diversity`` when
    ``group_ids`` are given."""
    out = {name: float(fn(images).mean()) for name, fn in IMAGE_STATS.items()}
    if group_ids is not None:
        out["group_diversity"] = group_diversity(images, group_ids)
    return out
