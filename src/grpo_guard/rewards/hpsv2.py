"""HPS v2 / v2.1 (Human Preference Score) on transformers' ``CLIPModel``, without the ``hpsv2`` package.

HPS v2 is an OpenCLIP ViT-H/14 fine-tuned end to end on human preferences; its score is the cosine of
the image and text embeddings (the diagonal of the package's ``logits_per_image``, about 0.2-0.35).
The ``hpsv2`` package builds that model with its bundled OpenCLIP, which needs torchvision; here the
checkpoint's OpenCLIP weights are renamed once, on load, into a ``CLIPModel`` of the same shape
(:func:`openclip_to_clip`) and scored by the same :class:`~grpo_guard.rewards.clip_rewards.ClipEmbedder`
as PickScore and the CLIP score.

The renaming is exact: OpenCLIP's ViT and text transformer and transformers' CLIP compute the same
function (pre-LayerNorm blocks, exact GELU for ViT-H-14, patch convolution without bias, the text
features taken at the end-of-text token, the projections as matrices), so only the names and the
layout of the fused attention projection differ. ``tests/test_hpsv2.py`` checks the converted model
against OpenCLIP's own model code on a tiny random checkpoint.

The tokenizer is a Hugging Face CLIP tokenizer; the default, ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``,
is OpenCLIP's BPE vocabulary in that format (the one PickScore uses).
"""

from __future__ import annotations

import math
import re

from torch import Tensor

from .base import RewardContext
from .clip_rewards import (ClipEmbedder, ClipReward, Params, RewardUnavailable, first_line, check_heads, count_blocks,
                           load_exact, load_pretrained, load_state_dict_file, resolve_checkpoint)

__all__ = ["HPS_REPO", "HPS_FILES", "HPS_TOKENIZER", "openclip_to_clip", "make_hpsv2"]

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
#: per-block OpenCLIP name -> CLIP name (the fused in_proj is split separately)
_BLOCK_NAMES = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP_NAMES = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight", "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "logit_scale": "logit_scale",
}


def openclip_to_clip(state: dict[str, Tensor], *, vision_heads: int, text_heads: int, eos_token_id: int,
                     bos_token_id: int | None = None, pad_token_id: int | None = None):
    """Rename an OpenCLIP ViT checkpoint (``CLIP`` with a ``VisionTransformer`` tower and the built-in
    text transformer, exact GELU, no layer scale) into ``transformers.CLIPModel`` weights.

    Args:
        state: OpenCLIP ``state_dict`` (a ``module.`` prefix from DDP is removed).
        vision_heads, text_heads: attention heads of each tower (ViT-H-14: 16 and 16); not recoverable
            from the weights' shapes.
        eos_token_id: the tokenizer's end-of-text id; the text features are taken at its first
            occurrence, where OpenCLIP takes them (at the argmax of the ids, which is the same token).

    Returns:
        ``(CLIPConfig, state_dict)``; the sizes are read from the weights' shapes. Raises ``ValueError``
        naming the first keys it does not know (another architecture) or misses.
    """
    # transformers: imported where used (seconds to import; runs that need none skip it)
    from transformers import CLIPConfig

    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        m = _BLOCK.match(key)
        if m:
            tower = "vision_model" if m.group(1) else "text_model"
            base = f"{tower}.encoder.layers.{m.group(2)}."
            rest = m.group(3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]  # weight / bias
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{kind}"] = part
            elif rest in _BLOCK_NAMES:
                out[base + _BLOCK_NAMES[rest]] = value
            else:
                unknown.append(key)
        elif key in _TOP_NAMES:
            out[_TOP_NAMES[key]] = value
        elif key == "text_projection":  # OpenCLIP: x @ P (width, dim); CLIP: Linear weight (dim, width)
            out["text_projection.weight"] = value.t()
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t()
        elif key == "attn_mask":  # a buffer older OpenCLIP versions saved; CLIP builds its causal mask itself
            continue
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"not a plain OpenCLIP ViT checkpoint: unknown keys {unknown[:4]}"
                         + (f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""))
    missing = [k for k in ("token_embedding.weight", "positional_embedding", "text_projection", "visual.proj",
                           "visual.conv1.weight", "visual.positional_embedding",
                           "transformer.resblocks.0.mlp.c_fc.weight",
                           "visual.transformer.resblocks.0.mlp.c_fc.weight") if k not in state]
    if missing:
        raise ValueError(f"not a plain OpenCLIP ViT checkpoint: missing {missing[:4]}")

    vocab, text_width = state["token_embedding.weight"].shape
    vision_width = state["visual.class_embedding"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    proj_dim = state["text_projection"].shape[1]
    if state["visual.proj"].shape[1] != proj_dim:
        raise ValueError(f"text and image projections differ in size ({proj_dim} vs {state['visual.proj'].shape[1]})")
    check_heads("vision", vision_heads, vision_width)
    check_heads("text", text_heads, text_width)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=text_width, num_attention_heads=text_heads,
                         intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                         num_hidden_layers=count_blocks(state, "transformer.resblocks."),
                         max_position_embeddings=state["positional_embedding"].shape[0],
                         hidden_act="gelu", layer_norm_eps=1e-5, eos_token_id=eos_token_id,
                         bos_token_id=bos_token_id, pad_token_id=pad_token_id),
        vision_config=dict(hidden_size=vision_width, num_attention_heads=vision_heads,
                           intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                           num_hidden_layers=count_blocks(state, "visual.transformer.resblocks."),
                           patch_size=patch,
                           image_size=grid * patch, hidden_act="gelu", layer_norm_eps=1e-5),
        projection_dim=proj_dim)
    return config, out


def make_hpsv2(params: dict, ctx: RewardContext) -> ClipReward:
    """HPS v2 / v2.1: ``scale * cos(text, image)`` (``scale`` 1). ``checkpoint`` is a local
    ``HPS_v2.1_compressed.pt``; by default the ``version`` file (``v2.1`` or ``v2.0``) is fetched from the
    hub repo xswu/HPSv2. ``tokenizer``: a CLIP tokenizer (default ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``).
    ``vision_heads`` / ``text_heads`` (16 / 16, ViT-H-14's) matter only for other OpenCLIP ViTs."""
    p = Params("hpsv2", params)
    version = p.get("version", "v2.1")
    if version not in HPS_FILES:
        raise p.error("version", f"expected one of {sorted(HPS_FILES)}, got {version!r}")
    checkpoint = p.get("checkpoint", None)
    tokenizer_ref = p.get("tokenizer", HPS_TOKENIZER)
    vision_heads = p.positive_int("vision_heads", 16)
    text_heads = p.positive_int("text_heads", 16)
    cache_dir = p.get("cache_dir", None)
    device, dtype = p.device(ctx), p.dtype()
    batch_size = p.positive_int("batch_size", 16)
    scale = p.number("scale", 1.0)
    p.done()
    path = resolve_checkpoint("hpsv2", checkpoint, HPS_REPO, HPS_FILES[version], cache_dir)
    from transformers import AutoTokenizer

    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, tokenizer_ref, reward="hpsv2", key="tokenizer",
                                cache_dir=cache_dir)
    try:
        config, weights = openclip_to_clip(load_state_dict_file(path), vision_heads=vision_heads,
                                           text_heads=text_heads, eos_token_id=tokenizer.eos_token_id,
                                           bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
        from transformers import CLIPModel

        model = load_exact(CLIPModel, config, weights)
    except Exception as e:  # noqa: BLE001 - unreadable files and foreign architectures: one line
        raise RewardUnavailable(f"rewards: hpsv2: cannot build HPS from {str(path)!r} "
                                f"({type(e).__name__}: {first_line(e)})") from None
    if tokenizer.eos_token_id is None or tokenizer.eos_token_id >= config.text_config.vocab_size:
        raise RewardUnavailable(f"rewards: hpsv2: the tokenizer {tokenizer_ref!r} does not fit the checkpoint "
                                f"(end-of-text id {tokenizer.eos_token_id}, vocabulary "
                                f"{config.text_config.vocab_size})")
    embedder = ClipEmbedder(model, tokenizer, device, dtype)
    return ClipReward("hpsv2", embedder, lambda img, txt: scale * (img * txt).sum(-1), batch_size)
