"""The toy world's velocity networks: an MLP, a small conv net and diffusers' SD3 transformer.

Every one has the signature ``net(latents (B, *latent_shape), sigma (B,), embeds (B, L, E), pooled (B, P))
-> (B, *latent_shape)`` and predicts the rectified-flow velocity ``v ~ x_1 - x_0`` (SD3's convention: sigma
runs from 1, noise, to 0, data). :data:`LORA_TARGETS` names each net's layers that RL adapts with LoRA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["timestep_embedding", "MLPVelocity", "ConvVelocity", "SD3Velocity", "LORA_TARGETS"]


def timestep_embedding(sigma: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (B, dim) of ``1000 * sigma`` (the scheduler's timestep), sigma (B,) in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
    arg = (1000.0 * sigma.float())[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class _CondEmbed(nn.Module):
    """Conditioning vector (B, width) = MLP(timestep embedding) + Linear(pooled)."""

    def __init__(self, pooled_dim: int, width: int, time_dim: int = 128):
        super().__init__()
        self.time_dim = time_dim
        self.time = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.text = nn.Linear(pooled_dim, width)

    def forward(self, sigma: Tensor, pooled: Tensor) -> Tensor:
        return self.time(timestep_embedding(sigma, self.time_dim)) + self.text(pooled)


class _AdaLNBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.ada = nn.Linear(width, 3 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.ada(F.silu(c)).chunk(3, dim=1)
        h = self.fc2(F.gelu(self.fc1(self.norm(x) * (1 + scale) + shift)))
        return x + (1 + gate) * h


class MLPVelocity(nn.Module):
    """Flattened-latent MLP with adaLN residual blocks conditioned on (sigma, pooled text).

    Ignores the token embeddings. Fast; meant for small D (8x8). LoRA targets: ``fc1``, ``fc2``.
    """

    def __init__(self, latent_shape: tuple[int, ...], embed_dim: int, pooled_dim: int, width: int = 256,
                 depth: int = 4):
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        d = math.prod(self.latent_shape)
        self.cond = _CondEmbed(pooled_dim, width)
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList([_AdaLNBlock(width) for _ in range(depth)])
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, d)

    def forward(self, latents: Tensor, sigma: Tensor, embeds: Tensor, pooled: Tensor) -> Tensor:
        c = self.cond(sigma, pooled)
        h = self.inp(latents.flatten(1))
        for blk in self.blocks:
            h = blk(h, c)
        return self.out(F.silu(self.out_norm(h))).view(latents.shape)


class _ResBlock(nn.Module):
    """Conv residual block with adaptive group norm: GN(h) * (1 + scale(c)) + shift(c)."""

    def __init__(self, cin: int, cout: int, cdim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(math.gcd(groups, cout), cout, affine=False)
        self.ada = nn.Linear(cdim, 2 * cout)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.ada(F.silu(c))[..., None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class ConvVelocity(nn.Module):
    """Small U-Net with adaptive group-norm conditioning on (sigma, pooled text).

    ``channels[i]`` is the width at level i (level i has spatial size H / 2**i); one residual block
    per level on the way down and up, skip connections by concatenation. Ignores the token
    embeddings. LoRA targets: ``conv1``, ``conv2``.
    """

    def __init__(self, latent_shape: tuple[int, ...], embed_dim: int, pooled_dim: int,
                 channels: tuple[int, ...] = (16, 32, 64), cond_dim: int = 128, groups: int = 8):
        super().__init__()
        cin, h, w = latent_shape
        if h % (2 ** (len(channels) - 1)) or w % (2 ** (len(channels) - 1)):
            raise ValueError(f"channels: {len(channels)} levels need H, W divisible by {2 ** (len(channels) - 1)}, "
                             f"latent is {h}x{w}")
        self.latent_shape = tuple(latent_shape)
        self.cond = _CondEmbed(pooled_dim, cond_dim)
        self.inp = nn.Conv2d(cin, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, ch in enumerate(channels):
            prev = channels[max(i - 1, 0)]
            self.down.append(_ResBlock(prev, ch, cond_dim, groups))
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = _ResBlock(channels[-1], channels[-1], cond_dim, groups)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(channels))):
            above = channels[-1] if i == len(channels) - 1 else channels[i + 1]
            self.up.append(_ResBlock(above + channels[i], channels[i], cond_dim, groups))
            if i > 0:
                self.upsample.append(nn.Conv2d(channels[i], channels[i], 3, padding=1))
        self.out_norm = nn.GroupNorm(math.gcd(groups, channels[0]), channels[0])
        self.out = nn.Conv2d(channels[0], cin, 3, padding=1)

    def forward(self, latents: Tensor, sigma: Tensor, embeds: Tensor, pooled: Tensor) -> Tensor:
        c = self.cond(sigma, pooled)
        h = self.inp(latents)
        skips = []
        for i, blk in enumerate(self.down):
            h = blk(h, c)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, c)
        for j, blk in enumerate(self.up):
            h = blk(torch.cat([h, skips.pop()], dim=1), c)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))


class SD3Velocity(nn.Module):
    """diffusers' ``SD3Transformer2DModel`` (patch size 2) fed the toy text encoder's embeds/pooled.

    The model's ``timestep`` input is ``1000 * sigma`` (what the SD3 pipeline passes). The wrapped
    model is ``self.transformer`` (LoRA is attached there with ``add_adapter``).
    """

    def __init__(self, latent_shape: tuple[int, ...], embed_dim: int, pooled_dim: int, layers: int = 4,
                 heads: int = 4, head_dim: int = 32, patch_size: int = 2):
        super().__init__()
        # diffusers: imported where used (seconds to import; runs that need none skip it)
        from diffusers import SD3Transformer2DModel

        cin, h, w = latent_shape
        if h != w or h % patch_size:
            raise ValueError(f"latent_shape: the sd3 net needs a square latent with side divisible by the patch "
                             f"size {patch_size}, got {latent_shape}")
        self.latent_shape = tuple(latent_shape)
        self.transformer = SD3Transformer2DModel(
            sample_size=h, patch_size=patch_size, in_channels=cin, out_channels=cin, num_layers=layers,
            attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=embed_dim,
            caption_projection_dim=heads * head_dim, pooled_projection_dim=pooled_dim,
            pos_embed_max_size=h // patch_size,
            qk_norm="rms_norm", dual_attention_layers=())

    def forward(self, latents: Tensor, sigma: Tensor, embeds: Tensor, pooled: Tensor) -> Tensor:
        return self.transformer(hidden_states=latents, encoder_hidden_states=embeds, pooled_projections=pooled,
                                timestep=1000.0 * sigma, return_dict=False)[0]


#: default LoRA target modules of each net type
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "mlp": ("fc1", "fc2"),
    "conv": ("conv1", "conv2"),
    "sd3": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
}
