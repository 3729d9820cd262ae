"""The text world's second reading: a small CTC recogniser trained on clean renders only.

It is the world's own reader, independent of the proxy (PP-OCRv4 through RapidOCR): another architecture
(a few convolutions over the image, then a linear read-out per column, no recurrence), other training data
(clean renders of :mod:`grpo_guard.world.text_render`: black on white, upright, every font, sizes 11-13 px,
offsets up to 3 px across and 1 px down; never a generated image, never a texture), and another loss
(CTC). A generator that learns to please PP-OCR with shapes that are not clean glyphs is not read better by
it; one that renders the right glyphs is.

Conventions: images (B, 1, H, W) float32 in [0, 1] (1 = paper); the read-out has W / 2 columns, each a
distribution over the blank (class 0) and :data:`~grpo_guard.world.text_render.ALPHABET` (classes 1..).
Cached as safetensors + JSON keyed by a hash of the config.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import stopping
from ..cache_entry import read_entry, write_entry
from .gold import seeded_rng
from .text_render import ALPHABET, FONT_NAMES, RenderStyle, random_strings, render_batch

__all__ = ["ReaderConfig", "TextReader", "train_text_reader", "clean_training_style"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ReaderConfig:
    """What determines a trained reader (hashed for the cache key)."""

    height: int = 16
    width: int = 64
    min_len: int = 1
    max_len: int = 5
    font_sizes: tuple[int, int] = (11, 13)
    channels: int = 64
    steps: int = 1500
    batch_size: int = 64
    pool_size: int = 8000
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "font_sizes", tuple(int(s) for s in self.font_sizes))
        if self.height % 4 or self.width % 2:
            raise ValueError(f"height, width: height a multiple of 4 and width even, got {self.height} x {self.width}")


class TextReader(nn.Module):
    """Conv features -> a bidirectional GRU over the W / 2 columns -> (B, W / 2, classes) column
    log-probabilities; :meth:`read` decodes greedily (CTC)."""

    def __init__(self, config: ReaderConfig):
        super().__init__()
        c = config.channels
        self.config = config
        self.features = nn.Sequential(
            nn.Conv2d(1, c // 2, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),  # H/2, W/2
            nn.Conv2d(c // 2, c, 3, padding=1), nn.GELU(), nn.MaxPool2d((2, 1)),  # H/4
            nn.Conv2d(c, c, 3, padding=1), nn.GELU())
        self.rnn = nn.GRU(c * (config.height // 4), c, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * c, len(ALPHABET) + 1)

    def forward(self, images: Tensor) -> Tensor:
        """Images (B, 1, H, W) in [0, 1] -> log-probabilities (B, W / 2, 1 + len(ALPHABET))."""
        h = self.features(1 - 2 * images)  # ink positive; (B, c, H/4, W/2)
        h, _ = self.rnn(h.flatten(1, 2).transpose(1, 2))  # (B, W/2, 2c)
        return self.out(h).log_softmax(-1)

    @torch.no_grad()
    def read(self, images: Tensor, batch_size: int = 256) -> list[str]:
        """Greedy CTC decoding of each image (B, 1, H, W): the best class per column, repeats merged, blanks
        dropped."""
        out = []
        for i in range(0, images.shape[0], batch_size):
            best = self(images[i:i + batch_size].float()).argmax(-1)
            for row in best.tolist():
                chars, prev = [], 0
                for k in row:
                    if k != prev and k != 0:
                        chars.append(ALPHABET[k - 1])
                    prev = k
                out.append("".join(chars))
        return out


def clean_training_style(rng: random.Random, sizes: tuple[int, int]) -> RenderStyle:
    """A clean render for the reader's training: black on white, upright, any font and size, offsets up to 3
    px across and 1 px down."""
    return RenderStyle(font=rng.choice(FONT_NAMES), size=rng.randint(*sizes), dx=rng.uniform(-3, 3),
                       dy=rng.uniform(-1, 1))


def _stem(cache_dir: str | Path, config: ReaderConfig) -> Path:
    payload = json.dumps({"kind": "text_reader", "format": FORMAT_VERSION, "config": asdict(config)}, sort_keys=True)
    return Path(cache_dir) / f"text_reader-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def train_text_reader(config: ReaderConfig = ReaderConfig(), cache_dir: str | Path | None = None, *,
                      log: Callable[[str], None] | None = None, log_every: float = 10.0) -> TextReader:
    """Train the reader with CTC on clean renders made on the fly (or load it from ``cache_dir``); eval mode."""
    stem = _stem(cache_dir, config) if cache_dir is not None else None
    if stem is not None:
        entry = read_entry(stem)
        if entry is not None:
            model = TextReader(config)
            model.load_state_dict(entry[0], strict=True)
            return model.eval().requires_grad_(False)
    if log is not None:
        log(f"{config.steps} steps on clean renders" + (f" (cached in {cache_dir} at the end)" if stem else ""))
    with seeded_rng(config.seed):
        model = TextReader(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps, pct_start=0.1)
    rng = random.Random(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    t0 = last = time.perf_counter()
    with stopping.phase(f"training the text world's reader ({config.steps} steps; nothing is cached before the end)"):
        # a pool of clean renders, drawn from with replacement (rendering costs more than a step)
        pool_texts = random_strings(config.pool_size, rng, config.min_len, config.max_len)
        pool = render_batch(pool_texts, config.height, config.width,
                            [clean_training_style(rng, config.font_sizes) for _ in pool_texts])
        for step in range(config.steps):
            idx = torch.randint(config.pool_size, (config.batch_size,), generator=gen).tolist()
            texts, images = [pool_texts[i] for i in idx], pool[idx]
            logp = model(images)  # (B, T, C)
            targets = torch.tensor([ALPHABET.index(c) + 1 for t in texts for c in t])
            loss = F.ctc_loss(logp.transpose(0, 1), targets, torch.full((len(texts),), logp.shape[1]),
                              torch.tensor([len(t) for t in texts]), blank=0, zero_infinity=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            now = time.perf_counter()
            if log is not None and (step == 0 or now - last >= log_every or step == config.steps - 1):
                last = now
                log(f"step {step + 1}/{config.steps} CTC loss {float(loss.detach()):.3f} ({now - t0:.0f} s)")
    model.eval().requires_grad_(False)
    if stem is not None:
        write_entry(stem, dict(model.state_dict()), {"format": FORMAT_VERSION, "config": asdict(config),
                                                     "seconds": time.perf_counter() - t0})
    return model
