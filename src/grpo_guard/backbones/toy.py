"""The toy world's backbone: a pretrained digits generator behind the :class:`Backbone` interface.

Built from a :class:`grpo_guard.world.generator.GeneratorState`: a frozen text encoder, a velocity
network (``mlp``, ``conv`` or diffusers' ``SD3Transformer2DModel``) trained by LoRA (peft) or full
fine-tuning, and a fixed decoder (depth-to-space for the ``latent16`` layout, then [-1, 1] -> [0, 1]).

Conventions: sigma from 1 (noise) to 0 (data); latents (B, *latent_shape) with latent_shape
(1, R, R) or (16, R/4, R/4); images (B, 1, R, R) float32 in [0, 1].
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from torch import Tensor, nn

from ..world.generator import GeneratorConfig, GeneratorState, pretrain
from ..world.latents import latents_to_images
from ..world.velocity_nets import LORA_TARGETS, SD3Velocity
from .base import Backbone, Conditioning

__all__ = ["ToyBackbone", "ToyBackboneConfig", "build_toy_backbone"]


def _tuner_layers(module: nn.Module):
    # peft (it imports transformers): imported where used (seconds to import; runs that need none skip it)
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


class ToyBackbone(Backbone):
    """Pretrained toy generator with LoRA or full fine-tuning of its velocity network.

    Args:
        state: a pretrained :class:`GeneratorState` (its modules are deep-copied, the state is untouched).
        lora_rank: LoRA rank r (>= 1), or None for full fine-tuning of the velocity net.
        lora_alpha: LoRA alpha (scale alpha / r); defaults to ``lora_rank``.
        lora_targets: module names to adapt; defaults to the net type's ``LORA_TARGETS``.

    LoRA is attached with ``add_adapter`` on the diffusers transformer (sd3) and
    ``peft.inject_adapter_in_model`` otherwise; B is initialised to zero, so the adapted model
    starts equal to the base. The text encoder is frozen (eval, requires_grad False).
    """

    def __init__(self, state: GeneratorState, lora_rank: int | None = None, lora_alpha: float | None = None,
                 lora_targets: Sequence[str] | None = None):
        super().__init__()
        if not isinstance(state, GeneratorState):
            raise ValueError(f"state: expected a GeneratorState, got {type(state).__name__}")
        self.config: GeneratorConfig = state.config
        self.latent_shape = tuple(state.config.latent_shape)
        self.image_size = state.config.resolution  # decoded images are (B, 1, image_size, image_size)
        self._attach(state.text_encoder, state.net, lora_rank, lora_alpha,
                     list(lora_targets) if lora_targets is not None else list(LORA_TARGETS[self.config.net]),
                     self.config.seed, f"the {self.config.net} net")

    def _attach(self, text_encoder: nn.Module, net: nn.Module, lora_rank: int | None, lora_alpha: float | None,
                targets: list[str], seed: int, what: str) -> None:
        """Deep-copy the pretrained ``text_encoder`` (frozen) and ``net``, then make the net trainable: LoRA of
        rank ``lora_rank`` on ``targets`` (B zero, so the adapted model starts equal to the base; A drawn from
        ``seed + 1``), or all its weights with a frozen copy as the reference (``lora_rank`` None)."""
        if lora_rank is not None and (isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1):
            raise ValueError(f"lora_rank: expected None or an int >= 1, got {lora_rank!r}")
        if lora_alpha is not None and not lora_alpha > 0:
            raise ValueError(f"lora_alpha: must be > 0, got {lora_alpha}")
        self.text_encoder = copy.deepcopy(text_encoder).eval()
        self.text_encoder.requires_grad_(False)
        self.net = copy.deepcopy(net).eval()
        self.lora_rank = lora_rank
        self._null_cache: tuple[Tensor, Tensor] | None = None
        if lora_rank is None:
            self.net.requires_grad_(True)
            self.reference_net = copy.deepcopy(self.net).eval()
            self.reference_net.requires_grad_(False)
        else:
            from peft import LoraConfig, inject_adapter_in_model

            lcfg = LoraConfig(r=lora_rank, lora_alpha=float(lora_alpha if lora_alpha is not None else lora_rank),
                              target_modules=targets, lora_dropout=0.0, init_lora_weights=True)
            self.net.requires_grad_(False)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                try:
                    if isinstance(self.net, SD3Velocity):
                        self.net.transformer.add_adapter(lcfg)
                    else:
                        inject_adapter_in_model(lcfg, self.net)
                except ValueError as err:
                    raise ValueError(f"lora_targets: {targets} do not fit {what} ({err})") from err
            if not _tuner_layers(self.net):
                raise ValueError(f"lora_targets: none of {targets} matched a module of {what}")
            for name, p in self.net.named_parameters():
                p.requires_grad_("lora_" in name)
            self.reference_net = None

    # -- prompts ---------------------------------------------------------------------------------
    def _encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return self.text_encoder.encode(list(prompts))

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Conditioning with embeds (B, L, E), pooled (B, P) and the empty prompt's null_embeds/null_pooled."""
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts: expected a list of str, got {type(prompts).__name__}")
        embeds, pooled = self._encode(prompts)
        null_e, null_p = self._encode([""])
        b = len(prompts)
        return Conditioning(embeds, pooled, null_e.expand(b, -1, -1).clone(), null_p.expand(b, -1).clone())

    # -- the velocity ------------------------------------------------------------------------------
    def _net(self) -> nn.Module:
        return self.reference_net if (self._use_reference and self.reference_net is not None) else self.net

    def forward(self, latents: Tensor, sigma: Tensor, cond: Conditioning, guidance_scale: float) -> Tensor:
        """Velocity (B, *latent_shape). ``guidance_scale == 1``: conditional only; otherwise cond and
        uncond rows go through the net in ONE batched call and are combined as ``v_u + w (v_c - v_u)``."""
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents: expected shape (B, {self.latent_shape}), got {tuple(latents.shape)}")
        b = latents.shape[0]
        if sigma.shape != (b,):
            raise ValueError(f"sigma: expected shape ({b},), got {tuple(sigma.shape)}")
        if len(cond) != b:
            raise ValueError(f"cond: expected {b} rows, got {len(cond)}")
        if not guidance_scale >= 0:
            raise ValueError(f"guidance_scale: must be >= 0, got {guidance_scale}")
        net = self._net()
        if guidance_scale == 1:
            return net(latents, sigma, cond.embeds, cond.pooled)
        if cond.null_embeds is None or cond.null_pooled is None:
            raise ValueError("cond: guidance_scale != 1 needs null_embeds and null_pooled")
        v = net(torch.cat([latents, latents]), torch.cat([sigma, sigma]),
                torch.cat([cond.embeds, cond.null_embeds]), torch.cat([cond.pooled, cond.null_pooled]))
        v_c, v_u = v.chunk(2)
        return v_u + guidance_scale * (v_c - v_u)

    # -- images ----------------------------------------------------------------------------------
    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, *latent_shape) -> images (B, 1, R, R) float32 in [0, 1] (depth-to-space, (x+1)/2, clamp)."""
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents: expected shape (B, {self.latent_shape}), got {tuple(latents.shape)}")
        with torch.no_grad():
            img = latents_to_images(latents.float(), self.config.layout)
            return ((img + 1) / 2).clamp(0, 1)

    # -- training ----------------------------------------------------------------------------------
    #: only the velocity net follows train() / eval(); the text encoder and the frozen copy stay in eval
    mode_module = "net"

    def fsdp_units(self) -> list[nn.Module]:
        """The velocity net (and its frozen copy, if any), each as one unit."""
        return [m for m in (self.net, self.reference_net) if m is not None]

    @contextmanager
    def reference(self) -> Iterator[None]:
        """``forward`` is the frozen base model inside: LoRA adapters disabled, or the frozen copy."""
        if self.lora_rank is None:
            with self._reference_flag():
                yield
            return
        layers = _tuner_layers(self.net)
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)
            # enable_adapters(True) turns requires_grad back on for the adapter weights only
            for name, p in self.net.named_parameters():
                p.requires_grad_("lora_" in name)


@dataclass(frozen=True)
class ToyBackboneConfig:
    """How to build a toy backbone.

    Attributes:
        net: ``"mlp"``, ``"conv"`` or ``"sd3"``.
        resolution: image side (multiple of 8).
        layout: ``"pixels"`` or ``"latent16"``.
        lora_rank: LoRA rank, or None for full fine-tuning.
        lora_alpha: LoRA alpha (None = rank).
        cache_dir: where pretrained weights are cached (None: no cache).
        pretrain_steps: pretraining steps.
        seed: pretraining seed.
        generator: extra :class:`GeneratorConfig` fields (overrides), as a tuple of (name, value).
    """

    net: str = "mlp"
    resolution: int = 8
    layout: str = "pixels"
    lora_rank: int | None = 8
    lora_alpha: float | None = None
    cache_dir: str | None = None
    pretrain_steps: int = 600
    seed: int = 0
    generator: tuple[tuple[str, object], ...] = ()

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(net=self.net, resolution=self.resolution, layout=self.layout,
                               steps=self.pretrain_steps, seed=self.seed, **dict(self.generator))


def build_toy_backbone(config: ToyBackboneConfig = ToyBackboneConfig(), verbose: bool = False) -> ToyBackbone:
    """Pretrain (or load from ``config.cache_dir``) and wrap as a :class:`ToyBackbone`; ``verbose`` prints a
    progress line about every 10 s of pretraining."""
    if not isinstance(config, ToyBackboneConfig):
        raise ValueError(f"config: expected a ToyBackboneConfig, got {type(config).__name__}")
    log = (lambda msg: print(f"toy backbone: pretraining {msg}", flush=True)) if verbose else None
    state, _ = pretrain(config.generator_config(), Path(config.cache_dir) if config.cache_dir else None, log=log,
                        log_every=10.0)
    return ToyBackbone(state, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha)


def make_toy_backbone(params: dict, ctx) -> ToyBackbone:
    """Registry constructor: ``backbone.params`` are :class:`ToyBackboneConfig` fields; ``generator`` may
    be a mapping of extra :class:`GeneratorConfig` fields. Pretrained weights are cached under
    ``ctx.cache_dir / "toy"`` unless ``cache_dir`` is given."""
    params = dict(params)
    known = {f.name for f in fields(ToyBackboneConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"backbone.params.{unknown[0]}: unknown option (known: {', '.join(sorted(known))})")
    gen = params.pop("generator", {}) or {}
    if isinstance(gen, dict):
        gen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in gen.items()))
    params.setdefault("cache_dir", str(Path(ctx.cache_dir).expanduser() / "toy"))
    if getattr(ctx, "verbose", False):
        print(f"toy backbone: {params.get('net', 'mlp')} at {params.get('resolution', 8)} px "
              f"(pretrained weights cached in {params['cache_dir']})", flush=True)
    return build_toy_backbone(ToyBackboneConfig(generator=gen, **params), verbose=getattr(ctx, "verbose", False))
