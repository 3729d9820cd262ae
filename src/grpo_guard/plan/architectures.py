"""The published architectures of the GPU recipes' models, built on the meta device (no weights, no download).

The configurations below are facts: the ``config.json`` values of the hub repositories the recipes load
(``stabilityai/stable-diffusion-3.5-medium`` and ``-large``, ``black-forest-labs/FLUX.1-dev``): each
pipeline's transformer, VAE and text encoders. :func:`meta_backbone` builds the pipeline from them with
every module on the meta device (shapes and dtypes, no storage), wraps it in the project's own
``SD3Backbone`` / ``FluxBackbone`` with the recipe's LoRA settings (so that the recipe's LoRA targets
are applied by the same code a run uses) and hands it to :mod:`grpo_guard.plan.estimate`. The tokenizers
are the offline ones of :mod:`grpo_guard.backbones.tiny_pipelines` (no text is encoded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import transformers
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                       SD3Transformer2DModel, StableDiffusion3Pipeline)

from ..backbones.diffusers_base import DTYPES, parse_diffusers_params
from ..backbones.flux import FluxBackbone
from ..backbones.sd3 import SD3Backbone
from ..backbones.tiny_pipelines import clip_tokenizer, t5_tokenizer

__all__ = ["Architecture", "ARCHITECTURES", "architecture_of", "meta_backbone", "REWARD_MODEL_PARAMS"]

_T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64,
               feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
_CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
               num_attention_heads=20, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
            layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            use_quant_conv=False, use_post_quant_conv=False)
_SD3_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                        joint_attention_dim=4096, pooled_projection_dim=2048, qk_norm="rms_norm")


@dataclass(frozen=True)
class Architecture:
    """One pipeline: ``kind`` (``sd3`` / ``flux``), the transformer's and VAE's diffusers configs, the text
    encoders as ``(transformers class name, config)`` in the pipeline's order, the scheduler's config."""

    kind: str
    transformer: dict
    vae: dict
    text_encoders: tuple[tuple[str, dict], ...]
    scheduler: dict = field(default_factory=dict)


#: hub id -> the published architecture (config.json values)
ARCHITECTURES: dict[str, Architecture] = {
    "stabilityai/stable-diffusion-3.5-medium": Architecture(
        "sd3", dict(_SD3_TRANSFORMER, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                    pos_embed_max_size=384, dual_attention_layers=tuple(range(13))),
        dict(_VAE, scaling_factor=1.5305, shift_factor=0.0609),
        (("CLIPTextModelWithProjection", _CLIP_L), ("CLIPTextModelWithProjection", _CLIP_G), ("T5EncoderModel", _T5_XXL)),
        dict(shift=3.0)),
    "stabilityai/stable-diffusion-3.5-large": Architecture(
        "sd3", dict(_SD3_TRANSFORMER, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                    pos_embed_max_size=192),
        dict(_VAE, scaling_factor=1.5305, shift_factor=0.0609),
        (("CLIPTextModelWithProjection", _CLIP_L), ("CLIPTextModelWithProjection", _CLIP_G), ("T5EncoderModel", _T5_XXL)),
        dict(shift=3.0)),
    "black-forest-labs/FLUX.1-dev": Architecture(
        "flux", dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                     num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                     axes_dims_rope=(16, 56, 56)),
        dict(_VAE, scaling_factor=0.3611, shift_factor=0.1159),
        (("CLIPTextModel", {k: v for k, v in _CLIP_L.items() if k != "projection_dim"}), ("T5EncoderModel", _T5_XXL)),
        dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
             max_image_seq_len=4096)),
}

#: reward name -> parameters of the model it runs on the GPU (about; the published models' sizes), for the plan.
#: ``ocr`` runs on the CPU (onnxruntime); ``geneval`` and ``geneval_strict`` share one engine.
REWARD_MODEL_PARAMS: dict[str, tuple[float, str]] = {
    "pickscore": (986e6, "CLIP ViT-H/14"),
    "hpsv2": (986e6, "CLIP ViT-H/14"),
    "clip_score": (428e6, "CLIP ViT-L/14"),
    "aesthetic": (429e6, "CLIP ViT-L/14 + MLP"),
    "imagereward": (450e6, "BLIP ViT-L + BERT"),
    "geneval": (497e6, "Mask2Former Swin-S + CLIP ViT-L/14"),
    "geneval_strict": (497e6, "Mask2Former Swin-S + CLIP ViT-L/14"),
}


def architecture_of(pretrained: str) -> Architecture:
    """The published architecture of ``pretrained`` (a hub id of :data:`ARCHITECTURES`); a one-line
    ``ValueError`` for any other."""
    if pretrained not in ARCHITECTURES:
        raise ValueError(f"backbone.params.pretrained: no published architecture known for {pretrained!r}; plan knows "
                         f"{', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[pretrained]


def _text_encoder(name: str, config: dict, dtype: torch.dtype):
    config_cls = transformers.T5Config if name == "T5EncoderModel" else transformers.CLIPTextConfig
    return getattr(transformers, name)(config_cls(**config)).to(dtype)


def meta_backbone(backbone_name: str, params: dict):
    """The recipe's backbone (``sd3`` or ``flux`` with its ``backbone.params``) with every weight on the meta
    device: ``(backbone, architecture)``. The recipe's LoRA targets, rank, gradient checkpointing and full
    fine-tuning are applied by the backbone's own constructor."""
    p = parse_diffusers_params(params, {"negative_prompt": ""} if backbone_name == "sd3" else {"dynamic_shift": True})
    arch = architecture_of(p["pretrained"])
    if arch.kind != backbone_name:
        raise ValueError(f"backbone: {p['pretrained']!r} is a {arch.kind} pipeline, not {backbone_name}")
    dtype = DTYPES[p["dtype"]]
    common = dict(lora_rank=p["lora_rank"], lora_alpha=p["lora_alpha"], lora_targets=p["lora_targets"],
                  full_finetune=p["full_finetune"], gradient_checkpointing=p["gradient_checkpointing"],
                  resolution=p["resolution"])
    with torch.device("meta"):
        vae = AutoencoderKL(**arch.vae).to(dtype)
        encoders = [_text_encoder(name, cfg, dtype) for name, cfg in arch.text_encoders]
        scheduler = FlowMatchEulerDiscreteScheduler(**arch.scheduler)
        if arch.kind == "sd3":
            pipe = StableDiffusion3Pipeline(
                transformer=SD3Transformer2DModel(**arch.transformer).to(dtype), scheduler=scheduler, vae=vae,
                text_encoder=encoders[0], tokenizer=clip_tokenizer(), text_encoder_2=encoders[1],
                tokenizer_2=clip_tokenizer(), text_encoder_3=encoders[2], tokenizer_3=t5_tokenizer())
        else:
            pipe = FluxPipeline(transformer=FluxTransformer2DModel(**arch.transformer).to(dtype), scheduler=scheduler,
                                vae=vae, text_encoder=encoders[0], tokenizer=clip_tokenizer(),
                                text_encoder_2=encoders[1], tokenizer_2=t5_tokenizer())
    # the backbone outside the meta context: its own small buffers (Flux's image ids) are real; the LoRA layers
    # follow their base layers onto the meta device
    if arch.kind == "sd3":
        backbone = SD3Backbone(pipe, max_sequence_length=p["max_sequence_length"] or 256,
                               negative_prompt=p["negative_prompt"], **common)
    else:
        backbone = FluxBackbone(pipe, max_sequence_length=p["max_sequence_length"] or 512,
                                dynamic_shift=p["dynamic_shift"], **common)
    return backbone, arch
