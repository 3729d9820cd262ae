"""Stable Diffusion 3 / 3.5 (diffusers ``StableDiffusion3Pipeline``) behind the backbone interface.

The transformer is called with ``timestep = sigma * 1000`` like the pipeline; classifier-free guidance
runs the conditional and the unconditional (negative prompt, default "") rows in ONE batched call and
combines them as ``v_u + w (v_c - v_u)``. Prompt embeddings (CLIP-L + CLIP-G + T5, concatenated as the
pipeline does) are computed once per distinct prompt and cached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Conditioning
from .diffusers_base import DTYPES, DiffusersBackbone, load_pipeline, parse_diffusers_params

__all__ = ["SD3Backbone", "make_sd3_backbone", "SD3_LORA_TARGETS"]

#: the attention projections Flow-GRPO adapts in SD3.5 (joint blocks: image and context streams)
SD3_LORA_TARGETS = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")


class SD3Backbone(DiffusersBackbone):
    """SD3 / SD3.5 with LoRA or full fine-tuning; see :class:`DiffusersBackbone` for the arguments, plus
    ``max_sequence_length`` (T5 tokens, default 256) and ``negative_prompt`` (default "")."""

    default_lora_targets = SD3_LORA_TARGETS

    def __init__(self, pipe, *, max_sequence_length: int = 256, negative_prompt: str = "", **kw):
        # diffusers: imported where used (seconds to import; runs that need none skip it)
        from diffusers import StableDiffusion3Pipeline

        self.pipeline_cls = StableDiffusion3Pipeline
        super().__init__(pipe, **kw)
        self.max_sequence_length = int(max_sequence_length)
        self.negative_prompt = str(negative_prompt)
        self._null: tuple[Tensor, Tensor] | None = None

    def _encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        emb, _, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None,
                                                    device=self.vae.device, do_classifier_free_guidance=False,
                                                    max_sequence_length=self.max_sequence_length)
        return emb, pooled

    def _encode_uncached(self, prompts: list[str]) -> tuple:
        return self._encode(prompts)

    def _conditioning(self, rows: list[Tensor]) -> Conditioning:
        if self._null is None:
            with torch.no_grad():
                self._null = tuple(t.detach() for t in self._encode([self.negative_prompt]))
        b = rows[0].shape[0]
        null_e, null_p = self._null
        return Conditioning(rows[0], rows[1], null_e.expand(b, -1, -1).clone(), null_p.expand(b, -1).clone())

    def forward(self, latents: Tensor, sigma: Tensor, cond: Conditioning, guidance_scale: float) -> Tensor:
        """Velocity (B, 16, h, w) float32 at ``latents`` (B, 16, h, w), ``sigma`` (B,)."""
        self._check(latents, sigma, cond)
        tr = self._transformer()
        dtype = tr.dtype
        t = sigma * 1000
        if guidance_scale == 1:
            x, emb, pooled, ts = latents, cond.embeds, cond.pooled, t
        else:
            x = torch.cat([latents, latents])
            emb = torch.cat([cond.embeds, cond.null_embeds])
            pooled = torch.cat([cond.pooled, cond.null_pooled])
            ts = torch.cat([t, t])
        v = tr(hidden_states=x.to(dtype), encoder_hidden_states=emb.to(dtype), pooled_projections=pooled.to(dtype),
               timestep=ts.to(dtype), return_dict=False)[0].float()
        if guidance_scale == 1:
            return v
        v_c, v_u = v.chunk(2)
        return v_u + guidance_scale * (v_c - v_u)


def make_sd3_backbone(params: dict, ctx) -> SD3Backbone:
    """Registry constructor; ``backbone.params``: see ``docs/gpu.md`` (``pretrained`` is required)."""
    from diffusers import StableDiffusion3Pipeline

    p = parse_diffusers_params(params, {"negative_prompt": ""})
    pipe = load_pipeline(StableDiffusion3Pipeline, p["pretrained"], p["revision"], DTYPES[p["dtype"]])
    return SD3Backbone(pipe, lora_rank=p["lora_rank"], lora_alpha=p["lora_alpha"], lora_targets=p["lora_targets"],
                       full_finetune=p["full_finetune"], gradient_checkpointing=p["gradient_checkpointing"],
                       resolution=p["resolution"], max_sequence_length=p["max_sequence_length"] or 256,
                       negative_prompt=p["negative_prompt"])
