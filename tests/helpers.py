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
