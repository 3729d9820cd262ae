"""The toy world's data: scikit-learn's bundled handwritten digits, rendered and split.

Conventions used throughout ``grpo_guard.world``:

- An image batch is a float32 tensor of shape ``(N, 1, H, W)`` with values in ``[-1, 1]``;
  ``-1`` is the (white) paper, ``+1`` full ink. The raw digits (integers 0..16 on an 8x8 grid)
  are mapped by ``x / 8 - 1``.
- Labels are int64 tensors of shape ``(N,)`` with values in ``0..9``.
- Higher resolutions are made by smooth (bicubic) upsampling of the 8x8 originals followed by
  clamping to ``[-1, 1]``, so real digits carry almost no energy near the Nyquist frequency of
  the rendered grid. The proxy rewards' exploit lives exactly there (see ``proxies.py``).
- The 1,797 images are split once, deterministically and stratified by label, into four
  DISJOINT parts: ``base`` (generator pre-training), ``proxy`` (proxy reward models), ``gold``
  (gold classifier) and ``heldout`` (reference set of the Frechet distance).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core._checks import all_finite

__all__ = [
    "NUM_CLASSES",
    "SPLIT_NAMES",
    "SplitFractions",
    "DigitSet",
    "WorldSplits",
    "load_digits_raw",
    "render",
    "split_indices",
    "make_splits",
    "prompt_for_label",
    "label_from_prompt",
    "prompts_for_labels",
    "labels_from_prompts",
    "check_images",
    "check_labels",
]

NUM_CLASSES = 10
SPLIT_NAMES = ("base", "proxy", "gold", "heldout")
NATIVE_RESOLUTION = 8
_PROMPT_TEMPLATE = "a handwritten {}"
_PROMPT_RE = re.compile(r"^\s*a\s+handwritten\s+(\S+)\s*$", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def check_images(name: str, images: Tensor, resolution: int | None = None) -> None:
    """Raise ValueError unless ``images`` is a float tensor (N, 1, H, W) (H = W = resolution if given)."""
    if not isinstance(images, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"{name}: expected shape (N, 1, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {images.dtype}")
    if resolution is not None and (images.shape[2] != resolution or images.shape[3] != resolution):
        raise ValueError(
            f"{name}: expected spatial size {resolution}x{resolution}, got {images.shape[2]}x{images.shape[3]}"
        )
    if not all_finite(images):
        raise ValueError(f"{name}: contains NaN or Inf")


def check_labels(name: str, labels: Tensor, n: int | None = None) -> None:
    """Raise ValueError unless ``labels`` is an integer tensor (N,) with values in 0..9."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer tensor, got dtype {labels.dtype}")
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"{name}: expected {n} labels (one per image), got {labels.shape[0]}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise ValueError(f"{name}: values must lie in 0..{NUM_CLASSES - 1}, got range "
                         f"{int(labels.min())}..{int(labels.max())}")


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise ValueError(f"resolution: expected an int, got {type(resolution).__name__}")
    if resolution < NATIVE_RESOLUTION or resolution % NATIVE_RESOLUTION:
        raise ValueError(f"resolution: must be a multiple of {NATIVE_RESOLUTION} and >= {NATIVE_RESOLUTION}, "
                         f"got {resolution}")


# --------------------------------------------------------------------------------------------
# loading and rendering
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _load_digits_cached() -> tuple[Tensor, Tensor]:
    # scikit-learn: imported where used (seconds to import; runs that need none skip it)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)).unsqueeze(1) / 8.0 - 1.0
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return images, labels


def load_digits_raw() -> tuple[Tensor, Tensor]:
    """All 1,797 digits at their native 8x8 resolution.

    Returns:
        images: (1797, 1, 8, 8) float32 in [-1, 1] (raw value v in 0..16 -> v / 8 - 1).
        labels: (1797,) int64 in 0..9.
    The file is read once per process; fresh copies are returned so callers may modify them.
    """
    images, labels = _load_digits_cached()
    return images.clone(), labels.clone()


def render(images: Tensor, resolution: int, mode: str = "bicubic") -> Tensor:
    """Upsample native 8x8 digits (N, 1, 8, 8) in [-1, 1] to (N, 1, R, R), clamped to [-1, 1].

    ``mode`` is ``"bicubic"`` (default, smooth) or ``"bilinear"``; ``resolution`` must be a
    multiple of 8 (8 returns a copy). ``align_corners=False`` keeps the pixel grid centred.
    """
    check_images("images", images, NATIVE_RESOLUTION)
    _check_resolution(resolution)
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"mode: unknown value {mode!r}; expected 'bicubic' or 'bilinear'")
    if resolution == NATIVE_RESOLUTION:
        return images.clone()
    up = F.interpolate(images, size=(resolution, resolution), mode=mode, align_corners=False)
    return up.clamp(-1.0, 1.0).contiguous()


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitFractions:
    """Fractions of each class assigned to each split (must be positive and sum to 1)."""

    base: float = 0.35
    proxy: float = 0.20
    gold: float = 0.25
    heldout: float = 0.20

    def __post_init__(self) -> None:
        values = [getattr(self, f.name) for f in fields(self)]
        for f, v in zip(fields(self), values):
            if not v > 0:
                raise ValueError(f"fractions.{f.name}: must be > 0, got {v}")
        if abs(sum(values) - 1.0) > 1e-6:
            raise ValueError(f"fractions: must sum to 1, got {sum(values):.6f}")

    def as_tuple(self) -> tuple[float, float, float, float]:
        """Fractions in the order of ``SPLIT_NAMES``."""
        return (self.base, self.proxy, self.gold, self.heldout)


@dataclass(frozen=True)
class DigitSet:
    """A set of digits.

    Attributes:
        images: (N, 1, H, W) float32 in [-1, 1].
        labels: (N,) int64 in 0..9.
        indices: (N,) int64, positions in ``load_digits()`` (to prove disjointness / provenance).
    """

    images: Tensor
    labels: Tensor
    indices: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def of_class(self, label: int) -> "DigitSet":
        """The subset with the given label."""
        _check_label(label)
        keep = self.labels == label
        return DigitSet(self.images[keep], self.labels[keep], self.indices[keep])


@dataclass(frozen=True)
class WorldSplits:
    """The four disjoint splits of the digits at one resolution."""

    base: DigitSet
    proxy: DigitSet
    gold: DigitSet
    heldout: DigitSet
    resolution: int
    seed: int

    def get(self, name: str) -> DigitSet:
        """The split called ``name`` (one of ``SPLIT_NAMES``)."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"name: unknown split {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)


def split_indices(labels: Tensor, seed: int = 0, fractions: SplitFractions = SplitFractions()) -> dict[str, Tensor]:
    """Stratified, seeded partition of ``range(len(labels))`` into the four named splits.

    For each class the indices are shuffled with ``numpy.random.default_rng([seed, class])`` and
    cut at ``round(n_c * cumulative_fraction)``, so every split holds about the requested
    fraction of every class. Returns name -> sorted int64 index tensor; the parts are disjoint
    and their union is every index.
    """
    check_labels("labels", labels)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    cum = np.cumsum(fractions.as_tuple())
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    lab = labels.numpy()
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(lab == c)
        idx = idx[np.random.default_rng([seed, c]).permutation(len(idx))]
        cuts = [0] + [int(round(len(idx) * q)) for q in cum]
        cuts[-1] = len(idx)
        for k, name in enumerate(SPLIT_NAMES):
            parts[name].append(idx[cuts[k]:cuts[k + 1]])
    return {name: torch.from_numpy(np.sort(np.concatenate(p)).astype(np.int64)) for name, p in parts.items()}


def make_splits(resolution: int = 32, seed: int = 0, fractions: SplitFractions = SplitFractions(),
                mode: str = "bicubic") -> WorldSplits:
    """Load, render at ``resolution`` (multiple of 8: 8, 16, 32, 64, ...) and split the digits.

    Deterministic for a given (resolution, seed, fractions, mode). See ``split_indices``.
    """
    _check_resolution(resolution)
    raw, labels = load_digits_raw()
    images = render(raw, resolution, mode=mode)
    idx = split_indices(labels, seed=seed, fractions=fractions)
    sets = {name: DigitSet(images[i].contiguous(), labels[i].contiguous(), i) for name, i in idx.items()}
    return WorldSplits(resolution=resolution, seed=seed, **sets)


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------
def _check_label(label: int) -> None:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise ValueError(f"label: expected an int in 0..{NUM_CLASSES - 1}, got {type(label).__name__}")
    if not 0 <= int(label) < NUM_CLASSES:
        raise ValueError(f"label: expected an int in 0..{NUM_CLASSES - 1}, got {int(label)}")


def prompt_for_label(label: int) -> str:
    """The text prompt of a digit class: ``7 -> "a handwritten 7"``."""
    _check_label(label)
    return _PROMPT_TEMPLATE.format(int(label))


def label_from_prompt(prompt: str) -> int:
    """Parse a prompt made by ``prompt_for_label`` back to its label (case and surrounding spaces ignored).

    Raises ValueError naming ``prompt`` when it is not a string, does not follow the template
    ``"a handwritten <digit>"``, or names something other than a single digit 0..9.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: expected a str, got {type(prompt).__name__}")
    m = _PROMPT_RE.match(prompt)
    if m is None:
        raise ValueError(f"prompt: {prompt!r} does not match the template {_PROMPT_TEMPLATE.format('<digit>')!r}")
    token = m.group(1)
    if len(token) != 1 or not token.isdigit() or not token.isascii():
        raise ValueError(f"prompt: {prompt!r} names {token!r}, expected a single digit 0..{NUM_CLASSES - 1}")
    return int(token)


def prompts_for_labels(labels: Tensor) -> list[str]:
    """Prompts for a label tensor (N,) int64 in 0..9."""
    check_labels("labels", labels)
    return [prompt_for_label(int(v)) for v in labels.tolist()]


def labels_from_prompts(prompts: list[str]) -> Tensor:
    """Parse a list of prompts to a label tensor (N,) int64."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts: expected a list of str, got {type(prompts).__name__}")
    return torch.tensor([label_from_prompt(p) for p in prompts], dtype=torch.int64)
