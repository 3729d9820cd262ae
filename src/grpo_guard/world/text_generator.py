"""The text world's generator: its config, rectified-flow pretraining on PIL renders made on the fly, and the
cache.

Conventions: images and latents are (B, 1, H, W) in [-1, 1] inside the world (+1 = white paper, -1 = black
ink; the backbone's ``decode`` maps them to [0, 1]); sigma = t from 1 (noise) to 0 (data),
``x_t = (1 - t) x_0 + t x_1``, the net predicts ``v ~ x_1 - x_0``, t is drawn logit-normal.

A pretraining step draws ``batch_size`` random strings of :data:`~grpo_guard.world.text_render.ALPHABET`
(lengths ``min_len``-``max_len``), renders each in a random style (:func:`~.text_render.random_style`: font,
size, offset, slant, weight, paper, ink and texture), replaces a fraction of the prompts by the null prompt,
and takes one AdamW step; the state keeps the EMA of the weights. Pretraining is budgeted in steps, not
seconds (the same cache entry on every machine). Cache entries are safetensors + JSON keyed by a hash of
the config (:mod:`grpo_guard.cache_entry`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import stopping
from ..cache_entry import read_entry, write_entry
from .gold import seeded_rng
from .text_render import random_strings, random_style, render_batch, text_prompt
from .text_unet import CharEncoder, TextUNet

__all__ = ["TextGeneratorConfig", "TextGeneratorState", "pretrain_text_generator", "text_generator_hash"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TextGeneratorConfig:
    """Everything that determines a pretrained text generator (its hash keys the cache).

    Attributes:
        height, width: image size in px (multiples of 4).
        min_len, max_len: string lengths.
        font_sizes: (smallest, largest) font size of the training renders.
        channels: U-Net widths at the three levels; token_dim: character-token width.
        steps, batch_size, lr, warmup, weight_decay: AdamW rectified-flow training.
        ema_decay: EMA of the weights (with the (1+n)/(10+n) ramp); prompt_dropout: null-prompt fraction.
        logit_mean, logit_std: t = sigmoid(N(logit_mean, logit_std^2)); seed: everything random.
    """

    height: int = 16
    width: int = 64
    min_len: int = 3
    max_len: int = 5
    font_sizes: tuple[int, int] = (11, 13)
    channels: tuple[int, int, int] = (24, 48, 96)
    token_dim: int = 64
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 1e-4
    ema_decay: float = 0.998
    prompt_dropout: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "font_sizes", tuple(int(s) for s in self.font_sizes))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.height % 4 or self.width % 4 or self.height < 8 or self.width < 8:
            raise ValueError(f"height, width: multiples of 4, at least 8, got {self.height} x {self.width}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"min_len, max_len: need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if len(self.font_sizes) != 2 or not 4 <= self.font_sizes[0] <= self.font_sizes[1]:
            raise ValueError(f"font_sizes: (smallest, largest) with 4 <= smallest <= largest, got {self.font_sizes}")
        if len(self.channels) != 3 or min(self.channels) < 8:
            raise ValueError(f"channels: three widths >= 8, got {self.channels}")
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if not 0 <= self.prompt_dropout < 1:
            raise ValueError(f"prompt_dropout: must lie in [0, 1), got {self.prompt_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: must lie in [0, 1), got {self.ema_decay}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (1, self.height, self.width)


@dataclass
class TextGeneratorState:
    """A pretrained text generator: config, the EMA modules (eval mode) and how pretraining went."""

    config: TextGeneratorConfig
    text_encoder: CharEncoder
    net: TextUNet
    seconds: float
    losses: list[float] = field(default_factory=list)
    from_cache: bool = False


def text_generator_hash(config: TextGeneratorConfig) -> str:
    """16 hex digits of sha256 over (format version, config as sorted JSON)."""
    payload = json.dumps({"kind": "text_generator", "format": FORMAT_VERSION, "config": asdict(config)},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_text_networks(config: TextGeneratorConfig) -> tuple[CharEncoder, TextUNet]:
    """Fresh character encoder and U-Net, initialised from ``config.seed``."""
    with seeded_rng(config.seed):
        return (CharEncoder(config.max_len, config.token_dim),
                TextUNet(config.latent_shape, config.token_dim, config.channels))


def _stem(cache_dir: str | Path, config: TextGeneratorConfig) -> Path:
    return Path(cache_dir) / f"text_generator-{config.height}x{config.width}-{text_generator_hash(config)}"


def _load(stem: Path) -> TextGeneratorState | None:
    entry = read_entry(stem)
    if entry is None:
        return None
    tensors, meta = entry
    config = TextGeneratorConfig(**meta["config"])
    text, net = build_text_networks(config)
    text.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("text.")}, strict=True)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
    return TextGeneratorState(config, text.eval(), net.eval(), meta["seconds"], meta["losses"], from_cache=True)


def training_batch(config: TextGeneratorConfig, rng: random.Random) -> tuple[list[str], torch.Tensor]:
    """One pretraining batch: prompts (the null prompt for a ``prompt_dropout`` fraction) and their renders
    (B, 1, H, W) in [-1, 1]."""
    texts = random_strings(config.batch_size, rng, config.min_len, config.max_len)
    styles = [random_style(rng, config.font_sizes) for _ in texts]
    images = render_batch(texts, config.height, config.width, styles) * 2 - 1
    prompts = ["" if rng.random() < config.prompt_dropout else text_prompt(t) for t in texts]
    return prompts, images


def pretrain_text_generator(config: TextGeneratorConfig, cache_dir: str | Path | None = None, *,
                            log: Callable[[str], None] | None = None, log_every: float = 10.0,
                            checkpoints: dict[int, Callable[[TextGeneratorState], None]] | None = None
                            ) -> TextGeneratorState:
    """Rectified-flow pretraining of (character encoder, U-Net) on renders made on the fly (see the module
    docstring), or the cached result. ``log`` gets a progress line at most every ``log_every`` seconds (and
    the first and last); ``checkpoints`` maps a step count to a callback given the EMA state at that step
    (for measuring how accuracy grows with pretraining)."""
    if not isinstance(config, TextGeneratorConfig):
        raise ValueError(f"config: expected a TextGeneratorConfig, got {type(config).__name__}")
    if cache_dir is not None:
        state = _load(_stem(cache_dir, config))
        if state is not None:
            return state
    if log is not None:
        log(f"the {config.height} x {config.width} generator, {config.steps} steps"
            + (f" (cached in {cache_dir} at the end)" if cache_dir is not None else ""))
    text, net = build_text_networks(config)
    text.train()
    net.train()
    ema_text, ema_net = copy.deepcopy(text).eval(), copy.deepcopy(net).eval()
    params = list(text.parameters()) + list(net.parameters())
    ema_params = list(ema_text.parameters()) + list(ema_net.parameters())
    for p in ema_params:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    rng = random.Random(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    losses, block = [], []
    t0 = last = time.perf_counter()
    with stopping.phase(f"pretraining the text generator ({config.steps} steps; nothing is cached before the end)"):
        for step in range(config.steps):
            for g in opt.param_groups:
                g["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup))
            prompts, x0 = training_batch(config, rng)
            t = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(config.batch_size, generator=gen))
            noise = torch.randn(x0.shape, generator=gen)
            tb = t.view(-1, 1, 1, 1)
            embeds, pooled = text.encode(prompts)
            loss = F.mse_loss(net((1 - tb) * x0 + tb * noise, t, embeds, pooled), noise - x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
            block.append(float(loss.detach()))
            if len(block) == 50 or step == config.steps - 1:
                losses.append(sum(block) / len(block))
                block = []
            now = time.perf_counter()
            if log is not None and (step == 0 or now - last >= log_every or step == config.steps - 1):
                last = now
                log(f"step {step + 1}/{config.steps} loss {float(loss.detach()):.4f} ({now - t0:.0f} s)")
            if checkpoints and (step + 1) in checkpoints:
                checkpoints[step + 1](TextGeneratorState(config, ema_text, ema_net, now - t0, list(losses)))
    state = TextGeneratorState(config, ema_text, ema_net, time.perf_counter() - t0, losses)
    if cache_dir is not None:
        tensors = {f"text.{k}": v for k, v in ema_text.state_dict().items()}
        tensors.update({f"net.{k}": v for k, v in ema_net.state_dict().items()})
        write_entry(_stem(cache_dir, config), tensors,
                    {"format": FORMAT_VERSION, "config": asdict(config), "seconds": state.seconds, "losses": losses})
    return state
