"""Backbones (generators) behind one interface. Add one: write its file, add one registry line."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..registry import resolve
from .base import Backbone, Conditioning

#: backbone name -> "module:constructor"; constructor(params: dict, ctx: BackboneContext) -> Backbone
BACKBONES: dict[str, str] = {
    "toy": "grpo_guard.backbones.toy:make_toy_backbone",
    "spectral": "grpo_guard.backbones.spectral:make_spectral_backbone",
    "text": "grpo_guard.backbones.text:make_text_backbone",
    "sd3": "grpo_guard.backbones.sd3:make_sd3_backbone",
    "flux": "grpo_guard.backbones.flux:make_flux_backbone",
}


@dataclass
class BackboneContext:
    """What a backbone constructor may need. ``log``: where a backbone that trains its base model says how far
    it is (a ``[study]``-prefixed line in a study, say), even when not ``verbose``; None: only when verbose,
    to stdout."""

    cache_dir: Path
    device: torch.device
    seed: int = 0
    verbose: bool = True
    log: Callable[[str], None] | None = None


def build_backbone(name: str, params: dict, ctx: BackboneContext) -> Backbone:
    make = resolve(BACKBONES, name, "backbone")
    try:
        return make(dict(params), ctx)
    except TypeError as e:  # e.g. an option the constructor does not take
        raise ValueError(f"backbone.params: {name} rejected its options ({e})") from None


__all__ = ["BACKBONES", "Backbone", "BackboneContext", "Conditioning", "build_backbone"]
