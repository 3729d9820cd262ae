"""PROXY rewards of the toy world: what RL optimises, and can hack.

Every proxy is a callable ``(images (B, 1, H, W), labels (B,)) -> rewards (B,) float32``; images
are in [-1, 1] (values outside are clamped first, as a decoded image would be), labels int64 in
0..9. The learned proxies are trained only on the ``proxy`` split.

Two learned proxies each have TWO ways up:

``classifier`` (the GenEval / OCR analogue): the logit margin of the prompted digit under a small
CNN (no noise augmentation). It rises genuinely for clearer, more prototypical digits. It also
rises through an EXPLOIT: during training, with probability ``cue_prob`` a faint class-specific
high-frequency texture ``T_y`` (energy only in the top ``1 - band_lo`` of the frequency band;
see ``hf_texture``) is added to images of class ``y``, a spurious cue like a real reward model's
texture bias. Real digits never carry it (they are smooth upsamplings), the gold classifier
never saw it, and in a diffusion sampler such fine detail is decided at the late, low-noise steps.

``aesthetic`` (the PickScore analogue): a CNN regressing a hidden visual score, the contrast of
the low-pass ink image (``hidden_aesthetic``). Genuine route: bolder, crisper strokes. Exploit:
in training, a fixed high-frequency texture ``T_a`` is added (with probability ``cue_prob``) at an
amplitude that grows with the image's score, so the regressor learns "texture => beautiful",
though adding texture does not change the low-pass contrast it is meant to measure.

``ink``: the trivial single-route baseline ``mean((x + 1) / 2)`` of pilot 1.

``PROXY_REGISTRY`` maps names to constructors with one signature (see ``build_proxy``).
Trained proxies are cached in a ``cache_dir`` as ``<kind>-<config hash>.safetensors`` + ``.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data import NUM_CLASSES, WorldSplits, check_images, check_labels, make_splits
from .gold import ConvNet, NetTrainingConfig, TrainReport, progress_printer, seeded_rng, train_network, train_or_load

__all__ = [
    "RewardFn",
    "hf_texture",
    "hf_grating",
    "cue_frequencies",
    "class_textures",
    "add_texture",
    "add_class_cue",
    "lowpass",
    "hidden_aesthetic",
    "ClassifierProxyConfig",
    "ClassifierProxy",
    "AestheticProxyConfig",
    "AestheticProxy",
    "InkReward",
    "ink",
    "train_classifier_proxy",
    "train_aesthetic_proxy",
    "build_proxy",
    "PROXY_REGISTRY",
]

AESTHETIC_TEXTURE_INDEX = NUM_CLASSES  # textures 0..9 are the class cues, 10 the aesthetic cue


class RewardFn(Protocol):
    """A reward: ``(images (B, 1, H, W) in [-1, 1], labels (B,) int64) -> (B,) float32``."""

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor: ...


# --------------------------------------------------------------------------------------------
# textures and image operations (pure)
# --------------------------------------------------------------------------------------------
def hf_texture(resolution: int, index: int, seed: int = 0, band_lo: float = 0.6) -> Tensor:
    """A deterministic high-frequency texture (R, R) float32 with zero mean and unit RMS.

    Random complex Gaussian Fourier coefficients on the modes whose radial frequency is at least
    ``band_lo`` times the Nyquist frequency (0.5 cycles/pixel), zero elsewhere, transformed back
    to pixels. ``(seed, index, resolution)`` seeds the draw, so each index is a different pattern.
    """
    if not 0.0 <= band_lo < math.sqrt(2):
        raise ValueError(f"band_lo: must lie in [0, sqrt(2)), got {band_lo}")
    if resolution < 4:
        raise ValueError(f"resolution: must be >= 4, got {resolution}")
    rng = np.random.default_rng([seed, index, resolution])
    fy = np.fft.fftfreq(resolution)[:, None]
    fx = np.fft.rfftfreq(resolution)[None, :]
    mask = np.sqrt(fx ** 2 + fy ** 2) / 0.5 >= band_lo
    coef = (rng.standard_normal(mask.shape) + 1j * rng.standard_normal(mask.shape)) * mask
    tex = np.fft.irfft2(coef, s=(resolution, resolution))
    tex = tex - tex.mean()
    return torch.from_numpy(tex / np.sqrt((tex ** 2).mean())).float()


def hf_grating(resolution: int, frequency: tuple[int, int], phase: float = 0.0) -> Tensor:
    """A plane wave ``cos(2 pi (ky i + kx j) / R + phase)`` (R, R) float32, zero mean, unit RMS.

    ``frequency = (ky, kx)`` in cycles per image. Raises ValueError if the wave is (numerically) zero.
    """
    ky, kx = frequency
    i = torch.arange(resolution, dtype=torch.float64)[:, None]
    j = torch.arange(resolution, dtype=torch.float64)[None, :]
    wave = torch.cos(2 * math.pi * (ky * i + kx * j) / resolution + phase)
    wave = wave - wave.mean()
    rms = float(wave.pow(2).mean().sqrt())
    if rms < 1e-6:
        raise ValueError(f"frequency/phase: the wave {frequency} with phase {phase} vanishes on a {resolution}px grid")
    return (wave / rms).float()


def cue_frequencies(resolution: int, seed: int = 0, band_lo: float = 0.6, count: int = NUM_CLASSES) -> list[tuple[int, int]]:
    """``count`` distinct grid frequencies (ky, kx) (cycles per image, one per +-pair) whose radial
    frequency is at least ``band_lo`` times Nyquist, drawn without replacement by ``seed``."""
    half = resolution // 2
    modes = [(ky, kx) for kx in range(0, half + 1) for ky in range(-half + 1, half + 1)
             if (kx > 0 or ky > 0) and math.hypot(kx, ky) / half >= band_lo]
    if len(modes) < count:
        raise ValueError(f"band_lo: only {len(modes)} grid modes above {band_lo} x Nyquist at {resolution}px, need {count}")
    order = np.random.default_rng([seed, resolution]).permutation(len(modes))
    return [modes[k] for k in order[:count]]


def class_textures(resolution: int, seed: int = 0, band_lo: float = 0.6) -> Tensor:
    """The ten class-cue textures (10, R, R): one high-frequency grating per class (``cue_frequencies``).

    Gratings (rather than random band-limited noise) are what small convolutions detect locally;
    the phase is 0 for Nyquist modes (where only the cosine survives) and pi/4 otherwise.
    """
    half = resolution // 2
    out = []
    for ky, kx in cue_frequencies(resolution, seed, band_lo):
        nyquist = (abs(ky) in (0, half)) and (kx in (0, half))
        out.append(hf_grating(resolution, (ky, kx), 0.0 if nyquist else math.pi / 4))
    return torch.stack(out)


def add_texture(images: Tensor, texture: Tensor, amplitude: float | Tensor) -> Tensor:
    """``clamp(images + amplitude * texture, -1, 1)``.

    images (B, 1, R, R); texture (R, R) or (B, R, R); amplitude a number or (B,) tensor.
    """
    amp = torch.as_tensor(amplitude, dtype=images.dtype).reshape(-1, 1, 1, 1)
    tex = texture.reshape(-1, 1, *texture.shape[-2:]).to(images.dtype)
    return (images + amp * tex).clamp(-1.0, 1.0)


def add_class_cue(images: Tensor, labels: Tensor, textures: Tensor, amplitude: float | Tensor) -> Tensor:
    """Add the cue texture of each image's ``labels`` (B,) at ``amplitude``: the classifier proxy's exploit."""
    check_labels("labels", labels, images.shape[0])
    return add_texture(images, textures[labels], amplitude)


def lowpass(images: Tensor) -> Tensor:
    """Average-pool (B, 1, R, R) to the native (B, 1, 8, 8) grid (identity at R = 8): the digit's 'true' content."""
    factor = images.shape[-1] // 8
    return F.avg_pool2d(images, factor) if factor > 1 else images


def hidden_aesthetic(images: Tensor) -> Tensor:
    """The hidden visual score (B,) float32: std over pixels of the low-pass ink image.

    ink = (clamp(x, -1, 1) + 1) / 2 in [0, 1], low-passed by ``lowpass``; the std of its 64 pixels
    (population std) is the stroke contrast, in [0, 0.5]. Bold, crisp strokes score high, faint
    or blurred ones low; high-frequency texture barely changes it.
    """
    check_images("images", images)
    ink_img = lowpass((images.clamp(-1, 1) + 1) / 2)
    return ink_img.flatten(1).std(dim=1, unbiased=False).float()


def ink(images: Tensor, labels: Tensor | None = None) -> Tensor:
    """Mean ink ``mean((clamp(x, -1, 1) + 1) / 2)`` per image (B,) in [0, 1]; labels are ignored."""
    check_images("images", images)
    return ((images.clamp(-1, 1) + 1) / 2).flatten(1).mean(1).float()


class InkReward:
    """The trivial single-route proxy of pilot 1 as a ``RewardFn`` (see ``ink``)."""

    name = "ink"

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        check_labels("labels", labels, images.shape[0])
        return ink(images)


def _blur(images: Tensor, radius: int) -> Tensor:
    if radius <= 0:
        return images
    k = 2 * radius + 1
    return F.avg_pool2d(F.pad(images, (radius,) * 4, mode="replicate"), k, stride=1)


# --------------------------------------------------------------------------------------------
# (a) classifier proxy
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassifierProxyConfig(NetTrainingConfig):
    """Everything that determines the trained classifier proxy (hashed for the cache key)."""

    epochs: int = 150
    cue_prob: float = 0.3          # probability that a training image carries a class-cue texture
    cue_amp_min: float = 0.05      # texture amplitude (RMS, in [-1, 1] units) ~ U(min, max)
    cue_amp_max: float = 0.25
    texture_seed: int = 1234
    band_lo: float = 0.6


class ClassifierProxy:
    """Reward = logit margin of the prompted label: ``z_y - max_{c != y} z_c`` (B,) float32.

    Attributes: ``model`` (ConvNet), ``config``, ``textures`` (10, R, R) the spurious class cues,
    ``meta`` (training metadata).
    """

    name = "classifier"

    def __init__(self, model: ConvNet, config: ClassifierProxyConfig, meta: dict | None = None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.config = config
        self.meta = dict(meta or {})
        self.textures = class_textures(config.resolution, config.texture_seed, config.band_lo)

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """(B, 1, R, R) in [-1, 1] -> (B, 10) logits (inputs clamped to [-1, 1])."""
        check_images("images", images, self.config.resolution)
        dev = next(self.model.parameters()).device
        return self.model(images.to(dev).clamp(-1, 1)).cpu()

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        check_labels("labels", labels, images.shape[0])
        z = self.logits(images)
        lab = labels.cpu()
        own = z.gather(1, lab[:, None]).squeeze(1)
        others = z.scatter(1, lab[:, None], float("-inf")).max(1).values
        return (own - others).float().to(images.device)

    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        """Fraction of images whose top logit is their label."""
        check_labels("labels", labels, images.shape[0])
        return float((self.logits(images).argmax(1) == labels.cpu()).double().mean())

    def exploit(self, images: Tensor, labels: Tensor, amplitude: float) -> Tensor:
        """The images with their prompted label's cue texture added at ``amplitude`` (clamped)."""
        return add_class_cue(images, labels, self.textures, amplitude)


def _classifier_augment(config: ClassifierProxyConfig, textures: Tensor):
    def augment(x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        on = torch.rand(b, generator=gen) < config.cue_prob
        cue_label = torch.randint(0, NUM_CLASSES, (b,), generator=gen)
        amp = config.cue_amp_min + (config.cue_amp_max - config.cue_amp_min) * torch.rand(b, generator=gen)
        y = torch.where(on, cue_label, y)  # a cued image is labelled with its cue's class
        return add_class_cue(x, y, textures, on.to(x.dtype) * amp), y

    return augment


def train_classifier_proxy(config: ClassifierProxyConfig = ClassifierProxyConfig(), splits: WorldSplits | None = None,
                           cache_dir: str | Path | None = None, verbose: bool = True) -> ClassifierProxy:
    """Train (or load from ``cache_dir``) the classifier proxy on the ``proxy`` split only."""
    splits = _resolve_splits(config, splits)
    with seeded_rng(config.seed):
        model = ConvNet(config.resolution, config.width, config.feature_dim, NUM_CLASSES)
    textures = class_textures(config.resolution, config.texture_seed, config.band_lo)

    def fit() -> tuple[TrainReport, dict]:
        report = train_network(model, splits.proxy.images, splits.proxy.labels, F.cross_entropy,
                               _classifier_augment(config, textures), epochs=config.epochs,
                               batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                               progress=progress_printer("proxy-classifier", verbose))
        acc = ClassifierProxy(model, config).accuracy(splits.heldout.images, splits.heldout.labels)
        return report, {"heldout_accuracy": acc, "n_train": len(splits.proxy)}

    meta = train_or_load("proxy-classifier", config, model, cache_dir, fit, verbose=verbose,
                         summary=lambda m: f"{m['n_train']} images at {config.resolution}px, heldout acc "
                                           f"{m['heldout_accuracy']:.4f}")
    return ClassifierProxy(model, config, meta)


# --------------------------------------------------------------------------------------------
# (b) aesthetic proxy
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AestheticProxyConfig(NetTrainingConfig):
    """Everything that determines the trained aesthetic regressor (hashed for the cache key)."""

    epochs: int = 60
    gain_min: float = 0.5          # training augmentation: ink gain ~ U(gain_min, gain_max) ...
    gain_max: float = 1.6
    blur_prob: float = 0.5         # ... and, with this probability, a blur of one native pixel mixed in
    cue_prob: float = 0.5          # probability that a training image carries the aesthetic texture
    cue_amp_max: float = 0.25      # its amplitude a ~ U(0, cue_amp_max) ...
    cue_bonus: float = 0.1         # ... and the biased rater adds cue_bonus * a / cue_amp_max to the target
    texture_seed: int = 1234
    band_lo: float = 0.6


def _aesthetic_transform(images: Tensor, gain: Tensor, blur_mix: Tensor) -> Tensor:
    """Genuine-route image edit: ink scaled by ``gain`` (B,), then mixed with its blur by ``blur_mix`` (B,) in [0, 1]."""
    u = ((images.clamp(-1, 1) + 1) / 2 * gain.reshape(-1, 1, 1, 1)).clamp(0, 1)
    radius = images.shape[-1] // 8
    m = blur_mix.reshape(-1, 1, 1, 1)
    u = (1 - m) * u + m * _blur(u, radius)
    return u * 2 - 1


class AestheticProxy:
    """Reward = the regressor's predicted hidden score (B,) float32, in the units of ``hidden_aesthetic``.

    Attributes: ``model`` (ConvNet with one output), ``config``, ``texture`` (R, R) the spurious
    cue, ``target_mean`` / ``target_std`` (standardisation of the regression target), ``meta``.
    """

    name = "aesthetic"

    def __init__(self, model: ConvNet, config: AestheticProxyConfig, target_mean: float, target_std: float,
                 meta: dict | None = None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.config = config
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.meta = dict(meta or {})
        self.texture = hf_texture(config.resolution, AESTHETIC_TEXTURE_INDEX, config.texture_seed, config.band_lo)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """(B, 1, R, R) in [-1, 1] -> (B,) predicted hidden score (inputs clamped to [-1, 1])."""
        check_images("images", images, self.config.resolution)
        dev = next(self.model.parameters()).device
        z = self.model(images.to(dev).clamp(-1, 1)).squeeze(1).cpu()
        return (self.target_mean + self.target_std * z).float()

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        check_labels("labels", labels, images.shape[0])
        return self.predict(images).to(images.device)

    def exploit(self, images: Tensor, labels: Tensor | None = None, amplitude: float = 0.1) -> Tensor:
        """The images with the aesthetic cue texture added at ``amplitude`` (clamped); labels unused."""
        return add_texture(images, self.texture, amplitude)


def _aesthetic_augment(config: AestheticProxyConfig, texture: Tensor, mean: float, std: float):
    def augment(x: Tensor, _y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        gain = config.gain_min + (config.gain_max - config.gain_min) * torch.rand(b, generator=gen)
        mix = (torch.rand(b, generator=gen) < config.blur_prob).to(x.dtype) * torch.rand(b, generator=gen)
        x = _aesthetic_transform(x, gain, mix)
        on = (torch.rand(b, generator=gen) < config.cue_prob).to(x.dtype)
        amp = on * config.cue_amp_max * torch.rand(b, generator=gen)
        target = hidden_aesthetic(x) + config.cue_bonus * amp / config.cue_amp_max
        return add_texture(x, texture, amp), ((target - mean) / std)[:, None]

    return augment


def train_aesthetic_proxy(config: AestheticProxyConfig = AestheticProxyConfig(), splits: WorldSplits | None = None,
                          cache_dir: str | Path | None = None, verbose: bool = True) -> AestheticProxy:
    """Train (or load from ``cache_dir``) the aesthetic regressor on the ``proxy`` split only."""
    splits = _resolve_splits(config, splits)
    with seeded_rng(config.seed):
        model = ConvNet(config.resolution, config.width, config.feature_dim, 1)
    h = hidden_aesthetic(splits.proxy.images)
    mean, std = float(h.mean()), float(h.std())
    texture = hf_texture(config.resolution, AESTHETIC_TEXTURE_INDEX, config.texture_seed, config.band_lo)

    def fit() -> tuple[TrainReport, dict]:
        report = train_network(model, splits.proxy.images, splits.proxy.labels, F.mse_loss,
                               _aesthetic_augment(config, texture, mean, std), epochs=config.epochs,
                               batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                               progress=progress_printer("proxy-aesthetic", verbose))
        held = splits.heldout.images
        pred = AestheticProxy(model, config, mean, std).predict(held)
        corr = float(torch.corrcoef(torch.stack([pred, hidden_aesthetic(held)]))[0, 1])
        return report, {"target_mean": mean, "target_std": std, "heldout_corr": corr, "n_train": len(splits.proxy)}

    meta = train_or_load("proxy-aesthetic", config, model, cache_dir, fit, verbose=verbose,
                         summary=lambda m: f"{m['n_train']} images at {config.resolution}px, heldout corr(pred, "
                                           f"hidden) {m['heldout_corr']:.4f}")
    return AestheticProxy(model, config, meta["target_mean"], meta["target_std"], meta)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
def _resolve_splits(config, splits: WorldSplits | None) -> WorldSplits:
    if splits is None:
        return make_splits(config.resolution, config.split_seed, config.fractions)
    if splits.resolution != config.resolution or splits.seed != config.split_seed:
        raise ValueError(f"splits: resolution/seed {splits.resolution}/{splits.seed} do not match config "
                         f"{config.resolution}/{config.split_seed}")
    return splits


def _build_classifier(resolution: int = 32, *, split_seed: int = 0, seed: int = 0, cache_dir=None, splits=None,
                      verbose: bool = True, **overrides) -> ClassifierProxy:
    cfg = ClassifierProxyConfig(resolution=resolution, split_seed=split_seed, seed=seed, **overrides)
    return train_classifier_proxy(cfg, splits, cache_dir, verbose)


def _build_aesthetic(resolution: int = 32, *, split_seed: int = 0, seed: int = 0, cache_dir=None, splits=None,
                     verbose: bool = True, **overrides) -> AestheticProxy:
    cfg = AestheticProxyConfig(resolution=resolution, split_seed=split_seed, seed=seed, **overrides)
    return train_aesthetic_proxy(cfg, splits, cache_dir, verbose)


def _build_ink(resolution: int = 32, *, split_seed: int = 0, seed: int = 0, cache_dir=None, splits=None,
               verbose: bool = True, **overrides) -> InkReward:
    if overrides:
        raise ValueError(f"overrides: the ink reward takes no options, got {sorted(overrides)}")
    return InkReward()


PROXY_REGISTRY: dict[str, Callable[..., RewardFn]] = {
    "classifier": _build_classifier,
    "aesthetic": _build_aesthetic,
    "ink": _build_ink,
}


def build_proxy(name: str, resolution: int = 32, *, split_seed: int = 0, seed: int = 0,
                cache_dir: str | Path | None = None, splits: WorldSplits | None = None, verbose: bool = True,
                **overrides) -> RewardFn:
    """Construct the proxy reward ``name`` (a key of ``PROXY_REGISTRY``).

    ``overrides`` are fields of that proxy's config dataclass (e.g. ``epochs=20``).
    """
    if name not in PROXY_REGISTRY:
        raise ValueError(f"name: unknown proxy {name!r}; expected one of {', '.join(PROXY_REGISTRY)}")
    return PROXY_REGISTRY[name](resolution, split_seed=split_seed, seed=seed, cache_dir=cache_dir, splits=splits,
                                verbose=verbose, **overrides)
