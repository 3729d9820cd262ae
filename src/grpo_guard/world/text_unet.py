"""The text world's networks: a character encoder and a position-encoded U-Net velocity network.

What makes a small generator bind characters to places (measured before the world was built: without
it, crisp glyphs came out in the wrong identity and order): the image tokens of every cross-attention
layer carry a fixed 2-D sin-cos position encoding, and each character token carries its *centred*
index ``2k - (n - 1)`` (k = 0..n-1 in a string of n), so that a slot maps to the same column whatever
the length of the string.

Signatures:
- ``CharEncoder.encode(prompts) -> (embeds (B, L, E), pooled (B, E))``: prompts are text-world prompts
  (``render the text "abc"``) or ``""`` (the null prompt of classifier-free guidance); L = max_len + 1
  (a summary token, then the characters, then padding tokens, which are learned and not masked);
- ``TextUNet(latents (B, 1, H, W), sigma (B,), embeds (B, L, E), pooled (B, E)) -> (B, 1, H, W)``,
  the rectified-flow velocity ``v ~ x_1 - x_0`` (sigma from 1, noise, to 0, data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .text_render import ALPHABET, text_from_prompt
from .velocity_nets import _CondEmbed, _ResBlock

__all__ = ["CharEncoder", "TextUNet", "sincos_2d", "TEXT_LORA_TARGETS"]

#: the layers RL adapts with LoRA: the attention projections and the residual blocks' convolutions
TEXT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out", "conv1", "conv2")


class CharEncoder(nn.Module):
    """Characters -> tokens: embedding of the character + embedding of its centred index, then one
    transformer layer (so every token also sees the length and its neighbours).

    Token 0 is a summary token (its output is the pooled embedding); the null prompt ``""`` is a summary
    token followed by padding only.
    """

    def __init__(self, max_len: int = 5, dim: int = 64):
        super().__init__()
        self.max_len, self.dim = max_len, dim
        self.chars = nn.Embedding(len(ALPHABET) + 2, dim)  # the alphabet, then padding, then the summary token
        self.index = nn.Embedding(2 * max_len - 1, dim)  # centred index 2k - (n - 1) + (max_len - 1)
        self.layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                                norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(char ids (B, L), index ids (B, L)), L = max_len + 1."""
        pad, summary = len(ALPHABET), len(ALPHABET) + 1
        ids, idx = [], []
        for p in prompts:
            text = text_from_prompt(p)
            if len(text) > self.max_len or any(c not in ALPHABET for c in text):
                raise ValueError(f"prompts: {text!r} is not 0-{self.max_len} characters of {ALPHABET!r}")
            n = len(text)
            row = [summary] + [ALPHABET.index(c) for c in text] + [pad] * (self.max_len - n)
            centred = [self.max_len - 1] + [2 * k - (n - 1) + self.max_len - 1 for k in range(n)]
            ids.append(row)
            idx.append(centred + [self.max_len - 1] * (self.max_len - n))
        return torch.tensor(ids), torch.tensor(idx)

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids, idx = self.tokenize(prompts)
        dev = self.chars.weight.device
        h = self.norm(self.layer(self.chars(ids.to(dev)) + self.index(idx.to(dev))))
        return h, h[:, 0]


def sincos_2d(h: int, w: int, dim: int) -> Tensor:
    """A fixed 2-D sin-cos position encoding (h * w, dim): half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"dim: must be a multiple of 4, got {dim}")
    quarter = dim // 4
    freqs = torch.exp(-math.log(100.0) * torch.arange(quarter, dtype=torch.float32) / quarter)

    def enc(n: int) -> Tensor:
        a = torch.arange(n, dtype=torch.float32)[:, None] * freqs[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)  # (n, dim / 2)

    rows, cols = enc(h), enc(w)
    return torch.cat([rows[:, None].expand(h, w, -1), cols[None].expand(h, w, -1)], dim=2).reshape(h * w, dim)


class _CrossAttention(nn.Module):
    """Image features (B, C, h, w) attend to the character tokens (B, L, E); queries and keys of the image
    side carry :func:`sincos_2d`. Residual, zero-initialised output."""

    def __init__(self, channels: int, token_dim: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(math.gcd(8, channels), channels)
        self.pos = nn.Linear(channels, channels, bias=False)  # position code -> channels (learned projection)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(token_dim, channels)
        self.to_v = nn.Linear(token_dim, channels)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q_in = self.norm(x).flatten(2).transpose(1, 2)  # (B, hw, C)
        q_in = q_in + self.pos(sincos_2d(h, w, c).to(x.device, x.dtype))[None]
        q = self.to_q(q_in).view(b, h * w, self.heads, -1).transpose(1, 2)
        k = self.to_k(tokens).view(b, tokens.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(tokens).view(b, tokens.shape[1], self.heads, -1).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.to_out(o).transpose(1, 2).view(b, c, h, w)


class TextUNet(nn.Module):
    """A two-down U-Net with adaptive group norm on (sigma, pooled tokens) and position-encoded
    cross-attention to the character tokens at the two coarse levels.

    Levels: (H, W) at ``channels[0]``, (H/2, W/2) at ``channels[1]`` and (H/4, W/4) at ``channels[2]``;
    cross-attention after each residual block of the two coarse levels (down, middle and up).
    """

    def __init__(self, latent_shape: tuple[int, int, int], token_dim: int = 64,
                 channels: tuple[int, int, int] = (24, 48, 96), cond_dim: int = 128):
        super().__init__()
        cin, h, w = latent_shape
        if h % 4 or w % 4:
            raise ValueError(f"latent_shape: H and W must be multiples of 4, got {latent_shape}")
        c0, c1, c2 = channels
        self.latent_shape = tuple(latent_shape)
        self.cond = _CondEmbed(token_dim, cond_dim)
        self.inp = nn.Conv2d(cin, c0, 3, padding=1)
        self.down0 = _ResBlock(c0, c0, cond_dim, 8)
        self.ds0 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.down1 = _ResBlock(c1, c1, cond_dim, 8)
        self.attn_d1 = _CrossAttention(c1, token_dim)
        self.ds1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.mid1 = _ResBlock(c2, c2, cond_dim, 8)
        self.attn_mid = _CrossAttention(c2, token_dim)
        self.mid2 = _ResBlock(c2, c2, cond_dim, 8)
        self.up1 = _ResBlock(c2 + c1, c1, cond_dim, 8)
        self.attn_u1 = _CrossAttention(c1, token_dim)
        self.up0 = _ResBlock(c1 + c0, c0, cond_dim, 8)
        self.out_norm = nn.GroupNorm(8, c0)
        self.out = nn.Conv2d(c0, cin, 3, padding=1)

    def forward(self, latents: Tensor, sigma: Tensor, embeds: Tensor, pooled: Tensor) -> Tensor:
        c = self.cond(sigma, pooled)
        h0 = self.down0(self.inp(latents), c)
        h1 = self.attn_d1(self.down1(self.ds0(h0), c), embeds)
        h = self.mid1(self.ds1(h1), c)
        h = self.mid2(self.attn_mid(h, embeds), c)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.attn_u1(self.up1(torch.cat([h, h1], dim=1), c), embeds)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up0(torch.cat([h, h0], dim=1), c)
        return self.out(F.silu(self.out_norm(h)))
