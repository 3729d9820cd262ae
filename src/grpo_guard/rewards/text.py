"""The text world's golds: what the OCR proxy does not see.

The proxy is PP-OCRv4's recognition model (the ``ocr`` reward with ``recognition_only``). The evaluator
``text_gold`` scores a set of images (B, 1, H, W) in [0, 1] (1 = paper) against the strings their prompts ask
for, with nothing taken from that engine:

- ``fidelity`` (higher is better, the primary gold): how close each image stays to a clean rendering of its own
  string: the best normalised cross-correlation (Pearson's r over the pixels) with a clean render of the
  string in any of the renderer's fonts at sizes 11-13 px, shifted by up to 4 px across and 2 px down. The
  world knows its renderer, so this needs no learned model at all; a glyph the engine reads but no font
  draws scores low;
- ``second_reading`` and ``second_reading_em`` (higher is better; the world's true attribute): the score
  ``1 - normalised edit distance`` (the proxy's formula) and the exact-match rate of the world's own CTC
  recogniser (:mod:`grpo_guard.world.text_reader`), trained on clean renders only: another architecture,
  other data, another loss than the engine's;
- ``speckle`` (lower is better): the mean absolute difference between an image and its 3 x 3 median filter
  on the paper of its best clean render (no ink within 1 px), which isolated specks and blotches raise and
  smooth paper does not;
- ``tv_mismatch`` (lower is better): ``|log(TV(image) / TV(best clean render))|``, the total variation
  against the clean render's (blotchy, blocky images depart from it either way);
- ``diversity`` (higher is better): the mean pairwise RMS distance between images of the same prompt.

The texture terms are there because a distance to clean renders alone hardly moves when the images turn
blotchy under a too-strong update; the texture measures do.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..world.text_reader import ReaderConfig, train_text_reader
from ..world.text_render import FONT_NAMES, RenderStyle, render_batch, text_from_prompt
from .base import RewardContext
from .ocr import ocr_text_reward

__all__ = ["TextGoldEvaluator", "make_text_gold", "best_clean_match", "speckle", "paper_mask", "total_variation"]

#: the shifts searched for the best match: up to this many px across and down
MAX_SHIFT_X, MAX_SHIFT_Y = 4, 2
FIDELITY_SIZES = (11, 12, 13)


def total_variation(images: Tensor) -> Tensor:
    """Anisotropic total variation per image (B, 1, H, W) -> (B,): the mean absolute difference of neighbours
    (across and down)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def paper_mask(clean: Tensor) -> Tensor:
    """Where a clean render (B, 1, H, W) is paper with no ink within 1 px: (B, 1, H, W) bool."""
    return -F.max_pool2d(-clean, 3, stride=1, padding=1) > 0.98


def speckle(images: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean |image - median3x3(image)| per image (B, 1, H, W) -> (B,) (edges replicated), over the pixels of
    ``mask`` (B, 1, H, W) when given (the paper of the image's clean render: glyph strokes one pixel wide are
    removed by a median too, specks on paper are what is measured)."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    patches = F.unfold(padded, 3)  # (B, 9, H * W)
    dev = (images - patches.median(dim=1).values.view_as(images)).abs()
    if mask is None:
        return dev.flatten(1).mean(1)
    m = mask.to(dev.dtype)
    return (dev * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson's r between the last dims of broadcastable ``a`` and ``b``."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-8)


def best_clean_match(image: Tensor, templates: Tensor) -> tuple[float, Tensor]:
    """The best Pearson r of ``image`` (1, H, W) with any of ``templates`` (K, 1, H, W) (clean renders, 1 =
    paper) shifted by up to :data:`MAX_SHIFT_X` / :data:`MAX_SHIFT_Y` px (paper fills in), and that shifted
    template (1, H, W)."""
    k, _, h, w = templates.shape
    sx, sy = MAX_SHIFT_X, MAX_SHIFT_Y
    padded = F.pad(templates, (sx, sx, sy, sy), value=1.0)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (K, 1, 2sy+1, 2sx+1, H, W)
    windows = windows.reshape(-1, h * w)
    r = _pearson(image.reshape(1, h * w), windows)
    best = int(r.argmax())
    return float(r[best]), windows[best].view(1, h, w)


class TextGoldEvaluator:
    """Set-level golds of the text world (see the module docstring)."""

    name = "text_gold"
    higher_is_better = {"fidelity": True, "second_reading": True, "second_reading_em": True, "speckle": False,
                        "tv_mismatch": False, "diversity": True}
    primary = "fidelity"
    true_attribute = "second_reading"
    raw_metrics = ("tv_mismatch",)  # near 0 for the base model: a ratio to it means nothing
    labels = {"fidelity": "fidelity to clean renders (best r)", "second_reading": "second reading (own recogniser)",
              "second_reading_em": "second reading, exact match", "speckle": "speckle",
              "tv_mismatch": "TV mismatch |log TV/TV_clean|", "diversity": "within-prompt diversity"}

    def __init__(self, params: dict, ctx: RewardContext):
        """``params``: ``height``, ``width`` (the world's image size, default 16 x 64) and ``reader`` (fields of
        :class:`~grpo_guard.world.text_reader.ReaderConfig`, e.g. ``{steps: 1500}``)."""
        params = dict(params)
        self.height = int(params.pop("height", 16))
        self.width = int(params.pop("width", 64))
        reader = params.pop("reader", {}) or {}
        if params:
            raise ValueError(f"eval.evaluator_params: text_gold got unknown options {sorted(params)}")
        try:
            reader_config = ReaderConfig(**{"height": self.height, "width": self.width, **dict(reader)})
        except TypeError as e:
            raise ValueError(f"eval.evaluator_params.reader: {e}") from None
        log = getattr(ctx, "log", None)
        if log is None and getattr(ctx, "verbose", False):
            log = lambda m: print(m, flush=True)  # noqa: E731
        self.reader = train_text_reader(reader_config, cache_dir=Path(ctx.cache_dir) / "text",
                                        log=(lambda m: log(f"text gold: reader {m}")) if log else None)
        self._templates: dict[str, Tensor] = {}

    def templates(self, text: str) -> Tensor:
        """Clean renders of ``text`` (K, 1, H, W), centred: every font at every size of :data:`FIDELITY_SIZES`
        (cached per string)."""
        if text not in self._templates:
            styles = [RenderStyle(font=f, size=s) for f in FONT_NAMES for s in FIDELITY_SIZES]
            self._templates[text] = render_batch([text] * len(styles), self.height, self.width, styles)
        return self._templates[text]

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str]) -> dict[str, float]:
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, self.height, self.width):
            raise ValueError(f"images: expected (B, 1, {self.height}, {self.width}) text-world images, got "
                             f"{tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"prompts: expected {images.shape[0]}, got {len(prompts)}")
        x = images.detach().float().cpu().clamp(0, 1)
        targets = [text_from_prompt(p) for p in prompts]
        fidelity, tv_mismatch, best_renders = [], [], []
        for img, text in zip(x, targets):
            r, best = best_clean_match(img, self.templates(text))
            fidelity.append(r)
            best_renders.append(best)
            tv_mismatch.append(abs(math.log(float(total_variation(img[None])[0]) + 1e-6)
                                   - math.log(float(total_variation(best[None])[0]) + 1e-6)))
        reads = self.reader.read(x)
        second = [ocr_text_reward(r, t) for r, t in zip(reads, targets)]
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        flat = x.flatten(1).double()
        div = [float(torch.pdist(flat[idx]).mean()) / math.sqrt(flat.shape[1]) for idx in groups.values()
               if len(idx) >= 2]
        return {"fidelity": sum(fidelity) / len(fidelity),
                "second_reading": sum(second) / len(second),
                "second_reading_em": sum(r == t for r, t in zip(reads, targets)) / len(targets),
                "speckle": float(speckle(x, paper_mask(torch.stack(best_renders))).mean()),
                "tv_mismatch": sum(tv_mismatch) / len(tv_mismatch),
                "diversity": sum(div) / len(div) if div else float("nan")}


def make_text_gold(params: dict, ctx: RewardContext) -> TextGoldEvaluator:
    return TextGoldEvaluator(params, ctx)
