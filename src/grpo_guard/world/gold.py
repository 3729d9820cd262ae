"""GOLD metrics of the toy world: measured and logged, never optimised.

A CNN classifier is trained on the ``gold`` split with noise and shift augmentation (so that it
is robust to high-frequency junk, which the proxy rewards are not). From it come:

- prompt alignment: accuracy of its predictions on generated images against their prompted labels;
- image quality: the Frechet distance (FD) between generated images and the ``heldout`` real
  digits in the classifier's penultimate features, and k-NN precision / recall in that space
  (Kynkaanniemi et al.'s definition, k = 3);
- diversity within a prompt: mean pairwise feature distance between images of the same label.
- HF energy: the mean power of each image's spatial frequencies above half Nyquist, where the proxies'
  spurious cues live and real digits have almost none (a direct measure of exploit use and drift;
  lower is better).

``normalise_gold`` divides each metric by its value for the base model (FD: base / value, so
that higher is always better) and averages them, like Table 1 of the GRPO-Guard paper.

Images are (B, 1, H, W) float tensors in [-1, 1] (values outside are clamped first, as a decoded
image would be); labels (B,) int64 in 0..9. The only I/O is in ``save_module`` /
``load_module`` (safetensors + JSON, never pickle) and the ``cache_dir`` of ``train_gold``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import stopping
from ..cache_entry import read_entry, write_entry

from .data import NUM_CLASSES, SplitFractions, WorldSplits, check_images, check_labels, make_splits

__all__ = [
    "CACHE_FORMAT_VERSION",
    "ConvNet",
    "TrainReport",
    "train_network",
    "random_shift",
    "config_hash",
    "save_module",
    "load_module",
    "train_or_load",
    "progress_printer",
    "GoldConfig",
    "GoldScores",
    "NormalisedGold",
    "GOLD_HIGHER_IS_BETTER",
    "DEFAULT_GOLD_AVERAGE",
    "GoldEvaluator",
    "train_gold",
    "frechet_distance",
    "knn_precision_recall",
    "within_label_diversity",
    "normalise_gold",
]

CACHE_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# network and training loop (shared with proxies.py)
# --------------------------------------------------------------------------------------------
class ConvNet(nn.Module):
    """A small CNN for (B, 1, R, R) inputs, R a power-of-two multiple of 8.

    A 3x3 stem at full resolution, stride-2 convolutions down to 8x8, a 3x3 conv and a 2x2
    max-pool to 4x4, one more conv, then a ``feature_dim`` ReLU layer (the "penultimate
    features") and a linear head with ``out_dim`` outputs.
    """

    def __init__(self, resolution: int, width: int = 32, feature_dim: int = 64, out_dim: int = NUM_CLASSES):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution: must be a power of two >= 8, got {resolution}")
        if width < 2 or feature_dim < 1 or out_dim < 1:
            raise ValueError(f"width/feature_dim/out_dim: must be positive (width >= 2), got {width}/{feature_dim}/{out_dim}")
        stem = max(width // 2, 1)
        layers: list[nn.Module] = [nn.Conv2d(1, stem, 3, padding=1), nn.ReLU()]
        c, r = stem, resolution
        while r > 8:
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.ReLU()]
            c, r = width, r // 2
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                   nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU()]
        self.resolution = resolution
        self.body = nn.Sequential(*layers)
        self.feature = nn.Linear(2 * width * 16, feature_dim)
        self.head = nn.Linear(feature_dim, out_dim)

    def features(self, x: Tensor) -> Tensor:
        """(B, 1, R, R) -> (B, feature_dim) non-negative penultimate features."""
        return F.relu(self.feature(self.body(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, R, R) -> (B, out_dim) logits (or regression outputs)."""
        return self.head(self.features(x))


@dataclass(frozen=True)
class TrainReport:
    """Outcome of ``train_network``: wall-clock seconds and the mean loss of the last epoch."""

    seconds: float
    final_loss: float


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image (B, 1, H, W) by an integer offset in [-max_shift, max_shift]^2, filling with -1."""
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    offs = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    out = torch.empty_like(images)
    for i in range(b):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


def train_network(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn, augment, *, epochs: int,
                  batch_size: int, lr: float, seed: int, weight_decay: float = 1e-4,
                  progress: Callable[[str], None] | None = None, progress_every: float = 10.0) -> TrainReport:
    """Deterministic minibatch training with AdamW and a cosine learning-rate decay.

    Args:
        model: the network, trained in place.
        inputs: (N, ...) training inputs; targets: (N, ...) matching targets.
        loss_fn: ``(outputs, targets) -> scalar``.
        augment: ``(inputs_batch, targets_batch, generator) -> (inputs_batch, targets_batch)``
            (may be the identity); all its randomness must come from ``generator``.
        seed: seeds the shuffling and the augmentation generator.
        progress: gets a line (epoch, loss, seconds) at most every ``progress_every`` seconds.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"epochs/batch_size/lr: must be positive, got {epochs}/{batch_size}/{lr}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = inputs.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    model.train()
    t0 = last_line = time.perf_counter()
    last = float("nan")
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            xb, yb = augment(inputs[idx], targets[idx], gen)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        last = total / n
        if progress is not None and time.perf_counter() - last_line >= progress_every:
            last_line = time.perf_counter()
            progress(f"epoch {epoch + 1}/{epochs} loss {last:.4f} ({last_line - t0:.0f} s)")
    model.eval()
    return TrainReport(seconds=time.perf_counter() - t0, final_loss=last)


# --------------------------------------------------------------------------------------------
# caching: safetensors + JSON, keyed by a config hash
# --------------------------------------------------------------------------------------------
def progress_printer(kind: str, verbose: bool) -> Callable[[str], None] | None:
    """The progress lines of training the world network ``kind`` (``[kind] ...``), or None when not verbose."""
    label = kind.replace("-", " ")
    return (lambda msg: print(f"[{label}] {msg}", flush=True)) if verbose else None


def config_hash(kind: str, config) -> str:
    """16 hex digits of sha256 over (kind, cache format version, the dataclass ``config`` as sorted JSON)."""
    payload = json.dumps({"kind": kind, "format": CACHE_FORMAT_VERSION, "config": asdict(config)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_stem(cache_dir: str | Path, kind: str, config) -> Path:
    return Path(cache_dir) / f"{kind}-{config_hash(kind, config)}"


def save_module(stem: str | Path, module: nn.Module, meta: dict) -> None:
    """Write the cache entry ``stem`` (:mod:`grpo_guard.cache_entry`): ``<stem>.safetensors`` (the state dict)
    and ``<stem>.json`` (``meta``, JSON-serialisable, plus the manifest), each atomically."""
    write_entry(stem, dict(module.state_dict()), meta)


def load_module(stem: str | Path, module: nn.Module, log: Callable[[str], None] = print) -> dict | None:
    """Load the entry ``stem`` into ``module`` (strict, eval mode) and return its metadata; None when there is
    no entry, or when it is incomplete or corrupt (then it is removed, with a one-line notice)."""
    entry = read_entry(stem, log)
    if entry is None:
        return None
    tensors, meta = entry
    module.load_state_dict(tensors, strict=True)
    module.eval()
    return meta


def train_or_load(kind: str, config, model: nn.Module, cache_dir: str | Path | None,
                  train: Callable[[], tuple[TrainReport, dict]], summary: Callable[[dict], str],
                  verbose: bool = True) -> dict:
    """The world's networks' one sequence: load ``model``'s weights from the cache entry of ``(kind, config)``
    when there is one, else ``train()`` it (training ``model`` in place and returning its report and the
    measures to keep), write the entry, and return the entry's metadata (``kind``, ``config``, ``hash``,
    ``train_seconds``, ``final_loss`` and the measures). ``summary(meta)`` is the log line's tail."""
    label = kind.replace("-", " ")
    stem = cache_stem(cache_dir, kind, config) if cache_dir is not None else None
    meta = load_module(stem, model) if stem is not None else None
    if meta is not None:
        if verbose:
            print(f"[{label}] loaded {stem.name} (trained in {meta['train_seconds']:.1f}s; {summary(meta)})")
        return meta
    if verbose:
        print(f"[{label}] training (nothing is cached before the end) ...", flush=True)
    with stopping.phase(f"training the {label} model (nothing is cached before the end)"):
        report, measures = train()
    meta = {"kind": kind, "config": asdict(config), "hash": config_hash(kind, config), "train_seconds": report.seconds,
            "final_loss": report.final_loss, **measures}
    if verbose:
        print(f"[{label}] trained in {report.seconds:.1f}s; {summary(meta)}")
    if stem is not None:
        save_module(stem, model, meta)
    return meta


# --------------------------------------------------------------------------------------------
# feature-space metrics (pure functions)
# --------------------------------------------------------------------------------------------
def _sqrtm_psd(mat: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh(mat)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Na, F) and (Nb, F), Na, Nb >= 2.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` computed in float64.
    """
    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feats_a/feats_b: expected (N, F) with equal F, got {tuple(feats_a.shape)} and {tuple(feats_b.shape)}")
    if feats_a.shape[0] < 2 or feats_b.shape[0] < 2:
        raise ValueError(f"feats_a/feats_b: need at least 2 rows each, got {feats_a.shape[0]} and {feats_b.shape[0]}")
    a, b = feats_a.double(), feats_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    ra = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(ra @ cov_b @ ra).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross
    return float(fd.clamp_min(0))


def knn_precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """k-NN precision and recall (Kynkaanniemi et al. 2019) of features ``fake`` (Nf, F) against ``real`` (Nr, F).

    precision = fraction of fake points inside the ball of some real point whose radius is that
    real point's distance to its k-th nearest real neighbour; recall swaps the roles.
    """
    if k < 1 or real.shape[0] <= k or fake.shape[0] <= k:
        raise ValueError(f"k: need 1 <= k < number of real ({real.shape[0]}) and fake ({fake.shape[0]}) points, got {k}")

    def radii(x: Tensor) -> Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values  # +1 skips the zero self-distance

    r_real, r_fake = radii(real.double()), radii(fake.double())
    d = torch.cdist(fake.double(), real.double())  # (Nf, Nr)
    precision = (d <= r_real[None, :]).any(dim=1).double().mean()
    recall = (d.T <= r_fake[None, :]).any(dim=1).double().mean()
    return float(precision), float(recall)


def hf_energy(images: Tensor, band_lo: float = 0.5) -> float:
    """Mean power (per pixel, in [-1, 1] units squared) of the spatial frequencies whose radial frequency
    is at least ``band_lo`` x Nyquist, averaged over the (B, 1, R, R) ``images`` (clamped to [-1, 1])."""
    x = images.detach().to(torch.float64).clamp(-1, 1)[:, 0]
    r = x.shape[-1]
    spec = torch.fft.fft2(x, norm="ortho").abs().square()  # Parseval: sums to sum(x^2)
    f = torch.fft.fftfreq(r, dtype=torch.float64).abs() * 2  # in units of Nyquist, 0 .. 1
    radial = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    mask = radial >= band_lo
    return float(spec[:, mask].sum(-1).mean() / (r * r))


def within_label_diversity(feats: Tensor, labels: Tensor) -> float:
    """Mean over labels (with >= 2 samples) of the mean pairwise L2 distance between features (N, F) of that label.

    Returns NaN if no label has two samples.
    """
    check_labels("labels", labels, feats.shape[0])
    per_label = []
    for c in labels.unique().tolist():
        f = feats[labels == c].double()
        m = f.shape[0]
        if m < 2:
            continue
        per_label.append(torch.pdist(f).mean())
    return float(torch.stack(per_label).mean()) if per_label else float("nan")


# --------------------------------------------------------------------------------------------
# gold classifier
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetTrainingConfig:
    """The fields every trained world network (gold classifier, proxies) shares: the data (resolution,
    split), the seed, the ``ConvNet`` size and the training schedule. Subclasses add their own fields
    and may change the defaults; the whole dataclass is hashed for the cache key."""

    resolution: int = 32
    split_seed: int = 0
    fractions: SplitFractions = field(default_factory=SplitFractions)
    seed: int = 0
    width: int = 16
    feature_dim: int = 32
    epochs: int = 100
    batch_size: int = 64
    lr: float = 2e-3


@dataclass(frozen=True)
class GoldConfig(NetTrainingConfig):
    """Everything that determines the trained gold classifier (hashed for the cache key)."""

    width: int = 32
    feature_dim: int = 64
    epochs: int = 100
    noise_max: float = 0.4     # per-image Gaussian noise sd drawn from U(0, noise_max)
    shift_native_px: int = 1   # random translation, in units of the native 8x8 pixel
    knn_k: int = 3


@dataclass(frozen=True)
class GoldScores:
    """Gold metrics of one image set. ``frechet`` and ``hf_energy`` are lower-is-better, all others
    higher-is-better."""

    accuracy: float
    frechet: float
    precision: float
    recall: float
    diversity: float
    hf_energy: float
    n: int


GOLD_HIGHER_IS_BETTER = {"accuracy": True, "frechet": False, "precision": True, "recall": True, "diversity": True,
                         "hf_energy": False}
DEFAULT_GOLD_AVERAGE = ("accuracy", "frechet", "precision")


@dataclass(frozen=True)
class NormalisedGold:
    """Gold metrics relative to a base (= 1 for the base values; higher is better for every field).

    ``mean`` averages the fields named in ``averaged``.
    """

    accuracy: float
    frechet: float
    precision: float
    recall: float
    diversity: float
    hf_energy: float
    mean: float
    averaged: tuple[str, ...]


def normalise_gold(scores: GoldScores, base: GoldScores, average: tuple[str, ...] = DEFAULT_GOLD_AVERAGE) -> NormalisedGold:
    """Normalise each metric to ``base`` (value / base, or base / value for FD) and average ``average``.

    Raises ValueError if a base value is not a positive finite number (FD of exactly 0 included)
    or if ``average`` names an unknown metric.
    """
    if not average:
        raise ValueError("average: must name at least one metric")
    for name in average:
        if name not in GOLD_HIGHER_IS_BETTER:
            raise ValueError(f"average: unknown metric {name!r}; expected some of {', '.join(GOLD_HIGHER_IS_BETTER)}")
    out = {}
    for name, higher in GOLD_HIGHER_IS_BETTER.items():
        b, v = getattr(base, name), getattr(scores, name)
        if not (math.isfinite(b) and b > 0):
            if name in average:
                raise ValueError(f"base.{name}: must be a positive finite number to normalise by, got {b}")
            out[name] = float("nan")
            continue
        if higher:
            out[name] = v / b
        else:
            out[name] = b / v if v > 0 else float("inf")
    mean = sum(out[n] for n in average) / len(average)
    return NormalisedGold(**out, mean=mean, averaged=tuple(average))


class GoldEvaluator:
    """The trained gold classifier plus the heldout reference features.

    Attributes:
        model: the ``ConvNet`` (eval mode, no gradients needed).
        config: its ``GoldConfig``.
        reference_features: (M, F) features of the heldout split (FD / k-NN reference).
        meta: training metadata (train seconds, heldout accuracy, config hash).
    """

    def __init__(self, model: ConvNet, config: GoldConfig, reference_images: Tensor, meta: dict | None = None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.config = config
        self.meta = dict(meta or {})
        self.reference_features = self.features(reference_images)

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """(B, 1, R, R) in [-1, 1] -> (B, feature_dim) penultimate features (inputs clamped to [-1, 1])."""
        check_images("images", images, self.config.resolution)
        dev = next(self.model.parameters()).device
        out = [self.model.features(images[i:i + batch_size].to(dev).clamp(-1, 1)) for i in range(0, images.shape[0], batch_size)]
        return torch.cat(out).cpu() if out else torch.zeros(0, self.config.feature_dim)

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """(B, 1, R, R) -> (B, 10) class logits."""
        return self.model.head(self.features(images).to(next(self.model.parameters()).device)).cpu()

    def predict(self, images: Tensor) -> Tensor:
        """(B, 1, R, R) -> (B,) int64 predicted labels."""
        return self.logits(images).argmax(1)

    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        """Fraction of images classified as their (prompted) label: prompt alignment, in [0, 1]."""
        check_labels("labels", labels, images.shape[0])
        return float((self.predict(images) == labels.cpu()).double().mean())

    def frechet(self, images: Tensor) -> float:
        """FD between the images' features and the heldout reference features (lower is better)."""
        return frechet_distance(self.features(images), self.reference_features)

    def evaluate(self, images: Tensor, labels: Tensor) -> GoldScores:
        """All gold metrics of a generated set (B >= k + 1 images) with its prompted labels."""
        check_images("images", images, self.config.resolution)
        check_labels("labels", labels, images.shape[0])
        feats = self.features(images)
        acc = float((self.model.head(feats).argmax(1) == labels.cpu()).double().mean())
        prec, rec = knn_precision_recall(self.reference_features, feats, k=self.config.knn_k)
        return GoldScores(accuracy=acc, frechet=frechet_distance(feats, self.reference_features), precision=prec,
                          recall=rec, diversity=within_label_diversity(feats, labels.cpu()),
                          hf_energy=hf_energy(images), n=int(images.shape[0]))


def _gold_augment(config: GoldConfig):
    shift = config.shift_native_px * config.resolution // 8

    def augment(x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = random_shift(x, shift, gen)
        sd = torch.rand(x.shape[0], 1, 1, 1, generator=gen) * config.noise_max
        x = (x + sd * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
        return x, y

    return augment


def train_gold(config: GoldConfig = GoldConfig(), splits: WorldSplits | None = None, cache_dir: str | Path | None = None,
               verbose: bool = True) -> GoldEvaluator:
    """Train (or load from ``cache_dir``) the gold classifier on the ``gold`` split.

    ``splits`` defaults to ``make_splits(config.resolution, config.split_seed, config.fractions)``
    and must match those settings. With ``cache_dir`` the weights are stored as
    ``gold-<hash>.safetensors`` + ``gold-<hash>.json`` and reused when the config hash matches.
    """
    if splits is None:
        splits = make_splits(config.resolution, config.split_seed, config.fractions)
    elif splits.resolution != config.resolution or splits.seed != config.split_seed:
        raise ValueError(f"splits: resolution/seed {splits.resolution}/{splits.seed} do not match config "
                         f"{config.resolution}/{config.split_seed}")
    with seeded_rng(config.seed):
        model = ConvNet(config.resolution, config.width, config.feature_dim, NUM_CLASSES)

    built: dict[str, GoldEvaluator] = {}

    def fit() -> tuple[TrainReport, dict]:
        report = train_network(model, splits.gold.images, splits.gold.labels, F.cross_entropy, _gold_augment(config),
                               epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                               progress=progress_printer("gold", verbose))
        built["evaluator"] = ev = GoldEvaluator(model, config, splits.heldout.images)
        return report, {"heldout_accuracy": ev.accuracy(splits.heldout.images, splits.heldout.labels),
                        "n_train": len(splits.gold)}

    meta = train_or_load("gold", config, model, cache_dir, fit, verbose=verbose,
                         summary=lambda m: f"{m['n_train']} images at {config.resolution}px, heldout acc "
                                           f"{m['heldout_accuracy']:.4f}")
    evaluator = built.get("evaluator") or GoldEvaluator(model, config, splits.heldout.images)
    evaluator.meta = meta
    return evaluator
