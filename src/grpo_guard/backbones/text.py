"""The text world's backbone: a pretrained text-rendering generator behind the :class:`Backbone` interface.

Built from a :class:`~grpo_guard.world.text_generator.TextGeneratorState` (a frozen character encoder and the
position-encoded U-Net of :mod:`grpo_guard.world.text_unet`), trained by LoRA or full fine-tuning exactly as the
digits world's generator is (the prompt encoding, the CFG-batched velocity and the reference model are the
digits backbone's).

Conventions: sigma from 1 (noise) to 0 (data); latents are the images themselves, (B, 1, H, W) in [-1, 1]
(+1 = white paper); ``decode`` gives (B, 1, H, W) float32 in [0, 1] (``(x + 1) / 2``, clamped), dark text on
light paper as an OCR engine reads it. Prompts are ``render the text "abc"`` (:mod:`grpo_guard.world.text_render`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import torch
from torch import Tensor

from ..world.text_generator import TextGeneratorConfig, TextGeneratorState, pretrain_text_generator
from ..world.text_unet import TEXT_LORA_TARGETS
from .toy import ToyBackbone

__all__ = ["TextBackbone", "make_text_backbone"]


class TextBackbone(ToyBackbone):
    """Pretrained text generator with LoRA (default rank 8 on :data:`TEXT_LORA_TARGETS`) or full fine-tuning.

    Args:
        state: a pretrained :class:`TextGeneratorState` (its modules are deep-copied).
        lora_rank, lora_alpha, lora_targets: as :class:`~grpo_guard.backbones.toy.ToyBackbone`'s.
    """

    def __init__(self, state: TextGeneratorState, lora_rank: int | None = 8, lora_alpha: float | None = None,
                 lora_targets: Sequence[str] | None = None):
        super(ToyBackbone, self).__init__()  # Backbone's: the digits generator's state does not apply
        if not isinstance(state, TextGeneratorState):
            raise ValueError(f"state: expected a TextGeneratorState, got {type(state).__name__}")
        self.config = state.config
        self.latent_shape = tuple(state.config.latent_shape)
        self.image_shape = (state.config.height, state.config.width)  # decoded images are (B, 1, H, W)
        self._attach(state.text_encoder, state.net, lora_rank, lora_alpha,
                     list(lora_targets) if lora_targets is not None else list(TEXT_LORA_TARGETS),
                     state.config.seed, "the text U-Net")

    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, 1, H, W) -> images (B, 1, H, W) float32 in [0, 1] (``(x + 1) / 2``, clamped)."""
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents: expected shape (B, {self.latent_shape}), got {tuple(latents.shape)}")
        with torch.no_grad():
            return ((latents.float() + 1) / 2).clamp(0, 1)


def _print(msg: str) -> None:
    print(msg, flush=True)


#: the options of ``backbone.params`` besides the generator's own fields
_BACKBONE_OPTIONS = {"lora_rank", "lora_alpha", "lora_targets", "cache_dir"}


def make_text_backbone(params: dict, ctx) -> TextBackbone:
    """Registry constructor. ``backbone.params``: ``lora_rank`` (8; null for full fine-tuning), ``lora_alpha``,
    ``lora_targets``, ``cache_dir`` (default ``ctx.cache_dir / "text"``) and any
    :class:`~grpo_guard.world.text_generator.TextGeneratorConfig` field (``steps`` is the pretraining length)."""
    params = dict(params)
    known = {f.name for f in fields(TextGeneratorConfig)} | _BACKBONE_OPTIONS
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"backbone.params.{unknown[0]}: unknown option (known: {', '.join(sorted(known))})")
    options = {k: params.pop(k) for k in _BACKBONE_OPTIONS if k in params}
    config = TextGeneratorConfig(**params)
    cache_dir = Path(options.get("cache_dir") or Path(ctx.cache_dir).expanduser() / "text")
    log = getattr(ctx, "log", None) or (_print if getattr(ctx, "verbose", False) else None)
    state = pretrain_text_generator(config, cache_dir,
                                    log=(lambda m: log(f"text backbone: pretraining {m}")) if log else None)
    return TextBackbone(state, lora_rank=options.get("lora_rank", 8), lora_alpha=options.get("lora_alpha"),
                        lora_targets=options.get("lora_targets"))
