"""The toy world's generator: its config, pretraining, cache and sampling, over the text encoder
(:mod:`.text_encoder`), the velocity networks (:mod:`.velocity_nets`) and the latent layouts (:mod:`.latents`).

Everything is built in code from random weights (no model hub) and pretrained on the ``base``
split of the digits (see :mod:`grpo_guard.world.data`) only.

Conventions (shared with :mod:`grpo_guard.core`, see ``docs/method.md`` section 1):

* Images are float32 (B, 1, H, W) in [-1, 1] (-1 = paper, +1 = full ink) inside the world; the
  backbone's ``decode`` maps them to [0, 1].
* A latent is the image itself (layout ``"pixels"``: (1, H, W)) or its FIXED space-to-depth
  rearrangement (layout ``"latent16"``: (16, H/4, W/4), every 4x4 pixel block becomes the 16
  channels of one latent position, as ``torch.nn.functional.pixel_unshuffle``). The rearrangement
  is a permutation of coordinates, so D = H * W in both layouts and inner products (hence
  projections of perturbations) are the same in latent and image space.
* Rectified flow in SD3's convention: sigma = t runs from 1 (noise) to 0 (data),
  ``x_t = (1 - t) x_0 + t x_1`` with ``x_1 ~ N(0, I)``; the network predicts the velocity
  ``v ~ x_1 - x_0``; training draws t from a logit-normal distribution.
* Every velocity network has the signature
  ``net(latents (B, *latent_shape), sigma (B,), embeds (B, L, E), pooled (B, P)) -> (B, *latent_shape)``.

The text encoder (word-level tokenizer over a fixed vocabulary + a small transformer encoder) is
trained jointly with the velocity network and frozen afterwards. Caching writes safetensors + JSON
keyed by a hash of the config (never pickle).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import stopping
from ..cache_entry import read_entry, write_entry
from ..core.sde import sde_step
from .data import make_splits, prompt_for_label
from .gold import seeded_rng
from .latents import images_to_latents, latent_shape_for
from .text_encoder import DIGIT_NAMES, TextEncoder
from .velocity_nets import ConvVelocity, MLPVelocity, SD3Velocity

__all__ = ["NET_TYPES", "GeneratorConfig", "PretrainReport", "GeneratorState", "build_networks", "generator_config_hash",
           "pretrain", "save_state", "load_state", "euler_sample", "route_survival", "checkerboard"]

FORMAT_VERSION = 1
NET_TYPES = ("mlp", "conv", "sd3")


# ============================================================================================
# config, state, pretraining
# ============================================================================================
@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that determines a pretrained toy generator (its hash keys the cache).

    Attributes:
        net: ``"mlp"``, ``"conv"`` or ``"sd3"``.
        resolution: image side R (multiple of 8); D = R * R.
        layout: ``"pixels"`` (1, R, R) or ``"latent16"`` (16, R/4, R/4).
        steps, batch_size, lr, weight_decay: AdamW rectified-flow training.
        warmup: linear learning-rate warm-up steps.
        ema_decay: EMA of the weights (with the usual (1+n)/(10+n) ramp); the state holds the EMA.
        prompt_dropout: probability of replacing a prompt with the empty prompt (for CFG).
        name_prompts: probability of writing the digit as its name ("a handwritten seven").
        logit_mean, logit_std: t = sigmoid(N(logit_mean, logit_std^2)).
        data_noise: std of Gaussian noise added to the training images at each step (0 = none);
            a knob that gives the data some high-frequency variance.
        seed, split_seed: training seed; seed of the data split (``make_splits``).
        text_*: text encoder size. width/depth (mlp), channels (conv), layers/heads/head_dim (sd3).
    """

    net: str = "mlp"
    resolution: int = 8
    layout: str = "pixels"
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    ema_decay: float = 0.995
    prompt_dropout: float = 0.1
    name_prompts: float = 0.25
    logit_mean: float = 0.0
    logit_std: float = 1.0
    data_noise: float = 0.0
    seed: int = 0
    split_seed: int = 0
    text_max_length: int = 8
    text_dim: int = 64
    text_pooled_dim: int = 64
    text_layers: int = 2
    mlp_width: int = 256
    mlp_depth: int = 4
    conv_channels: tuple[int, ...] = (16, 32, 64)
    sd3_layers: int = 4
    sd3_heads: int = 4
    sd3_head_dim: int = 32
    sd3_patch_size: int = 2

    def __post_init__(self) -> None:
        if self.net not in NET_TYPES:
            raise ValueError(f"net: unknown value {self.net!r}; expected one of {NET_TYPES}")
        latent_shape_for(self.resolution, self.layout)  # validates resolution and layout
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if not 0 <= self.prompt_dropout < 1:
            raise ValueError(f"prompt_dropout: must lie in [0, 1), got {self.prompt_dropout}")
        if not 0 <= self.name_prompts <= 1:
            raise ValueError(f"name_prompts: must lie in [0, 1], got {self.name_prompts}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: must lie in [0, 1), got {self.ema_decay}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if not self.data_noise >= 0:
            raise ValueError(f"data_noise: must be >= 0, got {self.data_noise}")
        object.__setattr__(self, "conv_channels", tuple(int(c) for c in self.conv_channels))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return latent_shape_for(self.resolution, self.layout)


@dataclass
class PretrainReport:
    """What pretraining did. ``seconds`` is the training time of the run that produced the weights
    (not the load time when ``from_cache``); ``losses`` is the mean loss of each block of 50 steps."""

    config_hash: str
    steps: int
    seconds: float
    final_loss: float
    losses: list[float] = field(default_factory=list)
    net_params: int = 0
    text_params: int = 0
    from_cache: bool = False


@dataclass
class GeneratorState:
    """A pretrained generator: config, frozen-able modules (EMA weights, eval mode) and its report."""

    config: GeneratorConfig
    text_encoder: TextEncoder
    net: nn.Module
    report: PretrainReport

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape


def generator_config_hash(config: GeneratorConfig) -> str:
    """16 hex digits of sha256 over (format version, config as sorted JSON)."""
    payload = json.dumps({"kind": "toy_generator", "format": FORMAT_VERSION, "config": asdict(config)},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_networks(config: GeneratorConfig) -> tuple[TextEncoder, nn.Module]:
    """Fresh (randomly initialised, seeded by ``config.seed``) text encoder and velocity net."""
    with seeded_rng(config.seed):
        text = TextEncoder(config.text_max_length, config.text_dim, config.text_pooled_dim, config.text_layers)
        shape = config.latent_shape
        if config.net == "mlp":
            net = MLPVelocity(shape, config.text_dim, config.text_pooled_dim, config.mlp_width, config.mlp_depth)
        elif config.net == "conv":
            net = ConvVelocity(shape, config.text_dim, config.text_pooled_dim, config.conv_channels)
        else:
            net = SD3Velocity(shape, config.text_dim, config.text_pooled_dim, config.sd3_layers, config.sd3_heads,
                              config.sd3_head_dim, config.sd3_patch_size)
    return text, net


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _stem(cache_dir: str | Path, config: GeneratorConfig) -> Path:
    return Path(cache_dir) / f"toy_generator-{config.net}-{config.layout}-{config.resolution}-" \
                             f"{generator_config_hash(config)}"


def save_state(stem: str | Path, state: GeneratorState) -> None:
    """Write the cache entry ``stem`` (:mod:`grpo_guard.cache_entry`): ``<stem>.safetensors`` (keys ``text.*``
    and ``net.*``) and ``<stem>.json`` (config, report and the manifest), each atomically."""
    tensors = {f"text.{k}": v for k, v in state.text_encoder.state_dict().items()}
    tensors.update({f"net.{k}": v for k, v in state.net.state_dict().items()})
    meta = {"format": FORMAT_VERSION, "config": asdict(state.config), "report": asdict(state.report)}
    write_entry(stem, tensors, meta)


def load_state(stem: str | Path, log: Callable[[str], None] = print) -> GeneratorState | None:
    """Rebuild a :class:`GeneratorState` written by :func:`save_state` (modules in eval mode); None when there
    is no entry, or when it is incomplete or corrupt (then it is removed, with a one-line notice)."""
    entry = read_entry(stem, log)
    if entry is None:
        return None
    tensors, meta = entry
    cfg = dict(meta["config"])
    cfg["conv_channels"] = tuple(cfg["conv_channels"])
    config = GeneratorConfig(**cfg)
    text, net = build_networks(config)
    text.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("text.")}, strict=True)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
    report = PretrainReport(**{**meta["report"], "from_cache": True})
    return GeneratorState(config, text.eval(), net.eval(), report)


def _training_prompts(labels: Tensor, config: GeneratorConfig, gen: torch.Generator) -> list[str]:
    drop = torch.rand(len(labels), generator=gen) < config.prompt_dropout
    named = torch.rand(len(labels), generator=gen) < config.name_prompts
    out = []
    for lab, d, n in zip(labels.tolist(), drop.tolist(), named.tolist()):
        if d:
            out.append("")
        elif n:
            out.append(f"a handwritten {DIGIT_NAMES[lab]}")
        else:
            out.append(prompt_for_label(lab))
    return out


def pretrain(config: GeneratorConfig, cache_dir: str | Path | None = None, *,
             log: Callable[[str], None] | None = None, log_every: float = 0.0) -> tuple[GeneratorState, PretrainReport]:
    """Rectified-flow pretraining of (text encoder, velocity net) on the ``base`` split only.

    Loss ``|| net((1-t) x0 + t x1, t, text(c)) - (x1 - x0) ||^2`` with logit-normal t, prompt dropout
    to the empty prompt, AdamW with linear warm-up, grad-norm clip 1, EMA of the weights. Seeded and
    deterministic on CPU (given the thread count). With ``cache_dir``, the result is stored as a cache
    entry (safetensors + JSON manifest, :mod:`grpo_guard.cache_entry`) under a config hash and reloaded
    when present and intact. ``log`` gets a progress line every 50 steps, at most one per ``log_every``
    seconds (and the first and the last).

    Returns:
        (state, report): the EMA weights in eval mode, and the :class:`PretrainReport`.
    """
    if not isinstance(config, GeneratorConfig):
        raise ValueError(f"config: expected a GeneratorConfig, got {type(config).__name__}")
    if cache_dir is not None:
        state = load_state(_stem(cache_dir, config))
        if state is not None:
            return state, state.report

    splits = make_splits(config.resolution, seed=config.split_seed)
    x0_all = images_to_latents(splits.base.images, config.layout).contiguous()
    labels_all = splits.base.labels
    text, net = build_networks(config)
    text.train()
    net.train()
    ema_text, ema_net = copy.deepcopy(text).eval(), copy.deepcopy(net).eval()
    for p in list(ema_text.parameters()) + list(ema_net.parameters()):
        p.requires_grad_(False)
    params = list(text.parameters()) + list(net.parameters())
    ema_params = list(ema_text.parameters()) + list(ema_net.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    losses, block = [], []
    t0 = last_log = time.perf_counter()
    with stopping.phase(f"pretraining the toy generator ({config.steps} steps; nothing is cached before the end)"):
        for step in range(config.steps):
            for g in opt.param_groups:
                g["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup))
            idx = torch.randint(len(labels_all), (config.batch_size,), generator=gen)
            x0, lab = x0_all[idx], labels_all[idx]
            if config.data_noise > 0:
                x0 = x0 + config.data_noise * torch.randn(x0.shape, generator=gen)
            prompts = _training_prompts(lab, config, gen)
            t = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(config.batch_size, generator=gen))
            noise = torch.randn(x0.shape, generator=gen)
            tb = t.view(-1, *([1] * (x0.ndim - 1)))
            xt = (1 - tb) * x0 + tb * noise
            embeds, pooled = text.encode(prompts)
            v = net(xt, t, embeds, pooled)
            loss = F.mse_loss(v, noise - x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
            block.append(float(loss.detach()))
            if len(block) == 50 or step == config.steps - 1:
                losses.append(sum(block) / len(block))
                block = []
                now = time.perf_counter()
                if log is not None and (len(losses) == 1 or now - last_log >= log_every or step == config.steps - 1):
                    last_log = now
                    log(f"step {step + 1}/{config.steps} loss {losses[-1]:.4f} ({now - t0:.1f} s)")
    seconds = time.perf_counter() - t0
    # buffers (none expected) follow the live model
    for b_ema, b in zip(list(ema_text.buffers()) + list(ema_net.buffers()), list(text.buffers()) + list(net.buffers())):
        b_ema.copy_(b)
    report = PretrainReport(generator_config_hash(config), config.steps, seconds, losses[-1], losses,
                            _n_params(ema_net), _n_params(ema_text), False)
    state = GeneratorState(config, ema_text, ema_net, report)
    if cache_dir is not None:
        save_state(_stem(cache_dir, config), state)
    return state, report


# ============================================================================================
# sampling and the route-localisation probe
# ============================================================================================
VelocityFn = Callable[[Tensor, Tensor], Tensor]


def euler_sample(velocity: VelocityFn, noise: Tensor, sigmas: Tensor,
                 inject: tuple[int, Tensor] | None = None) -> Tensor:
    """Deterministic Euler ODE from ``noise`` (B, *D) at sigma = 1 to the final latent at sigma = 0.

    ``velocity(x (B, *D), sigma (B,)) -> (B, *D)``; ``sigmas`` a (K+1,) schedule ending in 0
    (:func:`grpo_guard.core.schedule.flow_sigmas`). ``inject = (k, delta)`` adds ``delta`` (broadcast
    to (B, *D)) to the state right after step k (k = 0..K-1), i.e. at sigma_{k+1}.
    """
    x = noise
    b = noise.shape[0]
    for k in range(len(sigmas) - 1):
        s = sigmas[k].expand(b)
        v = velocity(x, s)
        x = sde_step(v, x, sigmas[k], sigmas[k + 1], 0.0, check_inputs=False).next_state
        if inject is not None and inject[0] == k:
            x = x + inject[1]
    return x


def checkerboard(resolution: int) -> Tensor:
    """(1, 1, R, R) Nyquist checkerboard with values +-1 (image space)."""
    yy, xx = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    return (1.0 - 2.0 * ((yy + xx) % 2).float()).view(1, 1, resolution, resolution)


def route_survival(velocity: VelocityFn, noise: Tensor, sigmas: Tensor, pattern: Tensor,
                   steps: Sequence[int]) -> list[float]:
    """Fraction of a perturbation injected after step k that survives to the final latent.

    For each k: run the ODE with ``pattern`` (latent-shaped, (1, *D)) added after step k and without
    it (same noise); survival = mean over samples of ``<x_pert - x, pattern> / <pattern, pattern>``.
    1 = passed through unchanged, 0 = removed.
    """
    with torch.no_grad():
        ref = euler_sample(velocity, noise, sigmas)
        pp = float((pattern * pattern).sum())
        out = []
        for k in steps:
            pert = euler_sample(velocity, noise, sigmas, (k, pattern))
            proj = ((pert - ref) * pattern).flatten(1).sum(1) / pp
            out.append(float(proj.mean()))
    return out
