"""Flux.1 (diffusers ``FluxPipeline``) behind the backbone interface.

Latents stay unpacked (B, 16, h, w) in the trainer (the SDE is elementwise, so packing is only a
layout); the forward packs 2 x 2 patches into tokens, calls the transformer with ``timestep = sigma``
(the pipeline's ``t / 1000``), the distilled guidance embedding ``guidance = guidance_scale`` (Flux.1-dev:
ONE call, no CFG) and the image/text position ids, and unpacks the velocity. The sigma schedule uses
Flux's resolution-dependent dynamic shift (``mu`` from the number of latent tokens), as the pipeline does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import flow_sigmas, flux_mu
from .base import Conditioning
from .diffusers_base import DTYPES, DiffusersBackbone, load_pipeline, parse_diffusers_params

__all__ = ["FluxBackbone", "make_flux_backbone", "FLUX_LORA_TARGETS", "pack_latents", "unpack_latents"]

#: attention projections of the double- and single-stream blocks
FLUX_LORA_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                     "attn.add_v_proj", "attn.to_add_out")


def pack_latents(x: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): diffusers' Flux token layout."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`pack_latents` for latent size (h, w)."""
    b, _, d = x.shape
    return x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


class FluxBackbone(DiffusersBackbone):
    """Flux.1 with LoRA or full fine-tuning; see :class:`DiffusersBackbone`, plus ``max_sequence_length``
    (T5 tokens, default 512)."""

    default_lora_targets = FLUX_LORA_TARGETS
    packed = True

    def __init__(self, pipe, *, max_sequence_length: int = 512, dynamic_shift: bool = True, **kw):
        # diffusers: imported where used (seconds to import; runs that need none skip it)
        from diffusers import FluxPipeline

        self.pipeline_cls = FluxPipeline
        super().__init__(pipe, **kw)
        self.max_sequence_length = int(max_sequence_length)
        self.dynamic_shift = bool(dynamic_shift)
        self._text_ids: Tensor | None = None
        _, h, w = self.latent_shape
        self.register_buffer("img_ids", FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu",
                                                                               torch.float32), persistent=False)

    def sigmas(self, num_steps: int, shift: float) -> Tensor:
        """Flux's dynamic shift (``mu`` from the number of latent tokens; ``shift`` is not used), or with
        ``dynamic_shift: false`` the static ``shift`` of SD3's grid (DanceGRPO's Flux sampler: shift 3)."""
        if not self.dynamic_shift:
            return flow_sigmas(num_steps, shift)
        sc = self.pipe.scheduler.config
        _, h, w = self.latent_shape
        mu = flux_mu((h // 2) * (w // 2), sc.get("base_image_seq_len", 256), sc.get("max_image_seq_len", 4096),
                     sc.get("base_shift", 0.5), sc.get("max_shift", 1.15))
        return flow_sigmas(num_steps, mu=mu)

    def _encode_uncached(self, prompts: list[str]) -> tuple:
        emb, pooled, text_ids = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.vae.device,
                                                        max_sequence_length=self.max_sequence_length)
        self._text_ids = text_ids.detach()
        return emb, pooled

    def _conditioning(self, rows: list[Tensor]) -> Conditioning:
        return Conditioning(rows[0], rows[1])

    def forward(self, latents: Tensor, sigma: Tensor, cond: Conditioning, guidance_scale: float) -> Tensor:
        """Velocity (B, 16, h, w) float32; ``guidance_scale`` is the embedded guidance (Flux.1-dev)."""
        self._check(latents, sigma, cond)
        tr = self._transformer()
        dtype = tr.dtype
        b, _, h, w = latents.shape
        if self._text_ids is None:
            raise ValueError("cond: encode prompts with this backbone's encode_prompts first")
        guidance = None
        if tr.config.guidance_embeds:
            guidance = torch.full((b,), float(guidance_scale), device=latents.device, dtype=torch.float32)
        v = tr(hidden_states=pack_latents(latents).to(dtype), timestep=sigma.to(dtype), guidance=guidance,
               pooled_projections=cond.pooled.to(dtype), encoder_hidden_states=cond.embeds.to(dtype),
               txt_ids=self._text_ids.to(latents.device), img_ids=self.img_ids.to(latents.device),
               return_dict=False)[0]
        return unpack_latents(v.float(), h, w)


def make_flux_backbone(params: dict, ctx) -> FluxBackbone:
    """Registry constructor; ``backbone.params``: see ``docs/gpu.md`` (``pretrained`` is required)."""
    from diffusers import FluxPipeline

    p = parse_diffusers_params(params, {"dynamic_shift": True})
    if not isinstance(p["dynamic_shift"], bool):
        raise ValueError(f"backbone.params.dynamic_shift: must be true or false, got {p['dynamic_shift']!r}")
    pipe = load_pipeline(FluxPipeline, p["pretrained"], p["revision"], DTYPES[p["dtype"]])
    return FluxBackbone(pipe, lora_rank=p["lora_rank"], lora_alpha=p["lora_alpha"], lora_targets=p["lora_targets"],
                        full_finetune=p["full_finetune"], gradient_checkpointing=p["gradient_checkpointing"],
                        resolution=p["resolution"], max_sequence_length=p["max_sequence_length"] or 512,
                        dynamic_shift=p["dynamic_shift"])
