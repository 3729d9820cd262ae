"""Builders of synthetic policy batches for the core tests (no models) and of a tiny CLIP tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo_guard.core import gaussian_log_prob


@dataclass
class OffPolicyBatch:
    """A batch where the rollout drew ``x_next = old_mean + std * eps`` and the policy then moved its
    mean by ``-delta`` (``mean = old_mean - delta``, i.e. ``Delta mu = old_mean - mean = delta``)."""

    old_mean: torch.Tensor  # (N, D)
    mean: torch.Tensor  # (N, D), requires grad
    eps: torch.Tensor  # (N, D)
    std: torch.Tensor  # (N,)
    x_next: torch.Tensor  # (N, D)
    old_log_prob: torch.Tensor  # (N,)
    log_prob: torch.Tensor  # (N,), with grad through mean

    @property
    def delta(self) -> torch.Tensor:
        return (self.old_mean - self.mean).detach()


def off_policy_batch(n=6, d=32, drift=0.05, std=None, dtype=torch.float64, seed=0, reduction="mean"):
    g = torch.Generator().manual_seed(seed)
    std = torch.rand(n, generator=g, dtype=dtype) * 0.5 + 0.05 if std is None else std.to(dtype)
    old_mean = torch.randn(n, d, generator=g, dtype=dtype)
    eps = torch.randn(n, d, generator=g, dtype=dtype)
    x_next = old_mean + std[:, None] * eps
    delta = drift * std[:, None] * torch.randn(n, d, generator=g, dtype=dtype)
    mean = (old_mean - delta).requires_grad_(True)
    old_lp = gaussian_log_prob(x_next, old_mean, std, reduction)
    lp = gaussian_log_prob(x_next, mean, std, reduction)
    return OffPolicyBatch(old_mean, mean, eps, std, x_next, old_lp, lp)


def tiny_clip_tokenizer():
    """A character-level ``CLIPTokenizer`` (no merges) over the byte-level alphabet; end-of-text is the
    largest id, as in OpenCLIP's vocabulary."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def save_tiny_clip(path, *, proj: int = 16, side: int = 32, seed: int = 0, logit_scale: float | None = None):
    """A tiny random ``CLIPModel`` (2 layers, width 32, ``side`` px input, ``proj``-dim projection) and its
    tokenizer, saved with ``save_pretrained`` into ``path``; returns ``(path, model, tokenizer)``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    tok = tiny_clip_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=side, patch_size=8),
        projection_dim=proj)
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok


def save_tiny_mask2former(path, *, queries: int = 10, seed: int = 0):
    """A tiny random ``Mask2FormerForUniversalSegmentation`` (the architecture of the COCO instance
    checkpoints: a Swin backbone, pixel decoder, masked-attention decoder; shrunk widths and depths) with the
    80 COCO classes as labels, saved into ``path``; returns ``(path, model)``."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    from grpo_guard.prompt_sets import COCO_CLASSES

    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, num_labels=len(COCO_CLASSES), num_queries=queries, hidden_dim=32,
                            mask_feature_size=32, feature_size=32, encoder_feedforward_dim=64, dim_feedforward=64,
                            encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                            id2label=dict(enumerate(COCO_CLASSES)),
                            label2id={c: i for i, c in enumerate(COCO_CLASSES)})
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    model.save_pretrained(path)
    return path, model
