"""ImageReward v1.0 on transformers' BLIP modules, without the ``image-reward`` package.

ImageReward is BLIP (a ViT-L/16 image encoder and a BERT-base text encoder whose layers cross-attend to
the image tokens) plus an MLP head on the text encoder's first ([CLS]) output:
``reward = (mlp(h_cls) - 0.16717362830052426) / 1.0333394966054072``. The package builds BLIP with timm,
fairscale and an old transformers API, and preprocesses with torchvision, none of which works beside
this project's torch; here ``ImageReward.pt`` is renamed once, on load, into transformers'
``BlipVisionModel`` and ``BlipTextModel`` (the port of the same BLIP code: its text layers keep BLIP's
names; the vision layers differ only in names) and scored with this project's torch preprocessing
(224 px bicubic resize, centre crop, CLIP mean/std, as the package's transform).

Tokenizer: ``bert-base-uncased`` with BLIP's two added tokens ([DEC] as bos, [ENC]), 35 tokens padded
to length as the package does. ``tests/test_imagereward.py`` checks the converted model against an
independent implementation of BLIP's forward written from the paper's architecture, on a tiny random
checkpoint in ImageReward's key layout.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from .base import RewardContext
from .clip_rewards import (CLIP_MEAN, CLIP_STD, Params, RewardUnavailable, check_reward_inputs, first_line, check_heads,
                           clip_preprocess, count_blocks, load_exact, load_pretrained, load_state_dict_file,
                           resolve_checkpoint)

__all__ = ["IMAGEREWARD_REPO", "IMAGEREWARD_FILE", "IMAGEREWARD_MEAN", "IMAGEREWARD_STD", "ImageRewardModel",
           "ImageRewardReward", "imagereward_to_blip", "make_imagereward"]

IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_FILE = "ImageReward.pt"
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
TEXT_MAX_LENGTH = 35

_VIT_BLOCK = re.compile(r"^blip\.visual_encoder\.blocks\.(\d+)\.(.+)$")
_VIT_BLOCK_NAMES = {
    "norm1.weight": "layer_norm1.weight", "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight", "norm2.bias": "layer_norm2.bias",
    "attn.qkv.weight": "self_attn.qkv.weight", "attn.qkv.bias": "self_attn.qkv.bias",
    "attn.proj.weight": "self_attn.projection.weight", "attn.proj.bias": "self_attn.projection.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}
_VIT_TOP_NAMES = {
    "blip.visual_encoder.cls_token": "embeddings.class_embedding",
    "blip.visual_encoder.pos_embed": "embeddings.position_embedding",
    "blip.visual_encoder.patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "blip.visual_encoder.patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "blip.visual_encoder.norm.weight": "post_layernorm.weight",
    "blip.visual_encoder.norm.bias": "post_layernorm.bias",
}
#: in the checkpoint but not used by the score: BLIP's contrastive projections and a saved buffer
_UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")
#: the MLP head: Linear layers at these positions of the package's nn.Sequential (dropouts between)
_MLP_LINEARS = (0, 2, 4, 6, 7)


class ImageRewardModel(torch.nn.Module):
    """BLIP image encoder + cross-attending text encoder + MLP head; ``forward`` gives the standardised
    ImageReward score (B,) of (B, 3, S, S) normalised pixels and (B, L) token ids with their mask."""

    def __init__(self, vision, text, mlp: torch.nn.Sequential):
        super().__init__()
        self.vision, self.text, self.mlp = vision, text, mlp

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        image = self.vision(pixel_values=pixel_values).last_hidden_state  # (B, 1 + patches, Dv), final norm applied
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        h = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image,
                      encoder_attention_mask=image_mask).last_hidden_state[:, 0]
        return ((self.mlp(h).float() - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).squeeze(-1)


def _mlp_head(weights: dict[str, Tensor]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for pos in range(_MLP_LINEARS[-1] + 1):
        if pos in _MLP_LINEARS:
            w = weights[f"{pos}.weight"]
            layers.append(torch.nn.Linear(w.shape[1], w.shape[0]))
        else:
            layers.append(torch.nn.Identity())  # the package's dropouts (inactive when scoring)
    head = torch.nn.Sequential(*layers)
    head.load_state_dict(weights, strict=True)
    return head


def imagereward_to_blip(state: dict[str, Tensor], *, vision_heads: int = 16, text_heads: int = 12):
    """Rename an ``ImageReward.pt`` state dict into transformers' BLIP modules.

    Returns ``(vision_config, vision_weights, text_config, text_weights, mlp_weights)``: a
    ``BlipVisionConfig`` / ``BlipTextConfig`` with sizes read from the weights' shapes (the head counts,
    ViT-L's 16 and BERT-base's 12, are not in the shapes) and the weights under the modules' names.
    Raises ``ValueError`` naming keys it does not know or misses.
    """
    # transformers: imported where used (seconds to import; runs that need none skip it)
    from transformers import BlipTextConfig, BlipVisionConfig

    vision: dict[str, Tensor] = {}
    text: dict[str, Tensor] = {}
    mlp: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        m = _VIT_BLOCK.match(key)
        if m and m.group(2) in _VIT_BLOCK_NAMES:
            vision[f"encoder.layers.{m.group(1)}.{_VIT_BLOCK_NAMES[m.group(2)]}"] = value
        elif key in _VIT_TOP_NAMES:
            vision[_VIT_TOP_NAMES[key]] = value
        elif key.startswith(_UNUSED):
            continue
        elif key.startswith("blip.text_encoder.") and not key.startswith("blip.text_encoder.pooler."):
            text[key[len("blip.text_encoder."):]] = value
        elif key.startswith("mlp.layers.") and int(key.split(".")[2]) in _MLP_LINEARS:
            mlp[key[len("mlp.layers."):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"not an ImageReward checkpoint: unknown keys {unknown[:4]}"
                         + (f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""))
    need = ["embeddings.class_embedding", "embeddings.position_embedding", "embeddings.patch_embedding.weight",
            "encoder.layers.0.mlp.fc1.weight"]
    need_text = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                 "encoder.layer.0.crossattention.self.key.weight", "encoder.layer.0.intermediate.dense.weight"]
    missing = [f"vision {k}" for k in need if k not in vision] + [f"text {k}" for k in need_text if k not in text]
    missing += [f"mlp layers.{i}" for i in _MLP_LINEARS if f"{i}.weight" not in mlp]
    if missing:
        raise ValueError(f"not an ImageReward checkpoint: missing {missing[:4]}")

    width = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    grid = math.isqrt(vision["embeddings.position_embedding"].shape[1] - 1)
    vocab, text_width = text["embeddings.word_embeddings.weight"].shape
    check_heads("vision", vision_heads, width)
    check_heads("text", text_heads, text_width)
    vision_config = BlipVisionConfig(
        hidden_size=width, intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=count_blocks(vision, "encoder.layers."), num_attention_heads=vision_heads,
        image_size=grid * patch, patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6)
    text_config = BlipTextConfig(
        vocab_size=vocab, hidden_size=text_width,
        encoder_hidden_size=text["encoder.layer.0.crossattention.self.key.weight"].shape[1],
        intermediate_size=text["encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=count_blocks(text, "encoder.layer."), num_attention_heads=text_heads,
        max_position_embeddings=text["embeddings.position_embeddings.weight"].shape[0], hidden_act="gelu",
        layer_norm_eps=1e-12, is_decoder=True,  # is_decoder builds the cross-attention; forward runs as an encoder
        bos_token_id=None, eos_token_id=None, sep_token_id=None, pad_token_id=0)
    return vision_config, vision, text_config, text, mlp


def build_imagereward_model(state: dict[str, Tensor], *, vision_heads: int = 16,
                            text_heads: int = 12) -> ImageRewardModel:
    """An :class:`ImageRewardModel` (eval mode) from an ``ImageReward.pt`` state dict."""
    from transformers import BlipTextModel, BlipVisionModel

    vision_config, vision, text_config, text, mlp = imagereward_to_blip(state, vision_heads=vision_heads,
                                                                        text_heads=text_heads)
    return ImageRewardModel(load_exact(BlipVisionModel, vision_config, vision),
                            load_exact(BlipTextModel, text_config, text, add_pooling_layer=False),
                            _mlp_head(mlp)).eval()


def blip_tokenizer(tokenizer):
    """BLIP's tokenizer from a BERT one: adds [DEC] (bos) and [ENC] as BLIP's ``init_tokenizer`` does, so
    that the ids match ImageReward's 30,524-token embedding."""
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageRewardReward:
    name = "imagereward"

    def __init__(self, model: ImageRewardModel, tokenizer, device: torch.device, dtype: torch.dtype,
                 batch_size: int, scale: float):
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(model.vision.config.image_size)
        self.device, self.dtype, self.batch_size, self.scale = device, dtype, batch_size, scale

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        prompts = check_reward_inputs(self.name, images, prompts)
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = clip_preprocess(images[i:i + self.batch_size].to(self.device), self.image_size, CLIP_MEAN,
                                CLIP_STD).to(self.dtype)
            enc = self.tokenizer(prompts[i:i + self.batch_size], padding="max_length", truncation=True,
                                 max_length=TEXT_MAX_LENGTH, return_tensors="pt")
            r = self.model(x, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            out.append(self.scale * r.float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


def make_imagereward(params: dict, ctx: RewardContext) -> ImageRewardReward:
    """ImageReward v1.0: ``scale * (mlp(h) - mean) / std`` (``scale`` 1; roughly -2..2, higher is better).
    ``checkpoint`` is a local ``ImageReward.pt``; by default it is fetched from the hub repo
    THUDM/ImageReward. ``tokenizer``: a BERT tokenizer (default ``bert-base-uncased``)."""
    p = Params("imagereward", params)
    checkpoint = p.get("checkpoint", None)
    tokenizer_ref = p.get("tokenizer", "bert-base-uncased")
    vision_heads = p.positive_int("vision_heads", 16)
    text_heads = p.positive_int("text_heads", 12)
    cache_dir = p.get("cache_dir", None)
    device, dtype = p.device(ctx), p.dtype()
    batch_size = p.positive_int("batch_size", 16)
    scale = p.number("scale", 1.0)
    p.done()
    path = resolve_checkpoint("imagereward", checkpoint, IMAGEREWARD_REPO, IMAGEREWARD_FILE, cache_dir)
    from transformers import AutoTokenizer

    tokenizer = blip_tokenizer(load_pretrained(AutoTokenizer.from_pretrained, tokenizer_ref, reward="imagereward",
                                               key="tokenizer", cache_dir=cache_dir))
    try:
        model = build_imagereward_model(load_state_dict_file(path), vision_heads=vision_heads, text_heads=text_heads)
    except Exception as e:  # noqa: BLE001 - unreadable files and foreign architectures: one line
        raise RewardUnavailable(f"rewards: imagereward: cannot build ImageReward from {str(path)!r} "
                                f"({type(e).__name__}: {first_line(e)})") from None
    vocab = model.text.config.vocab_size
    if len(tokenizer) != vocab:
        raise RewardUnavailable(f"rewards: imagereward: the tokenizer {tokenizer_ref!r} has {len(tokenizer)} tokens "
                                f"with BLIP's [DEC] and [ENC], the checkpoint {vocab}: not the tokenizer it was "
                                f"trained with (bert-base-uncased)")
    return ImageRewardReward(model, tokenizer, device, dtype, batch_size, scale)
