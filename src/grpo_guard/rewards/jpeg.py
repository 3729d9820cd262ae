"""JPEG (in)compressibility, the DDPO / Flow-GRPO "compression" rewards.

Each image is quantised to 8 bits (``round(x * 255)``), encoded with PIL as a JPEG at ``quality``
(default 95, PIL's other settings left at their defaults) and measured in kilobytes of 1000 bytes:

* ``jpeg_compressibility``: ``-size_kB`` (<= 0; higher = smaller file = simpler image);
* ``jpeg_incompressibility``: ``+size_kB`` (>= 0; higher = more detail / noise).

RGB images are encoded as RGB, grey (C = 1) images as 8-bit grey ("L"), which is what saving them
gives; no model, no weights, runs on the CPU.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import Tensor

from PIL import Image
from .base import RewardContext
from .clip_rewards import Params, check_reward_inputs

__all__ = ["jpeg_size_kb", "JpegReward", "make_jpeg_compressibility", "make_jpeg_incompressibility"]


def _to_pil(image: Tensor):
    arr = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0].numpy())  # uint8 (H, W): "L"
    return Image.fromarray(np.ascontiguousarray(arr.permute(1, 2, 0).numpy()))  # uint8 (H, W, 3): "RGB"


def jpeg_size_kb(images: Tensor, quality: int = 95) -> Tensor:
    """Sizes (B,) float32 in kB (bytes / 1000) of the images (B, 1 or 3, H, W) in [0, 1] as JPEGs."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected (B, 1 or 3, H, W), got {tuple(images.shape)}")
    sizes = []
    for image in images:
        buf = io.BytesIO()
        _to_pil(image).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegReward:
    def __init__(self, name: str, sign: float, quality: int):
        self.name, self.sign, self.quality = name, sign, quality
        # as a gold (grpo_guard/golds.py): read raw, as the compressibility (minus a size) is negative
        self.normalise = sign > 0

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        check_reward_inputs(self.name, images, prompts)
        return self.sign * jpeg_size_kb(images, self.quality)


def _make(name: str, sign: float, params: dict) -> JpegReward:
    p = Params(name, params)
    quality = p.positive_int("quality", 95)
    p.done()
    if quality > 100:
        raise p.error("quality", f"expected 1..100 (95 is the usual maximum), got {quality}")
    return JpegReward(name, sign, quality)


def make_jpeg_compressibility(params: dict, ctx: RewardContext) -> JpegReward:
    """``-(JPEG size in kB)`` at ``quality`` (default 95): higher is more compressible."""
    return _make("jpeg_compressibility", -1.0, params)


def make_jpeg_incompressibility(params: dict, ctx: RewardContext) -> JpegReward:
    """``+(JPEG size in kB)`` at ``quality`` (default 95): higher is less compressible."""
    return _make("jpeg_incompressibility", 1.0, params)
