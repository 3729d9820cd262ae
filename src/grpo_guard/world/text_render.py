"""The text world's renderer: short strings drawn with PIL, the generator's training data and the golds' reference.

Nothing is downloaded: the fonts are Pillow's built-in scalable font (Aileron, ``ImageFont.load_default(size)``)
and the DejaVu fonts that ship inside matplotlib (a dependency of this package).

Conventions:
- images are float32 (B, 1, H, W) in [0, 1], 1 = white paper, 0 = black ink (what an OCR engine expects);
- strings are drawn from :data:`ALPHABET` (a-z without i, j and l, which the OCR engine confuses with each
  other and with "1" on small renders) with lengths in [min_len, max_len];
- a *clean* render is black on white, upright, regular weight, centred with a jitter of at most one pixel;
  a *training* render also varies the font size, position, slant, stroke width and the background (a grey
  level and a smooth texture), every choice seeded.

The prompt of a string ``s`` is ``render the text "s"`` (the OCR reward reads the quoted text).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["ALPHABET", "FONT_NAMES", "TRAINING_FONTS", "RenderStyle", "load_font", "render_text", "render_batch",
           "clean_style", "random_style", "random_strings", "text_prompt", "text_from_prompt", "text_prompt_set"]

#: the characters strings are made of (a-z without i, j, l)
ALPHABET = "abcdefghkmnopqrstuvwxyz"
#: the fonts: Pillow's built-in one and the DejaVu family shipped with matplotlib
FONT_NAMES = ("aileron", "dejavu_sans", "dejavu_sans_bold", "dejavu_serif", "dejavu_mono")
#: the fonts of the generator's training renders (the golds' clean renders use every font)
TRAINING_FONTS = ("aileron", "dejavu_sans", "dejavu_sans_bold")
_DEJAVU_FILES = {"dejavu_sans": "DejaVuSans.ttf", "dejavu_sans_bold": "DejaVuSans-Bold.ttf",
                 "dejavu_serif": "DejaVuSerif.ttf", "dejavu_mono": "DejaVuSansMono.ttf"}


@functools.lru_cache(maxsize=None)
def load_font(name: str, size: int):
    """The PIL font ``name`` (one of :data:`FONT_NAMES`) at ``size`` px (cached)."""
    from PIL import ImageFont

    if name == "aileron":
        return ImageFont.load_default(size=size)
    if name not in _DEJAVU_FILES:
        raise ValueError(f"font: unknown font {name!r}; expected one of {', '.join(FONT_NAMES)}")
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / _DEJAVU_FILES[name]), size)


@dataclass(frozen=True)
class RenderStyle:
    """How one string is drawn.

    Attributes:
        font: one of :data:`FONT_NAMES`; size: font size in px.
        dx, dy: offset of the text's centre from the image centre, in px.
        shear: horizontal slant (x += shear * (y - centre)); stroke: PIL stroke width in px (0 = regular).
        paper, ink: grey levels in [0, 1] of the background and of the text.
        texture: amplitude of a smooth background texture (0 = none); texture_seed: its seed.
    """

    font: str = "aileron"
    size: int = 12
    dx: float = 0.0
    dy: float = 0.0
    shear: float = 0.0
    stroke: int = 0
    paper: float = 1.0
    ink: float = 0.0
    texture: float = 0.0
    texture_seed: int = 0


def clean_style(rng: random.Random, font: str = "aileron", size: int = 12) -> RenderStyle:
    """A clean render's style: black on white, upright, regular, with a jitter of at most 1 px."""
    return RenderStyle(font=font, size=size, dx=rng.randint(-1, 1), dy=rng.randint(-1, 1) * 0.5)


def random_style(rng: random.Random, sizes: tuple[int, int] = (11, 13)) -> RenderStyle:
    """A training render's style: Aileron, DejaVu Sans or its bold face (the weight varies through the bold face:
    a 1 px stroke fills the counters of 12 px letters), sizes in ``sizes`` (inclusive), offsets of up to 2 px
    across and 0.5 px down, slant up to +-0.15, paper 0.85-1, ink 0-0.2, texture up to 0.05."""
    return RenderStyle(font=rng.choice(TRAINING_FONTS), size=rng.randint(*sizes), dx=rng.uniform(-2, 2),
                       dy=rng.uniform(-0.5, 0.5), shear=rng.uniform(-0.15, 0.15), paper=rng.uniform(0.85, 1.0),
                       ink=rng.uniform(0.0, 0.2), texture=rng.uniform(0.0, 0.05), texture_seed=rng.randrange(2 ** 31))


def render_text(text: str, height: int, width: int, style: RenderStyle = RenderStyle()) -> np.ndarray:
    """``text`` drawn in ``style`` on a ``height`` x ``width`` image: float32 (H, W) in [0, 1], 1 = paper."""
    from PIL import Image, ImageDraw

    font = load_font(style.font, int(style.size))
    # drawn as a coverage mask (white on black) on a canvas with a margin, sheared, then cropped to the image
    pad = height
    mask = Image.new("L", (width + 2 * pad, height + 2 * pad), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = pad + width / 2 + style.dx, pad + height / 2 + style.dy
    draw.text((cx, cy), text, fill=255, font=font, anchor="mm", stroke_width=int(style.stroke), stroke_fill=255)
    if style.shear:
        # output (x, y) samples input (x + shear * (y - cy), y): the text leans right for shear < 0
        mask = mask.transform(mask.size, Image.Transform.AFFINE, (1, style.shear, -style.shear * cy, 0, 1, 0),
                              resample=Image.Resampling.BILINEAR)
    cover = np.asarray(mask.crop((pad, pad, pad + width, pad + height)), dtype=np.float32) / 255.0
    paper = np.full((height, width), style.paper, dtype=np.float32)
    if style.texture:
        g = np.random.default_rng(style.texture_seed)
        coarse = g.standard_normal((max(2, height // 4), max(2, width // 4))).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC))
        paper = paper + style.texture * smooth
    img = paper * (1 - cover) + style.ink * cover
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def render_batch(texts: list[str], height: int, width: int, styles: list[RenderStyle]) -> Tensor:
    """:func:`render_text` of each ``texts[i]`` in ``styles[i]``: (B, 1, H, W) float32 in [0, 1]."""
    if len(texts) != len(styles):
        raise ValueError(f"styles: expected {len(texts)}, got {len(styles)}")
    return torch.from_numpy(np.stack([render_text(t, height, width, s) for t, s in zip(texts, styles)]))[:, None]


def random_strings(n: int, rng: random.Random, min_len: int = 3, max_len: int = 5) -> list[str]:
    """``n`` strings of :data:`ALPHABET` with uniform lengths in [min_len, max_len]."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"min_len, max_len: need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(min_len, max_len))) for _ in range(n)]


def text_prompt(text: str) -> str:
    """The prompt asking for ``text``: ``render the text "TEXT"``."""
    return f'render the text "{text}"'


def text_from_prompt(prompt: str) -> str:
    """The string a prompt asks for: the text between its first pair of double quotes; the empty prompt (for
    classifier-free guidance) gives ""."""
    if prompt == "":
        return ""
    parts = prompt.split('"')
    if len(parts) < 3:
        raise ValueError(f"prompts: {prompt[:80]!r} is not a text-world prompt (render the text \"...\")")
    return parts[1]


def text_prompt_set(n: int = 32, seed: int = 1234, min_len: int = 3, max_len: int = 5) -> list[str]:
    """The text world's fixed RL and evaluation strings: ``n`` distinct strings drawn with ``seed`` (a seed the
    generator's pretraining data never uses, though a string may of course also occur there)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        s = random_strings(1, rng, min_len, max_len)[0]
        if s not in out:
            out.append(s)
    return out
